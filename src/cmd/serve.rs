//! `kokichi serve` (the daemon) and `kokichi ptt` (push-to-talk for desktop keybindings).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};

use kokichi::backend::{BackendKind, Precision};
use kokichi::daemon::config::{self, DaemonConfig, FileConfig, TalkMode};
use kokichi::daemon::control::{self, Ptt};

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Settings file (default: ~/.config/kokichi/config.toml when it exists).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Model folder or Hugging Face repo id (default: the embedded kokichi-tiny).
    #[arg(long)]
    model: Option<String>,
    /// Address to listen on (default 127.0.0.1:8998). Other than loopback needs --token.
    #[arg(long)]
    bind: Option<String>,
    /// Token clients must send (`?token=` or `Authorization: Bearer`).
    #[arg(long)]
    token: Option<String>,
    /// Serve WebSocket clients only; do not open the microphone and speaker.
    #[arg(long)]
    no_audio: bool,
    #[arg(long)]
    input_device: Option<String>,
    #[arg(long)]
    output_device: Option<String>,
    /// Gain on the local input (microphone or --input-file) in dB, -40 to 40: raise it when the
    /// microphone is quiet (kokichi-tiny hears speech peaking well below full scale worse).
    #[arg(long, allow_negative_numbers = true)]
    input_gain: Option<f32>,
    /// `ptt`: the model hears you only while talk is held; `open`: full duplex (headphones).
    #[arg(long, value_enum)]
    mode: Option<Mode>,
    /// Global hotkey for push-to-talk (feature `hotkey`), e.g. F9.
    #[arg(long)]
    hotkey: Option<String>,
    /// Control socket for `kokichi ptt`.
    #[arg(long)]
    control_socket: Option<PathBuf>,
    /// Use this audio file as the local input instead of the microphone.
    #[arg(long)]
    input_file: Option<PathBuf>,
    /// Write the local session's output here instead of playing it.
    #[arg(long)]
    output_file: Option<PathBuf>,
    /// Write the local session's inner monologue here.
    #[arg(long)]
    transcript_file: Option<PathBuf>,
    /// Feed the input file as fast as the model runs instead of in real time.
    #[arg(long)]
    fast_file: bool,
    /// Exit once the input file has been answered.
    #[arg(long)]
    exit_when_done: bool,
    /// Log the inner monologue (off by default).
    #[arg(long)]
    log_transcripts: bool,
    #[arg(long)]
    max_sessions: Option<usize>,
    #[command(flatten)]
    sampling: super::run::SamplingArgs,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Mode {
    Ptt,
    Open,
}

/// Builds the validated configuration: defaults, then the file, then the flags.
fn resolve(a: ServeArgs, backend: Option<BackendKind>, dtype: Option<Precision>) -> Result<DaemonConfig> {
    let mut c = DaemonConfig::default();
    let file = match &a.config {
        Some(p) => Some(p.clone()),
        None => config::default_config_path().filter(|p| p.is_file()),
    };
    if let Some(p) = &file {
        let text = std::fs::read_to_string(p).with_context(|| format!("{}", p.display()))?;
        c.apply_file(&FileConfig::parse(&text, p)?)?;
        tracing::info!(path = %p.display(), "settings read");
    }
    if let Some(v) = a.model {
        c.model = v;
    }
    if let Some(v) = backend {
        c.backend = v;
    }
    if let Some(v) = dtype {
        c.dtype = v;
    }
    if let Some(v) = a.bind {
        c.bind = config::parse_bind(&v)?;
    }
    if a.token.is_some() {
        c.token = a.token;
    }
    if a.no_audio {
        c.audio = false;
    }
    if a.input_device.is_some() {
        c.input_device = a.input_device;
    }
    if a.output_device.is_some() {
        c.output_device = a.output_device;
    }
    if let Some(v) = a.input_gain {
        c.input_gain = v;
    }
    if let Some(m) = a.mode {
        c.mode = match m {
            Mode::Ptt => TalkMode::Ptt,
            Mode::Open => TalkMode::Open,
        };
    }
    if a.hotkey.is_some() {
        c.hotkey = a.hotkey;
    }
    if let Some(p) = a.control_socket {
        c.control_socket = p;
    }
    c.input_file = a.input_file.or(c.input_file);
    c.output_file = a.output_file.or(c.output_file);
    c.transcript_file = a.transcript_file.or(c.transcript_file);
    c.fast_file |= a.fast_file;
    c.exit_when_done |= a.exit_when_done;
    c.log_transcripts |= a.log_transcripts;
    if let Some(v) = a.max_sessions {
        c.max_sessions = v;
    }
    c.apply_sampling(&a.sampling.overrides()?);
    c.validate()?;
    Ok(c)
}

pub fn serve(a: ServeArgs, backend: Option<BackendKind>, dtype: Option<Precision>) -> Result<()> {
    let config = resolve(a, backend, dtype)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let shutdown = async {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("no SIGTERM handler: {e}");
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        kokichi::daemon::run(config, shutdown).await
    })?;
    Ok(())
}

#[derive(Args, Debug)]
pub struct PttArgs {
    /// press, release, toggle or status.
    command: String,
    /// The daemon's control socket (default: as the daemon's).
    #[arg(long)]
    socket: Option<PathBuf>,
}

pub fn ptt(a: PttArgs) -> Result<()> {
    let cmd = Ptt::parse(&a.command)
        .with_context(|| format!("`{}`: expected press, release, toggle or status", a.command))?;
    let socket = match a.socket {
        Some(s) => s,
        None => {
            let mut c = DaemonConfig::default();
            if let Some(p) = config::default_config_path().filter(|p| p.is_file()) {
                let text = std::fs::read_to_string(&p).with_context(|| format!("{}", p.display()))?;
                c.apply_file(&FileConfig::parse(&text, &p)?)?;
            }
            c.control_socket
        }
    };
    let reply = control::send(&socket, cmd).with_context(|| "is `kokichi serve` running?")?;
    if let Some(err) = reply.strip_prefix("error: ") {
        anyhow::bail!("{err}");
    }
    println!("{reply}");
    Ok(())
}
