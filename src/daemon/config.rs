//! Daemon settings: a TOML file (by default `~/.config/kokichi/config.toml`) overridden by
//! command-line flags, validated once at start with errors naming the setting.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::backend::{BackendKind, Precision};
use crate::error::{Error, Result};
use crate::lm::GenConfig;

/// How the local microphone reaches the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TalkMode {
    /// Silence unless talk is held (hotkey, `kokichi ptt`): the model never hears itself.
    #[default]
    Ptt,
    /// Always listening: full duplex, headphones recommended.
    Open,
}

/// Sampling settings in the file (and, the same keys, on the command line).
pub use crate::lm::sampling::SamplingOverrides as SamplingFile;

/// The TOML file, every key optional.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    pub model: Option<String>,
    pub backend: Option<BackendKind>,
    pub dtype: Option<Precision>,
    pub bind: Option<String>,
    pub token: Option<String>,
    pub allowed_origins: Option<Vec<String>>,
    pub max_sessions: Option<usize>,
    pub max_connections_per_peer: Option<usize>,
    pub max_message_bytes: Option<usize>,
    pub audio: Option<bool>,
    pub input_device: Option<String>,
    pub output_device: Option<String>,
    pub input_gain: Option<f32>,
    pub mode: Option<TalkMode>,
    pub hotkey: Option<String>,
    pub control_socket: Option<PathBuf>,
    pub log_transcripts: Option<bool>,
    pub backlog_frames: Option<usize>,
    pub batch_window_ms: Option<u64>,
    pub sampling: SamplingFile,
}

impl FileConfig {
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        toml::from_str(text)
            .map_err(|e| Error::File { path: path.to_path_buf(), msg: e.to_string().replace('\n', " ") })
    }
}

/// Validated daemon settings.
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    /// Model folder, Hugging Face repo id, or `kokichi-tiny` (the embedded default).
    pub model: String,
    pub backend: BackendKind,
    pub dtype: Precision,
    pub bind: SocketAddr,
    /// Required from clients when set; always set when binding beyond loopback.
    pub token: Option<String>,
    /// Browser origins allowed to open WebSockets (besides the daemon's own).
    pub allowed_origins: Vec<String>,
    pub max_sessions: usize,
    pub max_connections_per_peer: usize,
    pub max_message_bytes: usize,
    /// Open the local microphone and speaker (when present).
    pub audio: bool,
    pub input_device: Option<String>,
    pub output_device: Option<String>,
    /// Gain applied to the local input (microphone or file), in dB.
    pub input_gain: f32,
    pub mode: TalkMode,
    pub hotkey: Option<String>,
    pub control_socket: PathBuf,
    /// File-backed local session instead of the microphone / speaker.
    pub input_file: Option<PathBuf>,
    pub output_file: Option<PathBuf>,
    pub transcript_file: Option<PathBuf>,
    /// Play the input file as fast as the model runs instead of in real time.
    pub fast_file: bool,
    /// Stop the daemon once the file-backed session has ended.
    pub exit_when_done: bool,
    pub log_transcripts: bool,
    /// The user's sampling layers (file, then flags), applied in order over the model's own
    /// recommendation (its `config.json`, else Moshi's defaults): see [`DaemonConfig::gen_config`].
    pub sampling: Vec<SamplingFile>,
    /// Frames a session may queue before the oldest are dropped.
    pub backlog_frames: usize,
    pub batch_window: Duration,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            model: "kokichi-tiny".into(),
            backend: BackendKind::Auto,
            dtype: Precision::F32,
            bind: SocketAddr::from(([127, 0, 0, 1], 8998)),
            token: None,
            allowed_origins: Vec::new(),
            max_sessions: 8,
            max_connections_per_peer: 4,
            max_message_bytes: 1 << 20,
            audio: true,
            input_device: None,
            output_device: None,
            input_gain: 0.0,
            mode: TalkMode::Ptt,
            hotkey: None,
            control_socket: default_control_socket(),
            input_file: None,
            output_file: None,
            transcript_file: None,
            fast_file: false,
            exit_when_done: false,
            log_transcripts: false,
            sampling: Vec::new(),
            backlog_frames: 8,
            batch_window: Duration::from_millis(20),
        }
    }
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
pub fn default_config_path() -> Option<PathBuf> {
    dirs::config_dir().map(|d| d.join("kokichi").join("config.toml"))
}

impl DaemonConfig {
    /// Applies a file's settings over `self`.
    pub fn apply_file(&mut self, f: &FileConfig) -> Result<()> {
        if let Some(v) = &f.model {
            self.model = v.clone();
        }
        if let Some(v) = f.backend {
            self.backend = v;
        }
        if let Some(v) = f.dtype {
            self.dtype = v;
        }
        if let Some(v) = &f.bind {
            self.bind = parse_bind(v)?;
        }
        if f.token.is_some() {
            self.token = f.token.clone();
        }
        if let Some(v) = &f.allowed_origins {
            self.allowed_origins = v.clone();
        }
        if let Some(v) = f.max_sessions {
            self.max_sessions = v;
        }
        if let Some(v) = f.max_connections_per_peer {
            self.max_connections_per_peer = v;
        }
        if let Some(v) = f.max_message_bytes {
            self.max_message_bytes = v;
        }
        if let Some(v) = f.audio {
            self.audio = v;
        }
        if f.input_device.is_some() {
            self.input_device = f.input_device.clone();
        }
        if f.output_device.is_some() {
            self.output_device = f.output_device.clone();
        }
        if let Some(v) = f.input_gain {
            self.input_gain = v;
        }
        if let Some(v) = f.mode {
            self.mode = v;
        }
        if f.hotkey.is_some() {
            self.hotkey = f.hotkey.clone();
        }
        if let Some(v) = &f.control_socket {
            self.control_socket = v.clone();
        }
        if let Some(v) = f.log_transcripts {
            self.log_transcripts = v;
        }
        if let Some(v) = f.backlog_frames {
            self.backlog_frames = v;
        }
        if let Some(v) = f.batch_window_ms {
            self.batch_window = Duration::from_millis(v);
        }
        self.apply_sampling(&f.sampling);
        Ok(())
    }

    /// Adds a layer of sampling settings (file or flags) over the current ones.
    pub fn apply_sampling(&mut self, s: &SamplingFile) {
        self.sampling.push(s.clone());
    }

    /// The sessions' sampling: the user's settings over the model's recommended ones.
    pub fn gen_config(&self, model: GenConfig) -> GenConfig {
        self.sampling.iter().fold(model, |g, layer| layer.over(g))
    }

    /// Checks the settings once, naming the offending one.
    pub fn validate(&self) -> Result<()> {
        if !self.bind.ip().is_loopback() && self.token.as_deref().is_none_or(str::is_empty) {
            return Err(Error::config(
                "bind",
                format!(
                    "{} is reachable from other machines: set a token (--token or `token` in the config)",
                    self.bind
                ),
            ));
        }
        if let Some(t) = &self.token {
            if t.len() < 8 {
                return Err(Error::config("token", "use at least 8 characters"));
            }
        }
        for (name, v) in [
            ("max_sessions", self.max_sessions),
            ("max_connections_per_peer", self.max_connections_per_peer),
            ("backlog_frames", self.backlog_frames),
        ] {
            if v == 0 {
                return Err(Error::config(name, "must be at least 1"));
            }
        }
        if !crate::audio::gain_db_ok(self.input_gain) {
            return Err(Error::config(
                "input_gain",
                format!("{} dB is outside -{m}..{m} dB", self.input_gain, m = crate::audio::MAX_GAIN_DB),
            ));
        }
        if self.max_message_bytes < 4096 {
            return Err(Error::config("max_message_bytes", "must be at least 4096"));
        }
        if let Some((key, t)) = self.sampling.iter().find_map(SamplingFile::bad_temperature) {
            return Err(Error::config(format!("sampling.{key}"), format!("{t} is not a temperature >= 0")));
        }
        if self.output_file.is_some() && self.input_file.is_none() {
            return Err(Error::config("output_file", "needs an input file"));
        }
        if self.model.trim().is_empty() {
            return Err(Error::config("model", "is empty"));
        }
        Ok(())
    }
}

/// Parses `host:port`, or a bare port on 127.0.0.1.
pub fn parse_bind(s: &str) -> Result<SocketAddr> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.parse().map_err(|e| Error::config("bind", format!("`{s}` is not host:port ({e})")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_overrides_defaults_and_names_bad_keys() {
        let f = FileConfig::parse(
            "model = \"/m\"\nbind = \"127.0.0.1:9000\"\nmode = \"open\"\n[sampling]\ntext_temperature = 0.5\n",
            Path::new("c.toml"),
        )
        .unwrap();
        let mut c = DaemonConfig::default();
        c.apply_file(&f).unwrap();
        assert_eq!(c.model, "/m");
        assert_eq!(c.bind.port(), 9000);
        assert_eq!(c.mode, TalkMode::Open);
        assert_eq!(c.sampling, vec![SamplingFile { text_temperature: Some(0.5), ..SamplingFile::default() }]);
        // Over a model that recommends greedy decoding: the file's text temperature, greedy audio.
        let g = c.gen_config(GenConfig::greedy());
        assert_eq!((g.text.temperature, g.audio.temperature), (0.5, 0.0));
        c.validate().unwrap();
        let err = FileConfig::parse("modle = 1\n", Path::new("c.toml")).unwrap_err().to_string();
        assert!(err.contains("c.toml") && err.contains("modle"), "{err}");
    }

    #[test]
    fn off_loopback_requires_a_token() {
        let mut c = DaemonConfig { bind: parse_bind("0.0.0.0:8998").unwrap(), ..DaemonConfig::default() };
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("bind") && err.contains("token"), "{err}");
        c.token = Some("correct-horse".into());
        c.validate().unwrap();
    }

    #[test]
    fn bad_values_are_named() {
        let mut c = DaemonConfig::default();
        c.apply_sampling(&SamplingFile { audio_temperature: Some(-1.0), ..SamplingFile::default() });
        assert!(c.validate().unwrap_err().to_string().contains("sampling.audio_temperature"));
        let c = DaemonConfig { max_sessions: 0, ..DaemonConfig::default() };
        assert!(c.validate().unwrap_err().to_string().contains("max_sessions"));
        assert!(parse_bind("nowhere").unwrap_err().to_string().contains("bind"));
        for bad in [41.0, -60.0, f32::NAN, f32::INFINITY] {
            let c = DaemonConfig { input_gain: bad, ..DaemonConfig::default() };
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains("input_gain") && err.contains("dB"), "{err}");
        }
        let f = FileConfig::parse("input_gain = 12.5\n", Path::new("c.toml")).unwrap();
        let mut c = DaemonConfig::default();
        c.apply_file(&f).unwrap();
        assert_eq!(c.input_gain, 12.5);
        c.validate().unwrap();
    }
}
