//! Fused RMSNorm: `y = x * alpha / sqrt(eps + mean(x², last dim))`, computed in f32, returned in
//! the input's dtype (f32 or f16).
//!
//! Why: Moshi's LM normalises twice per layer and once at the end, every step. As plain Burn ops
//! that is 7 launches (square, mean, add, sqrt, recip, two muls; two casts more in f16) and as
//! many intermediate tensors; the kernel is one launch, reading `x` twice and writing `y` once.
//!
//! - [`reference`]: the plain-Burn definition; runs on the flex CPU backend, under autodiff (so
//!   training gets gradients), and is what the kernel is tested against.
//! - [`RmsNormBackend`]: the backend extension; only the CubeCL backend (wgpu) implements it,
//!   with the `#[cube]` kernel in [`cube`].
//! - [`rms_norm`]: picks one of the two per call.

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Cube, Dispatch, backend_extension};
use burn::prelude::*;
use burn::tensor::DType;

use super::on_cube;

/// The plain-Burn RMSNorm over the last dimension, in f32, returned in `x`'s dtype.
pub fn reference<const D: usize>(x: Tensor<D>, alpha: Tensor<1>, eps: f64) -> Tensor<D> {
    let dtype = x.dtype();
    let x32 = if dtype == DType::F32 { x } else { x.cast(DType::F32) };
    let w = if alpha.dtype() == DType::F32 { alpha } else { alpha.cast(DType::F32) };
    let var = x32.clone().square().mean_dim(D - 1).add_scalar(eps);
    let mut shape = [1; D];
    shape[D - 1] = w.dims()[0];
    let y = x32 * (w.reshape(shape) * var.sqrt().recip());
    if dtype == DType::F32 { y } else { y.cast(dtype) }
}

/// RMSNorm of `x` (`[..., C]`) with `alpha` (`[C]`): the fused kernel where [`uses_kernel`]
/// says so, [`reference`] otherwise.
pub fn rms_norm<const D: usize>(x: Tensor<D>, alpha: Tensor<1>, eps: f64) -> Tensor<D> {
    if !uses_kernel(&x, &alpha) {
        return reference(x, alpha, eps);
    }
    let y = <Dispatch as RmsNormBackend>::fused_rms_norm(x.into_dispatch(), alpha.into_dispatch(), eps as f32);
    Tensor::from_dispatch(y)
}

/// Whether [`rms_norm`] launches the kernel for these inputs: both on a CubeCL device without
/// autodiff (an autodiff device is its own `DispatchDevice` variant), f32 or f16, `alpha` as
/// long as the last dimension and nothing empty. Anything else (including a shape mismatch,
/// which the reference then reports as Burn does) takes the reference.
pub fn uses_kernel<const D: usize>(x: &Tensor<D>, alpha: &Tensor<1>) -> bool {
    let float = |t: DType| matches!(t, DType::F32 | DType::F16);
    let dims = x.dims();
    let c = dims.last().copied().unwrap_or(0);
    c > 0
        && dims.iter().product::<usize>() > 0
        && alpha.dims()[0] == c
        && float(x.dtype())
        && float(alpha.dtype())
        && on_cube(x.device())
        && on_cube(alpha.device())
}

/// The fused RMSNorm as a Burn backend extension. Only the CubeCL backend implements it;
/// [`rms_norm`] never routes another backend here.
#[backend_extension(Cube)]
pub trait RmsNormBackend: Backend {
    /// RMSNorm of contiguous-or-not `x` (`[..., C]`, f32/f16) with `alpha` (`[C]`, f32/f16),
    /// accumulated in f32, returned in `x`'s dtype.
    fn fused_rms_norm(x: FloatTensor<Self>, alpha: FloatTensor<Self>, eps: f32) -> FloatTensor<Self>;
}

impl RmsNormBackend for Cube {
    fn fused_rms_norm(x: FloatTensor<Self>, alpha: FloatTensor<Self>, eps: f32) -> FloatTensor<Self> {
        cube::launch(x, alpha, eps)
    }
}

/// The CubeCL kernel and its launch. Kept apart from the Burn prelude, whose names
/// (`Tensor`, `Float`, ...) collide with CubeCL's inside `#[cube]` code.
mod cube {
    use burn::backend::cubecl::dtype_to_storage_type;
    use burn_cubecl::kernel::into_contiguous;
    use burn_cubecl::ops::numeric::empty_device_dtype;
    use burn_cubecl::tensor::CubeTensor;
    use cubecl::prelude::*;

    /// One cube per row of `C = alpha.len()` values: each unit sums the squares of a strided
    /// slice of the row, the cube adds the partial sums in shared memory (tree), then each unit
    /// scales its slice. `units` is the cube size, a power of two.
    #[cube(launch)]
    fn rms_norm_rows<F: Float, A: Float>(
        x: &[F],
        alpha: &[A],
        out: &mut [F],
        rows: u32,
        eps: f32,
        #[comptime] units: usize,
        #[define(F, A)] _dtypes: [ElemType; 2],
    ) {
        let row = CUBE_POS;
        // Uniform per cube, so no unit is left waiting at a barrier.
        if row >= rows as usize {
            terminate!();
        }
        let c = alpha.len();
        let base = row * c;
        let unit = UNIT_POS as usize;

        let mut sum = 0.0f32;
        let mut i = unit;
        while i < c {
            let v = f32::cast_from(x[base + i]);
            sum += v * v;
            i += units;
        }
        let mut partial = Shared::<[f32]>::new_slice(units);
        partial[unit] = sum;
        sync_cube();
        let mut half = units.runtime() / 2;
        while half > 0 {
            if unit < half {
                partial[unit] += partial[unit + half];
            }
            sync_cube();
            half /= 2;
        }
        // Same order as the reference: mean, + eps, sqrt, recip, alpha * inv, x * that.
        let inv = 1.0f32 / (partial[0] / f32::cast_from(c) + eps).sqrt();

        let mut j = unit;
        while j < c {
            let v = f32::cast_from(x[base + j]);
            out[base + j] = F::cast_from(v * (f32::cast_from(alpha[j]) * inv));
            j += units;
        }
    }

    /// Cube size for rows of `c` values: a power of two in 32..=256 (or the device's limit).
    fn units_for(c: usize, max_units: u32) -> usize {
        let cap = (max_units as usize).clamp(1, 256);
        let cap = 1 << cap.ilog2();
        c.next_power_of_two().clamp(32.min(cap), cap)
    }

    pub(super) fn launch(x: CubeTensor, alpha: CubeTensor, eps: f32) -> CubeTensor {
        let x = into_contiguous(x);
        let alpha = into_contiguous(alpha);
        let client = x.client.clone();
        let shape = x.meta.shape().clone();
        let c = alpha.meta.num_elements();
        let rows = x.meta.num_elements() / c;
        let hw = &client.properties().hardware;
        let units = units_for(c, hw.max_units_per_cube);
        // Rows beyond the first axis' limit go to further rows of cubes; CUBE_POS is linear.
        let max_x = hw.max_cube_count.0.max(1) as usize;
        let count_x = rows.min(max_x);
        let count_y = rows.div_ceil(count_x);
        let dtypes = [dtype_to_storage_type(x.dtype), dtype_to_storage_type(alpha.dtype)];
        let out = empty_device_dtype(client.clone(), x.device.clone(), shape, x.dtype);
        rms_norm_rows::launch(
            &client,
            CubeCount::Static(count_x as u32, count_y as u32, 1),
            CubeDim::new_1d(units as u32),
            x.into_buffer_arg(),
            alpha.into_buffer_arg(),
            out.clone().into_buffer_arg(),
            rows as u32,
            eps,
            units,
            dtypes,
        );
        out
    }
}
