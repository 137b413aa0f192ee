//! Push-to-talk over a local control socket, so any desktop keybinding can drive the daemon
//! (`kokichi ptt press|release|toggle|status`), Wayland included. One line in, one line out.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

use crate::error::{Error, Result};

/// A push-to-talk command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ptt {
    Press,
    Release,
    Toggle,
    Status,
}

impl Ptt {
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "press" => Some(Ptt::Press),
            "release" => Some(Ptt::Release),
            "toggle" => Some(Ptt::Toggle),
            "status" => Some(Ptt::Status),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Ptt::Press => "press",
            Ptt::Release => "release",
            Ptt::Toggle => "toggle",
            Ptt::Status => "status",
        }
    }
}

/// Applies a command to the talk flag and returns the reply line.
pub fn apply(talk: &AtomicBool, open_mode: bool, cmd: Ptt) -> String {
    if open_mode {
        return "open mode: always listening".into();
    }
    match cmd {
        Ptt::Press => talk.store(true, Ordering::Relaxed),
        Ptt::Release => talk.store(false, Ordering::Relaxed),
        Ptt::Toggle => {
            talk.fetch_xor(true, Ordering::Relaxed);
        }
        Ptt::Status => {}
    }
    if talk.load(Ordering::Relaxed) { "talking".into() } else { "muted".into() }
}

/// Removes the socket file when the daemon stops.
pub struct ControlSocket {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Listens on `path` (a Unix socket, mode 0600).
pub fn serve(path: &Path, talk: Arc<AtomicBool>, open_mode: bool) -> Result<ControlSocket> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    if path.exists() {
        // A live daemon answers; a stale socket from a crash is replaced.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(Error::config(
                "control_socket",
                format!("{} is in use: is another kokichi daemon running?", path.display()),
            ));
        }
        std::fs::remove_file(path).map_err(|e| Error::io(path, e))?;
    }
    let listener = UnixListener::bind(path).map_err(|e| Error::io(path, e))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|e| Error::io(path, e))?;
    }
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let talk = talk.clone();
            tokio::spawn(async move {
                let (r, mut w) = stream.into_split();
                let mut line = String::new();
                let mut reader = BufReader::new(r.take(256));
                if reader.read_line(&mut line).await.is_err() {
                    return;
                }
                let reply = match Ptt::parse(&line) {
                    Some(cmd) => {
                        let r = apply(&talk, open_mode, cmd);
                        tracing::info!(command = cmd.name(), state = %r, "push-to-talk");
                        r
                    }
                    None => "error: expected press, release, toggle or status".into(),
                };
                let _ = w.write_all(format!("{reply}\n").as_bytes()).await;
            });
        }
    });
    Ok(ControlSocket { path: path.to_path_buf(), task })
}

/// Sends one command to a running daemon and returns its reply.
pub fn send(path: &Path, cmd: Ptt) -> Result<String> {
    use std::io::{BufRead, Write};
    let mut s = std::os::unix::net::UnixStream::connect(path).map_err(|e| Error::io(path, e))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(3))).map_err(|e| Error::io(path, e))?;
    writeln!(s, "{}", cmd.name()).map_err(|e| Error::io(path, e))?;
    let mut line = String::new();
    std::io::BufReader::new(s).read_line(&mut line).map_err(|e| Error::io(path, e))?;
    Ok(line.trim().to_string())
}
