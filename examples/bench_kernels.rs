//! The custom kernels against their plain-Burn references, timed on wgpu:
//! `cargo run --example bench_kernels [-- --iters N --dims 1024,4096 --matvec 1024x1024,4096x4096]`.
//!
//! Prints µs per call (mean over N calls after warm-up, device synced): RMSNorm for one LM step
//! (`[1, 1, C]`) and a 64-row batch (`[1, 64, C]`); the matrix-vector product for one position
//! (`[1, 1, K] x [K, N]`, moshiko's attention and feed-forward widths by default), in f32 and,
//! where the adapter has it, f16, with the weights' read rate.

use std::time::Instant;

use anyhow::{Result, anyhow};
use burn::prelude::*;
use burn::tensor::DType;
use kokichi::backend::{self, BackendKind, Precision};
use kokichi::kernels::matvec;
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
    // moshiko's depth-transformer width, its attention (4096 x 4096) and feed-forward output
    // (11264 x 4096; on lavapipe f16 only, over 128 MiB in f32).
    let shapes = arg("--matvec").unwrap_or_else(|| "1024x1024,4096x4096,11264x4096".into());
    let max = backend::max_tensor_bytes(&device).unwrap_or(u64::MAX);
    for dtype in [DType::F32, DType::F16] {
        if !device.supports_dtype(dtype) {
            println!("matvec {dtype:?}: not supported by this adapter");
            continue;
        }
        for shape in shapes.split(',') {
            let (k, n) = shape.trim().split_once('x').ok_or_else(|| anyhow!("--matvec {shape}: want KxN"))?;
            let (k, n): (usize, usize) = (k.parse()?, n.parse()?);
            if (k * n * dtype.size()) as u64 > max {
                // lavapipe allocates at most 128 MiB a buffer; past it the allocation fails,
                // which shows only at a read-back (the timing would measure nothing).
                println!(
                    "matvec [1, 1, {k}] x [{k}, {n}] {dtype:?}: not measured (over the adapter's {max} bytes a buffer)"
                );
                continue;
            }
            let x = backend::floats((0..k).map(|i| (i as f32 * 0.37).sin()).collect(), [1, 1, k], &device, dtype);
            let w = backend::floats(
                (0..k * n).map(|i| (i as f32 * 0.011).cos() / (k as f32).sqrt()).collect(),
                [k, n],
                &device,
                dtype,
            );
            let iters = (iters * 1_000_000 / (k * n)).clamp(5, iters);
            let plain = time(&device, iters, || drop(matvec::reference(x.clone(), w.clone())))?;
            let kernel = time(&device, iters, || drop(matvec::launch(x.clone(), w.clone())))?;
            let gbs = |us: f64| (k * n * dtype.size()) as f64 / us / 1e3;
            println!(
                "matvec [1, 1, {k}] x [{k}, {n}] {dtype:?}: reference {plain:.1} µs ({:.1} GB/s), kernel {kernel:.1} µs ({:.1} GB/s), {:.2}x",
                gbs(plain),
                gbs(kernel),
                plain / kernel
            );
        }
    }
    Ok(())
}
