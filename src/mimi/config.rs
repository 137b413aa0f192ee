//! Mimi hyperparameters, named as the reference's `_mimi_config` so that the `mimi` object of a
//! model folder's `config.json` maps onto them directly. Missing keys take the real Mimi's values.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::nn::norm::NormKind;
use crate::nn::transformer::{Ffn, PosEmb, TransformerSpec};

/// SEANet encoder/decoder settings (`seanet`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct SeanetConfig {
    pub channels: usize,
    pub dimension: usize,
    pub n_filters: usize,
    pub n_residual_layers: usize,
    /// Decoder order; the encoder uses them reversed.
    pub ratios: Vec<usize>,
    pub kernel_size: usize,
    pub last_kernel_size: usize,
    pub residual_kernel_size: usize,
    pub dilation_base: usize,
    pub compress: usize,
    pub causal: bool,
    pub activation: String,
    pub norm: String,
    pub pad_mode: String,
    pub true_skip: bool,
    pub disable_norm_outer_blocks: usize,
}

impl Default for SeanetConfig {
    fn default() -> Self {
        Self {
            channels: 1,
            dimension: 512,
            n_filters: 64,
            n_residual_layers: 1,
            ratios: vec![8, 6, 5, 4],
            kernel_size: 7,
            last_kernel_size: 3,
            residual_kernel_size: 3,
            dilation_base: 2,
            compress: 2,
            causal: true,
            activation: "ELU".into(),
            norm: "none".into(),
            pad_mode: "constant".into(),
            true_skip: true,
            disable_norm_outer_blocks: 0,
        }
    }
}

/// Split residual vector quantizer settings (`quantizer`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct QuantizerConfig {
    pub dimension: usize,
    pub n_q: usize,
    pub n_q_semantic: usize,
    pub bins: usize,
    pub input_dimension: usize,
    pub output_dimension: usize,
}

impl Default for QuantizerConfig {
    fn default() -> Self {
        Self { dimension: 256, n_q: 32, n_q_semantic: 1, bins: 2048, input_dimension: 512, output_dimension: 512 }
    }
}

/// Encoder/decoder transformer settings (`transformer`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct MimiTransformerConfig {
    pub d_model: usize,
    pub num_heads: usize,
    pub num_layers: usize,
    pub dim_feedforward: usize,
    pub context: usize,
    pub causal: bool,
    pub layer_scale: Option<f64>,
    pub conv_layout: bool,
    pub max_period: f64,
    pub gating: String,
    pub norm: String,
    pub positional_embedding: String,
    pub input_dimension: usize,
    pub output_dimensions: Vec<usize>,
}

impl Default for MimiTransformerConfig {
    fn default() -> Self {
        Self {
            d_model: 512,
            num_heads: 8,
            num_layers: 8,
            dim_feedforward: 2048,
            context: 250,
            causal: true,
            layer_scale: Some(0.01),
            conv_layout: true,
            max_period: 10000.0,
            gating: "none".into(),
            norm: "layer_norm".into(),
            positional_embedding: "rope".into(),
            input_dimension: 512,
            output_dimensions: vec![512],
        }
    }
}

/// The whole codec.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct MimiConfig {
    pub sample_rate: usize,
    pub channels: usize,
    pub frame_rate: f64,
    pub seanet: SeanetConfig,
    pub quantizer: QuantizerConfig,
    pub transformer: MimiTransformerConfig,
}

impl Default for MimiConfig {
    fn default() -> Self {
        Self::v0_1()
    }
}

impl burn::config::Config for MimiConfig {}

impl MimiConfig {
    /// The released Mimi (`tokenizer-e351c8d8-checkpoint125.safetensors`).
    pub fn v0_1() -> Self {
        Self {
            sample_rate: 24000,
            channels: 1,
            frame_rate: 12.5,
            seanet: SeanetConfig::default(),
            quantizer: QuantizerConfig::default(),
            transformer: MimiTransformerConfig::default(),
        }
    }

    /// A small codec of the same architecture (tests, kokichi-tiny starting point).
    pub fn tiny() -> Self {
        Self {
            sample_rate: 24000,
            channels: 1,
            frame_rate: 12.5,
            seanet: SeanetConfig { dimension: 32, n_filters: 4, ..SeanetConfig::default() },
            quantizer: QuantizerConfig {
                dimension: 16,
                n_q: 10,
                n_q_semantic: 1,
                bins: 64,
                input_dimension: 32,
                output_dimension: 32,
            },
            transformer: MimiTransformerConfig {
                d_model: 32,
                num_heads: 2,
                num_layers: 2,
                dim_feedforward: 64,
                context: 10,
                input_dimension: 32,
                output_dimensions: vec![32],
                ..MimiTransformerConfig::default()
            },
        }
    }

    /// kokichi-tiny's codec (training/common.py): Mimi's layout at a quarter of the width,
    /// 6 codebooks of 1024 entries.
    pub fn kokichi_tiny() -> Self {
        Self {
            sample_rate: 24000,
            channels: 1,
            frame_rate: 12.5,
            seanet: SeanetConfig { dimension: 128, n_filters: 16, ..SeanetConfig::default() },
            quantizer: QuantizerConfig {
                dimension: 64,
                n_q: 6,
                n_q_semantic: 1,
                bins: 1024,
                input_dimension: 128,
                output_dimension: 128,
            },
            transformer: MimiTransformerConfig {
                d_model: 128,
                num_heads: 4,
                num_layers: 2,
                dim_feedforward: 512,
                context: 125,
                input_dimension: 128,
                output_dimensions: vec![128],
                ..MimiTransformerConfig::default()
            },
        }
    }

    /// Parses the JSON form (the `mimi` object of `config.json`).
    pub fn from_json(text: &str) -> Result<Self> {
        let cfg: Self = serde_json::from_str(text).map_err(|e| Error::config("mimi", e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Audio samples per frame (1920 for Mimi).
    pub fn frame_size(&self) -> usize {
        (self.sample_rate as f64 / self.frame_rate).round() as usize
    }

    /// SEANet hop: samples per encoder step (960 for Mimi).
    pub fn hop(&self) -> usize {
        self.seanet.ratios.iter().product()
    }

    /// Integer ratio between encoder and codec frame rates (2 for Mimi, 1 for none).
    pub fn resample_stride(&self) -> usize {
        self.frame_size() / self.hop()
    }

    /// Checks the settings this implementation supports, naming the offending one.
    pub fn validate(&self) -> Result<()> {
        let s = &self.seanet;
        let fail = |k: &str, m: String| Err(Error::config(format!("mimi.{k}"), m));
        if self.channels != 1 || s.channels != 1 {
            return fail("channels", "only mono (1) is supported".into());
        }
        if !s.causal || !self.transformer.causal {
            return fail("causal", "only causal (streaming) models are supported".into());
        }
        if s.activation != "ELU" {
            return fail("seanet.activation", format!("`{}` not supported (ELU)", s.activation));
        }
        if s.norm != "none" {
            return fail("seanet.norm", format!("`{}` not supported: fold weight norm into the weights", s.norm));
        }
        if s.pad_mode != "constant" {
            return fail("seanet.pad_mode", format!("`{}` not supported (constant)", s.pad_mode));
        }
        if !s.true_skip {
            return fail("seanet.true_skip", "only identity skips are supported".into());
        }
        if s.ratios.is_empty() || s.ratios.contains(&0) || s.n_filters == 0 || s.compress == 0 {
            return fail("seanet.ratios", format!("invalid {:?}", s.ratios));
        }
        if self.frame_rate <= 0.0 || self.sample_rate == 0 {
            return fail("frame_rate", "must be positive".into());
        }
        let frame = self.sample_rate as f64 / self.frame_rate;
        if frame.fract() != 0.0 || !self.frame_size().is_multiple_of(self.hop()) {
            return fail(
                "frame_rate",
                format!("frame of {frame} samples is not a multiple of the SEANet hop {}", self.hop()),
            );
        }
        let q = &self.quantizer;
        if q.n_q <= q.n_q_semantic || q.n_q_semantic == 0 || q.bins == 0 {
            return fail("quantizer.n_q", format!("n_q {} must exceed n_q_semantic {}", q.n_q, q.n_q_semantic));
        }
        if q.input_dimension != s.dimension || q.output_dimension != s.dimension {
            return fail("quantizer.input_dimension", "must equal seanet.dimension".into());
        }
        let t = &self.transformer;
        if t.input_dimension != s.dimension || t.output_dimensions != vec![s.dimension] {
            return fail("transformer.input_dimension", "must equal seanet.dimension, one output".into());
        }
        if !t.conv_layout {
            return fail("transformer.conv_layout", "must be true".into());
        }
        NormKind::parse(&t.norm)?;
        Ffn::parse(&t.gating)?;
        PosEmb::parse(&t.positional_embedding)?;
        Ok(())
    }

    /// The encoder's and decoder's transformer.
    pub fn transformer_spec(&self) -> Result<TransformerSpec> {
        let t = &self.transformer;
        Ok(TransformerSpec {
            d_model: t.d_model,
            num_heads: t.num_heads,
            num_layers: t.num_layers,
            dim_feedforward: t.dim_feedforward,
            context: Some(t.context),
            norm: NormKind::parse(&t.norm)?,
            layer_scale: t.layer_scale.is_some(),
            ffn: Ffn::parse(&t.gating)?,
            pos_emb: PosEmb::parse(&t.positional_embedding)?,
            max_period: t.max_period,
            weights_per_step: 0,
            schedule: None,
        })
    }
}
