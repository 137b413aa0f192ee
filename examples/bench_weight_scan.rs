//! What checking weights for NaN and Inf costs at load. A bf16 tensor (`--millions N` values,
//! 256 by default: 512 MB, a thirtieth of moshiko; the ratio does not depend on the size) is
//! written to a safetensors file and decoded to f32 by the loader's decoding
//! (`weights::decode`), `--runs` times each, in one run:
//! - without any check (the baseline);
//! - checking every value in the same pass, as the loader does;
//! - then scanned for non-finite values in a second pass, the alternative.
//!
//! Prints the medians and each against the baseline (the host's part of loading; the upload to
//! a device is not counted, so the shares are upper bounds).
//!
//! `cargo run --example bench_weight_scan -- [--millions N] [--runs R]`

use std::time::Instant;

use anyhow::Result;
use burn::prelude::*;
use burn::tensor::DType;
use kokichi::weights::{self, OutTensor, WeightFile, write_tensors};
use rayon::prelude::*;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn bf16_to_f32(b: &[u8]) -> f32 {
    half::bf16::from_le_bytes([b[0], b[1]]).to_f32()
}

fn millis(t0: Instant) -> f64 {
    t0.elapsed().as_secs_f64() * 1e3
}

fn main() -> Result<()> {
    let n = arg("--millions", 256) * 1_000_000;
    let runs = arg("--runs", 5);
    let dir = std::env::temp_dir().join("kokichi-bench-weight-scan");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("w.safetensors");
    let bytes: Vec<u8> =
        (0..n).flat_map(|i| half::bf16::from_f32(((i % 1000) as f32 - 500.0) * 1e-3).to_le_bytes()).collect();
    write_tensors(&path, vec![("w".into(), vec![n], OutTensor::Raw(safetensors::Dtype::BF16, bytes))])?;
    let file = WeightFile::open(&path, &Device::flex(), DType::F32)?;
    let (_, _, raw) = file.stored("w").ok_or_else(|| anyhow::anyhow!("w is missing"))?;
    let (mut plain, mut checked, mut scan) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..=runs {
        let t0 = Instant::now();
        let values = weights::decode(raw, n, 2, bf16_to_f32, |_| true);
        let t_plain = millis(t0);
        drop(values);
        let t0 = Instant::now();
        let values = weights::decode(raw, n, 2, bf16_to_f32, f32::is_finite);
        let t_checked = millis(t0);
        let (values, finite) = values.ok_or_else(|| anyhow::anyhow!("size mismatch"))?;
        anyhow::ensure!(finite, "the test data are finite");
        let t0 = Instant::now();
        let bad = values.par_iter().position_any(|v| !v.is_finite());
        let t_scan = millis(t0);
        anyhow::ensure!(bad.is_none(), "the test data are finite");
        if run > 0 {
            // The first run faults the file's pages in.
            plain.push(t_plain);
            checked.push(t_checked);
            scan.push(t_scan);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (plain, checked, scan) = (median(&mut plain), median(&mut checked), median(&mut scan));
    println!(
        "{n} bf16 values -> f32: decode {plain:.1} ms; checked in the same pass {checked:.1} ms ({:+.1}%); \
         a second scanning pass {scan:.1} ms ({:+.1}%)",
        100.0 * (checked / plain - 1.0),
        100.0 * scan / plain
    );
    drop(file);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
