//! One stream's attention step in one launch: the query, key and value of its new positions
//! from the input projection's partials, RoPE, the keys and values written into the stream's
//! ring KV cache, and attention of each new query over the ring.
//!
//! Why: as Burn ops a streaming attention step is a sum, a reshape and a permute, 2 × ~12
//! launches of RoPE, two slice-assigns into the ring, an uploaded mask and ~6 launches of
//! attention, per layer and per stream. Here it is one cube per head: the head's `q`, `k`, `v`
//! stay in shared memory, the ring's slot positions are computed from the number of positions
//! written (slot `i` holds the latest position `p ≡ i (mod cap)`; a key is visible when it is
//! not in the future and lies less than `context` back, as in the reference's streaming mode),
//! and new keys are taken from shared memory rather than read back from the cache.
//!
//! - [`reference`]: the same with Burn's ops; runs on the flex CPU backend and is what the kernel
//!   is tested against.
//! - [`attend`]: picks one of the two per call.
//!
//! The cache tensors are written in place (a cloned state copies its rings, see `KvCache`), so
//! memory stays one ring per layer and stream.

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Cube, Dispatch, backend_extension};
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::activation::softmax;

use super::matvec::sum_parts;
use super::on_cube;

/// Largest `positions × ring` the kernel holds scores for in shared memory (16 KiB of f32,
/// the smallest budget wgpu promises; moshiko's ring of 3000 with one position fits).
const MAX_SCORES: usize = 4096;

/// Cosine and sine tables `[B, T, head_dim / 2]` (f32) for every stream of a step, and the pairing.
#[derive(Clone, Debug)]
pub struct Rope {
    pub cos: Tensor<3>,
    pub sin: Tensor<3>,
    /// Pairs `(2j, 2j + 1)` (`rope`) rather than `(j, j + D/2)` (`rope_concat`).
    pub interleave: bool,
}

/// Where a stream's ring stands: positions written before this call, its capacity, how far back
/// a query may see (`None`: the whole ring), and how many first positions are pinned.
///
/// Pinned positions (a session's prefix latents) keep slots `0..pinned` for good and stay
/// visible to every later query whatever the context; the other positions cycle through slots
/// `pinned..capacity`. With `pinned = 0` this is the reference's ring.
#[derive(Clone, Copy, Debug)]
pub struct Ring {
    pub written: usize,
    pub capacity: usize,
    pub context: Option<usize>,
    pub pinned: usize,
}

impl Ring {
    /// Position held by slot `i` once `end` positions are written (`-1`: never written).
    pub fn slot_position(&self, i: usize, end: usize) -> i64 {
        if i >= end {
            return -1;
        }
        if i < self.pinned {
            return i as i64;
        }
        let cycle = self.capacity - self.pinned;
        let last = end - 1;
        (i + cycle * ((last - i) / cycle)) as i64
    }

    /// The slot position `p` is written to.
    pub fn slot_of(&self, p: usize) -> usize {
        if p < self.pinned { p } else { self.pinned + (p - self.pinned) % (self.capacity - self.pinned) }
    }
}

/// Widest model whose attention launch also applies the output projection ([`Target::Projected`]):
/// each head's cube then reads its slice of the projection, which pays only where that is small.
pub const PROJECT_MAX_WIDTH: usize = 1024;

/// Where a step's attention output goes.
#[derive(Clone, Debug)]
pub enum Target {
    /// Rows `[rows, d]` of attention output, in the model's dtype.
    Rows(Tensor<2>),
    /// The output projection `w` `[d, d]` (input-major) applied too: partials `[parts, rows, d]`
    /// (f32 from the kernel, one part per head; the model's dtype from the reference, one part).
    Projected { partials: Tensor<3>, w: Tensor<2> },
}

impl Target {
    /// The result: rows or partials.
    pub fn into_tensor(self) -> Tensor<3> {
        match self {
            Target::Rows(r) => {
                let [rows, d] = r.dims();
                r.reshape([1, rows, d])
            }
            Target::Projected { partials, .. } => partials,
        }
    }
}

/// One stream's step: rows `row0 .. row0 + t` of the partials `qkv` `[parts, rows, 3d]` are its
/// new positions; `k`, `v` `[1, heads, cap, hd]` its ring (in the model's dtype); `rope` the
/// step's tables, of which this stream's are row `row0 / t`. Writes the attention output (or its
/// projection) into rows `row0 ..` of the target and returns it with the updated ring.
#[allow(clippy::too_many_arguments)]
pub fn attend(
    qkv: Tensor<3>,
    row0: usize,
    t: usize,
    k: Tensor<4>,
    v: Tensor<4>,
    rope: Option<&Rope>,
    ring: Ring,
    target: Target,
) -> (Target, Tensor<4>, Tensor<4>) {
    if !uses_kernel(&qkv, t, &k, &v, rope, ring, &target) {
        return reference(qkv, row0, t, k, v, rope, ring, target);
    }
    let [_, heads, cap, _] = k.dims();
    let (cos, sin, mode) = match rope {
        Some(r) => (r.cos.clone(), r.sin.clone(), if r.interleave { 1 } else { 2 }),
        // Stand-ins, never read.
        None => (qkv.clone(), qkv.clone(), 0),
    };
    let (out, w, project) = match target {
        Target::Rows(out) => {
            let stand_in = out.clone();
            (out.reshape([1, -1]), stand_in, false)
        }
        Target::Projected { partials, w } => (partials.reshape([1, -1]), w, true),
    };
    let out_shape = out.dims();
    let (out, k, v) = <Dispatch as AttentionBackend>::attend_step(
        qkv.into_dispatch(),
        cos.into_dispatch(),
        sin.into_dispatch(),
        k.into_dispatch(),
        v.into_dispatch(),
        w.clone().into_dispatch(),
        out.into_dispatch(),
        [
            row0 as u32,
            t as u32,
            ring.written as u32,
            ring.context.unwrap_or(0) as u32,
            heads as u32,
            cap as u32,
            ring.pinned as u32,
        ],
        mode,
        project,
    );
    let out = Tensor::<2>::from_dispatch(out);
    debug_assert_eq!(out.dims(), out_shape);
    let d = w.dims()[1];
    let target = if project {
        let total = out.dims()[1];
        Target::Projected { partials: out.reshape([heads, total / (heads * d), d]), w }
    } else {
        Target::Rows(out.reshape([-1, d as i32]))
    };
    (target, Tensor::from_dispatch(k), Tensor::from_dispatch(v))
}

/// Whether [`attend`] launches the kernel: everything on a CubeCL device without autodiff, f32 or
/// f16, a power-of-two head size of 32..=256, `t` new positions within the ring, and the scores
/// of `t` queries over the ring within [`MAX_SCORES`].
pub fn uses_kernel(
    qkv: &Tensor<3>,
    t: usize,
    k: &Tensor<4>,
    v: &Tensor<4>,
    rope: Option<&Rope>,
    ring: Ring,
    target: &Target,
) -> bool {
    let float = |t: DType| matches!(t, DType::F32 | DType::F16);
    let [_, heads, cap, hd] = k.dims();
    let d = heads * hd;
    hd.is_power_of_two()
        && (32..=256).contains(&hd)
        && t >= 1
        && t + ring.pinned <= cap
        && t * cap <= MAX_SCORES
        && cap == ring.capacity
        && qkv.dims()[2] == 3 * d
        && match target {
            Target::Rows(out) => out.dims()[1] == d && out.dtype() == k.dtype(),
            Target::Projected { partials, w } => {
                partials.dtype() == DType::F32
                    && partials.dims()[0] == heads
                    && partials.dims()[2] == d
                    && w.dims() == [d, d]
                    && w.dtype() == k.dtype()
            }
        }
        && v.dims() == k.dims()
        && float(qkv.dtype())
        && float(k.dtype())
        && v.dtype() == k.dtype()
        && rope.is_none_or(|r| r.cos.dims()[2] * 2 == hd && r.cos.dtype() == DType::F32 && r.sin.dtype() == DType::F32)
        && on_cube(qkv.device())
        && on_cube(k.device())
}

/// [`attend`] with Burn's ops: the ring written by slice-assigns, a host-built mask, softmax
/// attention in the model's dtype.
#[allow(clippy::too_many_arguments)]
pub fn reference(
    qkv: Tensor<3>,
    row0: usize,
    t: usize,
    k_ring: Tensor<4>,
    v_ring: Tensor<4>,
    rope: Option<&Rope>,
    ring: Ring,
    target: Target,
) -> (Target, Tensor<4>, Tensor<4>) {
    let [_, heads, cap, hd] = k_ring.dims();
    let d = heads * hd;
    let dtype = k_ring.dtype();
    let device = k_ring.device();
    let rows = sum_parts(qkv.narrow(1, row0, t), dtype);
    let qkv = rows.reshape([1, t, 3, heads, hd]).permute([2, 0, 3, 1, 4]);
    let mut q: Tensor<4> = qkv.clone().narrow(0, 0, 1).reshape([1, heads, t, hd]);
    let mut k: Tensor<4> = qkv.clone().narrow(0, 1, 1).reshape([1, heads, t, hd]);
    let v: Tensor<4> = qkv.narrow(0, 2, 1).reshape([1, heads, t, hd]);
    if let Some(r) = rope {
        let b = row0 / t;
        let half = hd / 2;
        let cos = r.cos.clone().narrow(0, b, 1).reshape([1, 1, t, half]);
        let sin = r.sin.clone().narrow(0, b, 1).reshape([1, 1, t, half]);
        q = rotate(q, &cos, &sin, r.interleave);
        k = rotate(k, &cos, &sin, r.interleave);
    }
    let (mut ck, mut cv) = (k_ring, v_ring);
    for i in 0..t {
        let slot = ring.slot_of(ring.written + i);
        ck = ck.slice_assign([0..1, 0..heads, slot..slot + 1, 0..hd], k.clone().narrow(2, i, 1));
        cv = cv.slice_assign([0..1, 0..heads, slot..slot + 1, 0..hd], v.clone().narrow(2, i, 1));
    }
    let end = ring.written + t;
    let k_pos: Vec<i64> = (0..cap).map(|i| ring.slot_position(i, end)).collect();
    let q_pos: Vec<i64> = (0..t).map(|i| (ring.written + i) as i64).collect();
    let bias = mask_bias(&q_pos, &k_pos, ring.context, ring.pinned, &device, dtype);
    let scores = q.matmul(ck.clone().swap_dims(2, 3)).mul_scalar(1.0 / (hd as f64).sqrt()) + bias;
    let attn = softmax(scores, 3).matmul(cv.clone());
    let rows_out = attn.swap_dims(1, 2).reshape([t, d]);
    let target = match target {
        Target::Rows(out) => Target::Rows(out.slice_assign([row0..row0 + t, 0..d], rows_out)),
        Target::Projected { partials, w } => {
            // One part: the projection by Burn's product, in the rows of this stream.
            let projected = super::matvec::reference(rows_out.reshape([1, t, d]), w.clone()).cast(DType::F32);
            let rows = partials.dims()[1];
            let partials =
                if partials.dims()[0] == 1 { partials } else { Tensor::zeros([1, rows, d], (&device, DType::F32)) };
            Target::Projected { partials: partials.slice_assign([0..1, row0..row0 + t, 0..d], projected), w }
        }
    };
    (target, ck, cv)
}

/// RoPE of `x` `[1, H, T, D]` in f32 with tables `[1, 1, T, D/2]`, returned in `x`'s dtype.
fn rotate(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>, interleave: bool) -> Tensor<4> {
    let [b, h, t, d] = x.dims();
    let half = d / 2;
    let dtype = x.dtype();
    let x = if dtype == DType::F32 { x } else { x.cast(DType::F32) };
    let (re, im) = if interleave {
        let pairs = x.reshape([b, h, t, half, 2]);
        (pairs.clone().narrow(4, 0, 1).reshape([b, h, t, half]), pairs.narrow(4, 1, 1).reshape([b, h, t, half]))
    } else {
        (x.clone().narrow(3, 0, half), x.narrow(3, half, half))
    };
    let out_re = re.clone() * cos.clone() - im.clone() * sin.clone();
    let out_im = re * sin.clone() + im * cos.clone();
    let y = if interleave {
        Tensor::cat(vec![out_re.reshape([b, h, t, half, 1]), out_im.reshape([b, h, t, half, 1])], 4)
            .reshape([b, h, t, d])
    } else {
        Tensor::cat(vec![out_re, out_im], 3)
    };
    if dtype == DType::F32 { y } else { y.cast(dtype) }
}

/// Additive mask `[1, 1, T, K]`: 0 where query `q_pos[i]` may see key `k_pos[j]`, -inf elsewhere.
/// Keys at positions below `pinned` are visible to every later query, whatever the context.
pub fn mask_bias(
    q_pos: &[i64],
    k_pos: &[i64],
    context: Option<usize>,
    pinned: usize,
    device: &Device,
    dtype: DType,
) -> Tensor<4> {
    let mut bias = Vec::with_capacity(q_pos.len() * k_pos.len());
    for &q in q_pos {
        for &k in k_pos {
            let delta = q - k;
            let visible = k >= 0 && delta >= 0 && (k < pinned as i64 || context.is_none_or(|c| delta < c as i64));
            bias.push(if visible { 0.0 } else { f32::NEG_INFINITY });
        }
    }
    crate::backend::floats(bias, [1, 1, q_pos.len(), k_pos.len()], device, dtype)
}

/// The fused attention step as a Burn backend extension (CubeCL only).
#[backend_extension(Cube)]
pub trait AttentionBackend: Backend {
    /// `(out, k, v)` of [`attend`]; `cos`, `sin` are stand-ins when `rope_mode` is 0 (1:
    /// interleaved pairs, 2: halves), `w_out` when not `project`. `sizes`: first row, positions,
    /// positions written before, context (0: none), heads, ring capacity, pinned positions.
    #[allow(clippy::too_many_arguments)]
    fn attend_step(
        qkv: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        w_out: FloatTensor<Self>,
        out: FloatTensor<Self>,
        sizes: [u32; 7],
        rope_mode: u32,
        project: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

impl AttentionBackend for Cube {
    fn attend_step(
        qkv: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        w_out: FloatTensor<Self>,
        out: FloatTensor<Self>,
        sizes: [u32; 7],
        rope_mode: u32,
        project: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        cube::launch(qkv, cos, sin, k, v, w_out, out, sizes, rope_mode, project)
    }
}

mod cube {
    use burn::backend::cubecl::dtype_to_storage_type;
    use burn_cubecl::kernel::into_contiguous;
    use burn_cubecl::tensor::CubeTensor;
    use cubecl::prelude::*;

    /// A tensor this launch writes in place. Launches run in order on the device, so one that
    /// still reads it has run first; a state cloned by the caller owns its own copy
    /// (`KvCache`'s `Clone`), so nothing else sees the writes.
    fn owned(t: CubeTensor) -> CubeTensor {
        into_contiguous(t)
    }

    /// One cube per head, one unit per head dimension (`hd` units).
    #[cube(launch)]
    fn attend_rows<P: Float, F: Float>(
        qkv: &[P],
        cos: &[f32],
        sin: &[f32],
        k_ring: &mut [F],
        v_ring: &mut [F],
        w_out: &[F],
        out: &mut [F],
        proj: &mut [f32],
        rows: u32,
        parts: u32,
        row0: u32,
        t_len: u32,
        written: u32,
        context: u32,
        cap: u32,
        pinned: u32,
        scale: f32,
        #[comptime] hd: usize,
        #[comptime] rope_mode: u32,
        #[comptime] max_t: usize,
        #[comptime] cap_max: usize,
        #[comptime] project: bool,
        #[define(P, F)] _dtypes: [ElemType; 2],
    ) {
        let head = CUBE_POS_X as usize;
        let heads = CUBE_COUNT_X as usize;
        let u = UNIT_POS_X as usize;
        let d = heads * hd;
        let rows = rows as usize;
        let parts = parts as usize;
        let row0 = row0 as usize;
        let t_len = t_len as usize;
        let written = written as usize;
        let context = context as usize;
        let cap = cap as usize;
        let pinned = pinned as usize;
        // Slots `pinned..cap` cycle; the first `pinned` hold positions `0..pinned` for good.
        let cycle = cap - pinned;
        let half = hd / 2;

        let mut qs = Shared::<[f32]>::new_slice(max_t * hd);
        let mut ks = Shared::<[f32]>::new_slice(max_t * hd);
        let mut vs = Shared::<[f32]>::new_slice(max_t * hd);
        let mut sc = Shared::<[f32]>::new_slice(max_t * cap_max);
        let mut red = Shared::<[f32]>::new_slice(hd);
        let mut os = Shared::<[f32]>::new_slice(max_t * hd);

        // The new positions' q, k, v: partials summed in order, rounded to the model's dtype.
        for t in 0..t_len {
            let mut q = 0.0f32;
            let mut k = 0.0f32;
            let mut v = 0.0f32;
            for p in 0..parts {
                let base = (p * rows + row0 + t) * 3 * d + head * hd + u;
                q += f32::cast_from(qkv[base]);
                k += f32::cast_from(qkv[base + d]);
                v += f32::cast_from(qkv[base + 2 * d]);
            }
            qs[t * hd + u] = f32::cast_from(F::cast_from(q));
            ks[t * hd + u] = f32::cast_from(F::cast_from(k));
            vs[t * hd + u] = f32::cast_from(F::cast_from(v));
        }
        sync_cube();

        // RoPE, in f32 with the host's tables, rounded back to the model's dtype.
        if comptime!(rope_mode != 0) {
            let mut j = u % half;
            let mut first = u < half;
            let mut partner = (u + half) % hd;
            if comptime!(rope_mode == 1) {
                j = u / 2;
                first = u % 2 == 0;
                partner = u ^ 1;
            }
            // Rotated values go to a second buffer first: partners still read the originals.
            let mut rq = Shared::<[f32]>::new_slice(max_t * hd);
            let mut rk = Shared::<[f32]>::new_slice(max_t * hd);
            for t in 0..t_len {
                let c = cos[(row0 + t) * half + j];
                let s = sin[(row0 + t) * half + j];
                let q0 = qs[t * hd + u];
                let q1 = qs[t * hd + partner];
                let k0 = ks[t * hd + u];
                let k1 = ks[t * hd + partner];
                // (re, im) -> (re c - im s, re s + im c); this unit holds re when `first`.
                if first {
                    rq[t * hd + u] = q0 * c - q1 * s;
                    rk[t * hd + u] = k0 * c - k1 * s;
                } else {
                    rq[t * hd + u] = q1 * s + q0 * c;
                    rk[t * hd + u] = k1 * s + k0 * c;
                }
            }
            sync_cube();
            for t in 0..t_len {
                qs[t * hd + u] = f32::cast_from(F::cast_from(rq[t * hd + u]));
                ks[t * hd + u] = f32::cast_from(F::cast_from(rk[t * hd + u]));
            }
            sync_cube();
        }

        // The new keys and values into their slots.
        for t in 0..t_len {
            let p = written + t;
            let mut slot = p;
            if p >= pinned {
                slot = pinned + (p - pinned) % cycle;
            }
            let at = (head * cap + slot) * hd + u;
            k_ring[at] = F::cast_from(ks[t * hd + u]);
            v_ring[at] = F::cast_from(vs[t * hd + u]);
        }

        let end = written + t_len;
        let last = end - 1;
        for t in 0..t_len {
            let q_pos = written + t;
            // Scores of the visible slots (-inf elsewhere); new keys from shared memory.
            let mut m = f32::new(-3.0e38);
            let mut i = u;
            while i < cap {
                let mut s = f32::new(-3.0e38);
                if i < end {
                    let mut p = i;
                    if i >= pinned {
                        p = i + cycle * ((last - i) / cycle);
                    }
                    if p <= q_pos && (i < pinned || context == 0 || q_pos - p < context) {
                        let mut dot = 0.0f32;
                        if p >= written {
                            let tk = p - written;
                            for j in 0..hd {
                                dot += qs[t * hd + j] * ks[tk * hd + j];
                            }
                        } else {
                            let base = (head * cap + i) * hd;
                            for j in 0..hd {
                                dot += qs[t * hd + j] * f32::cast_from(k_ring[base + j]);
                            }
                        }
                        s = dot * scale;
                    }
                }
                sc[t * cap_max + i] = s;
                m = f32::max(m, s);
                i += hd;
            }
            red[u] = m;
            sync_cube();
            let mut h = hd.runtime() / 2;
            while h > 0 {
                if u < h {
                    red[u] = f32::max(red[u], red[u + h]);
                }
                sync_cube();
                h /= 2;
            }
            let max = red[0];
            sync_cube();
            // Softmax weights and their sum (a masked slot weighs 0).
            let mut sum = 0.0f32;
            let mut i = u;
            while i < cap {
                let s = sc[t * cap_max + i];
                let mut e = 0.0f32;
                if s > f32::new(-1.0e38) {
                    e = (s - max).exp();
                }
                sc[t * cap_max + i] = e;
                sum += e;
                i += hd;
            }
            red[u] = sum;
            sync_cube();
            let mut h = hd.runtime() / 2;
            while h > 0 {
                if u < h {
                    red[u] += red[u + h];
                }
                sync_cube();
                h /= 2;
            }
            let total = red[0];
            // This unit's output dimension: Σ_i w_i v_i[u] / Σ w.
            let mut o = 0.0f32;
            for i in 0..cap {
                let w = sc[t * cap_max + i];
                if w > 0.0f32 {
                    let mut p = i;
                    if i >= pinned {
                        p = i + cycle * ((last - i) / cycle);
                    }
                    let vv = if p >= written {
                        vs[(p - written) * hd + u]
                    } else {
                        f32::cast_from(v_ring[(head * cap + i) * hd + u])
                    };
                    o += w * vv;
                }
            }
            let o = F::cast_from(o / total);
            if project {
                os[t * hd + u] = f32::cast_from(o);
            } else {
                out[(row0 + t) * d + head * hd + u] = o;
            }
            sync_cube();
        }
        if project {
            // This head's part of the output projection: columns `m * hd + u`, one per head.
            for t in 0..t_len {
                for m in 0..heads {
                    let col = m * hd + u;
                    let mut acc = 0.0f32;
                    for j in 0..hd {
                        acc += os[t * hd + j] * f32::cast_from(w_out[(head * hd + j) * d + col]);
                    }
                    proj[(head * rows + row0 + t) * d + col] = acc;
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn launch(
        qkv: CubeTensor,
        cos: CubeTensor,
        sin: CubeTensor,
        k: CubeTensor,
        v: CubeTensor,
        w_out: CubeTensor,
        out: CubeTensor,
        sizes: [u32; 7],
        rope_mode: u32,
        project: bool,
    ) -> (CubeTensor, CubeTensor, CubeTensor) {
        let [row0, t, written, context, heads, cap, pinned] = sizes;
        let qkv = into_contiguous(qkv);
        let cos = into_contiguous(cos);
        let sin = into_contiguous(sin);
        let w_out = into_contiguous(w_out);
        let k = owned(k);
        let v = owned(v);
        let out = owned(out);
        let client = k.client.clone();
        let dims = qkv.meta.shape().clone();
        let (parts, rows) = (dims[0], dims[1]);
        let hd = k.meta.shape()[3];
        let dtypes = [dtype_to_storage_type(qkv.dtype), dtype_to_storage_type(k.dtype)];
        // The output is rows in the model's dtype, or the projection's f32 partials: the other
        // binding is a stand-in (the same buffer may not be bound twice for writing).
        let stand_in = burn_cubecl::ops::numeric::empty_device_dtype(
            client.clone(),
            k.device.clone(),
            burn::tensor::Shape::new([1]),
            if project { k.dtype } else { burn::tensor::DType::F32 },
        );
        let (rows_out, proj_out) = if project { (stand_in, out.clone()) } else { (out.clone(), stand_in) };
        attend_rows::launch(
            &client,
            CubeCount::Static(heads, 1, 1),
            CubeDim::new_1d(hd as u32),
            qkv.into_buffer_arg(),
            cos.into_buffer_arg(),
            sin.into_buffer_arg(),
            k.clone().into_buffer_arg(),
            v.clone().into_buffer_arg(),
            w_out.into_buffer_arg(),
            rows_out.into_buffer_arg(),
            proj_out.into_buffer_arg(),
            rows as u32,
            parts as u32,
            row0,
            t,
            written,
            context,
            cap,
            pinned,
            1.0 / (hd as f32).sqrt(),
            hd,
            rope_mode,
            t as usize,
            cap as usize,
            project,
            dtypes,
        );
        (out, k, v)
    }
}
