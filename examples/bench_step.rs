//! One end-to-end 80 ms step (Mimi encode -> LM step -> Mimi decode) of a model, timed on the
//! cpu and wgpu backends. `make bench-step`; by default kokichi-tiny's shapes with random
//! weights (`--model DIR` for a real model folder).
//!
//! Prints ms per step (mean and p90 after warm-up) and the share of each stage.

use std::time::Instant;

use anyhow::Result;
use burn::prelude::*;
use burn::tensor::DType;
use kokichi::backend::{self, BackendKind, Precision};
use kokichi::lm::{GenConfig, LmConfig, LmModel};
use kokichi::mimi::{Mimi, MimiConfig};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

fn main() -> Result<()> {
    let steps: usize = arg("--steps").map_or(Ok(60), |s| s.parse())?;
    let backends = arg("--backends").unwrap_or_else(|| "cpu".into());
    for name in backends.split(',') {
        let kind: BackendKind = name.parse()?;
        let device = backend::device(kind, Precision::F32)?;
        let (mimi, lm) = match arg("--model") {
            Some(dir) => {
                let files = kokichi::model_dir::resolve(&dir)?;
                let e = kokichi::session::Engine::load(&files, &device, DType::F32)?;
                (e.mimi, e.lm)
            }
            None => (
                Mimi::random(MimiConfig::kokichi_tiny(), 6, &device, 1)?.0,
                LmModel::random(LmConfig::kokichi_tiny(300), &device, 2)?.0,
            ),
        };
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
        let p90 = sorted[(sorted.len() - 1) * 9 / 10];
        println!(
            "{kind} ({}): step {:.2} ms (p90 {:.2}) = encode {:.2} + LM {:.2} + decode {:.2}; real-time factor {:.3}",
            backend::adapter_name(&device),
            mean(&total),
            p90,
            mean(&te),
            mean(&tl),
            mean(&td),
            mean(&total) / 80.0
        );
        let _ = Tensor::<1>::zeros([1], &device);
    }
    Ok(())
}
