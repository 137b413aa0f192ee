//! 8-bit weights (`--dtype q8`): a weight `[K, N]` (input-major, as kokichi holds products'
//! weights) stored as signed 8-bit values, four adjacent columns packed in one `u32`
//! (`[K, N / 4]`, the first column in the lowest byte), and one f32 scale per column and block
//! of [`BLOCK`] rows (`[ceil(K / BLOCK), N]`): `w[k][n] = q[k][n] * scale[k / BLOCK][n]`, the
//! scale the block's largest magnitude over 127 (symmetric, round to nearest).
//!
//! Why: a step reads every weight once, so its time on a GPU is the weights' bytes; 8 bits
//! halve f16's, and moshiko's 7.7 G values then fit in 8 GB. The product kernel
//! (`matvec.rs`) reads the packed values and scales directly; the embedding gather
//! (`residual.rs`) reads rows of a quantized table the same way.
//!
//! - [`quantize`]: host values to the packed form (at load, or once by `kokichi quantize`).
//! - [`dequantize`]: the packed form back to a float tensor with Burn's ops: the reference the
//!   kernels are tested against, and what the flex CPU backend multiplies by.

use burn::prelude::*;
use burn::tensor::{DType, TensorData};
use rayon::prelude::*;

use crate::error::{Error, Result};

/// Rows of a weight that share one scale per column.
pub const BLOCK: usize = 128;

/// A quantized weight `[K, N]` on the device.
#[derive(Clone, Debug)]
pub struct Q8 {
    /// `[K, N / 4]` packed signed bytes (a 32-bit int tensor holding their bits).
    pub values: Tensor<2, Int>,
    /// `[ceil(K / BLOCK), N]` f32 scales.
    pub scales: Tensor<2>,
}

impl Q8 {
    /// The weight's logical shape `[K, N]`.
    pub fn dims(&self) -> [usize; 2] {
        let [k, n4] = self.values.dims();
        [k, n4 * 4]
    }

    /// Bytes it takes on the device.
    pub fn bytes(&self) -> u64 {
        let [k, n] = self.dims();
        (k * n + self.scales.dims().iter().product::<usize>() * 4) as u64
    }

    /// Uploads host packed values and scales ([`quantize`]'s output) for a `[k, n]` weight.
    pub fn upload(values: Vec<u32>, scales: Vec<f32>, k: usize, n: usize, device: &Device) -> Result<Q8> {
        check_shape(k, n)?;
        let blocks = k.div_ceil(BLOCK);
        if values.len() != k * n / 4 || scales.len() != blocks * n {
            return Err(Error::input(format!(
                "8-bit weight [{k}, {n}]: {} packed values and {} scales, expected {} and {}",
                values.len(),
                scales.len(),
                k * n / 4,
                blocks * n
            )));
        }
        crate::cost::count_upload(values.len() * 4 + scales.len() * 4);
        // Bit patterns as i32, the device's int type.
        let ints: Vec<i32> = values.into_iter().map(|v| v as i32).collect();
        let values = Tensor::from_data(TensorData::new(ints, [k, n / 4]), (device, DType::I32));
        let scales = Tensor::from_data(TensorData::new(scales, [blocks, n]), (device, DType::F32));
        Ok(Q8 { values, scales })
    }
}

fn check_shape(k: usize, n: usize) -> Result<()> {
    if k == 0 || n == 0 || n % 4 != 0 {
        return Err(Error::input(format!("an 8-bit weight needs a width that is a multiple of 4, got [{k}, {n}]")));
    }
    Ok(())
}

/// Quantizes host values `w` `[k, n]` (row-major): the packed values `[k, n / 4]` and scales
/// `[ceil(k / BLOCK), n]`.
pub fn quantize(w: &[f32], k: usize, n: usize) -> Result<(Vec<u32>, Vec<f32>)> {
    check_shape(k, n)?;
    if w.len() != k * n {
        return Err(Error::input(format!("{} values for an 8-bit weight [{k}, {n}]", w.len())));
    }
    let blocks = k.div_ceil(BLOCK);
    // Scales, block by block, in parallel over blocks.
    let scales: Vec<f32> = (0..blocks)
        .into_par_iter()
        .flat_map_iter(|b| {
            let rows = &w[b * BLOCK * n..((b + 1) * BLOCK).min(k) * n];
            (0..n).map(move |j| rows.chunks_exact(n).map(|r| r[j].abs()).fold(0.0f32, f32::max) / 127.0)
        })
        .collect();
    let values: Vec<u32> = w
        .par_chunks_exact(n)
        .enumerate()
        .flat_map_iter(|(row, r)| {
            let s = &scales[(row / BLOCK) * n..(row / BLOCK + 1) * n];
            r.chunks_exact(4).enumerate().map(move |(q, four)| {
                four.iter().enumerate().fold(0u32, |packed, (i, &v)| {
                    let scale = s[q * 4 + i];
                    let b = if scale > 0.0 { (v / scale).round().clamp(-127.0, 127.0) as i8 } else { 0 };
                    packed | ((b as u8 as u32) << (8 * i))
                })
            })
        })
        .collect();
    Ok((values, scales))
}

/// The weight `[K, N]` in `dtype`, with Burn's ops: bytes unpacked and sign-extended, scaled
/// per column and block.
pub fn dequantize(q: &Q8, dtype: DType) -> Tensor<2> {
    let [k, n] = q.dims();
    let w = unpack(&q.values, k, n);
    let blocks = k.div_ceil(BLOCK);
    let scales = q.scales.clone().reshape([blocks, 1, n]).expand([blocks, BLOCK, n]).reshape([blocks * BLOCK, n]);
    let scales = scales.narrow(0, 0, k);
    let w = w * scales;
    if w.dtype() == dtype { w } else { w.cast(dtype) }
}

/// Rows `idx` (`[n]`) of a quantized matrix, dequantized with Burn's ops: `[n, N]` in `dtype`.
pub fn rows(q: &Q8, idx: Tensor<1, Int>, dtype: DType) -> Tensor<2> {
    let [n] = idx.dims();
    let values = q.values.clone().select(0, idx.clone());
    let blocks = idx.div_scalar(BLOCK as i64);
    let scales = q.scales.clone().select(0, blocks);
    let rows = Q8 { values, scales };
    // Each row its own block: dequantize as n blocks of one row.
    let [_, width] = rows.dims();
    let w = unpack(&rows.values, n, width);
    let w = w * rows.scales;
    if w.dtype() == dtype { w } else { w.cast(dtype) }
}

/// Packed values `[k, n / 4]` as signed floats `[k, n]`, with Burn's ops.
fn unpack(packed: &Tensor<2, Int>, k: usize, n: usize) -> Tensor<2> {
    // Byte i of each value, as a signed number: ((v >> 8i) & 255), minus 256 from 128 on.
    let bytes: Vec<Tensor<3>> = (0..4)
        .map(|i| {
            let b = packed.clone().bitwise_right_shift_scalar(8 * i as i64).bitwise_and_scalar(255);
            let signed = b.clone() - b.greater_equal_elem(128).int() * 256;
            signed.float().reshape([k, n / 4, 1])
        })
        .collect();
    Tensor::cat(bytes, 2).reshape([k, n])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantized_values_come_back_within_half_a_step() {
        let (k, n) = (300, 8);
        let w: Vec<f32> = (0..k * n).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013 * (1 + i % 3) as f32).collect();
        let (values, scales) = quantize(&w, k, n).unwrap();
        assert_eq!((values.len(), scales.len()), (k * n / 4, 3 * n));
        let device = Device::flex();
        let q = Q8::upload(values, scales.clone(), k, n, &device).unwrap();
        let back = crate::backend::read_floats(dequantize(&q, DType::F32)).unwrap();
        for (i, (a, b)) in w.iter().zip(&back).enumerate() {
            let step = scales[(i / n / BLOCK) * n + i % n];
            assert!((a - b).abs() <= step * 0.5 + 1e-7, "at {i}: {a} came back {b} (step {step})");
        }
    }

    #[test]
    fn widths_that_do_not_pack_are_refused() {
        assert!(quantize(&[0.0; 6], 2, 3).is_err());
        assert!(quantize(&[0.0; 8], 1, 4).is_err());
    }
}
