//! Split residual vector quantizer: `rvq_first` (semantic) and `rvq_rest` (acoustic) both
//! quantize the same latent; their decodings are summed. Centroids are
//! `embedding_sum / clamp(cluster_usage, 1e-5)`, as the reference derives them.

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::module::linear;

use super::config::QuantizerConfig;
use crate::error::{Error, Result};
use crate::kernels::rvq;
use crate::weights::Weights;

/// One residual VQ with its 1x1 projections.
#[derive(Module, Debug)]
pub struct Rvq {
    /// `[input_dim, dim]` (input-major).
    pub input_proj: Param<Tensor<2>>,
    /// `[dim, output_dim]`.
    pub output_proj: Param<Tensor<2>>,
    /// Centroids `[bins, dim]`, one per level.
    pub codebooks: Vec<Param<Tensor<2>>>,
}

impl Rvq {
    /// The weights with the levels' centroids stacked in one tensor.
    fn stacked(&self) -> rvq::Quantizer {
        rvq::Quantizer {
            in_proj: self.input_proj.val(),
            out_proj: self.output_proj.val(),
            books: Tensor::cat(self.codebooks.iter().map(|c| c.val()).collect(), 0),
            levels: self.codebooks.len(),
        }
    }

    fn load(w: &mut dyn Weights, prefix: &str, cfg: &QuantizerConfig, n_q: usize) -> Result<Self> {
        let d = cfg.dimension;
        let input_proj =
            w.linear(&format!("{prefix}.input_proj.weight"), &[d, cfg.input_dimension, 1], d, cfg.input_dimension)?;
        let output_proj =
            w.linear(&format!("{prefix}.output_proj.weight"), &[cfg.output_dimension, d, 1], cfg.output_dimension, d)?;
        let codebooks = (0..n_q)
            .map(|i| w.codebook(&format!("{prefix}.vq.layers.{i}._codebook"), cfg.bins, d))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { input_proj, output_proj, codebooks })
    }

    /// Latents `[B, T, C]` to codes `[B, T, n]` (nearest centroid, residual by residual).
    fn encode(&self, x: Tensor<3>, n: usize) -> Tensor<3, Int> {
        let [b, t, _] = x.dims();
        let mut residual = linear(x, self.input_proj.val(), None);
        let d = residual.dims()[2];
        let mut codes = Vec::with_capacity(n);
        for cb in self.codebooks.iter().take(n) {
            let c = cb.val();
            let c2 = c.clone().square().sum_dim(1); // [bins, 1]
            // [bins, d] x [d, B*T]: the codebook stays contiguous; only the small residual moves.
            let dots = c.clone().matmul(residual.clone().reshape([b * t, d]).transpose());
            let dist = c2 - dots.mul_scalar(2.0); // [bins, B*T]
            let idx = dist.argmin(0).reshape([b, t, 1]);
            let q = c.select(0, idx.clone().reshape([b * t])).reshape([b, t, d]);
            residual = residual - q;
            codes.push(idx);
        }
        Tensor::cat(codes, 2)
    }

    /// Codes `[B, T, n]` to latents `[B, T, C]`.
    fn decode(&self, codes: Tensor<3, Int>) -> Tensor<3> {
        let [b, t, n] = codes.dims();
        let mut sum: Option<Tensor<2>> = None;
        for (i, cb) in self.codebooks.iter().take(n).enumerate() {
            let idx = codes.clone().narrow(2, i, 1).reshape([b * t]);
            let q = cb.val().select(0, idx);
            sum = Some(match sum {
                Some(s) => s + q,
                None => q,
            });
        }
        let d = self.output_proj.dims()[0];
        let sum = sum.unwrap_or_else(|| {
            let w = self.output_proj.val();
            Tensor::zeros([b * t, d], (&w.device(), w.dtype()))
        });
        linear(sum.reshape([b, t, d]), self.output_proj.val(), None)
    }
}

/// The split RVQ of Mimi.
#[derive(Module, Debug)]
pub struct SplitRvq {
    pub first: Rvq,
    pub rest: Rvq,
    pub bins: usize,
    /// Both quantizers with their centroids stacked, for the one-launch kernels of
    /// `kernels/rvq.rs` (a copy made at load on devices where they run).
    #[module(skip)]
    pub stacked: Option<(rvq::Quantizer, rvq::Quantizer)>,
}

impl SplitRvq {
    pub fn load(w: &mut dyn Weights, prefix: &str, cfg: &QuantizerConfig) -> Result<Self> {
        let first = Rvq::load(w, &format!("{prefix}.rvq_first"), cfg, cfg.n_q_semantic)?;
        let rest = Rvq::load(w, &format!("{prefix}.rvq_rest"), cfg, cfg.n_q - cfg.n_q_semantic)?;
        let stacked = crate::kernels::launches_on(w.device()).then(|| (first.stacked(), rest.stacked()));
        Ok(Self { first, rest, bins: cfg.bins, stacked })
    }

    pub fn total_codebooks(&self) -> usize {
        self.first.codebooks.len() + self.rest.codebooks.len()
    }

    /// Latents `[B, C, T]` to codes `[B, n, T]`.
    pub fn encode(&self, x: Tensor<3>, n: usize) -> Tensor<3, Int> {
        if let Some((first, rest)) = &self.stacked
            && rvq::uses_kernel(&x.device(), x.dtype(), first, rest, n, self.bins)
        {
            return rvq::encode(x, first, rest, n, self.bins);
        }
        let x = x.swap_dims(1, 2);
        let n_first = self.first.codebooks.len().min(n);
        let mut codes = self.first.encode(x.clone(), n_first);
        if n > n_first {
            codes = Tensor::cat(vec![codes, self.rest.encode(x, n - n_first)], 2);
        }
        codes.swap_dims(1, 2)
    }

    /// Codes `[B, n, T]` (each in `0..bins`, checked by the caller) to latents `[B, C, T]`.
    pub fn decode(&self, codes: Tensor<3, Int>) -> Result<Tensor<3>> {
        let [_, n, _] = codes.dims();
        if n == 0 || n > self.total_codebooks() {
            return Err(Error::input(format!("{n} codebooks given, the codec has {}", self.total_codebooks())));
        }
        if let Some((first, rest)) = &self.stacked
            && rvq::uses_kernel(&codes.device(), first.books.dtype(), first, rest, n, self.bins)
        {
            return Ok(rvq::decode(codes, first, rest, self.bins));
        }
        let codes = codes.swap_dims(1, 2);
        let n_first = self.first.codebooks.len().min(n);
        let mut x = self.first.decode(codes.clone().narrow(2, 0, n_first));
        if n > n_first {
            x = x + self.rest.decode(codes.narrow(2, n_first, n - n_first));
        }
        Ok(x.swap_dims(1, 2))
    }
}
