//! System prompts for models whose depth transformer predicts the user's streams too
//! (NVIDIA's PersonaPlex): a *voice prompt* (a recording of the voice the model should speak
//! with) and a *text prompt* (its role), stepped through the LM before the conversation as
//! provided tokens ([`crate::lm::provided`]), as PersonaPlex's reference `LMGen` does:
//!
//! 1. each frame of the voice prompt, normalized to -24 LUFS, as the model's own audio, with
//!    padding as its text and a 440 Hz tone as the user's audio;
//! 2. half a second of silence as the model's audio (padding, the tone);
//! 3. each token of the text prompt, wrapped in `<system>` tags, as the model's text (silence,
//!    the tone);
//! 4. half a second of silence again.
//!
//! Without a prompt the stream is only primed (PersonaPlex's own server always prompts).
//!
//! The silence and tone codes are PersonaPlex's own constants for its codec (Mimi, 2048 bins,
//! 8 codebooks); for another codec they are that codec's codes of one frame of each.

use std::path::Path;

use crate::backend;
use crate::error::{Error, Result};
use crate::lm::{LmModel, LmState, Provided};
use crate::mimi::Mimi;
use crate::tokenizer::Tokenizer;

/// PersonaPlex's codes of one frame of silence, for its codec.
pub const SILENCE_CODES: [i64; 8] = [948, 243, 1178, 546, 1736, 1030, 1978, 2008];
/// PersonaPlex's codes of one frame of a 440 Hz tone at half scale, for its codec.
pub const TONE_CODES: [i64; 8] = [430, 1268, 381, 1611, 1095, 1495, 56, 472];
/// The loudness a voice prompt is normalized to, in LUFS.
pub const VOICE_LUFS: f64 = -24.0;
/// The silence between and after the prompts, in seconds.
pub const SILENCE_SECONDS: f64 = 0.5;

/// A system prompt: a voice, a role, or both.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SystemPrompt {
    /// The voice prompt's samples at the codec's rate, mono, as recorded (normalized when used).
    pub voice: Option<Vec<f32>>,
    /// The role prompt's text, without or with its `<system>` tags.
    pub text: Option<String>,
}

impl SystemPrompt {
    /// A prompt from a voice recording (any format [`crate::audio::read_audio`] reads,
    /// resampled to `rate`) and a role text.
    pub fn load(voice: Option<&Path>, text: Option<&str>, rate: u32) -> Result<Self> {
        let voice = voice.map(|p| crate::audio::read_audio(p, rate)).transpose()?;
        Ok(Self { voice, text: text.map(str::to_string) })
    }

    pub fn is_empty(&self) -> bool {
        self.voice.is_none() && self.text.is_none()
    }
}

/// The role text as the model was trained to read it: between `<system>` tags, unless it
/// already is.
pub fn wrap_with_system_tags(text: &str) -> String {
    let cleaned = text.trim();
    if cleaned.starts_with("<system>") && cleaned.ends_with("<system>") {
        cleaned.to_string()
    } else {
        format!("<system> {cleaned} <system>")
    }
}

/// `pcm` (mono, `rate` Hz) scaled to an integrated loudness of `lufs` (ITU-R BS.1770 with
/// EBU R128's gating). Audio too short or too quiet to measure is an error.
pub fn normalize_loudness(pcm: &[f32], rate: u32, lufs: f64) -> Result<Vec<f32>> {
    let fail = |msg: String| Error::input(format!("voice prompt: {msg}"));
    let mut meter =
        ebur128::EbuR128::new(1, rate, ebur128::Mode::I).map_err(|e| fail(format!("loudness meter: {e}")))?;
    meter.add_frames_f32(pcm).map_err(|e| fail(format!("loudness meter: {e}")))?;
    let measured = meter.loudness_global().map_err(|e| fail(format!("loudness meter: {e}")))?;
    if !measured.is_finite() {
        return Err(fail(format!("{} samples too short or too quiet to measure its loudness", pcm.len())));
    }
    let gain = 10f64.powf((lufs - measured) / 20.0) as f32;
    Ok(pcm.iter().map(|s| s * gain).collect())
}

/// One frame of a 440 Hz tone at half scale, as PersonaPlex's user side during its prompts.
pub fn tone_frame(frame: usize, rate: usize) -> Vec<f32> {
    (0..frame).map(|i| 0.5 * (2.0 * std::f64::consts::PI * 440.0 * i as f64 / rate as f64).sin() as f32).collect()
}

/// What stepping a prompt reads: the LM, the codec for the voice, the tokenizer for the role.
pub(crate) struct Prompter<'a> {
    pub lm: &'a LmModel,
    pub mimi: &'a Mimi,
    pub tokenizer: Option<&'a Tokenizer>,
}

impl Prompter<'_> {
    /// Steps `prompt` through `state`, a fresh single-stream state of a model that predicts
    /// the user's streams (an empty prompt only primes it). Returns the frames stepped.
    pub(crate) fn step(&self, state: &mut LmState, prompt: &SystemPrompt) -> Result<usize> {
        let c = &self.lm.config;
        if !c.predicts_user() {
            return Err(Error::input(
                "a system prompt (voice or role) needs a model whose depth transformer predicts the user's \
                 streams too (PersonaPlex); this one is Moshi's kind",
            ));
        }
        if state.offsets() != [0] {
            return Err(Error::input("a system prompt starts a fresh stream"));
        }
        let pad = Some(c.existing_text_padding_id as i64);
        let (silence, tone) = self.prompt_codes()?;
        let mut frames: Vec<(Option<i64>, Vec<i64>)> = Vec::new();
        if let Some(voice) = &prompt.voice {
            let rate = self.mimi.sample_rate() as u32;
            let voice = normalize_loudness(voice, rate, VOICE_LUFS)?;
            frames.extend(self.encode_own(&voice)?.into_iter().map(|codes| (pad, codes)));
        }
        let gap = (SILENCE_SECONDS * self.mimi.sample_rate() as f64 / self.mimi.frame_size() as f64) as usize;
        if !prompt.is_empty() {
            frames.extend((0..gap).map(|_| (pad, silence.clone())));
        }
        if let Some(text) = &prompt.text {
            let tokenizer =
                self.tokenizer.ok_or_else(|| Error::input("this model has no tokenizer to read a text prompt"))?;
            let ids = tokenizer.encode_lossy(&wrap_with_system_tags(text))?;
            if let Some(bad) = ids.iter().find(|&&id| id as usize >= c.text_card) {
                return Err(Error::input(format!("text prompt piece {bad} beyond the model's {} tokens", c.text_card)));
            }
            frames.extend(ids.into_iter().map(|id| (Some(i64::from(id)), silence.clone())));
        }
        if !prompt.is_empty() {
            frames.extend((0..gap).map(|_| (pad, silence.clone())));
        }
        if frames.is_empty() {
            self.lm.step_provided(state, &[Provided::default()])?;
            return Ok(0);
        }
        for (text, own) in &frames {
            self.lm.step_provided(state, &[Provided { text: *text, own: Some(own), user: Some(&tone) }])?;
        }
        Ok(frames.len())
    }

    /// The codes of one frame of silence and one of the prompts' tone for the model's own and
    /// the user's streams: PersonaPlex's constants for its codec, else this codec's codes.
    fn prompt_codes(&self) -> Result<(Vec<i64>, Vec<i64>)> {
        let half = self.lm.config.own_streams();
        if self.lm.config.card == 2048 && half == SILENCE_CODES.len() {
            return Ok((SILENCE_CODES.to_vec(), TONE_CODES.to_vec()));
        }
        let frame = self.mimi.frame_size();
        let silence = self.encode_own(&vec![0.0; frame])?;
        let tone = self.encode_own(&tone_frame(frame, self.mimi.sample_rate()))?;
        match (silence.into_iter().next(), tone.into_iter().next()) {
            (Some(s), Some(t)) => Ok((s, t)),
            _ => Err(Error::input("the codec gave no codes for one frame")),
        }
    }

    /// The codes of `pcm` (zero-padded to whole frames) for the model's own streams, one
    /// vector per frame, from a fresh encoder.
    fn encode_own(&self, pcm: &[f32]) -> Result<Vec<Vec<i64>>> {
        let frame = self.mimi.frame_size();
        let n = pcm.len().div_ceil(frame).max(1);
        let mut padded = pcm.to_vec();
        padded.resize(n * frame, 0.0);
        let half = self.lm.config.own_streams();
        let mut enc = self.mimi.init_enc_state(1)?;
        let mut out = Vec::with_capacity(n);
        // Frame by frame, as the streaming encoder's attention cache allows.
        for chunk in padded.chunks_exact(frame) {
            let latent = self.mimi.encode_chunk_latent(&mut enc, self.mimi.pcm_tensor(chunk.to_vec(), [1, frame]))?;
            let codes = backend::read_ints(self.mimi.quantize(latent))?;
            if codes.len() < half {
                return Err(Error::input(format!("{} codec codebooks for {half} streams", codes.len())));
            }
            out.push(codes[..half].to_vec());
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_added_once() {
        assert_eq!(wrap_with_system_tags("  You are Jane. "), "<system> You are Jane. <system>");
        assert_eq!(wrap_with_system_tags("<system> You are Jane. <system>"), "<system> You are Jane. <system>");
    }

    #[test]
    fn loudness_is_normalized() {
        let rate = 24000;
        let quiet: Vec<f32> = tone_frame(rate as usize * 3, rate as usize).iter().map(|s| s * 0.01).collect();
        let loud = normalize_loudness(&quiet, rate, VOICE_LUFS).unwrap();
        let mut meter = ebur128::EbuR128::new(1, rate, ebur128::Mode::I).unwrap();
        meter.add_frames_f32(&loud).unwrap();
        let got = meter.loudness_global().unwrap();
        assert!((got - VOICE_LUFS).abs() < 0.1, "{got} LUFS");
        assert!(loud[100].abs() > quiet[100].abs() * 10.0);
        let err = normalize_loudness(&[0.0; 2400], rate, VOICE_LUFS).unwrap_err().to_string();
        assert!(err.contains("voice prompt") && err.contains("loudness"), "{err}");
    }
}
