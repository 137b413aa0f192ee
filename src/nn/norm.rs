//! LayerNorm (Mimi's transformer) and RMSNorm computed in f32 (Moshi's LM; the fused kernel in
//! `kernels/rms_norm.rs`).

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::module::layer_norm;

use crate::error::{Error, Result};
use crate::kernels::rms_norm;
use crate::weights::Weights;

/// Normalisation kinds of the reference (`norm` in the configs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormKind {
    /// `layer_norm`: eps 1e-5, weight and bias.
    LayerNorm,
    /// `layer_norm_f32`: eps 1e-8, computed in f32.
    LayerNormF32,
    /// `rms_norm`: eps 1e-5, `alpha`.
    RmsNorm,
    /// `rms_norm_f32`: eps 1e-8, computed in f32.
    RmsNormF32,
}

impl NormKind {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "layer_norm" => Ok(NormKind::LayerNorm),
            "layer_norm_f32" => Ok(NormKind::LayerNormF32),
            "rms_norm" => Ok(NormKind::RmsNorm),
            "rms_norm_f32" => Ok(NormKind::RmsNormF32),
            other => Err(Error::config("norm", format!("unknown norm `{other}`"))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            NormKind::LayerNorm => "layer_norm",
            NormKind::LayerNormF32 => "layer_norm_f32",
            NormKind::RmsNorm => "rms_norm",
            NormKind::RmsNormF32 => "rms_norm_f32",
        }
    }

    fn eps(self) -> f64 {
        match self {
            NormKind::LayerNorm | NormKind::RmsNorm => 1e-5,
            NormKind::LayerNormF32 | NormKind::RmsNormF32 => 1e-8,
        }
    }

    fn is_rms(self) -> bool {
        matches!(self, NormKind::RmsNorm | NormKind::RmsNormF32)
    }
}

/// A normalisation layer over the last dimension.
#[derive(Module, Debug)]
pub struct Norm {
    /// LayerNorm `weight` or RMSNorm `alpha`, shape `[dim]`.
    pub weight: Param<Tensor<1>>,
    pub bias: Option<Param<Tensor<1>>>,
    pub rms: bool,
    pub eps: f64,
}

impl Norm {
    pub fn load(w: &mut dyn Weights, prefix: &str, kind: NormKind, dim: usize) -> Result<Self> {
        let (weight, bias) = if kind.is_rms() {
            (w.param_as(&format!("{prefix}.alpha"), &[1, 1, dim], [dim])?, None)
        } else {
            (w.param(&format!("{prefix}.weight"), [dim])?, Some(w.param(&format!("{prefix}.bias"), [dim])?))
        };
        Ok(Self { weight, bias, rms: kind.is_rms(), eps: kind.eps() })
    }

    /// The norm's tensors and settings, for the fused residual launch.
    pub fn params(&self) -> crate::kernels::residual::NormParams {
        crate::kernels::residual::NormParams {
            weight: self.weight.val(),
            bias: self.bias.as_ref().map(|b| b.val()),
            eps: self.eps,
            rms: self.rms,
        }
    }

    /// Normalises `[B, T, C]` over `C`, in f32, returning the input dtype. RMSNorm goes through
    /// the fused kernel of `kernels/` (its plain-Burn reference off wgpu and under autodiff).
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        if self.rms {
            return rms_norm(x, self.weight.val(), self.eps);
        }
        let dtype = x.dtype();
        let x32 = if dtype == DType::F32 { x } else { x.cast(DType::F32) };
        let w = self.weight.val();
        let w = if w.dtype() == DType::F32 { w } else { w.cast(DType::F32) };
        let b = self.bias.as_ref().map(|b| {
            let b = b.val();
            if b.dtype() == DType::F32 { b } else { b.cast(DType::F32) }
        });
        let y = layer_norm(x32, w, b, self.eps);
        if dtype == DType::F32 { y } else { y.cast(dtype) }
    }
}
