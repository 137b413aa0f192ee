//! One end-to-end 80 ms step (Mimi encode -> LM step -> Mimi decode) of a model, timed on the
//! cpu and wgpu backends. `make bench-step`; by default kokichi-tiny's shapes with random
//! weights (`--model DIR` for a real model folder, `--shapes moshiko` for the real Mimi and
//! moshiko sizes with random weights, which need a GPU; `--dtype f16` for half precision).
//!
//! Prints ms per step (mean and p90 after warm-up) and the share of each stage, and the first
//! step's time: kernels compile and autotune there (what `kokichi serve` now does at start).
//! `--matvec both` steps the same model with the matrix-vector kernel (`kernels/matvec.rs`) and
//! then without it, and prints the ratio (`off`: without only).

use std::time::Instant;

use anyhow::Result;
use burn::prelude::*;
use burn::tensor::DType;
use kokichi::backend::{self, BackendKind, Precision};
use kokichi::kernels::matvec;
use kokichi::lm::{GenConfig, LmConfig, LmModel};
use kokichi::mimi::{Mimi, MimiConfig};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

/// A codec and an LM of the named sizes with random weights (seeds 1 and 2) stored as `dtype`.
fn random_pair(shapes: &str, device: &Device, dtype: DType) -> Result<(Mimi, LmModel)> {
    let (mimi_cfg, lm_cfg, codebooks) = match shapes {
        "kokichi-tiny" => (MimiConfig::kokichi_tiny(), LmConfig::kokichi_tiny(300), 6),
        "moshiko" => (MimiConfig::v0_1(), LmConfig::moshiko(), 8),
        other => anyhow::bail!("--shapes takes kokichi-tiny or moshiko, not {other:?}"),
    };
    let mimi = Mimi::random_as(mimi_cfg, codebooks, device, dtype, 1)?.0;
    let lm = LmModel::random_as(lm_cfg, device, dtype, 2)?.0;
    Ok((mimi, lm))
}

/// Mean and p90 step time after a warm-up quarter, the first step's, and the stages' means (ms).
struct Timing {
    first: f64,
    step: f64,
    p90: f64,
    encode: f64,
    lm: f64,
    decode: f64,
}

/// `steps` end-to-end steps of a fresh session on a synthetic tone.
fn run_steps(mimi: &Mimi, lm: &LmModel, steps: usize) -> Result<Timing> {
    let frame = mimi.frame_size();
    let q = lm.config.dep_q;
    let mut enc = mimi.init_enc_state(1)?;
    let mut dec = mimi.init_dec_state(1)?;
    let mut state = lm.init_state(&[GenConfig::default()])?;
    let (mut te, mut tl, mut td, mut total) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..steps {
        let pcm: Vec<f32> = (0..frame).map(|j| (0.01 * (i * frame + j) as f32).sin() * 0.3).collect();
        let t0 = Instant::now();
        let codes = mimi.encode_step(&mut enc, mimi.pcm_tensor(pcm, [1, frame]))?;
        let cols = codes.dims()[1];
        let codes = backend::read_ints(codes)?;
        let t1 = Instant::now();
        let out = lm.step(&mut state, &codes, cols)?;
        let t2 = Instant::now();
        if let Some(o) = out {
            let c = mimi.codes_tensor(o.audio.clone(), [1, q, 1])?;
            backend::read_floats(mimi.decode_chunk(&mut dec, c)?)?;
        }
        let t3 = Instant::now();
        te.push((t1 - t0).as_secs_f64() * 1e3);
        tl.push((t2 - t1).as_secs_f64() * 1e3);
        td.push((t3 - t2).as_secs_f64() * 1e3);
        total.push((t3 - t0).as_secs_f64() * 1e3);
    }
    let warm = steps / 4;
    let mean = |v: &[f64]| v[warm..].iter().sum::<f64>() / (v.len() - warm) as f64;
    let mut sorted = total[warm..].to_vec();
    sorted.sort_by(f64::total_cmp);
    Ok(Timing {
        first: total[0],
        step: mean(&total),
        p90: sorted[(sorted.len() - 1) * 9 / 10],
        encode: mean(&te),
        lm: mean(&tl),
        decode: mean(&td),
    })
}

fn main() -> Result<()> {
    let steps: usize = arg("--steps").map_or(Ok(60), |s| s.parse())?;
    anyhow::ensure!(steps >= 4, "--steps {steps}: at least 4 (a quarter is warm-up)");
    // --matvec both: the same model stepped with the matrix-vector kernel, then without (wgpu).
    let modes = match arg("--matvec").as_deref() {
        None | Some("on") => vec![true],
        Some("off") => vec![false],
        Some("both") => vec![true, false],
        Some(other) => anyhow::bail!("--matvec takes on, off or both, not {other:?}"),
    };
    let backends = arg("--backends").unwrap_or_else(|| "cpu".into());
    let shapes = arg("--shapes").unwrap_or_else(|| "kokichi-tiny".into());
    let precision: Precision = arg("--dtype").unwrap_or_else(|| "f32".into()).parse()?;
    for name in backends.split(',') {
        let kind: BackendKind = name.parse()?;
        let device = backend::device(kind, precision)?;
        let t0 = Instant::now();
        let (mimi, lm) = match arg("--model") {
            Some(dir) => {
                let files = kokichi::model_dir::resolve(&dir)?;
                let e = kokichi::session::Engine::load(&files, &device, precision.dtype())?;
                (e.mimi, e.lm)
            }
            None => random_pair(&shapes, &device, precision.dtype())?,
        };
        let init = t0.elapsed().as_secs_f64();
        let mut means = Vec::new();
        for on in &modes {
            matvec::set_enabled(*on);
            let t = run_steps(&mimi, &lm, steps)?;
            println!(
                "{kind} ({}, {:?}, built in {init:.0} s, first step {:.0} ms{}): step {:.2} ms (p90 {:.2}) = encode {:.2} + LM {:.2} + \
                 decode {:.2}; real-time factor {:.3}",
                backend::adapter_name(&device),
                precision.dtype(),
                t.first,
                if modes.len() > 1 { if *on { ", matvec kernel" } else { ", no matvec kernel" } } else { "" },
                t.step,
                t.p90,
                t.encode,
                t.lm,
                t.decode,
                t.step / 80.0
            );
            means.push(t.step);
        }
        if let [with, without] = means[..] {
            println!("  without/with the matvec kernel: {:.2}", without / with);
        }
        let _ = Tensor::<1>::zeros([1], &device);
    }
    Ok(())
}
