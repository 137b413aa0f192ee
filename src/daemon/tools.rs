//! Special tokens bound to actions (`[tools]` in the settings file). When a session's inner
//! monologue emits a bound token, its clients get an event; a bound command then runs on the
//! tools thread (never the inference thread), without a shell, with a timeout and its output
//! bounded, and its answer is said by the model in its own voice ([`crate::monologue`]). A token
//! said again within [`REPEAT_FRAMES`] frames of the last time it was acted on is ignored
//! ([`Debounce`]): a token trained to fire anywhere in a window of frames may be said on
//! neighbouring frames, and one question must run its command once.
//!
//! ```toml
//! [tools."<clock>"]
//! command = ["date", "+%H"]   # argv, no shell; leave it out for an event only
//! timeout_ms = 2000
//! ```

use std::collections::BTreeMap;
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::error::{Error, Result};

/// What a bound token does.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ToolAction {
    /// The command and its arguments (run directly, no shell); empty: the event only.
    pub command: Vec<String>,
    /// How long the command may run, in milliseconds.
    pub timeout_ms: u64,
    /// Bytes of its standard output kept as the answer (the rest is discarded).
    pub max_output_bytes: usize,
}

impl Default for ToolAction {
    fn default() -> Self {
        Self { command: Vec::new(), timeout_ms: 2000, max_output_bytes: 1024 }
    }
}

/// Longest a command may be given.
pub const MAX_TIMEOUT_MS: u64 = 60_000;
/// Most output a command's answer may keep.
pub const MAX_OUTPUT_BYTES: usize = 64 * 1024;
/// Commands waiting to run at most; more are answered "busy" at once.
const QUEUED: usize = 16;

/// Frames (2 s at 12.5 Hz) after a bound token was acted on in which the same token is ignored.
pub const REPEAT_FRAMES: u64 = 25;

/// Which of a session's bound tokens to act on: not one acted on less than [`REPEAT_FRAMES`]
/// frames before.
#[derive(Debug, Default)]
pub struct Debounce {
    last: BTreeMap<String, u64>,
}

impl Debounce {
    /// Whether `token`, said at `frame`, is acted on (and if so, remembered).
    pub fn admit(&mut self, token: &str, frame: u64) -> bool {
        if self.last.get(token).is_some_and(|&at| frame.saturating_sub(at) < REPEAT_FRAMES) {
            return false;
        }
        self.last.insert(token.to_string(), frame);
        true
    }
}

/// Checks the `[tools]` table, naming the offending entry.
pub fn validate(tools: &BTreeMap<String, ToolAction>) -> Result<()> {
    for (token, action) in tools {
        let setting = || format!("tools.\"{token}\"");
        if token.is_empty() {
            return Err(Error::config("tools", "a token name is empty"));
        }
        if action.command.first().is_some_and(String::is_empty) {
            return Err(Error::config(setting(), "the command's program is empty"));
        }
        if !(1..=MAX_TIMEOUT_MS).contains(&action.timeout_ms) {
            return Err(Error::config(setting(), format!("timeout_ms must be 1 to {MAX_TIMEOUT_MS}")));
        }
        if !(1..=MAX_OUTPUT_BYTES).contains(&action.max_output_bytes) {
            return Err(Error::config(setting(), format!("max_output_bytes must be 1 to {MAX_OUTPUT_BYTES}")));
        }
    }
    Ok(())
}

/// A command to run for a session.
pub struct Job {
    pub session: u64,
    pub token: String,
    pub action: ToolAction,
}

/// A command's outcome: its answer (standard output, trimmed) or why there is none.
pub struct Done {
    pub session: u64,
    pub token: String,
    pub answer: std::result::Result<String, String>,
}

/// The tools thread: runs one command at a time, hands each outcome to `done`.
pub struct Runner {
    jobs: SyncSender<Job>,
}

impl Runner {
    pub fn start(done: impl Fn(Done) + Send + 'static) -> Result<Self> {
        let (jobs, rx) = sync_channel::<Job>(QUEUED);
        std::thread::Builder::new()
            .name("kokichi-tools".into())
            .spawn(move || serve(rx, done))
            .map_err(|e| Error::Backend(format!("cannot start the tools thread: {e}")))?;
        Ok(Self { jobs })
    }

    /// Queues a job; a full queue is an immediate error, never a wait.
    pub fn submit(&self, job: Job) -> std::result::Result<(), String> {
        match self.jobs.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(format!("{QUEUED} tool commands already waiting")),
            Err(TrySendError::Disconnected(_)) => Err("the tools thread has stopped".into()),
        }
    }
}

fn serve(rx: Receiver<Job>, done: impl Fn(Done)) {
    while let Ok(job) = rx.recv() {
        let answer = run(&job.action);
        done(Done { session: job.session, token: job.token, answer });
    }
}

/// Runs `action`'s command: no shell, no input, stderr discarded, stdout read up to its bound
/// (the rest drained and dropped), killed at its timeout.
pub fn run(action: &ToolAction) -> std::result::Result<String, String> {
    let Some((program, args)) = action.command.split_first() else {
        return Ok(String::new());
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run `{program}`: {e}"))?;
    let Some(mut stdout) = child.stdout.take() else {
        let _ = child.kill();
        let _ = child.wait();
        return Err("no standard output".into());
    };
    let max = action.max_output_bytes;
    // The reader thread ends when the pipe closes: at exit, or when the child is killed.
    let reader = std::thread::spawn(move || {
        let mut kept = Vec::with_capacity(max.min(4096));
        let mut buf = [0u8; 4096];
        loop {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let room = max - kept.len();
                    kept.extend_from_slice(&buf[..n.min(room)]);
                }
            }
        }
        kept
    });
    let deadline = Instant::now() + Duration::from_millis(action.timeout_ms);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break Err(format!("`{program}` timed out after {} ms", action.timeout_ms));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                break Err(format!("`{program}`: {e}"));
            }
        }
    };
    let kept = reader.join().unwrap_or_default();
    let status = status?;
    if !status.success() {
        return Err(format!("`{program}` failed ({status})"));
    }
    Ok(String::from_utf8_lossy(&kept).trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_said_again_soon_is_acted_on_once() {
        let mut d = Debounce::default();
        assert!(d.admit("<clock>", 10));
        assert!(!d.admit("<clock>", 11));
        assert!(!d.admit("<clock>", 10 + REPEAT_FRAMES - 1));
        assert!(d.admit("<other>", 11), "another token is not held back");
        assert!(d.admit("<clock>", 10 + REPEAT_FRAMES));
        assert!(!d.admit("<clock>", 11 + REPEAT_FRAMES));
    }

    fn action(command: &[&str], timeout_ms: u64) -> ToolAction {
        ToolAction { command: command.iter().map(|s| s.to_string()).collect(), timeout_ms, max_output_bytes: 16 }
    }

    #[test]
    fn commands_run_without_a_shell_bounded() {
        assert_eq!(run(&action(&["echo", "seven"], 2000)).unwrap(), "seven");
        // No shell: the `;` is an argument, not a second command.
        assert_eq!(run(&action(&["echo", "a;", "echo", "b"], 2000)).unwrap(), "a; echo b");
        // Output past the bound is dropped, and the command still ends.
        assert_eq!(run(&action(&["yes"], 300)).unwrap_err(), "`yes` timed out after 300 ms");
        assert_eq!(run(&action(&["head", "-c", "100000", "/dev/zero"], 2000)).unwrap().len(), 16);
        let t0 = Instant::now();
        let e = run(&action(&["sleep", "5"], 200)).unwrap_err();
        assert!(e.contains("timed out") && t0.elapsed() < Duration::from_secs(2), "{e}");
        assert!(run(&action(&["false"], 2000)).unwrap_err().contains("failed"));
        assert!(run(&action(&["/no/such/tool"], 2000)).unwrap_err().contains("cannot run"));
        assert_eq!(run(&action(&[], 2000)).unwrap(), "");
    }

    #[test]
    fn bad_tables_name_the_entry() {
        let mut t = BTreeMap::new();
        t.insert("<clock>".to_string(), action(&["date"], 0));
        assert!(validate(&t).unwrap_err().to_string().contains("tools.\"<clock>\""));
        t.insert("<clock>".to_string(), action(&[""], 10));
        assert!(validate(&t).unwrap_err().to_string().contains("program is empty"));
        t.insert("<clock>".to_string(), action(&["date"], 10));
        assert!(validate(&t).is_ok());
    }
}
