//! Embedding rows gathered by token, as a step's inputs need them: the tokens are indices on
//! the device (uploaded once a step, or picked by the step itself), and the gathering happens in
//! the launch that uses the rows (`residual.rs`'s [`Base::Gather`](super::residual::Base)). Here
//! are where a batch's indices lie ([`Column`]) and the plain-Burn reference of a gather.

use burn::prelude::*;

use super::matvec::Weight;

/// Where a batch's indices lie in an index tensor: row `b`'s at `offset + b * stride`.
#[derive(Clone, Copy, Debug)]
pub struct Column {
    pub offset: usize,
    pub stride: usize,
}

/// `x + table[idx]` for `rows` rows (`x` `[rows, d]`, or nothing when `None`; a negative index
/// adds nothing), with Burn's ops, for a float or 8-bit table.
pub fn reference(table: &Weight, idx: &Tensor<2, Int>, column: Column, rows: usize, x: Option<Tensor<2>>) -> Tensor<2> {
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
