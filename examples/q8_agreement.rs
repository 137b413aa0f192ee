//! How far 8-bit weights (`--dtype q8`) move a model from its f16 self: a random LM of moshiko's
//! shapes (`--layers N` temporal layers, 1 by default; the full depth transformer) built from one
//! seed in f16 and in q8, teacher-forced over the same random tokens on the cpu backend. Prints,
//! over every position and stream (text and each generated codebook), the share of positions
//! whose greedy token agrees and the largest logit difference.
//!
//! `cargo run --example q8_agreement -- [--layers N] [--steps T] [--seed S]`

use anyhow::Result;
use burn::prelude::*;
use kokichi::backend::{self, Precision};
use kokichi::lm::{LmConfig, LmModel};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

/// Argmax of each row of `values` (`rows` of `width`).
fn argmax_rows(values: &[f32], width: usize) -> Vec<usize> {
    values
        .chunks(width)
        .map(|r| r.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i, v) } else { b }).0)
        .collect()
}

fn main() -> Result<()> {
    let layers: usize = arg("--layers").map_or(Ok(1), |s| s.parse())?;
    let t: usize = arg("--steps").map_or(Ok(24), |s| s.parse())?;
    let seed: u64 = arg("--seed").map_or(Ok(2), |s| s.parse())?;
    let device = Device::flex();
    let mut cfg = LmConfig::moshiko();
    cfg.num_layers = layers;
    let c = cfg.clone();
    // The same random tokens for both: text in 0..text_card, audio in 0..card.
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut next = |m: usize| {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((s >> 33) as usize % m) as i64
    };
    let codes: Vec<i64> = (0..(c.n_q + 1) * t).map(|i| if i < t { next(c.text_card) } else { next(c.card) }).collect();
    let mut outs = Vec::new();
    for precision in [Precision::F16, Precision::Q8] {
        let t0 = std::time::Instant::now();
        let lm = LmModel::random_at(cfg.clone(), &device, precision, seed)?;
        let built = t0.elapsed().as_secs_f64();
        let (text, audio) = lm.forward_teacher(&codes, 1, t)?;
        let text = backend::read_floats(text.cast(burn::tensor::DType::F32))?;
        let audio = backend::read_floats(audio.cast(burn::tensor::DType::F32))?;
        println!(
            "{precision:?}: built in {built:.0} s, teacher-forced {t} positions in {:.0} s, resident {:.2} GB",
            t0.elapsed().as_secs_f64() - built,
            lm.resident_bytes() as f64 / 1e9
        );
        outs.push((text, audio));
    }
    let (a, b) = (&outs[0], &outs[1]);
    // Positions past a stream's delay at the end have no valid logits; the first t - max_delay
    // positions are valid for every stream.
    let valid = t - c.max_delay();
    let text_w = c.text_out();
    let cmp = |x: &[f32], y: &[f32], width: usize, rows: usize| {
        let x = &x[..rows * width];
        let y = &y[..rows * width];
        let agree = argmax_rows(x, width).iter().zip(argmax_rows(y, width)).filter(|(p, q)| **p == *q).count();
        let max_err = x.iter().zip(y).map(|(p, q)| (p - q).abs()).fold(0.0f32, f32::max);
        let max_mag = x.iter().map(|v| v.abs()).fold(0.0f32, f32::max);
        (agree, max_err, max_mag)
    };
    let (ta, te, tm) = cmp(&a.0, &b.0, text_w, valid);
    println!("text: {ta}/{valid} greedy tokens agree; largest logit difference {te:.4} (logits up to {tm:.2})");
    let mut total = (ta, valid);
    for q in 0..c.dep_q {
        let base = q * t * c.card;
        let (qa, qe, qm) = cmp(&a.1[base..], &b.1[base..], c.card, valid);
        println!("codebook {q}: {qa}/{valid} agree; largest logit difference {qe:.4} (logits up to {qm:.2})");
        total.0 += qa;
        total.1 += valid;
    }
    println!(
        "all streams: {}/{} greedy tokens agree ({:.1}%)",
        total.0,
        total.1,
        100.0 * total.0 as f64 / total.1 as f64
    );
    Ok(())
}
