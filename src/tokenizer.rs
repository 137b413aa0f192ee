//! The text side of Moshi: its inner monologue is a stream of SentencePiece token ids. Instead
//! of binding the C++ library this module reads the `.model` file (a protobuf `ModelProto`) by
//! hand and keeps the piece table with its scores: ids decode to text, and text encodes to ids
//! by the unigram model's best segmentation (for text the model is made to say). It can also
//! write a minimal `.model` file, for our own small models and for tests.

use std::path::Path;

use crate::error::{Error, Result};

/// What a piece stands for, as in SentencePiece's `ModelProto.SentencePiece.Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceKind {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    /// One raw byte, written `<0xHH>`.
    Byte,
}

impl PieceKind {
    fn from_proto(value: u64) -> Option<Self> {
        Some(match value {
            1 => PieceKind::Normal,
            2 => PieceKind::Unknown,
            3 => PieceKind::Control,
            4 => PieceKind::UserDefined,
            5 => PieceKind::Unused,
            6 => PieceKind::Byte,
            _ => return None,
        })
    }

    fn to_proto(self) -> u64 {
        match self {
            PieceKind::Normal => 1,
            PieceKind::Unknown => 2,
            PieceKind::Control => 3,
            PieceKind::UserDefined => 4,
            PieceKind::Unused => 5,
            PieceKind::Byte => 6,
        }
    }
}

/// SentencePiece word boundary marker, shown as a space in text.
const SPACE: char = '\u{2581}';

/// A SentencePiece vocabulary that decodes token ids to text.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    pieces: Vec<(String, PieceKind)>,
    /// The unigram log-probability of each piece (0 where the file has none).
    scores: Vec<f32>,
}

impl Tokenizer {
    /// Reads a SentencePiece `.model` file.
    pub fn load(path: &Path) -> Result<Self> {
        let data = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let (pieces, scores) = parse_model(&data).map_err(|msg| Error::File {
            path: path.to_path_buf(),
            msg: format!("not a valid SentencePiece model: {msg}"),
        })?;
        tracing::debug!("{}: {} pieces", path.display(), pieces.len());
        Ok(Self { pieces, scores })
    }

    /// A tokenizer with the given pieces; piece `i` gets id `i`.
    pub fn from_pieces(pieces: Vec<(String, PieceKind)>) -> Self {
        Self { pieces, scores: Vec::new() }
    }

    /// A tokenizer with the given pieces and their scores.
    pub fn from_scored_pieces(pieces: Vec<(String, PieceKind, f32)>) -> Self {
        let scores = pieces.iter().map(|p| p.2).collect();
        Self { pieces: pieces.into_iter().map(|(t, k, _)| (t, k)).collect(), scores }
    }

    /// The id of the piece written exactly `piece` (with `▁`, or a special name like `<pad>`).
    pub fn id_of(&self, piece: &str) -> Option<u32> {
        self.pieces.iter().position(|(text, _)| text == piece).map(|i| i as u32)
    }

    /// Encodes `text` as SentencePiece's unigram model does: whitespace runs become one `▁`,
    /// a `▁` goes in front, and the segmentation into normal and user-defined pieces with the
    /// highest total score wins (fewest pieces on ties). A character no piece covers falls back
    /// to its UTF-8 byte pieces where the vocabulary has them, else it is an error naming it.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_with(text, None)
    }

    /// [`Tokenizer::encode`], except that a character no piece covers (in a vocabulary without
    /// byte pieces) becomes the unknown piece, a run of them one, as SentencePiece encodes it:
    /// for text the model is to read as it was trained to (a role prompt), not to say.
    pub fn encode_lossy(&self, text: &str) -> Result<Vec<u32>> {
        let unknown = self.pieces.iter().position(|(_, kind)| *kind == PieceKind::Unknown).map(|i| i as u32);
        let ids = self.encode_with(text, unknown)?;
        let mut out: Vec<u32> = Vec::with_capacity(ids.len());
        for id in ids {
            if Some(id) != unknown || out.last() != Some(&id) {
                out.push(id);
            }
        }
        Ok(out)
    }

    fn encode_with(&self, text: &str, unknown: Option<u32>) -> Result<Vec<u32>> {
        let words: Vec<&str> = text.split_whitespace().collect();
        if words.is_empty() {
            return Ok(Vec::new());
        }
        let normalized: Vec<char> =
            words.iter().flat_map(|w| std::iter::once(SPACE).chain(w.chars())).collect::<Vec<char>>();
        let mut lookup: std::collections::HashMap<&str, u32> = std::collections::HashMap::new();
        let mut longest = 1;
        for (i, (piece, kind)) in self.pieces.iter().enumerate() {
            if matches!(kind, PieceKind::Normal | PieceKind::UserDefined) && !piece.is_empty() {
                lookup.entry(piece.as_str()).or_insert(i as u32);
                longest = longest.max(piece.chars().count());
            }
        }
        let n = normalized.len();
        // Every piece occurrence: (start, end, id).
        let mut edges: Vec<Vec<(usize, Vec<u32>)>> = vec![Vec::new(); n];
        let mut covered = vec![false; n];
        let mut piece = String::new();
        for start in 0..n {
            piece.clear();
            for end in start + 1..=(start + longest).min(n) {
                piece.push(normalized[end - 1]);
                if let Some(&id) = lookup.get(piece.as_str()) {
                    edges[start].push((end, vec![id]));
                    covered[start..end].iter_mut().for_each(|c| *c = true);
                }
            }
        }
        // A character no piece covers: its UTF-8 byte pieces, else an error naming it.
        for (at, ch) in normalized.iter().enumerate().filter(|(at, _)| !covered[*at]) {
            let mut buf = [0u8; 4];
            let bytes: Option<Vec<u32>> =
                ch.encode_utf8(&mut buf).bytes().map(|b| self.id_of(&format!("<0x{b:02X}>"))).collect();
            let Some(ids) = bytes.or_else(|| unknown.map(|u| vec![u])) else {
                // Name the word that holds it (the `▁` in front of a word belongs to the word).
                let from = normalized[..=at].iter().rposition(|c| *c == SPACE).unwrap_or(0);
                let to = normalized[at + 1..].iter().position(|c| *c == SPACE).map_or(n, |p| at + 1 + p);
                let word: String = normalized[from + 1..to].iter().collect();
                return Err(Error::input(format!(
                    "cannot encode `{word}`: no piece of the vocabulary covers `{}`",
                    if *ch == SPACE { ' ' } else { *ch }
                )));
            };
            edges[at].push((at + 1, ids));
        }
        let score_of = |ids: &[u32]| -> f32 {
            match ids {
                [id] if self.kind(*id) != Some(PieceKind::Byte) => {
                    self.scores.get(*id as usize).copied().unwrap_or(0.0)
                }
                // Byte fallback, far below any real segmentation.
                _ => -100.0 * ids.len() as f32,
            }
        };
        // best[i]: (score, pieces, previous cut, the ids of the last step) of the best prefix of i chars.
        let mut best: Vec<Option<(f32, usize, usize, Vec<u32>)>> = vec![None; n + 1];
        best[0] = Some((0.0, 0, 0, Vec::new()));
        for start in 0..n {
            let Some((score, count, _, _)) = best[start].clone() else { continue };
            for (end, ids) in &edges[start] {
                let s = score + score_of(ids);
                let c = count + ids.len();
                let better = match &best[*end] {
                    None => true,
                    Some((bs, bc, _, _)) => s > *bs || (s == *bs && c < *bc),
                };
                if better {
                    best[*end] = Some((s, c, start, ids.clone()));
                }
            }
        }
        let mut ids = Vec::new();
        let mut at = n;
        while at > 0 {
            let Some((_, _, prev, step)) = &best[at] else {
                return Err(Error::input(format!("cannot encode `{text}` with this vocabulary")));
            };
            ids.splice(0..0, step.iter().copied());
            at = *prev;
        }
        Ok(ids)
    }

    /// Encodes the piece table as a minimal `ModelProto`: the pieces with their scores, plus
    /// `trainer_spec.byte_fallback` when there are byte pieces. SentencePiece itself loads it
    /// if there are no byte pieces or all 256 of them.
    pub fn to_model_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut piece = Vec::new();
        for (i, (text, kind)) in self.pieces.iter().enumerate() {
            piece.clear();
            put_bytes(&mut piece, 1, text.as_bytes());
            put_varint(&mut piece, 2 << 3 | 5);
            piece.extend_from_slice(&self.scores.get(i).copied().unwrap_or(0.0).to_le_bytes());
            put_varint(&mut piece, 3 << 3);
            put_varint(&mut piece, kind.to_proto());
            put_bytes(&mut out, 1, &piece);
        }
        if self.pieces.iter().any(|(_, kind)| *kind == PieceKind::Byte) {
            // The reference library refuses byte pieces unless `trainer_spec.byte_fallback` is set.
            let mut spec = Vec::new();
            put_varint(&mut spec, 35 << 3);
            put_varint(&mut spec, 1);
            put_bytes(&mut out, 2, &spec);
        }
        out
    }

    /// Adds `names` as user-defined pieces at ids `text_card + j` (a vocabulary adapter's
    /// tokens, [`crate::adapter`]), padding with unused pieces up to `text_card` where the
    /// vocabulary is smaller than the model's.
    pub fn extend(&mut self, text_card: usize, names: &[String]) {
        while self.pieces.len() < text_card {
            self.pieces.push((format!("<unused{}>", self.pieces.len()), PieceKind::Unused));
        }
        self.pieces.truncate(text_card);
        self.pieces.extend(names.iter().map(|n| (n.clone(), PieceKind::UserDefined)));
    }

    /// Number of pieces.
    pub fn len(&self) -> usize {
        self.pieces.len()
    }

    /// True when there are no pieces.
    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    /// The raw piece string of `id` (with `▁`, and `<0xHH>` for bytes).
    pub fn piece(&self, id: u32) -> Option<&str> {
        self.pieces.get(id as usize).map(|(text, _)| text.as_str())
    }

    /// The kind of piece `id`.
    pub fn kind(&self, id: u32) -> Option<PieceKind> {
        self.pieces.get(id as usize).map(|&(_, kind)| kind)
    }

    /// True when `id` is a control piece such as `<s>`, `</s>` or `<pad>`.
    pub fn is_control(&self, id: u32) -> bool {
        self.kind(id) == Some(PieceKind::Control)
    }

    /// The text of one piece as it is streamed: `▁` becomes a space, no space is stripped.
    /// Control, unknown and unused pieces give `None`, and so does a byte piece that is not
    /// valid UTF-8 on its own.
    pub fn decode_piece(&self, id: u32) -> Option<String> {
        let (text, kind) = self.pieces.get(id as usize)?;
        match kind {
            PieceKind::Normal | PieceKind::UserDefined => Some(text.replace(SPACE, " ")),
            PieceKind::Byte => byte_value(text).filter(u8::is_ascii).map(|b| char::from(b).to_string()),
            PieceKind::Control | PieceKind::Unknown | PieceKind::Unused => None,
        }
    }

    /// Decodes a sequence of ids to text, like SentencePiece's `decode_ids`: byte pieces are
    /// joined and read as UTF-8 (invalid bytes become U+FFFD), `▁` becomes a space, the leading
    /// space of the text is dropped, and control, unknown and unused pieces and out-of-range ids are skipped.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut text = String::new();
        let mut bytes = Vec::new();
        for &id in ids {
            let Some((piece, kind)) = self.pieces.get(id as usize) else {
                tracing::debug!("decode: skipping id {id}, vocabulary has {}", self.pieces.len());
                continue;
            };
            if *kind == PieceKind::Byte {
                bytes.extend(byte_value(piece));
                continue;
            }
            flush_bytes(&mut text, &mut bytes);
            if matches!(kind, PieceKind::Normal | PieceKind::UserDefined) {
                let piece = match text.is_empty() {
                    true => piece.strip_prefix(SPACE).unwrap_or(piece),
                    false => piece,
                };
                text.push_str(&piece.replace(SPACE, " "));
            }
        }
        flush_bytes(&mut text, &mut bytes);
        text
    }
}

fn flush_bytes(text: &mut String, bytes: &mut Vec<u8>) {
    if !bytes.is_empty() {
        text.push_str(&String::from_utf8_lossy(bytes));
        bytes.clear();
    }
}

/// The byte of a `<0xHH>` piece.
fn byte_value(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// Reads the pieces (field 1) of a `ModelProto`, skipping every other field.
type Pieces = (Vec<(String, PieceKind)>, Vec<f32>);

fn parse_model(data: &[u8]) -> std::result::Result<Pieces, String> {
    let mut reader = Reader { data, pos: 0 };
    let mut pieces = Vec::new();
    let mut scores = Vec::new();
    while !reader.done() {
        match reader.key()? {
            (1, 2) => {
                let (text, kind, score) =
                    parse_piece(reader.bytes()?).map_err(|e| format!("piece {}: {e}", pieces.len()))?;
                pieces.push((text, kind));
                scores.push(score);
            }
            (1, wire) => return Err(format!("pieces field has wire type {wire}")),
            (_, wire) => reader.skip(wire)?,
        }
    }
    if pieces.is_empty() {
        return Err("no pieces".into());
    }
    if u32::try_from(pieces.len()).is_err() {
        return Err(format!("{} pieces is more than 32-bit ids can address", pieces.len()));
    }
    Ok((pieces, scores))
}

fn parse_piece(data: &[u8]) -> std::result::Result<(String, PieceKind, f32), String> {
    let mut reader = Reader { data, pos: 0 };
    let mut text = String::new();
    let mut kind = PieceKind::Normal;
    let mut score = 0.0f32;
    while !reader.done() {
        match reader.key()? {
            (1, 2) => {
                let raw = reader.bytes()?;
                text = std::str::from_utf8(raw).map_err(|_| "piece text is not UTF-8")?.to_owned();
            }
            (2, 5) => {
                let b = reader.take(4)?;
                score = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                if !score.is_finite() {
                    return Err(format!("score {score} is not finite"));
                }
            }
            (3, 0) => {
                let value = reader.varint()?;
                kind = PieceKind::from_proto(value).ok_or_else(|| format!("unknown piece type {value}"))?;
            }
            (field @ 1..=3, wire) => return Err(format!("field {field} has wire type {wire}")),
            (_, wire) => reader.skip(wire)?,
        }
    }
    Ok((text, kind, score))
}

/// A cursor over protobuf wire-format bytes. Errors name the byte offset.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn done(&self) -> bool {
        self.pos >= self.data.len()
    }

    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&end| end <= self.data.len());
        let end = end.ok_or_else(|| format!("truncated at byte {}", self.pos))?;
        let bytes = &self.data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn varint(&mut self) -> std::result::Result<u64, String> {
        let start = self.pos;
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let &[byte] = self.take(1)? else {
                return Err(format!("truncated at byte {}", self.pos));
            };
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(format!("varint too long at byte {start}"))
    }

    /// Field number and wire type of the next field.
    fn key(&mut self) -> std::result::Result<(u64, u8), String> {
        let start = self.pos;
        let key = self.varint()?;
        let field = key >> 3;
        if field == 0 {
            return Err(format!("field number 0 at byte {start}"));
        }
        Ok((field, (key & 7) as u8))
    }

    fn bytes(&mut self) -> std::result::Result<&'a [u8], String> {
        let len = self.varint()?;
        let len = usize::try_from(len).map_err(|_| format!("length {len} too large at byte {}", self.pos))?;
        self.take(len)
    }

    fn skip(&mut self, wire: u8) -> std::result::Result<(), String> {
        match wire {
            0 => self.varint().map(drop),
            1 => self.take(8).map(drop),
            2 => self.bytes().map(drop),
            5 => self.take(4).map(drop),
            _ => Err(format!("unsupported wire type {wire} near byte {}", self.pos)),
        }
    }
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    put_varint(out, field << 3 | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn temp_file(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("kokichi-tok-{}-{name}", std::process::id()))
    }

    fn sample() -> Tokenizer {
        let p = |s: &str, k| (s.to_string(), k);
        use PieceKind::*;
        Tokenizer::from_pieces(vec![
            p("<unk>", Unknown),
            p("<s>", Control),
            p("</s>", Control),
            p("<pad>", Control),
            p("▁Hello", Normal),
            p("▁wor", Normal),
            p("ld", Normal),
            p("<0x21>", Byte),
            p("<0xC3>", Byte),
            p("<0xA9>", Byte),
            p("▁", Normal),
            p("<|user|>", UserDefined),
            p("<unused>", Unused),
        ])
    }

    #[test]
    fn encode_takes_the_best_scored_segmentation() {
        use PieceKind::*;
        let tok = Tokenizer::from_scored_pieces(vec![
            ("<unk>".into(), Unknown, 0.0),
            ("▁".into(), Normal, -5.0),
            ("▁he".into(), Normal, -2.0),
            ("llo".into(), Normal, -2.0),
            ("▁hello".into(), Normal, -3.0),
            ("▁h".into(), Normal, -1.0),
            ("ello".into(), Normal, -1.5),
            ("▁world".into(), Normal, -4.0),
            ("<0x21>".into(), Byte, 0.0),
        ]);
        // "▁hello": -3 alone beats ▁he+llo (-4) but not ▁h+ello (-2.5).
        assert_eq!(tok.encode("hello").unwrap(), vec![5, 6]);
        assert_eq!(tok.encode("  hello \n world ").unwrap(), vec![5, 6, 7]);
        assert_eq!(tok.decode(&tok.encode("hello world").unwrap()), "hello world");
        // A character no piece covers: its byte pieces, else an error naming it.
        assert_eq!(tok.encode("hello!").unwrap(), vec![5, 6, 8]);
        let e = tok.encode("hello?").unwrap_err().to_string();
        assert!(e.contains("`hello?`") && e.contains("`?`"), "{e}");
        assert!(tok.encode("   ").unwrap().is_empty());
        // Lossy: such a character is the unknown piece, a run of them one.
        assert_eq!(tok.encode_lossy("hello??").unwrap(), vec![5, 6, 0]);
        assert_eq!(tok.encode_lossy("hello? world!").unwrap(), vec![5, 6, 0, 7, 8]);
        // Scores survive the model file.
        let path = temp_file("scored.model");
        std::fs::write(&path, tok.to_model_bytes()).unwrap();
        let back = Tokenizer::load(&path).unwrap();
        assert_eq!(back.encode("hello world").unwrap(), vec![5, 6, 7]);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn encode_round_trips_kokichi_tiny_words() {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/kokichi-tiny/tokenizer.model");
        let tok = Tokenizer::load(&path).unwrap();
        let ids = tok.encode("seven  apple two").unwrap();
        assert_eq!(ids.len(), 3);
        assert_eq!(tok.decode(&ids), "seven apple two");
        assert_eq!(tok.piece(ids[0]), Some("▁seven"));
        // A word-level vocabulary without byte pieces: an unknown word is named.
        let e = tok.encode("seven xylograph").unwrap_err().to_string();
        assert!(e.contains("`xylograph`"), "{e}");
    }

    #[test]
    fn model_bytes_round_trip() {
        let tok = sample();
        let path = temp_file("rt.model");
        std::fs::write(&path, tok.to_model_bytes()).unwrap();
        let loaded = Tokenizer::load(&path).unwrap();
        assert_eq!(loaded.pieces, tok.pieces);
        assert_eq!(loaded.len(), 13);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn other_fields_are_skipped() {
        let mut data = Vec::new();
        put_bytes(&mut data, 2, b"\x08\x01trainer spec"); // length-delimited
        put_varint(&mut data, 5 << 3); // varint
        put_varint(&mut data, 300);
        put_varint(&mut data, 6 << 3 | 1); // fixed64
        data.extend_from_slice(&[1; 8]);
        data.extend(sample().to_model_bytes());
        put_varint(&mut data, 7 << 3 | 5); // fixed32
        data.extend_from_slice(&[2; 4]);
        assert_eq!(parse_model(&data).unwrap().0, sample().pieces);
    }

    #[test]
    fn pieces_and_kinds() {
        let tok = sample();
        assert_eq!(tok.piece(4), Some("▁Hello"));
        assert_eq!(tok.piece(13), None);
        assert!(tok.is_control(1) && tok.is_control(3) && !tok.is_control(0) && !tok.is_control(99));
        assert_eq!(tok.kind(7), Some(PieceKind::Byte));
    }

    #[test]
    fn decode_piece_streams_text() {
        let tok = sample();
        assert_eq!(tok.decode_piece(4).as_deref(), Some(" Hello"));
        assert_eq!(tok.decode_piece(6).as_deref(), Some("ld"));
        assert_eq!(tok.decode_piece(7).as_deref(), Some("!"));
        assert_eq!(tok.decode_piece(8), None); // half of a UTF-8 character
        assert_eq!(tok.decode_piece(11).as_deref(), Some("<|user|>"));
        for id in [0, 1, 2, 3, 12, 99] {
            assert_eq!(tok.decode_piece(id), None, "id {id}");
        }
    }

    #[test]
    fn decode_joins_pieces() {
        let tok = sample();
        assert_eq!(tok.decode(&[1, 4, 5, 6, 7, 2]), "Hello world!");
        assert_eq!(tok.decode(&[3, 3, 5, 6, 10, 8, 9, 0, 12]), "world é");
        assert_eq!(tok.decode(&[8, 4]), "\u{FFFD} Hello");
        assert_eq!(tok.decode(&[7, 4, 999]), "! Hello");
        assert_eq!(tok.decode(&[11, 4]), "<|user|> Hello");
        assert_eq!(tok.decode(&[]), "");
    }

    #[test]
    fn bad_files_are_errors_naming_the_file() {
        let bytes = sample().to_model_bytes();
        let cases: [(&str, &[u8]); 5] = [
            ("truncated.model", &bytes[..bytes.len() - 3]),
            ("garbage.model", b"hello, this is not a protobuf"),
            ("empty.model", b""),
            ("overlong.model", &[0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
            ("group.model", &[0x0b, 0x0c]),
        ];
        for (name, data) in cases {
            let path = temp_file(name);
            std::fs::write(&path, data).unwrap();
            let err = Tokenizer::load(&path).unwrap_err();
            assert!(matches!(err, Error::File { .. }), "{name}: {err}");
            assert!(err.to_string().contains(name), "{name}: {err}");
            std::fs::remove_file(&path).unwrap();
        }
        let missing = temp_file("missing.model");
        assert!(Tokenizer::load(&missing).unwrap_err().to_string().contains("missing.model"));
    }

    #[test]
    fn every_truncation_is_an_error_or_a_prefix() {
        let pieces = sample().pieces;
        let bytes = sample().to_model_bytes();
        for cut in 0..bytes.len() {
            if let Ok((parsed, _)) = parse_model(&bytes[..cut]) {
                assert_eq!(parsed, pieces[..parsed.len()], "cut at {cut}");
            }
        }
    }
}
