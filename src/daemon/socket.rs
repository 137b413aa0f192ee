//! What every WebSocket endpoint shares: the handlers' state ([`App`]), admission (token,
//! allowed origin, per-peer connection limit, message size), and the session loop that moves
//! a client's messages to the inference thread and the model's answer back.
//!
//! An endpoint only says how its messages map to samples and back, by implementing [`Wire`]
//! (`/api/pcm` in `pcm.rs`, `/api/chat` in `chat.rs`), and hands it to [`upgrade`].

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::{FutureExt, SinkExt, StreamExt};

use super::client_text::{Verdict, WarnLimit, escaped};
use super::io::{FrameInput, OutMsg, Outbox, QueueSink, QueueSource};
use super::metrics::Metrics;
use super::runtime::{NewSession, Runtime};
use super::settings::{self, Settings};
use crate::gist::Gist;
use crate::latent_frame::{self, Tap};
use crate::lm::GenConfig;
use crate::protocol::ProtocolError;
use crate::session::Taps;

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct App {
    pub settings: Arc<Settings>,
    /// The sessions' sampling before a client's query string: the user's over the model's.
    pub sampling: GenConfig,
    pub runtime: Runtime,
    pub metrics: Arc<Metrics>,
    pub peers: Arc<Mutex<HashMap<IpAddr, usize>>>,
    /// Prefix latents clients may start with, by name (`?gist=NAME`).
    pub gists: Arc<HashMap<String, Arc<Gist>>>,
    /// The `/api/grad` worker.
    pub grad: Option<super::grad_worker::GradService>,
}

/// Token and origin checks, shared by every endpoint.
// The error is the refusal's HTTP response itself, built once per refused request.
#[allow(clippy::result_large_err)]
pub fn authorize(app: &App, headers: &HeaderMap, query: &HashMap<String, String>) -> Result<(), Response> {
    let network = &app.settings.network;
    if let Some(token) = &network.token {
        let bearer =
            headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        let given = query.get("token").map(String::as_str).or(bearer);
        if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes())) {
            return Err((StatusCode::UNAUTHORIZED, "missing or wrong token\n").into_response());
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
        if !origin_allowed(origin, host, &network.allowed_origins) {
            return Err((StatusCode::FORBIDDEN, format!("origin {origin} is not allowed\n")).into_response());
        }
    }
    Ok(())
}

/// Same-origin requests, loopback pages and the configured allowlist pass.
pub fn origin_allowed(origin: &str, host: &str, allowed: &[String]) -> bool {
    if allowed.iter().any(|a| a == "*" || a == origin) {
        return true;
    }
    let rest = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://"));
    let Some(rest) = rest else { return false };
    if rest == host {
        return true;
    }
    let name = rest.rsplit_once(':').map_or(rest, |(h, _)| h);
    matches!(name, "localhost" | "127.0.0.1" | "[::1]")
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Counts a peer's connection for as long as it lives.
pub struct PeerSlot {
    peers: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl PeerSlot {
    pub fn take(app: &App, ip: IpAddr) -> Option<Self> {
        let mut peers = app.peers.lock().ok()?;
        let n = peers.entry(ip).or_insert(0);
        if *n >= app.settings.network.max_connections_per_peer {
            return None;
        }
        *n += 1;
        Some(Self { peers: app.peers.clone(), ip })
    }

    /// Whether `ip` has a connection to spare.
    pub fn available(app: &App, ip: IpAddr) -> bool {
        app.peers.lock().is_ok_and(|p| p.get(&ip).copied().unwrap_or(0) < app.settings.network.max_connections_per_peer)
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        if let Ok(mut peers) = self.peers.lock()
            && let Some(n) = peers.get_mut(&self.ip)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                peers.remove(&self.ip);
            }
        }
    }
}

/// What an incoming message asks for.
pub enum Incoming {
    /// Samples were appended.
    Samples,
    /// Start the conversation over with a fresh model state.
    Restart,
    /// Nothing to do.
    Nothing,
    /// The client reported an error of its own (logged, rate-limited, escaped).
    Report(String),
    /// Text for the model to say in its own voice.
    Say(String),
    /// The client is leaving.
    Close,
}

/// Why a client's message was refused; the client is told, then closed.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// Moshi's protocol (`/api/chat`): a bad message or Ogg/Opus stream.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// A text message where the endpoint takes binary ones; says what to send instead.
    #[error("{0}")]
    TextMessage(&'static str),
    #[error("binary message of {bytes} bytes is not whole {sample_bytes}-byte samples")]
    PartialSamples { bytes: usize, sample_bytes: usize },
    #[error("samples must be finite")]
    NonFiniteSamples,
    /// A bad frame of latents on a session fed latents (`/api/pcm?input=latents`).
    #[error("{0}")]
    LatentInput(String),
    /// Over `max_message_bytes`: closed with 1009 (message too big).
    #[error("message of {bytes} bytes is over the limit of {max} bytes")]
    TooBig { bytes: usize, max: usize },
}

impl WireError {
    /// The close code ending a session refused for this error.
    fn close_code(&self) -> u16 {
        match self {
            WireError::TooBig { .. } => close_code::SIZE,
            _ => close_code::POLICY,
        }
    }
}

/// One wire protocol over the WebSocket: how messages map to samples and back.
pub trait Wire: Send {
    /// Sent once the session exists.
    fn greeting(&mut self) -> Vec<Message> {
        Vec::new()
    }
    /// Decodes an incoming message, appending audio to `samples`.
    fn incoming(&mut self, msg: Message, samples: &mut Vec<f32>) -> Result<Incoming, WireError>;
    /// Encodes one frame of the model's voice.
    fn audio(&mut self, pcm: &[f32]) -> Result<Vec<Message>, WireError>;
    fn text(&mut self, piece: &str) -> Message;
    /// One tap's vector of one frame ([`latent_frame`]).
    fn latents(&mut self, tap: Tap, frame: u64, shape: &[usize], values: &[f32]) -> Message;
    fn error(&mut self, e: &str) -> Message;
    /// A warning the session goes on after (audio was dropped); `None`: the wire has none.
    fn warning(&mut self, _w: &str) -> Option<Message> {
        None
    }
    /// An event of the session (JSON), in a form the endpoint's clients can ignore.
    fn event(&mut self, json: &str) -> Message;
    /// Whether the client sends frames of Mimi latents instead of audio.
    fn latent_input(&self) -> bool {
        false
    }
    /// Samples of decoded audio dropped since the last call (over the wire's decode budget).
    fn take_dropped(&mut self) -> usize {
        0
    }
}

/// The WebSocket layer reads messages up to this many times `max_message_bytes` whole, so that
/// one over the limit (checked by the session) is answered with close 1009, not a TCP reset; a
/// larger one is refused at its header and closed with 1009, the rest unread.
const READ_LIMIT_FACTOR: usize = 2;

/// The samples buffer a session keeps between messages (a larger one is freed).
const KEPT_SAMPLES: usize = 1 << 16;

/// At most one dropped-audio warning per this long is sent to a client (the counts add up).
const DROP_NOTICE_EVERY: Duration = Duration::from_secs(1);

/// Admission for every WebSocket endpoint: token, origin, sampling parameters, the per-peer
/// connection limit and the message size limit. `wire` is made once the socket is open.
pub fn upgrade(
    ws: WebSocketUpgrade,
    app: App,
    peer: SocketAddr,
    headers: HeaderMap,
    q: HashMap<String, String>,
    kind: &'static str,
    wire: impl FnOnce() -> Result<Box<dyn Wire>, WireError> + Send + 'static,
) -> Response {
    if let Err(r) = authorize(&app, &headers, &q) {
        return r;
    }
    let sampling = match settings::client_sampling(app.sampling, &q) {
        Ok(g) => g,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    let taps = match q.get("latents").map(|l| latent_frame::parse_taps(l)).transpose() {
        Ok(t) => t.unwrap_or_default(),
        Err(e) => return (StatusCode::BAD_REQUEST, format!("latents: {e}\n")).into_response(),
    };
    let gist = match q.get("gist") {
        None => None,
        Some(name) => match app.gists.get(name) {
            Some(g) => Some(g.clone()),
            None => {
                let mut known: Vec<&str> = app.gists.keys().map(String::as_str).collect();
                known.sort_unstable();
                let known = if known.is_empty() { "none".to_string() } else { known.join(", ") };
                let name = escaped(name);
                return (StatusCode::BAD_REQUEST, format!("gist: no gist named `{name}` (known: {known})\n"))
                    .into_response();
            }
        },
    };
    let Some(slot) = PeerSlot::take(&app, peer.ip()) else {
        return (StatusCode::TOO_MANY_REQUESTS, "too many connections from this address\n").into_response();
    };
    let max = app.settings.network.max_message_bytes;
    let read_limit = max.saturating_mul(READ_LIMIT_FACTOR);
    ws.max_message_size(read_limit).max_frame_size(read_limit).on_upgrade(move |socket| async move {
        match wire() {
            Ok(w) => session(socket, app, peer, kind, Opened { sampling, taps, gist }, w, slot).await,
            Err(e) => tracing::error!("{kind} session: {}", escaped(&e.to_string())),
        }
    })
}

fn close(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame { code, reason: reason.into() }))
}

/// Why a session's reader stopped early: told to the client, then closed with `code`.
struct Refusal {
    message: String,
    code: u16,
    /// The close frame's reason.
    reason: &'static str,
    /// Whether the connection may still be read (not after a receive error).
    drain: bool,
}

impl From<WireError> for Refusal {
    fn from(e: WireError) -> Self {
        let code = e.close_code();
        let reason = if code == close_code::SIZE { "message too big" } else { "malformed message" };
        Self { code, reason, message: e.to_string(), drain: true }
    }
}

/// A refused client gets this long to read its error and close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// A receive error: an over-long message (refused at its header) is a [`WireError::TooBig`].
fn receive_error(e: axum::Error, max: usize) -> Refusal {
    use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
    let inner = e.into_inner();
    match inner.downcast_ref::<WsError>() {
        // Reading on would buffer the rest of the message.
        Some(WsError::Capacity(CapacityError::MessageTooLong { size, .. })) => {
            Refusal { drain: false, ..WireError::TooBig { bytes: *size, max }.into() }
        }
        _ => Refusal {
            message: format!("protocol error: {inner}"),
            code: close_code::PROTOCOL,
            reason: "malformed message",
            drain: false,
        },
    }
}

fn message_len(msg: &Message) -> usize {
    match msg {
        Message::Binary(b) => b.len(),
        Message::Text(t) => t.len(),
        Message::Ping(b) | Message::Pong(b) => b.len(),
        Message::Close(_) => 0,
    }
}

/// Logs a per-session warning unless the session is over its budget ([`WarnLimit`]).
fn session_warn(limit: &mut WarnLimit, peer: SocketAddr, warning: std::fmt::Arguments<'_>) {
    match limit.check(Instant::now()) {
        Verdict::Log { suppressed: 0 } => tracing::warn!(%peer, "{warning}"),
        Verdict::Log { suppressed } => {
            tracing::warn!(%peer, suppressed, "{warning} (and {suppressed} warnings suppressed before this one)")
        }
        Verdict::Suppress => {}
    }
}

/// A slow consumer gets this long per message before it is dropped.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// What a client asked for when it connected.
struct Opened {
    sampling: GenConfig,
    taps: Taps,
    gist: Option<Arc<Gist>>,
}

/// Runs one client's session. The per-peer `slot` is given back as soon as the session ends,
/// before the close handshake completes, so a client that reconnects once closed finds it free.
async fn session(
    socket: WebSocket,
    app: App,
    peer: SocketAddr,
    kind: &str,
    opened: Opened,
    mut wire: Box<dyn Wire>,
    slot: PeerSlot,
) {
    let Opened { sampling, taps, gist } = opened;
    let rt = &app.runtime;
    let backlog_frames = app.settings.runtime.backlog_frames;
    let latent_input = wire.latent_input();
    let frame_len = if latent_input { rt.latent_dim } else { rt.frame_size };
    let input = FrameInput::new(frame_len, backlog_frames, rt.waker());
    let outbox = Outbox::new(backlog_frames * 4 + 16);
    let (mut tx, mut rx) = socket.split();
    let id = match rt.add(NewSession {
        kind: format!("{kind} {peer}"),
        config: sampling,
        source: Box::new(QueueSource(input.clone())),
        sink: Box::new(QueueSink(outbox.clone())),
        talk: None,
        remote: true,
        taps,
        gist,
        latent_input,
    }) {
        Ok(id) => id,
        Err(e) => {
            let _ = tx.send(wire.error(&e.to_string())).await;
            let _ = tx.send(close(close_code::AGAIN, "no free session")).await;
            return;
        }
    };
    tracing::info!(%peer, kind, "client connected");
    let wire = Arc::new(tokio::sync::Mutex::new(wire));
    let greeting = wire.lock().await.greeting();
    let network = &app.settings.network;
    let (ping_interval, ping_timeout) = (network.ping_interval(), network.ping_timeout());
    let max_bytes = network.max_message_bytes;
    let mut warnings = WarnLimit::default();
    let reader = async {
        let mut samples: Vec<f32> = Vec::new();
        let mut unreported = 0usize;
        let mut last_notice: Option<Instant> = None;
        loop {
            // Anything the client sends, a pong included, shows it is still there.
            let msg = match tokio::time::timeout(ping_timeout, rx.next()).await {
                Err(_) => {
                    let message = format!("nothing received for {} s, not even a pong", ping_timeout.as_secs());
                    return Some(Refusal { message, code: close_code::ERROR, reason: "ping timeout", drain: false });
                }
                Ok(None) => return None,
                Ok(Some(Ok(m))) => m,
                Ok(Some(Err(e))) => return Some(receive_error(e, max_bytes)),
            };
            let bytes = message_len(&msg);
            app.metrics.bytes_in.fetch_add(bytes as u64, Ordering::Relaxed);
            if bytes > max_bytes {
                return Some(WireError::TooBig { bytes, max: max_bytes }.into());
            }
            samples.clear();
            let (result, dropped) = {
                let mut w = wire.lock().await;
                let result = w.incoming(msg, &mut samples);
                (result, w.take_dropped())
            };
            match result {
                Ok(Incoming::Samples) => input.write(&samples),
                Ok(Incoming::Restart) => rt.reset(id),
                Ok(Incoming::Nothing) => {}
                Ok(Incoming::Report(text)) => {
                    session_warn(&mut warnings, peer, format_args!("client reported an error: {}", escaped(&text)))
                }
                Ok(Incoming::Say(text)) => {
                    if let Err(e) = rt.say(id, text) {
                        outbox.queue.push(OutMsg::Warning(format!("not said: {e}")));
                        outbox.notify.notify_one();
                    }
                }
                Ok(Incoming::Close) => return None,
                Err(e) => return Some(e.into()),
            }
            // Decoded audio is not kept between messages beyond a small buffer.
            samples.shrink_to(KEPT_SAMPLES);
            if dropped > 0 {
                input.count_dropped(dropped.div_ceil(rt.frame_size) as u64);
                unreported += dropped;
                if last_notice.is_none_or(|t| t.elapsed() >= DROP_NOTICE_EVERY) {
                    last_notice = Some(Instant::now());
                    let ms = unreported as u64 * 1000 / crate::protocol::RATE as u64;
                    unreported = 0;
                    let text = format!("{ms} ms of audio dropped: more than the session's decode budget");
                    session_warn(&mut warnings, peer, format_args!("{text}"));
                    outbox.queue.push(OutMsg::Warning(text));
                    outbox.notify.notify_one();
                }
            }
        }
    };
    let writer = async {
        for m in greeting {
            let n = message_len(&m) as u64;
            if tx.send(m).await.is_err() {
                return;
            }
            app.metrics.bytes_out.fetch_add(n, Ordering::Relaxed);
        }
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_interval, ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            while let Some(m) = outbox.queue.pop() {
                let msgs = match m {
                    OutMsg::Audio(pcm) => match wire.lock().await.audio(&pcm) {
                        Ok(m) => m,
                        Err(e) => {
                            tracing::error!("encoding audio: {e}");
                            return;
                        }
                    },
                    OutMsg::Text(t) => vec![wire.lock().await.text(&t)],
                    OutMsg::Latents(tap, frame, shape, values) => {
                        vec![wire.lock().await.latents(tap, frame, &shape, &values)]
                    }
                    OutMsg::Error(e) => vec![wire.lock().await.error(&e)],
                    OutMsg::Warning(w) => wire.lock().await.warning(&w).into_iter().collect(),
                    OutMsg::Event(e) => vec![wire.lock().await.event(&e)],
                    OutMsg::Closed(code, reason) => {
                        let _ = tokio::time::timeout(SEND_TIMEOUT, tx.send(close(code, &reason))).await;
                        return;
                    }
                };
                for msg in msgs {
                    let n = message_len(&msg) as u64;
                    match tokio::time::timeout(SEND_TIMEOUT, tx.send(msg)).await {
                        Ok(Ok(())) => {
                            app.metrics.bytes_out.fetch_add(n, Ordering::Relaxed);
                        }
                        Ok(Err(_)) => return,
                        Err(_) => {
                            tracing::warn!(%peer, "client not reading: dropping it");
                            return;
                        }
                    }
                }
            }
            tokio::select! {
                _ = outbox.notify.notified() => {}
                _ = ping.tick() => match tokio::time::timeout(SEND_TIMEOUT, tx.send(Message::Ping(Default::default()))).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return,
                    Err(_) => {
                        tracing::warn!(%peer, "client not reading: dropping it");
                        return;
                    }
                },
            }
        }
    };
    {
        let mut writer = std::pin::pin!(writer);
        let refused = tokio::select! {
            err = reader => err,
            _ = &mut writer => None,
        };
        if let Some(Refusal { message, code, reason, drain }) = refused {
            tracing::warn!(%peer, "closing client: {}", escaped(&message));
            // Queued before the session is removed, so they come before the runtime's own close.
            outbox.queue.push(OutMsg::Error(message));
            outbox.queue.push(OutMsg::Closed(code, reason.into()));
            outbox.notify.notify_one();
            rt.remove(id);
            drop(slot);
            // Let the writer deliver the error and the close, reading (and discarding) what the
            // client sends meanwhile: a socket closed with unread data resets the connection, and
            // the client may never see the close frame.
            let deliver = async {
                let discard = async { while drain && matches!(rx.next().await, Some(Ok(_))) {} };
                tokio::select! {
                    _ = &mut writer => {
                        while drain && matches!(rx.next().now_or_never(), Some(Some(Ok(_)))) {}
                    }
                    _ = discard => (&mut writer).await,
                }
            };
            let _ = tokio::time::timeout(CLOSE_GRACE, deliver).await;
        } else {
            rt.remove(id);
            drop(slot);
        }
    }
    let suppressed = warnings.take_suppressed();
    if suppressed > 0 {
        tracing::warn!(%peer, suppressed, "{suppressed} more warnings for this client were suppressed");
    }
    // Answer the client's close (or send ours), so that it sees a clean end.
    let _ = tokio::time::timeout(Duration::from_secs(1), tx.close()).await;
    tracing::info!(%peer, kind, "client disconnected");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        assert!(origin_allowed("http://localhost:8998", "localhost:8998", &[]));
        assert!(origin_allowed("http://127.0.0.1:3000", "x:1", &[]));
        assert!(origin_allowed("https://app.example", "x:1", &["https://app.example".into()]));
        assert!(!origin_allowed("https://evil.example", "localhost:8998", &[]));
        assert!(origin_allowed("http://host.lan:8998", "host.lan:8998", &[]));
    }
}
