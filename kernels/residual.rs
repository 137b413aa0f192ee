//! The residual update of a transformer layer, and the normalisation that follows it, in one
//! launch: `x' = x + scale * Σ_p partials[p]`, then `h = norm(x')` (RMSNorm or LayerNorm,
//! computed in f32 and returned in the model's dtype), for one-position steps. `x` may also be
//! embedding rows gathered by token (the LM's input: the sum of one row per stream; the depth
//! transformer's: the previous token's row plus the projected partials).
//!
//! Why: between two products a layer adds its update to the residual stream and normalises the
//! result for the next product. As Burn ops that is a sum over the partials, a cast, a multiply,
//! an add and 4–8 launches of normalisation; here one cube per row does all of it (the row's
//! values stay in its units between the passes). Without partials it is a plain norm (`h =
//! norm(x)`), which starts a layer stack.
//!
//! - [`reference`]: the same with Burn's ops (the models' [`Norm`](crate::nn::norm::Norm) path);
//!   runs on the flex CPU backend and under autodiff, and is what the kernel is tested against.
//! - [`residual_norm`]: picks one of the two per call.

use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Backend, Cube, Dispatch, backend_extension};
use burn::prelude::*;
use burn::tensor::DType;

use super::embed::Column;
use super::matvec::{Q8, Weight, sum_parts};
use super::on_cube;

/// An update: columns `offset .. offset + d` of partials `[parts, rows, width]` (a product's
/// partials, or a window of several products computed in one launch).
#[derive(Clone, Debug)]
pub struct Update {
    pub partials: Tensor<3>,
    pub offset: usize,
}

impl From<Tensor<3>> for Update {
    fn from(partials: Tensor<3>) -> Self {
        Update { partials, offset: 0 }
    }
}

/// What the update is added to.
#[derive(Clone, Debug)]
pub enum Base {
    /// The residual stream `[rows, d]`.
    Rows(Tensor<2>),
    /// `Σ_{s < count} table[idx[offset + b * stride + s]]` for rows `b < rows` (a negative index
    /// adds nothing), summed in the table's dtype; the table float or 8-bit.
    Gather { table: Weight, idx: Tensor<2, Int>, column: Column, count: usize, rows: usize },
}

impl Base {
    fn rows_d(&self) -> (usize, usize) {
        match self {
            Base::Rows(x) => (x.dims()[0], x.dims()[1]),
            Base::Gather { table, rows, .. } => (*rows, table.dims()[1]),
        }
    }

    /// The rows with Burn's ops.
    pub fn materialize(self) -> Tensor<2> {
        match self {
            Base::Rows(x) => x,
            Base::Gather { table, idx, column, count, rows } => {
                let mut x = None;
                for s in 0..count {
                    let col = Column { offset: column.offset + s, stride: column.stride };
                    x = Some(super::embed::reference(&table, &idx, col, rows, x));
                }
                x.unwrap_or_else(|| Tensor::zeros([rows, table.dims()[1]], (&idx.device(), table.dtype())))
            }
        }
    }
}

/// A normalisation applied after the update: weight, optional bias, epsilon, and RMS or not.
#[derive(Clone, Debug)]
pub struct NormParams {
    pub weight: Tensor<1>,
    pub bias: Option<Tensor<1>>,
    pub eps: f64,
    pub rms: bool,
}

impl NormParams {
    /// The normalisation with Burn's ops, in f32, returned in `x`'s dtype (as
    /// [`Norm::forward`](crate::nn::norm::Norm::forward)).
    pub fn apply(&self, x: Tensor<2>) -> Tensor<2> {
        if self.rms {
            return super::rms_norm::reference(x, self.weight.clone(), self.eps);
        }
        let dtype = x.dtype();
        let f32 = |t: Tensor<1>| if t.dtype() == DType::F32 { t } else { t.cast(DType::F32) };
        let x32 = if dtype == DType::F32 { x } else { x.cast(DType::F32) };
        let y = burn::tensor::module::layer_norm(x32, f32(self.weight.clone()), self.bias.clone().map(f32), self.eps);
        if dtype == DType::F32 { y } else { y.cast(dtype) }
    }
}

/// `x + scale * Σ partials` (`x` `[rows, d]`, partials `[parts, rows, d]` optional), then `norm`
/// of it: `(x', Some(h))`, or `(x', None)` without a norm. With Burn's ops, adding in the model's
/// dtype as the unfused layers do.
pub fn reference(
    base: Base,
    update: Option<Update>,
    scale: Option<Tensor<1>>,
    norm: Option<&NormParams>,
    dtype: DType,
) -> (Tensor<2>, Option<Tensor<2>>) {
    let x = base.materialize();
    let d = x.dims()[1];
    let update = update.map(|u| {
        let p = if u.offset == 0 && u.partials.dims()[2] == d { u.partials } else { u.partials.narrow(2, u.offset, d) };
        let u = sum_parts(p, dtype);
        match &scale {
            Some(s) => {
                let d = s.dims()[0];
                u * s.clone().reshape([1, d])
            }
            None => u,
        }
    });
    let x = match update {
        Some(u) => x + u,
        None => x,
    };
    let h = norm.map(|n| n.apply(x.clone()));
    (x, h)
}

/// [`reference`]'s result by the kernel where [`uses_kernel`] says so. `x` is `[rows, d]` in the
/// model's `dtype`; `scale` and the norm's tensors `[d]`.
pub fn residual_norm(
    base: Base,
    update: Option<Update>,
    scale: Option<Tensor<1>>,
    norm: Option<&NormParams>,
    dtype: DType,
) -> (Tensor<2>, Option<Tensor<2>>) {
    if !uses_kernel(&base, update.as_ref(), scale.as_ref(), norm, dtype) {
        return reference(base, update, scale, norm, dtype);
    }
    let (rows, d) = base.rows_d();
    let flags = Flags {
        gather: matches!(base, Base::Gather { .. }),
        has_partials: update.is_some(),
        has_scale: scale.is_some(),
        norm: match norm {
            None => 0,
            Some(n) if n.rms => 1,
            Some(_) => 2,
        },
        has_bias: norm.is_some_and(|n| n.bias.is_some()),
    };
    let mut q8: Option<Q8> = None;
    let (x, idx, column, count) = match base {
        Base::Rows(x) => {
            let device = x.device();
            (x, Tensor::<2, Int>::empty([1, 1], &device), Column { offset: 0, stride: 0 }, 0)
        }
        Base::Gather { table, idx, column, count, .. } => {
            let x = match table {
                Weight::Float(t) => t,
                Weight::Q8(q, dtype) => {
                    // Stand-in for the float table, never read (an allocation, not a launch).
                    let x = Tensor::<2>::empty([1, 4], (&q.scales.device(), dtype));
                    q8 = Some(q);
                    x
                }
            };
            (x, idx, column, count)
        }
    };
    // Absent inputs are stood in for by `x` (never read: the kernel's flags say so).
    let any = x.clone().reshape([-1]);
    let stand_in = |t: Option<Tensor<1>>| t.unwrap_or_else(|| any.clone());
    let p_offset = update.as_ref().map_or(0, |u| u.offset);
    let q8_flag = if q8.is_some() { 64 } else { 0 };
    let (qv, qs) = match q8 {
        Some(q) => (q.values, q.scales),
        None => (idx.clone(), any.clone().reshape([1, -1])),
    };
    let (xo, ho) = <Dispatch as ResidualBackend>::residual_norm(
        x.into_dispatch(),
        idx.into_dispatch(),
        qv.into_dispatch(),
        qs.into_dispatch(),
        update.map(|u| u.partials).unwrap_or_else(|| any.clone().reshape([1, 1, -1])).into_dispatch(),
        stand_in(scale).into_dispatch(),
        stand_in(norm.map(|n| n.weight.clone())).into_dispatch(),
        stand_in(norm.and_then(|n| n.bias.clone())).into_dispatch(),
        [rows as u32, d as u32, column.offset as u32, column.stride as u32, count as u32, p_offset as u32],
        norm.map_or(0.0, |n| n.eps as f32),
        flags.code() | q8_flag,
        dtype,
    );
    let xo = Tensor::<2>::from_dispatch(xo);
    let h = norm.map(|_| Tensor::<2>::from_dispatch(ho));
    (xo, h)
}

/// Which inputs a launch has, packed into one code for the kernel's compile-time branches.
struct Flags {
    gather: bool,
    has_partials: bool,
    has_scale: bool,
    /// 0 none, 1 RMSNorm, 2 LayerNorm.
    norm: u32,
    has_bias: bool,
}

impl Flags {
    fn code(&self) -> u32 {
        self.gather as u32
            | (self.has_partials as u32) << 1
            | (self.has_scale as u32) << 2
            | self.norm << 3
            | (self.has_bias as u32) << 5
    }
}

/// Whether [`residual_norm`] launches the kernel: everything on a CubeCL device without autodiff,
/// f32 or f16, shapes consistent (a mismatch takes the reference, which reports it).
pub fn uses_kernel(
    base: &Base,
    update: Option<&Update>,
    scale: Option<&Tensor<1>>,
    norm: Option<&NormParams>,
    dtype: DType,
) -> bool {
    let float = |t: DType| matches!(t, DType::F32 | DType::F16);
    let (rows, d) = base.rows_d();
    let base_ok = match base {
        Base::Rows(x) => x.dtype() == dtype && on_cube(x.device()),
        Base::Gather { table, idx, column, count, rows } => {
            let n: usize = idx.dims().iter().product();
            let last = column.offset + ((*rows).max(1) - 1) * column.stride + (*count).max(1) - 1;
            let table_ok = match table {
                Weight::Float(t) => on_cube(t.device()),
                Weight::Q8(q, _) => on_cube(q.scales.device()),
            };
            *count > 0 && last < n && on_cube(idx.device()) && table.dtype() == dtype && table_ok
        }
    };
    let ones = |t: Option<&Tensor<1>>| t.is_none_or(|t| t.dims()[0] == d && float(t.dtype()) && on_cube(t.device()));
    float(dtype)
        && rows > 0
        && d > 0
        && base_ok
        && update.is_none_or(|u| {
            let p = &u.partials;
            p.dims()[1] == rows && u.offset + d <= p.dims()[2] && float(p.dtype()) && on_cube(p.device())
        })
        && ones(scale)
        && norm.is_none_or(|n| ones(Some(&n.weight)) && ones(n.bias.as_ref()))
}

/// The fused residual and norm as a Burn backend extension (CubeCL only).
#[backend_extension(Cube)]
pub trait ResidualBackend: Backend {
    /// `(x', h)` of [`residual_norm`]; absent inputs are stood in for by `x` and named by
    /// `flags`; `h` is a one-value placeholder when there is no norm. `sizes`: rows, width, the
    /// gather's offset, stride and count, the update's first column.
    #[allow(clippy::too_many_arguments)]
    fn residual_norm(
        x: FloatTensor<Self>,
        idx: IntTensor<Self>,
        qv: IntTensor<Self>,
        qs: FloatTensor<Self>,
        partials: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        sizes: [u32; 6],
        eps: f32,
        flags: u32,
        dtype: DType,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);
}

impl ResidualBackend for Cube {
    fn residual_norm(
        x: FloatTensor<Self>,
        idx: IntTensor<Self>,
        qv: IntTensor<Self>,
        qs: FloatTensor<Self>,
        partials: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        sizes: [u32; 6],
        eps: f32,
        flags: u32,
        dtype: DType,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        cube::launch(x, idx, qv, qs, partials, scale, weight, bias, sizes, eps, flags, dtype)
    }
}

mod cube {
    use burn::backend::cubecl::dtype_to_storage_type;
    use burn::tensor::{DType, Shape};
    use burn_cubecl::kernel::into_contiguous;
    use burn_cubecl::ops::numeric::empty_device_dtype;
    use burn_cubecl::tensor::CubeTensor;
    use cubecl::prelude::*;

    /// Adds the units' values of `red` (`units` of them, a power of two) into `red[0]`.
    #[cube]
    pub(crate) fn tree_sum(red: &mut Shared<[f32]>, unit: usize, #[comptime] units: usize) {
        let mut half = units.runtime() / 2;
        while half > 0 {
            if unit < half {
                red[unit] += red[unit + half];
            }
            sync_cube();
            half /= 2;
        }
    }

    /// One cube per row. Flags: bit 0 gathered base, 1 partials, 2 scale, 3-4 norm (1 RMS,
    /// 2 Layer), 5 bias, 6 the gathered table in 8 bits (`qv`, `qs`).
    // Both branches of the table read assign `e`; the kernel language needs it declared first.
    #[allow(unused_assignments)]
    #[cube(launch)]
    fn residual_norm_rows<F: Float, P: Float, S: Float, I: Int, Q: Int>(
        x: &[F],
        idx: &[I],
        qv: &[Q],
        qs: &[f32],
        partials: &[P],
        scale: &[S],
        weight: &[S],
        bias: &[S],
        x_out: &mut [F],
        h_out: &mut [F],
        rows: u32,
        d: u32,
        parts: u32,
        p_offset: u32,
        p_width: u32,
        offset: u32,
        stride: u32,
        count: u32,
        eps: f32,
        #[comptime] flags: u32,
        #[comptime] units: usize,
        #[comptime] block: usize,
        #[define(F, P, S, I, Q)] _dtypes: [ElemType; 5],
    ) {
        let row = CUBE_POS as usize;
        if row >= rows as usize {
            terminate!();
        }
        let unit = UNIT_POS as usize;
        let d = d as usize;
        let rows = rows as usize;
        let parts = parts as usize;
        let base = row * d;
        let mut red = Shared::<[f32]>::new_slice(units);

        // Pass 1: the new residual, in the model's dtype, and its sum and sum of squares.
        let mut sum = 0.0f32;
        let mut sumsq = 0.0f32;
        let ibase = offset as usize + row * stride as usize;
        let mut j = unit;
        while j < d {
            let mut v = 0.0f32;
            if comptime!(flags & 1 != 0) {
                // Embedding rows of the row's tokens, summed in the model's dtype.
                for s in 0..count as usize {
                    let t = i32::cast_from(idx[ibase + s]);
                    if t >= 0 {
                        let mut e = 0.0f32;
                        if comptime!(flags & 64 != 0) {
                            // An 8-bit table: the row's byte, times its column's block scale.
                            let at = t as usize * d + j;
                            let b = (u32::cast_from(qv[at / 4]) >> (8 * (at % 4) as u32)) & 255u32;
                            let mut q = f32::cast_from(b);
                            if b >= 128u32 {
                                q -= 256.0f32;
                            }
                            e = f32::cast_from(F::cast_from(q * qs[(t as usize / block) * d + j]));
                        } else {
                            e = f32::cast_from(x[t as usize * d + j]);
                        }
                        if s == 0 {
                            v = e;
                        } else {
                            v = f32::cast_from(F::cast_from(v + e));
                        }
                    }
                }
            } else {
                v = f32::cast_from(x[base + j]);
            }
            if comptime!(flags & 2 != 0) {
                let mut u = 0.0f32;
                for p in 0..parts {
                    u += f32::cast_from(partials[(p * rows + row) * p_width as usize + p_offset as usize + j]);
                }
                let mut u = f32::cast_from(F::cast_from(u));
                if comptime!(flags & 4 != 0) {
                    u = f32::cast_from(F::cast_from(u * f32::cast_from(F::cast_from(scale[j]))));
                }
                v = f32::cast_from(F::cast_from(v + u));
            }
            x_out[base + j] = F::cast_from(v);
            sum += v;
            sumsq += v * v;
            j += units;
        }
        let norm = comptime!((flags >> 3) & 3);
        if comptime!(norm != 0) {
            let df = f32::cast_from(d);
            let mut mean = 0.0f32;
            if comptime!(norm == 1) {
                red[unit] = sumsq;
                sync_cube();
                tree_sum(&mut red, unit, units);
            } else {
                red[unit] = sum;
                sync_cube();
                tree_sum(&mut red, unit, units);
                mean = red[0] / df;
                sync_cube();
                // Pass 2: the variance about the mean (each unit rereads its own values).
                let mut var = 0.0f32;
                let mut j = unit;
                while j < d {
                    let c = f32::cast_from(x_out[base + j]) - mean;
                    var += c * c;
                    j += units;
                }
                red[unit] = var;
                sync_cube();
                tree_sum(&mut red, unit, units);
            }
            // rms norm: the mean square; layer norm: the variance.
            let inv = 1.0f32 / (red[0] / df + eps).sqrt();
            // Pass 3: the normalised row.
            let mut j = unit;
            while j < d {
                let v = f32::cast_from(x_out[base + j]);
                let w = f32::cast_from(weight[j]);
                let mut y = v * (w * inv);
                if comptime!(norm != 1) {
                    y = (v - mean) * inv * w;
                    if comptime!(flags & 32 != 0) {
                        y += f32::cast_from(bias[j]);
                    }
                }
                h_out[base + j] = F::cast_from(y);
                j += units;
            }
        }
    }

    /// Cube size for rows of `d` values: a power of two in 32..=256 (or the device's limit).
    pub(crate) fn units_for(d: usize, max_units: u32) -> usize {
        let cap = (max_units as usize).clamp(1, 256);
        let cap = 1 << cap.ilog2();
        d.next_power_of_two().clamp(32.min(cap), cap)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn launch(
        x: CubeTensor,
        idx: CubeTensor,
        qv: CubeTensor,
        qs: CubeTensor,
        partials: CubeTensor,
        scale: CubeTensor,
        weight: CubeTensor,
        bias: CubeTensor,
        sizes: [u32; 6],
        eps: f32,
        flags: u32,
        dtype: DType,
    ) -> (CubeTensor, CubeTensor) {
        let [rows, d, offset, stride, count, p_offset] = sizes;
        let x = into_contiguous(x);
        let idx = into_contiguous(idx);
        let qv = into_contiguous(qv);
        let qs = into_contiguous(qs);
        let partials = into_contiguous(partials);
        let scale = into_contiguous(scale);
        let weight = into_contiguous(weight);
        let bias = into_contiguous(bias);
        let client = x.client.clone();
        let parts = if flags & 2 != 0 { partials.meta.shape()[0] } else { 0 };
        let p_width = partials.meta.shape()[2];
        let units = units_for(d as usize, client.properties().hardware.max_units_per_cube);
        let x_out =
            empty_device_dtype(client.clone(), x.device.clone(), Shape::new([rows as usize, d as usize]), dtype);
        let h_shape = if (flags >> 3) & 3 != 0 { [rows as usize, d as usize] } else { [1, 1] };
        let h_out = empty_device_dtype(client.clone(), x.device.clone(), Shape::new(h_shape), dtype);
        // Stand-ins (absent inputs) are never read, so their dtype does not matter; present
        // scale, weight and bias are parameters in the model's dtype.
        let dtypes = [
            dtype_to_storage_type(dtype),
            dtype_to_storage_type(partials.dtype),
            dtype_to_storage_type(dtype),
            dtype_to_storage_type(idx.dtype),
            dtype_to_storage_type(qv.dtype),
        ];
        residual_norm_rows::launch(
            &client,
            CubeCount::Static(rows, 1, 1),
            CubeDim::new_1d(units as u32),
            x.into_buffer_arg(),
            idx.into_buffer_arg(),
            qv.into_buffer_arg(),
            qs.into_buffer_arg(),
            partials.into_buffer_arg(),
            scale.into_buffer_arg(),
            weight.into_buffer_arg(),
            bias.into_buffer_arg(),
            x_out.clone().into_buffer_arg(),
            h_out.clone().into_buffer_arg(),
            rows,
            d,
            parts as u32,
            p_offset,
            p_width as u32,
            offset,
            stride,
            count,
            eps,
            flags,
            units,
            crate::kernels::q8::BLOCK,
            dtypes,
        );
        (x_out, h_out)
    }
}
