//! What `/api/status` and the logs report: step time, real-time factor, batch size, queue
//! depths, drops, audio xruns and the live sessions. The inference thread publishes a snapshot
//! after every step; readers never block it for longer than a copy.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// One session as `/api/status` shows it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SessionStatus {
    pub id: u64,
    pub kind: String,
    pub frames: u64,
    pub input_backlog: usize,
    pub output_backlog: usize,
    pub dropped_in: u64,
    pub dropped_out: u64,
    pub seconds: f64,
}

/// The whole daemon.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Status {
    pub model: String,
    pub backend: String,
    pub frame_ms: f64,
    /// Duration of the last batched step, in ms.
    pub step_ms: f64,
    /// Exponential average of the step duration, in ms.
    pub step_ms_avg: f64,
    /// Step time over frame time: below 1 keeps up with real time.
    pub rtf: f64,
    pub last_batch: usize,
    pub steps: u64,
    pub sessions: Vec<SessionStatus>,
    pub capture_overruns: u64,
    pub playback_underruns: u64,
    pub audio: String,
    pub talking: bool,
    pub mode: String,
}

/// Shared metrics.
#[derive(Default)]
pub struct Metrics {
    status: Mutex<Status>,
    /// Counted by the audio callbacks (lock-free).
    pub capture_overruns: AtomicU64,
    pub playback_underruns: AtomicU64,
}

impl Metrics {
    pub fn publish(&self, f: impl FnOnce(&mut Status)) {
        if let Ok(mut s) = self.status.lock() {
            f(&mut s);
        }
    }

    pub fn snapshot(&self) -> Status {
        let mut s = self.status.lock().map(|s| s.clone()).unwrap_or_default();
        s.capture_overruns = self.capture_overruns.load(Ordering::Relaxed);
        s.playback_underruns = self.playback_underruns.load(Ordering::Relaxed);
        s
    }
}
