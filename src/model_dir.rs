//! Finding a model's files: a kokichi model folder, a Kyutai Hugging Face snapshot folder, or
//! a Hugging Face repo id fetched into the Hugging Face cache (`hub.rs`).
//!
//! kokichi folder: `config.json` (`{"mimi": {...}, "lm": {...}, "mimi_codebooks": n}`, and
//! optionally `"sampling": {...}`, the model's recommended sampling, the daemon's `[sampling]`
//! keys), `mimi.safetensors`, `model.safetensors`, optional `tokenizer.model`.
//! Kyutai snapshot: `model.safetensors`, `tokenizer-e351c8d8-checkpoint125.safetensors`,
//! `tokenizer_spm_32k_3.model`, with the LM configuration of its `config.json` where it has one,
//! else read off `model.safetensors`'s tensor names and shapes (`lm::infer`).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::lm::sampling::SamplingOverrides;
use crate::lm::{GenConfig, LmConfig};
use crate::mimi::MimiConfig;

pub const KYUTAI_MIMI: &str = "tokenizer-e351c8d8-checkpoint125.safetensors";
pub const KYUTAI_LM: &str = "model.safetensors";
pub const KYUTAI_TOKENIZER: &str = "tokenizer_spm_32k_3.model";

/// The name of the embedded default model, shipped in `assets/kokichi-tiny`.
pub const EMBEDDED: &str = "kokichi-tiny";

/// Places the embedded model may live, in order: `$KOKICHI_ASSETS/kokichi-tiny`, beside the
/// binary (`assets/kokichi-tiny`, `../share/kokichi/kokichi-tiny`), then the source tree the
/// binary was built from (so `cargo run` and `make run` work from a checkout).
pub fn embedded_candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(dir) = std::env::var_os("KOKICHI_ASSETS") {
        out.push(PathBuf::from(dir).join(EMBEDDED));
    }
    if let Some(exe_dir) = std::env::current_exe().ok().and_then(|p| p.parent().map(Path::to_path_buf)) {
        out.push(exe_dir.join("assets").join(EMBEDDED));
        out.push(exe_dir.join("../share/kokichi").join(EMBEDDED));
    }
    out.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("assets").join(EMBEDDED));
    out
}

/// Finds the embedded default model (see [`embedded_candidates`]).
pub fn embedded() -> Result<ModelFiles> {
    let candidates = embedded_candidates();
    match candidates.iter().find(|d| d.join("config.json").is_file()) {
        Some(dir) => {
            let mut files = from_dir(dir)?;
            files.source = format!("{EMBEDDED} ({})", dir.display());
            Ok(files)
        }
        None => Err(Error::File {
            path: PathBuf::from(EMBEDDED),
            msg: format!(
                "the embedded model was not found (looked in {}); set KOKICHI_ASSETS or pass --model",
                candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
            ),
        }),
    }
}

/// Everything needed to load a model.
#[derive(Clone, Debug)]
pub struct ModelFiles {
    pub mimi: PathBuf,
    pub lm: PathBuf,
    pub tokenizer: Option<PathBuf>,
    pub mimi_config: MimiConfig,
    pub lm_config: LmConfig,
    /// Active Mimi codebooks (`dep_q` for Moshi).
    pub codebooks: usize,
    /// How the model should be sampled unless the user says otherwise: its `config.json`'s
    /// `sampling` over Moshi's defaults (Moshi's defaults for Kyutai folders).
    pub sampling: GenConfig,
    /// Where the files came from, for logs.
    pub source: String,
}

fn require(path: PathBuf) -> Result<PathBuf> {
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::io(&path, std::io::Error::new(std::io::ErrorKind::NotFound, "model file not found")))
    }
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::File { path: path.to_path_buf(), msg: format!("invalid JSON: {e}") })
}

fn in_file(path: &Path, e: Error) -> Error {
    match e {
        Error::Config { setting, msg } => {
            Error::File { path: path.to_path_buf(), msg: format!("config `{setting}`: {msg}") }
        }
        other => other,
    }
}

/// A kokichi `config.json`'s `sampling` object over Moshi's defaults.
fn model_sampling(v: &serde_json::Value) -> std::result::Result<GenConfig, String> {
    let o: SamplingOverrides = serde_json::from_value(v.clone()).map_err(|e| format!("config `sampling`: {e}"))?;
    if let Some((key, t)) = o.bad_temperature() {
        return Err(format!("config `sampling.{key}`: {t} is not a temperature >= 0"));
    }
    if o.seed.is_some() {
        return Err("config `sampling.seed`: a model recommends how to sample, not a seed".into());
    }
    Ok(o.over(GenConfig::default()))
}

/// Resolves `spec`: a folder, or a Hugging Face repo id such as `kyutai/moshiko-pytorch-bf16`.
pub fn resolve(spec: &str) -> Result<ModelFiles> {
    if spec == EMBEDDED {
        return embedded();
    }
    let path = Path::new(spec);
    if path.is_dir() {
        return from_dir(path);
    }
    if path.exists() {
        return Err(Error::File {
            path: path.to_path_buf(),
            msg: "a model must be a folder (config.json + mimi.safetensors + model.safetensors) or a Hugging Face repo id".into(),
        });
    }
    let looks_like_repo = spec.split('/').count() == 2 && !spec.starts_with('.') && !spec.starts_with('/');
    if !looks_like_repo {
        return Err(Error::io(path, std::io::Error::new(std::io::ErrorKind::NotFound, "no such model folder")));
    }
    download(spec)
}

/// Reads a model folder of either kind.
pub fn from_dir(dir: &Path) -> Result<ModelFiles> {
    let config = dir.join("config.json");
    if config.is_file() {
        let json = read_json(&config)?;
        if json.get("lm").is_some() || json.get("mimi").is_some() {
            let mimi_config = match json.get("mimi") {
                Some(m) => MimiConfig::from_json(&m.to_string()).map_err(|e| in_file(&config, e))?,
                None => MimiConfig::v0_1(),
            };
            let lm_config = match json.get("lm") {
                Some(l) => LmConfig::from_json(&l.to_string()).map_err(|e| in_file(&config, e))?,
                None => LmConfig::moshiko(),
            };
            let codebooks = json.get("mimi_codebooks").and_then(|v| v.as_u64()).map_or(lm_config.dep_q, |v| v as usize);
            let sampling = match json.get("sampling") {
                Some(v) => model_sampling(v).map_err(|msg| Error::File { path: config.clone(), msg })?,
                None => GenConfig::default(),
            };
            let tok = dir.join("tokenizer.model");
            return Ok(ModelFiles {
                mimi: require(dir.join("mimi.safetensors"))?,
                lm: require(dir.join("model.safetensors"))?,
                tokenizer: tok.is_file().then_some(tok),
                mimi_config,
                lm_config,
                codebooks,
                sampling,
                source: dir.display().to_string(),
            });
        }
        // A Kyutai config.json: the LM's keyword arguments at the top level plus file names.
        let name = |key: &str, default: &str| json.get(key).and_then(|v| v.as_str()).unwrap_or(default).to_string();
        let lm_config = LmConfig::from_json(&json.to_string()).map_err(|e| in_file(&config, e))?;
        let tok = dir.join(name("tokenizer_name", KYUTAI_TOKENIZER));
        let codebooks = kyutai_codebooks(&lm_config);
        return Ok(ModelFiles {
            mimi: require(dir.join(name("mimi_name", KYUTAI_MIMI)))?,
            lm: require(dir.join(name("moshi_name", KYUTAI_LM)))?,
            tokenizer: tok.is_file().then_some(tok),
            mimi_config: MimiConfig::v0_1(),
            lm_config,
            codebooks,
            sampling: GenConfig::default(),
            source: dir.display().to_string(),
        });
    }
    if dir.join(KYUTAI_MIMI).is_file() {
        let tok = dir.join(KYUTAI_TOKENIZER);
        let lm = require(dir.join(KYUTAI_LM))?;
        let lm_config = crate::lm::infer::infer_file(&lm)?;
        return Ok(ModelFiles {
            mimi: require(dir.join(KYUTAI_MIMI))?,
            lm,
            tokenizer: tok.is_file().then_some(tok),
            mimi_config: MimiConfig::v0_1(),
            codebooks: kyutai_codebooks(&lm_config),
            lm_config,
            sampling: GenConfig::default(),
            source: dir.display().to_string(),
        });
    }
    Err(Error::File {
        path: dir.to_path_buf(),
        msg: format!("not a model folder: no config.json and no {KYUTAI_MIMI}"),
    })
}

/// Mimi codebooks of a Kyutai-style LM: the larger of the generated and the user's streams,
/// or half the streams when the depth transformer generates all of them (PersonaPlex predicts
/// the user's codebooks too).
pub fn kyutai_codebooks(lm: &LmConfig) -> usize {
    if lm.dep_q == lm.n_q { lm.n_q.div_ceil(2) } else { lm.dep_q.max(lm.n_q - lm.dep_q) }
}

/// Fetches a repository's files into the Hugging Face cache (see [`crate::hub`]): a kokichi
/// repo (`config.json` with `lm`/`mimi`) or a Kyutai one (`config.json` naming its files, or
/// moshiko's file names when it has none).
fn download(repo: &str) -> Result<ModelFiles> {
    let hub = crate::hub::HubRepo::open(repo)?;
    // A cached snapshot without config.json is complete (its LM configuration comes from the
    // tensors): no network needed.
    let config = match hub.cached("config.json") {
        Some(c) => Some(c),
        None if hub.cached(KYUTAI_LM).is_some() => None,
        None => hub.optional("config.json")?,
    };
    let mut last = None;
    match &config {
        Some(c) => {
            let json = read_json(c)?;
            if json.get("lm").is_some() || json.get("mimi").is_some() {
                for f in ["model.safetensors", "mimi.safetensors"] {
                    last = Some(hub.required(f)?);
                }
                hub.optional("tokenizer.model")?;
            } else {
                let name =
                    |key: &str, default: &str| json.get(key).and_then(|v| v.as_str()).unwrap_or(default).to_string();
                for f in [
                    name("moshi_name", KYUTAI_LM),
                    name("mimi_name", KYUTAI_MIMI),
                    name("tokenizer_name", KYUTAI_TOKENIZER),
                ] {
                    last = Some(hub.required(&f)?);
                }
            }
        }
        None => {
            for f in [KYUTAI_LM, KYUTAI_MIMI, KYUTAI_TOKENIZER] {
                last = Some(hub.required(f)?);
            }
        }
    }
    let dir = last.as_deref().and_then(Path::parent).map(Path::to_path_buf);
    let dir = dir.ok_or_else(|| Error::Download { repo: repo.to_string(), msg: "download folder unknown".into() })?;
    let mut files = from_dir(&dir)?;
    files.source = format!("{repo} ({})", dir.display());
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lm::sampling::Sampling;

    /// A kokichi folder with the given `sampling` object (the weight files only need to exist).
    fn folder(name: &str, sampling: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("kokichi-model-dir-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config =
            format!("{{\"lm\": {}, \"sampling\": {sampling}}}", serde_json::to_string(&LmConfig::tiny()).unwrap());
        std::fs::write(dir.join("config.json"), config).unwrap();
        for f in ["mimi.safetensors", "model.safetensors"] {
            std::fs::write(dir.join(f), b"").unwrap();
        }
        dir
    }

    #[test]
    fn a_model_folder_recommends_its_sampling() {
        let dir = folder("greedy", r#"{"greedy": true}"#);
        let files = from_dir(&dir).unwrap();
        assert_eq!((files.sampling.text, files.sampling.audio), (Sampling::GREEDY, Sampling::GREEDY));
        let dir = folder("text", r#"{"text_temperature": 0.0, "audio_topk": 50}"#);
        let files = from_dir(&dir).unwrap();
        assert_eq!(files.sampling.text.temperature, 0.0);
        assert_eq!(files.sampling.audio, Sampling { temperature: Sampling::AUDIO.temperature, top_k: 50 });
    }

    #[test]
    fn bad_sampling_in_config_json_names_the_file_and_key() {
        for (name, bad, key) in [
            ("neg", r#"{"audio_temperature": -0.5}"#, "sampling.audio_temperature"),
            ("unknown", r#"{"temprature": 0.5}"#, "temprature"),
            ("seed", r#"{"seed": 3}"#, "sampling.seed"),
        ] {
            let dir = folder(name, bad);
            let err = from_dir(&dir).unwrap_err().to_string();
            assert!(err.contains("config.json") && err.contains(key), "{name}: {err}");
        }
    }
}
