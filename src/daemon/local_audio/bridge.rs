//! The local session's [`AudioSource`] and [`AudioSink`]: the non-real-time side of the rings.
//! Resampling between the device rate and the model's 24 kHz happens here, on the inference
//! thread, never in a device callback.
//!
//! Each (re)opened stream hands its end of a fresh ring over a channel, with the device's rate,
//! so a device that comes back after a loss (possibly at another rate) is picked up on the next
//! poll. While no device is there, the source yields nothing and the sink discards.

use std::sync::mpsc::Receiver;

use ringbuf::traits::{Consumer, Observer, Producer};
use ringbuf::{HeapCons, HeapProd};

use crate::audio::StreamResampler;
use crate::daemon::io::{AudioSink, AudioSource, Poll};

/// Device-rate samples pulled per ring read.
const CHUNK: usize = 1024;

/// The reading end of a capture ring (mono, at `rate`).
pub struct CaptureEnd {
    pub cons: HeapCons<f32>,
    pub rate: u32,
}

/// The writing end of a playback ring (mono, at `rate`).
pub struct PlaybackEnd {
    pub prod: HeapProd<f32>,
    pub rate: u32,
}

/// Returns a resampler `from -> to`, reusing `current` (reset) when the rates match.
fn resampler_for(current: Option<StreamResampler>, from: u32, to: u32) -> Option<StreamResampler> {
    match current {
        Some(mut r) if r.rates() == (from, to) => {
            r.reset();
            Some(r)
        }
        _ => match StreamResampler::new(from, to) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!("local audio: {e}");
                None
            }
        },
    }
}

/// Microphone samples cut into model frames.
pub struct LocalSource {
    ends: Receiver<CaptureEnd>,
    end: Option<CaptureEnd>,
    resampler: Option<StreamResampler>,
    model_rate: u32,
    chunk: Vec<f32>,
    /// Resampled samples not yet handed out as a frame.
    pending: Vec<f32>,
    /// At most this many frames wait in `pending`; older ones are dropped.
    backlog: usize,
    frame: usize,
    dropped: u64,
}

impl LocalSource {
    pub fn new(ends: Receiver<CaptureEnd>, model_rate: u32, frame: usize, backlog: usize) -> Self {
        let backlog = backlog.max(1);
        Self {
            ends,
            end: None,
            resampler: None,
            model_rate,
            chunk: vec![0.0; CHUNK],
            pending: Vec::with_capacity((backlog + 1) * frame + 2 * CHUNK),
            backlog,
            frame,
            dropped: 0,
        }
    }

    fn refresh(&mut self) {
        while let Ok(end) = self.ends.try_recv() {
            self.resampler = resampler_for(self.resampler.take(), end.rate, self.model_rate);
            self.end = self.resampler.is_some().then_some(end);
        }
    }

    /// Moves everything the callback captured through the resampler into `pending`.
    fn drain(&mut self) {
        let (Some(end), Some(resampler)) = (&mut self.end, &mut self.resampler) else { return };
        loop {
            let n = end.cons.pop_slice(&mut self.chunk);
            if n == 0 {
                break;
            }
            if let Err(e) = resampler.process(&self.chunk[..n], &mut self.pending) {
                tracing::warn!("microphone: {e}");
                resampler.reset();
            }
            let whole = self.pending.len() / self.frame;
            if whole > self.backlog {
                let excess = whole - self.backlog;
                self.pending.drain(..excess * self.frame);
                self.dropped += excess as u64;
            }
        }
    }
}

impl AudioSource for LocalSource {
    fn poll_frame(&mut self, frame: &mut [f32]) -> Poll {
        self.frame = frame.len().max(1);
        self.refresh();
        self.drain();
        if self.pending.len() < frame.len() {
            return Poll::Pending;
        }
        frame.copy_from_slice(&self.pending[..frame.len()]);
        self.pending.drain(..frame.len());
        Poll::Frame
    }

    fn backlog(&self) -> usize {
        let queued = self.end.as_ref().map_or(0, |e| e.cons.occupied_len());
        let in_ring =
            queued as u64 * u64::from(self.model_rate) / u64::from(self.end.as_ref().map_or(1, |e| e.rate.max(1)));
        (self.pending.len() + in_ring as usize) / self.frame
    }

    fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// The model's voice, resampled to the speaker's rate and queued for its callback.
pub struct LocalSink {
    ends: Receiver<PlaybackEnd>,
    end: Option<PlaybackEnd>,
    resampler: Option<StreamResampler>,
    model_rate: u32,
    out: Vec<f32>,
    frame: usize,
    dropped: u64,
}

impl LocalSink {
    pub fn new(ends: Receiver<PlaybackEnd>, model_rate: u32, frame: usize) -> Self {
        Self { ends, end: None, resampler: None, model_rate, out: Vec::new(), frame: frame.max(1), dropped: 0 }
    }

    fn refresh(&mut self) {
        while let Ok(end) = self.ends.try_recv() {
            self.resampler = resampler_for(self.resampler.take(), self.model_rate, end.rate);
            self.end = self.resampler.is_some().then_some(end);
        }
        // The stream is gone (device lost): discard until a new one arrives.
        if self.end.as_ref().is_some_and(|e| !e.prod.read_is_held()) {
            self.end = None;
        }
    }
}

impl AudioSink for LocalSink {
    fn push(&mut self, pcm: &[f32], _text: Option<&str>) {
        self.refresh();
        let (Some(end), Some(resampler)) = (&mut self.end, &mut self.resampler) else { return };
        self.out.clear();
        if let Err(e) = resampler.process(pcm, &mut self.out) {
            tracing::warn!("speaker: {e}");
            resampler.reset();
            return;
        }
        // Never wait for the device: what does not fit is dropped.
        if end.prod.push_slice(&self.out) < self.out.len() {
            self.dropped += 1;
        }
    }

    fn close(&mut self, reason: &str) {
        tracing::debug!(reason, "local session closed");
        self.end = None;
    }

    fn backlog(&self) -> usize {
        let Some(end) = &self.end else { return 0 };
        let queued = end.prod.occupied_len() as u64 * u64::from(self.model_rate) / u64::from(end.rate.max(1));
        queued as usize / self.frame
    }

    fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringbuf::HeapRb;
    use ringbuf::traits::Split;
    use std::sync::mpsc::channel;

    const FRAME: usize = 1920;

    fn sine(rate: u32, len: usize) -> Vec<f32> {
        (0..len).map(|i| 0.5 * (i as f32 * 2.0 * std::f32::consts::PI * 440.0 / rate as f32).sin()).collect()
    }

    #[test]
    fn source_resamples_the_ring_into_frames() {
        let (tx, rx) = channel();
        let mut src = LocalSource::new(rx, 24000, FRAME, 8);
        let mut frame = vec![0.0; FRAME];
        assert_eq!(src.poll_frame(&mut frame), Poll::Pending, "no device yet");
        let (mut prod, cons) = HeapRb::<f32>::new(48000).split();
        tx.send(CaptureEnd { cons, rate: 48000 }).unwrap();
        // 0.4 s at 48 kHz, in uneven pieces: 5 frames at 24 kHz, minus the resampler's lag.
        let x = sine(48000, 19200);
        let mut frames = 0;
        for piece in x.chunks(700) {
            assert_eq!(prod.push_slice(piece), piece.len());
            while src.poll_frame(&mut frame) == Poll::Frame {
                frames += 1;
            }
        }
        assert_eq!(frames, 4, "the fifth frame waits for the next block");
        assert_eq!(prod.occupied_len(), 0);
        // The frames carry the tone at the model rate (440 Hz: ~70 crossings per 80 ms).
        let crossings = frame.windows(2).filter(|w| (w[0] < 0.0) != (w[1] < 0.0)).count();
        assert!(crossings.abs_diff(70) <= 2, "{crossings}");
        assert_eq!(src.dropped(), 0);
    }

    #[test]
    fn source_backlog_is_bounded_and_counted() {
        let (tx, rx) = channel();
        let mut src = LocalSource::new(rx, 24000, FRAME, 2);
        let (mut prod, cons) = HeapRb::<f32>::new(24000).split();
        tx.send(CaptureEnd { cons, rate: 24000 }).unwrap();
        prod.push_slice(&vec![0.1; 5 * FRAME + 10]);
        let mut frame = vec![0.0; FRAME];
        assert_eq!(src.poll_frame(&mut frame), Poll::Frame);
        // The 2 newest whole frames were kept (the first just handed out), 3 dropped.
        assert_eq!(src.dropped(), 3);
        assert_eq!(src.poll_frame(&mut frame), Poll::Frame);
        assert_eq!(src.poll_frame(&mut frame), Poll::Pending);
    }

    #[test]
    fn source_follows_a_reopened_device_at_another_rate() {
        let (tx, rx) = channel();
        let mut src = LocalSource::new(rx, 24000, FRAME, 8);
        let mut frame = vec![0.0; FRAME];
        let (mut prod, cons) = HeapRb::<f32>::new(8192).split();
        tx.send(CaptureEnd { cons, rate: 24000 }).unwrap();
        prod.push_slice(&[0.25; FRAME]);
        assert_eq!(src.poll_frame(&mut frame), Poll::Frame);
        assert!(frame.iter().all(|&v| v == 0.25));
        // Device lost: the old ring is dropped with its stream; nothing comes.
        drop(prod);
        assert_eq!(src.poll_frame(&mut frame), Poll::Pending);
        // Back at 16 kHz: 0.24 s there is 3 frames at 24 kHz, the last one still held by the
        // resampler (it works in blocks of 1024 input samples).
        let (mut prod, cons) = HeapRb::<f32>::new(8192).split();
        tx.send(CaptureEnd { cons, rate: 16000 }).unwrap();
        prod.push_slice(&[0.25; 3840]);
        let mut got = 0;
        while src.poll_frame(&mut frame) == Poll::Frame {
            got += 1;
        }
        assert_eq!(got, 2);
        assert!(frame[FRAME / 2..].iter().all(|v| (v - 0.25).abs() < 0.02), "level kept at 24 kHz");
    }

    #[test]
    fn sink_resamples_and_drops_what_does_not_fit() {
        let (tx, rx) = channel();
        let mut sink = LocalSink::new(rx, 24000, FRAME);
        let pcm = sine(24000, FRAME);
        sink.push(&pcm, None);
        assert_eq!(sink.dropped(), 0, "no device: discarded, not counted");
        let (prod, cons) = HeapRb::<f32>::new(4 * 2 * FRAME).split();
        tx.send(PlaybackEnd { prod, rate: 48000 }).unwrap();
        let mut pushed = 0;
        for _ in 0..4 {
            sink.push(&pcm, Some("hi"));
            pushed += 2 * FRAME;
        }
        assert_eq!(sink.dropped(), 0);
        // Resampled 24 -> 48 kHz, minus what the resampler still holds (under one block).
        let queued = cons.occupied_len();
        assert!(queued <= pushed && pushed - queued < 2 * 1024, "{queued}");
        assert!(sink.backlog() >= 3);
        // The ring (4 frames at 48 kHz) is full now: further frames are dropped and counted.
        sink.push(&pcm, None);
        sink.push(&pcm, None);
        assert!(sink.dropped() >= 1);
        assert!(cons.occupied_len() <= 4 * 2 * FRAME);
        // The stream goes away: the sink discards silently.
        let before = sink.dropped();
        drop(cons);
        for _ in 0..3 {
            sink.push(&pcm, None);
        }
        assert_eq!(sink.dropped(), before);
        assert_eq!(sink.backlog(), 0);
    }
}
