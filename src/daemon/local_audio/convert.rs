//! What runs inside the cpal callbacks, kept free of cpal so it can be tested without a sound
//! card. A callback must never block, allocate or log (the device thread has a hard deadline),
//! so these only convert samples through a fixed scratch array and push or pop a lock-free ring.
//! Counters are relaxed atomics read by `/api/status`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use cpal::{FromSample, Sample};
use ringbuf::traits::{Consumer, Observer, Producer};
use ringbuf::{HeapCons, HeapProd};

use crate::daemon::metrics::Metrics;

/// Frames converted per ring operation; lives inside the callback state, not on the heap.
const SCRATCH: usize = 512;

/// Mixes interleaved `channels`-channel samples of any format down to mono `f32` in `out`.
/// Converts as many whole frames as fit in `out` and returns that count; a trailing partial
/// frame is ignored.
pub fn downmix<T>(interleaved: &[T], channels: usize, out: &mut [f32]) -> usize
where
    T: Sample,
    f32: FromSample<T>,
{
    let channels = channels.max(1);
    let frames = (interleaved.len() / channels).min(out.len());
    if channels == 1 {
        for (o, &s) in out.iter_mut().zip(&interleaved[..frames]) {
            *o = f32::from_sample(s);
        }
        return frames;
    }
    let scale = 1.0 / channels as f32;
    for (o, frame) in out.iter_mut().zip(interleaved.chunks_exact(channels)) {
        *o = frame.iter().map(|&s| f32::from_sample(s)).sum::<f32>() * scale;
    }
    frames
}

/// Writes each mono sample to every channel of the interleaved `out`, converted to the device
/// format (clamped to [-1, 1]). Frames of `out` beyond `mono` and a trailing partial frame are
/// set to silence.
pub fn spread<T>(mono: &[f32], channels: usize, out: &mut [T])
where
    T: Sample + FromSample<f32>,
{
    let channels = channels.max(1);
    let mut frames = out.chunks_exact_mut(channels);
    for (&s, frame) in mono.iter().zip(&mut frames) {
        let v = T::from_sample(if s.is_finite() { s.clamp(-1.0, 1.0) } else { 0.0 });
        frame.fill(v);
    }
    for frame in frames {
        frame.fill(T::EQUILIBRIUM);
    }
    let whole = out.len() / channels * channels;
    out[whole..].fill(T::EQUILIBRIUM);
}

/// The capture callback's state: device buffer -> mono -> ring.
pub struct CaptureWriter {
    prod: HeapProd<f32>,
    channels: usize,
    scratch: [f32; SCRATCH],
    metrics: Arc<Metrics>,
}

impl CaptureWriter {
    pub fn new(prod: HeapProd<f32>, channels: usize, metrics: Arc<Metrics>) -> Self {
        Self { prod, channels: channels.max(1), scratch: [0.0; SCRATCH], metrics }
    }

    /// Down-mixes one callback buffer into the ring. When the ring is full (the reader fell
    /// behind) the rest is dropped and one overrun is counted.
    pub fn write<T>(&mut self, data: &[T])
    where
        T: Sample,
        f32: FromSample<T>,
    {
        let step = SCRATCH * self.channels;
        for chunk in data.chunks(step) {
            let n = downmix(chunk, self.channels, &mut self.scratch);
            if self.prod.push_slice(&self.scratch[..n]) < n {
                self.metrics.capture_overruns.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
}

/// The playback callback's state: ring -> every channel of the device buffer.
///
/// It starts (and restarts after running dry) only once `prefill` samples are queued, so the
/// model's 80 ms frames arriving with some jitter do not each cause a gap. An underrun is
/// counted once per gap: when audio was playing and the ring ran dry. Silence before the model
/// has said anything is not an underrun.
pub struct PlaybackReader {
    cons: HeapCons<f32>,
    channels: usize,
    prefill: usize,
    waiting: bool,
    scratch: [f32; SCRATCH],
    metrics: Arc<Metrics>,
}

impl PlaybackReader {
    pub fn new(cons: HeapCons<f32>, channels: usize, prefill: usize, metrics: Arc<Metrics>) -> Self {
        Self { cons, channels: channels.max(1), prefill, waiting: true, scratch: [0.0; SCRATCH], metrics }
    }

    /// Fills one callback buffer from the ring, with silence where it has nothing.
    pub fn read<T>(&mut self, data: &mut [T])
    where
        T: Sample + FromSample<f32>,
    {
        if self.waiting {
            if self.cons.occupied_len() < self.prefill.max(1) {
                data.fill(T::EQUILIBRIUM);
                return;
            }
            self.waiting = false;
        }
        let mut short = false;
        for chunk in data.chunks_mut(SCRATCH * self.channels) {
            let want = (chunk.len() / self.channels).min(SCRATCH);
            let got = self.cons.pop_slice(&mut self.scratch[..want]);
            if got < want {
                self.scratch[got..want].fill(0.0);
                short = true;
            }
            spread(&self.scratch[..want], self.channels, chunk);
        }
        if short {
            self.metrics.playback_underruns.fetch_add(1, Ordering::Relaxed);
            self.waiting = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringbuf::HeapRb;
    use ringbuf::traits::Split;

    #[test]
    fn downmix_converts_every_format_to_mono() {
        let mut out = [9.0f32; 4];
        // Stereo i16: full scale left, silence right -> half scale.
        assert_eq!(downmix(&[i16::MAX, 0, i16::MIN, 0, 0, 0], 2, &mut out), 3);
        assert!((out[0] - 0.5).abs() < 1e-3 && (out[1] + 0.5).abs() < 1e-3 && out[2] == 0.0);
        assert_eq!(out[3], 9.0, "beyond the frames: untouched");
        // u16 is centred on 32768.
        assert_eq!(downmix(&[32768u16, 0, 65535], 1, &mut out), 3);
        assert_eq!(out[0], 0.0);
        assert!((out[1] + 1.0).abs() < 1e-3 && (out[2] - 1.0).abs() < 1e-3);
        // f32, 3 channels, a trailing partial frame ignored.
        assert_eq!(downmix(&[0.3f32, 0.6, 0.0, 1.0, 1.0, 1.0, 0.5], 3, &mut out), 2);
        assert!((out[0] - 0.3).abs() < 1e-6 && (out[1] - 1.0).abs() < 1e-6);
        // Output shorter than the input: only what fits.
        let mut two = [0.0f32; 2];
        assert_eq!(downmix(&[0.1f32; 10], 1, &mut two), 2);
    }

    #[test]
    fn spread_duplicates_to_all_channels_and_pads_with_silence() {
        let mut out = [7i16; 7];
        spread(&[1.0, -2.0], 3, &mut out);
        assert_eq!(&out[..3], &[i16::MAX; 3]);
        assert_eq!(&out[3..6], &[i16::MIN; 3], "clamped to -1");
        assert_eq!(out[6], 0, "partial frame silenced");
        let mut u = [0u16; 4];
        spread(&[0.0], 2, &mut u);
        assert_eq!(u, [32768; 4], "u16 silence is its midpoint");
        let mut f = [1.0f32; 2];
        spread(&[f32::NAN], 2, &mut f);
        assert_eq!(f, [0.0, 0.0]);
    }

    #[test]
    fn capture_counts_an_overrun_when_the_ring_is_full() {
        let metrics = Arc::new(Metrics::default());
        let (prod, mut cons) = HeapRb::<f32>::new(1000).split();
        let mut w = CaptureWriter::new(prod, 2, metrics.clone());
        // 600 stereo frames (more than one scratch chunk) fit.
        let buf: Vec<i16> = (0..1200).map(|i| if i % 2 == 0 { 16384 } else { 0 }).collect();
        w.write(&buf);
        assert_eq!(cons.occupied_len(), 600);
        assert_eq!(metrics.capture_overruns.load(Ordering::Relaxed), 0);
        let mut got = [0.0f32; 600];
        assert_eq!(cons.pop_slice(&mut got), 600);
        assert!(got.iter().all(|&v| (v - 0.25).abs() < 1e-3));
        // 1200 more frames do not fit in 1000: one overrun per callback.
        let buf = vec![0.5f32; 2400];
        w.write(&buf);
        assert_eq!(cons.occupied_len(), 1000);
        assert_eq!(metrics.capture_overruns.load(Ordering::Relaxed), 1);
        w.write(&buf);
        assert_eq!(metrics.capture_overruns.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn playback_prefills_then_counts_each_gap_once() {
        let metrics = Arc::new(Metrics::default());
        let (mut prod, cons) = HeapRb::<f32>::new(4096).split();
        let mut r = PlaybackReader::new(cons, 2, 300, metrics.clone());
        let underruns = || metrics.playback_underruns.load(Ordering::Relaxed);
        let mut out = vec![1.0f32; 2 * 256];
        // Nothing played yet: silence, no underrun.
        r.read(&mut out);
        assert!(out.iter().all(|&v| v == 0.0));
        assert_eq!(underruns(), 0);
        // Below the prefill level: still waiting, the ring is untouched.
        prod.push_slice(&[0.5; 200]);
        r.read(&mut out);
        assert!(out.iter().all(|&v| v == 0.0));
        assert_eq!(prod.occupied_len(), 200);
        // Above it: plays on both channels.
        prod.push_slice(&[0.5; 200]);
        r.read(&mut out);
        assert!(out.iter().all(|&v| v == 0.5));
        // 144 left for 256 frames: the tail is silence and one underrun is counted.
        r.read(&mut out);
        assert!(out[..288].iter().all(|&v| v == 0.5) && out[288..].iter().all(|&v| v == 0.0));
        assert_eq!(underruns(), 1);
        // Dry again while waiting: not counted twice.
        r.read(&mut out);
        r.read(&mut out);
        assert_eq!(underruns(), 1);
        // A buffer larger than the scratch array, in u16.
        prod.push_slice(&vec![-1.0; 2000]);
        let mut big = vec![0u16; 2 * 1500];
        r.read(&mut big);
        assert!(big.iter().all(|&v| v == 0));
        assert_eq!(underruns(), 1);
    }
}
