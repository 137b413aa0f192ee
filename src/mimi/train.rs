//! The codec's training forward pass: the same modules as inference, with a straight-through
//! residual quantizer (codebook and commitment losses, as in VQ-VAE) so gradients reach the
//! encoder and the codebooks learn.

use burn::prelude::*;
use burn::tensor::module::linear;

use super::Mimi;
use super::quantizer::Rvq;
use crate::error::Result;

/// Weight of the commitment term against the codebook term.
const COMMIT: f64 = 0.25;

impl Rvq {
    /// Straight-through quantization of `x` `[B, T, C]` with the first `n` codebooks.
    /// Returns the quantized latent `[B, T, C]` and the VQ loss.
    fn train_forward(&self, x: Tensor<3>, n: usize) -> (Tensor<3>, Tensor<1>) {
        let [b, t, _] = x.dims();
        let z = linear(x, self.input_proj.val(), None);
        let d = z.dims()[2];
        let mut residual = z.clone();
        let mut sum: Option<Tensor<3>> = None;
        let mut loss: Option<Tensor<1>> = None;
        for cb in self.codebooks.iter().take(n) {
            let c = cb.val();
            let r = residual.clone().detach();
            let c2 = c.clone().detach().square().sum_dim(1);
            let dots = c.clone().detach().matmul(r.clone().reshape([b * t, d]).transpose());
            let idx = (c2 - dots.mul_scalar(2.0)).argmin(0).reshape([b * t]);
            let q = c.select(0, idx).reshape([b, t, d]);
            let codebook = (q.clone() - r).square().mean();
            let commit = (residual.clone() - q.clone().detach()).square().mean().mul_scalar(COMMIT);
            let l = codebook + commit;
            loss = Some(match loss {
                Some(acc) => acc + l,
                None => l,
            });
            residual = residual - q.clone().detach();
            sum = Some(match sum {
                Some(s) => s + q,
                None => q,
            });
        }
        let q = sum.unwrap_or_else(|| z.clone().zeros_like());
        // Straight-through: the decoder sees the quantized value, the encoder gets its gradient.
        let st = z.clone() + (q - z).detach();
        let out = linear(st, self.output_proj.val(), None);
        (out, loss.unwrap_or_else(|| Tensor::zeros([1], &self.input_proj.val().device())))
    }
}

impl Mimi {
    /// Reconstructs whole-frame audio `[B, T]` through all active codebooks, returning the
    /// reconstruction `[B, T]` and the quantizer loss.
    pub fn train_forward(&self, pcm: Tensor<2>) -> Result<(Tensor<2>, Tensor<1>)> {
        let [b, t] = pcm.dims();
        let emb = self.encoder.forward(&mut self.encoder.init_state(b), pcm.reshape([b, 1, t]))?;
        let emb = self.encoder_transformer_forward(emb)?;
        let latent = match &self.downsample {
            Some(d) => d.forward(&mut d.init_state(b), emb)?,
            None => emb,
        };
        let x = latent.swap_dims(1, 2);
        let n = self.num_codebooks;
        let n_first = self.quantizer.first.codebooks.len().min(n);
        let (mut q, mut loss) = self.quantizer.first.train_forward(x.clone(), n_first);
        if n > n_first {
            let (q2, l2) = self.quantizer.rest.train_forward(x, n - n_first);
            q = q + q2;
            loss = loss + l2;
        }
        let q = q.swap_dims(1, 2);
        let up = match &self.upsample {
            Some(u) => u.forward(&mut u.init_state(b), q)?,
            None => q,
        };
        let dec = self.decoder_transformer_forward(up)?;
        let y = self.decoder.forward(&mut self.decoder.init_state(b), dec)?;
        let [_, _, ty] = y.dims();
        Ok((y.reshape([b, ty]).narrow(1, 0, t), loss))
    }
}
