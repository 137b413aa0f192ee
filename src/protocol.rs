//! Moshi's WebSocket protocol (`/api/chat`), byte for byte, so Moshi's web UI and Python client
//! work with kokichi: message kinds, and the Ogg/Opus audio they carry (libopus through the
//! `opus` crate; Ogg pages are read here, so that the reader's state has bounds of its own, and
//! written through the `ogg` crate).
//!
//! Everything here parses untrusted bytes: every path returns a [`ProtocolError`] instead of
//! panicking, and buffers are bounded, decoded audio included. `fuzz/` runs these entry points
//! under libFuzzer (`chat_messages`, `chat_decode`).

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
    #[error("not an Ogg page (no OggS capture pattern)")]
    NotOgg,
    #[error("bad Ogg page: {0}")]
    BadOggPage(&'static str),
    #[error("more than {0} Ogg streams open at once")]
    TooManyStreams(usize),
    #[error("an Ogg packet longer than {0} bytes")]
    PacketTooLong(usize),
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

/// Most logical Ogg streams open at once on one connection (a live client sends one; chained
/// streams end one before the next begins). A page opening one more is an error.
pub const MAX_STREAMS: usize = 4;
/// Most bytes of unfinished packets held across pages, all streams together (an Opus packet
/// is at most ~61 KB; header packets are small).
pub const MAX_PENDING_PACKET: usize = 128 * 1024;
/// Samples one [`OggOpusReader::push`] decodes at most (10 s); see [`OggOpusReader::push_limited`].
pub const DEFAULT_MAX_PUSH_SAMPLES: usize = 10 * RATE as usize;
/// Longest Opus packet: 120 ms at 24 kHz.
const MAX_PACKET_SAMPLES: usize = 2880;
/// Concealment length for an empty packet before any audio was decoded: 20 ms.
const DEFAULT_CONCEAL: usize = 480;

/// One logical stream's reassembly state.
struct OggStream {
    serial: u32,
    /// Bytes of a packet continued on the next page.
    packet: Vec<u8>,
    /// The last page ended inside a packet (possibly with no bytes of it yet).
    open: bool,
}

/// Decodes an incoming Ogg/Opus stream, page by page as the client sends them, into 24 kHz
/// mono samples.
///
/// Its state is bounded whatever the bytes: one incomplete page, at most [`MAX_STREAMS`]
/// streams and [`MAX_PENDING_PACKET`] bytes of unfinished packets. Decoded audio is bounded per
/// push ([`OggOpusReader::push_limited`]): packets past the limit are not decoded, only counted
/// ([`OggOpusReader::take_dropped`]). An empty packet (packet loss) conceals one packet's length,
/// not the whole output buffer.
pub struct OggOpusReader {
    pending: Vec<u8>,
    streams: Vec<OggStream>,
    opus: OpusState,
    dropped: usize,
}

/// The Opus decoder and what it has seen.
struct OpusState {
    decoder: Option<opus::Decoder>,
    channels: usize,
    saw_tags: bool,
    /// Samples of the last decoded packet: what an empty packet conceals.
    last_packet: usize,
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
            streams: Vec::new(),
            opus: OpusState {
                decoder: None,
                channels: 1,
                saw_tags: false,
                last_packet: DEFAULT_CONCEAL,
                scratch: vec![0.0; MAX_PACKET_SAMPLES * 2],
            },
            dropped: 0,
        }
    }

    /// Feeds bytes of the Ogg stream; decoded samples are appended to `out`, at most
    /// [`DEFAULT_MAX_PUSH_SAMPLES`].
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<f32>) -> Result<(), ProtocolError> {
        self.push_limited(bytes, out, DEFAULT_MAX_PUSH_SAMPLES)
    }

    /// Feeds bytes of the Ogg stream, appending at most `max_samples` decoded samples to `out`;
    /// the audio past that is not decoded and is counted in [`Self::take_dropped`].
    pub fn push_limited(
        &mut self,
        mut bytes: &[u8],
        out: &mut Vec<f32>,
        max_samples: usize,
    ) -> Result<(), ProtocolError> {
        let limit = out.len().saturating_add(max_samples);
        // Complete the page begun by an earlier message.
        if !self.pending.is_empty() {
            let mut pending = std::mem::take(&mut self.pending);
            let result = loop {
                match page_len(&pending) {
                    Ok(Some(n)) => break Ok(Some(n)),
                    Ok(None) if bytes.is_empty() => break Ok(None),
                    Ok(None) => {
                        // Take just enough to learn (then reach) the page's length.
                        let want = page_need(&pending);
                        let take = want.saturating_sub(pending.len()).clamp(1, bytes.len());
                        pending.extend_from_slice(&bytes[..take]);
                        bytes = &bytes[take..];
                    }
                    Err(e) => break Err(e),
                }
            };
            match result? {
                Some(n) => {
                    debug_assert_eq!(n, pending.len());
                    self.page(&pending, out, limit)?;
                }
                None => {
                    self.pending = pending;
                    return Ok(());
                }
            }
        }
        while let Some(n) = page_len(bytes)? {
            self.page(&bytes[..n], out, limit)?;
            bytes = &bytes[n..];
        }
        // Less than a page is left: kept for the next message.
        self.pending.extend_from_slice(bytes);
        Ok(())
    }

    /// Bytes the reader holds between pushes: the incomplete page and unfinished packets (at
    /// most one page, 65,307 bytes, plus [`MAX_PENDING_PACKET`]).
    pub fn held_bytes(&self) -> usize {
        self.pending.len() + self.streams.iter().map(|s| s.packet.len()).sum::<usize>()
    }

    /// Samples not decoded because of a push's limit, since the last call.
    pub fn take_dropped(&mut self) -> usize {
        std::mem::take(&mut self.dropped)
    }

    /// One complete page (checked for length by [`page_len`]).
    fn page(&mut self, page: &[u8], out: &mut Vec<f32>, limit: usize) -> Result<(), ProtocolError> {
        let stored = u32::from_le_bytes([page[22], page[23], page[24], page[25]]);
        if ogg_crc(page) != stored {
            return Err(ProtocolError::BadOggPage("checksum mismatch"));
        }
        let flags = page[5];
        let (continued, first, last) = (flags & 1 != 0, flags & 2 != 0, flags & 4 != 0);
        let serial = u32::from_le_bytes([page[14], page[15], page[16], page[17]]);
        let segments = page[26] as usize;
        let lacing = &page[27..27 + segments];
        let body = &page[27 + segments..];
        let at = match self.streams.iter().position(|s| s.serial == serial) {
            Some(_) if first => return Err(ProtocolError::BadOggPage("a second first page for a stream")),
            Some(i) => i,
            None if !first => return Err(ProtocolError::BadOggPage("a page of a stream that was never begun")),
            None if self.streams.len() >= MAX_STREAMS => return Err(ProtocolError::TooManyStreams(MAX_STREAMS)),
            None => {
                self.streams.push(OggStream { serial, packet: Vec::new(), open: false });
                self.streams.len() - 1
            }
        };
        let stream = &mut self.streams[at];
        if continued != stream.open {
            return Err(ProtocolError::BadOggPage("continuation flag does not match the previous page"));
        }
        let mut start = 0;
        let mut pos = 0;
        for &l in lacing {
            pos += l as usize;
            if l < 255 {
                if stream.packet.is_empty() {
                    self.opus.packet(&body[start..pos], out, limit, &mut self.dropped)?;
                } else {
                    stream.packet.extend_from_slice(&body[start..pos]);
                    let packet = std::mem::take(&mut stream.packet);
                    let result = self.opus.packet(&packet, out, limit, &mut self.dropped);
                    stream.packet = packet;
                    stream.packet.clear();
                    result?;
                }
                start = pos;
            }
        }
        stream.open = lacing.last().is_some_and(|&l| l == 255);
        if stream.open {
            stream.packet.extend_from_slice(&body[start..pos]);
        }
        if last {
            self.streams.swap_remove(at);
        }
        let held: usize = self.streams.iter().map(|s| s.packet.len()).sum();
        if held > MAX_PENDING_PACKET {
            return Err(ProtocolError::PacketTooLong(MAX_PENDING_PACKET));
        }
        Ok(())
    }
}

/// The length of the complete page at the start of `buf`, `None` if it is not all there yet.
fn page_len(buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
    let magic = &b"OggS"[..buf.len().min(4)];
    if buf[..magic.len()] != *magic {
        return Err(ProtocolError::NotOgg);
    }
    if buf.len() < 27 {
        return Ok(None);
    }
    if buf[4] != 0 {
        return Err(ProtocolError::BadOggPage("unknown page version"));
    }
    let segments = buf[26] as usize;
    if buf.len() < 27 + segments {
        return Ok(None);
    }
    let end = 27 + segments + buf[27..27 + segments].iter().map(|&l| l as usize).sum::<usize>();
    Ok((buf.len() >= end).then_some(end))
}

/// How many bytes the page starting `buf` needs before [`page_len`] can say more.
fn page_need(buf: &[u8]) -> usize {
    if buf.len() < 27 {
        return 27;
    }
    let segments = buf[26] as usize;
    if buf.len() < 27 + segments {
        return 27 + segments;
    }
    27 + segments + buf[27..27 + segments].iter().map(|&l| l as usize).sum::<usize>()
}

/// One raw Ogg page with the given header flags (1: continued, 2: first, 4: last), serial,
/// sequence number, lacing values and body; the checksum is filled in. [`OggOpusWriter`] is the
/// way to write audio: this one exists so tests and fuzzers can shape pages freely.
pub fn raw_ogg_page(flags: u8, serial: u32, sequence: u32, lacing: &[u8], body: &[u8]) -> Vec<u8> {
    let mut page = b"OggS".to_vec();
    page.push(0);
    page.push(flags);
    page.extend_from_slice(&0u64.to_le_bytes());
    page.extend_from_slice(&serial.to_le_bytes());
    page.extend_from_slice(&sequence.to_le_bytes());
    page.extend_from_slice(&[0; 4]);
    page.push(lacing.len().min(255) as u8);
    page.extend_from_slice(&lacing[..lacing.len().min(255)]);
    page.extend_from_slice(body);
    let crc = ogg_crc(&page);
    page[22..26].copy_from_slice(&crc.to_le_bytes());
    page
}

/// The OpusHead packet of a mono stream.
pub fn opus_head() -> Vec<u8> {
    let mut head = b"OpusHead".to_vec();
    head.push(1); // version
    head.push(1); // channels
    head.extend_from_slice(&3840u16.to_le_bytes()); // pre-skip, at 48 kHz
    head.extend_from_slice(&48000u32.to_le_bytes()); // input rate
    head.extend_from_slice(&0i16.to_le_bytes()); // output gain
    head.push(0); // channel mapping family
    head
}

/// Ogg's CRC-32 (polynomial 0x04c11db7, not reflected) of a page, its checksum field as zeros.
fn ogg_crc(page: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut r = (i as u32) << 24;
            let mut k = 0;
            while k < 8 {
                r = if r & 0x8000_0000 != 0 { (r << 1) ^ 0x04c1_1db7 } else { r << 1 };
                k += 1;
            }
            t[i] = r;
            i += 1;
        }
        t
    };
    let mut crc = 0u32;
    for (i, &b) in page.iter().enumerate() {
        let b = if (22..26).contains(&i) { 0 } else { b };
        crc = (crc << 8) ^ TABLE[((crc >> 24) as u8 ^ b) as usize];
    }
    crc
}

impl OpusState {
    /// One Ogg packet: a header, or audio decoded into `out` while it stays under `limit`.
    fn packet(
        &mut self,
        data: &[u8],
        out: &mut Vec<f32>,
        limit: usize,
        dropped: &mut usize,
    ) -> Result<(), ProtocolError> {
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
            self.last_packet = DEFAULT_CONCEAL;
            return Ok(());
        }
        if data.starts_with(b"OpusTags") && !self.saw_tags {
            self.saw_tags = true;
            return Ok(());
        }
        let dec = self.decoder.as_mut().ok_or(ProtocolError::AudioBeforeHeader)?;
        let room = limit.saturating_sub(out.len());
        if room == 0 {
            // Not decoded: counted by its length (an empty one conceals the last packet's).
            *dropped += if data.is_empty() {
                self.last_packet
            } else {
                opus::packet::get_nb_samples(data, RATE).map_err(ProtocolError::OpusPacket)?
            };
            return Ok(());
        }
        // An empty packet asks the decoder to conceal a lost one: as long as the last packet.
        let frame = self.last_packet.min(MAX_PACKET_SAMPLES) * self.channels;
        let buf = if data.is_empty() { &mut self.scratch[..frame] } else { &mut self.scratch[..] };
        let n = dec.decode_float(data, buf, false).map_err(ProtocolError::OpusPacket)?;
        if !data.is_empty() && n > 0 {
            self.last_packet = n;
        }
        let keep = n.min(room);
        *dropped += n - keep;
        if self.channels == 1 {
            out.extend_from_slice(&self.scratch[..keep]);
        } else {
            out.extend(self.scratch[..2 * keep].chunks_exact(2).map(|s| 0.5 * (s[0] + s[1])));
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
        let head = opus_head();
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

    /// A first page with the OpusHead, then one page of `n` empty packets (each conceals a lost
    /// packet): the decompression bomb of issue 51.
    fn empty_packet_bomb(serial: u32, n: usize) -> Vec<u8> {
        let mut bytes = raw_ogg_page(2, serial, 0, &[19], &opus_head());
        bytes.extend(raw_ogg_page(0, serial, 1, &vec![0u8; n], &[]));
        bytes
    }

    #[test]
    fn empty_packets_conceal_one_packet_each_and_pushes_are_capped() {
        let bomb = empty_packet_bomb(3, 255);
        let mut out = Vec::new();
        let mut r = OggOpusReader::new();
        r.push(&bomb, &mut out).unwrap();
        // 20 ms each, not the whole output buffer (480 ms each before).
        assert_eq!(out.len(), 255 * 480);
        assert_eq!(r.take_dropped(), 0);
        let mut r = OggOpusReader::new();
        out.clear();
        r.push_limited(&bomb, &mut out, 1000).unwrap();
        assert_eq!(out.len(), 1000);
        assert_eq!(r.take_dropped(), 255 * 480 - 1000);
        assert_eq!(r.take_dropped(), 0);
    }

    #[test]
    fn stream_count_and_unfinished_packets_are_bounded() {
        let mut out = Vec::new();
        let mut r = OggOpusReader::new();
        for serial in 0..MAX_STREAMS as u32 {
            r.push(&raw_ogg_page(2, serial, 0, &[19], &opus_head()), &mut out).unwrap();
        }
        let err = r.push(&raw_ogg_page(2, 99, 0, &[19], &opus_head()), &mut out).unwrap_err();
        assert!(matches!(err, ProtocolError::TooManyStreams(_)), "{err}");
        // Streams that end make room for new ones (chained streams).
        let mut r = OggOpusReader::new();
        for serial in 0..100 {
            r.push(&raw_ogg_page(2 | 4, serial, 0, &[19], &opus_head()), &mut out).unwrap();
        }
        // A packet that never ends: refused once it passes the bound.
        let mut r = OggOpusReader::new();
        r.push(&raw_ogg_page(2, 1, 0, &[19], &opus_head()), &mut out).unwrap();
        let body = vec![7u8; 255 * 255];
        let mut err = None;
        for seq in 1..10 {
            let flags = if seq == 1 { 0 } else { 1 };
            if let Err(e) = r.push(&raw_ogg_page(flags, 1, seq, &[255; 255], &body), &mut out) {
                err = Some(e);
                break;
            }
        }
        assert!(matches!(err, Some(ProtocolError::PacketTooLong(_))), "{err:?}");
    }

    #[test]
    fn a_message_may_hold_many_pages() {
        let mut w = OggOpusWriter::new(5).unwrap();
        // 30 s of audio: 750 pages in one message.
        let bytes: Vec<u8> = w.push(&tone(24000 * 30)).unwrap().concat();
        let mut out = Vec::new();
        let mut r = OggOpusReader::new();
        r.push_limited(&bytes, &mut out, usize::MAX).unwrap();
        assert_eq!(out.len(), 24000 * 30);
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
