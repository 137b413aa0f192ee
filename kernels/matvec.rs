//! Matrix-vector products for the one-position steps: `y = x W` with `x` `[B, T, K]` of at most
//! [`MAX_ROWS`] rows and `W` `[K, N]` (a weight as kokichi stores it), accumulated in f32 and
//! returned in `x`'s dtype.
//!
//! Why: an LM step multiplies one position by every weight matrix, so it is bound by reading the
//! weights once (14 GB a step for moshiko in f16). Measured on an H200 (stop 44, wgpu, f16,
//! before this kernel): a moshiko step's LM took 180 ms, which reads its 14 GB of weights at
//! about 78 GB/s, under 2% of that card's 4.3 TB/s (not profiled further). Burn's matrix-product
//! autotuner says why it may be: for this layout ("row major vecmat") it has no good algorithm
//! (burn-cubecl 0.22.1, `kernel/matmul/tune/base.rs`); a product tiled for many rows leaves
//! most of each tile empty with one.
//!
//! This kernel splits `K` as well as `N`, so that there are cubes enough to keep a GPU's memory
//! busy: each cube reads a `chunk × 64` block of `W` (64 adjacent columns, so a row of the block
//! is one contiguous read) with 4 lanes striding down it, adds the lanes in shared memory and
//! writes one f32 partial sum per column; a second launch adds the chunks' partials in a fixed
//! order and casts. For `K = N = 4096` that is 1,024 cubes of 256 units.
//!
//! - [`reference`]: Burn's `linear`; runs on the flex CPU backend, under autodiff, for more
//!   rows than [`MAX_ROWS`] (prompts, training) and for weights under [`MIN_WEIGHTS`], and is
//!   what the kernel is tested against.
//! - [`MatvecBackend`]: the backend extension, implemented by the CubeCL backend (wgpu) alone.
//! - [`linear`]: picks one of the two per call; [`launch`] takes the kernel wherever it can
//!   run (tests, benchmarks); [`set_enabled`] turns it off for a process (A/B timings) and
//!   [`set_min_weights`] moves its size threshold (tests of whole models).
//!
//! On lavapipe (a CPU) the kernel is 0.30-0.37x the reference for a 1024 x 1024 weight and
//! 0.77-1.85x at 4096 x 4096 (`bench_kernels`, two runs); its gain on a GPU is not measured yet.

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Cube, Dispatch, backend_extension};
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::module;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use super::on_cube;

/// Most rows (`B * T`) the kernel takes; it reads `W` once per row, so beyond a few rows the
/// general matrix product, which reads it once, wins.
pub const MAX_ROWS: usize = 4;

/// Fewest weights (`K * N`) for which [`linear`] takes the kernel by default: below, a product
/// is a few microseconds of launches either way, and the kernel's two launches lose (on
/// lavapipe 3x at 1024 x 1024). moshiko's temporal layers (16-92 M weights each), its text head
/// and its depth transformer's input projections (4 M) are above; kokichi-tiny's layers are
/// all below.
pub const MIN_WEIGHTS: usize = 1 << 22;

static ENABLED: AtomicBool = AtomicBool::new(true);
static THRESHOLD: AtomicUsize = AtomicUsize::new(MIN_WEIGHTS);

/// Sets the fewest weights for which [`linear`] takes the kernel in this process
/// ([`MIN_WEIGHTS`] by default; 1 puts every product of a small test model through it).
pub fn set_min_weights(n: usize) {
    THRESHOLD.store(n, Ordering::Relaxed);
}

/// Turns the kernel on or off for [`linear`] in this process (on by default), so a benchmark
/// can time the same model both ways.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// `x W` by Burn's own `linear` (no bias).
pub fn reference(x: Tensor<3>, w: Tensor<2>) -> Tensor<3> {
    module::linear(x, w, None)
}

/// `x W` (`[B, T, K]` × `[K, N]` → `[B, T, N]`): the kernel where [`uses_kernel`] says so,
/// [`reference`] otherwise. What the models call.
pub fn linear(x: Tensor<3>, w: Tensor<2>) -> Tensor<3> {
    if uses_kernel(&x, &w) { kernel(x, w) } else { reference(x, w) }
}

/// `x W` by the kernel wherever it can run ([`can_launch`]), whatever the size; [`reference`]
/// elsewhere.
pub fn launch(x: Tensor<3>, w: Tensor<2>) -> Tensor<3> {
    if can_launch(&x, &w) { kernel(x, w) } else { reference(x, w) }
}

fn kernel(x: Tensor<3>, w: Tensor<2>) -> Tensor<3> {
    Tensor::from_dispatch(<Dispatch as MatvecBackend>::matvec(x.into_dispatch(), w.into_dispatch()))
}

/// Whether [`linear`] takes the kernel: it can ([`can_launch`]), it is enabled ([`set_enabled`])
/// and the weight has at least [`MIN_WEIGHTS`] values (or what [`set_min_weights`] set).
pub fn uses_kernel(x: &Tensor<3>, w: &Tensor<2>) -> bool {
    let [k, n] = w.dims();
    k * n >= THRESHOLD.load(Ordering::Relaxed) && ENABLED.load(Ordering::Relaxed) && can_launch(x, w)
}

/// Whether the kernel can compute `x W`: both tensors on a CubeCL device without autodiff,
/// both f32 or both f16, `x`'s last dimension equal to `W`'s first, 1..=[`MAX_ROWS`] rows and
/// nothing empty. A shape or dtype mismatch takes the reference, which reports it as Burn does.
pub fn can_launch(x: &Tensor<3>, w: &Tensor<2>) -> bool {
    let float = |t: DType| matches!(t, DType::F32 | DType::F16);
    let [b, t, k] = x.dims();
    let [wk, n] = w.dims();
    (1..=MAX_ROWS).contains(&(b * t))
        && k > 0
        && n > 0
        && wk == k
        && float(x.dtype())
        && w.dtype() == x.dtype()
        && on_cube(x.device())
        && on_cube(w.device())
}

/// The matrix-vector product as a Burn backend extension. Only the CubeCL backend implements
/// it; [`linear`] never routes another backend here.
#[backend_extension(Cube)]
pub trait MatvecBackend: Backend {
    /// `x W` for `x` `[B, T, K]` (B·T ≤ [`MAX_ROWS`]) and `W` `[K, N]` (f32 or f16; the kernel
    /// reads each in its own dtype), accumulated in f32, returned in `x`'s dtype.
    fn matvec(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self>;
}

impl MatvecBackend for Cube {
    fn matvec(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self> {
        cube::launch(x, w)
    }
}

/// The CubeCL kernels and their launch, apart from the Burn prelude (whose names collide with
/// CubeCL's inside `#[cube]` code).
mod cube {
    use burn::backend::cubecl::dtype_to_storage_type;
    use burn::tensor::{DType, Shape};
    use burn_cubecl::kernel::into_contiguous;
    use burn_cubecl::ops::numeric::empty_device_dtype;
    use burn_cubecl::tensor::CubeTensor;
    use cubecl::prelude::*;

    /// Columns of `W` per cube: 64 adjacent values, one contiguous read per row of a block.
    const COLS: usize = 64;
    /// Lanes striding down a block's rows; `COLS * LANES` units a cube.
    const LANES: usize = 4;
    /// Rows of `W` per cube (a multiple of LANES).
    const CHUNK: usize = 256;
    /// Units of the summing launch's cubes.
    const SUM_UNITS: usize = 256;

    /// Cube (column tile, K chunk, row): partial[chunk][row][col] = Σ x[row][k] W[k][col] over
    /// the chunk's `k`.
    #[cube(launch)]
    fn matvec_chunks<F: Float, W: Float>(
        x: &[F],
        w: &[W],
        partial: &mut [f32],
        rows: u32,
        k: u32,
        n: u32,
        #[comptime] cols: usize,
        #[comptime] lanes: usize,
        #[comptime] chunk: usize,
        #[define(F, W)] _dtypes: [ElemType; 2],
    ) {
        let ux = UNIT_POS_X as usize;
        let uy = UNIT_POS_Y as usize;
        let col = CUBE_POS_X as usize * cols + ux;
        let part = CUBE_POS_Y as usize;
        let row = CUBE_POS_Z as usize;
        let k = k as usize;
        let n = n as usize;
        let start = part * chunk;
        let mut end = start + chunk;
        if end > k {
            end = k;
        }

        let mut acc = 0.0f32;
        if col < n {
            let mut i = start + uy;
            while i < end {
                acc += f32::cast_from(x[row * k + i]) * f32::cast_from(w[i * n + col]);
                i += lanes;
            }
        }
        // Every unit reaches every barrier (out-of-range columns add zeros).
        let mut sums = Shared::<[f32]>::new_slice(cols * lanes);
        sums[uy * cols + ux] = acc;
        sync_cube();
        let mut half = lanes.runtime() / 2;
        while half > 0 {
            if uy < half {
                sums[uy * cols + ux] += sums[(uy + half) * cols + ux];
            }
            sync_cube();
            half /= 2;
        }
        if uy == 0 && col < n {
            partial[(part * rows as usize + row) * n + col] = sums[ux];
        }
    }

    /// out[i] = Σ_p partial[p][i], in chunk order, cast to the output's dtype.
    #[cube(launch)]
    fn sum_chunks<F: Float>(
        partial: &[f32],
        out: &mut [F],
        parts: u32,
        len: u32,
        #[comptime] units: usize,
        #[define(F)] _dtype: ElemType,
    ) {
        let i = CUBE_POS * units + UNIT_POS as usize;
        let len = len as usize;
        if i < len {
            let mut acc = 0.0f32;
            for p in 0..parts as usize {
                acc += partial[p * len + i];
            }
            out[i] = F::cast_from(acc);
        }
    }

    pub(super) fn launch(x: CubeTensor, w: CubeTensor) -> CubeTensor {
        let x = into_contiguous(x);
        let w = into_contiguous(w);
        let client = x.client.clone();
        let dims = x.meta.shape().clone();
        let k = dims[dims.len() - 1];
        let rows = x.meta.num_elements() / k;
        let n = w.meta.num_elements() / k;
        let parts = k.div_ceil(CHUNK);
        let tiles = n.div_ceil(COLS);

        let partial = empty_device_dtype(client.clone(), x.device.clone(), Shape::new([parts, rows, n]), DType::F32);
        let dtypes = [dtype_to_storage_type(x.dtype), dtype_to_storage_type(w.dtype)];
        matvec_chunks::launch(
            &client,
            CubeCount::Static(tiles as u32, parts as u32, rows as u32),
            CubeDim::new_2d(COLS as u32, LANES as u32),
            x.clone().into_buffer_arg(),
            w.into_buffer_arg(),
            partial.clone().into_buffer_arg(),
            rows as u32,
            k as u32,
            n as u32,
            COLS,
            LANES,
            CHUNK,
            dtypes,
        );

        let mut shape = dims;
        let last = shape.len() - 1;
        shape[last] = n;
        let out = empty_device_dtype(client.clone(), x.device.clone(), shape, x.dtype);
        let len = rows * n;
        sum_chunks::launch(
            &client,
            CubeCount::Static(len.div_ceil(SUM_UNITS) as u32, 1, 1),
            CubeDim::new_1d(SUM_UNITS as u32),
            partial.into_buffer_arg(),
            out.clone().into_buffer_arg(),
            parts as u32,
            len as u32,
            SUM_UNITS,
            dtype_to_storage_type(x.dtype),
        );
        out
    }
}
