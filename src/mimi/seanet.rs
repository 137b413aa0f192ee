//! SEANet: Mimi's convolutional encoder (24 kHz audio -> 25 Hz latents) and decoder.
//! Layer numbering follows the reference's `nn.Sequential`, so checkpoint keys line up.

use burn::prelude::*;

use super::config::SeanetConfig;
use crate::error::{Error, Result};
use crate::kernels::conv::ConvOut;
use crate::nn::conv::{Conv1d, ConvSpec, ConvState, ConvTr1d, ConvTrState};
use crate::weights::Weights;

/// Residual unit: ELU, conv k (dilated) C -> C/compress, ELU, conv 1 back to C, identity skip.
#[derive(Module, Debug)]
pub struct ResBlock {
    pub conv1: Conv1d,
    pub conv2: Conv1d,
}

impl ResBlock {
    fn load(w: &mut dyn Weights, prefix: &str, cfg: &SeanetConfig, dim: usize, dilation: usize) -> Result<Self> {
        let hidden = dim / cfg.compress;
        Ok(Self {
            conv1: Conv1d::load(
                w,
                &format!("{prefix}.block.1.conv.conv"),
                ConvSpec::new(dim, hidden, cfg.residual_kernel_size).dilation(dilation),
                false,
            )?,
            conv2: Conv1d::load(w, &format!("{prefix}.block.3.conv.conv"), ConvSpec::new(hidden, dim, 1), false)?,
        })
    }

    /// `x + conv2(elu(conv1(elu(x))))` from `x` and `elu(x)`; returns the output and its ELU.
    fn forward(&self, s1: &mut ConvState, s2: &mut ConvState, x: Activated) -> Result<Activated> {
        let h = Activated::of(self.conv1.forward_fused(s1, x.elu, false, None, true)?)?;
        Activated::of(self.conv2.forward_fused(s2, h.elu, false, Some(x.x), true)?)
    }
}

/// A layer's output and its ELU, which the next layer takes as its input: computed once by the
/// layer that writes it rather than once per tap by the one that reads it.
struct Activated {
    x: Tensor<3>,
    elu: Tensor<3>,
}

impl Activated {
    fn of(out: ConvOut) -> Result<Self> {
        let elu = out.activated.ok_or_else(|| Error::input("a SEANet layer did not return its activation"))?;
        Ok(Self { x: out.y, elu })
    }
}

#[derive(Module, Debug)]
pub struct EncoderStage {
    pub res: Vec<ResBlock>,
    pub down: Conv1d,
}

/// The SEANet encoder.
#[derive(Module, Debug)]
pub struct SeanetEncoder {
    pub first: Conv1d,
    pub stages: Vec<EncoderStage>,
    pub last: Conv1d,
}

impl SeanetEncoder {
    pub fn load(w: &mut dyn Weights, prefix: &str, cfg: &SeanetConfig) -> Result<Self> {
        let nf = cfg.n_filters;
        let first = Conv1d::load(
            w,
            &format!("{prefix}.model.0.conv.conv"),
            ConvSpec::new(cfg.channels, nf, cfg.kernel_size),
            false,
        )?;
        let mut idx = 1;
        let mut mult = 1;
        let mut stages = Vec::new();
        for &ratio in cfg.ratios.iter().rev() {
            let mut res = Vec::new();
            for j in 0..cfg.n_residual_layers {
                res.push(ResBlock::load(
                    w,
                    &format!("{prefix}.model.{idx}"),
                    cfg,
                    mult * nf,
                    cfg.dilation_base.pow(j as u32),
                )?);
                idx += 1;
            }
            idx += 1; // ELU
            let down = Conv1d::load(
                w,
                &format!("{prefix}.model.{idx}.conv.conv"),
                ConvSpec::new(mult * nf, mult * nf * 2, ratio * 2).stride(ratio),
                false,
            )?;
            idx += 1;
            mult *= 2;
            stages.push(EncoderStage { res, down });
        }
        idx += 1; // ELU
        let last = Conv1d::load(
            w,
            &format!("{prefix}.model.{idx}.conv.conv"),
            ConvSpec::new(mult * nf, cfg.dimension, cfg.last_kernel_size),
            false,
        )?;
        Ok(Self { first, stages, last })
    }

    /// Fresh states of every convolution, in execution order.
    pub fn init_state(&self, batch: usize) -> Vec<ConvState> {
        let mut s = vec![self.first.init_state(batch)];
        for st in &self.stages {
            for r in &st.res {
                s.push(r.conv1.init_state(batch));
                s.push(r.conv2.init_state(batch));
            }
            s.push(st.down.init_state(batch));
        }
        s.push(self.last.init_state(batch));
        s
    }

    /// Audio `[B, 1, T]` to latents `[B, dim, T / hop]`.
    pub fn forward(&self, state: &mut [ConvState], x: Tensor<3>) -> Result<Tensor<3>> {
        let mut it = state.iter_mut();
        let mut next = || it.next().ok_or_else(|| Error::input("SEANet encoder state is incomplete"));
        let mut x = Activated::of(self.first.forward_fused(next()?, x, false, None, true)?)?;
        for st in &self.stages {
            for r in &st.res {
                let s1 = next()?;
                let s2 = next()?;
                x = r.forward(s1, s2, x)?;
            }
            x = Activated::of(st.down.forward_fused(next()?, x.elu, false, None, true)?)?;
        }
        Ok(self.last.forward_fused(next()?, x.elu, false, None, false)?.y)
    }
}

#[derive(Module, Debug)]
pub struct DecoderStage {
    pub up: ConvTr1d,
    pub res: Vec<ResBlock>,
}

/// The SEANet decoder.
#[derive(Module, Debug)]
pub struct SeanetDecoder {
    pub first: Conv1d,
    pub stages: Vec<DecoderStage>,
    pub last: Conv1d,
}

/// Streaming state of the decoder.
#[derive(Clone, Debug)]
pub struct DecoderState {
    pub convs: Vec<ConvState>,
    pub ups: Vec<ConvTrState>,
}

impl SeanetDecoder {
    pub fn load(w: &mut dyn Weights, prefix: &str, cfg: &SeanetConfig) -> Result<Self> {
        let nf = cfg.n_filters;
        let mut mult = 1usize << cfg.ratios.len();
        let first = Conv1d::load(
            w,
            &format!("{prefix}.model.0.conv.conv"),
            ConvSpec::new(cfg.dimension, mult * nf, cfg.kernel_size),
            false,
        )?;
        let mut idx = 1;
        let mut stages = Vec::new();
        for &ratio in &cfg.ratios {
            idx += 1; // ELU
            let up = ConvTr1d::load(
                w,
                &format!("{prefix}.model.{idx}.convtr.convtr"),
                ConvSpec::new(mult * nf, mult * nf / 2, ratio * 2).stride(ratio),
            )?;
            idx += 1;
            let mut res = Vec::new();
            for j in 0..cfg.n_residual_layers {
                res.push(ResBlock::load(
                    w,
                    &format!("{prefix}.model.{idx}"),
                    cfg,
                    mult * nf / 2,
                    cfg.dilation_base.pow(j as u32),
                )?);
                idx += 1;
            }
            mult /= 2;
            stages.push(DecoderStage { up, res });
        }
        idx += 1; // ELU
        let last = Conv1d::load(
            w,
            &format!("{prefix}.model.{idx}.conv.conv"),
            ConvSpec::new(nf, cfg.channels, cfg.last_kernel_size),
            false,
        )?;
        Ok(Self { first, stages, last })
    }

    pub fn init_state(&self, batch: usize) -> DecoderState {
        let mut convs = vec![self.first.init_state(batch)];
        let mut ups = Vec::new();
        for st in &self.stages {
            ups.push(st.up.init_state(batch));
            for r in &st.res {
                convs.push(r.conv1.init_state(batch));
                convs.push(r.conv2.init_state(batch));
            }
        }
        convs.push(self.last.init_state(batch));
        DecoderState { convs, ups }
    }

    /// Latents `[B, dim, T]` to audio `[B, 1, T * hop]`.
    pub fn forward(&self, state: &mut DecoderState, x: Tensor<3>) -> Result<Tensor<3>> {
        let incomplete = || Error::input("SEANet decoder state is incomplete");
        let mut convs = state.convs.iter_mut();
        let mut ups = state.ups.iter_mut();
        let mut x =
            Activated::of(self.first.forward_fused(convs.next().ok_or_else(incomplete)?, x, false, None, true)?)?;
        for st in &self.stages {
            x = Activated::of(st.up.forward_fused(ups.next().ok_or_else(incomplete)?, x.elu, false, true)?)?;
            for r in &st.res {
                let s1 = convs.next().ok_or_else(incomplete)?;
                let s2 = convs.next().ok_or_else(incomplete)?;
                x = r.forward(s1, s2, x)?;
            }
        }
        Ok(self.last.forward_fused(convs.next().ok_or_else(incomplete)?, x.elu, false, None, false)?.y)
    }
}
