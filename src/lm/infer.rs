//! The LM configuration of a checkpoint that ships no `config.json`, read off its tensor names
//! and shapes (the safetensors header only; no weights are read).
//!
//! Kyutai's snapshots of moshiko/moshika carry no LM configuration, and fine-tunes such as
//! NVIDIA's PersonaPlex change the depth transformer (16 generated codebooks instead of 8), so
//! assuming moshiko's shape would load the wrong graph. What the tensors determine:
//! `dim` (`text_emb`), `text_card` / `text_card_out` (`text_emb` / `text_linear`), `card` and
//! `n_q` (`emb.*`), `dep_q` (`linears.*`), `num_layers` / `depformer_num_layers`
//! (`transformer.layers.*` / `depformer.layers.*`), `depformer_dim` (`depformer_in.0`),
//! `depformer_multi_linear` (one `depformer_in` per step or one shared), the FFN widths
//! (`gating.linear_in`), LayerScale (`layer_scale_*`), and weights per step
//! (`depformer.layers.0.gating.*`, one per generated codebook).
//!
//! What they do not determine, and the value used:
//! - heads: 128-wide heads in the temporal transformer and 64-wide in the depth transformer,
//!   Kyutai's convention (moshiko: 4096 / 32, 1024 / 16); a width that is not a multiple is an
//!   error;
//! - delays: text 0, then for each half of the audio streams (the model's, then the user's)
//!   0 for the semantic codebook and 1 for the acoustic ones, Moshi's pattern;
//! - context 3000, RoPE with max period 10000, SiLU gating, RMS norm in f32, padding ids 3 / 0:
//!   moshiko's values;
//! - a weight-sharing schedule (fewer per-step weights than generated codebooks): not
//!   inferable, an error asking for a `config.json`.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};
use crate::lm::LmConfig;

/// Width of one attention head in the temporal transformer (Kyutai's convention).
pub const HEAD_DIM: usize = 128;
/// Width of one attention head in the depth transformer (Kyutai's convention).
pub const DEPFORMER_HEAD_DIM: usize = 64;

/// Tensor names and shapes of a safetensors file, read from its header.
pub fn read_shapes(path: &Path) -> Result<BTreeMap<String, Vec<usize>>> {
    let bad = |msg: String| Error::File { path: path.to_path_buf(), msg };
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|e| bad(format!("not a safetensors file: {e}")))?;
    let len = u64::from_le_bytes(len);
    if len > 100 << 20 {
        return Err(bad(format!("not a safetensors file: header of {len} bytes")));
    }
    let mut header = vec![0u8; len as usize];
    f.read_exact(&mut header).map_err(|e| bad(format!("truncated safetensors header: {e}")))?;
    let json: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| bad(format!("invalid safetensors header: {e}")))?;
    let mut out = BTreeMap::new();
    for (name, v) in json {
        if name == "__metadata__" {
            continue;
        }
        let shape: Vec<usize> = v
            .get("shape")
            .and_then(|s| serde_json::from_value(s.clone()).ok())
            .ok_or_else(|| bad(format!("tensor `{name}` has no shape in the header")))?;
        out.insert(name, shape);
    }
    Ok(out)
}

/// Reads `path`'s header and infers its LM configuration (see the module docs).
pub fn infer_file(path: &Path) -> Result<LmConfig> {
    let shapes = read_shapes(path)?;
    infer(&shapes).map_err(|msg| Error::File {
        path: path.to_path_buf(),
        msg: format!("cannot infer the LM configuration from the tensors ({msg}); add a config.json"),
    })
}

/// The Moshi delays for `n_q` audio streams in two halves (text first).
pub fn default_delays(n_q: usize) -> Vec<usize> {
    let half = n_q.div_ceil(2);
    let mut d = vec![0];
    for i in 0..n_q {
        d.push(usize::from(i % half != 0));
    }
    d
}

/// Infers the configuration from tensor names and shapes; the error says what did not fit.
pub fn infer(shapes: &BTreeMap<String, Vec<usize>>) -> std::result::Result<LmConfig, String> {
    let shape = |name: &str| shapes.get(name).ok_or_else(|| format!("no tensor `{name}`"));
    let dims2 = |name: &str| -> std::result::Result<(usize, usize), String> {
        match shape(name)?.as_slice() {
            [a, b] => Ok((*a, *b)),
            other => Err(format!("`{name}` has shape {other:?}, expected 2 dimensions")),
        }
    };
    // Indices `prefix{i}.` present, which must be 0..n.
    let count = |prefix: &str| -> std::result::Result<usize, String> {
        let idx: std::collections::BTreeSet<usize> =
            shapes.keys().filter_map(|n| n.strip_prefix(prefix)?.split('.').next()?.parse().ok()).collect();
        match idx.last() {
            Some(&last) if last + 1 != idx.len() => Err(format!("`{prefix}*` is not numbered 0..{}", idx.len())),
            _ => Ok(idx.len()),
        }
    };
    let (text_rows, dim) = dims2("text_emb.weight")?;
    let text_card = text_rows.checked_sub(1).ok_or("`text_emb.weight` has no rows")?;
    let (text_out, _) = dims2("text_linear.weight")?;
    let (card_rows, _) = dims2("emb.0.weight")?;
    let card = card_rows - 1;
    let n_q = count("emb.")?;
    let dep_q = count("linears.")?;
    let num_layers = count("transformer.layers.")?;
    let depformer_num_layers = count("depformer.layers.")?;
    if num_layers == 0 || depformer_num_layers == 0 || dep_q == 0 {
        return Err("no transformer layers, depformer layers or output linears".into());
    }
    let (depformer_dim, _) = dims2("depformer_in.0.weight")?;
    let n_in = count("depformer_in.")?;
    let depformer_multi_linear = match n_in {
        1 => false,
        n if n == dep_q => true,
        n => return Err(format!("{n} `depformer_in.*` for {dep_q} generated codebooks")),
    };
    let per_step = count("depformer.layers.0.gating.")?;
    if per_step != dep_q {
        return Err(format!(
            "{per_step} per-step depformer weights for {dep_q} generated codebooks (a weight-sharing schedule)"
        ));
    }
    let (in_proj, _) = dims2("depformer.layers.0.self_attn.in_proj_weight")?;
    if in_proj != 3 * depformer_dim * dep_q {
        return Err(format!(
            "`depformer.layers.0.self_attn.in_proj_weight` has {in_proj} rows, expected 3 x {depformer_dim} x {dep_q}"
        ));
    }
    let (gate, _) = dims2("transformer.layers.0.gating.linear_in.weight")?;
    let dim_ff = 3 * gate / 4; // linear_in holds both halves of the gated FFN: 2 x (2/3 x ff)
    let hidden_scale = dim_ff as f64 / dim as f64;
    if (hidden_scale * dim as f64) as usize != dim_ff || 2 * dim_ff / 3 != gate / 2 {
        return Err(format!("FFN width {} of `transformer.layers.0` is not a gated 2/3 width", gate / 2));
    }
    let (dgate, _) = dims2("depformer.layers.0.gating.0.linear_in.weight")?;
    let depformer_ff = 3 * dgate / 4;
    if 2 * depformer_ff / 3 != dgate / 2 {
        return Err(format!("FFN width {} of `depformer.layers.0` is not a gated 2/3 width", dgate / 2));
    }
    if !shapes.contains_key("out_norm.alpha") {
        return Err("no `out_norm.alpha` (only RMS-norm checkpoints are inferred)".into());
    }
    for (what, width, head) in [("dim", dim, HEAD_DIM), ("depformer_dim", depformer_dim, DEPFORMER_HEAD_DIM)] {
        if width % head != 0 {
            return Err(format!("{what} {width} is not a multiple of the {head}-wide heads assumed"));
        }
    }
    let scale = |name: &str| shapes.contains_key(name).then_some(0.01);
    let cfg = LmConfig {
        dim,
        text_card,
        text_card_out: (text_out != text_card).then_some(text_out),
        n_q,
        dep_q,
        card,
        num_heads: dim / HEAD_DIM,
        num_layers,
        hidden_scale,
        layer_scale: scale("transformer.layers.0.layer_scale_1.scale"),
        depformer_dim,
        depformer_dim_feedforward: Some(depformer_ff),
        depformer_num_heads: depformer_dim / DEPFORMER_HEAD_DIM,
        depformer_num_layers,
        depformer_layer_scale: scale("depformer.layers.0.layer_scale_1.scale"),
        depformer_multi_linear,
        depformer_weights_per_step: true,
        depformer_weights_per_step_schedule: None,
        delays: default_delays(n_q),
        ..LmConfig::moshiko()
    };
    cfg.validate().map_err(|e| e.to_string())?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_delays_are_moshis() {
        assert_eq!(default_delays(16), LmConfig::moshiko().delays);
        assert_eq!(default_delays(12), LmConfig::kokichi_tiny(10).delays);
    }
}
