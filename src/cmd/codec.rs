//! `kokichi encode` and `kokichi decode`: the Mimi codec over files.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;

use kokichi::audio;
use kokichi::backend::{self, BackendKind, Precision};
use kokichi::mimi::{Mimi, MimiConfig};
use kokichi::weights::{self, OutTensor};

/// What `encode` and `decode` share: the codec and how to run it.
#[derive(Args, Debug)]
pub struct CodecArgs {
    /// Mimi weights (safetensors, reference checkpoint layout).
    #[arg(long)]
    mimi: PathBuf,
    /// config.json with a `mimi` object; the real Mimi when omitted.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Run the whole signal at once instead of streaming frame by frame.
    #[arg(long)]
    batch: bool,
}

#[derive(Args, Debug)]
pub struct EncodeArgs {
    #[command(flatten)]
    codec: CodecArgs,
    /// Number of codebooks to emit (default: the config's `mimi_codebooks`, else 8).
    #[arg(long)]
    codebooks: Option<usize>,
    /// Audio file (wav, flac, mp3, ogg); resampled to 24 kHz mono.
    #[arg(long)]
    input: PathBuf,
    /// Output safetensors holding `codes` `[1, Q, T]`.
    #[arg(long)]
    output: PathBuf,
}

#[derive(Args, Debug)]
pub struct DecodeArgs {
    #[command(flatten)]
    codec: CodecArgs,
    /// Safetensors holding `codes` `[1, Q, T]`.
    #[arg(long)]
    input: PathBuf,
    /// Output wav (24 kHz mono).
    #[arg(long)]
    output: PathBuf,
}

/// Reads `config.json` (`{"mimi": {...}, "mimi_codebooks": n}` or a bare mimi object).
fn load_config(path: Option<&PathBuf>) -> Result<(MimiConfig, Option<usize>)> {
    let Some(path) = path else {
        return Ok((MimiConfig::v0_1(), None));
    };
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))?;
    let codebooks = json.get("mimi_codebooks").and_then(|v| v.as_u64()).map(|v| v as usize);
    let mimi = json.get("mimi").cloned().unwrap_or(json);
    let cfg = MimiConfig::from_json(&mimi.to_string()).with_context(|| format!("{}", path.display()))?;
    Ok((cfg, codebooks))
}

fn load_mimi(
    backend_kind: BackendKind,
    dtype: Precision,
    path: &Path,
    config: Option<&PathBuf>,
    codebooks: Option<usize>,
) -> Result<Mimi> {
    let (cfg, cfg_codebooks) = load_config(config)?;
    let n = codebooks.or(cfg_codebooks).unwrap_or(8.min(cfg.quantizer.n_q));
    let device = backend::device(backend_kind, dtype)?;
    tracing::info!(backend = %backend::kind_of(&device), adapter = %backend::adapter_name(&device), "device ready");
    let t0 = Instant::now();
    let mimi = Mimi::load(path, cfg, n, &device, dtype.dtype())?;
    tracing::info!(ms = t0.elapsed().as_millis() as u64, codebooks = n, "mimi loaded");
    Ok(mimi)
}

pub fn encode(backend_kind: BackendKind, dtype: Precision, a: EncodeArgs) -> Result<()> {
    let mimi = load_mimi(backend_kind, dtype, &a.codec.mimi, a.codec.config.as_ref(), a.codebooks)?;
    let pcm = audio::read_audio(&a.input, mimi.sample_rate() as u32)?;
    if pcm.is_empty() {
        bail!("{}: no audio samples", a.input.display());
    }
    let frame = mimi.frame_size();
    let frames = pcm.len().div_ceil(frame);
    let t0 = Instant::now();
    let (q, codes) = if a.codec.batch {
        let n = pcm.len();
        let codes = mimi.encode(mimi.pcm_tensor(pcm, [1, n]))?;
        let q = codes.dims()[1];
        (q, backend::read_ints(codes)?)
    } else {
        let mut state = mimi.init_enc_state(1)?;
        let mut padded = pcm;
        padded.resize(frames * frame, 0.0);
        let mut per_frame = Vec::with_capacity(frames);
        for chunk in padded.chunks_exact(frame) {
            let c = mimi.encode_step(&mut state, mimi.pcm_tensor(chunk.to_vec(), [1, frame]))?;
            per_frame.push(backend::read_ints(c)?);
        }
        let q = mimi.num_codebooks;
        // [T][Q] -> [Q][T]
        let mut codes = vec![0i64; q * frames];
        for (t, col) in per_frame.iter().enumerate() {
            for (k, &c) in col.iter().enumerate() {
                codes[k * frames + t] = c;
            }
        }
        (q, codes)
    };
    let secs = t0.elapsed().as_secs_f64();
    tracing::info!(frames, codebooks = q, ms_per_frame = 1000.0 * secs / frames as f64, "encoded");
    weights::write_tensors(&a.output, vec![("codes".into(), vec![1, q, frames], OutTensor::I64(codes))])?;
    Ok(())
}

pub fn decode(backend_kind: BackendKind, dtype: Precision, a: DecodeArgs) -> Result<()> {
    let (values, shape) = weights::read_int_tensor(&a.input, "codes")?;
    let [b, q, t] = match shape.as_slice() {
        &[b, q, t] => [b, q, t],
        other => bail!("{}: tensor `codes` has shape {other:?}, expected [1, Q, T]", a.input.display()),
    };
    if b != 1 || q == 0 || t == 0 {
        bail!("{}: tensor `codes` has shape [{b}, {q}, {t}], expected [1, Q, T] with Q, T > 0", a.input.display());
    }
    let mimi = load_mimi(backend_kind, dtype, &a.codec.mimi, a.codec.config.as_ref(), Some(q))
        .with_context(|| format!("{}: {q} codebooks", a.input.display()))?;
    let codes = mimi
        .codes_tensor(values.clone(), [1, q, t])
        .with_context(|| format!("{}: tensor `codes`", a.input.display()))?;
    let t0 = Instant::now();
    let pcm = if a.codec.batch {
        backend::read_floats(mimi.decode(codes)?)?
    } else {
        let mut state = mimi.init_dec_state(1)?;
        let mut out = Vec::with_capacity(t * mimi.frame_size());
        for i in 0..t {
            let col: Vec<i64> = (0..q).map(|k| values[k * t + i]).collect();
            let c = mimi.codes_tensor(col, [1, q, 1])?;
            out.extend(backend::read_floats(mimi.decode_chunk(&mut state, c)?)?);
        }
        out
    };
    tracing::info!(frames = t, ms_per_frame = 1000.0 * t0.elapsed().as_secs_f64() / t as f64, "decoded");
    audio::write_wav(&a.output, &pcm, mimi.sample_rate() as u32)?;
    Ok(())
}
