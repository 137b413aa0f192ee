//! Rotary position embedding, as the reference applies it: angles in f32, pairs interleaved
//! (`rope`) or split in halves (`rope_concat`), each stream at its own position offset.

use burn::prelude::*;
use burn::tensor::DType;

/// Cosine and sine tables `[B, 1, T, D/2]` for streams at `offsets`, `T` steps each.
pub struct RopeTables {
    cos: Tensor<4>,
    sin: Tensor<4>,
}

impl RopeTables {
    pub fn new(offsets: &[usize], t: usize, head_dim: usize, max_period: f64, device: &Device) -> Self {
        let half = head_dim / 2;
        let scale = (-(max_period.ln()) * 2.0 / head_dim as f64) as f32;
        let freqs: Vec<f32> = (0..half).map(|i| (i as f32 * scale).exp()).collect();
        let b = offsets.len();
        let mut cos = Vec::with_capacity(b * t * half);
        let mut sin = Vec::with_capacity(b * t * half);
        for &off in offsets {
            for step in 0..t {
                let ts = (off + step) as f32;
                for f in &freqs {
                    let angle = (f * ts) as f64;
                    cos.push(angle.cos() as f32);
                    sin.push(angle.sin() as f32);
                }
            }
        }
        let shape = [b, 1, t, half];
        Self {
            cos: crate::backend::floats(cos, shape, device, DType::F32),
            sin: crate::backend::floats(sin, shape, device, DType::F32),
        }
    }

    /// The tables as `[B, T, D/2]` rows, for the fused attention step.
    pub fn into_rope(self, interleave: bool) -> crate::kernels::attention::Rope {
        let [b, _, t, half] = self.cos.dims();
        crate::kernels::attention::Rope {
            cos: self.cos.reshape([b, t, half]),
            sin: self.sin.reshape([b, t, half]),
            interleave,
        }
    }

    /// Rotates `x` `[B, H, T, D]`.
    pub fn apply(&self, x: Tensor<4>, interleave: bool) -> Tensor<4> {
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
        let out_re = re.clone() * self.cos.clone() - im.clone() * self.sin.clone();
        let out_im = re * self.sin.clone() + im * self.cos.clone();
        let y = if interleave {
            Tensor::cat(vec![out_re.reshape([b, h, t, half, 1]), out_im.reshape([b, h, t, half, 1])], 4)
                .reshape([b, h, t, d])
        } else {
            Tensor::cat(vec![out_re, out_im], 3)
        };
        if dtype == DType::F32 { y } else { y.cast(dtype) }
    }
}
