//! Fuzzes `/api/chat`'s whole audio path with the daemon's caps: the bytes are cut into
//! messages (sizes from the first byte), each parsed, its Ogg pages reassembled and its Opus
//! packets decoded to PCM with the per-message cap of a default session (backlog of 8 frames
//! plus one). Checks the bounds hold: decoded audio per message, the reader's held bytes.
//! Run with a memory limit, e.g. `-rss_limit_mb=1024 -malloc_limit_mb=16`.
#![no_main]

#[path = "../../src/protocol.rs"]
#[allow(dead_code)]
mod protocol;

use libfuzzer_sys::fuzz_target;

/// `(backlog_frames + 1) * frame`, with the defaults (8 frames of 1920 samples).
const PER_MESSAGE: usize = 9 * 1920;
/// One Ogg page at most, plus the unfinished packets.
const MAX_HELD: usize = 27 + 255 + 255 * 255 + protocol::MAX_PENDING_PACKET;

fuzz_target!(|data: &[u8]| {
    let Some((&shape, rest)) = data.split_first() else { return };
    let mut reader = protocol::OggOpusReader::new();
    let mut samples = Vec::new();
    // Message sizes cycle through 1..=64 times a factor taken from `shape`.
    let unit = (shape as usize % 16) + 1;
    let mut rest = rest;
    let mut i = 0usize;
    while !rest.is_empty() {
        let n = (unit * (1 + (i * 7 + shape as usize) % 64)).min(rest.len());
        let (msg, tail) = rest.split_at(n);
        rest = tail;
        i += 1;
        // A leading 0x01 most of the time, so most messages reach the Ogg reader.
        let mut owned;
        let msg = if shape & 0x80 == 0 {
            owned = Vec::with_capacity(n + 1);
            owned.push(protocol::AUDIO);
            owned.extend_from_slice(msg);
            &owned[..]
        } else {
            msg
        };
        samples.clear();
        match protocol::parse_message(msg) {
            Ok(protocol::ClientMessage::Audio(ogg)) => {
                let result = reader.push_limited(ogg, &mut samples, PER_MESSAGE);
                assert!(samples.len() <= PER_MESSAGE, "{} samples decoded from one message", samples.len());
                assert!(reader.held_bytes() <= MAX_HELD, "reader holds {} bytes", reader.held_bytes());
                let _ = reader.take_dropped();
                if result.is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(_) => return,
        }
    }
});
