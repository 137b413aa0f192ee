//! The thread that owns the cpal streams (they may be `!Send`). It opens both devices, then
//! waits for stream errors: a lost device is logged once and reopened every [`RETRY`], never
//! failing the daemon; meanwhile the session's source yields nothing and its sink discards.

use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use cpal::ErrorKind;

use super::alsa_log::AlsaLog;
use super::bridge::{CaptureEnd, PlaybackEnd};
use super::device::{self, Direction, End, OpenError};
use crate::daemon::metrics::Metrics;
use crate::error::{Error, Result};

/// How often a lost device is looked for again.
pub const RETRY: Duration = Duration::from_secs(2);

/// What the audio thread needs.
pub struct DeviceSetup {
    pub input: Option<String>,
    pub output: Option<String>,
    /// The model's rate and frame, to size the rings.
    pub model_rate: u32,
    pub frame: usize,
    pub metrics: Arc<Metrics>,
    pub capture: Sender<CaptureEnd>,
    pub playback: Sender<PlaybackEnd>,
}

/// Sends stream errors to the audio thread: xruns are only counted, a route change or refused
/// real-time priority is reported once, anything else once as the loss of the device.
fn on_error(
    dir: Direction,
    generation: u64,
    events: Sender<Event>,
    metrics: Arc<Metrics>,
) -> impl FnMut(cpal::Error) + Send + 'static {
    let (mut noted, mut failed) = (false, false);
    move |error| {
        let fatal = match error.kind() {
            ErrorKind::Xrun => {
                let counter = match dir {
                    Direction::Input => &metrics.capture_overruns,
                    Direction::Output => &metrics.playback_underruns,
                };
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return;
            }
            ErrorKind::DeviceChanged | ErrorKind::RealtimeDenied => false,
            _ => true,
        };
        let seen = if fatal { &mut failed } else { &mut noted };
        if !std::mem::replace(seen, true) {
            let _ = events.send(Event::Stream { dir, generation, error, fatal });
        }
    }
}

enum Event {
    Stop,
    Stream { dir: Direction, generation: u64, error: cpal::Error, fatal: bool },
}

/// One direction's stream, or when to look for its device again.
struct Slot {
    dir: Direction,
    wanted: Option<String>,
    stream: Option<cpal::Stream>,
    name: String,
    generation: u64,
    retry_at: Option<Instant>,
}

/// State owned by the audio thread.
struct Audio {
    host: cpal::Host,
    setup: DeviceSetup,
    events: Sender<Event>,
    slots: [Slot; 2],
    alsa: AlsaLog,
}

impl Audio {
    /// Opens the slot's device; returns a description on success.
    fn open(&mut self, i: usize) -> std::result::Result<String, OpenError> {
        let opened = self.try_open(i);
        self.alsa.flush();
        opened
    }

    fn try_open(&mut self, i: usize) -> std::result::Result<String, OpenError> {
        let s = &self.setup;
        let slot = &mut self.slots[i];
        let (dir, generation) = (slot.dir, slot.generation + 1);
        let errors = on_error(dir, generation, self.events.clone(), s.metrics.clone());
        let model = (s.model_rate, s.frame);
        let opened = device::open(&self.host, dir, slot.wanted.as_deref(), model, &s.metrics, errors)?;
        // The session switches to the new ring only once the stream plays.
        // (A send fails only when the session is gone, and then nobody needs the ring.)
        let _ = match opened.end {
            End::Capture(end) => s.capture.send(end).map_err(drop),
            End::Playback(end) => s.playback.send(end).map_err(drop),
        };
        slot.stream = Some(opened.stream);
        slot.generation = generation;
        slot.name = opened.name;
        slot.retry_at = None;
        Ok(opened.desc)
    }

    fn on_event(&mut self, dir: Direction, generation: u64, error: cpal::Error, fatal: bool) {
        let Some(slot) =
            self.slots.iter_mut().find(|s| s.dir == dir && s.generation == generation && s.stream.is_some())
        else {
            return;
        };
        if !fatal {
            tracing::warn!("{} `{}`: {error}", dir.noun(), slot.name);
            return;
        }
        tracing::warn!("{} `{}` lost: {error}; retrying every {} s", dir.noun(), slot.name, RETRY.as_secs());
        slot.stream = None;
        slot.retry_at = Some(Instant::now() + RETRY);
    }

    fn retry_due(&mut self) {
        let now = Instant::now();
        for i in 0..self.slots.len() {
            if self.slots[i].retry_at.is_some_and(|t| t <= now) {
                match self.open(i) {
                    Ok(desc) => tracing::info!("{desc} is back"),
                    Err(OpenError::Absent(m) | OpenError::NotFound(m) | OpenError::Failed(m)) => {
                        tracing::debug!("still no {}: {m}", self.slots[i].dir.noun());
                        self.slots[i].retry_at = Some(now + RETRY);
                    }
                }
            }
        }
    }

    fn run(mut self, events: Receiver<Event>) {
        loop {
            let next = self.slots.iter().filter_map(|s| s.retry_at).min();
            let wait = next.map_or(Duration::from_secs(3600), |t| t.saturating_duration_since(Instant::now()));
            match events.recv_timeout(wait) {
                Ok(Event::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                Ok(Event::Stream { dir, generation, error, fatal }) => self.on_event(dir, generation, error, fatal),
                Err(RecvTimeoutError::Timeout) => {}
            }
            self.retry_due();
        }
        tracing::debug!("local audio stopped");
    }
}

/// Stops and joins the audio thread when dropped.
pub struct AudioThread {
    events: Sender<Event>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Drop for AudioThread {
    fn drop(&mut self) {
        let _ = self.events.send(Event::Stop);
        if let Some(h) = self.handle.take()
            && h.join().is_err()
        {
            tracing::error!("the audio thread panicked");
        }
    }
}

/// Starts the audio thread and opens both devices. `Ok(None)`, said once in the log, when there
/// is no usable device; an error when a device named in the config does not exist.
pub fn spawn(setup: DeviceSetup) -> Result<Option<(AudioThread, String)>> {
    let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<Option<String>>>(1);
    let (events, events_rx) = mpsc::channel();
    let to_thread = events.clone();
    let handle = std::thread::Builder::new()
        .name("kokichi-audio".into())
        .spawn(move || {
            let slot =
                |dir, wanted| Slot { dir, wanted, stream: None, name: String::new(), generation: 0, retry_at: None };
            let slots = [slot(Direction::Input, setup.input.clone()), slot(Direction::Output, setup.output.clone())];
            let alsa = AlsaLog::capture();
            let mut audio = Audio { host: cpal::default_host(), setup, events: to_thread, slots, alsa };
            let mut descs = Vec::new();
            for i in 0..2 {
                let setting = audio.slots[i].dir.setting();
                match audio.open(i) {
                    Ok(d) => descs.push(d),
                    Err(e) => {
                        let _ = ready_tx.send(unavailable(setting, e));
                        return;
                    }
                }
            }
            let _ = ready_tx.send(Ok(Some(descs.join(", "))));
            audio.run(events_rx);
        })
        .map_err(|e| Error::AudioDevice { device: "audio thread".into(), msg: e.to_string() })?;
    let thread = AudioThread { events, handle: Some(handle) };
    match ready_rx.recv() {
        Ok(Ok(Some(desc))) => Ok(Some((thread, desc))),
        Ok(Ok(None)) => Ok(None),
        Ok(Err(e)) => Err(e),
        Err(_) => {
            Err(Error::AudioDevice { device: "audio thread".into(), msg: "stopped while opening the devices".into() })
        }
    }
}

/// What `start` makes of a device that cannot be opened.
fn unavailable(setting: &str, e: OpenError) -> Result<Option<String>> {
    match e {
        OpenError::Absent(m) => tracing::info!("no local audio device ({m}): serving WebSocket clients only"),
        OpenError::Failed(m) => tracing::warn!("local audio unavailable ({m}): serving WebSocket clients only"),
        OpenError::NotFound(m) => return Err(Error::config(setting, m)),
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_errors_count_xruns_and_report_a_loss_once() {
        let metrics = Arc::new(Metrics::default());
        let (tx, rx) = mpsc::channel();
        let mut input = on_error(Direction::Input, 3, tx.clone(), metrics.clone());
        let mut output = on_error(Direction::Output, 1, tx, metrics.clone());
        input(cpal::Error::new(ErrorKind::Xrun));
        input(cpal::Error::new(ErrorKind::Xrun));
        output(cpal::Error::new(ErrorKind::Xrun));
        assert_eq!(metrics.capture_overruns.load(std::sync::atomic::Ordering::Relaxed), 2);
        assert_eq!(metrics.playback_underruns.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert!(rx.try_recv().is_err(), "xruns are not events");
        for _ in 0..3 {
            input(cpal::Error::new(ErrorKind::RealtimeDenied));
            input(cpal::Error::new(ErrorKind::DeviceNotAvailable));
        }
        let events: Vec<_> = rx.try_iter().collect();
        assert_eq!(events.len(), 2, "one notice and one loss");
        assert!(matches!(events[0], Event::Stream { dir: Direction::Input, generation: 3, fatal: false, .. }));
        assert!(matches!(events[1], Event::Stream { dir: Direction::Input, generation: 3, fatal: true, .. }));
    }
}
