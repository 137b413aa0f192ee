//! Mimi against the reference `moshi` package (fixtures from scripts/gen_mimi_fixtures.py):
//! codes identical in batch and in streaming mode, audio and intermediates within 1e-4,
//! on the flex CPU backend and on wgpu.

mod common;

use burn::prelude::*;
use burn::tensor::DType;
use common::*;
use kokichi::mimi::{Mimi, MimiConfig};

fn load(name: &str, device: &Device) -> (Mimi, Expected) {
    let dir = fixture(&format!("mimi_{name}"));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let cfg = MimiConfig::from_json(&json["mimi"].to_string()).unwrap();
    let n = json["mimi_codebooks"].as_u64().unwrap() as usize;
    let mimi = Mimi::load(&dir.join("mimi.safetensors"), cfg, n, device, DType::F32).unwrap();
    (mimi, Expected::open(dir.join("expected.safetensors")))
}

fn input(exp: &Expected, _mimi: &Mimi) -> (Vec<f32>, usize, usize) {
    let shape = exp.shape("input");
    (exp.f32("input"), shape[0], shape[1])
}

fn batch_case(name: &str) {
    for (kind, device) in devices() {
        let (mimi, exp) = load(name, &device);
        let (pcm, b, t) = input(&exp, &mimi);
        let codes = mimi.encode(mimi.pcm_tensor(pcm, [b, t])).unwrap();
        assert_eq!(codes.dims().to_vec(), exp.shape("batch.codes"), "{kind} batch codes shape");
        assert_eq!(ints(codes.clone()), exp.i64("batch.codes"), "{kind} {name}: batch codes");
        let audio = mimi.decode(codes).unwrap();
        assert_close(&format!("{kind} {name} batch audio"), &floats(audio), &exp.f32("batch.audio"), 1e-4);
    }
}

fn stream_case(name: &str) {
    for (kind, device) in devices() {
        let (mimi, exp) = load(name, &device);
        let (pcm, b, t) = input(&exp, &mimi);
        let frame = mimi.frame_size();
        let frames = t.div_ceil(frame);
        let mut padded = vec![0f32; b * frames * frame];
        for r in 0..b {
            padded[r * frames * frame..r * frames * frame + t].copy_from_slice(&pcm[r * t..(r + 1) * t]);
        }
        let mut enc = mimi.init_enc_state(b).unwrap();
        let mut dec = mimi.init_dec_state(b).unwrap();
        let q = mimi.num_codebooks;
        let mut codes = vec![0i64; b * q * frames];
        let mut audio = vec![0f32; b * frames * frame];
        for f in 0..frames {
            let mut chunk = Vec::with_capacity(b * frame);
            for r in 0..b {
                let s = r * frames * frame + f * frame;
                chunk.extend_from_slice(&padded[s..s + frame]);
            }
            let c = mimi.encode_step(&mut enc, mimi.pcm_tensor(chunk, [b, frame])).unwrap();
            let a = mimi.decode_step(&mut dec, c.clone()).unwrap();
            let c = ints(c);
            let a = floats(a);
            for r in 0..b {
                for k in 0..q {
                    codes[(r * q + k) * frames + f] = c[r * q + k];
                }
                audio[r * frames * frame + f * frame..r * frames * frame + (f + 1) * frame]
                    .copy_from_slice(&a[r * frame..(r + 1) * frame]);
            }
        }
        assert_eq!(codes, exp.i64("stream.codes"), "{kind} {name}: streaming codes");
        assert_close(&format!("{kind} {name} stream audio"), &audio, &exp.f32("stream.audio"), 1e-4);
    }
}

/// `mimi_a`: Mimi's own layout at small widths (LayerScale, LayerNorm, plain FFN).
#[test]
fn batch_parity_mimi_layout() {
    batch_case("a");
}

/// `mimi_b`: hop 480, dilated residual stack, projected transformer, gated FFN, RMS norm.
#[test]
fn batch_parity_projected_gated_layout() {
    batch_case("b");
}

#[test]
fn streaming_parity_mimi_layout() {
    stream_case("a");
}

#[test]
fn streaming_parity_projected_gated_layout() {
    stream_case("b");
}

fn trace_case(name: &str) {
    for (kind, device) in devices() {
        let (mimi, exp) = load(name, &device);
        let (pcm, b, t) = input(&exp, &mimi);
        let frame = mimi.frame_size();
        let frames = t.div_ceil(frame);
        let mut padded = vec![0f32; b * frames * frame];
        for r in 0..b {
            padded[r * frames * frame..r * frames * frame + t].copy_from_slice(&pcm[r * t..(r + 1) * t]);
        }
        let tr = mimi.trace(mimi.pcm_tensor(padded, [b, frames * frame])).unwrap();
        let tag = |s: &str| format!("{kind} {name} {s}");
        assert_close(&tag("seanet"), &floats(tr.seanet), &exp.f32("batch.seanet"), 1e-4);
        assert_close(&tag("transformer"), &floats(tr.transformer), &exp.f32("batch.transformer"), 1e-4);
        assert_close(&tag("latent"), &floats(tr.latent), &exp.f32("batch.latent"), 1e-4);
        assert_eq!(ints(tr.codes), exp.i64("batch.codes"), "{}", tag("codes"));
        assert_close(&tag("quantized"), &floats(tr.quantized), &exp.f32("batch.quantized"), 1e-4);
        assert_close(&tag("decoder transformer"), &floats(tr.dec_transformer), &exp.f32("batch.dec_transformer"), 1e-4);
        assert_close(&tag("audio"), &floats(tr.audio), &exp.f32("batch.audio"), 1e-4);
    }
}

#[test]
fn intermediates_match_reference_mimi_layout() {
    trace_case("a");
}

#[test]
fn intermediates_match_reference_projected_gated_layout() {
    trace_case("b");
}

/// Streaming in chunks of several frames gives the frame-by-frame result while the stream is
/// within the transformer context (5 frames for config a: context 10 at 25 Hz).
#[test]
fn chunked_streaming_equals_frame_by_frame() {
    let device = Device::flex();
    let (mimi, exp) = load("a", &device);
    let (pcm, _, t) = input(&exp, &mimi);
    let frame = mimi.frame_size();
    let frames = 4;
    let row: Vec<f32> = pcm[..frames * frame].to_vec();
    assert!(t >= frames * frame);
    let run = |chunk: usize| -> (Vec<i64>, Vec<f32>) {
        let mut enc = mimi.init_enc_state(1).unwrap();
        let mut dec = mimi.init_dec_state(1).unwrap();
        let mut codes = Vec::new();
        let mut audio = Vec::new();
        for part in row.chunks(chunk * frame) {
            let c = mimi.encode_chunk(&mut enc, mimi.pcm_tensor(part.to_vec(), [1, part.len()])).unwrap();
            audio.extend(floats(mimi.decode_chunk(&mut dec, c.clone()).unwrap()));
            let c = ints(c);
            let q = mimi.num_codebooks;
            let n = part.len() / frame;
            for f in 0..n {
                for k in 0..q {
                    codes.push(c[k * n + f]);
                }
            }
        }
        (codes, audio)
    };
    let (c1, a1) = run(1);
    for chunk in [2, 4] {
        let (c, a) = run(chunk);
        assert_eq!(c, c1, "chunk {chunk}");
        assert_close(&format!("chunk {chunk} audio"), &a, &a1, 1e-4);
    }
}

#[test]
fn streaming_rejects_partial_frames() {
    let device = Device::flex();
    let (mimi, _) = load("a", &device);
    let mut enc = mimi.init_enc_state(1).unwrap();
    assert!(mimi.encode_chunk(&mut enc, mimi.pcm_tensor(vec![0.0; 1000], [1, 1000])).is_err());
    assert!(mimi.encode_step(&mut enc, mimi.pcm_tensor(vec![0.0; 3840], [1, 3840])).is_err());
}
