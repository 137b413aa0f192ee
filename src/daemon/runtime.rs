//! The inference thread. It owns every live session's state and steps the sessions that have a
//! frame ready together, as one batch: `encode_step -> lm.step -> decode_step`. Tokio tasks
//! only move bytes in and out of the sessions' bounded queues.
//!
//! Batching: when the first session has a frame, the thread waits at most `batch_window` for
//! the other active sessions before stepping the ready ones, so sessions that joined at
//! different times still share a step without adding more than that to anyone's latency. A
//! session that sent nothing for two frames is idle and not waited for.
//!
//! Nothing a client sends can starve the others: a network session is stepped at most at real
//! time (with a burst of [`BURST_FRAMES`]; what it sends faster waits in its bounded queue,
//! whose oldest frames are dropped and counted), its restarts are applied at most once per
//! [`RESTART_INTERVAL`] however many it asks for, a silent one ends after the idle timeout, and
//! each tick does a bounded amount of control work. Removals and restarts are flags, not queue
//! entries, so a flood can neither delay nor lose them.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::io::{AudioSink, AudioSource, Poll, Waker};
use super::metrics::{Metrics, SessionStatus};
use super::tools::{self, ToolAction};
use crate::error::{Error, Result};
use crate::gist::Gist;
use crate::lm::GenConfig;
use crate::session::{Engine, FrameIn, SessionState, Taps};

/// A session to start.
pub struct NewSession {
    pub kind: String,
    pub config: GenConfig,
    pub source: Box<dyn AudioSource>,
    pub sink: Box<dyn AudioSink>,
    /// Replace the input by silence while this is false (push-to-talk); `None` = always on.
    pub talk: Option<Arc<AtomicBool>>,
    /// A network client: stepped at most at real time, and ended when idle. The local
    /// microphone and files are neither (a file may be read faster than real time).
    pub remote: bool,
    /// Latents the session's sink gets each frame.
    pub taps: Taps,
    /// Prefix latents the session starts with (and restarts with).
    pub gist: Option<Arc<Gist>>,
    /// The source gives frames of Mimi latents (`[C]` each, [`Runtime::latent_dim`]) instead
    /// of audio.
    pub latent_input: bool,
}

/// Frames a network session may get ahead of real time before pacing holds it back.
pub const BURST_FRAMES: f64 = 3.0;
/// The shortest time between two restarts of one session; asking more often only postpones the
/// next one.
pub const RESTART_INTERVAL: Duration = Duration::from_secs(1);
/// Sessions started per tick at most, so that a burst of connections cannot stall a step.
const ADDS_PER_TICK: usize = 2;
/// Sessions waiting to be started at most; more are refused as busy.
const ADDS_QUEUED: usize = 16;
/// Texts waiting to be said at most (all sessions); more are refused as busy.
const SAYS_QUEUED: usize = 64;
/// Tool outcomes waiting for the inference thread at most; more are dropped (logged).
const TOOL_OUTCOMES_QUEUED: usize = 64;

/// What the other threads ask of the inference thread, taken at each tick. Sessions to start
/// queue (boundedly); removals and restarts are one entry per session however many times they
/// are asked for, so they cannot pile up, and are never refused, so they cannot be lost. One
/// lock covers all of it, so a session removed before it started is simply never started.
#[derive(Default)]
struct Requests {
    add: VecDeque<(u64, NewSession)>,
    remove: HashSet<u64>,
    restart: HashSet<u64>,
    say: VecDeque<(u64, String)>,
    tool_done: VecDeque<tools::Done>,
    stop: bool,
}

/// The requests of one tick.
struct Taken {
    add: Vec<(u64, NewSession)>,
    /// Sessions removed before they started.
    cancelled: Vec<NewSession>,
    remove: HashSet<u64>,
    restart: HashSet<u64>,
    say: VecDeque<(u64, String)>,
    tool_done: VecDeque<tools::Done>,
    stop: bool,
}

impl Requests {
    fn take(&mut self) -> Taken {
        let add: Vec<(u64, NewSession)> = self.add.drain(..self.add.len().min(ADDS_PER_TICK)).collect();
        let mut remove = std::mem::take(&mut self.remove);
        let mut cancelled = Vec::new();
        let mut i = 0;
        while i < self.add.len() {
            if remove.remove(&self.add[i].0) {
                if let Some((_, s)) = self.add.remove(i) {
                    cancelled.push(s);
                }
            } else {
                i += 1;
            }
        }
        if self.stop {
            cancelled.extend(self.add.drain(..).map(|(_, s)| s));
        }
        Taken {
            add,
            cancelled,
            remove,
            restart: std::mem::take(&mut self.restart),
            say: std::mem::take(&mut self.say),
            tool_done: std::mem::take(&mut self.tool_done),
            stop: self.stop,
        }
    }
}

struct Live {
    kind: String,
    config: GenConfig,
    state: SessionState,
    source: Box<dyn AudioSource>,
    sink: Box<dyn AudioSink>,
    talk: Option<Arc<AtomicBool>>,
    pending: Option<Vec<f32>>,
    /// Frames are Mimi latents, not audio.
    latent_input: bool,
    /// Bound tokens said again right after being acted on are ignored.
    debounce: tools::Debounce,
    ended: bool,
    started: Instant,
    remote: bool,
    /// When the source last gave a frame.
    last_input: Instant,
    /// Frames the session may take now (real-time pacing of remote sessions).
    credit: f64,
    credit_at: Instant,
    restart_wanted: bool,
    last_restart: Option<Instant>,
    gist: Option<Arc<Gist>>,
}

impl Live {
    /// Whether pacing lets the session take a frame now; refills its credit first.
    fn may_take_frame(&mut self, frame_time: Duration) -> bool {
        if !self.remote {
            return true;
        }
        let now = Instant::now();
        let earned = (now - self.credit_at).as_secs_f64() / frame_time.as_secs_f64();
        self.credit = (self.credit + earned).min(BURST_FRAMES);
        self.credit_at = now;
        self.credit >= 1.0
    }

    /// Sent a frame within the last two frames' time.
    fn is_active(&self, frame_time: Duration) -> bool {
        self.last_input.elapsed() <= 2 * frame_time
    }
}

/// Handle to the inference thread.
#[derive(Clone)]
pub struct Runtime {
    requests: Arc<Mutex<Requests>>,
    waker: Arc<Waker>,
    next_id: Arc<std::sync::atomic::AtomicU64>,
    active: Arc<std::sync::atomic::AtomicUsize>,
    max_sessions: usize,
    pub frame_size: usize,
    pub sample_rate: usize,
    /// Width of a frame of Mimi latents, for sessions fed latents instead of audio.
    pub latent_dim: usize,
}

/// Settings of the inference loop.
#[derive(Clone, Debug)]
pub struct RuntimeOptions {
    /// Sessions at once, every kind counted.
    pub max_sessions: usize,
    pub batch_window: Duration,
    pub log_transcripts: bool,
    /// A remote session that sends no audio for this long is ended; `None`: never.
    pub idle_timeout: Option<Duration>,
    /// Text tokens bound to actions, by token id.
    pub tools: HashMap<i64, (String, ToolAction)>,
}

impl Runtime {
    /// Starts the inference thread.
    pub fn start(
        engine: Arc<Engine>,
        metrics: Arc<Metrics>,
        options: RuntimeOptions,
    ) -> Result<(Self, std::thread::JoinHandle<()>)> {
        let waker = Arc::new(Waker::default());
        let active = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Requests::default()));
        let runner = if options.tools.values().any(|(_, a)| !a.command.is_empty()) {
            let (requests, waker) = (requests.clone(), waker.clone());
            Some(tools::Runner::start(move |done| {
                if let Ok(mut r) = requests.lock() {
                    if r.tool_done.len() >= TOOL_OUTCOMES_QUEUED {
                        tracing::warn!(token = %done.token, "tool outcome dropped: too many waiting");
                        return;
                    }
                    r.tool_done.push_back(done);
                }
                waker.wake();
            })?)
        } else {
            None
        };
        let rt = Runtime {
            requests: requests.clone(),
            waker: waker.clone(),
            next_id: Arc::new(std::sync::atomic::AtomicU64::new(1)),
            active: active.clone(),
            max_sessions: options.max_sessions,
            frame_size: engine.frame_size(),
            sample_rate: engine.sample_rate(),
            latent_dim: engine.mimi.latent_dim(),
        };
        let handle = std::thread::Builder::new()
            .name("kokichi-inference".into())
            .spawn(move || Loop::new(engine, metrics, options, waker, active, requests, runner).run())
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
        let mut requests = self.requests.lock().map_err(|_| Error::input("the daemon is stopping"))?;
        if requests.stop {
            return Err(Error::input("the daemon is stopping"));
        }
        if requests.add.len() >= ADDS_QUEUED {
            return Err(Error::input("the daemon is busy, try again"));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.active.fetch_add(1, Ordering::Relaxed);
        requests.add.push_back((id, session));
        drop(requests);
        self.waker.wake();
        Ok(id)
    }

    /// Ends a session (its sink is closed). Never lost, however busy the thread is.
    /// Makes session `id`'s model say `text` ([`Engine::say`]); the outcome comes to its sink
    /// as an event. Refused when too many texts are waiting.
    pub fn say(&self, id: u64, text: String) -> std::result::Result<(), String> {
        let mut r = self.requests.lock().map_err(|_| "the inference thread has stopped".to_string())?;
        if r.say.len() >= SAYS_QUEUED {
            return Err(format!("{SAYS_QUEUED} texts already waiting to be said"));
        }
        r.say.push_back((id, text));
        drop(r);
        self.waker.wake();
        Ok(())
    }

    pub fn remove(&self, id: u64) {
        if let Ok(mut r) = self.requests.lock() {
            r.remove.insert(id);
        }
        self.waker.wake();
    }

    /// Starts a session's conversation over (fresh model state, same sampling settings), at
    /// most once per [`RESTART_INTERVAL`]: requests in between are merged into the next one.
    pub fn reset(&self, id: u64) {
        if let Ok(mut r) = self.requests.lock() {
            r.restart.insert(id);
        }
        self.waker.wake();
    }

    /// Stops the thread after closing every session.
    pub fn stop(&self) {
        if let Ok(mut r) = self.requests.lock() {
            r.stop = true;
        }
        self.waker.wake();
    }
}

struct Loop {
    engine: Arc<Engine>,
    metrics: Arc<Metrics>,
    options: RuntimeOptions,
    waker: Arc<Waker>,
    active: Arc<std::sync::atomic::AtomicUsize>,
    requests: Arc<Mutex<Requests>>,
    sessions: HashMap<u64, Live>,
    first_ready: Option<Instant>,
    steps: u64,
    step_avg: f64,
    runner: Option<tools::Runner>,
}

impl Loop {
    fn new(
        engine: Arc<Engine>,
        metrics: Arc<Metrics>,
        options: RuntimeOptions,
        waker: Arc<Waker>,
        active: Arc<std::sync::atomic::AtomicUsize>,
        requests: Arc<Mutex<Requests>>,
        runner: Option<tools::Runner>,
    ) -> Self {
        Self {
            runner,
            engine,
            metrics,
            options,
            waker,
            active,
            requests,
            sessions: HashMap::new(),
            first_ready: None,
            steps: 0,
            step_avg: 0.0,
        }
    }

    fn run(mut self) {
        let frame = self.engine.frame_size();
        let frame_time = Duration::from_secs_f64(frame as f64 / self.engine.sample_rate() as f64);
        let mut scratch = vec![0f32; frame];
        let mut latent_scratch = vec![0f32; self.engine.mimi.latent_dim()];
        loop {
            if self.apply_requests() {
                let ids: Vec<u64> = self.sessions.keys().copied().collect();
                for id in ids {
                    self.end(id, "daemon shutting down");
                }
                tracing::info!("inference thread stopped");
                return;
            }
            // Collect frames.
            for s in self.sessions.values_mut() {
                if s.pending.is_none() && !s.ended && s.may_take_frame(frame_time) {
                    let buf = if s.latent_input { &mut latent_scratch } else { &mut scratch };
                    match s.source.poll_frame(buf) {
                        Poll::Frame => {
                            if s.talk.as_ref().is_some_and(|t| !t.load(Ordering::Relaxed)) {
                                buf.iter_mut().for_each(|v| *v = 0.0);
                            }
                            s.pending = Some(buf.clone());
                            s.last_input = Instant::now();
                            if s.remote {
                                s.credit -= 1.0;
                            }
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
            if let Some(limit) = self.options.idle_timeout {
                let idle: Vec<u64> = self
                    .sessions
                    .iter()
                    .filter(|(_, s)| s.remote && s.pending.is_none() && s.last_input.elapsed() > limit)
                    .map(|(id, _)| *id)
                    .collect();
                for id in idle {
                    self.end(id, &format!("idle: no audio for {} s", limit.as_secs()));
                }
            }
            let ready = self.sessions.values().filter(|s| s.pending.is_some()).count();
            if ready == 0 {
                self.first_ready = None;
                self.waker.wait(frame_time / 8);
                continue;
            }
            let first = *self.first_ready.get_or_insert_with(Instant::now);
            let waiting =
                self.sessions.values().filter(|s| s.pending.is_none() && !s.ended && s.is_active(frame_time)).count();
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
        match self.engine.init_session_with(s.config, s.gist.as_deref()) {
            Ok(mut state) => {
                state.taps = s.taps;
                tracing::info!(id, kind = %s.kind, "session started");
                self.metrics.publish(|st| st.sessions_started += 1);
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
                        latent_input: s.latent_input,
                        debounce: tools::Debounce::default(),
                        ended: false,
                        started: Instant::now(),
                        remote: s.remote,
                        last_input: Instant::now(),
                        credit: BURST_FRAMES,
                        credit_at: Instant::now(),
                        restart_wanted: false,
                        last_restart: None,
                        gist: s.gist,
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

    /// Takes what was asked for since the last tick: starts at most [`ADDS_PER_TICK`] sessions,
    /// ends the removed ones, and restarts each session that asked once [`RESTART_INTERVAL`] has
    /// passed since its last restart. Returns whether the thread is to stop.
    fn apply_requests(&mut self) -> bool {
        let taken = match self.requests.lock() {
            Ok(mut r) => r.take(),
            Err(_) => return true,
        };
        for (id, s) in taken.add {
            self.add(id, s);
        }
        for mut s in taken.cancelled {
            s.sink.close("closed");
            self.active.fetch_sub(1, Ordering::Relaxed);
        }
        for id in taken.remove {
            self.end(id, "closed");
        }
        for (id, text) in taken.say {
            self.say(id, &text, "say");
        }
        for done in taken.tool_done {
            let Some(s) = self.sessions.get_mut(&done.session) else { continue };
            match done.answer {
                Ok(answer) => {
                    s.sink.event(
                        &serde_json::json!({"event": "tool", "token": done.token, "answer": answer}).to_string(),
                    );
                    if !answer.is_empty() {
                        self.say(done.session, &answer, "tool");
                    }
                }
                Err(e) => {
                    tracing::warn!(id = done.session, token = %done.token, "tool: {e}");
                    s.sink.event(&serde_json::json!({"event": "tool", "token": done.token, "error": e}).to_string());
                }
            }
        }
        for id in taken.restart {
            if let Some(s) = self.sessions.get_mut(&id) {
                s.restart_wanted = true;
            }
        }
        let due: Vec<u64> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.restart_wanted && s.last_restart.is_none_or(|t| t.elapsed() >= RESTART_INTERVAL))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.restart(id);
        }
        taken.stop
    }

    /// Queues `text` for session `id` to say; `what` names the event reporting it.
    fn say(&mut self, id: u64, text: &str, what: &str) {
        let Some(s) = self.sessions.get_mut(&id) else { return };
        let event = match self.engine.say(&mut s.state, text) {
            Ok(pieces) => serde_json::json!({"event": what, "said": text, "pieces": pieces}),
            Err(e) => serde_json::json!({"event": what, "said": text, "error": e.to_string()}),
        };
        s.sink.event(&event.to_string());
    }

    fn restart(&mut self, id: u64) {
        if let Some(s) = self.sessions.get_mut(&id) {
            s.restart_wanted = false;
            s.last_restart = Some(Instant::now());
            match self.engine.init_session_with(s.config, s.gist.as_deref()) {
                Ok(mut state) => {
                    state.taps = s.state.taps;
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
            let (dropped_in, dropped_out) = (s.source.dropped(), s.sink.dropped());
            // With the list that no longer holds it, so `/metrics` never counts its drops twice.
            self.publish_sessions_then(|st| {
                st.ended_dropped.0 += dropped_in;
                st.ended_dropped.1 += dropped_out;
            });
            s.sink.close(reason);
            self.active.fetch_sub(1, Ordering::Relaxed);
            tracing::info!(id, kind = %s.kind, frames = s.state.frames, reason, "session ended");
        }
        self.publish_sessions();
    }

    fn step(&mut self, frame_time: Duration) {
        let mut ids: Vec<u64> = self.sessions.iter().filter(|(_, s)| s.pending.is_some()).map(|(id, _)| *id).collect();
        ids.sort_unstable();
        let mut frames: Vec<(Vec<f32>, bool)> = Vec::with_capacity(ids.len());
        for id in &ids {
            if let Some(s) = self.sessions.get_mut(id)
                && let Some(p) = s.pending.take()
            {
                frames.push((p, s.latent_input));
            }
        }
        let inputs: Vec<FrameIn> =
            frames.iter().map(|(f, latent)| if *latent { FrameIn::Latent(f) } else { FrameIn::Pcm(f) }).collect();
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
            self.engine.step_inputs(&mut states, &inputs)
        };
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        self.metrics.observe_step(ms / 1000.0);
        self.steps += 1;
        self.step_avg = if self.steps == 1 { ms } else { 0.9 * self.step_avg + 0.1 * ms };
        let frame_ms = frame_time.as_secs_f64() * 1000.0;
        if self.steps.is_multiple_of(125) {
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
                    let bound = out.text.and_then(|t| self.options.tools.get(&t));
                    if let (Some((token, action)), Some(s)) = (bound, self.sessions.get_mut(id))
                        && s.debounce.admit(token, s.state.frames.saturating_sub(1))
                    {
                        let frame = s.state.frames.saturating_sub(1);
                        s.sink
                            .event(&serde_json::json!({"event": "token", "token": token, "frame": frame}).to_string());
                        if !action.command.is_empty() {
                            let job = tools::Job { session: *id, token: token.clone(), action: action.clone() };
                            let queued =
                                self.runner.as_ref().map_or(Err("no tools thread".to_string()), |r| r.submit(job));
                            if let Err(e) = queued {
                                s.sink.event(
                                    &serde_json::json!({"event": "tool", "token": token, "error": e}).to_string(),
                                );
                            }
                        }
                    }
                    if let Some(s) = self.sessions.get_mut(id) {
                        if self.options.log_transcripts
                            && let Some(p) = &piece
                        {
                            tracing::info!(id, text = %p, "transcript");
                        }
                        // A frame's latents come before its audio.
                        if out.latents != Default::default() {
                            s.sink.latents(s.state.frames.saturating_sub(1), &out.latents);
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
        self.publish_sessions_then(|_| {});
    }

    /// Publishes the session list and `also`'s changes in one update.
    fn publish_sessions_then(&self, also: impl FnOnce(&mut super::metrics::Status)) {
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
        self.metrics.publish(|st| {
            st.sessions = list;
            also(st);
        });
    }
}
