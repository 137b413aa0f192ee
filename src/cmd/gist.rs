//! `kokichi gist train`: learns K prefix latents that stand in for a spoken prompt, through the
//! frozen LM (`kokichi::train::gist`), and writes them as a gist file (`kokichi::gist`).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};

use kokichi::audio;
use kokichi::backend::{self, BackendKind, Precision};
use kokichi::gist::{Gist, MAX_K};
use kokichi::lm::sampling::Sampling;
use kokichi::lm::{GenConfig, LmModel};
use kokichi::model_dir;
use kokichi::session::Engine;
use kokichi::train::gist::{self as tg, GistTrain};

#[derive(Subcommand, Debug)]
pub enum GistCommand {
    /// Learn K prefix latents that make a fresh session behave as after PROMPT.
    Train(TrainArgs),
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Model folder, Hugging Face repo id, or `kokichi-tiny` (the embedded default).
    #[arg(long, default_value = kokichi::model_dir::EMBEDDED)]
    pub model: String,
    /// The spoken prompt the gist stands in for (wav, flac, mp3, ogg).
    #[arg(long)]
    pub prompt: PathBuf,
    /// What the prompt says (kept in the gist's metadata).
    #[arg(long)]
    pub prompt_text: Option<String>,
    /// Prefix vectors to learn (1 to 64).
    #[arg(long, default_value_t = 8)]
    pub k: usize,
    /// The gist file to write (safetensors, tensor `gist` [K, d_model]).
    #[arg(long)]
    pub out: PathBuf,
    /// Folder of audio files (wav, flac, mp3, ogg), each something the user may say after the
    /// prompt; the model's answers to them (greedy) are the continuations. Without it: the
    /// model's own sampled continuations after the prompt while the user is silent.
    #[arg(long)]
    pub continuations: Option<PathBuf>,
    /// Sampled continuations without --continuations (a quarter held out).
    #[arg(long, default_value_t = 12)]
    pub samples: usize,
    /// Frames per continuation (12.5 a second).
    #[arg(long, default_value_t = 40)]
    pub frames: usize,
    /// Sample the continuations at this temperature, text and audio, without top-k (default:
    /// Moshi's 0.7 and 0.8 with top-k). At 1 they follow the model's own distribution, so the
    /// cross-entropy of their tokens is, in expectation, the KL plus a constant.
    #[arg(long)]
    pub temperature: Option<f32>,
    #[arg(long, default_value_t = 300)]
    pub steps: usize,
    /// Adam's learning rate (cosine decay).
    #[arg(long, default_value_t = 0.02)]
    pub lr: f64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Start from this gist file instead of the prompt's last K input vectors (with
    /// `--steps 0`: measure that gist's held-out KL).
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Also write the dialogues here: `dialogues` `[N, 1 + n_q, tp + tc]` (i64, text first),
    /// `held_out` (the held-out rows) and `prompt_frames` `[1]`, for remote training
    /// (examples/gist_remote.py).
    #[arg(long)]
    pub dump_dialogues: Option<PathBuf>,
}

pub fn gist(kind: BackendKind, c: GistCommand) -> Result<()> {
    match c {
        GistCommand::Train(a) => train(kind, a),
    }
}

fn continuation_audio(dir: &PathBuf, rate: u32) -> Result<Vec<Vec<f32>>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("{}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().and_then(|e| e.to_str()).is_some_and(|e| ["wav", "flac", "mp3", "ogg"].contains(&e)))
        .collect();
    paths.sort();
    if paths.len() < 2 {
        bail!("{}: {} audio files, at least 2 are needed (train and held out)", dir.display(), paths.len());
    }
    paths.iter().map(|p| Ok(audio::read_audio(p, rate)?)).collect()
}

fn train(kind: BackendKind, a: TrainArgs) -> Result<()> {
    if a.k == 0 || a.k > MAX_K {
        bail!("--k {} is outside 1..={MAX_K}", a.k);
    }
    let files = model_dir::resolve(&a.model)?;
    let device = backend::device(kind, Precision::F32)?;
    let engine = Engine::load_as(&files, &device, Precision::F32)?;
    let rate = engine.sample_rate() as u32;
    let prompt = audio::read_audio(&a.prompt, rate)?;
    if prompt.is_empty() {
        bail!("{}: no audio samples", a.prompt.display());
    }
    let (users, configs): (Vec<Vec<f32>>, Vec<GenConfig>) = match &a.continuations {
        Some(dir) => {
            let users = continuation_audio(dir, rate)?;
            let n = users.len();
            (users, vec![GenConfig::greedy(); n])
        }
        None => {
            if a.samples < 2 {
                bail!("--samples {}: at least 2 are needed (train and held out)", a.samples);
            }
            let base = match a.temperature {
                Some(t) if !(t.is_finite() && t > 0.0) => bail!("--temperature {t} must be a finite value > 0"),
                Some(t) => {
                    let s = Sampling { temperature: t, top_k: 0 };
                    GenConfig { text: s, audio: s, ..GenConfig::default() }
                }
                None => GenConfig::default(),
            };
            let configs = (0..a.samples as u64)
                .map(|r| {
                    let s = a.seed * 1000 + 2 * r;
                    GenConfig { text_seed: Some(s), audio_seed: Some(s + 1), ..base }
                })
                .collect();
            (vec![Vec::new(); a.samples], configs)
        }
    };
    let t0 = Instant::now();
    let d = tg::dialogues(&engine, &prompt, &users, &configs, a.frames)?;
    tracing::info!(
        dialogues = d.n,
        prompt_frames = d.tp,
        frames = d.tc,
        secs = t0.elapsed().as_secs_f64(),
        "generated"
    );
    drop(engine);
    if let Some(p) = &a.dump_dialogues {
        use kokichi::weights::{OutTensor, write_tensors};
        let (_, held) = tg::split(d.n);
        let held: Vec<i64> = held.iter().map(|&r| r as i64).collect();
        write_tensors(
            p,
            vec![
                ("dialogues".into(), vec![d.n, d.k, d.tp + d.tc], OutTensor::I64(d.codes.clone())),
                ("held_out".into(), vec![held.len()], OutTensor::I64(held)),
                ("prompt_frames".into(), vec![1], OutTensor::I64(vec![d.tp as i64])),
            ],
        )?;
    }
    let ad = device.autodiff();
    let lm = LmModel::load_as(&files.lm, files.lm_config.clone(), &ad, Precision::F32)?;
    let lm = burn::module::Module::no_grad(lm);
    let settings = GistTrain { steps: a.steps, lr: a.lr, log_every: 10 };
    let t0 = Instant::now();
    let init = match &a.init {
        Some(p) => {
            let g = Gist::read(p)?;
            g.check_width(lm.config.dim, p)?;
            if g.k != a.k {
                bail!("{}: {} vectors, but --k is {}", p.display(), g.k, a.k);
            }
            Some(g.values)
        }
        None => None,
    };
    let (values, f) = tg::fit(&lm, &d, a.k, init, &settings)?;
    let closed = f.closed();
    tracing::info!(secs = t0.elapsed().as_secs_f64(), "trained");
    eprintln!(
        "held-out KL (nats/frame): prompt {:.4}  gist {:.4}  nothing {:.4}  (init {:.4}, prompt replayed as prefix {:.4}); gap closed {:.1}%",
        f.prompt,
        f.gist,
        f.nothing,
        f.init,
        f.replay,
        100.0 * closed
    );
    let mut g = Gist::new(values, a.k, lm.config.dim)?;
    let meta = [
        ("kl_prompt", f.prompt.to_string()),
        ("kl_gist", f.gist.to_string()),
        ("kl_nothing", f.nothing.to_string()),
        ("kl_init", f.init.to_string()),
        ("kl_replay", f.replay.to_string()),
        ("gap_closed", closed.to_string()),
        ("k", a.k.to_string()),
        ("prompt_frames", d.tp.to_string()),
        ("continuation_frames", d.tc.to_string()),
        ("dialogues", d.n.to_string()),
        ("steps", a.steps.to_string()),
        ("model", files.source.to_string()),
    ];
    g.meta.extend(meta.into_iter().map(|(k, v)| (k.to_string(), v)));
    if let Some(t) = a.prompt_text {
        g.meta.insert("prompt".into(), t);
    }
    g.write(&a.out)?;
    tracing::info!(out = %a.out.display(), "gist written");
    Ok(())
}
