//! Built-in global push-to-talk key (cargo feature `hotkey`): holding `hotkey` (e.g. `F9`,
//! `ctrl+alt+space`) opens the microphone, releasing it mutes it again.
//!
//! It works where a process may grab keys globally: X11 and Windows. Wayland compositors do not
//! allow that, so there (and as a portable alternative) the desktop binds `kokichi ptt press` /
//! `kokichi ptt release` instead ([`super::control`]). On macOS the key registration needs the
//! main thread's event loop, which the daemon does not run, so the key is not registered there.
//! A key that cannot be registered is a warning, never fatal; a key that cannot be parsed is a
//! config error.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use global_hotkey::hotkey::HotKey;
use global_hotkey::{GlobalHotKeyEvent, GlobalHotKeyManager, HotKeyState};

use super::control::{Ptt, apply};
use crate::error::{Error, Result};

/// How often the key thread checks for shutdown (and pumps Windows messages).
const TICK: Duration = Duration::from_millis(20);

/// The registered key; dropping it unregisters the key and stops its thread.
pub struct Hotkey {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Hotkey {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Parses a key such as `F9` or `ctrl+alt+space`.
pub fn parse(spec: &str) -> Result<HotKey> {
    spec.trim()
        .parse::<HotKey>()
        .map_err(|e| Error::config("hotkey", format!("`{spec}`: {e} (examples: F9, ctrl+alt+space)")))
}

/// Why the key cannot work in this session, if it cannot.
fn unsupported() -> Option<&'static str> {
    if cfg!(target_os = "macos") {
        return Some("on macOS the daemon cannot register global keys");
    }
    let var = |k: &str| std::env::var_os(k).is_some_and(|v| !v.is_empty());
    if cfg!(unix) && !var("DISPLAY") {
        return Some(if var("WAYLAND_DISPLAY") {
            "Wayland does not allow global keys"
        } else {
            "no X11 display ($DISPLAY is unset)"
        });
    }
    // global-hotkey fails silently when it cannot connect: try first.
    #[cfg(any(target_os = "linux", target_os = "dragonfly", target_os = "freebsd", target_os = "netbsd"))]
    if x11rb::connect(None).is_err() {
        return Some("the X11 display ($DISPLAY) cannot be reached");
    }
    None
}

/// Registers `spec` as the push-to-talk key driving `talk`.
pub fn start(spec: &str, talk: Arc<AtomicBool>) -> Result<Hotkey> {
    let key = parse(spec)?;
    let stop = Arc::new(AtomicBool::new(false));
    if let Some(why) = unsupported() {
        tracing::warn!(
            "hotkey `{spec}` not registered: {why}; bind `kokichi ptt press` / `kokichi ptt release` in your desktop instead"
        );
        return Ok(Hotkey { stop, thread: None });
    }
    if std::env::var_os("WAYLAND_DISPLAY").is_some() {
        tracing::warn!(
            "hotkey `{spec}` goes through XWayland and only fires while an X11 window has focus; prefer binding `kokichi ptt` in your compositor"
        );
    }
    let (spec, flag) = (spec.to_string(), stop.clone());
    let thread = std::thread::Builder::new()
        .name("kokichi-hotkey".into())
        .spawn(move || run(&spec, key, &talk, &flag))
        .map_err(|e| Error::config("hotkey", format!("cannot start its thread: {e}")))?;
    Ok(Hotkey { stop, thread: Some(thread) })
}

/// The key thread: the manager lives here (Windows wants its messages pumped on the thread
/// that created it).
fn run(spec: &str, key: HotKey, talk: &AtomicBool, stop: &AtomicBool) {
    let manager = match GlobalHotKeyManager::new().and_then(|m| m.register(key).map(|()| m)) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!("hotkey `{spec}` not registered: {e}; bind `kokichi ptt press|release` instead");
            return;
        }
    };
    tracing::info!("push-to-talk key: hold {spec} to talk");
    let events = GlobalHotKeyEvent::receiver();
    while !stop.load(Ordering::Relaxed) {
        pump_messages();
        let Ok(event) = events.recv_timeout(TICK) else { continue };
        if event.id() != key.id() {
            continue;
        }
        let cmd = match event.state() {
            HotKeyState::Pressed => Ptt::Press,
            HotKeyState::Released => Ptt::Release,
        };
        // Key repeat sends more presses; only changes are worth a log line.
        let before = talk.load(Ordering::Relaxed);
        let state = apply(talk, false, cmd);
        if before != talk.load(Ordering::Relaxed) {
            tracing::debug!(command = cmd.name(), %state, "push-to-talk key");
        }
    }
    if let Err(e) = manager.unregister(key) {
        tracing::debug!("hotkey `{spec}`: {e}");
    }
}

#[cfg(windows)]
fn pump_messages() {
    use windows_sys::Win32::UI::WindowsAndMessaging::{
        DispatchMessageW, MSG, PM_REMOVE, PeekMessageW, TranslateMessage,
    };
    // SAFETY: `msg` is a plain C struct owned by this frame; a null window handle asks for any
    // message of this thread, which is what created the manager's hidden window.
    unsafe {
        let mut msg: MSG = std::mem::zeroed();
        while PeekMessageW(&mut msg, std::ptr::null_mut(), 0, 0, PM_REMOVE) != 0 {
            TranslateMessage(&msg);
            DispatchMessageW(&msg);
        }
    }
}

#[cfg(not(windows))]
fn pump_messages() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_and_bad_ones_name_the_setting() {
        assert!(parse("F9").is_ok());
        assert!(parse(" ctrl+alt+space ").is_ok());
        assert_ne!(parse("F9").unwrap().id(), parse("ctrl+F9").unwrap().id());
        let err = parse("ctrl+nope").unwrap_err().to_string();
        assert!(err.contains("hotkey") && err.contains("ctrl+nope"), "{err}");
    }

    /// Without a display (CI) the key is inert; with an unreachable one the manager fails in
    /// its own thread. Either way starting is not an error and dropping returns promptly.
    #[test]
    fn a_key_that_cannot_work_is_not_an_error() {
        let talk = Arc::new(AtomicBool::new(false));
        let started = std::time::Instant::now();
        let key = start("F9", talk.clone()).unwrap();
        assert_eq!(key.thread.is_none(), unsupported().is_some());
        drop(key);
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(!talk.load(Ordering::Relaxed));
        assert!(start("F9+", talk).is_err());
    }
}
