//! The local microphone and speaker as one daemon session.
//!
//! Real-time audio has two clocks: the sound card's, which calls us back with small buffers
//! and must never wait, and the model's, which steps 80 ms frames when it can. Lock-free rings
//! sit between them. The cpal callbacks only convert samples and push or pop the rings
//! ([`convert`]); the inference thread resamples and frames them ([`bridge`]); a dedicated
//! thread owns the (possibly `!Send`) streams and reopens a lost device ([`device`]).
//!
//! Servers and CI have no sound card: [`start`] then says so once and returns `Ok(None)`, and
//! the daemon serves WebSocket clients only.

mod alsa_log;
mod bridge;
mod convert;
mod device;
pub mod echo;
mod thread;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc;

use cpal::traits::{DeviceTrait, HostTrait};

use super::io::{AudioSink, AudioSource, GainSource};
use super::metrics::Metrics;
use super::runtime::{NewSession, Runtime};
use super::settings::{Settings, TalkMode};
use crate::error::{Error, Result};
use crate::lm::GenConfig;
pub use bridge::{LocalSink, LocalSource};
pub use convert::{downmix, spread};
pub use device::Direction;
use device::{device_id, device_name};

/// Keeps the local audio streams alive; dropping it stops them.
pub struct LocalAudio {
    description: String,
    #[cfg(feature = "hotkey")]
    _hotkey: Option<super::hotkey::Hotkey>,
    _thread: thread::AudioThread,
}

impl LocalAudio {
    pub fn describe(&self) -> String {
        self.description.clone()
    }
}

/// Opens the microphone and speaker and adds the local session; `None` without devices.
pub fn start(
    settings: &Settings,
    sampling: GenConfig,
    runtime: &Runtime,
    metrics: Arc<Metrics>,
    talk: Arc<AtomicBool>,
) -> Result<Option<LocalAudio>> {
    let (capture, captured) = mpsc::channel();
    let (playback, played) = mpsc::channel();
    let model_rate = u32::try_from(runtime.sample_rate).map_err(|_| Error::config("sample rate", "out of range"))?;
    let local = &settings.local_audio;
    let devices = thread::DeviceSetup {
        input: local.input_device.clone(),
        output: local.output_device.clone(),
        model_rate,
        frame: runtime.frame_size,
        metrics,
        capture,
        playback,
    };
    let Some((thread, description)) = thread::spawn(devices)? else {
        return Ok(None);
    };
    let open_mode = local.mode == TalkMode::Open;
    let source: Box<dyn AudioSource> =
        Box::new(LocalSource::new(captured, model_rate, runtime.frame_size, settings.runtime.backlog_frames));
    let sink: Box<dyn AudioSink> = Box::new(LocalSink::new(played, model_rate, runtime.frame_size));
    let (source, sink) = if local.echo_cancel {
        echo::cancel_echo(source, sink, model_rate, runtime.frame_size)?
    } else {
        (source, sink)
    };
    runtime.add(NewSession {
        kind: "local".into(),
        config: sampling,
        source: GainSource::wrap(source, local.input_gain),
        sink,
        talk: Some(talk.clone()),
        remote: false,
        taps: Default::default(),
        gist: None,
        latent_input: false,
    })?;
    tracing::info!(
        mode = if open_mode { "open" } else { "push-to-talk" },
        echo_cancel = local.echo_cancel,
        "local audio: {description}"
    );
    let hotkey = local.hotkey.as_deref().filter(|h| !h.trim().is_empty());
    #[cfg(feature = "hotkey")]
    let hotkey = match hotkey {
        Some(h) if !open_mode => Some(super::hotkey::start(h, talk)?),
        _ => None,
    };
    #[cfg(not(feature = "hotkey"))]
    if hotkey.is_some() {
        tracing::warn!(
            "`hotkey` is set but this build lacks the `hotkey` feature: bind `kokichi ptt press|release` in your desktop instead"
        );
    }
    Ok(Some(LocalAudio {
        description,
        #[cfg(feature = "hotkey")]
        _hotkey: hotkey,
        _thread: thread,
    }))
}

/// A device's default stream format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceFormat {
    pub sample_rate: u32,
    pub channels: u16,
    pub sample_format: String,
}

impl fmt::Display for DeviceFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} Hz, {} ch, {}", self.sample_rate, self.channels, self.sample_format)
    }
}

/// One device as `kokichi devices` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    pub direction: Direction,
    /// What `input_device` / `output_device` may be set to (the id works too).
    pub name: String,
    pub id: String,
    pub is_default: bool,
    /// The format the daemon would open it with, or why it cannot.
    pub default_config: std::result::Result<DeviceFormat, String>,
}

/// Input and output devices of the default audio host, with their default formats.
pub fn list_devices() -> Result<Vec<DeviceInfo>> {
    let mut alsa = alsa_log::AlsaLog::capture();
    let listed = list_host_devices();
    alsa.flush();
    listed
}

fn list_host_devices() -> Result<Vec<DeviceInfo>> {
    let host = cpal::default_host();
    let mut out = Vec::new();
    for dir in [Direction::Input, Direction::Output] {
        let (default, listed) = match dir {
            Direction::Input => (host.default_input_device(), host.input_devices().map(|d| d.collect::<Vec<_>>())),
            Direction::Output => (host.default_output_device(), host.output_devices().map(|d| d.collect::<Vec<_>>())),
        };
        let devices = listed.map_err(|e| Error::AudioDevice {
            device: format!("{} {}s", host.id().name(), dir.noun()),
            msg: e.to_string(),
        })?;
        let default_id = default.as_ref().map(device_id);
        // The default device is not always enumerated (ALSA's `default` without a card).
        let missing = default.filter(|d| !devices.iter().any(|x| device_id(x) == device_id(d)));
        for d in missing.into_iter().chain(devices) {
            let config = match dir {
                Direction::Input => d.default_input_config(),
                Direction::Output => d.default_output_config(),
            };
            let id = device_id(&d);
            out.push(DeviceInfo {
                direction: dir,
                name: device_name(&d),
                is_default: default_id.as_ref() == Some(&id),
                id,
                default_config: config
                    .map(|c| DeviceFormat {
                        sample_rate: c.sample_rate(),
                        channels: c.channels(),
                        sample_format: c.sample_format().to_string(),
                    })
                    .map_err(|e| e.to_string()),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::runtime::RuntimeOptions;
    use crate::session::Engine;
    use std::path::Path;
    use std::time::Duration;

    fn has_sound_card() -> bool {
        Path::new("/proc/asound/cards").exists()
            && std::fs::read_to_string("/proc/asound/cards")
                .is_ok_and(|s| !s.contains("no soundcards") && !s.trim().is_empty())
    }

    /// This machine (and CI) has no sound card: the daemon must carry on without local audio.
    #[test]
    fn start_without_devices_is_none_not_an_error() {
        if has_sound_card() {
            eprintln!("skipped: this machine has a sound card");
            return;
        }
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_model");
        let files = crate::model_dir::resolve(dir.to_str().unwrap()).unwrap();
        let engine = Arc::new(Engine::load(&files, &burn::prelude::Device::flex(), burn::tensor::DType::F32).unwrap());
        let metrics = Arc::new(Metrics::default());
        let options = RuntimeOptions {
            max_sessions: 2,
            batch_window: Duration::from_millis(5),
            log_transcripts: false,
            idle_timeout: None,
            tools: Default::default(),
        };
        let (runtime, thread) = Runtime::start(engine, metrics.clone(), options).unwrap();
        let settings = Settings::default();
        let local = start(&settings, GenConfig::greedy(), &runtime, metrics, Arc::new(AtomicBool::new(false))).unwrap();
        assert!(local.is_none());
        assert_eq!(runtime.active(), 0, "no local session was added");
        // A device named in the config that is not there is a config error naming the setting.
        let mut named = Settings::default();
        named.local_audio.input_device = Some("no-such-mic".into());
        match start(
            &named,
            GenConfig::greedy(),
            &runtime,
            Arc::new(Metrics::default()),
            Arc::new(AtomicBool::new(false)),
        ) {
            Err(e) => assert!(e.to_string().contains("input_device") && e.to_string().contains("no-such-mic"), "{e}"),
            Ok(l) => assert!(l.is_none(), "a missing named device cannot open"),
        }
        runtime.stop();
        thread.join().unwrap();
    }

    #[test]
    fn listing_devices_shows_the_unusable_default_without_a_sound_card() {
        let devices = list_devices().unwrap();
        for dir in [Direction::Input, Direction::Output] {
            let defaults: Vec<_> = devices.iter().filter(|d| d.direction == dir && d.is_default).collect();
            assert!(defaults.len() <= 1, "{defaults:?}");
            if cfg!(target_os = "linux") && !has_sound_card() {
                // ALSA's `default` exists but cannot be opened: listed, with the reason.
                assert_eq!(defaults.len(), 1, "{devices:?}");
                assert!(defaults[0].default_config.is_err(), "{:?}", defaults[0]);
            }
        }
        assert!(devices.iter().all(|d| !d.id.is_empty() || !d.name.is_empty()), "{devices:?}");
    }
}
