//! alsa-lib prints its own errors straight to stderr: eight lines of "cannot find card '0'" on
//! every start of a machine without a sound card, and more on every retry. [`AlsaLog`] routes
//! the messages of the current thread into the debug log instead.

#[cfg(any(target_os = "linux", target_os = "dragonfly", target_os = "freebsd", target_os = "netbsd"))]
mod imp {
    use std::cell::RefCell;
    use std::rc::Rc;

    /// Collects this thread's alsa-lib messages until [`flush`](Self::flush).
    pub struct AlsaLog(Option<Rc<RefCell<alsa::Output>>>);

    impl AlsaLog {
        pub fn capture() -> Self {
            Self(alsa::Output::local_error_handler().ok())
        }

        /// Logs what was collected (at debug level) and starts a new buffer.
        pub fn flush(&mut self) {
            let Some(out) = self.0.take() else { return };
            let text = out.try_borrow().map(|o| o.to_string()).unwrap_or_default();
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                tracing::debug!("alsa: {line}");
            }
            *self = Self::capture();
        }
    }
}

#[cfg(not(any(target_os = "linux", target_os = "dragonfly", target_os = "freebsd", target_os = "netbsd")))]
mod imp {
    /// Nothing to capture on this platform.
    pub struct AlsaLog;

    impl AlsaLog {
        pub fn capture() -> Self {
            Self
        }

        pub fn flush(&mut self) {}
    }
}

pub use imp::AlsaLog;
