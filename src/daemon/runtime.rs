//! The inference thread. It owns every live session's state and steps the sessions that have a
//! frame ready together, as one batch: `encode_step -> lm.step -> decode_step`. Tokio tasks
//! only move bytes in and out of the sessions' bounded queues.
//!
//! Batching: when the first session has a frame, the thread waits at most `batch_window` for
//! the other active sessions before stepping the ready ones, so sessions that joined at
//! different times still share a step without adding more than that to anyone's latency.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use super::io::{AudioSink, AudioSource, Poll, Waker};
use super::metrics::{Metrics, SessionStatus};
use crate::error::{Error, Result};
use crate::lm::GenConfig;
use crate::session::{Engine, SessionState};

/// A session to start.
pub struct NewSession {
    pub kind: String,
    pub config: GenConfig,
    pub source: Box<dyn AudioSource>,
    pub sink: Box<dyn AudioSink>,
    /// Replace the input by silence while this is false (push-to-talk); `None` = always on.
    pub talk: Option<Arc<AtomicBool>>,
}

enum Command {
    Add(u64, NewSession),
    Remove(u64),
    Reset(u64),
    Stop,
}

struct Live {
    kind: String,
    config: GenConfig,
    state: SessionState,
    source: Box<dyn AudioSource>,
    sink: Box<dyn AudioSink>,
    talk: Option<Arc<AtomicBool>>,
    pending: Option<Vec<f32>>,
    ended: bool,
    started: Instant,
}

/// Handle to the inference thread.
#[derive(Clone)]
pub struct Runtime {
    commands: SyncSender<Command>,
    waker: Arc<Waker>,
    next_id: Arc<std::sync::atomic::AtomicU64>,
    active: Arc<std::sync::atomic::AtomicUsize>,
    max_sessions: usize,
    pub frame_size: usize,
    pub sample_rate: usize,
}

/// Settings of the inference loop.
#[derive(Clone, Debug)]
pub struct RuntimeOptions {
    pub max_sessions: usize,
    pub batch_window: Duration,
    pub log_transcripts: bool,
}

impl Runtime {
    /// Starts the inference thread.
    pub fn start(
        engine: Arc<Engine>,
        metrics: Arc<Metrics>,
        options: RuntimeOptions,
    ) -> Result<(Self, std::thread::JoinHandle<()>)> {
        let (tx, rx) = sync_channel(64);
        let waker = Arc::new(Waker::default());
        let active = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let rt = Runtime {
            commands: tx,
            waker: waker.clone(),
            next_id: Arc::new(std::sync::atomic::AtomicU64::new(1)),
            active: active.clone(),
            max_sessions: options.max_sessions,
            frame_size: engine.frame_size(),
            sample_rate: engine.sample_rate(),
        };
        let handle = std::thread::Builder::new()
            .name("kokichi-inference".into())
            .spawn(move || Loop::new(engine, metrics, options, waker, active).run(rx))
            .map_err(|e| Error::Backend(format!("cannot start the inference thread: {e}")))?;
        Ok((rt, handle))
    }

    pub fn waker(&self) -> Arc<Waker> {
        self.waker.clone()
    }

    /// Live sessions.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Adds a session; fails when the daemon is full or stopping.
    pub fn add(&self, session: NewSession) -> Result<u64> {
        if self.active() >= self.max_sessions {
            return Err(Error::input(format!("all {} sessions are in use", self.max_sessions)));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.active.fetch_add(1, Ordering::Relaxed);
        match self.commands.try_send(Command::Add(id, session)) {
            Ok(()) => {
                self.waker.wake();
                Ok(id)
            }
            Err(e) => {
                self.active.fetch_sub(1, Ordering::Relaxed);
                Err(Error::input(match e {
                    TrySendError::Full(_) => "the daemon is busy, try again".to_string(),
                    TrySendError::Disconnected(_) => "the daemon is stopping".to_string(),
                }))
            }
        }
    }

    /// Ends a session (its sink is closed).
    pub fn remove(&self, id: u64) {
        if self.commands.try_send(Command::Remove(id)).is_ok() {
            self.waker.wake();
        }
    }

    /// Starts a session's conversation over (fresh model state, same sampling settings).
    pub fn reset(&self, id: u64) {
        if self.commands.try_send(Command::Reset(id)).is_ok() {
            self.waker.wake();
        }
    }

    /// Stops the thread after closing every session.
    pub fn stop(&self) {
        // A blocking send: the stop must not be lost behind a full queue.
        let _ = self.commands.send(Command::Stop);
        self.waker.wake();
    }
}

struct Loop {
    engine: Arc<Engine>,
    metrics: Arc<Metrics>,
    options: RuntimeOptions,
    waker: Arc<Waker>,
    active: Arc<std::sync::atomic::AtomicUsize>,
    sessions: HashMap<u64, Live>,
    first_ready: Option<Instant>,
    steps: u64,
    step_avg: f64,
}

impl Loop {
    fn new(
        engine: Arc<Engine>,
        metrics: Arc<Metrics>,
        options: RuntimeOptions,
        waker: Arc<Waker>,
        active: Arc<std::sync::atomic::AtomicUsize>,
    ) -> Self {
        Self {
            engine,
            metrics,
            options,
            waker,
            active,
            sessions: HashMap::new(),
            first_ready: None,
            steps: 0,
            step_avg: 0.0,
        }
    }

    fn run(mut self, commands: Receiver<Command>) {
        let frame = self.engine.frame_size();
        let frame_time = Duration::from_secs_f64(frame as f64 / self.engine.sample_rate() as f64);
        loop {
            while let Ok(cmd) = commands.try_recv() {
                match cmd {
                    Command::Add(id, s) => self.add(id, s),
                    Command::Remove(id) => self.end(id, "closed"),
                    Command::Reset(id) => self.reset(id),
                    Command::Stop => {
                        let ids: Vec<u64> = self.sessions.keys().copied().collect();
                        for id in ids {
                            self.end(id, "daemon shutting down");
                        }
                        tracing::info!("inference thread stopped");
                        return;
                    }
                }
            }
            // Collect frames.
            let mut scratch = vec![0f32; frame];
            for s in self.sessions.values_mut() {
                if s.pending.is_none() && !s.ended {
                    match s.source.poll_frame(&mut scratch) {
                        Poll::Frame => {
                            if s.talk.as_ref().is_some_and(|t| !t.load(Ordering::Relaxed)) {
                                scratch.iter_mut().for_each(|v| *v = 0.0);
                            }
                            s.pending = Some(scratch.clone());
                        }
                        Poll::Ended => s.ended = true,
                        Poll::Pending => {}
                    }
                }
            }
            let finished: Vec<u64> =
                self.sessions.iter().filter(|(_, s)| s.ended && s.pending.is_none()).map(|(id, _)| *id).collect();
            for id in finished {
                self.end(id, "input ended");
            }
            let ready = self.sessions.values().filter(|s| s.pending.is_some()).count();
            if ready == 0 {
                self.first_ready = None;
                self.waker.wait(frame_time / 8);
                continue;
            }
            let first = *self.first_ready.get_or_insert_with(Instant::now);
            let waiting = self.sessions.values().filter(|s| s.pending.is_none() && !s.ended).count();
            if waiting > 0 && first.elapsed() < self.options.batch_window {
                self.waker
                    .wait(self.options.batch_window.saturating_sub(first.elapsed()).min(Duration::from_millis(5)));
                continue;
            }
            self.first_ready = None;
            self.step(frame_time);
        }
    }

    fn add(&mut self, id: u64, s: NewSession) {
        match self.engine.init_session(s.config) {
            Ok(state) => {
                tracing::info!(id, kind = %s.kind, "session started");
                self.sessions.insert(
                    id,
                    Live {
                        kind: s.kind,
                        config: s.config,
                        state,
                        source: s.source,
                        sink: s.sink,
                        talk: s.talk,
                        pending: None,
                        ended: false,
                        started: Instant::now(),
                    },
                );
            }
            Err(e) => {
                let mut sink = s.sink;
                sink.close(&format!("cannot start a session: {e}"));
                self.active.fetch_sub(1, Ordering::Relaxed);
            }
        }
        self.publish_sessions();
    }

    fn reset(&mut self, id: u64) {
        if let Some(s) = self.sessions.get_mut(&id) {
            match self.engine.init_session(s.config) {
                Ok(state) => {
                    s.state = state;
                    s.pending = None;
                    tracing::info!(id, "session restarted");
                }
                Err(e) => tracing::error!(id, "cannot restart: {e}"),
            }
        }
    }

    fn end(&mut self, id: u64, reason: &str) {
        if let Some(mut s) = self.sessions.remove(&id) {
            s.sink.close(reason);
            self.active.fetch_sub(1, Ordering::Relaxed);
            tracing::info!(id, kind = %s.kind, frames = s.state.frames, reason, "session ended");
        }
        self.publish_sessions();
    }

    fn step(&mut self, frame_time: Duration) {
        let mut ids: Vec<u64> = self.sessions.iter().filter(|(_, s)| s.pending.is_some()).map(|(id, _)| *id).collect();
        ids.sort_unstable();
        let mut pcm = Vec::with_capacity(ids.len() * self.engine.frame_size());
        for id in &ids {
            if let Some(p) = self.sessions.get_mut(id).and_then(|s| s.pending.take()) {
                pcm.extend_from_slice(&p);
            }
        }
        let t0 = Instant::now();
        let result = {
            let mut states: Vec<&mut SessionState> = Vec::with_capacity(ids.len());
            // Borrow each selected session's state mutably, in id order.
            let mut by_id: Vec<(&u64, &mut Live)> =
                self.sessions.iter_mut().filter(|(id, _)| ids.contains(id)).collect();
            by_id.sort_unstable_by_key(|(id, _)| **id);
            for (_, live) in by_id {
                states.push(&mut live.state);
            }
            self.engine.step(&mut states, &pcm)
        };
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        self.steps += 1;
        self.step_avg = if self.steps == 1 { ms } else { 0.9 * self.step_avg + 0.1 * ms };
        let frame_ms = frame_time.as_secs_f64() * 1000.0;
        if self.steps % 125 == 0 {
            tracing::debug!(step_ms = self.step_avg, rtf = self.step_avg / frame_ms, batch = ids.len(), "inference");
        }
        let (avg, steps, batch) = (self.step_avg, self.steps, ids.len());
        self.metrics.publish(|st| {
            st.step_ms = ms;
            st.step_ms_avg = avg;
            st.rtf = avg / frame_ms;
            st.frame_ms = frame_ms;
            st.last_batch = batch;
            st.steps = steps;
        });
        match result {
            Ok(outs) => {
                for (id, out) in ids.iter().zip(outs) {
                    let piece = out.text.and_then(|t| self.engine.text_piece(t));
                    if let Some(s) = self.sessions.get_mut(id) {
                        if self.options.log_transcripts {
                            if let Some(p) = &piece {
                                tracing::info!(id, text = %p, "transcript");
                            }
                        }
                        s.sink.push(&out.pcm, piece.as_deref());
                    }
                }
            }
            Err(e) => {
                tracing::error!("step failed: {e}");
                for id in &ids {
                    self.end(*id, &format!("model error: {e}"));
                }
            }
        }
        self.publish_sessions();
    }

    fn publish_sessions(&self) {
        let mut list: Vec<SessionStatus> = self
            .sessions
            .iter()
            .map(|(id, s)| SessionStatus {
                id: *id,
                kind: s.kind.clone(),
                frames: s.state.frames,
                input_backlog: s.source.backlog(),
                output_backlog: s.sink.backlog(),
                dropped_in: s.source.dropped(),
                dropped_out: s.sink.dropped(),
                seconds: s.started.elapsed().as_secs_f64(),
            })
            .collect();
        list.sort_by_key(|s| s.id);
        self.metrics.publish(|st| st.sessions = list);
    }
}
