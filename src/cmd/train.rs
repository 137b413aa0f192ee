//! `kokichi train-codec` and `kokichi train-lm`: Burn training on the CPU (flex) or wgpu.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use kokichi::backend::{self, BackendKind, Precision};
use kokichi::lm::{LmConfig, LmModel};
use kokichi::mimi::{Mimi, MimiConfig};
use kokichi::train::{self, Progress};

#[derive(Args, Debug)]
pub struct CodecArgs {
    /// Corpus folder (training/make_data.py output).
    #[arg(long)]
    data: PathBuf,
    /// JSON of the codec (the `mimi` object form); the real Mimi's when omitted.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Active codebooks.
    #[arg(long, default_value_t = 8)]
    codebooks: usize,
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 1000)]
    steps: usize,
    #[arg(long, default_value_t = 8)]
    batch: usize,
    #[arg(long, default_value_t = 1.2)]
    seconds: f64,
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Read at most this many audio files.
    #[arg(long, default_value_t = 100_000)]
    max_files: usize,
}

#[derive(Args, Debug)]
pub struct LmArgs {
    /// Safetensors with `train` token sequences [N, 1 + n_q, T] (training/train_lm.py tokenize).
    #[arg(long)]
    tokens: PathBuf,
    /// JSON of the LM (the `lm` object form).
    #[arg(long)]
    config: PathBuf,
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 1000)]
    steps: usize,
    #[arg(long, default_value_t = 16)]
    batch: usize,
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &PathBuf) -> Result<T> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))?;
    serde_json::from_value(v).with_context(|| format!("{}", path.display()))
}

pub fn codec(kind: BackendKind, a: CodecArgs) -> Result<()> {
    let config: MimiConfig = match &a.config {
        Some(p) => read_json(p)?,
        None => MimiConfig::v0_1(),
    };
    config.validate()?;
    let device = backend::device(kind, Precision::F32)?.autodiff();
    let clips = train::codec::Clips::read(&a.data, config.sample_rate, config.frame_size(), a.seconds, a.max_files)?;
    let (mimi, slots, start) = match Progress::read(&a.out) {
        Some(p) if a.out.join("mimi.safetensors").is_file() => {
            let mut w =
                kokichi::weights::WeightFile::open(&a.out.join("mimi.safetensors"), &device, burn::tensor::DType::F32)?;
            let m = Mimi::build(&mut w, config, a.codebooks)?;
            (m, w.finish()?, p.step)
        }
        _ => {
            let (m, s) = Mimi::random(config, a.codebooks, &device, a.seed)?;
            (m, s, 0)
        }
    };
    let settings = train::codec::CodecTrain {
        steps: a.steps,
        batch: a.batch,
        lr: a.lr,
        seed: a.seed,
        log_every: 10,
        save_every: 100,
    };
    let (_, secs) = train::codec::train(mimi, &slots, &clips, &settings, &a.out, start)?;
    tracing::info!(s_per_step = secs, out = %a.out.display(), "codec training done");
    Ok(())
}

pub fn lm(kind: BackendKind, a: LmArgs) -> Result<()> {
    let config: LmConfig = read_json(&a.config)?;
    config.validate()?;
    let device = backend::device(kind, Precision::F32)?.autodiff();
    let data = train::lm::TokenSet::read(&a.tokens, "train")?;
    let (model, slots, start): (LmModel, _, usize) = train::lm::resume_or_init(config, &device, &a.out, a.seed)?;
    let settings = train::lm::LmTrain {
        steps: a.steps,
        batch: a.batch,
        lr: a.lr,
        pad_weight: 0.5,
        seed: a.seed,
        log_every: 10,
        save_every: 100,
    };
    let (_, secs) = train::lm::train(model, &slots, &data, &settings, &a.out, start)?;
    tracing::info!(s_per_step = secs, out = %a.out.display(), "LM training done");
    Ok(())
}
