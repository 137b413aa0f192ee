//! `GET /api/pcm`: raw PCM sessions. Binary messages of little-endian f32 mono 24 kHz samples
//! in any size (`?format=s16` for 16-bit); one binary message per 80 ms frame comes back, and
//! each inner-monologue text piece as a text message. A malformed message gets an error text
//! message and a close, for that client only.
//!
//! With `?input=latents` the client sends Mimi latents instead of audio, so that another
//! encoder can feed kokichi: binary messages in the latent layout the `mimi` tap streams
//! (`KKLT`, tap 0, f32, shape `[C]` or `[T, C]`; see `docs/protocol.md`), one row per 80 ms
//! frame. The answer comes back as audio, as usual.

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::socket::{App, Incoming, Wire, WireError, upgrade};
use crate::latent_frame::{self, Tap};

#[derive(Clone, Copy, PartialEq)]
enum Format {
    F32,
    S16,
}

impl Format {
    fn sample_bytes(self) -> usize {
        match self {
            Format::F32 => 4,
            Format::S16 => 2,
        }
    }
}

/// A client's text message: `{"say": "..."}`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Command {
    say: String,
}

/// The longest text one `say` command may carry.
const MAX_SAY_CHARS: usize = 1000;

/// `/api/pcm`: raw little-endian samples out, samples or (with `latent_dim`) Mimi latents in.
struct PcmWire {
    format: Format,
    latent_dim: Option<usize>,
}

/// Reads one message of Mimi latents `[C]` or `[T, C]` into `out`.
fn read_latents(bytes: &[u8], c: usize, out: &mut Vec<f32>) -> Result<(), WireError> {
    let bad = |m: String| WireError::LatentInput(m);
    let body = bytes
        .strip_prefix(latent_frame::PCM_TAG.as_slice())
        .ok_or_else(|| bad("with input=latents, a binary message is a latent frame (leading bytes KKLT)".into()))?;
    let frame = latent_frame::decode(body).map_err(|e| bad(e.to_string()))?;
    if frame.tap != Tap::Mimi {
        return Err(bad(format!("latent input takes the mimi tap, not {}", frame.tap.name())));
    }
    let rows_ok = match frame.shape.as_slice() {
        [w] => *w == c,
        [t, w] => *w == c && *t > 0,
        _ => false,
    };
    if !rows_ok {
        return Err(bad(format!("latent shape {:?}: expected [{c}] or [T, {c}]", frame.shape)));
    }
    if frame.values.iter().any(|v| !v.is_finite()) {
        return Err(bad("latent values must be finite".into()));
    }
    out.extend_from_slice(&frame.values);
    Ok(())
}

impl Wire for PcmWire {
    fn latent_input(&self) -> bool {
        self.latent_dim.is_some()
    }

    fn incoming(&mut self, msg: Message, samples: &mut Vec<f32>) -> Result<Incoming, WireError> {
        let sample_bytes = self.format.sample_bytes();
        match msg {
            Message::Binary(b) if self.latent_dim.is_some() => {
                read_latents(&b, self.latent_dim.unwrap_or_default(), samples)?;
                Ok(Incoming::Samples)
            }
            Message::Binary(b) => {
                if b.len() % sample_bytes != 0 {
                    return Err(WireError::PartialSamples { bytes: b.len(), sample_bytes });
                }
                if self.format == Format::F32 {
                    let start = samples.len();
                    samples.extend(b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])));
                    if samples[start..].iter().any(|v| !v.is_finite()) {
                        return Err(WireError::NonFiniteSamples);
                    }
                } else {
                    samples.extend(b.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]]) as f32 / 32768.0));
                }
                Ok(Incoming::Samples)
            }
            Message::Text(t) => match serde_json::from_str::<Command>(&t) {
                Ok(Command { say }) if say.chars().count() <= MAX_SAY_CHARS => Ok(Incoming::Say(say)),
                Ok(_) => Err(WireError::TextMessage("`say`: at most 1000 characters a message")),
                Err(_) => Err(WireError::TextMessage(
                    "a text message on /api/pcm is a JSON command, {\"say\": \"...\"}; audio goes in binary messages",
                )),
            },
            Message::Close(_) => Ok(Incoming::Close),
            _ => Ok(Incoming::Nothing),
        }
    }

    fn audio(&mut self, pcm: &[f32]) -> Result<Vec<Message>, WireError> {
        Ok(vec![Message::Binary(encode(pcm, self.format).into())])
    }

    fn text(&mut self, piece: &str) -> Message {
        Message::Text(piece.into())
    }

    fn latents(&mut self, tap: Tap, frame: u64, shape: &[usize], values: &[f32]) -> Message {
        let mut m = latent_frame::PCM_TAG.to_vec();
        latent_frame::encode(tap, frame, shape, values, &mut m);
        Message::Binary(m.into())
    }

    fn error(&mut self, e: &str) -> Message {
        Message::Text(format!("error: {e}").into())
    }

    fn event(&mut self, json: &str) -> Message {
        Message::Text(json.into())
    }

    fn warning(&mut self, w: &str) -> Option<Message> {
        Some(Message::Text(format!("warning: {w}").into()))
    }
}

pub async fn pcm(
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
    let latent_dim = match q.get("input").map(String::as_str) {
        None | Some("pcm") => None,
        Some("latents") => Some(app.runtime.latent_dim),
        Some(other) => {
            let other: String = other.chars().take(40).collect();
            return (StatusCode::BAD_REQUEST, format!("input `{other}`: expected pcm or latents\n")).into_response();
        }
    };
    upgrade(ws, app, peer, headers, q, "pcm", move || Ok(Box::new(PcmWire { format, latent_dim }) as Box<dyn Wire>))
}

fn encode(pcm: &[f32], format: Format) -> Vec<u8> {
    match format {
        Format::F32 => pcm.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Format::S16 => pcm.iter().flat_map(|v| ((v.clamp(-1.0, 1.0) * 32767.0).round() as i16).to_le_bytes()).collect(),
    }
}
