//! Moshi's WebSocket protocol (`/api/chat`), byte for byte, so Moshi's web UI and Python client
//! work with kokichi: message kinds, and the Ogg/Opus audio they carry (libopus through the
//! `opus` crate, Ogg through the `ogg` crate).
//!
//! Everything here parses untrusted bytes: every path returns a [`ProtocolError`] instead of
//! panicking, and buffers are bounded. `fuzz/` runs these entry points under libFuzzer.

use ogg::reading::{BasePacketReader, PageParser};
use ogg::writing::{PacketWriteEndInfo, PacketWriter};

/// Message kinds (first byte).
pub const HANDSHAKE: u8 = 0x00;
pub const AUDIO: u8 = 0x01;
pub const TEXT: u8 = 0x02;
pub const CONTROL: u8 = 0x03;
pub const METADATA: u8 = 0x04;
pub const ERROR: u8 = 0x05;
pub const PING: u8 = 0x06;

/// Protocol and model versions sent in the handshake.
pub const PROTOCOL_VERSION: u32 = 0;
pub const MODEL_VERSION: u32 = 0;

/// Sample rate of the audio on the wire.
pub const RATE: u32 = 24000;
/// Samples per outgoing Opus packet (40 ms).
pub const PACKET: usize = 960;
/// Largest Ogg page: 27-byte header, 255 lacing values, 255 * 255 bytes of data.
const MAX_PAGE: usize = 27 + 255 + 255 * 255;

/// Why a message or an Ogg/Opus stream was refused: what was wrong, naming the kind or byte.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("empty message")]
    EmptyMessage,
    #[error("unknown message kind {0:#04x}")]
    UnknownKind(u8),
    #[error("clients do not send handshakes")]
    ClientHandshake,
    #[error("payload is not UTF-8")]
    NotUtf8,
    #[error("unknown control {0}")]
    UnknownControl(u8),
    #[error("control payload of {0} bytes, expected 1")]
    ControlLength(usize),
    #[error("metadata is not JSON: {0}")]
    MetadataNotJson(serde_json::Error),
    #[error("Ogg data without a complete page")]
    NoCompletePage,
    #[error("not an Ogg page (no OggS capture pattern)")]
    NotOgg,
    #[error("bad Ogg page: {0}")]
    BadOggPage(ogg::OggReadError),
    #[error("unsupported OpusHead")]
    UnsupportedOpusHead,
    #[error("{0} channels: only mono or stereo")]
    Channels(u8),
    #[error("audio before the OpusHead header")]
    AudioBeforeHeader,
    #[error("opus packet: {0}")]
    OpusPacket(opus::Error),
    #[error("opus: {0}")]
    Opus(opus::Error),
    #[error("ogg: {0}")]
    OggWrite(std::io::Error),
}

/// A control message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    Start,
    EndTurn,
    Pause,
    Restart,
}

/// A message from a client.
#[derive(Debug, PartialEq)]
pub enum ClientMessage<'a> {
    Audio(&'a [u8]),
    Text(&'a str),
    Control(Control),
    Metadata(serde_json::Value),
    Error(&'a str),
    Ping,
}

/// Parses one binary message.
pub fn parse_message(msg: &[u8]) -> Result<ClientMessage<'_>, ProtocolError> {
    fn utf8(p: &[u8]) -> Result<&str, ProtocolError> {
        std::str::from_utf8(p).map_err(|_| ProtocolError::NotUtf8)
    }
    let (&kind, payload) = msg.split_first().ok_or(ProtocolError::EmptyMessage)?;
    Ok(match kind {
        AUDIO => ClientMessage::Audio(payload),
        TEXT => ClientMessage::Text(utf8(payload)?),
        CONTROL => match payload {
            [0] => ClientMessage::Control(Control::Start),
            [1] => ClientMessage::Control(Control::EndTurn),
            [2] => ClientMessage::Control(Control::Pause),
            [3] => ClientMessage::Control(Control::Restart),
            [b] => return Err(ProtocolError::UnknownControl(*b)),
            _ => return Err(ProtocolError::ControlLength(payload.len())),
        },
        METADATA => {
            ClientMessage::Metadata(serde_json::from_str(utf8(payload)?).map_err(ProtocolError::MetadataNotJson)?)
        }
        ERROR => ClientMessage::Error(utf8(payload)?),
        PING => ClientMessage::Ping,
        HANDSHAKE => return Err(ProtocolError::ClientHandshake),
        other => return Err(ProtocolError::UnknownKind(other)),
    })
}

/// The server's handshake: kind, protocol version, model version (little-endian u32s).
pub fn handshake() -> Vec<u8> {
    let mut m = vec![HANDSHAKE];
    m.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    m.extend_from_slice(&MODEL_VERSION.to_le_bytes());
    m
}

/// Decodes an incoming Ogg/Opus stream, page by page as the client sends them, into 24 kHz
/// mono samples.
pub struct OggOpusReader {
    pending: Vec<u8>,
    packets: BasePacketReader,
    decoder: Option<opus::Decoder>,
    channels: usize,
    saw_tags: bool,
    scratch: Vec<f32>,
}

impl Default for OggOpusReader {
    fn default() -> Self {
        Self::new()
    }
}

impl OggOpusReader {
    pub fn new() -> Self {
        Self {
            pending: Vec::new(),
            packets: BasePacketReader::new(),
            decoder: None,
            channels: 1,
            saw_tags: false,
            scratch: vec![0.0; 5760 * 2],
        }
    }

    /// Feeds bytes of the Ogg stream; decoded samples are appended to `out`.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<f32>) -> Result<(), ProtocolError> {
        if self.pending.len() + bytes.len() > 4 * MAX_PAGE {
            return Err(ProtocolError::NoCompletePage);
        }
        let mut buf = std::mem::take(&mut self.pending);
        buf.extend_from_slice(bytes);
        let mut used = 0;
        let result = loop {
            match self.next_page(&buf[used..]) {
                Ok(Some(n)) => used += n,
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
            while let Some(p) = self.packets.read_packet() {
                if let Err(e) = self.packet(&p.data, out) {
                    return Err(e);
                }
            }
        };
        buf.drain(..used);
        self.pending = buf;
        result
    }

    /// Parses one complete page at the start of `buf`; returns its length.
    fn next_page(&mut self, buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
        if buf.len() < 27 {
            return Ok(None);
        }
        if &buf[..4] != b"OggS" {
            return Err(ProtocolError::NotOgg);
        }
        let mut header = [0u8; 27];
        header.copy_from_slice(&buf[..27]);
        let (mut parser, segments) = PageParser::new(header).map_err(ProtocolError::BadOggPage)?;
        if buf.len() < 27 + segments {
            return Ok(None);
        }
        let body = parser.parse_segments(buf[27..27 + segments].to_vec());
        let end = 27 + segments + body;
        if buf.len() < end {
            return Ok(None);
        }
        let page = parser.parse_packet_data(buf[27 + segments..end].to_vec()).map_err(ProtocolError::BadOggPage)?;
        self.packets.push_page(page).map_err(ProtocolError::BadOggPage)?;
        Ok(Some(end))
    }

    fn packet(&mut self, data: &[u8], out: &mut Vec<f32>) -> Result<(), ProtocolError> {
        if data.starts_with(b"OpusHead") {
            if data.len() < 19 || data[8] != 1 {
                return Err(ProtocolError::UnsupportedOpusHead);
            }
            self.channels = match data[9] {
                1 => 1,
                2 => 2,
                n => return Err(ProtocolError::Channels(n)),
            };
            let ch = if self.channels == 1 { opus::Channels::Mono } else { opus::Channels::Stereo };
            self.decoder = Some(opus::Decoder::new(RATE, ch).map_err(ProtocolError::Opus)?);
            self.saw_tags = false;
            return Ok(());
        }
        if data.starts_with(b"OpusTags") && !self.saw_tags {
            self.saw_tags = true;
            return Ok(());
        }
        let dec = self.decoder.as_mut().ok_or(ProtocolError::AudioBeforeHeader)?;
        let n = dec.decode_float(data, &mut self.scratch, false).map_err(ProtocolError::OpusPacket)?;
        if self.channels == 1 {
            out.extend_from_slice(&self.scratch[..n]);
        } else {
            out.extend(self.scratch[..2 * n].chunks_exact(2).map(|s| 0.5 * (s[0] + s[1])));
        }
        Ok(())
    }
}

/// Encodes 24 kHz mono audio into Ogg pages of Opus, one page per 40 ms packet. The first
/// call's output starts with the OpusHead and OpusTags pages.
pub struct OggOpusWriter {
    encoder: opus::Encoder,
    ogg: PacketWriter<'static, Vec<u8>>,
    serial: u32,
    granule: u64,
    pending: Vec<f32>,
    headers_sent: bool,
    packet: Vec<u8>,
}

impl OggOpusWriter {
    pub fn new(serial: u32) -> Result<Self, ProtocolError> {
        let encoder =
            opus::Encoder::new(RATE, opus::Channels::Mono, opus::Application::Voip).map_err(ProtocolError::Opus)?;
        Ok(Self {
            encoder,
            ogg: PacketWriter::new(Vec::new()),
            serial,
            granule: 0,
            pending: Vec::with_capacity(2 * PACKET),
            headers_sent: false,
            packet: vec![0; 4000],
        })
    }

    /// Writes one packet as a page of its own and returns the page's bytes.
    fn page(&mut self, data: Vec<u8>) -> Result<Vec<u8>, ProtocolError> {
        self.ogg
            .write_packet(data, self.serial, PacketWriteEndInfo::EndPage, self.granule)
            .map_err(ProtocolError::OggWrite)?;
        Ok(std::mem::take(self.ogg.inner_mut()))
    }

    /// The OpusHead and OpusTags pages.
    fn headers(&mut self) -> Result<Vec<u8>, ProtocolError> {
        let mut head = b"OpusHead".to_vec();
        head.push(1); // version
        head.push(1); // channels
        head.extend_from_slice(&3840u16.to_le_bytes()); // pre-skip, at 48 kHz
        head.extend_from_slice(&48000u32.to_le_bytes()); // input rate
        head.extend_from_slice(&0i16.to_le_bytes()); // output gain
        head.push(0); // channel mapping family
        let vendor = b"kokichi";
        let mut tags = b"OpusTags".to_vec();
        tags.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
        tags.extend_from_slice(vendor);
        tags.extend_from_slice(&0u32.to_le_bytes());
        let mut out = self.page(head)?;
        out.extend(self.page(tags)?);
        self.headers_sent = true;
        Ok(out)
    }

    /// Encodes `pcm`; returns the complete pages (one per 40 ms packet; the headers first).
    pub fn push(&mut self, pcm: &[f32]) -> Result<Vec<Vec<u8>>, ProtocolError> {
        let mut pages = Vec::new();
        if !self.headers_sent {
            pages.push(self.headers()?);
        }
        self.pending.extend_from_slice(pcm);
        let mut start = 0;
        while self.pending.len() - start >= PACKET {
            let n = self
                .encoder
                .encode_float(&self.pending[start..start + PACKET], &mut self.packet)
                .map_err(ProtocolError::Opus)?;
            start += PACKET;
            self.granule += 2 * PACKET as u64; // granule positions count 48 kHz samples
            let data = self.packet[..n].to_vec();
            pages.push(self.page(data)?);
        }
        self.pending.drain(..start);
        Ok(pages)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(n: usize) -> Vec<f32> {
        (0..n).map(|i| 0.3 * (i as f32 * 2.0 * std::f32::consts::PI * 300.0 / 24000.0).sin()).collect()
    }

    #[test]
    fn writer_output_reads_back() {
        let mut w = OggOpusWriter::new(7).unwrap();
        let pcm = tone(1920 * 10);
        let mut pages = Vec::new();
        for f in pcm.chunks(1920) {
            pages.extend(w.push(f).unwrap());
        }
        // Headers, then one page per 40 ms packet.
        assert_eq!(pages.len(), 1 + 20);
        let mut r = OggOpusReader::new();
        let mut out = Vec::new();
        for p in &pages {
            r.push(p, &mut out).unwrap();
        }
        assert_eq!(out.len(), 1920 * 10);
        // Opus is lossy and delays the signal; the energy survives.
        let e = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32;
        let ratio = e(&out[4800..]) / e(&pcm[4800..]);
        assert!((0.5..2.0).contains(&ratio), "{ratio}");
    }

    #[test]
    fn pages_split_across_messages_decode_the_same() {
        let mut w = OggOpusWriter::new(1).unwrap();
        let bytes: Vec<u8> = w.push(&tone(1920 * 3)).unwrap().concat();
        let mut whole = Vec::new();
        OggOpusReader::new().push(&bytes, &mut whole).unwrap();
        let mut r = OggOpusReader::new();
        let mut parts = Vec::new();
        for c in bytes.chunks(37) {
            r.push(c, &mut parts).unwrap();
        }
        assert_eq!(whole, parts);
    }

    #[test]
    fn bad_streams_are_errors() {
        let mut out = Vec::new();
        assert!(OggOpusReader::new().push(b"definitely not an ogg page at all", &mut out).is_err());
        let mut w = OggOpusWriter::new(1).unwrap();
        let mut pages = w.push(&tone(960)).unwrap();
        // Audio without the header page.
        let audio = pages.pop().unwrap();
        assert!(OggOpusReader::new().push(&audio, &mut out).is_err());
        // A corrupted checksum.
        let mut bad = pages.concat();
        bad[30] ^= 0xff;
        assert!(OggOpusReader::new().push(&bad, &mut out).is_err());
    }

    #[test]
    fn messages() {
        assert_eq!(parse_message(&[3, 3]).unwrap(), ClientMessage::Control(Control::Restart));
        assert_eq!(parse_message(&[6]).unwrap(), ClientMessage::Ping);
        assert!(parse_message(&[]).is_err());
        assert!(parse_message(&[9, 1]).unwrap_err().to_string().contains("0x09"));
        assert!(parse_message(&[3, 7]).unwrap_err().to_string().contains("control 7"));
        assert!(parse_message(&[3]).is_err());
        assert!(parse_message(&[2, 0xff]).is_err());
        assert!(matches!(parse_message(b"\x04{\"a\":1}").unwrap(), ClientMessage::Metadata(_)));
        assert_eq!(handshake(), vec![0, 0, 0, 0, 0, 0, 0, 0, 0]);
    }
}
