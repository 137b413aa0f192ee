//! What `/api/status` and the logs report: step time, real-time factor, batch size, queue
//! depths, drops, audio xruns and the live sessions. The inference thread publishes a snapshot
//! after every step; readers never block it for longer than a copy. `/metrics` renders the same
//! in Prometheus' text format (0.0.4) with the counters a scraper needs: a step time histogram,
//! WebSocket bytes in and out, and dropped frames including those of ended sessions.

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
    /// Dropped frames of sessions that have ended (in, out): `/metrics` adds the live ones.
    #[serde(skip)]
    pub ended_dropped: (u64, u64),
    /// Sessions started since the daemon started.
    #[serde(skip)]
    pub sessions_started: u64,
}

/// Upper bounds of the step time histogram's buckets, in seconds (a frame is 80 ms).
pub const STEP_BUCKETS: [f64; 12] = [0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.16, 0.32, 0.64, 1.28, 2.56];

/// Step durations: a count per bucket (not cumulative) plus one past the last, and the sum.
#[derive(Clone, Debug, Default)]
pub struct StepHistogram {
    pub counts: [u64; STEP_BUCKETS.len() + 1],
    pub sum_seconds: f64,
}

impl StepHistogram {
    pub fn observe(&mut self, seconds: f64) {
        let i = STEP_BUCKETS.iter().position(|&b| seconds <= b).unwrap_or(STEP_BUCKETS.len());
        self.counts[i] += 1;
        self.sum_seconds += seconds;
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// Shared metrics.
#[derive(Default)]
pub struct Metrics {
    status: Mutex<Status>,
    /// Counted by the audio callbacks (lock-free).
    pub capture_overruns: AtomicU64,
    pub playback_underruns: AtomicU64,
    /// WebSocket message payload bytes received from and sent to clients.
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    steps: Mutex<StepHistogram>,
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

    /// Records one batched step's duration.
    pub fn observe_step(&self, seconds: f64) {
        if let Ok(mut h) = self.steps.lock() {
            h.observe(seconds);
        }
    }

    /// Everything in Prometheus' text exposition format 0.0.4.
    pub fn prometheus(&self) -> String {
        let s = self.snapshot();
        let h = self.steps.lock().map(|h| h.clone()).unwrap_or_default();
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, f64)]| {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for (labels, v) in samples {
                out.push_str(&format!("{name}{labels} {v}\n"));
            }
        };
        let mut cumulative = 0;
        let mut buckets: Vec<(String, f64)> = Vec::new();
        for (i, n) in h.counts.iter().enumerate() {
            cumulative += n;
            let le = STEP_BUCKETS.get(i).map_or("+Inf".to_string(), |b| b.to_string());
            buckets.push((format!("_bucket{{le=\"{le}\"}}"), cumulative as f64));
        }
        buckets.push(("_sum".into(), h.sum_seconds));
        buckets.push(("_count".into(), h.count() as f64));
        let buckets: Vec<(&str, f64)> = buckets.iter().map(|(l, v)| (l.as_str(), *v)).collect();
        metric("kokichi_step_seconds", "histogram", "Duration of one batched inference step.", &buckets);
        metric(
            "kokichi_sessions",
            "gauge",
            "Live sessions (WebSocket clients and local audio).",
            &[("", s.sessions.len() as f64)],
        );
        metric("kokichi_sessions_started_total", "counter", "Sessions started.", &[("", s.sessions_started as f64)]);
        let live_in: u64 = s.sessions.iter().map(|x| x.dropped_in).sum();
        let live_out: u64 = s.sessions.iter().map(|x| x.dropped_out).sum();
        metric(
            "kokichi_dropped_frames_total",
            "counter",
            "Audio frames dropped: input the model could not keep up with, output a client did not read.",
            &[
                ("{direction=\"in\"}", (s.ended_dropped.0 + live_in) as f64),
                ("{direction=\"out\"}", (s.ended_dropped.1 + live_out) as f64),
            ],
        );
        metric(
            "kokichi_audio_xruns_total",
            "counter",
            "Local audio device capture overruns and playback underruns.",
            &[
                ("{kind=\"capture_overrun\"}", s.capture_overruns as f64),
                ("{kind=\"playback_underrun\"}", s.playback_underruns as f64),
            ],
        );
        metric(
            "kokichi_websocket_bytes_total",
            "counter",
            "WebSocket message payload bytes from and to clients.",
            &[
                ("{direction=\"in\"}", self.bytes_in.load(Ordering::Relaxed) as f64),
                ("{direction=\"out\"}", self.bytes_out.load(Ordering::Relaxed) as f64),
            ],
        );
        metric(
            "kokichi_real_time_factor",
            "gauge",
            "Average step time over frame time (below 1 keeps up).",
            &[("", s.rtf)],
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_has_a_cumulative_histogram_and_the_counters() {
        let m = Metrics::default();
        for secs in [0.003, 0.05, 0.05, 3.0] {
            m.observe_step(secs);
        }
        m.bytes_in.store(7680, Ordering::Relaxed);
        m.publish(|s| {
            s.ended_dropped = (2, 1);
            s.sessions = vec![SessionStatus {
                id: 1,
                kind: "pcm".into(),
                frames: 10,
                input_backlog: 0,
                output_backlog: 0,
                dropped_in: 3,
                dropped_out: 0,
                seconds: 1.0,
            }];
        });
        let text = m.prometheus();
        for line in [
            "kokichi_step_seconds_bucket{le=\"0.005\"} 1",
            "kokichi_step_seconds_bucket{le=\"0.06\"} 3",
            "kokichi_step_seconds_bucket{le=\"2.56\"} 3",
            "kokichi_step_seconds_bucket{le=\"+Inf\"} 4",
            "kokichi_step_seconds_count 4",
            "kokichi_sessions 1",
            "kokichi_dropped_frames_total{direction=\"in\"} 5",
            "kokichi_dropped_frames_total{direction=\"out\"} 1",
            "kokichi_websocket_bytes_total{direction=\"in\"} 7680",
            "# TYPE kokichi_step_seconds histogram",
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
        }
    }
}
