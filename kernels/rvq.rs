//! Mimi's split residual vector quantizer in one launch each way, one cube per frame.
//!
//! - [`encode`]: latents `[B, C, T]` to codes `[B, n, T]`: each of the two quantizers projects
//!   the latent (`C -> d`), then level by level takes the nearest centroid (`‖c‖² - 2 c·r`, the
//!   first index on ties) and subtracts it from the residual.
//! - [`decode`]: codes back to latents: the centroids summed per quantizer, projected (`d -> C`),
//!   and the two quantizers' outputs summed.
//!
//! Why: as Burn ops every level is a square, a sum, a product, a scale, a subtraction, an argmin,
//! a select and a subtraction, and the levels' codes are concatenated and transposed: about 80
//! launches a frame for Mimi's 8 levels each way. Here the residual stays in shared memory
//! between the levels.
//!
//! Each has its plain-Burn reference (`*_reference`), which runs off CubeCL devices and is what
//! the kernels are tested against.

use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Backend, Cube, Dispatch, backend_extension};
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::module::linear;

use super::on_cube;

/// One residual quantizer's weights: `in_proj` `[C, d]`, `out_proj` `[d, C]` (input-major), and
/// its levels' centroids stacked `[levels * bins, d]`.
#[derive(Clone, Debug)]
pub struct Quantizer {
    pub in_proj: Tensor<2>,
    pub out_proj: Tensor<2>,
    pub books: Tensor<2>,
    pub levels: usize,
}

/// Latents `[B, C, T]` to codes `[B, n, T]`: `first`'s levels, then `rest`'s, `n` in all.
pub fn encode(x: Tensor<3>, first: &Quantizer, rest: &Quantizer, n: usize, bins: usize) -> Tensor<3, Int> {
    if !uses_kernel(&x.device(), x.dtype(), first, rest, n, bins) {
        return encode_reference(x, first, rest, n, bins);
    }
    let [_, _, t] = x.dims();
    let int_dtype = Tensor::<1, Int>::empty([1], &x.device()).dtype();
    Tensor::from_dispatch(<Dispatch as RvqBackend>::rvq_encode(
        x.into_dispatch(),
        first.in_proj.clone().into_dispatch(),
        rest.in_proj.clone().into_dispatch(),
        first.books.clone().into_dispatch(),
        rest.books.clone().into_dispatch(),
        first.levels.min(n) as u32,
        n.saturating_sub(first.levels) as u32,
        bins as u32,
        t as u32,
        int_dtype,
    ))
}

/// Codes `[B, n, T]` (each in `0..bins`, checked by the caller) to latents `[B, C, T]`.
pub fn decode(codes: Tensor<3, Int>, first: &Quantizer, rest: &Quantizer, bins: usize) -> Tensor<3> {
    let [_, n, t] = codes.dims();
    if !uses_kernel(&codes.device(), first.books.dtype(), first, rest, n, bins) {
        return decode_reference(codes, first, rest, bins);
    }
    Tensor::from_dispatch(<Dispatch as RvqBackend>::rvq_decode(
        codes.into_dispatch(),
        first.out_proj.clone().into_dispatch(),
        rest.out_proj.clone().into_dispatch(),
        first.books.clone().into_dispatch(),
        rest.books.clone().into_dispatch(),
        first.levels.min(n) as u32,
        n.saturating_sub(first.levels) as u32,
        bins as u32,
        t as u32,
    ))
}

/// Whether the kernels run: on a CubeCL device, f32 or f16, `n` levels at most, and the
/// quantizers' inner width `d` within a cube (256).
pub fn uses_kernel(device: &Device, dtype: DType, first: &Quantizer, rest: &Quantizer, n: usize, bins: usize) -> bool {
    let d = first.books.dims()[1];
    let float = |t: DType| matches!(t, DType::F32 | DType::F16);
    float(dtype)
        && first.books.dtype() == dtype
        && rest.books.dtype() == dtype
        && (1..=first.levels + rest.levels).contains(&n)
        && rest.levels > 0
        && d <= 256
        && rest.books.dims()[1] == d
        && first.books.dims()[0] == first.levels * bins
        && rest.books.dims()[0] == rest.levels * bins
        && on_cube(device.clone())
        && on_cube(first.books.device())
}

/// One quantizer's `levels` codes of latents `[B, T, C]`, with Burn's ops: `[B, T, levels]`.
fn encode_one(x: Tensor<3>, q: &Quantizer, levels: usize, bins: usize) -> Tensor<3, Int> {
    let [b, t, _] = x.dims();
    let mut residual = linear(x, q.in_proj.clone(), None);
    let d = residual.dims()[2];
    let mut codes = Vec::with_capacity(levels);
    for l in 0..levels {
        let c = q.books.clone().narrow(0, l * bins, bins);
        let c2 = c.clone().square().sum_dim(1); // [bins, 1]
        // [bins, d] x [d, B*T]: the codebook stays contiguous; only the small residual moves.
        let dots = c.clone().matmul(residual.clone().reshape([b * t, d]).transpose());
        let dist = c2 - dots.mul_scalar(2.0); // [bins, B*T]
        let idx = dist.argmin(0).reshape([b, t, 1]);
        let chosen = c.select(0, idx.clone().reshape([b * t])).reshape([b, t, d]);
        residual = residual - chosen;
        codes.push(idx);
    }
    Tensor::cat(codes, 2)
}

/// [`encode`] with Burn's ops.
pub fn encode_reference(x: Tensor<3>, first: &Quantizer, rest: &Quantizer, n: usize, bins: usize) -> Tensor<3, Int> {
    let x = x.swap_dims(1, 2);
    let n_first = first.levels.min(n);
    let mut codes = encode_one(x.clone(), first, n_first, bins);
    if n > n_first {
        codes = Tensor::cat(vec![codes, encode_one(x, rest, n - n_first, bins)], 2);
    }
    codes.swap_dims(1, 2)
}

/// One quantizer's latents `[B, T, C]` from its codes `[B, T, levels]`, with Burn's ops.
fn decode_one(codes: Tensor<3, Int>, q: &Quantizer, bins: usize) -> Tensor<3> {
    let [b, t, n] = codes.dims();
    let d = q.books.dims()[1];
    let mut sum: Option<Tensor<2>> = None;
    for l in 0..n {
        let idx = codes.clone().narrow(2, l, 1).reshape([b * t]);
        let chosen = q.books.clone().narrow(0, l * bins, bins).select(0, idx);
        sum = Some(match sum {
            Some(s) => s + chosen,
            None => chosen,
        });
    }
    let sum = sum.unwrap_or_else(|| Tensor::zeros([b * t, d], (&q.books.device(), q.books.dtype())));
    linear(sum.reshape([b, t, d]), q.out_proj.clone(), None)
}

/// [`decode`] with Burn's ops.
pub fn decode_reference(codes: Tensor<3, Int>, first: &Quantizer, rest: &Quantizer, bins: usize) -> Tensor<3> {
    let [_, n, _] = codes.dims();
    let codes = codes.swap_dims(1, 2);
    let n_first = first.levels.min(n);
    let mut x = decode_one(codes.clone().narrow(2, 0, n_first), first, bins);
    if n > n_first {
        x = x + decode_one(codes.narrow(2, n_first, n - n_first), rest, bins);
    }
    x.swap_dims(1, 2)
}

/// The quantizer kernels as a Burn backend extension (CubeCL only).
#[backend_extension(Cube)]
pub trait RvqBackend: Backend {
    #[allow(clippy::too_many_arguments)]
    fn rvq_encode(
        x: FloatTensor<Self>,
        in_first: FloatTensor<Self>,
        in_rest: FloatTensor<Self>,
        books_first: FloatTensor<Self>,
        books_rest: FloatTensor<Self>,
        n_first: u32,
        n_rest: u32,
        bins: u32,
        t: u32,
        int_dtype: DType,
    ) -> IntTensor<Self>;

    #[allow(clippy::too_many_arguments)]
    fn rvq_decode(
        codes: IntTensor<Self>,
        out_first: FloatTensor<Self>,
        out_rest: FloatTensor<Self>,
        books_first: FloatTensor<Self>,
        books_rest: FloatTensor<Self>,
        n_first: u32,
        n_rest: u32,
        bins: u32,
        t: u32,
    ) -> FloatTensor<Self>;
}

impl RvqBackend for Cube {
    fn rvq_encode(
        x: FloatTensor<Self>,
        in_first: FloatTensor<Self>,
        in_rest: FloatTensor<Self>,
        books_first: FloatTensor<Self>,
        books_rest: FloatTensor<Self>,
        n_first: u32,
        n_rest: u32,
        bins: u32,
        t: u32,
        int_dtype: DType,
    ) -> IntTensor<Self> {
        cube::launch_encode(x, in_first, in_rest, books_first, books_rest, n_first, n_rest, bins, t, int_dtype)
    }

    fn rvq_decode(
        codes: IntTensor<Self>,
        out_first: FloatTensor<Self>,
        out_rest: FloatTensor<Self>,
        books_first: FloatTensor<Self>,
        books_rest: FloatTensor<Self>,
        n_first: u32,
        n_rest: u32,
        bins: u32,
        t: u32,
    ) -> FloatTensor<Self> {
        cube::launch_decode(codes, out_first, out_rest, books_first, books_rest, n_first, n_rest, bins, t)
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

    /// Levels `0..levels` of one quantizer for the frame in `rs` (its projected latent, `d`
    /// values, updated to the residual), codes written from level `code0` on.
    #[cube]
    #[allow(clippy::too_many_arguments)]
    fn quantize<F: Float, I: Int>(
        books: &[F],
        rs: &mut Shared<[f32]>,
        sv: &mut Shared<[f32]>,
        si: &mut Shared<[u32]>,
        codes: &mut [I],
        levels: usize,
        code0: usize,
        n: usize,
        bins: usize,
        d: usize,
        b: usize,
        t_len: usize,
        ti: usize,
    ) {
        let u = UNIT_POS as usize;
        for l in 0..levels {
            let base = l * bins;
            let mut best_v = f32::new(3.0e38);
            let mut best_i = bins;
            let mut i = u;
            while i < bins {
                let mut dot = 0.0f32;
                let mut sq = 0.0f32;
                for j in 0..d {
                    let c = f32::cast_from(books[(base + i) * d + j]);
                    dot += c * rs[j];
                    sq += c * c;
                }
                let dist = f32::cast_from(F::cast_from(sq)) - 2.0f32 * f32::cast_from(F::cast_from(dot));
                if dist < best_v {
                    best_v = dist;
                    best_i = i;
                }
                i += UNITS;
            }
            sv[u] = best_v;
            si[u] = best_i as u32;
            sync_cube();
            let mut h = UNITS.runtime() / 2;
            while h > 0 {
                if u < h {
                    let ov = sv[u + h];
                    let oi = si[u + h];
                    if ov < sv[u] || (ov == sv[u] && oi < si[u]) {
                        sv[u] = ov;
                        si[u] = oi;
                    }
                }
                sync_cube();
                h /= 2;
            }
            let code = si[0] as usize;
            if u < d {
                let c = f32::cast_from(books[(base + code) * d + u]);
                rs[u] = f32::cast_from(F::cast_from(rs[u] - c));
            }
            if u == 0 {
                codes[(b * n + code0 + l) * t_len + ti] = I::cast_from(code as u32);
            }
            sync_cube();
        }
    }

    /// One cube per frame `(b, t)`.
    #[cube(launch)]
    fn rvq_encode_frames<F: Float, I: Int>(
        x: &[F],
        in_first: &[F],
        in_rest: &[F],
        books_first: &[F],
        books_rest: &[F],
        codes: &mut [I],
        c_in: u32,
        d: u32,
        t_len: u32,
        n_first: u32,
        n_rest: u32,
        bins: u32,
        #[define(F, I)] _dtypes: [ElemType; 2],
    ) {
        let frame = CUBE_POS as usize;
        let u = UNIT_POS as usize;
        let t_len = t_len as usize;
        let b = frame / t_len;
        let ti = frame % t_len;
        let c_in = c_in as usize;
        let d = d as usize;
        let n = (n_first + n_rest) as usize;
        let mut rs = Shared::<[f32]>::new_slice(UNITS);
        let mut sv = Shared::<[f32]>::new_slice(UNITS);
        let mut si = Shared::<[u32]>::new_slice(UNITS);
        // First quantizer: project, then its levels.
        if u < d {
            let mut acc = 0.0f32;
            for c in 0..c_in {
                acc += f32::cast_from(x[(b * c_in + c) * t_len + ti]) * f32::cast_from(in_first[c * d + u]);
            }
            rs[u] = f32::cast_from(F::cast_from(acc));
        }
        sync_cube();
        quantize::<F, I>(
            books_first,
            &mut rs,
            &mut sv,
            &mut si,
            codes,
            n_first as usize,
            0,
            n,
            bins as usize,
            d,
            b,
            t_len,
            ti,
        );
        if n_rest > 0 {
            if u < d {
                let mut acc = 0.0f32;
                for c in 0..c_in {
                    acc += f32::cast_from(x[(b * c_in + c) * t_len + ti]) * f32::cast_from(in_rest[c * d + u]);
                }
                rs[u] = f32::cast_from(F::cast_from(acc));
            }
            sync_cube();
            quantize::<F, I>(
                books_rest,
                &mut rs,
                &mut sv,
                &mut si,
                codes,
                n_rest as usize,
                n_first as usize,
                n,
                bins as usize,
                d,
                b,
                t_len,
                ti,
            );
        }
    }

    /// One cube per frame `(b, t)`: centroids summed (in the model's dtype, level by level),
    /// projected, the two quantizers added.
    #[cube(launch)]
    fn rvq_decode_frames<F: Float, I: Int>(
        codes: &[I],
        out_first: &[F],
        out_rest: &[F],
        books_first: &[F],
        books_rest: &[F],
        out: &mut [F],
        c_out: u32,
        d: u32,
        t_len: u32,
        n_first: u32,
        n_rest: u32,
        bins: u32,
        #[define(F, I)] _dtypes: [ElemType; 2],
    ) {
        let frame = CUBE_POS as usize;
        let u = UNIT_POS as usize;
        let t_len = t_len as usize;
        let b = frame / t_len;
        let ti = frame % t_len;
        let c_out = c_out as usize;
        let d = d as usize;
        let bins = bins as usize;
        let n_first = n_first as usize;
        let n_rest = n_rest as usize;
        let n = n_first + n_rest;
        let mut sf = Shared::<[f32]>::new_slice(UNITS);
        let mut sr = Shared::<[f32]>::new_slice(UNITS);
        if u < d {
            let mut acc = 0.0f32;
            for l in 0..n_first {
                let code = u32::cast_from(codes[(b * n + l) * t_len + ti]) as usize;
                let c = f32::cast_from(books_first[(l * bins + code) * d + u]);
                if l == 0 {
                    acc = c;
                } else {
                    acc = f32::cast_from(F::cast_from(acc + c));
                }
            }
            sf[u] = acc;
            let mut acc = 0.0f32;
            for l in 0..n_rest {
                let code = u32::cast_from(codes[(b * n + n_first + l) * t_len + ti]) as usize;
                let c = f32::cast_from(books_rest[(l * bins + code) * d + u]);
                if l == 0 {
                    acc = c;
                } else {
                    acc = f32::cast_from(F::cast_from(acc + c));
                }
            }
            sr[u] = acc;
        }
        sync_cube();
        let mut o = u;
        while o < c_out {
            let mut a = 0.0f32;
            for j in 0..d {
                a += sf[j] * f32::cast_from(out_first[j * c_out + o]);
            }
            let mut y = F::cast_from(a);
            if n_rest > 0 {
                let mut r = 0.0f32;
                for j in 0..d {
                    r += sr[j] * f32::cast_from(out_rest[j * c_out + o]);
                }
                y += F::cast_from(r);
            }
            out[(b * c_out + o) * t_len + ti] = y;
            o += UNITS;
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn launch_encode(
        x: CubeTensor,
        in_first: CubeTensor,
        in_rest: CubeTensor,
        books_first: CubeTensor,
        books_rest: CubeTensor,
        n_first: u32,
        n_rest: u32,
        bins: u32,
        t: u32,
        int_dtype: DType,
    ) -> CubeTensor {
        let x = into_contiguous(x);
        let client = x.client.clone();
        let [b, c_in] = [x.meta.shape()[0], x.meta.shape()[1]];
        let d = books_first.meta.shape()[1];
        let n = (n_first + n_rest) as usize;
        let codes = empty_device_dtype(client.clone(), x.device.clone(), Shape::new([b, n, t as usize]), int_dtype);
        let dtypes = [dtype_to_storage_type(x.dtype), dtype_to_storage_type(codes.dtype)];
        rvq_encode_frames::launch(
            &client,
            CubeCount::Static(b as u32 * t, 1, 1),
            CubeDim::new_1d(UNITS as u32),
            x.into_buffer_arg(),
            into_contiguous(in_first).into_buffer_arg(),
            into_contiguous(in_rest).into_buffer_arg(),
            into_contiguous(books_first).into_buffer_arg(),
            into_contiguous(books_rest).into_buffer_arg(),
            codes.clone().into_buffer_arg(),
            c_in as u32,
            d as u32,
            t,
            n_first,
            n_rest,
            bins,
            dtypes,
        );
        codes
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn launch_decode(
        codes: CubeTensor,
        out_first: CubeTensor,
        out_rest: CubeTensor,
        books_first: CubeTensor,
        books_rest: CubeTensor,
        n_first: u32,
        n_rest: u32,
        bins: u32,
        t: u32,
    ) -> CubeTensor {
        let codes = into_contiguous(codes);
        let client = codes.client.clone();
        let b = codes.meta.shape()[0];
        let d = books_first.meta.shape()[1];
        let c_out = out_first.meta.shape()[1];
        let dtype = books_first.dtype;
        let out = empty_device_dtype(client.clone(), codes.device.clone(), Shape::new([b, c_out, t as usize]), dtype);
        let dtypes = [dtype_to_storage_type(dtype), dtype_to_storage_type(codes.dtype)];
        rvq_decode_frames::launch(
            &client,
            CubeCount::Static(b as u32 * t, 1, 1),
            CubeDim::new_1d(UNITS as u32),
            codes.into_buffer_arg(),
            into_contiguous(out_first).into_buffer_arg(),
            into_contiguous(out_rest).into_buffer_arg(),
            into_contiguous(books_first).into_buffer_arg(),
            into_contiguous(books_rest).into_buffer_arg(),
            out.clone().into_buffer_arg(),
            c_out as u32,
            d as u32,
            t,
            n_first,
            n_rest,
            bins,
            dtypes,
        );
        out
    }
}
