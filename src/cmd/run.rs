//! `kokichi run`: offline speech-to-speech over a file, streamed frame by frame exactly as the
//! live daemon runs it.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;

use kokichi::audio;
use kokichi::backend::{self, BackendKind, Precision};
use kokichi::daemon::tools;
use kokichi::gist::Gist;
use kokichi::latent_frame::DEFAULT_TOP_LOGITS;
use kokichi::lm::sampling::SamplingOverrides;
use kokichi::model_dir;
use kokichi::session::{Engine, Taps};
use kokichi::weights::{self, OutTensor};

/// Sampling flags shared by `run` and `serve`. Unset ones keep the model's recommendation (its
/// `config.json`'s `sampling`; kokichi-tiny: greedy), else Moshi's defaults.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Sampling")]
pub struct SamplingArgs {
    /// Greedy decoding of text and audio (deterministic).
    #[arg(long, conflicts_with_all = ["temperature", "topk", "text_temperature", "text_topk", "sample"])]
    pub greedy: bool,
    /// Sample with Moshi's defaults (and any of the flags below), also where the model
    /// recommends greedy decoding (kokichi-tiny does).
    #[arg(long)]
    pub sample: bool,
    /// Audio sampling temperature (Moshi: 0.8).
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Audio top-k (Moshi: 250).
    #[arg(long)]
    pub topk: Option<usize>,
    /// Text sampling temperature (Moshi: 0.7).
    #[arg(long)]
    pub text_temperature: Option<f32>,
    /// Text top-k (Moshi: 25).
    #[arg(long)]
    pub text_topk: Option<usize>,
    /// Seed of the samplers (text uses it, audio uses it + 1).
    #[arg(long)]
    pub seed: Option<u64>,
}

impl SamplingArgs {
    /// The flags as settings over the model's recommended sampling (its `config.json`, else
    /// Moshi's defaults); temperatures checked here.
    pub fn overrides(&self) -> Result<SamplingOverrides> {
        let o = SamplingOverrides {
            greedy: if self.greedy { Some(true) } else { self.sample.then_some(false) },
            text_temperature: self.text_temperature,
            text_topk: self.text_topk,
            audio_temperature: self.temperature,
            audio_topk: self.topk,
            seed: self.seed,
        };
        if let Some((key, t)) = o.bad_temperature() {
            let flag = if key == "audio_temperature" { "--temperature" } else { "--text-temperature" };
            bail!("{flag} must be a finite value >= 0, got {t}");
        }
        Ok(o)
    }
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Model folder (kokichi or Kyutai snapshot), Hugging Face repo id, or `kokichi-tiny`
    /// (the embedded default).
    #[arg(long, default_value = kokichi::model_dir::EMBEDDED)]
    pub model: String,
    /// Spoken input (wav, flac, mp3, ogg).
    #[arg(long)]
    pub input: PathBuf,
    /// The model's voice, 24 kHz mono wav, as long as the input.
    #[arg(long)]
    pub output: PathBuf,
    /// Write the inner monologue here.
    #[arg(long)]
    pub transcript: Option<PathBuf>,
    /// Gain on the input in dB, -40 to 40 (clamped to full scale): for quiet recordings.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub input_gain: f32,
    /// Write the produced tokens `[1, 1 + dep_q, T]` (text first) here.
    #[arg(long)]
    pub dump_tokens: Option<PathBuf>,
    /// Write each frame's latents here: `mimi` `[T, C]`, Mimi's encoder output before
    /// quantization, `lm` `[T, d_model]`, the temporal transformer's output, and the text head's
    /// 10 highest logits, `logits_ids` `[T, 10]` (i64) and `logits` `[T, 10]`.
    #[arg(long)]
    pub dump_latents: Option<PathBuf>,
    /// Start the session prompted by these prefix latents (`[K, d_model]` safetensors, tensor
    /// `gist`; see `kokichi gist train`).
    #[arg(long)]
    pub gist: Option<PathBuf>,
    /// Make the model say this text in its own voice: its pieces are forced into the inner
    /// monologue, the first where the model would start speaking (replacing its own answer).
    #[arg(long)]
    pub say: Option<String>,
    /// A settings file whose `[tools]` table binds special tokens to commands, as `kokichi
    /// serve`'s: a bound token's command runs beside the session and its answer is said.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Vocabulary adapter (folder or its `adapter.json`, docs/adapter.md): new special tokens
    /// the inner monologue may emit, written by name in the transcript.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    #[command(flatten)]
    pub prompt: SystemPromptArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

/// A PersonaPlex system prompt (docs/model-folder.md): stepped through the LM before the
/// conversation. Only for a model whose depth transformer predicts the user's streams too.
#[derive(Args, Debug, Clone, Default)]
pub struct SystemPromptArgs {
    /// A recording of the voice the model should speak with (any audio file; normalized to
    /// -24 LUFS).
    #[arg(long)]
    pub voice_prompt: Option<PathBuf>,
    /// The model's role, e.g. "You enjoy having a good conversation." (`<system>` tags added).
    #[arg(long)]
    pub text_prompt: Option<String>,
}

pub fn run(backend_kind: BackendKind, dtype: Precision, a: RunArgs) -> Result<()> {
    let overrides = a.sampling.overrides()?;
    if !audio::gain_db_ok(a.input_gain) {
        bail!("--input-gain {} dB is outside -{m}..{m} dB", a.input_gain, m = audio::MAX_GAIN_DB);
    }
    let files = model_dir::resolve(&a.model)?;
    let gen_config = overrides.over(files.sampling);
    let device = backend::device(backend_kind, dtype)?;
    tracing::info!(backend = %backend::kind_of(&device), adapter = %backend::adapter_name(&device), model = %files.source, "loading");
    let t0 = Instant::now();
    let adapter = a.adapter.as_deref().map(kokichi::adapter::Adapter::read).transpose()?;
    let mut engine = Engine::load_with_adapter(&files, &device, dtype, adapter)?;
    tracing::info!(ms = t0.elapsed().as_millis() as u64, "model loaded");
    engine.load_system_prompt(a.prompt.voice_prompt.as_deref(), a.prompt.text_prompt.as_deref())?;
    let mut pcm = audio::read_audio(&a.input, engine.sample_rate() as u32)?;
    if pcm.is_empty() {
        bail!("{}: no audio samples", a.input.display());
    }
    audio::apply_gain(&mut pcm, audio::gain_factor(a.input_gain));
    let frame = engine.frame_size();
    let input_len = pcm.len();
    let frames = input_len.div_ceil(frame);
    pcm.resize(frames * frame, 0.0);
    let gist = match &a.gist {
        Some(path) => {
            let g = Gist::read(path)?;
            g.check_width(engine.lm.config.dim, path)?;
            Some(g)
        }
        None => None,
    };
    let t_gist = Instant::now();
    let mut session = engine.init_session_with(gen_config, gist.as_ref())?;
    if let Some(g) = &gist {
        tracing::info!(k = g.k, ms = t_gist.elapsed().as_secs_f64() * 1e3, "gist read into the session");
    }
    if a.dump_latents.is_some() {
        session.taps = Taps { mimi: true, lm: true, logits: DEFAULT_TOP_LOGITS };
    }
    if let Some(text) = &a.say {
        engine.say(&mut session, text)?;
    }
    let tools = match &a.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
            let settings = kokichi::daemon::Settings::from_toml(&text, path)?;
            kokichi::daemon::tools::validate(&settings.tools)?;
            let mut bound = std::collections::HashMap::new();
            for (name, action) in settings.tools {
                let id = engine.tokenizer.as_ref().and_then(|t| t.id_of(&name)).with_context(|| {
                    format!("{}: tools.\"{name}\" is not a piece of the model's vocabulary", path.display())
                })?;
                bound.insert(i64::from(id), (name, action));
            }
            bound
        }
        None => Default::default(),
    };
    let (done_tx, done_rx) = std::sync::mpsc::sync_channel::<tools::Done>(16);
    let runner = if tools.is_empty() {
        None
    } else {
        Some(tools::Runner::start(move |done| {
            let _ = done_tx.try_send(done);
        })?)
    };
    let (mut mimi_latents, mut lm_latents) = (Vec::new(), Vec::new());
    let (mut top_ids, mut top_logits) = (Vec::new(), Vec::new());
    let mut out_pcm = Vec::with_capacity(pcm.len());
    let mut transcript = String::new();
    let dep_q = engine.lm.config.dep_q;
    let mut debounce = tools::Debounce::default();
    let mut tokens: Vec<Vec<i64>> = Vec::new();
    let t0 = Instant::now();
    for (f, chunk) in pcm.chunks_exact(frame).enumerate() {
        while let Ok(done) = done_rx.try_recv() {
            match done.answer {
                Ok(answer) => {
                    tracing::info!(token = %done.token, %answer, frame = f, "tool answered");
                    engine.say(&mut session, &answer)?;
                }
                Err(e) => tracing::warn!(token = %done.token, frame = f, "tool: {e}"),
            }
        }
        let out = engine.step(&mut [&mut session], chunk)?.pop().context("no output for the frame")?;
        let bound = out.text.and_then(|t| tools.get(&t)).filter(|(token, _)| debounce.admit(token, f as u64));
        if let (Some((token, action)), Some(runner)) = (bound, &runner) {
            tracing::info!(%token, frame = f, "special token");
            if !action.command.is_empty() {
                let job = tools::Job { session: 0, token: token.clone(), action: action.clone() };
                if let Err(e) = runner.submit(job) {
                    tracing::warn!(%token, "tool: {e}");
                }
            }
        }
        out_pcm.extend_from_slice(&out.pcm);
        mimi_latents.extend(out.latents.mimi.unwrap_or_default());
        lm_latents.extend(out.latents.lm.unwrap_or_default());
        if let Some(top) = out.latents.logits {
            top_ids.extend(top.ids.iter().map(|&i| i64::from(i)));
            top_logits.extend(top.values);
        }
        if let (Some(t), Some(a)) = (out.text, &out.audio) {
            if let Some(p) = engine.text_piece(t) {
                transcript.push_str(&p);
            }
            let mut col = vec![t];
            col.extend_from_slice(a);
            tokens.push(col);
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    tracing::info!(
        frames,
        ms_per_frame = 1000.0 * secs / frames as f64,
        rtf = secs / (frames as f64 * frame as f64 / engine.sample_rate() as f64),
        "done"
    );
    // The answer is as long as the question: the last frame's padding is dropped.
    out_pcm.truncate(input_len);
    audio::write_wav(&a.output, &out_pcm, engine.sample_rate() as u32)?;
    if let Some(p) = &a.transcript {
        let mut f = std::fs::File::create(p).with_context(|| format!("{}", p.display()))?;
        writeln!(f, "{}", transcript.trim()).with_context(|| format!("{}", p.display()))?;
    }
    if let Some(p) = &a.dump_tokens {
        let t = tokens.len();
        let k = 1 + dep_q;
        let mut flat = vec![0i64; k * t];
        for (i, col) in tokens.iter().enumerate() {
            for (s, &v) in col.iter().enumerate() {
                flat[s * t + i] = v;
            }
        }
        weights::write_tensors(p, vec![("tokens".into(), vec![1, k, t], OutTensor::I64(flat))])?;
    }
    if let Some(p) = &a.dump_latents {
        let (c, d, k) = (engine.mimi.latent_dim(), engine.lm.config.dim, DEFAULT_TOP_LOGITS);
        weights::write_tensors(
            p,
            vec![
                ("mimi".into(), vec![mimi_latents.len() / c, c], OutTensor::F32(mimi_latents)),
                ("lm".into(), vec![lm_latents.len() / d, d], OutTensor::F32(lm_latents)),
                ("logits_ids".into(), vec![top_ids.len() / k, k], OutTensor::I64(top_ids)),
                ("logits".into(), vec![top_logits.len() / k, k], OutTensor::F32(top_logits)),
            ],
        )?;
    }
    Ok(())
}
