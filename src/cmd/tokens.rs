//! `kokichi tokens train`: new special tokens for a frozen model, trained as a vocabulary
//! adapter (docs/adapter.md).

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};

use kokichi::backend::{self, BackendKind, Precision};
use kokichi::model_dir;
use kokichi::train::lm::TokenSet;
use kokichi::train::tokens::{self, TokenTrain};

#[derive(Args, Debug)]
pub struct TokensArgs {
    #[command(subcommand)]
    command: TokensCommand,
}

#[derive(Subcommand, Debug)]
enum TokensCommand {
    /// Train new tokens' embedding and head rows through the frozen LM; writes an adapter.
    Train(TrainArgs),
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Model folder, Hugging Face repo id, or `kokichi-tiny`.
    #[arg(long, default_value = model_dir::EMBEDDED)]
    model: String,
    /// Folder with `tokens.safetensors` (`train` [N, 1 + n_q, T], text first; new token j is id
    /// text_card + j), e.g. from training/tool_tokens.py; repeatable (the rows of all of them).
    #[arg(long, required = true)]
    data: Vec<PathBuf>,
    /// A new token's name, in id order; repeatable.
    #[arg(long = "token", required = true)]
    tokens: Vec<String>,
    /// The adapter folder to write.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 300)]
    steps: usize,
    #[arg(long, default_value_t = 8)]
    batch: usize,
    #[arg(long, default_value_t = 1e-2)]
    lr: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Weight of a new token's term in the loss against one ordinary frame's (a new token is
    /// about one frame in a hundred).
    #[arg(long, default_value_t = 1.0)]
    token_weight: f32,
    /// Frames from a new token's frame in which saying it counts: the loss is the probability
    /// that it is the first thing said in them, padding before it (1: that frame only).
    #[arg(long, default_value_t = 1)]
    window: usize,
    /// Weight of each frame of a dialogue without a new token (the negatives: other questions,
    /// quiet windows) against the same frame of one with a new token.
    #[arg(long, default_value_t = 1.0)]
    negative_weight: f32,
    /// Also learn a prefix of this many input vectors (a gist, at most 64) that every session of
    /// the adapted model starts after (0: the two rows per token only).
    #[arg(long, default_value_t = 0)]
    gist: usize,
}

pub fn tokens(kind: BackendKind, a: TokensArgs) -> Result<()> {
    match a.command {
        TokensCommand::Train(t) => train(kind, t),
    }
}

fn train(kind: BackendKind, a: TrainArgs) -> Result<()> {
    let files = model_dir::resolve(&a.model)?;
    if a.steps == 0 || a.batch == 0 || a.window == 0 {
        bail!("--steps, --batch and --window must be positive");
    }
    if !a.token_weight.is_finite() || a.token_weight <= 0.0 {
        bail!("--token-weight must be positive");
    }
    if !a.negative_weight.is_finite() || a.negative_weight <= 0.0 {
        bail!("--negative-weight must be positive");
    }
    let file = |dir: &PathBuf| dir.join("tokens.safetensors");
    let mut data = TokenSet::read(&file(&a.data[0]), "train")?;
    for dir in &a.data[1..] {
        data.append(&file(dir), "train")?;
    }
    let device = backend::device(kind, Precision::F32)?.autodiff();
    let settings = TokenTrain {
        steps: a.steps,
        batch: a.batch,
        lr: a.lr,
        pad_weight: 0.5,
        token_weight: a.token_weight,
        window: a.window,
        negative_weight: a.negative_weight,
        gist: a.gist,
        seed: a.seed,
        log_every: 10,
    };
    let tokenizer = files.tokenizer.as_deref().map(kokichi::tokenizer::Tokenizer::load).transpose()?;
    let t0 = std::time::Instant::now();
    let mut trained = tokens::train(&files.lm, &files.lm_config, a.tokens, &data, &settings, &device)?;
    trained.adapter.model = Some(files.source.clone());
    trained.adapter.path = a.out.join(kokichi::adapter::JSON);
    trained.adapter.check(&files.lm_config, tokenizer.as_ref())?;
    trained.adapter.write(&a.out)?;
    // Teacher-forced firing on (at most 800 of) the training rows, evenly spread.
    let rows: Vec<usize> = (0..data.n.min(800)).map(|i| i * data.n / data.n.min(800)).collect();
    let firing = tokens::teacher_forced_firing(
        &trained.lm,
        trained.adapter.gist.as_ref(),
        &data,
        &rows,
        files.lm_config.text_card,
        a.window,
    )?;
    let first = trained.losses.iter().take(10).sum::<f32>() / trained.losses.len().min(10) as f32;
    let last = trained.losses.iter().rev().take(10).sum::<f32>() / trained.losses.len().min(10) as f32;
    tracing::info!(
        seconds = t0.elapsed().as_secs_f64(),
        loss_first10 = first,
        loss_last10 = last,
        teacher_forced_hits = firing.hits,
        teacher_forced_false_frames = firing.false_frames,
        teacher_forced_false_rows = firing.false_rows,
        out = %a.out.display(),
        "adapter written"
    );
    Ok(())
}
