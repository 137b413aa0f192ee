//! `GET /api/chat`: Moshi's own protocol, so Moshi's web UI and Python client work unchanged.
//! Handshake `0x00` + protocol and model versions once the session is ready, Ogg/Opus audio
//! (`0x01`) both ways, text pieces (`0x02`), control (`0x03`: start, endTurn, pause,
//! restart), metadata (`0x04`), errors (`0x05`) and pings (`0x06`).
//!
//! Opus decompresses (an empty packet conceals a lost one; two bytes may decode to 120 ms), so
//! decoded audio has a budget ([`DecodeBudget`]): per message, no more than the session's
//! backlog of frames (more would be dropped by its queue anyway), and per session, at most
//! [`DECODE_RATE`] times real time after a burst of [`DECODE_BURST`]. What is over the budget is
//! not decoded; it is counted in the session's `dropped_in`, and the client gets a `0x05`
//! warning.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;

use super::socket::{App, Incoming, Wire, WireError, upgrade};
use crate::latent_frame::{self, Tap};
use crate::protocol::{self, ClientMessage, Control, OggOpusReader, OggOpusWriter};

/// A session decodes at most this many times real time on average...
pub const DECODE_RATE: f64 = 2.0;
/// ...after a burst of this much audio (or the per-message cap, if larger).
pub const DECODE_BURST: Duration = Duration::from_secs(2);

/// How many samples a session may decode: per message, and as a token bucket over time.
struct DecodeBudget {
    per_message: usize,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl DecodeBudget {
    /// A budget for a session queueing at most `backlog_frames` frames of `frame` samples.
    fn new(backlog_frames: usize, frame: usize) -> Self {
        let per_message = (backlog_frames + 1).saturating_mul(frame);
        let capacity = (per_message as f64).max(DECODE_BURST.as_secs_f64() * protocol::RATE as f64);
        Self { per_message, capacity, tokens: capacity, last: Instant::now() }
    }

    /// Samples the next message may decode.
    fn allowance(&mut self) -> usize {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * protocol::RATE as f64 * DECODE_RATE;
        self.tokens = (self.tokens + refill).min(self.capacity);
        self.last = now;
        (self.tokens as usize).min(self.per_message)
    }

    fn spend(&mut self, samples: usize) {
        self.tokens = (self.tokens - samples as f64).max(0.0);
    }
}

struct ChatWire {
    reader: OggOpusReader,
    budget: DecodeBudget,
    writer: OggOpusWriter,
    metadata: String,
}

impl Wire for ChatWire {
    fn greeting(&mut self) -> Vec<Message> {
        let mut meta = vec![protocol::METADATA];
        meta.extend_from_slice(self.metadata.as_bytes());
        vec![Message::Binary(protocol::handshake().into()), Message::Binary(meta.into())]
    }

    fn incoming(&mut self, msg: Message, samples: &mut Vec<f32>) -> Result<Incoming, WireError> {
        let bytes = match msg {
            Message::Binary(b) => b,
            Message::Text(_) => {
                return Err(WireError::TextMessage("text frames are not part of the protocol: send binary messages"));
            }
            Message::Close(_) => return Ok(Incoming::Close),
            _ => return Ok(Incoming::Nothing),
        };
        match protocol::parse_message(&bytes)? {
            ClientMessage::Audio(ogg) => {
                let start = samples.len();
                let allowance = self.budget.allowance();
                let result = self.reader.push_limited(ogg, samples, allowance);
                self.budget.spend(samples.len() - start);
                result?;
                Ok(Incoming::Samples)
            }
            ClientMessage::Control(Control::Restart) => Ok(Incoming::Restart),
            ClientMessage::Control(c) => {
                tracing::debug!(?c, "control message");
                Ok(Incoming::Nothing)
            }
            ClientMessage::Error(e) => Ok(Incoming::Report(e.to_string())),
            ClientMessage::Text(_) | ClientMessage::Metadata(_) | ClientMessage::Ping => Ok(Incoming::Nothing),
        }
    }

    fn audio(&mut self, pcm: &[f32]) -> Result<Vec<Message>, WireError> {
        Ok(self
            .writer
            .push(pcm)?
            .into_iter()
            .map(|page| {
                let mut m = Vec::with_capacity(page.len() + 1);
                m.push(protocol::AUDIO);
                m.extend_from_slice(&page);
                Message::Binary(m.into())
            })
            .collect())
    }

    fn text(&mut self, piece: &str) -> Message {
        let mut m = vec![protocol::TEXT];
        m.extend_from_slice(piece.as_bytes());
        Message::Binary(m.into())
    }

    fn latents(&mut self, tap: Tap, frame: u64, shape: &[usize], values: &[f32]) -> Message {
        let mut m = vec![latent_frame::CHAT_KIND];
        latent_frame::encode(tap, frame, shape, values, &mut m);
        Message::Binary(m.into())
    }

    fn error(&mut self, e: &str) -> Message {
        let mut m = vec![protocol::ERROR];
        m.extend_from_slice(e.as_bytes());
        Message::Binary(m.into())
    }

    /// A metadata message (`0x04`), which Moshi's clients take as information only.
    fn event(&mut self, json: &str) -> Message {
        let mut m = vec![protocol::METADATA];
        m.extend_from_slice(json.as_bytes());
        Message::Binary(m.into())
    }

    /// Moshi's protocol has no warning kind: an error message (`0x05`) saying "warning".
    fn warning(&mut self, w: &str) -> Option<Message> {
        Some(self.error(&format!("warning: {w}")))
    }

    fn take_dropped(&mut self) -> usize {
        self.reader.take_dropped()
    }
}

pub async fn chat(
    ws: WebSocketUpgrade,
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let metadata = serde_json::json!({
        "server": "kokichi",
        "version": env!("CARGO_PKG_VERSION"),
        "model": app.metrics.snapshot().model,
        "sample_rate": protocol::RATE,
        "frame_rate": 12.5,
    })
    .to_string();
    let budget = DecodeBudget::new(app.settings.runtime.backlog_frames, app.runtime.frame_size);
    upgrade(ws, app, peer, headers, q, "chat", move || {
        Ok(Box::new(ChatWire {
            reader: OggOpusReader::new(),
            budget,
            writer: OggOpusWriter::new(rand::random())?,
            metadata,
        }) as Box<dyn Wire>)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_budget_caps_each_message_and_refills_at_twice_real_time() {
        let mut b = DecodeBudget::new(8, 1920);
        // A message gets at most the backlog and one frame, however full the bucket.
        assert_eq!(b.allowance(), 9 * 1920);
        // The bucket holds 2 s: drained, it refills at twice real time.
        b.spend(48_000);
        assert!(b.allowance() < 1000);
        b.last -= Duration::from_millis(100);
        let a = b.allowance();
        assert!((4700..6000).contains(&a), "{a}");
    }
}
