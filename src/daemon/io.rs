//! The two ends of a session: an [`AudioSource`] that yields 24 kHz frames and an
//! [`AudioSink`] that takes the model's frames and text. The local microphone and speaker, a
//! WebSocket client and a file are implementations of the same pair, so the runtime treats
//! every session alike.
//!
//! Queues between tokio tasks and the inference thread are bounded: a full input queue drops its
//! oldest frame (the session fell behind), a full output queue drops its oldest message (the
//! client is not reading). Both count what they drop.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::latent_frame::Tap;
use crate::session::FrameLatents;

/// What a source has to offer right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Poll {
    /// A frame was written.
    Frame,
    /// Nothing yet.
    Pending,
    /// The source is finished; the session ends once its last frame is processed.
    Ended,
}

/// Where a session's audio comes from.
pub trait AudioSource: Send {
    /// Writes the next frame into `frame` (exactly one frame of 24 kHz samples) if one is ready.
    fn poll_frame(&mut self, frame: &mut [f32]) -> Poll;
    /// Frames waiting in the source.
    fn backlog(&self) -> usize {
        0
    }
    /// Frames dropped because the session fell behind.
    fn dropped(&self) -> u64 {
        0
    }
}

/// Where a session's output goes.
pub trait AudioSink: Send {
    /// One frame of the model's voice, with the text piece produced in the same step.
    fn push(&mut self, pcm: &[f32], text: Option<&str>);
    /// The latents of frame `frame` (counting from 0), for a session that asked for them.
    fn latents(&mut self, _frame: u64, _latents: &FrameLatents) {}
    /// An event of the session (a special token, a tool's outcome, text said), as JSON.
    fn event(&mut self, _json: &str) {}
    /// The session is over (client gone, source ended, shutdown). Flush and release.
    fn close(&mut self, reason: &str);
    /// Messages waiting to be delivered.
    fn backlog(&self) -> usize {
        0
    }
    /// Messages dropped because the consumer did not keep up.
    fn dropped(&self) -> u64 {
        0
    }
}

/// Wakes the inference thread when a source may have a frame.
#[derive(Default)]
pub struct Waker {
    flag: Mutex<bool>,
    cond: Condvar,
}

impl Waker {
    pub fn wake(&self) {
        if let Ok(mut f) = self.flag.lock() {
            *f = true;
            self.cond.notify_one();
        }
    }

    /// Waits for a wake-up or the timeout, then clears the flag.
    pub fn wait(&self, timeout: Duration) {
        let Ok(f) = self.flag.lock() else { return };
        let mut f = if *f {
            f
        } else {
            match self.cond.wait_timeout(f, timeout) {
                Ok((g, _)) => g,
                Err(_) => return,
            }
        };
        *f = false;
    }
}

/// A bounded queue dropping its oldest item when full.
pub struct Bounded<T> {
    items: Mutex<VecDeque<T>>,
    cap: usize,
    dropped: AtomicU64,
    closed: AtomicBool,
}

impl<T> Bounded<T> {
    pub fn new(cap: usize) -> Self {
        Self {
            items: Mutex::new(VecDeque::with_capacity(cap)),
            cap: cap.max(1),
            dropped: AtomicU64::new(0),
            closed: AtomicBool::new(false),
        }
    }

    /// Pushes `item`; returns false if the oldest item had to be dropped.
    pub fn push(&self, item: T) -> bool {
        let Ok(mut q) = self.items.lock() else { return false };
        let mut kept = true;
        if q.len() >= self.cap {
            q.pop_front();
            self.dropped.fetch_add(1, Ordering::Relaxed);
            kept = false;
        }
        q.push_back(item);
        kept
    }

    pub fn pop(&self) -> Option<T> {
        self.items.lock().ok()?.pop_front()
    }

    pub fn len(&self) -> usize {
        self.items.lock().map(|q| q.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Counts `n` items dropped before they reached the queue.
    pub fn count_dropped(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
    }

    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

/// Cuts a stream of samples into frames, into a bounded queue the runtime drains.
pub struct FrameInput {
    frames: Bounded<Vec<f32>>,
    partial: Mutex<Vec<f32>>,
    frame: usize,
    waker: Arc<Waker>,
}

impl FrameInput {
    pub fn new(frame: usize, backlog: usize, waker: Arc<Waker>) -> Arc<Self> {
        Arc::new(Self { frames: Bounded::new(backlog), partial: Mutex::new(Vec::with_capacity(frame)), frame, waker })
    }

    /// Appends samples; every completed frame is queued (dropping the oldest when behind).
    pub fn write(&self, mut samples: &[f32]) {
        let Ok(mut part) = self.partial.lock() else { return };
        let mut queued = false;
        while !samples.is_empty() {
            let take = (self.frame - part.len()).min(samples.len());
            part.extend_from_slice(&samples[..take]);
            samples = &samples[take..];
            if part.len() == self.frame {
                let full = std::mem::replace(&mut *part, Vec::with_capacity(self.frame));
                self.frames.push(full);
                queued = true;
            }
        }
        drop(part);
        if queued {
            self.waker.wake();
        }
    }

    /// Counts `frames` frames the session's wire dropped before they were written here (they
    /// show in the session's `dropped_in`, like those the queue drops).
    pub fn count_dropped(&self, frames: u64) {
        self.frames.count_dropped(frames);
    }

    /// No more input: the session ends after the queued frames.
    pub fn finish(&self) {
        self.frames.close();
        self.waker.wake();
    }
}

/// The runtime's view of a [`FrameInput`].
pub struct QueueSource(pub Arc<FrameInput>);

impl AudioSource for QueueSource {
    fn poll_frame(&mut self, frame: &mut [f32]) -> Poll {
        match self.0.frames.pop() {
            Some(f) if f.len() == frame.len() => {
                frame.copy_from_slice(&f);
                Poll::Frame
            }
            Some(_) => Poll::Pending,
            None if self.0.frames.is_closed() => Poll::Ended,
            None => Poll::Pending,
        }
    }

    fn backlog(&self) -> usize {
        self.0.frames.len()
    }

    fn dropped(&self) -> u64 {
        self.0.frames.dropped()
    }
}

/// Messages from the runtime to a client.
#[derive(Debug, Clone, PartialEq)]
pub enum OutMsg {
    Audio(Vec<f32>),
    Text(String),
    /// One tap's values of one frame: tap, frame index, shape, values.
    Latents(Tap, u64, Vec<usize>, Vec<f32>),
    /// A warning for the client (audio was dropped); the session goes on.
    Warning(String),
    /// An event of the session, as JSON.
    Event(String),
    /// An error to report to the client before closing.
    Error(String),
    /// Close the connection with this WebSocket close code and reason.
    Closed(u16, String),
}

/// A bounded outbox drained by an async writer task.
pub struct Outbox {
    pub queue: Bounded<OutMsg>,
    pub notify: tokio::sync::Notify,
}

impl Outbox {
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self { queue: Bounded::new(cap), notify: tokio::sync::Notify::new() })
    }
}

/// The runtime's view of an [`Outbox`].
pub struct QueueSink(pub Arc<Outbox>);

impl AudioSink for QueueSink {
    fn push(&mut self, pcm: &[f32], text: Option<&str>) {
        if let Some(t) = text {
            self.0.queue.push(OutMsg::Text(t.to_string()));
        }
        self.0.queue.push(OutMsg::Audio(pcm.to_vec()));
        self.0.notify.notify_one();
    }

    fn latents(&mut self, frame: u64, latents: &FrameLatents) {
        for (tap, values) in [(Tap::Mimi, &latents.mimi), (Tap::Lm, &latents.lm)] {
            if let Some(v) = values {
                self.0.queue.push(OutMsg::Latents(tap, frame, vec![v.len()], v.clone()));
            }
        }
        if let Some(top) = &latents.logits {
            let k = top.ids.len();
            let values = top.ids.iter().map(|&i| i as f32).chain(top.values.iter().copied()).collect();
            self.0.queue.push(OutMsg::Latents(Tap::Logits, frame, vec![2, k], values));
        }
        self.0.notify.notify_one();
    }

    fn event(&mut self, json: &str) {
        self.0.queue.push(OutMsg::Event(json.to_string()));
        self.0.notify.notify_one();
    }

    fn close(&mut self, reason: &str) {
        // 1011: the server failed; 1001: going away (shutdown, session ended).
        let code = if reason.starts_with("model error") { 1011 } else { 1001 };
        self.0.queue.push(OutMsg::Closed(code, reason.to_string()));
        self.0.queue.close();
        self.0.notify.notify_one();
    }

    fn backlog(&self) -> usize {
        self.0.queue.len()
    }

    fn dropped(&self) -> u64 {
        self.0.queue.dropped()
    }
}

/// A file played in real time (or as fast as the model runs, with `paced = false`).
pub struct FileSource {
    samples: Vec<f32>,
    pos: usize,
    start: Option<Instant>,
    frame_duration: Duration,
    paced: bool,
    served: u32,
}

impl FileSource {
    /// Reads `path` (any format) at `rate`; the last frame is padded with silence.
    pub fn open(path: &std::path::Path, rate: u32, frame: usize, paced: bool) -> Result<Self> {
        let mut samples = crate::audio::read_audio(path, rate)?;
        samples.resize(samples.len().div_ceil(frame) * frame, 0.0);
        Ok(Self {
            samples,
            pos: 0,
            start: None,
            frame_duration: Duration::from_secs_f64(frame as f64 / rate as f64),
            paced,
            served: 0,
        })
    }
}

impl AudioSource for FileSource {
    fn poll_frame(&mut self, frame: &mut [f32]) -> Poll {
        if self.pos + frame.len() > self.samples.len() {
            return Poll::Ended;
        }
        if self.paced {
            let start = *self.start.get_or_insert_with(Instant::now);
            if start.elapsed() < self.frame_duration * self.served {
                return Poll::Pending;
            }
        }
        frame.copy_from_slice(&self.samples[self.pos..self.pos + frame.len()]);
        self.pos += frame.len();
        self.served += 1;
        Poll::Frame
    }

    fn backlog(&self) -> usize {
        0
    }
}

/// A source whose frames are scaled by a fixed gain (the `input_gain` setting), clamped to
/// full scale. Applied on the inference thread, after the device ring: no callback work.
pub struct GainSource {
    inner: Box<dyn AudioSource>,
    factor: f32,
}

impl GainSource {
    /// `inner` itself when `db` is 0, else `inner` scaled by `db` decibels.
    pub fn wrap(inner: Box<dyn AudioSource>, db: f32) -> Box<dyn AudioSource> {
        if db == 0.0 { inner } else { Box::new(Self { inner, factor: crate::audio::gain_factor(db) }) }
    }
}

impl AudioSource for GainSource {
    fn poll_frame(&mut self, frame: &mut [f32]) -> Poll {
        let poll = self.inner.poll_frame(frame);
        if poll == Poll::Frame {
            crate::audio::apply_gain(frame, self.factor);
        }
        poll
    }

    fn backlog(&self) -> usize {
        self.inner.backlog()
    }

    fn dropped(&self) -> u64 {
        self.inner.dropped()
    }
}

/// Collects the model's voice and text and writes them when the session closes.
pub struct FileSink {
    path: PathBuf,
    transcript: Option<PathBuf>,
    rate: u32,
    pcm: Vec<f32>,
    text: String,
    written: bool,
}

impl FileSink {
    pub fn new(path: PathBuf, transcript: Option<PathBuf>, rate: u32) -> Self {
        Self { path, transcript, rate, pcm: Vec::new(), text: String::new(), written: false }
    }

    fn write(&mut self) -> Result<()> {
        crate::audio::write_wav(&self.path, &self.pcm, self.rate)?;
        if let Some(t) = &self.transcript {
            std::fs::write(t, format!("{}\n", self.text.trim())).map_err(|e| crate::Error::io(t, e))?;
        }
        Ok(())
    }
}

impl AudioSink for FileSink {
    fn push(&mut self, pcm: &[f32], text: Option<&str>) {
        self.pcm.extend_from_slice(pcm);
        if let Some(t) = text {
            self.text.push_str(t);
        }
    }

    fn close(&mut self, reason: &str) {
        if self.written {
            return;
        }
        self.written = true;
        match self.write() {
            Ok(()) => tracing::info!(path = %self.path.display(), reason, "output file written"),
            Err(e) => tracing::error!("{e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_queue_drops_the_oldest_and_counts() {
        let q = Bounded::new(3);
        for i in 0..5 {
            q.push(i);
        }
        assert_eq!(q.len(), 3);
        assert_eq!(q.dropped(), 2);
        assert_eq!(q.pop(), Some(2));
    }

    #[test]
    fn frames_are_cut_from_any_chunking_and_a_backlog_is_bounded() {
        let waker = Arc::new(Waker::default());
        let input = FrameInput::new(4, 2, waker);
        input.write(&[1.0, 2.0, 3.0]);
        input.write(&[4.0, 5.0]);
        input.write(&[6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0, 13.0]);
        let mut src = QueueSource(input.clone());
        let mut f = [0f32; 4];
        // Three frames were completed; the backlog of 2 dropped the first.
        assert_eq!(src.poll_frame(&mut f), Poll::Frame);
        assert_eq!(f, [5.0, 6.0, 7.0, 8.0]);
        assert_eq!(src.poll_frame(&mut f), Poll::Frame);
        assert_eq!(f, [9.0, 10.0, 11.0, 12.0]);
        assert_eq!(src.poll_frame(&mut f), Poll::Pending);
        assert_eq!(src.dropped(), 1);
        input.finish();
        assert_eq!(src.poll_frame(&mut f), Poll::Ended);
    }

    #[test]
    fn gain_scales_frames_and_passes_the_rest_through() {
        let waker = Arc::new(Waker::default());
        let input = FrameInput::new(2, 1, waker);
        input.write(&[0.1, -0.2, 0.3, 0.4]);
        let mut src = GainSource::wrap(Box::new(QueueSource(input.clone())), 20.0);
        let mut f = [0f32; 2];
        assert_eq!(src.poll_frame(&mut f), Poll::Frame);
        // The backlog of one frame dropped the first; the second, ten times louder, clamps.
        assert!((f[0] - 1.0).abs() < 1e-6 && (f[1] - 1.0).abs() < 1e-6, "{f:?}");
        assert_eq!(src.dropped(), 1);
        assert_eq!(src.poll_frame(&mut f), Poll::Pending);
        input.write(&[0.01, -0.02]);
        assert_eq!(src.backlog(), 1);
        assert_eq!(src.poll_frame(&mut f), Poll::Frame);
        assert!((f[0] - 0.1).abs() < 1e-6 && (f[1] + 0.2).abs() < 1e-6, "{f:?}");
        input.finish();
        assert_eq!(src.poll_frame(&mut f), Poll::Ended);
    }
}
