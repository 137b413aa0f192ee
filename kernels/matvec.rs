//! Matrix-vector products for the one-position steps: `y = x W` with `x` a few rows (at most
//! [`MAX_ROWS`]) and `W` `[K, N]` (a weight as kokichi stores it), accumulated in f32.
//!
//! Why: a step multiplies one position by every weight matrix, so it is bound by reading the
//! weights once. Burn's matrix product is tiled for many rows and its autotuner has no good
//! algorithm for one row with row-major weights (burn-cubecl 0.22.1, `kernel/matmul/tune`).
//!
//! The kernel splits `K` as well as `N`, so that there are cubes enough to keep a GPU's memory
//! busy: each cube reads a `256 × 256` block of `W`, 4 adjacent columns per unit (adjacent units
//! read adjacent vectors, one contiguous read per row of the block), for up to 8 rows at once
//! (more rows take more cubes), and writes one f32 partial sum per column and row: **partials**
//! `[parts, rows, N]`, `parts = ceil(K / 256)`. Plain rows need no shared memory and no barrier
//! (barriers are what a software Vulkan pays most for). Whoever consumes the product adds the partials in a fixed order as it
//! loads them (the residual, attention and token-picking kernels do), so a product costs one
//! launch. Before its loop, a cube builds its slice of the input in shared memory, from:
//!
//! - [`Input::Rows`]: plain rows `[rows, K]`;
//! - [`Input::Gated`]: the partials of a gated unit's input projection `[parts, rows, 2K]`,
//!   summed and gated, `act(a) * b`, as Moshi's feed-forward block does between its two weights;
//! - [`Input::Gelu`]: the partials of an MLP's first weight, summed, through GELU (Mimi's).
//!
//! - [`reference`] / [`partials_reference`]: Burn's `linear`, on the flex CPU backend, under
//!   autodiff, and for more rows than [`MAX_ROWS`]; what the kernel is tested against. Its
//!   "partials" are the finished product in the model's dtype, `parts = 1`.
//! - [`linear`]: a product returned whole (`[B, T, N]`), for the paths that do not fuse: the
//!   kernel and a summing launch for weights of [`MIN_WEIGHTS`] or more, else the reference.

use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Backend, Cube, Dispatch, backend_extension};
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::module;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use super::act::Act;
use super::on_cube;
pub use super::q8::Q8;

/// Most rows (`B * T`) the kernel takes: it reads `W` once per 8 rows, so beyond a few groups
/// the general matrix product, which reads it once, wins.
pub const MAX_ROWS: usize = 32;

/// Fewest weights (`K * N`) for which [`linear`] takes the kernel: below, a whole product is a
/// few microseconds of launches either way, and the kernel's two launches (product, sum) lose.
/// The fused step path ([`partials`]) has no threshold: it launches once.
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

/// The weight of a product: float, or 8-bit ([`Q8`]) with the dtype the model computes in.
#[derive(Clone, Debug)]
pub enum Weight {
    Float(Tensor<2>),
    Q8(Q8, DType),
}

impl From<Tensor<2>> for Weight {
    fn from(w: Tensor<2>) -> Self {
        Weight::Float(w)
    }
}

impl Weight {
    /// `[K, N]`.
    pub fn dims(&self) -> [usize; 2] {
        match self {
            Weight::Float(w) => w.dims(),
            Weight::Q8(q, _) => q.dims(),
        }
    }

    /// The dtype the product's inputs and outputs are in.
    pub fn dtype(&self) -> DType {
        match self {
            Weight::Float(w) => w.dtype(),
            Weight::Q8(_, dtype) => *dtype,
        }
    }

    fn device(&self) -> Device {
        match self {
            Weight::Float(w) => w.device(),
            Weight::Q8(q, _) => q.scales.device(),
        }
    }

    /// Bytes it takes on its device.
    pub fn bytes(&self) -> u64 {
        match self {
            Weight::Float(w) => (w.dims().iter().product::<usize>() * w.dtype().size()) as u64,
            Weight::Q8(q, _) => q.bytes(),
        }
    }

    /// The weight as a float tensor in its compute dtype (8-bit weights dequantized).
    pub fn to_float(&self) -> Tensor<2> {
        match self {
            Weight::Float(w) => w.clone(),
            Weight::Q8(q, dtype) => super::q8::dequantize(q, *dtype),
        }
    }
}

/// The input of a product.
#[derive(Clone, Debug)]
pub enum Input {
    /// Plain rows `[B, T, K]`.
    Rows(Tensor<3>),
    /// A gated unit's hidden `act(a) * b` from its input projection's partials `[parts, rows,
    /// 2K]` (`a` the first half of each row, `b` the second), in the weight's dtype.
    Gated(Tensor<3>, Act),
    /// `gelu(p)` from partials `[parts, rows, K]`, in the weight's dtype.
    Gelu(Tensor<3>),
}

impl Input {
    /// Number of rows and the inner width `K` of the product.
    fn rows_k(&self) -> (usize, usize) {
        match self {
            Input::Rows(x) => {
                let [b, t, k] = x.dims();
                (b * t, k)
            }
            Input::Gated(p, _) => (p.dims()[1], p.dims()[2] / 2),
            Input::Gelu(p) => (p.dims()[1], p.dims()[2]),
        }
    }

    /// The input as plain rows `[rows, K]` in `dtype`, with Burn's ops.
    pub fn materialize(self, dtype: DType) -> Tensor<2> {
        match self {
            Input::Rows(x) => {
                let [b, t, k] = x.dims();
                x.reshape([b * t, k])
            }
            Input::Gated(p, act) => {
                let g = sum_parts(p, dtype);
                let two_k = g.dims()[1];
                let k = two_k / 2;
                act.apply(g.clone().narrow(1, 0, k)) * g.narrow(1, k, k)
            }
            Input::Gelu(p) => burn::tensor::activation::gelu(sum_parts(p, dtype)),
        }
    }
}

/// Partials `[parts, rows, N]` (any float dtype) summed over `parts` in order, in `dtype`.
pub fn sum_parts(p: Tensor<3>, dtype: DType) -> Tensor<2> {
    let [parts, rows, n] = p.dims();
    let s = if parts == 1 { p.reshape([rows, n]) } else { p.sum_dim(0).reshape([rows, n]) };
    if s.dtype() == dtype { s } else { s.cast(dtype) }
}

/// `x W` by Burn's own `linear` (no bias).
pub fn reference(x: Tensor<3>, w: Tensor<2>) -> Tensor<3> {
    module::linear(x, w, None)
}

/// The product as partials `[1, rows, N]` in `W`'s dtype, by Burn's ops (8-bit weights
/// dequantized first).
pub fn partials_reference(input: Input, w: impl Into<Weight>) -> Tensor<3> {
    let w = w.into();
    let x = input.materialize(w.dtype());
    let [rows, k] = x.dims();
    let n = w.dims()[1];
    reference(x.reshape([1, rows, k]), w.to_float()).reshape([1, rows, n])
}

/// The product of `input` and `w` as partials `[parts, rows, N]`: f32 sums of `K` slices by the
/// kernel where [`can_launch`] says so, else [`partials_reference`] (`parts = 1`).
pub fn partials(input: Input, w: impl Into<Weight>) -> Tensor<3> {
    let w = w.into();
    if !launches(&input, &w) {
        return partials_reference(input, w);
    }
    let (code, act, x) = match input {
        Input::Rows(x) => {
            let [b, t, k] = x.dims();
            (0, 0, x.reshape([1, b * t, k]))
        }
        Input::Gated(p, act) => (1, act.code(), p),
        Input::Gelu(p) => (2, Act::Gelu.code(), p),
    };
    Tensor::from_dispatch(match w {
        Weight::Float(w) => {
            <Dispatch as MatvecBackend>::matvec_partials(x.into_dispatch(), w.into_dispatch(), code, act)
        }
        Weight::Q8(q, dtype) => <Dispatch as MatvecBackend>::matvec_q8_partials(
            x.into_dispatch(),
            q.values.into_dispatch(),
            q.scales.into_dispatch(),
            code,
            act,
            dtype,
        ),
    })
}

/// `x W` (`[B, T, K]` × `[K, N]` → `[B, T, N]`): the kernel and a summing launch where
/// [`uses_kernel`] says so, [`reference`] otherwise. What the unfused paths call.
pub fn linear(x: Tensor<3>, w: Tensor<2>) -> Tensor<3> {
    if uses_kernel(&x, &w) { launch(x, w) } else { reference(x, w) }
}

/// `x W` by the kernel wherever it can run ([`can_launch`]), whatever the size; [`reference`]
/// elsewhere.
pub fn launch(x: Tensor<3>, w: Tensor<2>) -> Tensor<3> {
    let [b, t, _] = x.dims();
    let n = w.dims()[1];
    let dtype = x.dtype();
    if !can_launch(&x, &w) {
        return reference(x, w);
    }
    let p = partials(Input::Rows(x), w);
    let summed: Tensor<2> = Tensor::from_dispatch(<Dispatch as MatvecBackend>::sum_partials(p.into_dispatch(), dtype));
    summed.reshape([b, t, n])
}

/// Whether [`linear`] takes the kernel: it can ([`can_launch`]), it is enabled ([`set_enabled`])
/// and the weight has at least [`MIN_WEIGHTS`] values (or what [`set_min_weights`] set).
pub fn uses_kernel(x: &Tensor<3>, w: &Tensor<2>) -> bool {
    let [k, n] = w.dims();
    k * n >= THRESHOLD.load(Ordering::Relaxed) && ENABLED.load(Ordering::Relaxed) && can_launch(x, w)
}

/// Whether the kernel can compute `x W` for plain rows `x` ([`launches`]).
pub fn can_launch(x: &Tensor<3>, w: &Tensor<2>) -> bool {
    launches(&Input::Rows(x.clone()), &Weight::Float(w.clone()))
}

/// Whether the kernel computes the product: everything on a CubeCL device without autodiff,
/// the weight f32 or f16, plain rows in the weight's dtype, 1..=[`MAX_ROWS`] rows, `K` matching
/// and nothing empty. A shape or dtype mismatch takes the reference, which reports it as Burn
/// does.
pub fn launches(input: &Input, w: &Weight) -> bool {
    let float = |t: DType| matches!(t, DType::F32 | DType::F16);
    let (rows, k) = input.rows_k();
    let [wk, n] = w.dims();
    let (tensor, dtype_ok) = match input {
        Input::Rows(x) => (x, x.dtype() == w.dtype()),
        Input::Gated(p, _) => (p, float(p.dtype()) && p.dims()[2] % 2 == 0),
        Input::Gelu(p) => (p, float(p.dtype())),
    };
    (1..=MAX_ROWS).contains(&rows)
        && k > 0
        && n > 0
        && wk == k
        && float(w.dtype())
        && dtype_ok
        && on_cube(tensor.device())
        && on_cube(w.device())
}

/// The matrix-vector products as a Burn backend extension. Only the CubeCL backend implements
/// them; the functions above never route another backend here.
#[backend_extension(Cube)]
pub trait MatvecBackend: Backend {
    /// Partials `[parts, rows, N]` (f32) of `input` times `w` `[K, N]`. `input` is plain rows
    /// `[1, rows, K]` (`code` 0, same dtype as `w`), or partials `[parts_in, rows, 2K]` of a
    /// gated unit (`code` 1, activation `act`) or `[parts_in, rows, K]` through GELU (`code` 2).
    fn matvec_partials(input: FloatTensor<Self>, w: FloatTensor<Self>, code: u32, act: u32) -> FloatTensor<Self>;

    /// [`matvec_partials`](Self::matvec_partials) with an 8-bit weight (`values`, `scales`, see
    /// [`Q8`]); hidden inputs are rounded to `dtype`, the model's.
    fn matvec_q8_partials(
        input: FloatTensor<Self>,
        values: IntTensor<Self>,
        scales: FloatTensor<Self>,
        code: u32,
        act: u32,
        dtype: DType,
    ) -> FloatTensor<Self>;

    /// Partials `[parts, rows, N]` summed over `parts`, as `[rows, N]` in `dtype`.
    fn sum_partials(p: FloatTensor<Self>, dtype: DType) -> FloatTensor<Self>;
}

impl MatvecBackend for Cube {
    fn matvec_partials(input: FloatTensor<Self>, w: FloatTensor<Self>, code: u32, act: u32) -> FloatTensor<Self> {
        cube::launch(input, w, code, act)
    }

    fn matvec_q8_partials(
        input: FloatTensor<Self>,
        values: IntTensor<Self>,
        scales: FloatTensor<Self>,
        code: u32,
        act: u32,
        dtype: DType,
    ) -> FloatTensor<Self> {
        cube::launch_q8(input, values, scales, code, act, dtype)
    }

    fn sum_partials(p: FloatTensor<Self>, dtype: DType) -> FloatTensor<Self> {
        cube::launch_sum(p, dtype)
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

    use crate::kernels::act::cube::apply_f32;

    /// Units of a cube; each takes `N` adjacent columns (a vector of 4 where `N` allows it).
    const UNITS: usize = 64;
    /// Rows of `W` per cube: one partial sum per `CHUNK` rows.
    pub(super) const CHUNK: usize = 256;
    /// Input rows a cube multiplies at once (more rows take more cubes).
    const ROWS_PER_CUBE: usize = 8;
    /// Units of the summing launch's cubes.
    const SUM_UNITS: usize = 256;

    /// The input value of row `row`, column `kk` (< k), in f32, rounded to the weight's dtype
    /// `W` where the model computes it in that dtype: a gated unit's `act(a) * b` (`code` 1) or
    /// `gelu(a)` (`code` 2) of summed partials.
    #[cube]
    fn hidden_value<I: Float, W: Float>(
        input: &[I],
        row: usize,
        kk: usize,
        rows: usize,
        k: usize,
        parts_in: usize,
        #[comptime] code: u32,
        #[comptime] act: u32,
    ) -> f32 {
        let mut a = 0.0f32;
        let mut b = 0.0f32;
        if comptime!(code == 1) {
            for p in 0..parts_in {
                let base = (p * rows + row) * 2 * k;
                a += f32::cast_from(input[base + kk]);
                b += f32::cast_from(input[base + k + kk]);
            }
        } else {
            for p in 0..parts_in {
                a += f32::cast_from(input[(p * rows + row) * k + kk]);
            }
        }
        let a = f32::cast_from(W::cast_from(a));
        let g = f32::cast_from(W::cast_from(apply_f32(a, act)));
        let mut v = g;
        if comptime!(code == 1) {
            v = f32::cast_from(W::cast_from(g * f32::cast_from(W::cast_from(b))));
        }
        v
    }

    /// Cube (column tile, K chunk, row group), `N` adjacent columns per unit:
    /// out[chunk][row][col] = Σ x[row][k] W[k][col] over the chunk's `k`, for the group's rows.
    /// `w` and `out` are read and written as vectors of `N` (`n` counts vectors). Plain rows are
    /// read where they lie (every unit reads the same value: a broadcast); a hidden input is
    /// built once per cube in shared memory. No bounds checks: the launch keeps every index in
    /// range.
    #[cube(launch_unchecked)]
    fn matvec_parts<I: Float, W: Float, N: Size>(
        input: &[I],
        w: &[Vector<W, N>],
        out: &mut [Vector<f32, N>],
        rows: u32,
        k: u32,
        n: u32,
        parts_in: u32,
        #[comptime] code: u32,
        #[comptime] act: u32,
        #[comptime] group: usize,
        #[comptime] chunk: usize,
        #[define(I, W)] _dtypes: [ElemType; 2],
    ) {
        let units = CUBE_DIM_X as usize;
        let unit = UNIT_POS_X as usize;
        let col = CUBE_POS_X as usize * CUBE_DIM_X as usize + unit;
        let part = CUBE_POS_Y as usize;
        let row0 = CUBE_POS_Z as usize * group;
        let rows = rows as usize;
        let k = k as usize;
        let n = n as usize;
        let start = part * chunk;
        let mut len = k - start;
        if len > chunk {
            len = chunk;
        }
        let mut acc = Array::<Vector<f32, N>>::new(group);
        #[unroll]
        for r in 0..group {
            acc[r] = Vector::<f32, N>::zeroed();
        }
        if comptime!(code == 0 && group == 1) {
            // One row: a plain accumulator (a software Vulkan keeps local arrays in memory).
            if col < n {
                let mut one = Vector::<f32, N>::zeroed();
                for i in 0..len {
                    let wv = Vector::<f32, N>::cast_from(w[(start + i) * n + col]);
                    let x = f32::cast_from(input[row0 * k + start + i]);
                    one += Vector::<f32, N>::new(x) * wv;
                }
                acc[0] = one;
            }
        } else if comptime!(code == 0) {
            if col < n {
                for i in 0..len {
                    let wv = Vector::<f32, N>::cast_from(w[(start + i) * n + col]);
                    #[unroll]
                    for r in 0..group {
                        let mut row = row0 + r;
                        if row >= rows {
                            row = rows - 1;
                        }
                        let x = f32::cast_from(input[row * k + start + i]);
                        acc[r] += Vector::<f32, N>::new(x) * wv;
                    }
                }
            }
        } else {
            // The chunk's hidden input, chunk / units values per unit and row.
            let mut xs = Shared::<[f32]>::new_slice(group * chunk);
            #[unroll]
            for r in 0..group {
                let row = row0 + r;
                let mut i = unit;
                while i < chunk {
                    let mut v = 0.0f32;
                    if i < len && row < rows {
                        v = hidden_value::<I, W>(input, row, start + i, rows, k, parts_in as usize, code, act);
                    }
                    xs[r * chunk + i] = v;
                    i += units;
                }
            }
            sync_cube();
            if col < n {
                for i in 0..len {
                    let wv = Vector::<f32, N>::cast_from(w[(start + i) * n + col]);
                    #[unroll]
                    for r in 0..group {
                        acc[r] += Vector::<f32, N>::new(xs[r * chunk + i]) * wv;
                    }
                }
            }
        }
        if col < n {
            #[unroll]
            for r in 0..group {
                let row = row0 + r;
                if row < rows {
                    out[(part * rows + row) * n + col] = acc[r];
                }
            }
        }
    }

    /// Four signed bytes of `packed` (lowest first), times `scale`, as a vector of 4.
    #[cube]
    fn unpack4<N: Size>(packed: u32, scale: Vector<f32, N>) -> Vector<f32, N> {
        let mut v = Vector::<f32, N>::zeroed();
        #[unroll]
        for j in 0..4usize {
            let b = (packed >> comptime!(8 * j as u32)) & 255u32;
            let mut x = f32::cast_from(b);
            if b >= 128u32 {
                x -= 256.0f32;
            }
            v.insert(j, x);
        }
        v * scale
    }

    /// [`matvec_parts`] with an 8-bit weight: `values` `[K, N / 4]` packed bytes, `scales`
    /// `[ceil(K / BLOCK), N]` read as vectors of 4 columns (`n` counts vectors); hidden inputs
    /// rounded to `F`, the model's dtype. No bounds checks: the launch keeps every index in range.
    #[cube(launch_unchecked)]
    fn matvec_q8_parts<I: Float, F: Float, Q: Int, N: Size>(
        input: &[I],
        values: &[Q],
        scales: &[Vector<f32, N>],
        out: &mut [Vector<f32, N>],
        rows: u32,
        k: u32,
        n: u32,
        parts_in: u32,
        #[comptime] code: u32,
        #[comptime] act: u32,
        #[comptime] group: usize,
        #[comptime] chunk: usize,
        #[comptime] block: usize,
        #[define(I, F, Q)] _dtypes: [ElemType; 3],
    ) {
        let units = CUBE_DIM_X as usize;
        let unit = UNIT_POS_X as usize;
        let col = CUBE_POS_X as usize * CUBE_DIM_X as usize + unit;
        let part = CUBE_POS_Y as usize;
        let row0 = CUBE_POS_Z as usize * group;
        let rows = rows as usize;
        let k = k as usize;
        let n = n as usize;
        let start = part * chunk;
        let mut len = k - start;
        if len > chunk {
            len = chunk;
        }
        let mut acc = Array::<Vector<f32, N>>::new(group);
        #[unroll]
        for r in 0..group {
            acc[r] = Vector::<f32, N>::zeroed();
        }
        let mut xs = Shared::<[f32]>::new_slice(group * chunk);
        #[unroll]
        for r in 0..group {
            let row = row0 + r;
            let mut i = unit;
            while i < chunk {
                let mut v = 0.0f32;
                if i < len && row < rows {
                    if comptime!(code == 0) {
                        v = f32::cast_from(input[row * k + start + i]);
                    } else {
                        v = hidden_value::<I, F>(input, row, start + i, rows, k, parts_in as usize, code, act);
                    }
                }
                xs[r * chunk + i] = v;
                i += units;
            }
        }
        sync_cube();
        if col < n {
            let mut scale = Vector::<f32, N>::zeroed();
            for i in 0..len {
                if i % block == 0 {
                    scale = scales[((start + i) / block) * n + col];
                }
                let wv = unpack4::<N>(u32::cast_from(values[(start + i) * n + col]), scale);
                #[unroll]
                for r in 0..group {
                    acc[r] += Vector::<f32, N>::new(xs[r * chunk + i]) * wv;
                }
            }
            #[unroll]
            for r in 0..group {
                let row = row0 + r;
                if row < rows {
                    out[(part * rows + row) * n + col] = acc[r];
                }
            }
        }
    }

    /// out[i] = Σ_p partial[p][i], in order, cast to the output's dtype.
    #[cube(launch)]
    fn sum_chunks<P: Float, F: Float>(
        partial: &[P],
        out: &mut [F],
        parts: u32,
        len: u32,
        #[define(P, F)] _dtypes: [ElemType; 2],
    ) {
        let i = CUBE_POS * SUM_UNITS + UNIT_POS as usize;
        let len = len as usize;
        if i < len {
            let mut acc = 0.0f32;
            for p in 0..parts as usize {
                acc += f32::cast_from(partial[p * len + i]);
            }
            out[i] = F::cast_from(acc);
        }
    }

    pub(super) fn launch(input: CubeTensor, w: CubeTensor, code: u32, act: u32) -> CubeTensor {
        let input = into_contiguous(input);
        let w = into_contiguous(w);
        let client = w.client.clone();
        let dims = input.meta.shape().clone();
        let [k, n] = [w.meta.shape()[0], w.meta.shape()[1]];
        let (parts_in, rows) = (dims[0], dims[1]);
        let (units, chunk) = (UNITS, CHUNK);
        let parts = k.div_ceil(chunk);
        let vector = if n % 4 == 0 { 4 } else { 1 };
        let tiles = (n / vector).div_ceil(units);
        let group = rows.min(ROWS_PER_CUBE);
        let groups = rows.div_ceil(group);

        let out = empty_device_dtype(client.clone(), w.device.clone(), Shape::new([parts, rows, n]), DType::F32);
        let dtypes = [dtype_to_storage_type(input.dtype), dtype_to_storage_type(w.dtype)];
        // SAFETY: every index stays in range: columns are guarded by `col < n / vector`, rows are
        // clamped to `rows - 1` (their sums are not written), K by the chunk's length, and the
        // hidden input by `i < len`; the buffers have the shapes given.
        unsafe {
            matvec_parts::launch_unchecked(
                &client,
                CubeCount::Static(tiles as u32, parts as u32, groups as u32),
                CubeDim::new_1d(units as u32),
                vector,
                input.into_buffer_arg(),
                w.into_buffer_arg(),
                out.clone().into_buffer_arg(),
                rows as u32,
                k as u32,
                (n / vector) as u32,
                parts_in as u32,
                code,
                act,
                group,
                chunk,
                dtypes,
            );
        }
        out
    }

    pub(super) fn launch_q8(
        input: CubeTensor,
        values: CubeTensor,
        scales: CubeTensor,
        code: u32,
        act: u32,
        dtype: DType,
    ) -> CubeTensor {
        let input = into_contiguous(input);
        let values = into_contiguous(values);
        let scales = into_contiguous(scales);
        let client = values.client.clone();
        let dims = input.meta.shape().clone();
        let k = values.meta.shape()[0];
        let n = values.meta.shape()[1] * 4;
        let (parts_in, rows) = (dims[0], dims[1]);
        let (units, chunk) = (UNITS, CHUNK);
        let parts = k.div_ceil(chunk);
        let tiles = (n / 4).div_ceil(units);
        let group = rows.min(ROWS_PER_CUBE);
        let groups = rows.div_ceil(group);
        let out = empty_device_dtype(client.clone(), values.device.clone(), Shape::new([parts, rows, n]), DType::F32);
        let dtypes =
            [dtype_to_storage_type(input.dtype), dtype_to_storage_type(dtype), dtype_to_storage_type(values.dtype)];
        // SAFETY: as for `matvec_parts`; the scales' blocks divide the chunk, so a chunk's rows
        // stay within its blocks.
        unsafe {
            matvec_q8_parts::launch_unchecked(
                &client,
                CubeCount::Static(tiles as u32, parts as u32, groups as u32),
                CubeDim::new_1d(units as u32),
                4,
                input.into_buffer_arg(),
                values.into_buffer_arg(),
                scales.into_buffer_arg(),
                out.clone().into_buffer_arg(),
                rows as u32,
                k as u32,
                (n / 4) as u32,
                parts_in as u32,
                code,
                act,
                group,
                chunk,
                crate::kernels::q8::BLOCK,
                dtypes,
            );
        }
        out
    }

    pub(super) fn launch_sum(p: CubeTensor, dtype: DType) -> CubeTensor {
        let p = into_contiguous(p);
        let client = p.client.clone();
        let dims = p.meta.shape().clone();
        let (parts, rows, n) = (dims[0], dims[1], dims[2]);
        let len = rows * n;
        let out = empty_device_dtype(client.clone(), p.device.clone(), Shape::new([rows, n]), dtype);
        sum_chunks::launch(
            &client,
            CubeCount::Static(len.div_ceil(SUM_UNITS) as u32, 1, 1),
            CubeDim::new_1d(SUM_UNITS as u32),
            p.clone().into_buffer_arg(),
            out.clone().into_buffer_arg(),
            parts as u32,
            len as u32,
            [dtype_to_storage_type(p.dtype), dtype_to_storage_type(dtype)],
        );
        out
    }
}
