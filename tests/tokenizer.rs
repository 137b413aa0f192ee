//! Checks our SentencePiece decoder against the reference library, through a tiny real model
//! and the decodes it recorded (`scripts/make_spm_fixture.py`).

use std::path::Path;

use kokichi::tokenizer::{PieceKind, Tokenizer};

fn fixture() -> (Tokenizer, serde_json::Value) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/spm");
    let tokenizer = Tokenizer::load(&dir.join("tiny.model")).unwrap();
    let json = std::fs::read_to_string(dir.join("tiny.json")).unwrap();
    (tokenizer, serde_json::from_str(&json).unwrap())
}

#[test]
fn pieces_match_sentencepiece() {
    let (tok, expected) = fixture();
    let pieces = expected["pieces"].as_array().unwrap();
    assert_eq!(tok.len(), pieces.len());
    for (id, entry) in pieces.iter().enumerate() {
        let id = id as u32;
        let kind = match entry[1].as_str().unwrap() {
            "normal" => PieceKind::Normal,
            "unknown" => PieceKind::Unknown,
            "control" => PieceKind::Control,
            "user_defined" => PieceKind::UserDefined,
            "unused" => PieceKind::Unused,
            "byte" => PieceKind::Byte,
            other => panic!("unknown kind {other}"),
        };
        assert_eq!(tok.piece(id), entry[0].as_str(), "id {id}");
        assert_eq!(tok.kind(id), Some(kind), "id {id}");
        assert_eq!(tok.is_control(id), kind == PieceKind::Control);
    }
}

#[test]
fn decode_matches_sentencepiece() {
    let (tok, expected) = fixture();
    for case in expected["cases"].as_array().unwrap() {
        let ids: Vec<u32> = case["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(tok.decode(&ids), case["text"].as_str().unwrap(), "ids {ids:?}");
    }
}

#[test]
fn streamed_pieces_join_to_the_decoded_text() {
    // Without byte pieces, streaming piece by piece gives the same text up to the leading space.
    let (tok, expected) = fixture();
    for case in expected["cases"].as_array().unwrap() {
        let ids: Vec<u32> = case["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        if ids.iter().any(|&id| tok.kind(id) == Some(PieceKind::Byte)) {
            continue;
        }
        let streamed: String = ids.iter().filter_map(|&id| tok.decode_piece(id)).collect();
        assert_eq!(streamed.strip_prefix(' ').unwrap_or(&streamed), case["text"].as_str().unwrap());
    }
}

#[test]
fn rewritten_model_keeps_the_pieces() {
    let (tok, _) = fixture();
    let path = std::env::temp_dir().join(format!("kokichi-tok-it-{}.model", std::process::id()));
    std::fs::write(&path, tok.to_model_bytes()).unwrap();
    let again = Tokenizer::load(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(again.len(), tok.len());
    for id in 0..tok.len() as u32 {
        assert_eq!((again.piece(id), again.kind(id)), (tok.piece(id), tok.kind(id)));
    }
}
