//! Whole models through the fused step kernels (`kernels/`) against the same models through
//! their plain-Burn references, on every test backend: random Mimi and LMs stepped frame by
//! frame with the kernels on and then off give the same codes and greedy tokens, and audio to
//! 1e-4. On the cpu backend both runs take the references (the check that they stay equal to
//! the unfused layers is `lm_parity` and `mimi_parity`, against the reference package). Its own
//! binary: the kernels' switch is process-wide.

mod common;

use common::*;
use kokichi::backend;
use kokichi::kernels;
use kokichi::lm::{LmConfig, LmModel};
use kokichi::mimi::{Mimi, MimiConfig};

/// The switch is process-wide: one test at a time flips it.
static SWITCH: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Streams `frames` frames of a chirp through encode and decode: codes and audio.
fn codec_run(mimi: &Mimi, frames: usize) -> (Vec<i64>, Vec<f32>) {
    let frame = mimi.frame_size();
    let mut enc = mimi.init_enc_state(1).unwrap();
    let mut dec = mimi.init_dec_state(1).unwrap();
    let (mut codes, mut audio) = (Vec::new(), Vec::new());
    for f in 0..frames {
        let pcm: Vec<f32> =
            (0..frame).map(|j| ((f * frame + j) as f32 * 0.002 * (1.0 + j as f32 / 4000.0)).sin() * 0.4).collect();
        let c = mimi.encode_step(&mut enc, mimi.pcm_tensor(pcm, [1, frame])).unwrap();
        let q = c.dims()[1];
        let out = mimi.decode_step(&mut dec, c.clone()).unwrap();
        codes.extend(backend::read_ints(c.reshape([q])).unwrap());
        audio.extend(backend::read_floats(out).unwrap());
    }
    (codes, audio)
}

#[test]
fn codec_frames_through_the_kernels_match_the_references() {
    let _one = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    for (kind, device) in devices() {
        let mimi = Mimi::random(MimiConfig::kokichi_tiny(), 6, &device, 3).unwrap().0;
        kernels::set_enabled(true);
        let (codes_k, audio_k) = codec_run(&mimi, 6);
        kernels::set_enabled(false);
        let (codes_r, audio_r) = codec_run(&mimi, 6);
        kernels::set_enabled(true);
        assert_eq!(codes_k, codes_r, "{kind}: codes");
        let diff = audio_k.iter().zip(&audio_r).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(diff < 1e-4, "{kind}: audio differs by {diff}");
        assert!(audio_k.iter().any(|v| v.abs() > 1e-6), "{kind}: silent output");
    }
}

#[test]
fn lm_steps_through_the_kernels_pick_the_references_tokens() {
    let _one = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    for (kind, device) in devices() {
        for (name, cfg) in [("tiny", LmConfig::tiny()), ("kokichi-tiny", LmConfig::kokichi_tiny(300))] {
            let lm = LmModel::random(cfg, &device, 5).unwrap().0;
            kernels::set_enabled(true);
            let fused = greedy_tokens(&lm, 12);
            kernels::set_enabled(false);
            let plain = greedy_tokens(&lm, 12);
            kernels::set_enabled(true);
            assert!(fused.len() >= 8, "{kind} {name}: {} steps gave tokens", fused.len());
            assert_eq!(fused, plain, "{kind} {name}: tokens");
        }
    }
}
