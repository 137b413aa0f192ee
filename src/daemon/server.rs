//! HTTP and WebSocket front: `GET /api/status` (JSON metrics) and `GET /api/pcm` (raw PCM
//! sessions). Connections are checked before they reach the model: token (when set), allowed
//! origin, per-peer connection limit, message size.
//!
//! `/api/pcm`: binary messages of little-endian f32 mono 24 kHz samples in any size (`?format=s16`
//! for 16-bit); one binary message per 80 ms frame comes back, and each inner-monologue text
//! piece as a text message. A malformed message gets an error text message and a close, for
//! that client only.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::{SinkExt, StreamExt};

use super::config::DaemonConfig;
use super::io::{FrameInput, OutMsg, Outbox, QueueSink, QueueSource};
use super::metrics::Metrics;
use super::runtime::{NewSession, Runtime};
use crate::lm::GenConfig;
use crate::lm::sampling::SamplingOverrides;

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct App {
    pub config: Arc<DaemonConfig>,
    /// The sessions' sampling before a client's query string: the user's over the model's.
    pub sampling: GenConfig,
    pub runtime: Runtime,
    pub metrics: Arc<Metrics>,
    pub peers: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

pub fn router(app: App) -> Router {
    Router::new()
        .route("/", get(|| async { page("text/html; charset=utf-8", include_str!("../../assets/web/index.html")) }))
        .route("/app.js", get(|| async { page("text/javascript", include_str!("../../assets/web/app.js")) }))
        .route("/worklet.js", get(|| async { page("text/javascript", include_str!("../../assets/web/worklet.js")) }))
        .route("/api/status", get(status))
        .route("/api/pcm", get(pcm))
        .route("/api/chat", get(super::chat::chat))
        .with_state(app)
}

/// The web page (compiled in, so the daemon is one file).
fn page(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

async fn status(State(app): State<App>, headers: HeaderMap, Query(q): Query<HashMap<String, String>>) -> Response {
    if let Err(r) = authorize(&app, &headers, &q) {
        return r;
    }
    axum::Json(app.metrics.snapshot()).into_response()
}

/// Token and origin checks, shared by every endpoint.
pub fn authorize(app: &App, headers: &HeaderMap, query: &HashMap<String, String>) -> Result<(), Response> {
    if let Some(token) = &app.config.token {
        let bearer =
            headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        let given = query.get("token").map(String::as_str).or(bearer);
        if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes())) {
            return Err((StatusCode::UNAUTHORIZED, "missing or wrong token\n").into_response());
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
        if !origin_allowed(origin, host, &app.config.allowed_origins) {
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

/// Sampling parameters from a query string, as Moshi's web UI sends them.
pub fn gen_from_query(base: GenConfig, q: &HashMap<String, String>) -> Result<GenConfig, String> {
    let f = |k: &str| -> Result<Option<f32>, String> {
        q.get(k).map(|v| v.parse::<f32>().map_err(|_| format!("{k}: `{v}` is not a number"))).transpose()
    };
    let u = |k: &str| -> Result<Option<u64>, String> {
        q.get(k).map(|v| v.parse::<u64>().map_err(|_| format!("{k}: `{v}` is not an unsigned integer"))).transpose()
    };
    let greedy = match q.get("greedy").map(String::as_str) {
        None => None,
        Some("1" | "true") => Some(true),
        Some("0" | "false") => Some(false),
        Some(v) => return Err(format!("greedy: `{v}` is not 1, 0, true or false")),
    };
    let o = SamplingOverrides {
        greedy,
        text_temperature: f("text_temperature")?,
        text_topk: u("text_topk")?.map(|k| k as usize),
        audio_temperature: f("audio_temperature")?,
        audio_topk: u("audio_topk")?.map(|k| k as usize),
        seed: None,
    };
    let mut g = o.over(base);
    if let Some(s) = u("text_seed")? {
        g.text_seed = Some(s);
    }
    if let Some(s) = u("audio_seed")? {
        g.audio_seed = Some(s);
    }
    for (k, s) in [("text_temperature", g.text), ("audio_temperature", g.audio)] {
        if !s.temperature.is_finite() || !(0.0..=10.0).contains(&s.temperature) {
            return Err(format!("{k}: {} is out of range 0..10", s.temperature));
        }
    }
    Ok(g)
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
        if *n >= app.config.max_connections_per_peer {
            return None;
        }
        *n += 1;
        Some(Self { peers: app.peers.clone(), ip })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        if let Ok(mut peers) = self.peers.lock() {
            if let Some(n) = peers.get_mut(&self.ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    peers.remove(&self.ip);
                }
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Format {
    F32,
    S16,
}

/// What an incoming message asks for.
pub enum Incoming {
    /// Samples were appended.
    Samples,
    /// Start the conversation over with a fresh model state.
    Restart,
    /// Nothing to do.
    Nothing,
    /// The client is leaving.
    Close,
}

/// One wire protocol over the WebSocket: how messages map to samples and back.
pub trait Wire: Send {
    /// Sent once the session exists.
    fn greeting(&mut self) -> Vec<Message> {
        Vec::new()
    }
    /// Decodes an incoming message, appending audio to `samples`.
    fn incoming(&mut self, msg: Message, samples: &mut Vec<f32>) -> Result<Incoming, String>;
    /// Encodes one frame of the model's voice.
    fn audio(&mut self, pcm: &[f32]) -> Result<Vec<Message>, String>;
    fn text(&mut self, piece: &str) -> Message;
    fn error(&mut self, e: &str) -> Message;
}

/// `/api/pcm`: raw little-endian samples.
struct PcmWire(Format);

impl Wire for PcmWire {
    fn incoming(&mut self, msg: Message, samples: &mut Vec<f32>) -> Result<Incoming, String> {
        let size = if self.0 == Format::F32 { 4 } else { 2 };
        match msg {
            Message::Binary(b) => {
                if b.len() % size != 0 {
                    return Err(format!("binary message of {} bytes is not whole {size}-byte samples", b.len()));
                }
                if self.0 == Format::F32 {
                    let start = samples.len();
                    samples.extend(b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])));
                    if samples[start..].iter().any(|v| !v.is_finite()) {
                        return Err("samples must be finite".into());
                    }
                } else {
                    samples.extend(b.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]]) as f32 / 32768.0));
                }
                Ok(Incoming::Samples)
            }
            Message::Text(_) => Err("text messages are not accepted on /api/pcm".into()),
            Message::Close(_) => Ok(Incoming::Close),
            _ => Ok(Incoming::Nothing),
        }
    }

    fn audio(&mut self, pcm: &[f32]) -> Result<Vec<Message>, String> {
        Ok(vec![Message::Binary(encode(pcm, self.0).into())])
    }

    fn text(&mut self, piece: &str) -> Message {
        Message::Text(piece.into())
    }

    fn error(&mut self, e: &str) -> Message {
        Message::Text(format!("error: {e}").into())
    }
}

async fn pcm(
    ws: WebSocketUpgrade,
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let format = match q.get("format").map(String::as_str) {
        None | Some("f32") => Format::F32,
        Some("s16") => Format::S16,
        Some(other) => {
            return (StatusCode::BAD_REQUEST, format!("format `{other}`: expected f32 or s16\n")).into_response();
        }
    };
    upgrade(ws, app, peer, headers, q, "pcm", move || Ok(Box::new(PcmWire(format)) as Box<dyn Wire>))
}

/// Shared admission for every WebSocket endpoint: token, origin, sampling parameters, the
/// per-peer connection limit and the message size limit.
pub fn upgrade(
    ws: WebSocketUpgrade,
    app: App,
    peer: SocketAddr,
    headers: HeaderMap,
    q: HashMap<String, String>,
    kind: &'static str,
    wire: impl FnOnce() -> Result<Box<dyn Wire>, String> + Send + 'static,
) -> Response {
    if let Err(r) = authorize(&app, &headers, &q) {
        return r;
    }
    let sampling = match gen_from_query(app.sampling, &q) {
        Ok(g) => g,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    let Some(slot) = PeerSlot::take(&app, peer.ip()) else {
        return (StatusCode::TOO_MANY_REQUESTS, "too many connections from this address\n").into_response();
    };
    let max = app.config.max_message_bytes;
    ws.max_message_size(max).max_frame_size(max).on_upgrade(move |socket| async move {
        match wire() {
            Ok(w) => session(socket, app, peer, kind, sampling, w).await,
            Err(e) => tracing::error!("{kind} session: {e}"),
        }
        drop(slot);
    })
}

fn close(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame { code, reason: reason.into() }))
}

/// A slow consumer gets this long per message before it is dropped.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

async fn session(
    socket: WebSocket,
    app: App,
    peer: SocketAddr,
    kind: &str,
    sampling: GenConfig,
    mut wire: Box<dyn Wire>,
) {
    let rt = &app.runtime;
    let input = FrameInput::new(rt.frame_size, app.config.backlog_frames, rt.waker());
    let outbox = Outbox::new(app.config.backlog_frames * 4 + 16);
    let (mut tx, mut rx) = socket.split();
    let id = match rt.add(NewSession {
        kind: format!("{kind} {peer}"),
        config: sampling,
        source: Box::new(QueueSource(input.clone())),
        sink: Box::new(QueueSink(outbox.clone())),
        talk: None,
    }) {
        Ok(id) => id,
        Err(e) => {
            let _ = tx.send(wire.error(&e.to_string())).await;
            let _ = tx.send(close(close_code::AGAIN, "no free session")).await;
            return;
        }
    };
    tracing::info!(%peer, kind, "client connected");
    let wire = std::sync::Arc::new(tokio::sync::Mutex::new(wire));
    let greeting = wire.lock().await.greeting();
    let reader = async {
        let mut samples: Vec<f32> = Vec::new();
        while let Some(msg) = rx.next().await {
            let msg = match msg {
                Ok(m) => m,
                Err(e) => return Some(format!("protocol error: {e}")),
            };
            samples.clear();
            match wire.lock().await.incoming(msg, &mut samples) {
                Ok(Incoming::Samples) => input.write(&samples),
                Ok(Incoming::Restart) => rt.reset(id),
                Ok(Incoming::Nothing) => {}
                Ok(Incoming::Close) => return None,
                Err(e) => return Some(e),
            }
        }
        None
    };
    let writer = async {
        for m in greeting {
            if tx.send(m).await.is_err() {
                return;
            }
        }
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
                    OutMsg::Error(e) => vec![wire.lock().await.error(&e)],
                    OutMsg::Closed(code, reason) => {
                        let _ = tokio::time::timeout(SEND_TIMEOUT, tx.send(close(code, &reason))).await;
                        return;
                    }
                };
                for msg in msgs {
                    match tokio::time::timeout(SEND_TIMEOUT, tx.send(msg)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => return,
                        Err(_) => {
                            tracing::warn!(%peer, "client not reading: dropping it");
                            return;
                        }
                    }
                }
            }
            outbox.notify.notified().await;
        }
    };
    let mut writer = std::pin::pin!(writer);
    tokio::select! {
        err = reader => {
            if let Some(e) = err {
                tracing::warn!(%peer, "closing client: {e}");
                outbox.queue.push(OutMsg::Error(e));
                outbox.queue.push(OutMsg::Closed(close_code::POLICY, "malformed message".into()));
                outbox.notify.notify_one();
                rt.remove(id);
                // Let the writer deliver the error and the close.
                let _ = tokio::time::timeout(Duration::from_secs(2), &mut writer).await;
            } else {
                rt.remove(id);
            }
        }
        _ = &mut writer => {
            rt.remove(id);
        }
    }
    tracing::info!(%peer, kind, "client disconnected");
}

fn encode(pcm: &[f32], format: Format) -> Vec<u8> {
    match format {
        Format::F32 => pcm.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Format::S16 => pcm.iter().flat_map(|v| ((v.clamp(-1.0, 1.0) * 32767.0).round() as i16).to_le_bytes()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lm::sampling::Sampling;

    #[test]
    fn origins() {
        assert!(origin_allowed("http://localhost:8998", "localhost:8998", &[]));
        assert!(origin_allowed("http://127.0.0.1:3000", "x:1", &[]));
        assert!(origin_allowed("https://app.example", "x:1", &["https://app.example".into()]));
        assert!(!origin_allowed("https://evil.example", "localhost:8998", &[]));
        assert!(origin_allowed("http://host.lan:8998", "host.lan:8998", &[]));
    }

    #[test]
    fn query_sampling() {
        let mut q = HashMap::new();
        q.insert("text_temperature".to_string(), "0.4".to_string());
        q.insert("audio_topk".to_string(), "100".to_string());
        let g = gen_from_query(GenConfig::default(), &q).unwrap();
        assert_eq!(g.text.temperature, 0.4);
        assert_eq!(g.audio.top_k, 100);
        q.insert("audio_temperature".to_string(), "nan".to_string());
        assert!(gen_from_query(GenConfig::default(), &q).is_err());
        q.insert("audio_temperature".to_string(), "x".to_string());
        assert!(gen_from_query(GenConfig::default(), &q).unwrap_err().contains("audio_temperature"));
        // Over a model that recommends greedy decoding: greedy=0 samples with Moshi's defaults,
        // and the page's other keys still apply.
        let mut q = HashMap::new();
        q.insert("greedy".to_string(), "0".to_string());
        q.insert("audio_topk".to_string(), "100".to_string());
        let g = gen_from_query(GenConfig::greedy(), &q).unwrap();
        assert_eq!(g.text, Sampling::TEXT);
        assert_eq!(g.audio, Sampling { top_k: 100, ..Sampling::AUDIO });
        q.insert("greedy".to_string(), "maybe".to_string());
        assert!(gen_from_query(GenConfig::greedy(), &q).unwrap_err().contains("greedy"));
    }
}
