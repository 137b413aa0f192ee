//! Vocabulary adapters: N new text tokens (such as `<clock>`) added to a frozen LM, with the two
//! rows each needs, one in the text embedding and one in the text head (docs/adapter.md).
//!
//! An adapter is a folder holding `adapter.json` (`format`, `version`, `tokens`, `d_model`,
//! optional `model`) and `adapter.safetensors` (`text_emb` `[N, d_model]`, `text_linear`
//! `[N, d_model]`, optional `gist` `[K, d_model]`). Loading one extends the text vocabulary to
//! `text_card + N`: new token j is id `text_card + j`, and Moshi's initial text token moves to
//! `text_card + N`, so every use of `text_card` as the initial token stays right. The extended
//! tables replace the stored ones in the [`WeightFile`] before the model is built, so every
//! path that builds a model from it (stacked tables, f16, q8) sees them unchanged.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};
use crate::gist::{self, Gist};
use crate::lm::LmConfig;
use crate::tokenizer::Tokenizer;
use crate::weights::{OutTensor, WeightFile, write_tensors};

/// The `format` of `adapter.json`.
pub const FORMAT: &str = "kokichi-adapter";
/// The `version` this build reads and writes.
pub const VERSION: u64 = 1;
/// The JSON file of an adapter folder.
pub const JSON: &str = "adapter.json";
/// The tensors file of an adapter folder.
pub const TENSORS: &str = "adapter.safetensors";

/// The three stored tensors an adapter extends.
pub const TEXT_EMB: &str = "text_emb.weight";
pub const TEXT_LINEAR: &str = "text_linear.weight";
pub const DEPFORMER_TEXT_EMB: &str = "depformer_text_emb.weight";

/// N new text tokens and their rows.
#[derive(Clone, Debug, PartialEq)]
pub struct Adapter {
    /// The `adapter.json` it was read from (errors name it), or where it will be written.
    pub path: PathBuf,
    /// The new tokens' names; token j gets id `text_card + j`.
    pub tokens: Vec<String>,
    pub d_model: usize,
    /// The model it was trained for (informative).
    pub model: Option<String>,
    /// `[N, d_model]`, row-major.
    pub text_emb: Vec<f32>,
    /// `[N, d_model]`, the text head's new output rows.
    pub text_linear: Vec<f32>,
    /// `[N]`, only for models whose text head has a bias (Moshi's has none, so this is refused).
    pub text_linear_bias: Option<Vec<f32>>,
    /// Prefix latents sessions start with unless the client picks another ([`crate::gist`]).
    pub gist: Option<Gist>,
}

impl Adapter {
    /// Number of new tokens.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The id of token `name` in a model whose vocabulary before the adapter had `text_card`.
    pub fn id(&self, name: &str, text_card: usize) -> Option<i64> {
        self.tokens.iter().position(|t| t == name).map(|j| (text_card + j) as i64)
    }

    /// Reads an adapter: a folder, or the path of its `adapter.json`.
    pub fn read(path: &Path) -> Result<Self> {
        let json = if path.is_dir() { path.join(JSON) } else { path.to_path_buf() };
        let text = std::fs::read_to_string(&json).map_err(|e| Error::io(&json, e))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::File { path: json.clone(), msg: format!("invalid JSON: {e}") })?;
        let key_err = |key: &str, msg: String| Error::File { path: json.clone(), msg: format!("key `{key}`: {msg}") };
        let obj = v.as_object().ok_or_else(|| Error::File { path: json.clone(), msg: "not a JSON object".into() })?;
        for key in obj.keys() {
            if !["format", "version", "tokens", "d_model", "model"].contains(&key.as_str()) {
                return Err(key_err(key, "unknown key".into()));
            }
        }
        match obj.get("format").and_then(|f| f.as_str()) {
            Some(FORMAT) => {}
            other => return Err(key_err("format", format!("{other:?}, expected \"{FORMAT}\""))),
        }
        match obj.get("version").and_then(|f| f.as_u64()) {
            Some(VERSION) => {}
            other => return Err(key_err("version", format!("{other:?}, this build reads version {VERSION}"))),
        }
        let d_model =
            obj.get("d_model")
                .and_then(|d| d.as_u64())
                .filter(|&d| d > 0)
                .ok_or_else(|| key_err("d_model", "missing or not a positive integer".into()))? as usize;
        let model = match obj.get("model") {
            None => None,
            Some(m) => Some(m.as_str().ok_or_else(|| key_err("model", "not a string".into()))?.to_string()),
        };
        let tokens: Vec<String> = obj
            .get("tokens")
            .and_then(|t| t.as_array())
            .ok_or_else(|| key_err("tokens", "missing or not an array of strings".into()))?
            .iter()
            .map(|t| t.as_str().map(str::to_string).ok_or_else(|| key_err("tokens", format!("{t} is not a string"))))
            .collect::<Result<_>>()?;
        check_names(&tokens).map_err(|msg| key_err("tokens", msg))?;
        let st_path = json.with_file_name(TENSORS);
        let bytes = std::fs::read(&st_path).map_err(|e| Error::io(&st_path, e))?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| Error::File {
            path: st_path.clone(),
            msg: format!("not a valid safetensors file ({e:?}); truncated or corrupt?"),
        })?;
        let n = tokens.len();
        let tensor_err = |name: &str, msg: String| Error::Tensor { path: st_path.clone(), name: name.into(), msg };
        for name in st.names() {
            if !["text_emb", "text_linear", "text_linear_bias", gist::TENSOR].contains(&name) {
                return Err(tensor_err(name, "unexpected tensor".into()));
            }
        }
        let floats = |name: &str, shape: &[usize]| -> Result<Option<Vec<f32>>> {
            let Ok(view) = st.tensor(name) else { return Ok(None) };
            if view.shape() != shape {
                return Err(tensor_err(name, format!("shape {:?}, expected {shape:?}", view.shape())));
            }
            let data = view.data();
            let values: Vec<f32> = match view.dtype() {
                Dtype::F32 => data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
                Dtype::F16 => data.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
                Dtype::BF16 => data.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
                other => return Err(tensor_err(name, format!("dtype {other:?}, expected f32, f16 or bf16"))),
            };
            if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                return Err(tensor_err(name, format!("element {i} is not finite")));
            }
            Ok(Some(values))
        };
        let text_emb = floats("text_emb", &[n, d_model])?.ok_or_else(|| tensor_err("text_emb", "missing".into()))?;
        let text_linear =
            floats("text_linear", &[n, d_model])?.ok_or_else(|| tensor_err("text_linear", "missing".into()))?;
        let text_linear_bias = floats("text_linear_bias", &[n])?;
        let gist = if st.names().contains(&gist::TENSOR) {
            let g = Gist::from_bytes(&bytes, &st_path)?;
            g.check_width(d_model, &st_path)?;
            Some(g)
        } else {
            None
        };
        Ok(Self { path: json, tokens, d_model, model, text_emb, text_linear, text_linear_bias, gist })
    }

    /// Writes the adapter into folder `dir` (`adapter.json` and `adapter.safetensors`, f32).
    pub fn write(&self, dir: &Path) -> Result<()> {
        check_names(&self.tokens).map_err(|msg| Error::input(format!("adapter tokens: {msg}")))?;
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let (n, d) = (self.tokens.len(), self.d_model);
        let mut tensors = vec![
            ("text_emb".to_string(), vec![n, d], OutTensor::F32(self.text_emb.clone())),
            ("text_linear".to_string(), vec![n, d], OutTensor::F32(self.text_linear.clone())),
        ];
        if let Some(b) = &self.text_linear_bias {
            tensors.push(("text_linear_bias".to_string(), vec![n], OutTensor::F32(b.clone())));
        }
        if let Some(g) = &self.gist {
            tensors.push((gist::TENSOR.to_string(), vec![g.k, g.dim], OutTensor::F32(g.values.clone())));
        }
        write_tensors(&dir.join(TENSORS), tensors)?;
        let mut json = serde_json::json!({"format": FORMAT, "version": VERSION, "tokens": self.tokens, "d_model": d});
        if let Some(m) = &self.model {
            json["model"] = serde_json::Value::String(m.clone());
        }
        let path = dir.join(JSON);
        let text = serde_json::to_string_pretty(&json).map_err(|e| Error::input(e.to_string()))?;
        std::fs::write(&path, text + "\n").map_err(|e| Error::io(&path, e))
    }

    /// Checks that the adapter fits a model of `config` whose tokenizer is `tokenizer`.
    pub fn check(&self, config: &LmConfig, tokenizer: Option<&Tokenizer>) -> Result<()> {
        let file_err = |msg: String| Error::File { path: self.path.clone(), msg };
        if self.d_model != config.dim {
            return Err(file_err(format!("key `d_model`: {} but the model's d_model is {}", self.d_model, config.dim)));
        }
        if config.text_card_out.is_some_and(|o| o != config.text_card) {
            return Err(file_err(format!(
                "the model's text head has text_card_out {} != text_card {}: adapters need them equal",
                config.text_card_out.unwrap_or_default(),
                config.text_card
            )));
        }
        let st = self.path.with_file_name(TENSORS);
        if self.text_linear_bias.is_some() {
            return Err(Error::Tensor {
                path: st,
                name: "text_linear_bias".into(),
                msg: "the model's text head has no bias".into(),
            });
        }
        if let Some(g) = &self.gist {
            g.check_width(config.dim, &st)?;
        }
        if let Some(t) = tokenizer {
            if t.len() > config.text_card {
                return Err(file_err(format!(
                    "the tokenizer has {} pieces, more than the model's text_card {}: the new ids would clash",
                    t.len(),
                    config.text_card
                )));
            }
            for name in &self.tokens {
                if let Some(id) = (0..t.len() as u32).find(|&i| t.piece(i) == Some(name.as_str())) {
                    return Err(file_err(format!("key `tokens`: {name:?} is already piece {id} of the tokenizer")));
                }
            }
        }
        Ok(())
    }

    /// `config` with the text vocabulary extended by the adapter's tokens.
    pub fn extend_config(&self, config: &LmConfig) -> LmConfig {
        LmConfig { text_card: config.text_card + self.len(), ..config.clone() }
    }

    /// Replaces the three text tables of `w` (a checkpoint of a model of `config`, before the
    /// adapter) with their extended forms; returns the extended config. The new embedding rows
    /// sit before the initial token's row, the head gains N output rows, and the depth
    /// transformer's text table gets a copy of the padding token's row per new token.
    pub fn apply(&self, w: &mut WeightFile, config: &LmConfig) -> Result<LmConfig> {
        self.check(config, None)?;
        for name in [TEXT_EMB, TEXT_LINEAR, DEPFORMER_TEXT_EMB] {
            if w.contains(&format!("{name}.q8")) {
                return Err(Error::Tensor {
                    path: w.path().to_path_buf(),
                    name: name.into(),
                    msg: "stored in 8 bits (kokichi quantize): adapters need the float checkpoint".into(),
                });
            }
        }
        let (v, n, d, dd) = (config.text_card, self.len(), config.dim, config.depformer_dim);
        let pad = config.existing_text_padding_id;
        if pad >= v {
            return Err(Error::config("existing_text_padding_id", format!("{pad} outside the vocabulary of {v}")));
        }
        let emb = w.host(TEXT_EMB, &[v + 1, d])?;
        let mut new_emb = Vec::with_capacity((v + n + 1) * d);
        new_emb.extend_from_slice(&emb[..v * d]);
        new_emb.extend_from_slice(&self.text_emb);
        new_emb.extend_from_slice(&emb[v * d..]);
        w.overlay(TEXT_EMB, vec![v + n + 1, d], new_emb);
        let mut head = w.host(TEXT_LINEAR, &[v, d])?;
        head.extend_from_slice(&self.text_linear);
        w.overlay(TEXT_LINEAR, vec![v + n, d], head);
        let dep = w.host(DEPFORMER_TEXT_EMB, &[v + 1, dd])?;
        let mut new_dep = Vec::with_capacity((v + n + 1) * dd);
        new_dep.extend_from_slice(&dep[..v * dd]);
        for _ in 0..n {
            new_dep.extend_from_slice(&dep[pad * dd..(pad + 1) * dd]);
        }
        new_dep.extend_from_slice(&dep[v * dd..]);
        w.overlay(DEPFORMER_TEXT_EMB, vec![v + n + 1, dd], new_dep);
        Ok(self.extend_config(config))
    }
}

/// Token names: at least one, none empty, none twice.
fn check_names(tokens: &[String]) -> std::result::Result<(), String> {
    if tokens.is_empty() {
        return Err("no tokens".into());
    }
    let mut seen = HashSet::new();
    for t in tokens {
        if t.trim().is_empty() {
            return Err(format!("{t:?} is not a name"));
        }
        if !seen.insert(t) {
            return Err(format!("{t:?} appears twice"));
        }
    }
    Ok(())
}
