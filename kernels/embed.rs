//! Embedding rows added into a step's input: `out[b] = x[b] + table[idx[offset + b * stride]]`,
//! a negative index adding nothing (Moshi's "no input" token), in the table's dtype.
//!
//! Why: the tokens of a step are indices on the device (uploaded once, or picked by the step
//! itself), and as Burn ops each lookup is a contiguous copy of the index column, a select and
//! an add; here it is one launch per table, reading the index where it lies.
//!
//! - [`reference`]: Burn's `select` and `add` (indices read back on the host to find "no input").
//! - [`gather_add`]: picks one of the two per call.

use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Backend, Cube, Dispatch, backend_extension};
use burn::prelude::*;
use burn::tensor::DType;

use super::matvec::Weight;
use super::on_cube;

/// Where a batch's indices lie in an index tensor: row `b`'s at `offset + b * stride`.
#[derive(Clone, Copy, Debug)]
pub struct Column {
    pub offset: usize,
    pub stride: usize,
}

/// `x + table[idx]` for `rows` rows (`x` `[rows, d]`, or zeros when `None`).
pub fn gather_add(table: Tensor<2>, idx: &Tensor<2, Int>, column: Column, rows: usize, x: Option<Tensor<2>>) -> Tensor<2> {
    if !uses_kernel(&table, idx, column, rows, x.as_ref()) {
        return reference(table, idx, column, rows, x);
    }
    let d = table.dims()[1];
    let has_x = x.is_some();
    let x = x.unwrap_or_else(|| table.clone());
    Tensor::from_dispatch(<Dispatch as EmbedBackend>::gather_add(
        table.into_dispatch(),
        idx.clone().into_dispatch(),
        x.into_dispatch(),
        column.offset as u32,
        column.stride as u32,
        rows as u32,
        d as u32,
        has_x,
    ))
}

/// Whether [`gather_add`] launches the kernel.
pub fn uses_kernel(table: &Tensor<2>, idx: &Tensor<2, Int>, column: Column, rows: usize, x: Option<&Tensor<2>>) -> bool {
    let n: usize = idx.dims().iter().product();
    let d = table.dims()[1];
    matches!(table.dtype(), DType::F32 | DType::F16)
        && rows > 0
        && d > 0
        && column.offset + (rows - 1) * column.stride < n
        && x.is_none_or(|x| x.dims() == [rows, d] && x.dtype() == table.dtype())
        && on_cube(table.device())
        && on_cube(idx.device())
}

/// [`gather_add`] with Burn's ops.
pub fn reference(table: Tensor<2>, idx: &Tensor<2, Int>, column: Column, rows: usize, x: Option<Tensor<2>>) -> Tensor<2> {
    reference_of(&Weight::Float(table), idx, column, rows, x)
}

/// [`reference`] of a float or 8-bit table.
pub fn reference_of(table: &Weight, idx: &Tensor<2, Int>, column: Column, rows: usize, x: Option<Tensor<2>>) -> Tensor<2> {
    let device = idx.device();
    let [_, d] = table.dims();
    let flat = idx.clone().reshape([-1]);
    let picks: Vec<i64> = (0..rows).map(|b| (column.offset + b * column.stride) as i64).collect();
    let col = flat.select(0, crate::backend::ints(picks, [rows], &device));
    // "No input" rows (negative indices) add zeros: index 0, then masked.
    let negative = col.clone().lower_elem(0);
    let rows_of = match table {
        Weight::Float(t) => t.clone().select(0, col.clamp_min(0)),
        Weight::Q8(q, dtype) => super::q8::rows(q, col.clamp_min(0), *dtype),
    };
    let rows_of = rows_of.mask_fill(negative.reshape([rows, 1]).expand([rows, d]), 0.0);
    match x {
        Some(x) => x + rows_of,
        None => rows_of,
    }
}

/// The gather as a Burn backend extension (CubeCL only).
#[backend_extension(Cube)]
pub trait EmbedBackend: Backend {
    #[allow(clippy::too_many_arguments)]
    fn gather_add(
        table: FloatTensor<Self>,
        idx: IntTensor<Self>,
        x: FloatTensor<Self>,
        offset: u32,
        stride: u32,
        rows: u32,
        d: u32,
        has_x: bool,
    ) -> FloatTensor<Self>;
}

impl EmbedBackend for Cube {
    fn gather_add(
        table: FloatTensor<Self>,
        idx: IntTensor<Self>,
        x: FloatTensor<Self>,
        offset: u32,
        stride: u32,
        rows: u32,
        d: u32,
        has_x: bool,
    ) -> FloatTensor<Self> {
        cube::launch(table, idx, x, offset, stride, rows, d, has_x)
    }
}

mod cube {
    use burn::backend::cubecl::dtype_to_storage_type;
    use burn::tensor::Shape;
    use burn_cubecl::kernel::into_contiguous;
    use burn_cubecl::ops::numeric::empty_device_dtype;
    use burn_cubecl::tensor::CubeTensor;
    use cubecl::prelude::*;

    const UNITS: usize = 256;

    #[cube(launch)]
    fn gather_add_rows<F: Float, I: Int>(
        table: &[F],
        idx: &[I],
        x: &[F],
        out: &mut [F],
        offset: u32,
        stride: u32,
        rows: u32,
        d: u32,
        #[comptime] has_x: bool,
        #[define(F, I)] _dtypes: [ElemType; 2],
    ) {
        let i = ABSOLUTE_POS;
        let d = d as usize;
        if i >= rows as usize * d {
            terminate!();
        }
        let b = i / d;
        let j = i % d;
        let t = i32::cast_from(idx[offset as usize + b * stride as usize]);
        let mut v = 0.0f32;
        if t >= 0 {
            v = f32::cast_from(table[t as usize * d + j]);
        }
        if has_x {
            out[i] = F::cast_from(x[i]) + F::cast_from(v);
        } else {
            out[i] = F::cast_from(v);
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn launch(
        table: CubeTensor,
        idx: CubeTensor,
        x: CubeTensor,
        offset: u32,
        stride: u32,
        rows: u32,
        d: u32,
        has_x: bool,
    ) -> CubeTensor {
        let table = into_contiguous(table);
        let idx = into_contiguous(idx);
        let x = into_contiguous(x);
        let client = table.client.clone();
        let out = empty_device_dtype(
            client.clone(),
            table.device.clone(),
            Shape::new([rows as usize, d as usize]),
            table.dtype,
        );
        let n = rows as usize * d as usize;
        let dtypes = [dtype_to_storage_type(table.dtype), dtype_to_storage_type(idx.dtype)];
        gather_add_rows::launch(
            &client,
            CubeCount::Static(n.div_ceil(UNITS) as u32, 1, 1),
            CubeDim::new_1d(UNITS as u32),
            table.into_buffer_arg(),
            idx.into_buffer_arg(),
            x.into_buffer_arg(),
            out.clone().into_buffer_arg(),
            offset,
            stride,
            rows,
            d,
            has_x,
            dtypes,
        );
        out
    }
}
