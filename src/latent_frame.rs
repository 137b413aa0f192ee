//! The wire format of latent taps: one frame's vector of one tap, as the daemon streams it to a
//! client that asked (`?latents=mimi,lm`; see `docs/protocol.md`).
//!
//! Body, all little-endian: tap id (u8: 0 `mimi`, 1 `lm`, 2 `logits`), frame index (u64, counting from 0 at
//! the session's start or restart), dtype (u8: 0 = f32), rank (u8), each dimension (u32), then the
//! values.
//! On `/api/pcm` the body follows the four bytes [`PCM_TAG`] (such a message has an odd length,
//! audio an even one); on `/api/chat` it follows the kind byte [`CHAT_KIND`], which Moshi's
//! protocol does not use.

use thiserror::Error;

use crate::session::Taps;

/// The leading bytes of a latent message on `/api/pcm`.
pub const PCM_TAG: &[u8; 4] = b"KKLT";
/// The kind byte of a latent message on `/api/chat`.
pub const CHAT_KIND: u8 = 0x20;
const F32: u8 = 0;

/// A latent tap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tap {
    /// Mimi's encoder output before quantization.
    Mimi = 0,
    /// The LM's temporal transformer output.
    Lm = 1,
    /// The text head's top logits, `[2, k]`: the token ids (as f32, exact below 2^24), then
    /// their logits.
    Logits = 2,
}

impl Tap {
    pub fn name(self) -> &'static str {
        match self {
            Tap::Mimi => "mimi",
            Tap::Lm => "lm",
            Tap::Logits => "logits",
        }
    }
}

/// A malformed latent list or message.
#[derive(Debug, Error, PartialEq)]
pub enum LatentError {
    #[error("unknown latent tap `{0}` (known: mimi, lm, logits or logits:K)")]
    UnknownTap(String),
    #[error("`logits:{0}`: K must be 1 to {MAX_TOP_LOGITS}")]
    TopK(String),
    #[error("latent message of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("latent message: tap id {0} is unknown")]
    TapId(u8),
    #[error("latent message: dtype {0} is not f32 (0)")]
    Dtype(u8),
    #[error("latent message: {got} bytes of values for shape {shape:?}")]
    Size { got: usize, shape: Vec<usize> },
}

/// Logits a `logits` tap reports without a count.
pub const DEFAULT_TOP_LOGITS: usize = 10;
/// The most logits a `logits:K` tap may ask for.
pub const MAX_TOP_LOGITS: usize = 1000;

/// Parses a comma-separated tap list (`mimi,lm,logits:20`); empty entries are ignored.
pub fn parse_taps(list: &str) -> Result<Taps, LatentError> {
    let mut taps = Taps::default();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        match name {
            "mimi" => taps.mimi = true,
            "lm" => taps.lm = true,
            "logits" => taps.logits = DEFAULT_TOP_LOGITS,
            other => match other.strip_prefix("logits:") {
                Some(k) => {
                    let short = || LatentError::TopK(k.chars().take(20).collect());
                    taps.logits = k.parse().ok().filter(|k| (1..=MAX_TOP_LOGITS).contains(k)).ok_or_else(short)?;
                }
                None => return Err(LatentError::UnknownTap(other.chars().take(40).collect())),
            },
        }
    }
    Ok(taps)
}

/// Appends the body of one tap's frame of `shape` to `out`.
pub fn encode(tap: Tap, frame: u64, shape: &[usize], values: &[f32], out: &mut Vec<u8>) {
    out.reserve(11 + 4 * shape.len() + 4 * values.len());
    out.push(tap as u8);
    out.extend_from_slice(&frame.to_le_bytes());
    out.push(F32);
    out.push(shape.len() as u8);
    for &d in shape {
        out.extend_from_slice(&(d as u32).to_le_bytes());
    }
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// One decoded latent message body.
#[derive(Clone, Debug, PartialEq)]
pub struct LatentFrame {
    pub tap: Tap,
    pub frame: u64,
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// Decodes a body written by [`encode`] (without the tag or kind byte).
pub fn decode(body: &[u8]) -> Result<LatentFrame, LatentError> {
    let short = || LatentError::Short(body.len());
    let head = body.get(..11).ok_or_else(short)?;
    let tap = match head[0] {
        0 => Tap::Mimi,
        1 => Tap::Lm,
        2 => Tap::Logits,
        other => return Err(LatentError::TapId(other)),
    };
    let mut frame = [0u8; 8];
    frame.copy_from_slice(&head[1..9]);
    if head[9] != F32 {
        return Err(LatentError::Dtype(head[9]));
    }
    let rank = head[10] as usize;
    let dims = body.get(11..11 + 4 * rank).ok_or_else(short)?;
    let shape: Vec<usize> =
        dims.chunks_exact(4).map(|d| u32::from_le_bytes([d[0], d[1], d[2], d[3]]) as usize).collect();
    let data = &body[11 + 4 * rank..];
    let count = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).and_then(|n| n.checked_mul(4));
    if count != Some(data.len()) {
        return Err(LatentError::Size { got: data.len(), shape });
    }
    let values = data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    Ok(LatentFrame { tap, frame: u64::from_le_bytes(frame), shape, values })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_bad_ones_are_named() {
        let mut body = Vec::new();
        encode(Tap::Lm, 42, &[3], &[1.0, -2.5, 3.25], &mut body);
        assert_eq!(body.len(), 15 + 12);
        let f = decode(&body).map_err(|e| e.to_string());
        assert_eq!(f, Ok(LatentFrame { tap: Tap::Lm, frame: 42, shape: vec![3], values: vec![1.0, -2.5, 3.25] }));
        assert_eq!(decode(&body[..5]), Err(LatentError::Short(5)));
        assert_eq!(decode(&body[..body.len() - 1]), Err(LatentError::Size { got: 11, shape: vec![3] }));
        let mut bad = body.clone();
        bad[0] = 7;
        assert_eq!(decode(&bad), Err(LatentError::TapId(7)));
        // A /api/pcm latent message (tag + body) has an odd length; audio frames are even.
        assert_eq!((PCM_TAG.len() + body.len()) % 2, 1);
    }

    #[test]
    fn tap_lists() {
        assert_eq!(parse_taps("mimi, lm"), Ok(Taps { mimi: true, lm: true, logits: 0 }));
        assert_eq!(parse_taps("lm"), Ok(Taps { mimi: false, lm: true, logits: 0 }));
        assert_eq!(parse_taps("logits"), Ok(Taps { logits: DEFAULT_TOP_LOGITS, ..Taps::default() }));
        assert_eq!(parse_taps("logits:3,lm"), Ok(Taps { lm: true, logits: 3, ..Taps::default() }));
        assert_eq!(parse_taps("logits:0"), Err(LatentError::TopK("0".into())));
        assert_eq!(parse_taps("logits:many"), Err(LatentError::TopK("many".into())));
        assert_eq!(parse_taps(""), Ok(Taps::default()));
        assert_eq!(parse_taps("mimi,latent"), Err(LatentError::UnknownTap("latent".into())));
    }
}
