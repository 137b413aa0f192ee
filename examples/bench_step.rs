//! One end-to-end 80 ms step (Mimi encode -> LM step -> Mimi decode) of a model: what it costs
//! the device, counted, and how long it takes. `make bench-step`; by default kokichi-tiny's
//! shapes with random weights (`--model DIR` for a real model folder, `--shapes moshiko` for the
//! real Mimi and moshiko sizes with random weights; `--dtype f16` for half precision).
//!
//! For each stage (encode, LM, decode) and the whole step it prints, per step after warm-up:
//! kernel dispatches, queue submits, uploads, read-backs, the host CPU time of the stepping
//! thread and the weight bytes the step reads (see `kokichi::cost`); then ms per step (mean and
//! p90) and the first step's time (kernels compile and autotune there). These counts do not
//! depend on the adapter's speed: lavapipe's carry over to a GPU.
//!
//! - `--layers 1,2` builds the LM with 1, then 2 temporal layers and extrapolates the counts to
//!   the configured number (moshiko: 32) from their difference.
//! - `--fit` trims the LM's feed-forward width and text vocabulary until every weight fits the
//!   adapter's largest buffer (lavapipe: 128 MiB), which leaves the counts unchanged: they
//!   depend on layers, heads and steps, not widths.
//! - `--dtype q8` holds the LM's matrices in 8 bits (activations in f16).
//! - `--kernels N` lists the N kernels launched most per step; with `--profile`, the N taking
//!   the most time, each timed alone (which slows the step: its own timings then mean little).
//! - `--fused both` steps the same model with the step kernels of `kernels/` and then with their
//!   plain-Burn references (`off`: references only), and prints the ratio.
//! - `--peak-gbs G` prints the step's floor on a device of G GB/s of memory bandwidth (the
//!   weights it reads, once) and how far the step is from it.

use std::time::Instant;

use anyhow::Result;
use burn::tensor::DType;
use kokichi::backend::{self, BackendKind, Precision};
use kokichi::cost::{Cost, Meter};
use kokichi::kernels;
use kokichi::lm::{GenConfig, LmConfig, LmModel};
use kokichi::mimi::{Mimi, MimiConfig};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

fn flag(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

/// The codec and LM configs of the named sizes, with the number of active codebooks.
fn shapes(name: &str) -> Result<(MimiConfig, LmConfig, usize)> {
    Ok(match name {
        "kokichi-tiny" => (MimiConfig::kokichi_tiny(), LmConfig::kokichi_tiny(300), 6),
        "moshiko" => (MimiConfig::v0_1(), LmConfig::moshiko(), 8),
        other => anyhow::bail!("--shapes takes kokichi-tiny or moshiko, not {other:?}"),
    })
}

/// Trims `cfg`'s feed-forward width and text vocabulary so that no weight exceeds `max_bytes`.
fn fit(cfg: &mut LmConfig, max_bytes: u64, dtype: DType) -> String {
    let max = (max_bytes / dtype.size() as u64) as usize;
    let mut notes = Vec::new();
    if (cfg.text_card + 1) * cfg.dim > max {
        cfg.text_card = max / cfg.dim - 1;
        notes.push(format!("text vocabulary {}", cfg.text_card));
    }
    // Gated FFN input weight: [dim, 2 * hidden], hidden = 2 * (scale * dim) / 3.
    while 2 * (2 * ((cfg.hidden_scale * cfg.dim as f64) as usize) / 3) * cfg.dim > max {
        cfg.hidden_scale -= 0.125;
    }
    if cfg.hidden_scale != LmConfig::moshiko().hidden_scale {
        notes.push(format!("hidden scale {}", cfg.hidden_scale));
    }
    if notes.is_empty() { "nothing trimmed".into() } else { format!("trimmed to fit: {}", notes.join(", ")) }
}

/// Per-stage costs of a step (means over the measured steps).
#[derive(Clone, Default)]
struct StepCost {
    encode: Cost,
    lm: Cost,
    decode: Cost,
}

impl StepCost {
    fn total(&self) -> Cost {
        self.encode.plus_times(&self.lm, 1.0).plus_times(&self.decode, 1.0)
    }
}

/// Mean and p90 step time after a warm-up quarter, the first step's, the stages' means (ms),
/// and the stages' costs.
struct Timing {
    first: f64,
    step: f64,
    p90: f64,
    encode: f64,
    lm: f64,
    decode: f64,
    cost: StepCost,
}

/// A measuring window, profiled under `--profile` (each kernel timed alone).
fn start() -> Meter {
    if flag("--profile") { Meter::start_profiled() } else { Meter::start() }
}

/// `steps` end-to-end steps of a fresh session on a synthetic tone.
fn run_steps(mimi: &Mimi, lm: &LmModel, steps: usize) -> Result<Timing> {
    let frame = mimi.frame_size();
    let q = lm.config.dep_q;
    let mut enc = mimi.init_enc_state(1)?;
    let mut dec = mimi.init_dec_state(1)?;
    let mut state = lm.init_state(&[GenConfig::default()])?;
    let (mut te, mut tl, mut td, mut total) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let warm = steps / 4;
    let mut sums = StepCost::default();
    let mut measured = 0;
    for i in 0..steps {
        let pcm: Vec<f32> = (0..frame).map(|j| (0.01 * (i * frame + j) as f32).sin() * 0.3).collect();
        let t0 = Instant::now();
        let meter = start();
        let codes = mimi.encode_step(&mut enc, mimi.pcm_tensor(pcm, [1, frame]))?;
        let cols = codes.dims()[1];
        let codes = backend::read_ints(codes)?;
        let c_enc = meter.finish();
        let t1 = Instant::now();
        let meter = start();
        let out = lm.step(&mut state, &codes, cols)?;
        let c_lm = meter.finish();
        let t2 = Instant::now();
        let meter = start();
        if let Some(o) = &out {
            let c = mimi.codes_tensor(o.audio.clone(), [1, q, 1])?;
            backend::read_floats(mimi.decode_chunk(&mut dec, c)?)?;
        }
        let c_dec = meter.finish();
        let t3 = Instant::now();
        te.push((t1 - t0).as_secs_f64() * 1e3);
        tl.push((t2 - t1).as_secs_f64() * 1e3);
        td.push((t3 - t2).as_secs_f64() * 1e3);
        total.push((t3 - t0).as_secs_f64() * 1e3);
        // Counted once every stage runs (the decoder waits for the LM's delays).
        if i >= warm && out.is_some() {
            sums.encode = sums.encode.plus_times(&c_enc, 1.0);
            sums.lm = sums.lm.plus_times(&c_lm, 1.0);
            sums.decode = sums.decode.plus_times(&c_dec, 1.0);
            measured += 1;
        }
    }
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
        cost: StepCost {
            encode: sums.encode.per(measured),
            lm: sums.lm.per(measured),
            decode: sums.decode.per(measured),
        },
    })
}

fn print_costs(label: &str, c: &StepCost, weights: (u64, u64), top: usize) {
    println!("  counts per step ({label}):");
    for (stage, cost) in [("encode", &c.encode), ("LM", &c.lm), ("decode", &c.decode), ("step", &c.total())] {
        println!("    {stage:<7} {}", cost.summary());
    }
    println!("    weights read per step: Mimi {:.1} MB, LM {:.1} MB", weights.0 as f64 / 1e6, weights.1 as f64 / 1e6);
    if top > 0 {
        for line in c.total().top_kernels(top) {
            println!("      {line}");
        }
    }
}

fn main() -> Result<()> {
    let steps: usize = arg("--steps").map_or(Ok(60), |s| s.parse())?;
    anyhow::ensure!(steps >= 4, "--steps {steps}: at least 4 (a quarter is warm-up)");
    let top: usize = arg("--kernels").map_or(Ok(0), |s| s.parse())?;
    // --fused both: the same model stepped with the step kernels, then with their references.
    let modes = match arg("--fused").as_deref() {
        None | Some("on") => vec![true],
        Some("off") => vec![false],
        Some("both") => vec![true, false],
        Some(other) => anyhow::bail!("--fused takes on, off or both, not {other:?}"),
    };
    let peak_gbs: Option<f64> = arg("--peak-gbs").map(|s| s.parse()).transpose()?;
    let backends = arg("--backends").unwrap_or_else(|| "cpu".into());
    let shape_name = arg("--shapes").unwrap_or_else(|| "kokichi-tiny".into());
    let layers: Vec<usize> = match arg("--layers") {
        Some(l) => l.split(',').map(|n| n.parse()).collect::<std::result::Result<_, _>>()?,
        None => Vec::new(),
    };
    let precision: Precision = arg("--dtype").unwrap_or_else(|| "f32".into()).parse()?;
    for name in backends.split(',') {
        let kind: BackendKind = name.parse()?;
        let device = backend::device(kind, precision)?;
        let dtype = precision.dtype();
        // One model per layer count (the configured one when --layers is not given).
        let mut per_layers: Vec<(usize, StepCost)> = Vec::new();
        let variants: Vec<Option<usize>> =
            if layers.is_empty() { vec![None] } else { layers.iter().map(|&n| Some(n)).collect() };
        let mut full_layers = 0;
        for n_layers in variants {
            let t0 = Instant::now();
            let (mimi, lm, note) = match arg("--model") {
                Some(dir) => {
                    let files = kokichi::model_dir::resolve(&dir)?;
                    let e = kokichi::session::Engine::load_as(&files, &device, precision)?;
                    (e.mimi, e.lm, format!("model {dir}"))
                }
                None => {
                    let (mimi_cfg, mut lm_cfg, codebooks) = shapes(&shape_name)?;
                    full_layers = lm_cfg.num_layers;
                    let mut note = format!("{shape_name} shapes, random weights");
                    if flag("--fit") {
                        let limit = backend::max_tensor_bytes(&device).unwrap_or(u64::MAX);
                        note = format!("{note}, {}", fit(&mut lm_cfg, limit, dtype));
                    }
                    if let Some(n) = n_layers {
                        lm_cfg.num_layers = n;
                        note = format!("{note}, {n} temporal layers");
                    }
                    let mimi = Mimi::random_as(mimi_cfg, codebooks, &device, dtype, 1)?.0;
                    let lm = LmModel::random_at(lm_cfg, &device, precision, 2)?;
                    (mimi, lm, note)
                }
            };
            let init = t0.elapsed().as_secs_f64();
            let weights = (mimi.weight_bytes_per_frame(), lm.weight_bytes_per_step());
            println!(
                "  resident weights: Mimi {:.1} MB, LM {:.1} MB",
                weights.0 as f64 / 1e6,
                lm.resident_bytes() as f64 / 1e6
            );
            let mut means = Vec::new();
            for on in &modes {
                kernels::set_enabled(*on);
                let t = run_steps(&mimi, &lm, steps)?;
                println!(
                    "{kind} ({}, {:?}, {note}, built in {init:.0} s, first step {:.0} ms{}): step {:.2} ms (p90 {:.2}) = \
                     encode {:.2} + LM {:.2} + decode {:.2}; real-time factor {:.3}",
                    backend::adapter_name(&device),
                    dtype,
                    t.first,
                    if modes.len() > 1 { if *on { ", step kernels" } else { ", plain-Burn references" } } else { "" },
                    t.step,
                    t.p90,
                    t.encode,
                    t.lm,
                    t.decode,
                    t.step / 80.0
                );
                print_costs(&note, &t.cost, weights, top);
                if let Some(peak) = peak_gbs {
                    let floor = (weights.0 + weights.1) as f64 / (peak * 1e9) * 1e3;
                    println!(
                        "  weight-bandwidth floor at {peak:.0} GB/s: {floor:.2} ms a step; this step {:.2}x it ({:.0} GB/s)",
                        t.step / floor,
                        (weights.0 + weights.1) as f64 / (t.step * 1e-3) / 1e9
                    );
                }
                means.push(t.step);
                if *on || modes.len() == 1 {
                    per_layers.push((lm.config.num_layers, t.cost.clone()));
                }
            }
            if let [with, without] = means[..] {
                println!("  references/kernels: {:.2}", without / with);
            }
        }
        // Extrapolate the LM's counts to the configured depth from two depths.
        if let [(l1, c1), (l2, c2), ..] = &per_layers[..]
            && l2 > l1
            && full_layers > 0
        {
            let per_layer = c2.lm.minus(&c1.lm).per(l2 - l1);
            let full = c1.lm.plus_times(&per_layer, (full_layers - l1) as f64);
            println!("  LM per temporal layer: {}", per_layer.summary());
            println!("  LM extrapolated to {full_layers} layers: {}", full.summary());
            let step = c1.encode.plus_times(&full, 1.0).plus_times(&c1.decode, 1.0);
            println!("  step extrapolated to {full_layers} layers: {}", step.summary());
        }
    }
    Ok(())
}
