//! Echo cancellation on the local session: the model's voice, as the sink hands it to the
//! speaker, is the far-end reference the microphone's frames are cleaned against
//! ([`crate::echo`]). Both ends run on the inference thread, one frame per model step; a
//! lock-free ring carries the reference from the sink to the source.
//!
//! Alignment: the microphone frame of step `k` is paired with the speaker frame of step `k - 1`
//! (the reference leads the echo by the playback and capture latency, one frame or more); the
//! canceller's tail ([`DEFAULT_TAIL_MS`]) covers the rest of the delay and the room.

use ringbuf::traits::{Consumer, Producer, Split};
use ringbuf::{HeapCons, HeapProd, HeapRb};

use crate::daemon::io::{AudioSink, AudioSource, Poll};
use crate::echo::{DEFAULT_TAIL_MS, EchoCanceller};
use crate::error::Result;

/// Reference frames the ring holds; a sink that got ahead of the source drops beyond this.
const RING_FRAMES: usize = 4;

/// `source` cleaned of the echo of what `sink` plays: the pair to add as the session.
pub fn cancel_echo(
    source: Box<dyn AudioSource>,
    sink: Box<dyn AudioSink>,
    rate: u32,
    frame: usize,
) -> Result<(Box<dyn AudioSource>, Box<dyn AudioSink>)> {
    let aec = EchoCanceller::new(rate, DEFAULT_TAIL_MS)?;
    let (prod, cons) = HeapRb::<f32>::new(RING_FRAMES * frame).split();
    let source = EchoCancelSource { inner: source, far: cons, aec, reference: vec![0.0; frame], failed: false };
    Ok((Box::new(source), Box::new(SpeakerTap { inner: sink, far: prod })))
}

/// The microphone, with the model's echo removed from each frame.
struct EchoCancelSource {
    inner: Box<dyn AudioSource>,
    far: HeapCons<f32>,
    aec: EchoCanceller,
    reference: Vec<f32>,
    failed: bool,
}

impl AudioSource for EchoCancelSource {
    fn poll_frame(&mut self, frame: &mut [f32]) -> Poll {
        let poll = self.inner.poll_frame(frame);
        if poll != Poll::Frame {
            return poll;
        }
        self.reference.resize(frame.len(), 0.0);
        // Before the model's first frame (and after a dropped one) the speaker was silent.
        let n = self.far.pop_slice(&mut self.reference);
        self.reference[n..].fill(0.0);
        if let Err(e) = self.aec.process(frame, &self.reference)
            && !self.failed
        {
            tracing::warn!("echo cancellation off: {e}");
            self.failed = true;
        }
        poll
    }

    fn backlog(&self) -> usize {
        self.inner.backlog()
    }

    fn dropped(&self) -> u64 {
        self.inner.dropped()
    }
}

/// The speaker, copying what it is given into the reference ring.
struct SpeakerTap {
    inner: Box<dyn AudioSink>,
    far: HeapProd<f32>,
}

impl AudioSink for SpeakerTap {
    fn push(&mut self, pcm: &[f32], text: Option<&str>) {
        self.far.push_slice(pcm);
        self.inner.push(pcm, text);
    }

    fn close(&mut self, reason: &str) {
        self.inner.close(reason);
    }

    fn backlog(&self) -> usize {
        self.inner.backlog()
    }

    fn dropped(&self) -> u64 {
        self.inner.dropped()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::echo::erle_db;
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    const FRAME: usize = 1920;

    /// A test microphone: frames queued by the test.
    struct Mic(Arc<Mutex<VecDeque<Vec<f32>>>>);

    impl AudioSource for Mic {
        fn poll_frame(&mut self, frame: &mut [f32]) -> Poll {
            match self.0.lock().unwrap().pop_front() {
                Some(f) => {
                    frame.copy_from_slice(&f);
                    Poll::Frame
                }
                None => Poll::Pending,
            }
        }
    }

    /// A test speaker: keeps what it was given.
    struct Speaker(Arc<Mutex<Vec<f32>>>);

    impl AudioSink for Speaker {
        fn push(&mut self, pcm: &[f32], _text: Option<&str>) {
            self.0.lock().unwrap().extend_from_slice(pcm);
        }

        fn close(&mut self, _reason: &str) {}
    }

    fn voice(len: usize, seed: u32) -> Vec<f32> {
        let mut s = seed;
        let mut prev = 0.0;
        (0..len)
            .map(|i| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                let white = (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5;
                prev = 0.7 * prev + 0.3 * white;
                // Syllables: on and off every 150 ms.
                if (i / 3600) % 2 == 0 { prev } else { prev * 0.1 }
            })
            .collect()
    }

    #[test]
    fn the_speakers_voice_is_removed_from_the_microphone_of_the_next_steps() {
        let mic_frames = Arc::new(Mutex::new(VecDeque::new()));
        let played = Arc::new(Mutex::new(Vec::new()));
        let (mut source, mut sink) =
            cancel_echo(Box::new(Mic(mic_frames.clone())), Box::new(Speaker(played.clone())), 24000, FRAME).unwrap();
        let steps = 60;
        let model = voice(steps * FRAME, 3);
        // The echo path: the frame played at step k reaches the microphone at step k + 1, 30 ms
        // late (playback and capture latency), scaled and smeared by the room.
        let lag = FRAME + 720;
        let echo: Vec<f32> = (0..model.len())
            .map(|i| {
                let at = |k: usize| if i >= lag + k { model[i - lag - k] } else { 0.0 };
                0.6 * at(0) + 0.3 * at(5) - 0.15 * at(17)
            })
            .collect();
        let mut cleaned = Vec::new();
        let mut frame = vec![0.0; FRAME];
        for k in 0..steps {
            mic_frames.lock().unwrap().push_back(echo[k * FRAME..(k + 1) * FRAME].to_vec());
            assert_eq!(source.poll_frame(&mut frame), Poll::Frame);
            cleaned.extend_from_slice(&frame);
            sink.push(&model[k * FRAME..(k + 1) * FRAME], None);
        }
        assert_eq!(source.poll_frame(&mut frame), Poll::Pending);
        assert_eq!(played.lock().unwrap().as_slice(), model.as_slice(), "the speaker gets the voice unchanged");
        // After 2 s to converge, the last 2.8 s.
        let from = 25 * FRAME;
        let erle = erle_db(&echo[from..], &cleaned[from..]);
        assert!(erle > 20.0, "ERLE {erle:.1} dB");
    }
}
