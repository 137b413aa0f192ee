//! Client-supplied text on its way to the log. A client must not forge log lines (newlines,
//! control characters, terminal escapes) nor flood the log: [`escaped`] escapes and truncates a
//! string for logging, and [`WarnLimit`] caps how many warnings one session may log.

use std::fmt;
use std::time::{Duration, Instant};

/// At most this many characters of client text are logged (escaped characters count as one).
pub const MAX_LOGGED_CHARS: usize = 300;
/// A session logs at most this many warnings per [`WARN_WINDOW`]...
pub const WARNS_PER_WINDOW: u32 = 5;
/// ...then one line saying how many were suppressed.
pub const WARN_WINDOW: Duration = Duration::from_secs(10);

/// `text` for a log line: [`str::escape_debug`]-escaped (no raw newlines or control characters),
/// cut after [`MAX_LOGGED_CHARS`] characters with a note of how many bytes were left out.
pub fn escaped(text: &str) -> Escaped<'_> {
    Escaped(text)
}

/// See [`escaped`].
pub struct Escaped<'a>(&'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, (at, c)) in self.0.char_indices().enumerate() {
            if n == MAX_LOGGED_CHARS {
                return write!(f, "…[{} more bytes]", self.0.len() - at);
            }
            write!(f, "{}", c.escape_debug())?;
        }
        Ok(())
    }
}

impl fmt::Debug for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// What [`WarnLimit::check`] allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Log the warning; `suppressed` were left out since the last one logged (say so first).
    Log { suppressed: u64 },
    /// Leave it out (counted).
    Suppress,
}

/// Per-session warning budget: [`WARNS_PER_WINDOW`] per [`WARN_WINDOW`], the rest counted.
#[derive(Debug)]
pub struct WarnLimit {
    max: u32,
    window: Duration,
    start: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

impl Default for WarnLimit {
    fn default() -> Self {
        Self::new(WARNS_PER_WINDOW, WARN_WINDOW)
    }
}

impl WarnLimit {
    pub fn new(max: u32, window: Duration) -> Self {
        Self { max, window, start: None, logged: 0, suppressed: 0 }
    }

    /// Whether a warning at `now` may be logged.
    pub fn check(&mut self, now: Instant) -> Verdict {
        match self.start {
            Some(s) if now.duration_since(s) < self.window => {}
            _ => {
                self.start = Some(now);
                self.logged = 0;
            }
        }
        if self.logged < self.max {
            self.logged += 1;
            Verdict::Log { suppressed: std::mem::take(&mut self.suppressed) }
        } else {
            self.suppressed += 1;
            Verdict::Suppress
        }
    }

    /// Warnings suppressed and not reported yet (for the session's last line).
    pub fn take_suppressed(&mut self) -> u64 {
        std::mem::take(&mut self.suppressed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_text_is_escaped_and_cut() {
        let forged = "oops\n2026-01-01T00:00:00Z  INFO kokichi: forged\r\x1b[31m\u{202e}";
        let logged = escaped(forged).to_string();
        assert!(!logged.chars().any(|c| c.is_control()), "{logged}");
        assert!(logged.contains("oops\\n2026") && logged.contains("\\r") && logged.contains("\\u{1b}"), "{logged}");
        assert!(logged.contains("\\u{202e}"), "{logged}");
        let long = "é".repeat(10_000);
        let logged = escaped(&long).to_string();
        assert!(logged.starts_with(&"é".repeat(MAX_LOGGED_CHARS)));
        assert!(logged.ends_with(&format!("…[{} more bytes]", 2 * (10_000 - MAX_LOGGED_CHARS))), "{logged}");
        assert_eq!(escaped("plain words").to_string(), "plain words");
    }

    #[test]
    fn warnings_are_limited_per_window_and_the_rest_counted() {
        let t0 = Instant::now();
        let mut w = WarnLimit::new(3, Duration::from_secs(10));
        let verdicts: Vec<_> = (0..10).map(|_| w.check(t0)).collect();
        assert_eq!(verdicts[..3], [Verdict::Log { suppressed: 0 }; 3]);
        assert!(verdicts[3..].iter().all(|v| *v == Verdict::Suppress));
        // The next window's first line reports the 7 left out.
        assert_eq!(w.check(t0 + Duration::from_secs(11)), Verdict::Log { suppressed: 7 });
        assert_eq!(w.check(t0 + Duration::from_secs(11)), Verdict::Log { suppressed: 0 });
        assert_eq!(w.take_suppressed(), 0);
    }
}
