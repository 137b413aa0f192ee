//! One error type for the library. Every variant says *what* failed and *where*
//! (file, tensor, setting), so the command line can print it as a single line.

use std::path::PathBuf;

/// Errors of the kokichi library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be opened, read or written.
    #[error("{}: {err}", path.display())]
    Io { path: PathBuf, err: std::io::Error },
    /// A weights or codes file is not valid safetensors, or is truncated.
    #[error("{}: {msg}", path.display())]
    File { path: PathBuf, msg: String },
    /// One tensor of a weights or codes file is missing, misshapen or of the wrong type.
    #[error("{}: tensor `{name}`: {msg}", path.display())]
    Tensor { path: PathBuf, name: String, msg: String },
    /// A configuration value is invalid; `setting` names it.
    #[error("config `{setting}`: {msg}")]
    Config { setting: String, msg: String },
    /// An audio file could not be decoded or resampled.
    #[error("{}: {msg}", path.display())]
    Audio { path: PathBuf, msg: String },
    /// Input of the wrong shape or value was given to a model call.
    #[error("invalid input: {0}")]
    Input(String),
    /// The compute backend failed (no adapter, device lost, unsupported dtype).
    #[error("backend: {0}")]
    Backend(String),
    /// A local audio device could not be listed or opened; `device` names it.
    #[error("audio device `{device}`: {msg}")]
    AudioDevice { device: String, msg: String },
    /// A model download failed.
    #[error("download {repo}: {msg}")]
    Download { repo: String, msg: String },
}

/// Result with the library's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), err: source }
    }

    pub(crate) fn config(setting: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Config { setting: setting.into(), msg: msg.into() }
    }

    pub(crate) fn input(msg: impl Into<String>) -> Self {
        Error::Input(msg.into())
    }
}
