//! Acoustic echo cancellation for a microphone that hears the model's own voice (open mic on
//! laptop speakers). The work is SpeexDSP's, the system library (Debian: `libspeexdsp-dev`):
//! its adaptive echo canceller learns the room's echo path and subtracts the far-end reference
//! (what went to the speaker) as heard through it. This module only binds the few C functions
//! it needs and converts samples; it never allocates after [`EchoCanceller::new`], so it can run
//! on the inference thread frame by frame. (SpeexDSP's residual-echo suppressor, its
//! preprocessor, lowered the measured ERLE in tests/echo_cancel.rs, so it is not used.)

use std::ffi::{c_int, c_void};
use std::ptr::NonNull;

use crate::error::{Error, Result};

/// The SpeexDSP functions used here (`speex/speex_echo.h`); build.rs
/// links the library through pkg-config.
mod ffi {
    use std::ffi::{c_int, c_void};

    #[repr(C)]
    pub struct SpeexEchoState {
        _private: [u8; 0],
    }

    pub const SPEEX_ECHO_SET_SAMPLING_RATE: c_int = 24;

    #[link(name = "speexdsp")]
    unsafe extern "C" {
        pub fn speex_echo_state_init(frame_size: c_int, filter_length: c_int) -> *mut SpeexEchoState;
        pub fn speex_echo_state_destroy(st: *mut SpeexEchoState);
        pub fn speex_echo_ctl(st: *mut SpeexEchoState, request: c_int, ptr: *mut c_void) -> c_int;
        pub fn speex_echo_cancellation(st: *mut SpeexEchoState, rec: *const i16, play: *const i16, out: *mut i16);
    }
}

/// How long an echo the canceller models (speaker-to-microphone delay beyond the one frame the
/// daemon already accounts for, plus the room's tail). Longer converges slower.
pub const DEFAULT_TAIL_MS: u32 = 200;

/// One microphone's echo canceller at one sample rate.
pub struct EchoCanceller {
    echo: NonNull<ffi::SpeexEchoState>,
    block: usize,
    mic: Vec<i16>,
    far: Vec<i16>,
    out: Vec<i16>,
}

// The states are plain heap memory owned by this value alone; SpeexDSP keeps no thread affinity.
unsafe impl Send for EchoCanceller {}

impl EchoCanceller {
    /// A canceller for `rate` Hz audio, processing 20 ms blocks, modelling `tail_ms` of echo.
    pub fn new(rate: u32, tail_ms: u32) -> Result<Self> {
        let block = (rate / 50) as usize;
        let tail = (u64::from(rate) * u64::from(tail_ms) / 1000) as usize;
        if block == 0 || tail < block || tail > 10 * rate as usize {
            return Err(Error::config(
                "echo_cancel",
                format!("no echo canceller for {rate} Hz with a {tail_ms} ms tail (20 ms to 10 s at 50 Hz or more)"),
            ));
        }
        let failed = || Error::config("echo_cancel", "SpeexDSP could not create an echo canceller");
        // SAFETY: plain constructor calls with in-range sizes; null is checked.
        let echo =
            NonNull::new(unsafe { ffi::speex_echo_state_init(block as c_int, tail as c_int) }).ok_or_else(failed)?;
        let mut r = rate as c_int;
        // SAFETY: `echo` is live; the request reads one int.
        unsafe { ffi::speex_echo_ctl(echo.as_ptr(), ffi::SPEEX_ECHO_SET_SAMPLING_RATE, (&raw mut r).cast::<c_void>()) };
        Ok(Self { echo, block, mic: vec![0; block], far: vec![0; block], out: vec![0; block] })
    }

    /// Samples per block; [`process`](Self::process) takes whole blocks.
    pub fn block(&self) -> usize {
        self.block
    }

    /// Removes from `mic` (in place) the echo of `far`, the speaker's samples of the same span,
    /// both a whole number of blocks in [-1, 1].
    pub fn process(&mut self, mic: &mut [f32], far: &[f32]) -> Result<()> {
        if mic.len() != far.len() || !mic.len().is_multiple_of(self.block) {
            return Err(Error::input(format!(
                "echo canceller: {} microphone and {} speaker samples, not equal whole blocks of {}",
                mic.len(),
                far.len(),
                self.block
            )));
        }
        for (m, f) in mic.chunks_exact_mut(self.block).zip(far.chunks_exact(self.block)) {
            to_i16(m, &mut self.mic);
            to_i16(f, &mut self.far);
            // SAFETY: the three buffers hold `block` samples, the size the state was made for.
            unsafe {
                ffi::speex_echo_cancellation(
                    self.echo.as_ptr(),
                    self.mic.as_ptr(),
                    self.far.as_ptr(),
                    self.out.as_mut_ptr(),
                );
            }
            for (o, &v) in m.iter_mut().zip(&self.out) {
                *o = f32::from(v) / 32768.0;
            }
        }
        Ok(())
    }
}

impl Drop for EchoCanceller {
    fn drop(&mut self) {
        // SAFETY: the state was made by its init function and is destroyed once, here.
        unsafe { ffi::speex_echo_state_destroy(self.echo.as_ptr()) };
    }
}

fn to_i16(x: &[f32], out: &mut [i16]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = (v * 32768.0).round().clamp(-32768.0, 32767.0) as i16;
    }
}

/// Echo return loss enhancement in dB: how much weaker the echo is after cancellation,
/// `10 log10(Σ echo² / Σ residual²)`.
pub fn erle_db(echo: &[f32], residual: &[f32]) -> f64 {
    let energy = |x: &[f32]| x.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>();
    10.0 * (energy(echo).max(1e-20) / energy(residual).max(1e-20)).log10()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reproducible noise-like signal (a linear congruential generator).
    fn noise(len: usize, seed: u32) -> Vec<f32> {
        let mut s = seed;
        (0..len)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                ((s >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 0.5
            })
            .collect()
    }

    /// The far end through a room: 20 ms of delay, then a decaying three-tap filter, at half level.
    fn room(far: &[f32], delay: usize) -> Vec<f32> {
        (0..far.len())
            .map(|i| {
                let at = |k: usize| if i >= delay + k { far[i - delay - k] } else { 0.0 };
                0.5 * at(0) + 0.25 * at(3) - 0.1 * at(11)
            })
            .collect()
    }

    #[test]
    fn cancels_a_known_echo_path_and_keeps_silence_silent() {
        let rate = 24000;
        let far = noise(rate as usize * 4, 7);
        let echo = room(&far, 480);
        let mut aec = EchoCanceller::new(rate, DEFAULT_TAIL_MS).unwrap();
        assert_eq!(aec.block(), 480);
        let mut mic = echo.clone();
        for (m, f) in mic.chunks_mut(1920).zip(far.chunks(1920)) {
            aec.process(m, f).unwrap();
        }
        // After two seconds the filter has converged: the last two seconds are far quieter.
        let half = echo.len() / 2;
        let erle = erle_db(&echo[half..], &mic[half..]);
        assert!(erle > 20.0, "ERLE {erle:.1} dB");
        // Once the far end has been silent for longer than the tail, nothing is invented.
        let mut quiet = vec![0.0; 1920];
        for _ in 0..4 {
            quiet.fill(0.0);
            aec.process(&mut quiet, &[0.0; 1920]).unwrap();
        }
        assert!(quiet.iter().all(|v| v.abs() < 1e-3));
    }

    #[test]
    fn rejects_partial_blocks_and_impossible_settings() {
        let mut aec = EchoCanceller::new(24000, 100).unwrap();
        let e = aec.process(&mut [0.0; 100], &[0.0; 100]).unwrap_err().to_string();
        assert!(e.contains("blocks of 480"), "{e}");
        let e = aec.process(&mut [0.0; 480], &[0.0; 960]).unwrap_err().to_string();
        assert!(e.contains("480 microphone and 960 speaker"), "{e}");
        assert!(EchoCanceller::new(24000, 10).is_err());
        assert!(EchoCanceller::new(40, 100).is_err());
    }
}
