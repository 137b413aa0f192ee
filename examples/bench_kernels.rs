//! The custom kernels against their plain-Burn references, timed on wgpu:
//! `cargo run --example bench_kernels [-- --iters N --dims 1024,4096]`.
//!
//! Prints µs per call (mean over N calls after warm-up, device synced) for one LM step
//! (`[1, 1, C]`) and a 64-row batch (`[1, 64, C]`).

use std::time::Instant;

use anyhow::{Result, anyhow};
use burn::prelude::*;
use burn::tensor::DType;
use kokichi::backend::{self, BackendKind, Precision};
use kokichi::kernels::rms_norm::{reference, rms_norm};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

fn time(device: &Device, iters: usize, mut f: impl FnMut()) -> Result<f64> {
    for _ in 0..5 {
        f();
    }
    device.sync().map_err(|e| anyhow!("{e:?}"))?;
    let t = Instant::now();
    for _ in 0..iters {
        f();
    }
    device.sync().map_err(|e| anyhow!("{e:?}"))?;
    Ok(t.elapsed().as_secs_f64() * 1e6 / iters as f64)
}

fn main() -> Result<()> {
    let iters: usize = arg("--iters").map_or(Ok(200), |s| s.parse())?;
    let dims = arg("--dims").unwrap_or_else(|| "1024,4096".into());
    let device = backend::device(BackendKind::Wgpu, Precision::F32)?;
    println!("wgpu adapter: {}", backend::adapter_name(&device));
    for c in dims.split(',') {
        let c: usize = c.trim().parse()?;
        for rows in [1, 64] {
            let x = backend::floats(
                (0..rows * c).map(|i| (i as f32 * 0.37).sin()).collect(),
                [1, rows, c],
                &device,
                DType::F32,
            );
            let alpha = backend::floats(vec![1.0; c], [c], &device, DType::F32);
            let plain = time(&device, iters, || drop(reference(x.clone(), alpha.clone(), 1e-8)))?;
            let fused = time(&device, iters, || drop(rms_norm(x.clone(), alpha.clone(), 1e-8)))?;
            println!("rms_norm [1, {rows}, {c}]: reference {plain:.1} µs, fused {fused:.1} µs ({:.2}x)", plain / fused);
        }
    }
    Ok(())
}
