//! Token picking on the device, so that an LM step reads back once, not once per stream.
//!
//! A step picks the text token, then the depth transformer's codebooks one by one, each fed the
//! token just picked. Sampling on the host ([`sampling::sample`](super::sampling::sample))
//! needs the logits on the host, so every pick waits for the device: 1 + dep_q round trips a
//! step (9 for moshiko). Here the pick is tensor ops, the token stays on the device to index the
//! next embedding, and the step's tokens come back together at its end.
//!
//! The draw is the host sampler's, written in the log domain: `argmax(l / T + G)` over the
//! `top_k` largest logits, with Gumbel noise `G = -ln E`, `E ~ Exp(1)` (the host's exponential
//! race `argmax(p / E)`). The noise is drawn on the host from each row's own generator, so a
//! seed still fixes a session's tokens whatever else shares the batch, and uploaded with the
//! logits' work; it consumes the generator differently from the host sampler, so the same seed
//! gives other (equally distributed) tokens on the two paths. Greedy rows are plain argmax.

use burn::prelude::*;
use burn::tensor::{Bool, DType, FloatDType, TensorData};
use rand::rngs::StdRng;

use super::sampling::{self, Sampling};
use crate::backend;
use crate::error::{Error, Result};

/// Where an LM step picks its tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Picking {
    /// On the device, one read-back per step.
    Device,
    /// On the host, one read-back per stream: the plain reference the device path is tested
    /// and benchmarked against, and the faster one on the CPU backend, where a read-back costs
    /// nothing and a partial sort of the top_k beats a device top-k.
    Host,
}

impl Picking {
    /// The faster place on `device`: the host for the CPU backend, the device otherwise.
    pub fn for_device(device: &Device) -> Picking {
        if backend::is_cpu(device) { Picking::Host } else { Picking::Device }
    }
}

/// One row's sampling settings and generator.
pub struct Draw<'a> {
    pub params: Sampling,
    pub rng: &'a mut StdRng,
}

/// Tokens picked for a batch: on the device, and on the host when picked there.
#[derive(Clone, Debug)]
pub struct Picked {
    pub device: Tensor<1, Int>,
    pub host: Option<Vec<i64>>,
}

/// Picks one token per row of `logits` `[B, V]`, where `picking` says. `forced` replaces a
/// row's pick (teacher forcing); forced values are checked by the caller. `scratch` is the host
/// sampler's buffer, kept by the caller across a step's picks.
pub fn pick(
    logits: Tensor<2>,
    draws: &mut [Draw<'_>],
    forced: &[Option<i64>],
    picking: Picking,
    scratch: &mut Vec<(f32, usize)>,
) -> Result<Picked> {
    let [b, v] = logits.dims();
    if draws.len() != b {
        return Err(Error::input(format!("{} sampling rows for {b} rows of logits", draws.len())));
    }
    let device = logits.device();
    let forced_at = |r: usize| forced.get(r).copied().flatten();
    match picking {
        Picking::Host => {
            let values = backend::read_floats(logits)?;
            let host: Vec<i64> = draws
                .iter_mut()
                .enumerate()
                .map(|(r, d)| {
                    forced_at(r).unwrap_or_else(|| {
                        sampling::sample(&values[r * v..(r + 1) * v], d.params, d.rng, scratch) as i64
                    })
                })
                .collect();
            Ok(Picked { device: backend::ints(host.clone(), [b], &device), host: Some(host) })
        }
        Picking::Device => {
            let picked = draw_on_device(logits, draws);
            if (0..b).all(|r| forced_at(r).is_none()) {
                return Ok(Picked { device: picked, host: None });
            }
            let mask: Vec<bool> = (0..b).map(|r| forced_at(r).is_some()).collect();
            let values: Vec<i64> = (0..b).map(|r| forced_at(r).unwrap_or(0)).collect();
            let mask = Tensor::<1, Bool>::from_data(TensorData::new(mask, [b]), &device);
            Ok(Picked { device: picked.mask_where(mask, backend::ints(values, [b], &device)), host: None })
        }
    }
}

/// `argmax(l * inv_t + G)` per row, logits under the row's `top_k` largest masked out.
fn draw_on_device(logits: Tensor<2>, draws: &mut [Draw<'_>]) -> Tensor<1, Int> {
    let [b, v] = logits.dims();
    if draws.iter().all(|d| d.params.is_greedy()) {
        return logits.argmax(1).reshape([b]);
    }
    let device = logits.device();
    // f16 logits would lose the noise's low bits; the draw is done in f32.
    let x = logits.cast(FloatDType::F32);
    // Rows keep `keep[r]` tokens; greedy rows keep all, their noise is zero and inv_t one.
    let keep: Vec<usize> = draws
        .iter()
        .map(|d| if d.params.is_greedy() || d.params.top_k == 0 { v } else { d.params.top_k.min(v) })
        .collect();
    let mut inv_t = Vec::with_capacity(b);
    let mut noise = Vec::with_capacity(b * v);
    for d in draws.iter_mut() {
        if d.params.is_greedy() {
            inv_t.push(1.0);
            noise.resize(noise.len() + v, 0.0);
        } else {
            inv_t.push(1.0 / d.params.temperature);
            noise.extend((0..v).map(|_| gumbel(d.rng)));
        }
    }
    let mut scores = x.clone() * backend::floats(inv_t, [b, 1], &device, DType::F32)
        + backend::floats(noise, [b, v], &device, DType::F32);
    let k_max = keep.iter().copied().filter(|&k| k < v).max();
    if let Some(k_max) = k_max {
        // Each row's threshold is its keep-th largest logit; rows that keep all get -inf.
        let top = x.clone().topk(k_max, 1);
        let idx: Vec<i64> = keep.iter().map(|&k| (k.min(k_max) - 1) as i64).collect();
        let all: Vec<bool> = keep.iter().map(|&k| k >= v).collect();
        let threshold = top
            .gather(1, backend::ints(idx, [b, 1], &device))
            .mask_fill(Tensor::<2, Bool>::from_data(TensorData::new(all, [b, 1]), &device), f32::NEG_INFINITY);
        let below = x.lower(threshold.expand([b, v]));
        scores = scores.mask_fill(below, f32::NEG_INFINITY);
    }
    scores.argmax(1).reshape([b])
}

/// A standard Gumbel variate, `-ln E` with `E ~ Exp(1)` (never infinite).
fn gumbel(rng: &mut StdRng) -> f32 {
    -sampling::exp1(rng).ln()
}
