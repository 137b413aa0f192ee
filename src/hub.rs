//! Fetching a Hugging Face repo's files with `hf-hub` into the standard cache (`$HF_HOME/hub`:
//! `blobs/`, `snapshots/<commit>/`, `refs/main`), from `$HF_ENDPOINT` when set. A file already in
//! the cache is used without asking the network, so a downloaded model runs offline. Progress is a
//! bar on a terminal and one log line per file elsewhere (systemd, CI). An interrupted file stays
//! as a `.part` blob that the next run resumes with a range request; a file whose size is not the
//! one the hub announced is removed from the cache. Failures are one line naming
//! the repo and the file: repo not found, file not in the repo, hub unreachable, interrupted.

use std::cell::Cell;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Instant;

use hf_hub::api::sync::{ApiBuilder, ApiError, ApiRepo};
use hf_hub::{Cache, CacheRepo};

use crate::error::{Error, Result};

const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// One model repository on the hub (revision `main`).
pub struct HubRepo {
    id: String,
    endpoint: String,
    api: ApiRepo,
    cache: CacheRepo,
    terminal: bool,
}

/// Why a file could not be fetched, from the hub's answer.
#[derive(Debug, PartialEq)]
enum Failure {
    RepoNotFound,
    FileNotFound,
    Other(String),
}

impl HubRepo {
    /// The repo `id` (`owner/name`) on `$HF_ENDPOINT` (default the Hugging Face hub), cached
    /// under `$HF_HOME/hub` (default `~/.cache/huggingface/hub`).
    pub fn open(id: &str) -> Result<Self> {
        let endpoint = std::env::var("HF_ENDPOINT").unwrap_or_else(|_| DEFAULT_ENDPOINT.to_string());
        let api = ApiBuilder::from_env()
            .with_progress(false)
            .build()
            .map_err(|e| Error::Download { repo: id.to_string(), msg: e.to_string() })?;
        Ok(HubRepo {
            id: id.to_string(),
            endpoint,
            api: api.model(id.to_string()),
            cache: Cache::from_env().model(id.to_string()),
            terminal: std::io::stderr().is_terminal(),
        })
    }

    fn error(&self, msg: String) -> Error {
        Error::Download { repo: self.id.clone(), msg }
    }

    /// `file` if the cache already holds it (no network).
    pub fn cached(&self, file: &str) -> Option<PathBuf> {
        self.cache.get(file)
    }

    /// `file` from the cache, else downloaded; an error if the repo does not have it.
    pub fn required(&self, file: &str) -> Result<PathBuf> {
        match self.fetch(file) {
            Ok(path) => Ok(path),
            Err(Failure::FileNotFound) => {
                Err(self.error(format!("{file}: no such file in the repository (revision main) on {}", self.endpoint)))
            }
            Err(f) => Err(self.failure(file, f)),
        }
    }

    /// `file` from the cache, else downloaded; `None` if the repo does not have it.
    pub fn optional(&self, file: &str) -> Result<Option<PathBuf>> {
        match self.fetch(file) {
            Ok(path) => Ok(Some(path)),
            Err(Failure::FileNotFound) => Ok(None),
            Err(f) => Err(self.failure(file, f)),
        }
    }

    fn failure(&self, file: &str, f: Failure) -> Error {
        match f {
            Failure::RepoNotFound => self.error(format!(
                "no such repository on {} (a private or gated one needs a token in $HF_HOME/token)",
                self.endpoint
            )),
            Failure::FileNotFound => self.error(format!("{file}: no such file in the repository")),
            Failure::Other(msg) => self.error(format!("{file}: {msg}")),
        }
    }

    fn fetch(&self, file: &str) -> std::result::Result<PathBuf, Failure> {
        if let Some(path) = self.cached(file) {
            return Ok(path);
        }
        let seen = Rc::new(Cell::new((0usize, 0usize)));
        let progress = Progress::new(&self.id, file, self.terminal, seen.clone());
        let path =
            self.api.download_with_progress(file, progress).map_err(|e| classify(e, &self.endpoint, seen.get()))?;
        // A server that ignores a resumed download's range request sends the whole file again,
        // which hf-hub appends to the part it had: check the size the hub announced.
        let size = seen.get().1 as u64;
        let len = std::fs::metadata(&path).map_or(0, |m| m.len());
        if len != size {
            if let Ok(blob) = std::fs::canonicalize(&path) {
                let _ = std::fs::remove_file(blob);
            }
            let _ = std::fs::remove_file(&path);
            return Err(Failure::Other(format!(
                "received {len} bytes where the hub announced {size} (a resumed download whose range was \
                 ignored?): removed from the cache, run again"
            )));
        }
        Ok(path)
    }
}

/// What an hf-hub error means for the user; `seen` is (bytes received, file size).
fn classify(e: ApiError, endpoint: &str, seen: (usize, usize)) -> Failure {
    match e {
        ApiError::RequestError(e) => match *e {
            ureq::Error::Status(code, response) => {
                let error_code = response.header("x-error-code").unwrap_or_default().to_string();
                let message = response.header("x-error-message").unwrap_or_default().to_string();
                status_failure(code, &error_code, &message)
            }
            ureq::Error::Transport(t) => {
                // Its text starts with the file's URL; the endpoint is enough.
                let text = t.to_string();
                let url = t.url().map(|u| format!("{u}: ")).unwrap_or_default();
                Failure::Other(format!("cannot reach {endpoint}: {}", text.strip_prefix(&url).unwrap_or(&text)))
            }
        },
        ApiError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof || seen.0 > 0 => Failure::Other(format!(
            "download interrupted after {} of {} bytes ({e}); run again to resume",
            seen.0, seen.1
        )),
        ApiError::MissingHeader(h) | ApiError::InvalidHeader(h) => {
            Failure::Other(format!("{endpoint} is not a Hugging Face hub: header `{h}` missing or invalid"))
        }
        ApiError::LockAcquisition(path) => {
            Failure::Other(format!("another process is downloading it (lock {})", path.display()))
        }
        other => Failure::Other(other.to_string()),
    }
}

/// The hub answers a missing repo with 401 (or 404 when logged in) and `X-Error-Code:
/// RepoNotFound`, a missing file with 404 and `EntryNotFound`.
fn status_failure(code: u16, error_code: &str, message: &str) -> Failure {
    match (code, error_code) {
        (_, "RepoNotFound") | (401, "") => Failure::RepoNotFound,
        (_, "EntryNotFound") | (404, "") => Failure::FileNotFound,
        _ if message.is_empty() => Failure::Other(format!("the hub answered HTTP {code}")),
        _ => Failure::Other(format!("the hub answered HTTP {code}: {message}")),
    }
}

/// Download progress: indicatif's bar on a terminal, else one log line when a file is done.
enum Progress {
    Bar(indicatif::ProgressBar, Rc<Cell<(usize, usize)>>),
    Line {
        repo: String,
        file: String,
        start: Instant,
        /// Bytes already on disk when the transfer started (a resumed `.part` file).
        resumed_from: usize,
        /// Set by `init`: the next `update` is hf-hub's report of the bytes already there.
        first: bool,
        seen: Rc<Cell<(usize, usize)>>,
    },
}

impl Progress {
    fn new(repo: &str, file: &str, terminal: bool, seen: Rc<Cell<(usize, usize)>>) -> Self {
        if terminal {
            Progress::Bar(indicatif::ProgressBar::new(0), seen)
        } else {
            Progress::Line {
                repo: repo.into(),
                file: file.into(),
                start: Instant::now(),
                resumed_from: 0,
                first: true,
                seen,
            }
        }
    }

    fn seen(&self) -> &Rc<Cell<(usize, usize)>> {
        match self {
            Progress::Bar(_, s) | Progress::Line { seen: s, .. } => s,
        }
    }

    /// The line a finished file logs off a terminal.
    fn line(repo: &str, file: &str, size: usize, resumed_from: usize, secs: f64) -> String {
        let mb = |b: usize| b as f64 / 1e6;
        let resumed = if resumed_from > 0 { format!(", resumed at {:.1} MB", mb(resumed_from)) } else { String::new() };
        format!("downloaded {repo}/{file} ({:.1} MB in {secs:.1} s{resumed})", mb(size))
    }
}

impl hf_hub::api::Progress for Progress {
    fn init(&mut self, size: usize, filename: &str) {
        let seen = self.seen().clone();
        seen.set((0, size));
        match self {
            Progress::Bar(bar, _) => {
                hf_hub::api::Progress::init(bar, size, filename);
                bar.set_position(0);
            }
            Progress::Line { first, .. } => *first = true,
        }
    }

    fn update(&mut self, n: usize) {
        let seen = self.seen().clone();
        let (done, size) = seen.get();
        // hf-hub reports the bytes already on disk (0 for a fresh file) right after `init`.
        if let Progress::Line { resumed_from, first, .. } = self
            && *first
        {
            *resumed_from = n;
            *first = false;
        }
        seen.set((done + n, size));
        if let Progress::Bar(bar, _) = self {
            bar.inc(n as u64);
        }
    }

    fn finish(&mut self) {
        match self {
            Progress::Bar(bar, _) => bar.finish(),
            Progress::Line { repo, file, start, resumed_from, seen, .. } => {
                let (done, size) = seen.get();
                if done == size {
                    let line = Progress::line(repo, file, size, *resumed_from, start.elapsed().as_secs_f64());
                    tracing::info!("{line}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hf_hub::api::Progress as _;

    #[test]
    fn a_bar_on_a_terminal_and_a_line_per_file_elsewhere() {
        let seen = Rc::new(Cell::new((0, 0)));
        assert!(matches!(Progress::new("o/r", "f", true, seen.clone()), Progress::Bar(..)));
        let mut p = Progress::new("o/r", "model.safetensors", false, seen.clone());
        assert!(matches!(p, Progress::Line { .. }));
        // A resumed download: hf-hub calls init twice, then reports the bytes already there.
        p.init(4_000_000, "model.safetensors");
        p.init(4_000_000, "model.safetensors");
        p.update(1_000_000);
        p.update(3_000_000);
        // A fresh one: the first report is 0 bytes.
        let mut q = Progress::new("o/r", "config.json", false, Rc::new(Cell::new((0, 0))));
        q.init(10, "config.json");
        q.update(0);
        q.update(10);
        assert!(matches!(q, Progress::Line { resumed_from: 0, .. }));
        assert_eq!(seen.get(), (4_000_000, 4_000_000));
        match &p {
            Progress::Line { resumed_from, .. } => assert_eq!(*resumed_from, 1_000_000),
            Progress::Bar(..) => unreachable!(),
        }
        assert_eq!(
            Progress::line("o/r", "model.safetensors", 4_000_000, 1_000_000, 0.25),
            "downloaded o/r/model.safetensors (4.0 MB in 0.2 s, resumed at 1.0 MB)"
        );
    }

    #[test]
    fn hub_answers_become_one_clear_failure() {
        assert_eq!(status_failure(401, "RepoNotFound", "Repository not found"), Failure::RepoNotFound);
        assert_eq!(status_failure(404, "RepoNotFound", ""), Failure::RepoNotFound);
        assert_eq!(status_failure(404, "EntryNotFound", "Entry not found"), Failure::FileNotFound);
        assert_eq!(status_failure(404, "", ""), Failure::FileNotFound);
        assert_eq!(
            status_failure(403, "GatedRepo", "Access restricted"),
            Failure::Other("the hub answered HTTP 403: Access restricted".into())
        );
    }
}
