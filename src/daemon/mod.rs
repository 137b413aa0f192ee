//! `kokichi serve`: the long-running daemon. One inference thread owns the weights and every
//! session's state ([`runtime`]); tokio tasks move bytes between the sessions' bounded queues
//! and the local audio devices, WebSocket clients or files ([`io`]).
//!
//! [`run`] takes the settings and a shutdown future, so tests start and stop it in process.

pub mod chat;
pub mod client_text;
pub mod control;
pub mod grad;
pub mod grad_worker;
#[cfg(feature = "hotkey")]
pub mod hotkey;
pub mod io;
pub mod listen;
pub mod local_audio;
pub mod metrics;
pub mod pcm;
pub mod runtime;
pub mod server;
pub mod settings;
pub mod socket;
pub mod tools;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use tokio::sync::{Notify, oneshot};

use crate::backend;
use crate::error::{Error, Result};
use crate::gist::Gist;
use crate::model_dir;
use crate::session::Engine;
use io::{AudioSink, FileSink, FileSource, GainSource};
use metrics::Metrics;
use runtime::{NewSession, Runtime, RuntimeOptions};
pub use settings::{Settings, TalkMode};

/// What a started daemon tells its caller.
#[derive(Clone, Debug)]
pub struct Ready {
    pub addr: SocketAddr,
}

/// The `[tools]` table by token id: each name must be a piece of the model's vocabulary.
fn bind_tools(settings: &Settings, engine: &Engine) -> Result<HashMap<i64, (String, tools::ToolAction)>> {
    let mut bound = HashMap::new();
    for (name, action) in &settings.tools {
        let id = engine.tokenizer.as_ref().and_then(|t| t.id_of(name)).ok_or_else(|| {
            Error::config(
                format!("tools.\"{name}\""),
                "not a piece of the model's vocabulary (add the token with an adapter)",
            )
        })?;
        tracing::info!(token = %name, id, command = ?action.command, "tool bound");
        bound.insert(i64::from(id), (name.clone(), action.clone()));
    }
    Ok(bound)
}

/// The gists of `--gist NAME=FILE`, read and checked against the model's width.
fn load_gists(settings: &Settings, engine: &Engine) -> Result<HashMap<String, Arc<Gist>>> {
    let mut gists = HashMap::new();
    for (name, path) in settings.runtime.gists()? {
        let gist = Gist::read(&path)?;
        gist.check_width(engine.lm.config.dim, &path)?;
        tracing::info!(name, k = gist.k, path = %path.display(), "gist");
        gists.insert(name, Arc::new(gist));
    }
    Ok(gists)
}

/// Runs the daemon until `shutdown` resolves (or the file-backed session ends with
/// `exit_when_done`).
pub async fn run(settings: Settings, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
    serve(settings, shutdown, None).await
}

/// Like [`run`], reporting the bound address once the daemon accepts connections.
pub async fn serve(
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send,
    ready: Option<oneshot::Sender<Ready>>,
) -> Result<()> {
    let mut settings = settings;
    settings.network.load_token_file()?;
    settings.validate()?;
    let settings = Arc::new(settings);
    let cfg = settings.clone();
    let engine = tokio::task::spawn_blocking(move || -> Result<Engine> {
        let runtime = &cfg.runtime;
        let files = model_dir::resolve(&runtime.model)?;
        let device = backend::device(runtime.backend, runtime.dtype)?;
        tracing::info!(model = %files.source, backend = %backend::kind_of(&device), adapter = %backend::adapter_name(&device), "loading model");
        let adapter = runtime.adapter.as_deref().map(crate::adapter::Adapter::read).transpose()?;
        if let Some(a) = &adapter {
            tracing::info!(tokens = ?a.tokens, path = %a.path.display(), "adapter");
        }
        let mut engine = Engine::load_with_adapter(&files, &device, runtime.dtype, adapter)?;
        engine.load_system_prompt(runtime.voice_prompt.as_deref(), runtime.text_prompt.as_deref())?;
        // On wgpu, kernels compile and autotune on their first use: here, before anyone is
        // listening, not in the first conversation (the CPU backend has nothing to warm).
        if !backend::is_cpu(&device) {
            let took = engine.warm_up(cfg.gen_config(engine.sampling), 4)?;
            tracing::info!(seconds = took.as_secs_f64(), "model warmed up (kernels compiled)");
        }
        Ok(engine)
    })
    .await
    .map_err(|e| Error::Backend(format!("model loading task failed: {e}")))??;
    let sampling = settings.gen_config(engine.sampling);
    tracing::info!(text = ?sampling.text, audio = ?sampling.audio, "sampling");
    let gists = load_gists(&settings, &engine)?;
    let engine = Arc::new(engine);
    let metrics = Arc::new(Metrics::default());
    let open_mode = settings.local_audio.mode == TalkMode::Open;
    metrics.publish(|s| {
        s.model = engine.source.clone();
        s.backend = backend::kind_of(&engine.lm.device()).to_string();
        s.mode = if open_mode { "open".into() } else { "ptt".into() };
    });
    let (runtime, thread) = Runtime::start(
        engine.clone(),
        metrics.clone(),
        RuntimeOptions {
            max_sessions: settings.runtime.max_sessions,
            batch_window: settings.runtime.batch_window(),
            log_transcripts: settings.runtime.log_transcripts,
            idle_timeout: settings.runtime.idle_timeout(),
            tools: bind_tools(&settings, &engine)?,
        },
    )?;
    let talk = Arc::new(AtomicBool::new(open_mode));
    let file_done = Arc::new(Notify::new());
    let mut local = None;
    let file_session = &settings.file_session;
    if let Some(input) = &file_session.input_file {
        let source =
            FileSource::open(input, engine.sample_rate() as u32, engine.frame_size(), !file_session.fast_file)?;
        let sink: Box<dyn AudioSink> = Box::new(DoneSink {
            inner: file_session
                .output_file
                .as_ref()
                .map(|o| FileSink::new(o.clone(), file_session.transcript_file.clone(), engine.sample_rate() as u32)),
            done: file_done.clone(),
        });
        runtime.add(NewSession {
            kind: format!("file {}", input.display()),
            config: sampling,
            source: GainSource::wrap(Box::new(source), settings.local_audio.input_gain),
            sink,
            // The file stands in for the microphone: push-to-talk gates it the same way.
            talk: Some(talk.clone()),
            remote: false,
            taps: Default::default(),
            gist: None,
            latent_input: false,
        })?;
    } else if settings.local_audio.audio {
        local = local_audio::start(&settings, sampling, &runtime, metrics.clone(), talk.clone())?;
    } else {
        tracing::info!("local audio disabled: serving WebSocket clients only");
    }
    metrics.publish(|s| {
        s.audio = match (&local, &file_session.input_file) {
            (_, Some(f)) => format!("file {}", f.display()),
            (Some(l), _) => l.describe(),
            (None, _) => "none".into(),
        }
    });
    let control = match control::serve(&settings.local_audio.control_socket, talk.clone(), open_mode) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!("push-to-talk control socket unavailable: {e}");
            None
        }
    };
    let bind = settings.network.bind;
    let listener =
        tokio::net::TcpListener::bind(bind).await.map_err(|e| Error::config("bind", format!("{bind}: {e}")))?;
    let addr = listener.local_addr().map_err(|e| Error::config("bind", e.to_string()))?;
    let app = socket::App {
        settings: settings.clone(),
        sampling,
        runtime: runtime.clone(),
        metrics: metrics.clone(),
        peers: Default::default(),
        gists: Arc::new(gists),
        grad: Some(grad_worker::GradService::start(settings.runtime.model.clone(), settings.runtime.backend)?),
    };
    let stop_http = Arc::new(Notify::new());
    let stop = stop_http.clone();
    let http = tokio::spawn(listen::serve(listener, app, async move { stop.notified().await }));
    tracing::info!(%addr, "kokichi listening");
    if let Some(r) = ready {
        let _ = r.send(Ready { addr });
    }
    let exit_on_file = file_session.exit_when_done && file_session.input_file.is_some();
    tokio::select! {
        _ = shutdown => tracing::info!("shutting down"),
        _ = file_done.notified(), if exit_on_file => tracing::info!("input file finished"),
    }
    // Tell every session, flush the outputs, then stop serving.
    runtime.stop();
    let joined = tokio::task::spawn_blocking(move || thread.join()).await;
    if !matches!(joined, Ok(Ok(()))) {
        tracing::error!("the inference thread panicked");
    }
    drop(local);
    stop_http.notify_one();
    if tokio::time::timeout(Duration::from_secs(3), http).await.is_err() {
        tracing::warn!("http connections did not close in time");
    }
    drop(control);
    Ok(())
}

/// Signals when the file-backed session closes.
struct DoneSink {
    inner: Option<FileSink>,
    done: Arc<Notify>,
}

impl AudioSink for DoneSink {
    fn push(&mut self, pcm: &[f32], text: Option<&str>) {
        if let Some(s) = &mut self.inner {
            s.push(pcm, text);
        }
    }

    fn close(&mut self, reason: &str) {
        if let Some(s) = &mut self.inner {
            s.close(reason);
        }
        self.done.notify_one();
    }
}
