//! End to end: the tiny model folder answers a spoken wav (espeak-ng) through
//! Mimi encode -> LM step -> Mimi decode, matching the reference's greedy run
//! (scripts/gen_e2e_fixture.py): tokens identical, audio within 1e-4, after a warm-up session. Run through the library
//! on both backends, and through `kokichi run` (the binary) on the CPU backend.

mod common;

use std::process::Command;

use burn::tensor::DType;
use common::*;
use kokichi::lm::GenConfig;
use kokichi::model_dir;
use kokichi::session::Engine;

#[test]
fn library_matches_reference() {
    let exp = Expected::open(fixture("e2e_expected.safetensors"));
    let files = model_dir::resolve(fixture("tiny_model").to_str().unwrap()).unwrap();
    let input = kokichi::audio::read_audio(&fixture("speech/question.wav"), 24000).unwrap();
    assert_close("decoded wav", &input, &exp.f32("input"), 0.0);
    let want_tokens = exp.i64("tokens");
    let shape = exp.shape("tokens");
    let (k, n) = (shape[1], shape[2]);
    for (kind, device) in devices() {
        let engine = Engine::load(&files, &device, DType::F32).unwrap();
        // As `kokichi serve` does on wgpu: a throwaway session first, sampled, which must leave
        // the next session's tokens and audio as they are.
        engine.warm_up(GenConfig::default(), 4).unwrap();
        let frame = engine.frame_size();
        let mut pcm = input.clone();
        pcm.resize(pcm.len().div_ceil(frame) * frame, 0.0);
        let mut s = engine.init_session(GenConfig::greedy()).unwrap();
        let mut out = Vec::new();
        let mut cols = Vec::new();
        for chunk in pcm.chunks_exact(frame) {
            let f = engine.step(&mut [&mut s], chunk).unwrap().pop().unwrap();
            out.extend_from_slice(&f.pcm);
            if let (Some(t), Some(a)) = (f.text, f.audio) {
                let mut col = vec![t];
                col.extend(a);
                cols.push(col);
            }
        }
        assert_eq!(cols.len(), n, "{kind}: produced steps");
        for (i, col) in cols.iter().enumerate() {
            for s in 0..k {
                assert_eq!(col[s], want_tokens[s * n + i], "{kind}: step {i} stream {s}");
            }
        }
        assert_close(&format!("{kind} e2e audio"), &out, &exp.f32("output"), 1e-4);
    }
}

#[test]
fn binary_run_matches_reference() {
    let exp = Expected::open(fixture("e2e_expected.safetensors"));
    let dir = std::env::temp_dir().join(format!("kokichi-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let wav = dir.join("answer.wav");
    let tokens = dir.join("tokens.safetensors");
    let transcript = dir.join("transcript.txt");
    let status = Command::new(env!("CARGO_BIN_EXE_kokichi"))
        .args(["--backend", "cpu", "run", "--greedy", "--model"])
        .arg(fixture("tiny_model"))
        .arg("--input")
        .arg(fixture("speech/question.wav"))
        .arg("--output")
        .arg(&wav)
        .arg("--dump-tokens")
        .arg(&tokens)
        .arg("--transcript")
        .arg(&transcript)
        .status()
        .unwrap();
    assert!(status.success());
    let (got, shape) = kokichi::weights::read_int_tensor(&tokens, "tokens").unwrap();
    assert_eq!(shape, exp.shape("tokens"));
    assert_eq!(got, exp.i64("tokens"));
    let audio = kokichi::audio::read_audio(&wav, 24000).unwrap();
    // As long as the input (the last frame's padding dropped); the wav is 16-bit: compare to
    // within its quantisation step.
    assert_eq!(audio.len(), exp.f32("input").len(), "answer length");
    assert_close("binary e2e audio", &audio, &exp.f32("output")[..audio.len()], 1e-4 + 1.0 / 32768.0);
    assert!(transcript.is_file());
    std::fs::remove_dir_all(&dir).ok();
}
