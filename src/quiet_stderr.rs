//! Vulkan's loader and Mesa's drivers print straight to the process's stderr while a wgpu
//! adapter is found ("XDG_RUNTIME_DIR is invalid or not set", layer and ICD notes): lines a
//! user cannot act on. [`Quiet`] points stderr at an in-memory file for a short window and sends
//! what was written there to the debug log when it ends, so nothing is lost and nothing reaches
//! the terminal. Any thread's stderr writes in that window go the same way.

#[cfg(target_os = "linux")]
mod imp {
    use std::fs::File;
    use std::io::{Read, Seek, SeekFrom};
    use std::os::fd::{AsRawFd, FromRawFd};

    /// stderr redirected until dropped.
    pub struct Quiet {
        what: &'static str,
        saved: i32,
        capture: Option<File>,
    }

    impl Quiet {
        /// Redirects stderr; `what` names the window in the debug log. Where redirecting fails,
        /// stderr is left alone.
        pub fn start(what: &'static str) -> Quiet {
            // SAFETY: plain libc calls on file descriptors this function owns; every failure
            // leaves stderr as it was.
            unsafe {
                let fd = libc::memfd_create(c"kokichi-stderr".as_ptr(), libc::MFD_CLOEXEC);
                if fd < 0 {
                    return Quiet { what, saved: -1, capture: None };
                }
                let capture = File::from_raw_fd(fd);
                let saved = libc::dup(2);
                if saved < 0 || libc::dup2(capture.as_raw_fd(), 2) < 0 {
                    if saved >= 0 {
                        libc::close(saved);
                    }
                    return Quiet { what, saved: -1, capture: None };
                }
                Quiet { what, saved, capture: Some(capture) }
            }
        }
    }

    impl Drop for Quiet {
        fn drop(&mut self) {
            if self.saved < 0 {
                return;
            }
            // SAFETY: `saved` is the duplicate of the original stderr taken in `start`.
            unsafe {
                libc::dup2(self.saved, 2);
                libc::close(self.saved);
            }
            let Some(mut file) = self.capture.take() else { return };
            let mut text = String::new();
            if file.seek(SeekFrom::Start(0)).is_ok() && file.read_to_string(&mut text).is_ok() {
                for line in text.lines().filter(|l| !l.trim().is_empty()) {
                    tracing::debug!("{}: {line}", self.what);
                }
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    /// Nothing is redirected on this platform.
    pub struct Quiet;

    impl Quiet {
        pub fn start(_what: &'static str) -> Quiet {
            Quiet
        }
    }
}

pub use imp::Quiet;
