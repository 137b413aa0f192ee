//! `make bench-lm`: milliseconds per LM generation step (median) (temporal transformer + the depth
//! transformer's codebooks + sampling), random weights, for Moshi's full width with 1 and 2
//! temporal layers (the per-layer cost extrapolates to moshiko's 32) and for the tiny configs,
//! on the cpu and wgpu backends. Each is timed twice, picking the tokens on the device (one
//! read-back a step, wgpu's default) and on the host (one read-back a stream, the CPU's default
//! and the reference): `host/device` above 1 is what the read-backs cost on that backend. The
//! moshiko extrapolation uses the backend's default.
//!
//! Usage: bench_lm [--backends cpu,wgpu] [--steps N] [--skip-moshiko]

use std::time::Instant;

use anyhow::Result;
use kokichi::backend::{self, BackendKind, Precision};
use kokichi::lm::{GenConfig, LmConfig, LmModel, Picking};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

/// Median ms per step after warm-up, picking on the device and on the host: two sessions
/// stepped in turn, so that drift in the machine's load falls on both alike.
fn time_steps(lm: &LmModel, steps: usize) -> Result<(f64, f64)> {
    let mut states = Vec::new();
    for picking in [Picking::Device, Picking::Host] {
        let mut s = lm.init_state(&[GenConfig::default()])?;
        s.set_picking(picking);
        states.push(s);
    }
    let user = lm.config.user_streams();
    let mut times = [Vec::new(), Vec::new()];
    let warm = 3.min(steps / 2);
    for i in 0..steps {
        let codes: Vec<i64> = (0..user).map(|k| ((i * 7 + k * 13) % lm.config.card) as i64).collect();
        for (state, times) in states.iter_mut().zip(&mut times) {
            let t0 = Instant::now();
            lm.step(state, &codes, user)?;
            if i >= warm {
                times.push(t0.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let [mut d, mut h] = times;
    Ok((median(&mut d), median(&mut h)))
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
            let (dev, host) = time_steps(&lm, steps * 4)?;
            println!("{label:30} device {dev:7.2} ms/step, host {host:7.2} ms (host/device {:.2})", host / dev);
        }
        if skip_moshiko {
            continue;
        }
        let default = Picking::for_device(&device);
        println!(
            "  (tokens picked on the {} by default here)",
            if default == Picking::Host { "host" } else { "device" }
        );
        let mut per_layers = Vec::new();
        for layers in [1usize, 2] {
            let cfg = LmConfig { num_layers: layers, ..LmConfig::moshiko() };
            let t0 = Instant::now();
            let run = || -> Result<(f64, f64, f64)> {
                let lm = LmModel::random(cfg, &device, 2)?.0;
                let init = t0.elapsed().as_secs_f64();
                let (dev, host) = time_steps(&lm, steps)?;
                Ok((init, dev, host))
            };
            // Lavapipe cannot hold moshiko's [32001, 4096] f32 tables in one buffer: say so, go on.
            let (init, ms, host) = match run() {
                Ok(r) => r,
                Err(e) => {
                    let first = e.to_string().lines().next().unwrap_or_default().to_string();
                    println!("moshiko width, {layers} temporal layer(s): not measured on this adapter ({first} ...)");
                    break;
                }
            };
            println!(
                "moshiko width, {layers} layer(s)  device {ms:7.1} ms/step, host {host:7.1} ms (host/device {:.2}; init {init:.0} s)",
                host / ms
            );
            per_layers.push(if default == Picking::Host { host } else { ms });
        }
        if per_layers.len() < 2 {
            continue;
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
