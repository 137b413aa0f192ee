//! Streaming Mimi encode + decode timing for `make bench-codec` (driven by
//! scripts/bench_codec.py, which also times rustymimi on the same weights and input).
//!
//! Usage: bench_codec --mimi FILE --input WAV --backend cpu|wgpu --codes-out FILE [--warmup N]
//! Prints one JSON line: ms per frame for encode and decode, excluding `warmup` frames.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use kokichi::backend::{self, BackendKind, Precision};
use kokichi::mimi::{Mimi, MimiConfig};
use kokichi::weights::{self, OutTensor};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let mimi_path = PathBuf::from(arg(&args, "--mimi").context("--mimi")?);
    let input = PathBuf::from(arg(&args, "--input").context("--input")?);
    let codes_out = PathBuf::from(arg(&args, "--codes-out").context("--codes-out")?);
    let kind: BackendKind = arg(&args, "--backend").unwrap_or_else(|| "cpu".into()).parse()?;
    let warmup: usize = arg(&args, "--warmup").map_or(Ok(2), |s| s.parse())?;
    let device = backend::device(kind, Precision::F32)?;
    let mimi = Mimi::load(&mimi_path, MimiConfig::v0_1(), 8, &device, Precision::F32.dtype())?;
    let pcm = kokichi::audio::read_audio(&input, 24000)?;
    let frame = mimi.frame_size();
    let frames = pcm.len() / frame;
    if frames <= warmup {
        bail!("input too short: {frames} frames");
    }
    let mut enc = mimi.init_enc_state(1)?;
    let mut dec = mimi.init_dec_state(1)?;
    let mut codes: Vec<Vec<i64>> = Vec::with_capacity(frames);
    let mut enc_ms = Vec::with_capacity(frames);
    for chunk in pcm.chunks_exact(frame) {
        let t0 = Instant::now();
        let c = mimi.encode_step(&mut enc, mimi.pcm_tensor(chunk.to_vec(), [1, frame]))?;
        codes.push(backend::read_ints(c)?);
        enc_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    let mut dec_ms = Vec::with_capacity(frames);
    for col in &codes {
        let t0 = Instant::now();
        let c = mimi.codes_tensor(col.clone(), [1, col.len(), 1])?;
        let a = mimi.decode_chunk(&mut dec, c)?;
        backend::read_floats(a)?;
        dec_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    let q = codes[0].len();
    let mut flat = vec![0i64; q * frames];
    for (t, col) in codes.iter().enumerate() {
        for (k, &v) in col.iter().enumerate() {
            flat[k * frames + t] = v;
        }
    }
    weights::write_tensors(&codes_out, vec![("codes".into(), vec![1, q, frames], OutTensor::I64(flat))])?;
    let mean = |v: &[f64]| v[warmup..].iter().sum::<f64>() / (v.len() - warmup) as f64;
    println!(
        "{{\"backend\": \"{kind}\", \"adapter\": \"{}\", \"frames\": {frames}, \"encode_ms\": {:.3}, \"decode_ms\": {:.3}, \"first_encode_ms\": {:.1}, \"first_decode_ms\": {:.1}}}",
        backend::adapter_name(&device).replace('"', "'"),
        mean(&enc_ms),
        mean(&dec_ms),
        enc_ms[0],
        dec_ms[0]
    );
    Ok(())
}
