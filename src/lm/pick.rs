//! Token picking on the device, so that an LM step reads back once, not once per stream.
//!
//! A step picks the text token, then the depth transformer's codebooks one by one, each fed the
//! token just picked. Sampling on the host ([`sampling::sample`](super::sampling::sample))
//! needs the logits on the host, so every pick waits for the device: 1 + dep_q round trips a
//! step (9 for moshiko). Here the pick is tensor ops, the token stays on the device to index the
//! next embedding, and the step's tokens come back together at its end.
//!
//! The draw is the host sampler's in law, written in the log domain: `argmax(l / T + G)` over
//! the `top_k` largest logits, with Gumbel noise `G` computed on the device from a hash of a
//! seed each row draws from its own generator (`kernels/pick.rs`), so a seed still fixes a
//! session's tokens whatever else shares the batch. It consumes the generator differently from
//! the host sampler, so the same seed gives other (equally distributed) tokens on the two
//! paths. Greedy rows are plain argmax.

use burn::prelude::*;
use rand::RngCore;
use rand::rngs::StdRng;

use super::sampling::{self, Sampling};
use crate::backend;
use crate::error::{Error, Result};
use crate::kernels::pick as kpick;

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
            // The fused pick kernel (`kernels/pick.rs`), its noise seeded from each row's generator.
            let rows: Vec<kpick::Draw> = draws
                .iter_mut()
                .enumerate()
                .map(|(r, d)| kpick::Draw {
                    inv_temperature: if d.params.is_greedy() { 0.0 } else { 1.0 / d.params.temperature },
                    top_k: d.params.top_k,
                    seed: if d.params.is_greedy() { 0 } else { d.rng.next_u64() },
                    forced: forced_at(r),
                })
                .collect();
            let params = kpick::params(std::slice::from_ref(&rows), &device);
            let tokens = Tensor::<2, Int>::empty([1, b], &device);
            let partials = logits.reshape([1, b, v]);
            let picked = kpick::pick(partials, &params, &rows, 0, tokens).reshape([b]);
            Ok(Picked { device: picked, host: None })
        }
    }
}
