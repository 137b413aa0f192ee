//! Token picking in one launch, from the partials of a head's product: the logits summed, then
//! a greedy argmax or a draw `argmax(l / T + G)` over the `top_k` largest logits, with Gumbel
//! noise `G` from a counter-based hash of the row's seed and the token index, and a forced token
//! where teacher forcing asks for one. The token is written into row `slot` of a step's token
//! tensor, which the next depth step reads its embedding from and the step reads back once.
//!
//! Why: as Burn ops a draw is a sum, a cast, a top-k (a sort), a gather, comparisons, masks, an
//! argmax and an upload of noise per pick. Here one cube per row does it: the logits go to a
//! scratch buffer once, the `top_k`-th largest is found exactly by a 32-step bitwise search over
//! order-preserving keys of the logits, and the noise is computed where it is used.
//!
//! - [`reference`]: the same draw with Burn's ops (noise from the same hash, on the host); what
//!   the kernel is tested against, and what runs off CubeCL devices.
//! - [`pick`]: picks one of the two per call.
//!
//! The draw is the host sampler's in law (`sampling.rs`: an exponential race over the top-k
//! probabilities), written in the log domain; the same seed gives other tokens than the host
//! sampler's generator. Greedy rows take the first largest logit.

use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Backend, Cube, Dispatch, backend_extension};
use burn::prelude::*;
use burn::tensor::DType;

use super::matvec::sum_parts;
use super::on_cube;

/// How one row picks its token.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Draw {
    /// 1 / temperature; 0 for greedy.
    pub inv_temperature: f32,
    /// Tokens kept (0: all).
    pub top_k: usize,
    /// Seed of this pick's noise (drawn from the row's generator).
    pub seed: u64,
    /// A token to take instead of drawing (teacher forcing).
    pub forced: Option<i64>,
}

/// Values of one row in the parameter tensor a step uploads ([`params`]).
pub const PARAMS: usize = 5;

/// The parameter tensor `[picks, rows, PARAMS]` of a step's `draws[pick][row]`, uploaded once
/// before the step's first launch.
pub fn params(draws: &[Vec<Draw>], device: &Device) -> Tensor<3, Int> {
    let picks = draws.len();
    let rows = draws.first().map_or(0, Vec::len);
    let mut v = Vec::with_capacity(picks * rows * PARAMS);
    for row in draws.iter().flatten() {
        // 32-bit patterns, as the kernel reads them.
        v.push(row.inv_temperature.to_bits() as i32 as i64);
        v.push(row.top_k.min(u32::MAX as usize) as u32 as i32 as i64);
        v.push(row.seed as u32 as i32 as i64);
        v.push((row.seed >> 32) as u32 as i32 as i64);
        v.push(row.forced.map_or(0, |t| t + 1));
    }
    crate::backend::ints(v, [picks, rows, PARAMS], device)
}

/// The noise of token `v` under `seed`: a uniform in (0, 1) from a hash of the three, then
/// Gumbel `-ln(-ln u)`. The kernel computes the same hash.
pub fn gumbel(seed: u64, v: u32) -> f32 {
    let u = uniform(hash(seed as u32, (seed >> 32) as u32, v));
    -(-u.ln()).ln()
}

/// The hash of `(lo, hi, v)`: two rounds of a 32-bit avalanche mix.
pub fn hash(lo: u32, hi: u32, v: u32) -> u32 {
    let mut h = v.wrapping_mul(0x9E37_79B9) ^ lo;
    h = mix(h);
    h ^= hi.wrapping_add(0x85EB_CA6B);
    mix(h)
}

fn mix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x7FEB_352D);
    h ^= h >> 15;
    h = h.wrapping_mul(0x846C_A68B);
    h ^ (h >> 16)
}

/// The top 24 bits of `h` as a uniform in (0, 1): never 0 or 1.
fn uniform(h: u32) -> f32 {
    ((h >> 8) as f32 + 0.5) / 16_777_216.0
}

/// Picks one token per row of the partials `logits` `[parts, rows, V]` with `params` row
/// `pick` ([`params`]), writing it into row `pick` of `tokens` `[picks, rows]`, which is
/// returned. `draws` are the same parameters on the host, for the reference.
pub fn pick(
    logits: Tensor<3>,
    params: &Tensor<3, Int>,
    draws: &[Draw],
    pick: usize,
    tokens: Tensor<2, Int>,
) -> Tensor<2, Int> {
    if !uses_kernel(&logits, params, pick, &tokens) {
        return reference(logits, draws, pick, tokens);
    }
    let [_, rows, v] = logits.dims();
    Tensor::from_dispatch(<Dispatch as PickBackend>::pick_tokens(
        logits.into_dispatch(),
        params.clone().into_dispatch(),
        tokens.into_dispatch(),
        pick as u32,
        rows as u32,
        v as u32,
    ))
}

/// Whether [`pick`] launches the kernel: on a CubeCL device without autodiff, f32 or f16 logits,
/// shapes consistent.
pub fn uses_kernel(logits: &Tensor<3>, params: &Tensor<3, Int>, pick: usize, tokens: &Tensor<2, Int>) -> bool {
    let [_, rows, v] = logits.dims();
    let [picks, prow, n] = params.dims();
    matches!(logits.dtype(), DType::F32 | DType::F16)
        && v > 0
        && rows > 0
        && prow == rows
        && n == PARAMS
        && pick < picks
        && tokens.dims() == [picks, rows]
        && on_cube(logits.device())
        && on_cube(params.device())
}

/// [`pick`] with Burn's ops and the host's noise: row `r` keeps the logits at least as large as
/// its `top_k`-th largest and takes `argmax(l / T + G)` (greedy: argmax of the logits).
pub fn reference(logits: Tensor<3>, draws: &[Draw], pick: usize, tokens: Tensor<2, Int>) -> Tensor<2, Int> {
    let [_, rows, v] = logits.dims();
    let device = logits.device();
    let x = sum_parts(logits, DType::F32);
    let mut inv_t = Vec::with_capacity(rows);
    let mut noise = Vec::with_capacity(rows * v);
    let mut keep = Vec::with_capacity(rows);
    for d in draws {
        if d.inv_temperature > 0.0 {
            inv_t.push(d.inv_temperature);
            noise.extend((0..v as u32).map(|i| gumbel(d.seed, i)));
            keep.push(if d.top_k == 0 { v } else { d.top_k.min(v) });
        } else {
            inv_t.push(1.0);
            noise.resize(noise.len() + v, 0.0);
            keep.push(v);
        }
    }
    let mut scores = x.clone() * crate::backend::floats(inv_t, [rows, 1], &device, DType::F32)
        + crate::backend::floats(noise, [rows, v], &device, DType::F32);
    if let Some(k_max) = keep.iter().copied().filter(|&k| k < v).max() {
        let top = x.clone().topk(k_max, 1);
        let idx: Vec<i64> = keep.iter().map(|&k| (k.min(k_max) - 1) as i64).collect();
        let all: Vec<bool> = keep.iter().map(|&k| k >= v).collect();
        let threshold = top
            .gather(1, crate::backend::ints(idx, [rows, 1], &device))
            .mask_fill(crate::backend::bools(all, [rows, 1], &device), f32::NEG_INFINITY);
        scores = scores.mask_fill(x.lower(threshold.expand([rows, v])), f32::NEG_INFINITY);
    }
    let mut picked = scores.argmax(1).reshape([rows]);
    if draws.iter().any(|d| d.forced.is_some()) {
        let mask: Vec<bool> = draws.iter().map(|d| d.forced.is_some()).collect();
        let values: Vec<i64> = draws.iter().map(|d| d.forced.unwrap_or(0)).collect();
        picked = picked
            .mask_where(crate::backend::bools(mask, [rows], &device), crate::backend::ints(values, [rows], &device));
    }
    tokens.slice_assign([pick..pick + 1, 0..rows], picked.reshape([1, rows]))
}

/// The fused pick as a Burn backend extension (CubeCL only).
#[backend_extension(Cube)]
pub trait PickBackend: Backend {
    /// Writes row `pick` of `tokens` `[picks, rows]` from `logits` partials and `params`.
    fn pick_tokens(
        logits: FloatTensor<Self>,
        params: IntTensor<Self>,
        tokens: IntTensor<Self>,
        pick: u32,
        rows: u32,
        v: u32,
    ) -> IntTensor<Self>;
}

impl PickBackend for Cube {
    fn pick_tokens(
        logits: FloatTensor<Self>,
        params: IntTensor<Self>,
        tokens: IntTensor<Self>,
        pick: u32,
        rows: u32,
        v: u32,
    ) -> IntTensor<Self> {
        cube::launch(logits, params, tokens, pick, rows, v)
    }
}

mod cube {
    use burn::backend::cubecl::dtype_to_storage_type;
    use burn::tensor::{DType, Shape};
    use burn_cubecl::kernel::into_contiguous;
    use burn_cubecl::ops::numeric::empty_device_dtype;
    use burn_cubecl::tensor::CubeTensor;
    use cubecl::prelude::*;

    const UNITS: usize = 256;

    #[cube]
    fn mix(h: u32) -> u32 {
        let mut h = h ^ (h >> 16);
        h *= 0x7FEB_352Du32;
        h ^= h >> 15;
        h *= 0x846C_A68Bu32;
        h ^ (h >> 16)
    }

    /// Gumbel noise of token `v` under the seed `(lo, hi)`, as [`super::gumbel`].
    #[cube]
    fn gumbel(lo: u32, hi: u32, v: u32) -> f32 {
        let mut h = (v * 0x9E37_79B9u32) ^ lo;
        h = mix(h);
        h ^= hi + 0x85EB_CA6Bu32;
        h = mix(h);
        let u = (f32::cast_from(h >> 8) + 0.5f32) / 16_777_216.0f32;
        -(-u.ln()).ln()
    }

    /// An order-preserving key of `x`: larger floats have larger keys.
    #[cube]
    fn key(x: f32) -> u32 {
        let b = u32::reinterpret(x);
        let mut k = b | 0x8000_0000u32;
        if b >= 0x8000_0000u32 {
            k = !b;
        }
        k
    }

    /// One cube per row.
    #[cube(launch)]
    fn pick_rows<P: Float, I: Int>(
        logits: &[P],
        params: &[I],
        scratch: &mut [f32],
        tokens: &mut [I],
        rows: u32,
        v: u32,
        parts: u32,
        pick: u32,
        #[define(P, I)] _dtypes: [ElemType; 2],
    ) {
        let row = CUBE_POS as usize;
        if row >= rows as usize {
            terminate!();
        }
        let u = UNIT_POS as usize;
        let rows = rows as usize;
        let v = v as usize;
        let parts = parts as usize;
        let pbase = (pick as usize * rows + row) * 5;
        let inv_t = f32::reinterpret(u32::cast_from(params[pbase]));
        let top_k = u32::cast_from(params[pbase + 1]) as usize;
        let lo = u32::cast_from(params[pbase + 2]);
        let hi = u32::cast_from(params[pbase + 3]);
        let forced = i32::cast_from(params[pbase + 4]);
        let out = pick as usize * rows + row;
        let mut best_v = f32::new(-3.0e38);
        let mut best_i = v;
        let mut sv = Shared::<[f32]>::new_slice(UNITS);
        let mut si = Shared::<[u32]>::new_slice(UNITS);

        if forced == 0 {
            // The logits, once, into this row's scratch (each unit rereads only its own).
            let mut i = u;
            while i < v {
                let mut l = 0.0f32;
                for p in 0..parts {
                    l += f32::cast_from(logits[(p * rows + row) * v + i]);
                }
                scratch[row * v + i] = l;
                i += UNITS;
            }
            // The keep threshold's key: the top_k-th largest key, bit by bit.
            let mut threshold = 0u32;
            if inv_t > 0.0f32 && top_k > 0 && top_k < v {
                let mut bit = 32u32;
                while bit > 0 {
                    bit -= 1;
                    let cand = threshold | (1u32 << bit);
                    let mut count = 0u32;
                    let mut i = u;
                    while i < v {
                        if key(scratch[row * v + i]) >= cand {
                            count += 1;
                        }
                        i += UNITS;
                    }
                    si[u] = count;
                    sync_cube();
                    let mut h = UNITS.runtime() / 2;
                    while h > 0 {
                        if u < h {
                            si[u] += si[u + h];
                        }
                        sync_cube();
                        h /= 2;
                    }
                    if si[0] as usize >= top_k {
                        threshold = cand;
                    }
                    sync_cube();
                }
            }
            // This unit's best score over the kept tokens (first index on ties).
            let mut i = u;
            while i < v {
                let l = scratch[row * v + i];
                if key(l) >= threshold {
                    let mut s = l;
                    if inv_t > 0.0f32 {
                        s = l * inv_t + gumbel(lo, hi, i as u32);
                    }
                    if s > best_v {
                        best_v = s;
                        best_i = i;
                    }
                }
                i += UNITS;
            }
        }
        sv[u] = best_v;
        si[u] = best_i as u32;
        sync_cube();
        let mut h = UNITS.runtime() / 2;
        while h > 0 {
            if u < h {
                let ov = sv[u + h];
                let oi = si[u + h];
                if ov > sv[u] || (ov == sv[u] && oi < si[u]) {
                    sv[u] = ov;
                    si[u] = oi;
                }
            }
            sync_cube();
            h /= 2;
        }
        if u == 0 {
            if forced != 0 {
                tokens[out] = I::cast_from(forced - 1);
            } else {
                let mut t = si[0];
                // All logits NaN: token 0.
                if t as usize >= v {
                    t = 0u32;
                }
                tokens[out] = I::cast_from(t);
            }
        }
    }

    pub(super) fn launch(
        logits: CubeTensor,
        params: CubeTensor,
        tokens: CubeTensor,
        pick: u32,
        rows: u32,
        v: u32,
    ) -> CubeTensor {
        let logits = into_contiguous(logits);
        let params = into_contiguous(params);
        // Written in place: the step's launches run in order, and no one else holds the tensor.
        let tokens = into_contiguous(tokens);
        let client = logits.client.clone();
        let parts = logits.meta.shape()[0];
        let scratch = empty_device_dtype(
            client.clone(),
            logits.device.clone(),
            Shape::new([rows as usize, v as usize]),
            DType::F32,
        );
        let dtypes = [dtype_to_storage_type(logits.dtype), dtype_to_storage_type(tokens.dtype)];
        pick_rows::launch(
            &client,
            CubeCount::Static(rows, 1, 1),
            CubeDim::new_1d(UNITS as u32),
            logits.into_buffer_arg(),
            params.into_buffer_arg(),
            scratch.into_buffer_arg(),
            tokens.clone().into_buffer_arg(),
            rows,
            v,
            parts as u32,
            pick,
            dtypes,
        );
        tokens
    }
}
