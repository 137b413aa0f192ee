//! Moshi LM hyperparameters in the reference's `_lm_kwargs` names (the `lm` object of a model
//! folder's `config.json`). Missing keys take moshiko's values.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::nn::norm::NormKind;
use crate::nn::transformer::{Ffn, PosEmb, TransformerSpec};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct LmConfig {
    pub dim: usize,
    pub text_card: usize,
    pub text_card_out: Option<usize>,
    pub existing_text_padding_id: usize,
    pub existing_text_end_padding_id: usize,
    /// Audio streams in the input (Moshi's 8 + the user's 8).
    pub n_q: usize,
    /// Audio streams the depth transformer generates.
    pub dep_q: usize,
    /// Audio vocabulary (codebook size).
    pub card: usize,
    pub num_heads: usize,
    pub num_layers: usize,
    pub hidden_scale: f64,
    pub causal: bool,
    pub layer_scale: Option<f64>,
    pub context: Option<usize>,
    pub max_period: f64,
    pub gating: String,
    pub norm: String,
    pub positional_embedding: String,
    pub depformer_dim: usize,
    pub depformer_dim_feedforward: Option<usize>,
    pub depformer_num_heads: usize,
    pub depformer_num_layers: usize,
    pub depformer_layer_scale: Option<f64>,
    pub depformer_multi_linear: bool,
    pub depformer_context: Option<usize>,
    pub depformer_max_period: f64,
    pub depformer_gating: String,
    pub depformer_pos_emb: String,
    pub depformer_weights_per_step: bool,
    pub depformer_weights_per_step_schedule: Option<Vec<usize>>,
    pub depformer_norm: Option<String>,
    pub norm_emb: bool,
    pub bias_proj: bool,
    pub demux_second_stream: bool,
    /// Acoustic delay of each stream: text first, then the `n_q` audio streams.
    pub delays: Vec<usize>,
}

impl Default for LmConfig {
    fn default() -> Self {
        Self::moshiko()
    }
}

impl burn::config::Config for LmConfig {}

impl LmConfig {
    /// The released Moshi 7B (`kyutai/moshiko-pytorch-bf16`, also moshika).
    pub fn moshiko() -> Self {
        Self {
            dim: 4096,
            text_card: 32000,
            text_card_out: None,
            existing_text_padding_id: 3,
            existing_text_end_padding_id: 0,
            n_q: 16,
            dep_q: 8,
            card: 2048,
            num_heads: 32,
            num_layers: 32,
            hidden_scale: 4.125,
            causal: true,
            layer_scale: None,
            context: Some(3000),
            max_period: 10000.0,
            gating: "silu".into(),
            norm: "rms_norm_f32".into(),
            positional_embedding: "rope".into(),
            depformer_dim: 1024,
            depformer_dim_feedforward: Some((4.125f64 * 1024.0) as usize),
            depformer_num_heads: 16,
            depformer_num_layers: 6,
            depformer_layer_scale: None,
            depformer_multi_linear: true,
            depformer_context: Some(8),
            depformer_max_period: 10000.0,
            depformer_gating: "silu".into(),
            depformer_pos_emb: "none".into(),
            depformer_weights_per_step: true,
            depformer_weights_per_step_schedule: None,
            depformer_norm: None,
            norm_emb: false,
            bias_proj: false,
            demux_second_stream: false,
            delays: vec![0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1],
        }
    }

    /// A tiny model in the real 16-stream layout (tests).
    pub fn tiny() -> Self {
        Self {
            dim: 32,
            text_card: 100,
            num_heads: 4,
            num_layers: 2,
            context: Some(8),
            card: 64,
            depformer_dim: 16,
            depformer_dim_feedforward: Some(66),
            depformer_num_heads: 2,
            depformer_num_layers: 2,
            depformer_context: Some(4),
            ..Self::moshiko()
        }
    }

    /// kokichi-tiny's LM (training/common.py): 6 layers of width 256, 6 codebooks per
    /// stream, an 8 s context.
    pub fn kokichi_tiny(text_card: usize) -> Self {
        Self {
            dim: 256,
            text_card,
            n_q: 12,
            dep_q: 6,
            card: 1024,
            num_heads: 4,
            num_layers: 6,
            context: Some(100),
            depformer_dim: 128,
            depformer_dim_feedforward: Some(256),
            depformer_num_heads: 4,
            depformer_num_layers: 2,
            depformer_context: Some(6),
            delays: vec![0, 0, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1],
            ..Self::moshiko()
        }
    }

    pub fn from_json(text: &str) -> Result<Self> {
        let cfg: Self = serde_json::from_str(text).map_err(|e| Error::config("lm", e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn text_out(&self) -> usize {
        self.text_card_out.unwrap_or(self.text_card)
    }

    /// Streams the user feeds (`n_q - dep_q`).
    pub fn user_streams(&self) -> usize {
        self.n_q - self.dep_q
    }

    /// Whether the depth transformer predicts the user's streams too (`dep_q == n_q`, NVIDIA's
    /// PersonaPlex), so that the model runs on the provided schedule ([`super::provided`]) with
    /// the user's codes given rather than fed.
    pub fn predicts_user(&self) -> bool {
        self.dep_q == self.n_q
    }

    /// The audio streams of the model's own voice: `dep_q`, or half the streams when the depth
    /// transformer predicts the user's too.
    pub fn own_streams(&self) -> usize {
        if self.predicts_user() { self.n_q / 2 } else { self.dep_q }
    }

    /// The user's audio streams a step takes: `n_q - dep_q`, or the other half of the streams
    /// when the depth transformer predicts them.
    pub fn user_input_streams(&self) -> usize {
        if self.predicts_user() { self.n_q - self.n_q / 2 } else { self.user_streams() }
    }

    pub fn max_delay(&self) -> usize {
        self.delays.iter().copied().max().unwrap_or(0)
    }

    pub fn validate(&self) -> Result<()> {
        let fail = |k: &str, m: String| Err(Error::config(format!("lm.{k}"), m));
        if self.delays.len() != self.n_q + 1 {
            return fail("delays", format!("{} delays for {} streams (text + n_q)", self.delays.len(), self.n_q + 1));
        }
        if self.text_out() > self.text_card + 1 {
            // A generated text token indexes the text embeddings (`text_card + 1` rows) next.
            return fail(
                "text_card_out",
                format!("{} exceeds text_card + 1 = {}", self.text_out(), self.text_card + 1),
            );
        }
        if self.dep_q == 0 || self.dep_q > self.n_q {
            return fail("dep_q", format!("{} must be in 1..={}", self.dep_q, self.n_q));
        }
        if !self.causal {
            return fail("causal", "only causal models are supported".into());
        }
        if self.norm_emb || self.bias_proj || self.demux_second_stream {
            return fail("norm_emb", "norm_emb, bias_proj and demux_second_stream are not supported".into());
        }
        if self.depformer_norm.is_some() {
            return fail("depformer_norm", "depformer norms are not supported".into());
        }
        if !self.depformer_weights_per_step {
            return fail(
                "depformer_weights_per_step",
                "the depth transformer needs weights per step (its cache has no context)".into(),
            );
        }
        if let Some(s) = &self.depformer_weights_per_step_schedule
            && s.len() != self.dep_q
        {
            return fail("depformer_weights_per_step_schedule", format!("needs {} entries", self.dep_q));
        }
        if Ffn::parse(&self.depformer_gating)? == Ffn::Mlp {
            return fail("depformer_gating", "weights per step need a gated FFN".into());
        }
        if self.context == Some(0) {
            return fail("context", "must be positive".into());
        }
        NormKind::parse(&self.norm)?;
        Ffn::parse(&self.gating)?;
        PosEmb::parse(&self.positional_embedding)?;
        PosEmb::parse(&self.depformer_pos_emb)?;
        Ok(())
    }

    /// The temporal transformer.
    pub fn transformer_spec(&self) -> Result<TransformerSpec> {
        Ok(TransformerSpec {
            d_model: self.dim,
            num_heads: self.num_heads,
            num_layers: self.num_layers,
            dim_feedforward: (self.hidden_scale * self.dim as f64) as usize,
            context: self.context,
            norm: NormKind::parse(&self.norm)?,
            layer_scale: self.layer_scale.is_some(),
            ffn: Ffn::parse(&self.gating)?,
            pos_emb: PosEmb::parse(&self.positional_embedding)?,
            max_period: self.max_period,
            weights_per_step: 0,
            schedule: None,
        })
    }

    /// The depth transformer (its context is unlimited: it sees the `dep_q` steps of one frame).
    pub fn depformer_spec(&self) -> Result<TransformerSpec> {
        Ok(TransformerSpec {
            d_model: self.depformer_dim,
            num_heads: self.depformer_num_heads,
            num_layers: self.depformer_num_layers,
            dim_feedforward: self
                .depformer_dim_feedforward
                .unwrap_or((self.hidden_scale * self.depformer_dim as f64) as usize),
            context: None,
            norm: NormKind::parse(&self.norm)?,
            layer_scale: self.depformer_layer_scale.is_some(),
            ffn: Ffn::parse(&self.depformer_gating)?,
            pos_emb: PosEmb::parse(&self.depformer_pos_emb)?,
            max_period: self.depformer_max_period,
            weights_per_step: self.dep_q,
            schedule: self.depformer_weights_per_step_schedule.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_validate_and_bad_shapes_are_named() {
        for cfg in [LmConfig::tiny(), LmConfig::moshiko(), LmConfig::kokichi_tiny(300)] {
            assert!(cfg.validate().is_ok(), "{cfg:?}");
        }
        let wide = LmConfig { text_card_out: Some(LmConfig::tiny().text_card + 2), ..LmConfig::tiny() };
        let err = wide.validate().unwrap_err().to_string();
        assert!(err.contains("lm.text_card_out"), "{err}");
        let no_dep = LmConfig { dep_q: 0, ..LmConfig::tiny() };
        assert!(no_dep.validate().unwrap_err().to_string().contains("lm.dep_q"));
    }
}
