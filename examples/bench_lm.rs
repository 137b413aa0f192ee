//! `make bench-lm`: milliseconds per LM generation step (temporal transformer + the depth
//! transformer's codebooks + sampling), random weights, for Moshi's full width with 1 and 2
//! temporal layers (the per-layer cost extrapolates to moshiko's 32) and for the tiny configs,
//! on the cpu and wgpu backends.
//!
//! Usage: bench_lm [--backends cpu,wgpu] [--steps N] [--skip-moshiko]

use std::time::Instant;

use anyhow::Result;
use kokichi::backend::{self, BackendKind, Precision};
use kokichi::lm::{GenConfig, LmConfig, LmModel};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

/// Mean ms per step after warm-up.
fn time_steps(lm: &LmModel, steps: usize) -> Result<f64> {
    let mut state = lm.init_state(&[GenConfig::default()])?;
    let user = lm.config.user_streams();
    let mut total = 0.0;
    let warm = 3.min(steps / 2);
    for i in 0..steps {
        let codes: Vec<i64> = (0..user).map(|k| ((i * 7 + k * 13) % lm.config.card) as i64).collect();
        let t0 = Instant::now();
        lm.step(&mut state, &codes, user)?;
        if i >= warm {
            total += t0.elapsed().as_secs_f64() * 1e3;
        }
    }
    Ok(total / (steps - warm) as f64)
}

fn main() -> Result<()> {
    let steps: usize = arg("--steps").map_or(Ok(12), |s| s.parse())?;
    let skip_moshiko = std::env::args().any(|a| a == "--skip-moshiko");
    let backends = arg("--backends").unwrap_or_else(|| "cpu,wgpu".into());
    for name in backends.split(',') {
        let kind: BackendKind = name.parse()?;
        let device = backend::device(kind, Precision::F32)?;
        println!("== {kind} ({})", backend::adapter_name(&device));
        for (label, cfg) in
            [("tiny (test fixtures' shape)", LmConfig::tiny()), ("kokichi-tiny", LmConfig::kokichi_tiny(300))]
        {
            let lm = LmModel::random(cfg, &device, 1)?.0;
            println!("{label:34} {:8.2} ms/step", time_steps(&lm, steps * 4)?);
        }
        if skip_moshiko {
            continue;
        }
        let mut per_layers = Vec::new();
        for layers in [1usize, 2] {
            let cfg = LmConfig { num_layers: layers, ..LmConfig::moshiko() };
            let t0 = Instant::now();
            let lm = LmModel::random(cfg, &device, 2)?.0;
            let init = t0.elapsed().as_secs_f64();
            let ms = time_steps(&lm, steps)?;
            println!("moshiko width, {layers} temporal layer(s)  {ms:8.1} ms/step  (init {init:.0} s)");
            per_layers.push(ms);
        }
        let per_layer = per_layers[1] - per_layers[0];
        let fixed = per_layers[0] - per_layer;
        println!(
            "  per temporal layer {per_layer:.1} ms; rest (embeddings, text head, 8x6 depformer, sampling) {fixed:.1} ms"
        );
        println!(
            "  extrapolated to moshiko's 32 layers: {:.0} ms/step (real time needs < 80)",
            fixed + 32.0 * per_layer
        );
    }
    Ok(())
}
