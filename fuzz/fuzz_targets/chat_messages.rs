//! Fuzzes what `/api/chat` does with untrusted bytes: message parsing and the Ogg/Opus
//! decoder, fed the data as one message and as a stream split at arbitrary points.
#![no_main]

#[path = "../../src/protocol.rs"]
#[allow(dead_code)]
mod protocol;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = protocol::parse_message(data);
    let mut out = Vec::new();
    let mut reader = protocol::OggOpusReader::new();
    if let Ok(protocol::ClientMessage::Audio(ogg)) = protocol::parse_message(data) {
        let _ = reader.push(ogg, &mut out);
    }
    // The same bytes as a stream of messages of varying sizes.
    let mut reader = protocol::OggOpusReader::new();
    let split = data.first().map_or(1, |b| (*b as usize % 97) + 1);
    for chunk in data.chunks(split) {
        if reader.push(chunk, &mut out).is_err() {
            break;
        }
        out.clear();
    }
});
