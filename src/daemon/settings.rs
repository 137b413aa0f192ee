//! The daemon's settings, each described once: a field's doc comment is its `--help` text, its
//! name the flag (`--max-sessions`) and the key of the settings file (`max_sessions`, in
//! `~/.config/kokichi/config.toml` or `--config`). Settings come in layers, each over the one
//! before: the defaults (each group's `Default`), the file, the command line
//! ([`Settings::layered`]), then a client's query string, for sampling only
//! ([`client_sampling`]). [`Settings::validate`] checks the result once at start; every error
//! names the setting.
//!
//! The groups (model and runtime, network, local audio, file session) exist in the Rust types
//! and in `--help`; the file stays flat, with `[sampling]` and `[tools]` tables, as the README documents it.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{ArgAction, ArgMatches, Args, FromArgMatches, ValueEnum};
use serde::Deserialize;
use serde::de::{DeserializeOwned, Deserializer, Visitor};

use super::tools::ToolAction;
use crate::backend::{BackendKind, Precision};
use crate::error::{Error, Result};
use crate::lm::GenConfig;
use crate::lm::sampling::SamplingOverrides;

/// Every daemon setting. Build it with [`Settings::layered`] (or `Default` and the fields), not
/// clap's `from_arg_matches`: flags override the file only where given, see [`SettingsFlags`].
#[derive(Clone, Debug, Default, PartialEq, Args)]
pub struct Settings {
    #[command(flatten)]
    pub runtime: RuntimeSettings,
    #[command(flatten)]
    pub network: NetworkSettings,
    #[command(flatten)]
    pub local_audio: LocalAudioSettings,
    #[command(flatten)]
    pub file_session: FileSessionSettings,
    /// The user's sampling layers (file, then flags), applied in order over the model's own
    /// recommendation (its `config.json`, else Moshi's defaults): see [`Settings::gen_config`].
    /// The flags are `kokichi run`'s, so they are declared with `kokichi run`'s.
    #[arg(skip)]
    pub sampling: Vec<SamplingOverrides>,
    /// Special tokens bound to actions: the file's `[tools]` table ([`super::tools`]).
    #[arg(skip)]
    pub tools: BTreeMap<String, ToolAction>,
}

/// The model and how the inference thread runs it.
#[derive(Clone, Debug, PartialEq, Args, Deserialize)]
#[serde(default)]
#[command(next_help_heading = "Model and runtime")]
pub struct RuntimeSettings {
    /// Model folder, Hugging Face repo id, or `kokichi-tiny` (the embedded default).
    #[arg(long, required = false)]
    pub model: String,
    /// Compute backend; on the command line, the global `--backend`.
    #[arg(skip)]
    pub backend: BackendKind,
    /// Float type of weights and activations; on the command line, the global `--dtype`.
    #[arg(skip)]
    pub dtype: Precision,
    /// Sessions served at once, every kind counted: the local microphone's or file's takes one.
    #[arg(long, required = false)]
    pub max_sessions: usize,
    /// Frames a session may queue before the oldest are dropped.
    #[arg(long, required = false)]
    pub backlog_frames: usize,
    /// How long a tick waits for late sessions to join the batch, in milliseconds.
    #[arg(long, required = false)]
    pub batch_window_ms: u64,
    /// A network session that sends no audio for this many seconds is ended (0: never).
    #[arg(long, required = false)]
    pub idle_timeout_secs: u64,
    /// Log the inner monologue (off by default).
    #[arg(long, required = false, action = ArgAction::Set, num_args = 0, default_missing_value = "true")]
    pub log_transcripts: bool,
    /// Prefix latents a client may start its session with (`?gist=NAME`), as `NAME=FILE`
    /// (a `[K, d_model]` safetensors file from `kokichi gist train`); repeatable.
    #[arg(long, required = false)]
    pub gist: Vec<String>,
    /// Vocabulary adapter (folder or its `adapter.json`, docs/adapter.md): new special tokens
    /// the model's inner monologue may emit, and a gist sessions start with if it holds one.
    #[arg(long, required = false)]
    pub adapter: Option<PathBuf>,
    /// PersonaPlex's voice prompt: a recording of the voice every session's model speaks with
    /// (docs/model-folder.md); only for a model that predicts the user's streams.
    #[arg(long, required = false)]
    pub voice_prompt: Option<PathBuf>,
    /// PersonaPlex's role prompt, e.g. "You enjoy having a good conversation." (`<system>`
    /// tags added); only for a model that predicts the user's streams.
    #[arg(long, required = false)]
    pub text_prompt: Option<String>,
}

impl Default for RuntimeSettings {
    fn default() -> Self {
        Self {
            model: crate::model_dir::EMBEDDED.into(),
            backend: BackendKind::Auto,
            dtype: Precision::F32,
            max_sessions: 8,
            backlog_frames: 8,
            batch_window_ms: 20,
            idle_timeout_secs: 60,
            log_transcripts: false,
            gist: Vec::new(),
            adapter: None,
            voice_prompt: None,
            text_prompt: None,
        }
    }
}

impl RuntimeSettings {
    pub fn batch_window(&self) -> Duration {
        Duration::from_millis(self.batch_window_ms)
    }

    pub fn idle_timeout(&self) -> Option<Duration> {
        (self.idle_timeout_secs > 0).then(|| Duration::from_secs(self.idle_timeout_secs))
    }

    /// The named gists, `NAME=FILE` split; names are letters, digits, `-` and `_`, each once.
    pub fn gists(&self) -> Result<Vec<(String, PathBuf)>> {
        let mut out: Vec<(String, PathBuf)> = Vec::new();
        for entry in &self.gist {
            let Some((name, file)) = entry.split_once('=') else {
                return Err(Error::config("gist", format!("`{entry}` is not NAME=FILE")));
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                return Err(Error::config("gist", format!("`{name}`: a name is letters, digits, `-` and `_`")));
            }
            if file.is_empty() {
                return Err(Error::config("gist", format!("`{entry}` names no file")));
            }
            if out.iter().any(|(n, _)| n == name) {
                return Err(Error::config("gist", format!("`{name}` is given twice")));
            }
            out.push((name.to_string(), PathBuf::from(file)));
        }
        Ok(out)
    }
}

/// Who may connect, and how much they may send.
#[derive(Clone, Debug, PartialEq, Args, Deserialize)]
#[serde(default)]
#[command(next_help_heading = "Network")]
pub struct NetworkSettings {
    /// Address to listen on, `host:port` or a port on 127.0.0.1. Other than loopback needs a
    /// token.
    #[arg(long, required = false, value_parser = parse_bind)]
    #[serde(deserialize_with = "deserialize_bind")]
    pub bind: SocketAddr,
    /// Token clients must send (`?token=` or `Authorization: Bearer`). Visible in `ps` when
    /// given as a flag: prefer `--token-file` or `KOKICHI_TOKEN`.
    #[arg(long)]
    pub token: Option<String>,
    /// File holding the token (its first line; readable by its owner only). The first of
    /// `--token`/`--token-file`, `KOKICHI_TOKEN`, then the file's `token`/`token_file` is used.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// `Host` names accepted besides loopback ones (`localhost`, `127.0.0.1`, `[::1]`), as `name`
    /// (any port) or `name:port`; `*` accepts any. Off loopback, empty accepts any.
    #[arg(long, required = false, value_delimiter = ',')]
    pub allowed_hosts: Vec<String>,
    /// Browser origins allowed to open WebSockets, besides the daemon's own page.
    #[arg(long, required = false, value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// WebSocket connections one address may hold open at once.
    #[arg(long, required = false)]
    pub max_connections_per_peer: usize,
    /// Connections (HTTP and WebSocket) served at once; lowered to fit the open-file limit. More
    /// are answered 503.
    #[arg(long, required = false)]
    pub max_connections: usize,
    /// Seconds a client has to send a request's headers, idle keep-alive time included.
    #[arg(long, required = false)]
    pub header_timeout_secs: u64,
    /// Seconds between the daemon's WebSocket pings.
    #[arg(long, required = false)]
    pub ping_interval_secs: u64,
    /// Seconds a WebSocket client may send nothing, not even a pong, before it is closed.
    #[arg(long, required = false)]
    pub ping_timeout_secs: u64,
    /// Largest WebSocket message a client may send, in bytes (at least 4096).
    #[arg(long, required = false)]
    pub max_message_bytes: usize,
}

impl Default for NetworkSettings {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 8998)),
            token: None,
            token_file: None,
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            max_connections_per_peer: 4,
            max_connections: 256,
            header_timeout_secs: 10,
            ping_interval_secs: 10,
            ping_timeout_secs: 30,
            max_message_bytes: 1 << 20,
        }
    }
}

/// The environment variable that may hold the token, so it stays out of `ps`.
pub const TOKEN_ENV: &str = "KOKICHI_TOKEN";

impl NetworkSettings {
    pub fn header_timeout(&self) -> Duration {
        Duration::from_secs(self.header_timeout_secs)
    }

    pub fn ping_interval(&self) -> Duration {
        Duration::from_secs(self.ping_interval_secs)
    }

    pub fn ping_timeout(&self) -> Duration {
        Duration::from_secs(self.ping_timeout_secs)
    }

    /// Reads `token_file` into `token` (once; `token_file` is then cleared). Setting both is an
    /// error.
    pub fn load_token_file(&mut self) -> Result<()> {
        if let Some(path) = self.token_file.take() {
            if self.token.is_some() {
                return Err(Error::config("token_file", "set either token or token_file, not both"));
            }
            self.token = Some(read_token_file(&path)?);
        }
        Ok(())
    }
}

/// The token in `path`: its first line, trimmed. The file must not be readable by group or
/// others, and must not be empty.
pub fn read_token_file(path: &Path) -> Result<String> {
    let bad = |msg: String| Error::File { path: path.to_path_buf(), msg };
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(bad("token file is not a regular file".into()));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(bad(format!("token file is readable by other users (mode {mode:o}): chmod 600 it")));
        }
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let token = text.lines().next().unwrap_or("").trim();
    if token.is_empty() {
        return Err(bad("token file is empty".into()));
    }
    Ok(token.to_string())
}

/// The token from the first source that sets one: the command line, `KOKICHI_TOKEN` (`env`),
/// then the settings file. Each source is a (`token`, `token_file`) pair; a source setting both
/// is an error.
fn resolve_token(
    flags: (Option<String>, Option<PathBuf>),
    env: Option<String>,
    file: (Option<String>, Option<PathBuf>),
) -> Result<Option<String>> {
    let from = |(token, token_file): (Option<String>, Option<PathBuf>), source: &str| match (token, token_file) {
        (Some(_), Some(_)) => Err(Error::config("token_file", format!("{source} sets both token and token_file"))),
        (Some(t), None) => Ok(Some(t)),
        (None, Some(p)) => read_token_file(&p).map(Some),
        (None, None) => Ok(None),
    };
    if let Some(t) = from(flags, "the command line")? {
        return Ok(Some(t));
    }
    if let Some(t) = env.filter(|t| !t.is_empty()) {
        return Ok(Some(t.trim().to_string()));
    }
    from(file, "the settings file")
}

/// How the local microphone reaches the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TalkMode {
    /// Silence unless talk is held (hotkey, `kokichi ptt`): the model never hears itself.
    #[default]
    Ptt,
    /// Always listening: full duplex, headphones recommended.
    Open,
}

/// The local microphone and speaker, and push-to-talk.
#[derive(Clone, Debug, PartialEq, Args, Deserialize)]
#[serde(default)]
#[command(next_help_heading = "Local audio")]
pub struct LocalAudioSettings {
    /// Serve WebSocket clients only; do not open the microphone and speaker (in the file:
    /// `audio = false`; by default they are opened when present).
    #[arg(
        long = "no-audio",
        required = false,
        action = ArgAction::Set,
        num_args = 0,
        default_missing_value = "false"
    )]
    pub audio: bool,
    /// Input device, a name or id from `kokichi devices`.
    #[arg(long)]
    pub input_device: Option<String>,
    /// Output device, a name or id from `kokichi devices`.
    #[arg(long)]
    pub output_device: Option<String>,
    /// Gain on the local input (microphone or --input-file) in dB, -40 to 40: raise it when the
    /// microphone is quiet (kokichi-tiny hears speech peaking well below full scale worse).
    #[arg(long, required = false, allow_negative_numbers = true)]
    pub input_gain: f32,
    /// When the model hears the local input.
    #[arg(long, required = false, value_enum)]
    pub mode: TalkMode,
    /// Remove the model's own voice from the microphone (echo cancellation, SpeexDSP, with what
    /// goes to the speaker as reference), so that open mode works on laptop speakers without
    /// headphones. On by default; `--no-echo-cancel` (in the file: `echo_cancel = false`) turns
    /// it off, e.g. with headphones or a device that cancels echo itself.
    #[arg(
        long = "no-echo-cancel",
        required = false,
        action = ArgAction::Set,
        num_args = 0,
        default_missing_value = "false"
    )]
    pub echo_cancel: bool,
    /// Global hotkey for push-to-talk (feature `hotkey`), e.g. F9.
    #[arg(long)]
    pub hotkey: Option<String>,
    /// Control socket for `kokichi ptt` (default: `$XDG_RUNTIME_DIR/kokichi.sock`).
    #[arg(long, required = false)]
    pub control_socket: PathBuf,
}

impl Default for LocalAudioSettings {
    fn default() -> Self {
        Self {
            audio: true,
            input_device: None,
            output_device: None,
            input_gain: 0.0,
            mode: TalkMode::Ptt,
            echo_cancel: true,
            hotkey: None,
            control_socket: default_control_socket(),
        }
    }
}

/// A file-backed local session instead of the microphone and speaker, for demos and tests.
/// Flags only: a file session is one run, not a standing setting.
#[derive(Clone, Debug, Default, PartialEq, Args)]
#[command(next_help_heading = "File session")]
pub struct FileSessionSettings {
    /// Use this audio file as the local input instead of the microphone.
    #[arg(long)]
    pub input_file: Option<PathBuf>,
    /// Write the local session's output here instead of playing it.
    #[arg(long)]
    pub output_file: Option<PathBuf>,
    /// Write the local session's inner monologue here.
    #[arg(long)]
    pub transcript_file: Option<PathBuf>,
    /// Feed the input file as fast as the model runs instead of in real time.
    #[arg(long, required = false, action = ArgAction::Set, num_args = 0, default_missing_value = "true")]
    pub fast_file: bool,
    /// Exit once the input file has been answered.
    #[arg(long, required = false, action = ArgAction::Set, num_args = 0, default_missing_value = "true")]
    pub exit_when_done: bool,
}

/// The settings' flags as given: applied over the file with
/// [`FromArgMatches::update_from_arg_matches`], which sets only the flags present (a
/// setting's default lives in its group's `Default`, not in clap).
#[derive(Clone, Debug)]
pub struct SettingsFlags(ArgMatches);

impl FromArgMatches for SettingsFlags {
    fn from_arg_matches(matches: &ArgMatches) -> std::result::Result<Self, clap::Error> {
        Ok(Self(matches.clone()))
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> std::result::Result<(), clap::Error> {
        self.0 = matches.clone();
        Ok(())
    }
}

impl Args for SettingsFlags {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        Settings::augment_args(cmd)
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Settings::augment_args_for_update(cmd)
    }
}

/// What the command line sets: the settings' flags, the global `--backend` and `--dtype`, and
/// the sampling flags.
pub struct CommandLine<'a> {
    pub flags: &'a SettingsFlags,
    pub backend: Option<BackendKind>,
    pub dtype: Option<Precision>,
    pub sampling: SamplingOverrides,
}

impl Settings {
    /// Defaults, then the settings file, then the command line, validated.
    pub fn layered(file: Option<&Path>, command_line: CommandLine) -> Result<Self> {
        let mut s = Self::defaults_and_file(file)?;
        let file_token = (s.network.token.take(), s.network.token_file.take());
        s.update_from_arg_matches(&command_line.flags.0)
            .map_err(|e| Error::config("command line", e.to_string().trim().to_string()))?;
        let flag_token = (s.network.token.take(), s.network.token_file.take());
        s.network.token = resolve_token(flag_token, std::env::var(TOKEN_ENV).ok(), file_token)?;
        if let Some(b) = command_line.backend {
            s.runtime.backend = b;
        }
        if let Some(d) = command_line.dtype {
            s.runtime.dtype = d;
        }
        s.sampling.push(command_line.sampling);
        s.validate()?;
        Ok(s)
    }

    /// The defaults with a settings file's over them, when there is one.
    pub fn defaults_and_file(file: Option<&Path>) -> Result<Self> {
        match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
                let s = Self::from_toml(&text, path)?;
                tracing::info!(path = %path.display(), "settings read");
                Ok(s)
            }
            None => Ok(Self::default()),
        }
    }

    /// A settings file's keys over the defaults; `path` names the file in errors.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self> {
        let file_error = |msg: String| Error::File { path: path.to_path_buf(), msg: one_line(&msg) };
        let table: toml::Table = toml::from_str(text).map_err(|e| file_error(e.to_string()))?;
        let mut file = SettingsFile { table, path, known: Vec::new() };
        let settings = Self {
            runtime: file.group()?,
            network: file.group()?,
            local_audio: file.group()?,
            file_session: FileSessionSettings::default(),
            sampling: vec![file.group::<SamplingTable>()?.sampling],
            tools: file.group::<ToolsTable>()?.tools,
        };
        if let Some(key) = file.table.keys().find(|k| !file.known.contains(&k.as_str())) {
            return Err(file_error(format!("unknown setting `{key}`")));
        }
        Ok(settings)
    }

    /// The sessions' sampling: the user's layers over the model's recommended ones.
    pub fn gen_config(&self, model: GenConfig) -> GenConfig {
        self.sampling.iter().fold(model, |g, layer| layer.over(g))
    }

    /// Checks the settings once, naming the offending one.
    pub fn validate(&self) -> Result<()> {
        let (runtime, network, local_audio, file_session) =
            (&self.runtime, &self.network, &self.local_audio, &self.file_session);
        let has_token = network.token.as_deref().is_some_and(|t| !t.is_empty()) || network.token_file.is_some();
        if !network.bind.ip().is_loopback() && !has_token {
            return Err(Error::config(
                "bind",
                format!(
                    "{} is reachable from other machines: set a token (--token-file, {TOKEN_ENV}, or `token_file` in the config)",
                    network.bind
                ),
            ));
        }
        if let Some(t) = &network.token
            && t.len() < 8
        {
            return Err(Error::config("token", "use at least 8 characters"));
        }
        for (name, v) in [
            ("max_sessions", runtime.max_sessions),
            ("max_connections_per_peer", network.max_connections_per_peer),
            ("backlog_frames", runtime.backlog_frames),
            ("max_connections", network.max_connections),
            ("header_timeout_secs", network.header_timeout_secs as usize),
            ("ping_interval_secs", network.ping_interval_secs as usize),
        ] {
            if v == 0 {
                return Err(Error::config(name, "must be at least 1"));
            }
        }
        if network.ping_timeout_secs <= network.ping_interval_secs {
            return Err(Error::config("ping_timeout_secs", "must be longer than ping_interval_secs"));
        }
        if network.token.is_some() && network.token_file.is_some() {
            return Err(Error::config("token_file", "set either token or token_file, not both"));
        }
        if let Some(h) = network.allowed_hosts.iter().find(|h| h.is_empty() || h.contains(['/', ' '])) {
            return Err(Error::config("allowed_hosts", format!("`{h}` is not a host name or host:port")));
        }
        runtime.gists()?;
        super::tools::validate(&self.tools)?;
        if !crate::audio::gain_db_ok(local_audio.input_gain) {
            return Err(Error::config(
                "input_gain",
                format!("{} dB is outside -{m}..{m} dB", local_audio.input_gain, m = crate::audio::MAX_GAIN_DB),
            ));
        }
        if network.max_message_bytes < 4096 {
            return Err(Error::config("max_message_bytes", "must be at least 4096"));
        }
        if let Some((key, t)) = self.sampling.iter().find_map(SamplingOverrides::bad_temperature) {
            return Err(Error::config(format!("sampling.{key}"), format!("{t} is not a temperature >= 0")));
        }
        if file_session.output_file.is_some() && file_session.input_file.is_none() {
            return Err(Error::config("output_file", "needs an input file"));
        }
        if runtime.model.trim().is_empty() {
            return Err(Error::config("model", "is empty"));
        }
        Ok(())
    }
}

/// The `[tools]` table of the settings file.
#[derive(Default, Deserialize)]
#[serde(default)]
struct ToolsTable {
    tools: BTreeMap<String, ToolAction>,
}

/// The `[sampling]` table of the settings file.
#[derive(Default, Deserialize)]
#[serde(default)]
struct SamplingTable {
    sampling: SamplingOverrides,
}

/// A settings file being read group by group, remembering which keys the groups know.
///
/// Each group is read from the whole table on its own, rather than all at once through
/// `#[serde(flatten)]`, because flattening loses the key of a bad value from the error.
struct SettingsFile<'a> {
    table: toml::Table,
    path: &'a Path,
    known: Vec<&'static str>,
}

impl SettingsFile<'_> {
    fn group<T: DeserializeOwned>(&mut self) -> Result<T> {
        self.known.extend(keys_of::<T>());
        T::deserialize(self.table.clone())
            .map_err(|e| Error::File { path: self.path.to_path_buf(), msg: one_line(&e.to_string()) })
    }
}

/// A multi-line TOML error as one line.
fn one_line(msg: &str) -> String {
    msg.trim_end().replace('\n', " ")
}

/// A client's query string parameter that is not a valid sampling setting.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct QueryError {
    pub key: &'static str,
    pub problem: String,
}

/// A session's sampling: a client's query string (the keys Moshi's web UI sends) as the last
/// layer over `base`, the daemon's layers over the model's recommendation.
pub fn client_sampling(base: GenConfig, q: &HashMap<String, String>) -> std::result::Result<GenConfig, QueryError> {
    let number = |key: &'static str| -> std::result::Result<Option<f32>, QueryError> {
        q.get(key)
            .map(|v| v.parse::<f32>().map_err(|_| QueryError { key, problem: format!("`{v}` is not a number") }))
            .transpose()
    };
    let unsigned = |key: &'static str| -> std::result::Result<Option<u64>, QueryError> {
        q.get(key)
            .map(|v| {
                v.parse::<u64>().map_err(|_| QueryError { key, problem: format!("`{v}` is not an unsigned integer") })
            })
            .transpose()
    };
    let greedy = match q.get("greedy").map(String::as_str) {
        None => None,
        Some("1" | "true") => Some(true),
        Some("0" | "false") => Some(false),
        Some(v) => return Err(QueryError { key: "greedy", problem: format!("`{v}` is not 1, 0, true or false") }),
    };
    let client = SamplingOverrides {
        greedy,
        text_temperature: number("text_temperature")?,
        text_topk: unsigned("text_topk")?.map(|k| k as usize),
        audio_temperature: number("audio_temperature")?,
        audio_topk: unsigned("audio_topk")?.map(|k| k as usize),
        seed: None,
    };
    let mut g = client.over(base);
    if let Some(s) = unsigned("text_seed")? {
        g.text_seed = Some(s);
    }
    if let Some(s) = unsigned("audio_seed")? {
        g.audio_seed = Some(s);
    }
    for (key, s) in [("text_temperature", g.text), ("audio_temperature", g.audio)] {
        if !s.temperature.is_finite() || !(0.0..=10.0).contains(&s.temperature) {
            return Err(QueryError { key, problem: format!("{} is out of range 0..10", s.temperature) });
        }
    }
    Ok(g)
}

/// `$XDG_RUNTIME_DIR/kokichi.sock`, else a per-user path in the temp folder.
pub fn default_control_socket() -> PathBuf {
    match dirs::runtime_dir() {
        Some(d) => d.join("kokichi.sock"),
        None => {
            let user = std::env::var("USER").unwrap_or_else(|_| "user".into());
            std::env::temp_dir().join(format!("kokichi-{user}.sock"))
        }
    }
}

/// `~/.config/kokichi/config.toml`.
pub fn default_settings_path() -> Option<PathBuf> {
    dirs::config_dir().map(|d| d.join("kokichi").join("config.toml"))
}

/// Parses `host:port`, or a bare port on 127.0.0.1.
pub fn parse_bind(s: &str) -> Result<SocketAddr> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.parse().map_err(|e| Error::config("bind", format!("`{s}` is not host:port ({e})")))
}

fn deserialize_bind<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<SocketAddr, D::Error> {
    let s = String::deserialize(d)?;
    parse_bind(&s).map_err(serde::de::Error::custom)
}

/// The keys a settings group reads: the field names its derived `Deserialize` asks for.
fn keys_of<T: DeserializeOwned>() -> &'static [&'static str] {
    match T::deserialize(FieldNames) {
        Err(FieldNamesFound(keys)) => keys,
        Ok(_) => &[],
    }
}

/// A deserializer that only asks a struct for its field names, and answers with them as an
/// error.
struct FieldNames;

#[derive(Debug)]
struct FieldNamesFound(&'static [&'static str]);

impl fmt::Display for FieldNamesFound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fields {:?}", self.0)
    }
}

impl std::error::Error for FieldNamesFound {}

impl serde::de::Error for FieldNamesFound {
    fn custom<T: fmt::Display>(_: T) -> Self {
        Self(&[])
    }
}

impl<'de> Deserializer<'de> for FieldNames {
    type Error = FieldNamesFound;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> std::result::Result<V::Value, Self::Error> {
        Err(FieldNamesFound(&[]))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> std::result::Result<V::Value, Self::Error> {
        Err(FieldNamesFound(fields))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option
        unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lm::sampling::Sampling;

    fn parse(text: &str) -> Result<Settings> {
        Settings::from_toml(text, Path::new("c.toml"))
    }

    /// The command line of `kokichi serve`, as far as the settings go.
    fn flags(args: &[&str]) -> SettingsFlags {
        let cmd = SettingsFlags::augment_args(clap::Command::new("serve"));
        let matches = cmd.try_get_matches_from(std::iter::once("serve").chain(args.iter().copied())).unwrap();
        SettingsFlags::from_arg_matches(&matches).unwrap()
    }

    fn layered(file: &str, args: &[&str]) -> Result<Settings> {
        let path = std::env::temp_dir().join(format!("kokichi-settings-{}-{}.toml", std::process::id(), args.len()));
        std::fs::write(&path, file).unwrap();
        let flags = flags(args);
        let command_line = CommandLine { flags: &flags, backend: None, dtype: None, sampling: Default::default() };
        let s = Settings::layered(Some(&path), command_line);
        let _ = std::fs::remove_file(&path);
        s
    }

    #[test]
    fn file_overrides_defaults_and_names_bad_keys() {
        let c =
            parse("model = \"/m\"\nbind = \"127.0.0.1:9000\"\nmode = \"open\"\n[sampling]\ntext_temperature = 0.5\n")
                .unwrap();
        assert_eq!(c.runtime.model, "/m");
        assert_eq!(c.network.bind.port(), 9000);
        assert_eq!(c.local_audio.mode, TalkMode::Open);
        assert_eq!(c.sampling, vec![SamplingOverrides { text_temperature: Some(0.5), ..SamplingOverrides::default() }]);
        // Over a model that recommends greedy decoding: the file's text temperature, greedy audio.
        let g = c.gen_config(GenConfig::greedy());
        assert_eq!((g.text.temperature, g.audio.temperature), (0.5, 0.0));
        c.validate().unwrap();
        let err = parse("modle = 1\n").unwrap_err().to_string();
        assert!(err.contains("c.toml") && err.contains("modle"), "{err}");
        let err = parse("[sampling]\ntemprature = 1\n").unwrap_err().to_string();
        assert!(err.contains("c.toml") && err.contains("temprature"), "{err}");
        // Flag-only settings are not keys of the file.
        assert!(parse("input_file = \"a.wav\"\n").unwrap_err().to_string().contains("input_file"));
    }

    #[test]
    fn a_bad_value_in_the_file_names_its_key() {
        for (text, key) in [
            ("max_sessions = \"many\"\n", "max_sessions"),
            ("batch_window_ms = -1\n", "batch_window_ms"),
            ("bind = \"nowhere\"\n", "bind"),
            ("mode = \"shout\"\n", "mode"),
            ("audio = 1\n", "audio"),
            ("[sampling]\nseed = \"x\"\n", "seed"),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains("c.toml") && err.contains(key), "{text}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn flags_override_the_file_only_where_given() {
        let file = "max_sessions = 3\nbackend = \"cpu\"\nlog_transcripts = true\naudio = false\ninput_gain = 2.0\n";
        let s = layered(file, &[]).unwrap();
        assert_eq!(s.runtime.max_sessions, 3);
        assert_eq!(s.runtime.backend, BackendKind::Cpu);
        assert!(s.runtime.log_transcripts && !s.local_audio.audio);
        let s = layered(
            file,
            &["--max-sessions", "5", "--input-gain", "-3", "--mode", "open", "--bind", "9000", "--fast-file"],
        )
        .unwrap();
        assert_eq!(s.runtime.max_sessions, 5);
        assert_eq!(s.local_audio.input_gain, -3.0);
        assert_eq!(s.local_audio.mode, TalkMode::Open);
        assert_eq!(s.network.bind, SocketAddr::from(([127, 0, 0, 1], 9000)));
        assert!(s.file_session.fast_file);
        // What the flags leave alone stays as the file says.
        assert!(s.runtime.log_transcripts && !s.local_audio.audio);
        assert_eq!(s.runtime.backend, BackendKind::Cpu);
        // A bad flag value is named, as a bad file value is.
        let err = layered(file, &["--max-sessions", "0"]).unwrap_err().to_string();
        assert!(err.contains("max_sessions"), "{err}");
        let err = layered("input_gain = 50.0\n", &[]).unwrap_err().to_string();
        assert!(err.contains("input_gain"), "{err}");
        let s = layered("audio = true\n", &["--no-audio"]).unwrap();
        assert!(!s.local_audio.audio);
        // Echo cancellation: on unless the file or the flag turns it off.
        assert!(layered("mode = \"open\"\n", &[]).unwrap().local_audio.echo_cancel);
        assert!(!layered("echo_cancel = false\n", &[]).unwrap().local_audio.echo_cancel);
        assert!(!layered("", &["--no-echo-cancel"]).unwrap().local_audio.echo_cancel);
    }

    #[test]
    fn off_loopback_requires_a_token() {
        let mut c = Settings::default();
        c.network.bind = parse_bind("0.0.0.0:8998").unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("bind") && err.contains("token"), "{err}");
        c.network.token = Some("correct-horse".into());
        c.validate().unwrap();
    }

    #[test]
    fn token_sources_in_order() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("kokichi-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "from-the-file\nignored\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let env = || Some("from-the-env".to_string());
        let t = |s: &str| Some(s.to_string());
        assert_eq!(resolve_token((t("flag-token"), None), env(), (t("file-token"), None)).unwrap(), t("flag-token"));
        assert_eq!(resolve_token((None, Some(file.clone())), env(), (None, None)).unwrap(), t("from-the-file"));
        assert_eq!(resolve_token((None, None), env(), (t("file-token"), None)).unwrap(), t("from-the-env"));
        assert_eq!(resolve_token((None, None), Some(String::new()), (t("file-token"), None)).unwrap(), t("file-token"));
        assert_eq!(resolve_token((None, None), None, (None, Some(file.clone()))).unwrap(), t("from-the-file"));
        assert_eq!(resolve_token((None, None), None, (None, None)).unwrap(), None);
        let err = resolve_token((t("flag-token"), Some(file.clone())), None, (None, None)).unwrap_err().to_string();
        assert!(err.contains("token_file") && err.contains("both"), "{err}");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = read_token_file(&file).unwrap_err().to_string();
        assert!(err.contains(&file.display().to_string()) && err.contains("640"), "{err}");
        std::fs::write(&file, "  \n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = read_token_file(&file).unwrap_err().to_string();
        assert!(err.contains(&file.display().to_string()) && err.contains("empty"), "{err}");
        let err = read_token_file(&dir.join("missing")).unwrap_err().to_string();
        assert!(err.contains("missing"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn network_limits_are_checked() {
        let c = parse("allowed_hosts = [\"kokichi.lan\"]\nheader_timeout_secs = 5\nmax_connections = 64\n").unwrap();
        assert_eq!(c.network.allowed_hosts, vec!["kokichi.lan".to_string()]);
        assert_eq!((c.network.header_timeout_secs, c.network.max_connections), (5, 64));
        c.validate().unwrap();
        let mut c = Settings::default();
        c.network.ping_timeout_secs = c.network.ping_interval_secs;
        assert!(c.validate().unwrap_err().to_string().contains("ping_timeout_secs"));
        let mut c = Settings::default();
        c.network.header_timeout_secs = 0;
        assert!(c.validate().unwrap_err().to_string().contains("header_timeout_secs"));
        let mut c = Settings::default();
        c.network.allowed_hosts = vec!["http://x/".into()];
        assert!(c.validate().unwrap_err().to_string().contains("allowed_hosts"));
        // Off loopback, a token file counts as a token.
        let mut c = Settings::default();
        c.network.bind = parse_bind("0.0.0.0:8998").unwrap();
        c.network.token_file = Some("/run/secrets/kokichi".into());
        c.validate().unwrap();
    }

    #[test]
    fn bad_values_are_named() {
        let mut c = Settings::default();
        c.sampling.push(SamplingOverrides { audio_temperature: Some(-1.0), ..SamplingOverrides::default() });
        assert!(c.validate().unwrap_err().to_string().contains("sampling.audio_temperature"));
        let mut c = Settings::default();
        c.runtime.max_sessions = 0;
        assert!(c.validate().unwrap_err().to_string().contains("max_sessions"));
        assert!(parse_bind("nowhere").unwrap_err().to_string().contains("bind"));
        for bad in [41.0, -60.0, f32::NAN, f32::INFINITY] {
            let mut c = Settings::default();
            c.local_audio.input_gain = bad;
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains("input_gain") && err.contains("dB"), "{err}");
        }
        let c = parse("input_gain = 12.5\n").unwrap();
        assert_eq!(c.local_audio.input_gain, 12.5);
        c.validate().unwrap();
    }

    #[test]
    fn query_sampling() {
        let mut q = HashMap::new();
        q.insert("text_temperature".to_string(), "0.4".to_string());
        q.insert("audio_topk".to_string(), "100".to_string());
        let g = client_sampling(GenConfig::default(), &q).unwrap();
        assert_eq!(g.text.temperature, 0.4);
        assert_eq!(g.audio.top_k, 100);
        q.insert("audio_temperature".to_string(), "nan".to_string());
        assert!(client_sampling(GenConfig::default(), &q).is_err());
        q.insert("audio_temperature".to_string(), "x".to_string());
        assert!(client_sampling(GenConfig::default(), &q).unwrap_err().to_string().contains("audio_temperature"));
        // Over a model that recommends greedy decoding: greedy=0 samples with Moshi's defaults,
        // and the page's other keys still apply.
        let mut q = HashMap::new();
        q.insert("greedy".to_string(), "0".to_string());
        q.insert("audio_topk".to_string(), "100".to_string());
        let g = client_sampling(GenConfig::greedy(), &q).unwrap();
        assert_eq!(g.text, Sampling::TEXT);
        assert_eq!(g.audio, Sampling { top_k: 100, ..Sampling::AUDIO });
        q.insert("greedy".to_string(), "maybe".to_string());
        assert!(client_sampling(GenConfig::greedy(), &q).unwrap_err().to_string().contains("greedy"));
    }
}
