//! `GET /api/chat`: Moshi's own protocol, so Moshi's web UI and Python client work unchanged.
//! Handshake `0x00` + protocol and model versions once the session is ready, Ogg/Opus audio
//! (`0x01`) both ways, text pieces (`0x02`), control (`0x03`: start, endTurn, pause,
//! restart), metadata (`0x04`), errors (`0x05`) and pings (`0x06`).

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;

use super::socket::{App, Incoming, Wire, WireError, upgrade};
use crate::protocol::{self, ClientMessage, Control, OggOpusReader, OggOpusWriter};

struct ChatWire {
    reader: OggOpusReader,
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
                self.reader.push(ogg, samples)?;
                Ok(Incoming::Samples)
            }
            ClientMessage::Control(Control::Restart) => Ok(Incoming::Restart),
            ClientMessage::Control(c) => {
                tracing::debug!(?c, "control message");
                Ok(Incoming::Nothing)
            }
            ClientMessage::Error(e) => {
                tracing::warn!("client reported an error: {e}");
                Ok(Incoming::Nothing)
            }
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

    fn error(&mut self, e: &str) -> Message {
        let mut m = vec![protocol::ERROR];
        m.extend_from_slice(e.as_bytes());
        Message::Binary(m.into())
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
    upgrade(ws, app, peer, headers, q, "chat", move || {
        Ok(Box::new(ChatWire { reader: OggOpusReader::new(), writer: OggOpusWriter::new(rand::random())?, metadata })
            as Box<dyn Wire>)
    })
}
