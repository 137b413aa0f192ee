//! `kokichi serve` (the daemon) and `kokichi ptt` (push-to-talk for desktop keybindings).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use kokichi::backend::{BackendKind, Precision};
use kokichi::daemon::control::{self, Ptt};
use kokichi::daemon::settings::{self, CommandLine, Settings, SettingsFlags};

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Settings file (default: ~/.config/kokichi/config.toml when it exists).
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: SettingsFlags,
    #[command(flatten)]
    sampling: super::run::SamplingArgs,
}

/// The settings file named by `--config`, else the default one when it exists.
fn settings_file(given: Option<PathBuf>) -> Option<PathBuf> {
    given.or_else(|| settings::default_settings_path().filter(|p| p.is_file()))
}

pub fn serve(a: ServeArgs, backend: Option<BackendKind>, dtype: Option<Precision>) -> Result<()> {
    let command_line = CommandLine { flags: &a.settings, backend, dtype, sampling: a.sampling.overrides()? };
    let settings = Settings::layered(settings_file(a.config).as_deref(), command_line)?;
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
        kokichi::daemon::run(settings, shutdown).await
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
        None => Settings::defaults_and_file(settings_file(None).as_deref())?.local_audio.control_socket,
    };
    let reply = control::send(&socket, cmd).with_context(|| "is `kokichi serve` running?")?;
    if let Some(err) = reply.strip_prefix("error: ") {
        anyhow::bail!("{err}");
    }
    println!("{reply}");
    Ok(())
}
