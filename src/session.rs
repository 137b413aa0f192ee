//! One speech-to-speech step for any number of live sessions:
//! audio frame -> `encode_step` -> `lm.step` -> `decode_step` -> audio frame (+ a text token).
//!
//! The [`Engine`] holds the immutable weights (share it with `Arc`); each conversation owns a
//! [`SessionState`]. Stepping several sessions merges their states into one batch for the
//! model calls and splits them again, so sessions that started at different times still run
//! together. Sessions whose delays are still filling get silence for that frame.
//!
//! A session may also ask for the model's own vectors of each frame ([`Taps`]): Mimi's latent
//! before quantization and the LM's temporal output. They cost a read-back each, only when asked.
//!
//! A model whose depth transformer predicts the user's streams too (PersonaPlex) runs on the
//! provided schedule ([`crate::lm::provided`]): the microphone's codes are given as the user's
//! streams, and a [`SystemPrompt`] (voice and role) is stepped in before the conversation.

use burn::prelude::*;
use burn::tensor::DType;

use crate::adapter::Adapter;
use crate::backend::{self, Precision};
use crate::error::{Error, Result};
use crate::gist::Gist;
use crate::lm::model::UNGENERATED_TOKEN;
use crate::lm::{GenConfig, LmModel, LmState, Provided};
use crate::mimi::{DecState, EncState, Mimi};
use crate::model_dir::ModelFiles;
use crate::monologue::Monologue;
use crate::nn::batch::{self, Batched};
use crate::system_prompt::{Prompter, SystemPrompt};
use crate::tokenizer::Tokenizer;

/// The models of a speech-to-speech system.
pub struct Engine {
    pub mimi: Mimi,
    pub lm: LmModel,
    pub tokenizer: Option<Tokenizer>,
    pub source: String,
    /// The model's recommended sampling (its folder's `config.json`, else Moshi's defaults).
    pub sampling: GenConfig,
    /// The vocabulary adapter loaded with the model ([`Engine::load_with_adapter`]): its tokens
    /// are ids `base_text_card + j`, and its gist, if any, starts every session that names none.
    pub adapter: Option<Adapter>,
    /// The system prompt every session starts with ([`Engine::set_system_prompt`]) and the
    /// LM state it leaves, cloned for each new session that names no gist.
    system_prompt: Option<(SystemPrompt, LmState)>,
}

/// Streaming state of one conversation.
pub struct SessionState {
    enc: EncState,
    lm: LmState,
    dec: DecState,
    /// Frames stepped so far.
    pub frames: u64,
    /// Latents this session's steps report.
    pub taps: Taps,
    /// Text the model is made to say ([`Engine::say`]).
    monologue: Monologue,
}

/// Which latents a session's steps report in [`FrameOut::latents`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Taps {
    /// Mimi's encoder output before quantization.
    pub mimi: bool,
    /// The LM's temporal transformer output.
    pub lm: bool,
    /// The text head's `logits` most likely tokens (0: none).
    pub logits: usize,
}

/// One frame's latents, those asked for with [`SessionState::taps`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FrameLatents {
    /// Mimi's encoder output for this frame before quantization, `[C]` (C:
    /// [`Mimi::latent_dim`]), 12.5 per second.
    pub mimi: Option<Vec<f32>>,
    /// The temporal transformer's output at this step after its final norm, `[d_model]`: what
    /// the text head and the depth transformer read. Present from the first frame on (the model
    /// runs while its delays fill; only its tokens wait).
    pub lm: Option<Vec<f32>>,
    /// The text head's most likely tokens at this step before sampling, most likely first.
    pub logits: Option<TopLogits>,
}

/// The highest text logits of one step.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TopLogits {
    pub ids: Vec<u32>,
    pub values: Vec<f32>,
}

impl TopLogits {
    /// The `k` largest of `logits`, largest first (lower id first on ties).
    pub fn of(logits: &[f32], k: usize) -> Self {
        let mut order: Vec<u32> = (0..logits.len() as u32).collect();
        let by_value = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]).then(a.cmp(b));
        let k = k.min(order.len());
        if k > 0 && k < order.len() {
            order.select_nth_unstable_by(k - 1, by_value);
        }
        order.truncate(k);
        order.sort_by(by_value);
        let values = order.iter().map(|&i| logits[i as usize]).collect();
        Self { ids: order, values }
    }
}

/// One session's input to a step: a frame of 24 kHz audio, or a frame of Mimi latents `[C]`
/// (the encoder's output before quantization, as the `mimi` tap gives it) from another encoder.
#[derive(Clone, Copy, Debug)]
pub enum FrameIn<'a> {
    Pcm(&'a [f32]),
    Latent(&'a [f32]),
}

/// What one session produced in one step.
#[derive(Clone, Debug, PartialEq)]
pub struct FrameOut {
    /// One frame of 24 kHz audio (silence while the model's delays fill).
    pub pcm: Vec<f32>,
    /// The inner-monologue text token of this frame, if generated.
    pub text: Option<i64>,
    /// The generated audio codes of this frame, if generated.
    pub audio: Option<Vec<i64>>,
    /// The latents asked for with [`SessionState::taps`].
    pub latents: FrameLatents,
}

impl Engine {
    /// Loads the codec, the LM and the tokenizer of a model, computing in `dtype` (f32 or f16).
    pub fn load(files: &ModelFiles, device: &Device, dtype: DType) -> Result<Self> {
        let precision = if dtype == DType::F16 { Precision::F16 } else { Precision::F32 };
        Self::load_as(files, device, precision)
    }

    /// [`Engine::load`] at a precision: with [`Precision::Q8`] the LM's matrices are held in
    /// 8 bits (a folder written by `kokichi quantize` is always), the rest in f16.
    pub fn load_as(files: &ModelFiles, device: &Device, precision: Precision) -> Result<Self> {
        Self::load_with_adapter(files, device, precision, None)
    }

    /// [`Engine::load_as`] with a vocabulary adapter ([`crate::adapter`]): the LM's text
    /// vocabulary grows to `text_card + N` and the tokenizer decodes the new ids to their names.
    pub fn load_with_adapter(
        files: &ModelFiles,
        device: &Device,
        precision: Precision,
        adapter: Option<Adapter>,
    ) -> Result<Self> {
        let dtype = precision.dtype();
        let lm_cfg = &files.lm_config;
        let codebooks = files.codebooks;
        if codebooks < lm_cfg.own_streams() || codebooks < lm_cfg.user_input_streams() {
            return Err(Error::config(
                "mimi_codebooks",
                format!(
                    "{codebooks} Mimi codebooks cannot feed an LM with {} streams of its own voice and {} user streams",
                    lm_cfg.own_streams(),
                    lm_cfg.user_input_streams()
                ),
            ));
        }
        if files.mimi_config.quantizer.bins != lm_cfg.card {
            return Err(Error::config(
                "lm.card",
                format!(
                    "LM vocabulary {} differs from the codec's {} bins",
                    lm_cfg.card, files.mimi_config.quantizer.bins
                ),
            ));
        }
        let mut tokenizer = files.tokenizer.as_deref().map(Tokenizer::load).transpose()?;
        if let Some(a) = &adapter {
            a.check(lm_cfg, tokenizer.as_ref())?;
            if let Some(t) = tokenizer.as_mut() {
                t.extend(lm_cfg.text_card, &a.tokens);
            }
        }
        let mimi = Mimi::load(&files.mimi, files.mimi_config.clone(), codebooks, device, dtype)?;
        let (lm, _) = LmModel::load_adapted(&files.lm, lm_cfg.clone(), device, precision, adapter.as_ref())?;
        Ok(Self {
            mimi,
            lm,
            tokenizer,
            source: files.source.clone(),
            sampling: files.sampling,
            adapter,
            system_prompt: None,
        })
    }

    /// Makes every new session start with `prompt` (a model that predicts the user's streams
    /// only: PersonaPlex). The prompt is stepped through the LM once, now; each session that
    /// names no gist starts from a copy of the state it leaves. Returns the frames stepped.
    pub fn set_system_prompt(&mut self, prompt: SystemPrompt) -> Result<usize> {
        let mut state = self.lm.init_state(&[GenConfig::greedy()])?;
        let frames = self.prompter().step(&mut state, &prompt)?;
        self.system_prompt = Some((prompt, state));
        Ok(frames)
    }

    fn prompter(&self) -> Prompter<'_> {
        Prompter { lm: &self.lm, mimi: &self.mimi, tokenizer: self.tokenizer.as_ref() }
    }

    /// [`Engine::set_system_prompt`] from a voice recording (any audio file) and a role text,
    /// when either is given; logs the frames stepped and the time taken. Returns the frames.
    pub fn load_system_prompt(&mut self, voice: Option<&std::path::Path>, text: Option<&str>) -> Result<usize> {
        let prompt = SystemPrompt::load(voice, text, self.sample_rate() as u32)?;
        if prompt.is_empty() {
            return Ok(0);
        }
        let t0 = std::time::Instant::now();
        let frames = self.set_system_prompt(prompt)?;
        tracing::info!(frames, ms = t0.elapsed().as_millis() as u64, "system prompt stepped");
        Ok(frames)
    }

    /// The system prompt sessions start with, if any.
    pub fn system_prompt(&self) -> Option<&SystemPrompt> {
        self.system_prompt.as_ref().map(|(p, _)| p)
    }

    pub fn frame_size(&self) -> usize {
        self.mimi.frame_size()
    }

    pub fn sample_rate(&self) -> usize {
        self.mimi.sample_rate()
    }

    /// A fresh conversation.
    pub fn init_session(&self, config: GenConfig) -> Result<SessionState> {
        self.init_session_with(config, None)
    }

    /// A fresh conversation, prompted by `gist` when given ([`crate::gist`]): its prefix
    /// latents run through the LM now, once, and stay in its attention cache.
    pub fn init_session_with(&self, config: GenConfig, gist: Option<&Gist>) -> Result<SessionState> {
        let gist = gist.or_else(|| self.adapter.as_ref().and_then(|a| a.gist.as_ref()));
        let lm = match (gist, &self.system_prompt) {
            (None, Some((_, prompted))) => {
                let mut lm = prompted.clone();
                lm.set_config(0, config)?;
                lm
            }
            (gist, prompt) => {
                let mut lm = match gist {
                    Some(g) => self.lm.init_state_with_gist(config, g)?,
                    None => self.lm.init_state(&[config])?,
                };
                if self.lm.config.predicts_user() {
                    let empty = SystemPrompt::default();
                    self.prompter().step(&mut lm, prompt.as_ref().map_or(&empty, |(p, _)| p))?;
                    lm.set_config(0, config)?;
                }
                lm
            }
        };
        Ok(SessionState {
            enc: self.mimi.init_enc_state(1)?,
            lm,
            dec: self.mimi.init_dec_state(1)?,
            frames: 0,
            taps: Taps::default(),
            monologue: Monologue::default(),
        })
    }

    /// Steps a throwaway session through `frames` frames of silence with `config`, so that the
    /// backend compiles and autotunes its kernels now rather than during the first real
    /// conversation (on wgpu that takes from seconds to about a minute; on the CPU, nothing).
    /// Past the model's delays, so that decoding runs too. Returns how long it took.
    pub fn warm_up(&self, config: GenConfig, frames: usize) -> Result<std::time::Duration> {
        let t0 = std::time::Instant::now();
        let mut session = self.init_session(config)?;
        let silence = vec![0f32; self.frame_size()];
        for _ in 0..frames.max(self.lm.config.max_delay() + 2) {
            self.step(&mut [&mut session], &silence)?;
        }
        Ok(t0.elapsed())
    }

    /// Makes the session's model say `text` in its own voice: its pieces are forced into the
    /// inner monologue over the next frames, paced by the model ([`crate::monologue`]), after
    /// whatever it was already made to say. Returns the pieces queued.
    pub fn say(&self, session: &mut SessionState, text: &str) -> Result<usize> {
        let tokenizer =
            self.tokenizer.as_ref().ok_or_else(|| Error::input("this model has no tokenizer to say text"))?;
        let ids = tokenizer.encode(text)?;
        let limit = self.lm.config.text_out();
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= limit) {
            return Err(Error::input(format!("piece {bad} is beyond the model's {limit} text tokens")));
        }
        let ids: Vec<i64> = ids.into_iter().map(i64::from).collect();
        session.monologue.push(&ids).map_err(|room| {
            Error::input(format!(
                "{} pieces to say, room for {room} ({} queued at most)",
                ids.len(),
                crate::monologue::MAX_QUEUED
            ))
        })?;
        Ok(ids.len())
    }

    /// Forgets what the session was made to say and has not said yet.
    pub fn stop_saying(&self, session: &mut SessionState) {
        session.monologue.clear();
    }

    /// The text of a generated token as Moshi streams it ("▁" as a space), or `None` for
    /// padding, start/end and other control tokens.
    pub fn text_piece(&self, token: i64) -> Option<String> {
        let c = &self.lm.config;
        if token <= 0 || token as usize == c.existing_text_padding_id || token as usize >= c.text_out() {
            return None;
        }
        if let Some(name) = self.special_token(token) {
            return Some(name.to_string());
        }
        match &self.tokenizer {
            Some(t) => t.decode_piece(token as u32),
            None => Some(format!("[{token}]")),
        }
    }

    /// The text vocabulary of the model before its adapter (the first adapter token's id).
    pub fn base_text_card(&self) -> usize {
        self.lm.config.text_card - self.adapter.as_ref().map_or(0, Adapter::len)
    }

    /// The name of `token` if it is one of the adapter's tokens.
    pub fn special_token(&self, token: i64) -> Option<&str> {
        let a = self.adapter.as_ref()?;
        let j = usize::try_from(token).ok()?.checked_sub(self.base_text_card())?;
        a.tokens.get(j).map(String::as_str)
    }

    /// The id of the adapter's token `name`.
    pub fn special_id(&self, name: &str) -> Option<i64> {
        self.adapter.as_ref()?.id(name, self.base_text_card())
    }

    /// Steps each session by one frame. `pcm` holds one frame per session, concatenated.
    pub fn step(&self, sessions: &mut [&mut SessionState], pcm: &[f32]) -> Result<Vec<FrameOut>> {
        let frame = self.frame_size();
        if pcm.len() != sessions.len() * frame {
            return Err(Error::input(format!("{} samples for {} frames of {frame}", pcm.len(), sessions.len())));
        }
        let inputs: Vec<FrameIn> = pcm.chunks_exact(frame).map(FrameIn::Pcm).collect();
        self.step_inputs(sessions, &inputs)
    }

    /// Steps each session by one frame of its own input, audio or Mimi latents.
    pub fn step_inputs(&self, sessions: &mut [&mut SessionState], inputs: &[FrameIn]) -> Result<Vec<FrameOut>> {
        let b = sessions.len();
        let (frame, c) = (self.frame_size(), self.mimi.latent_dim());
        if b == 0 {
            return Ok(Vec::new());
        }
        if inputs.len() != b {
            return Err(Error::input(format!("{} inputs for {b} sessions", inputs.len())));
        }
        for input in inputs {
            match input {
                FrameIn::Pcm(p) if p.len() != frame => {
                    return Err(Error::input(format!("{} samples for a frame of {frame}", p.len())));
                }
                FrameIn::Latent(l) if l.len() != c => {
                    return Err(Error::input(format!("a Mimi latent of {} values, expected {c}", l.len())));
                }
                FrameIn::Latent(l) if l.iter().any(|v| !v.is_finite()) => {
                    return Err(Error::input("a Mimi latent with values that are not finite"));
                }
                _ => {}
            }
        }
        if sessions.iter().any(|s| s.enc.batch() != 1) {
            return Err(Error::input("sessions must hold one stream each"));
        }
        // Only the sessions that send audio run the encoder (and move its state).
        let is_pcm: Vec<bool> = inputs.iter().map(|i| matches!(i, FrameIn::Pcm(_))).collect();
        let mut enc: EncState = batch::lend(encoders(sessions, &is_pcm));
        let mut lm = batch::lend(sessions.iter_mut().map(|s| &mut s.lm));
        let result = self.step_merged(&mut enc, &mut lm, sessions, inputs);
        batch::give_back(encoders(sessions, &is_pcm), enc);
        batch::give_back(sessions.iter_mut().map(|s| &mut s.lm), lm);
        sessions.iter_mut().for_each(|s| s.frames += 1);
        result
    }

    /// The Mimi latents `[B, C, 1]` of a step: the encoder's for audio inputs, the given ones
    /// for latent inputs, in session order.
    fn step_latents(&self, enc: &mut EncState, inputs: &[FrameIn]) -> Result<Tensor<3>> {
        let (frame, c) = (self.frame_size(), self.mimi.latent_dim());
        let pcm: Vec<f32> = inputs
            .iter()
            .filter_map(|i| match i {
                FrameIn::Pcm(p) => Some(*p),
                FrameIn::Latent(_) => None,
            })
            .flatten()
            .copied()
            .collect();
        let n_pcm = pcm.len() / frame;
        let encoded = if n_pcm > 0 {
            Some(self.mimi.encode_chunk_latent(enc, self.mimi.pcm_tensor(pcm, [n_pcm, frame]))?)
        } else {
            None
        };
        if n_pcm == inputs.len() {
            return encoded.ok_or_else(|| Error::input("no inputs"));
        }
        let (device, dtype) = (self.mimi.device(), self.mimi.dtype());
        let mut rows = Vec::with_capacity(inputs.len());
        let mut next_pcm = 0;
        for input in inputs {
            match (input, &encoded) {
                (FrameIn::Pcm(_), Some(e)) => {
                    rows.push(e.clone().narrow(0, next_pcm, 1));
                    next_pcm += 1;
                }
                (FrameIn::Latent(l), _) => rows.push(backend::floats(l.to_vec(), [1, c, 1], &device, dtype)),
                (FrameIn::Pcm(_), None) => return Err(Error::input("audio input without encoder output")),
            }
        }
        Ok(Tensor::cat(rows, 0))
    }

    fn step_merged(
        &self,
        enc: &mut EncState,
        lm: &mut LmState,
        sessions: &mut [&mut SessionState],
        inputs: &[FrameIn],
    ) -> Result<Vec<FrameOut>> {
        let b = sessions.len();
        let frame = self.frame_size();
        let taps: Vec<Taps> = sessions.iter().map(|s| s.taps).collect();
        let mut outs: Vec<FrameOut> = (0..b)
            .map(|_| FrameOut { pcm: vec![0.0; frame], text: None, audio: None, latents: FrameLatents::default() })
            .collect();
        let latent = self.step_latents(enc, inputs)?;
        if taps.iter().any(|t| t.mimi) {
            let values = backend::read_floats(latent.clone())?;
            spread(&values, &taps, |t| t.mimi, &mut outs, |o, v| o.latents.mimi = Some(v));
        }
        let codes = self.mimi.quantize(latent);
        let q = codes.dims()[1];
        let codes = backend::read_ints(codes)?;
        let (dep_q, own) = (self.lm.config.dep_q, self.lm.config.own_streams());
        let pad = self.lm.config.existing_text_padding_id as i64;
        let saying: Vec<bool> = sessions.iter().map(|s| s.monologue.active()).collect();
        let forced: Vec<Option<i64>> = sessions.iter_mut().map(|s| s.monologue.next(pad)).collect();
        lm.set_keep_hidden(taps.iter().any(|t| t.lm));
        lm.set_keep_text_logits(taps.iter().any(|t| t.logits > 0) || saying.iter().any(|s| *s));
        let step = if self.lm.config.predicts_user() {
            let user = self.lm.config.user_input_streams();
            let provided: Vec<Provided> = forced
                .iter()
                .enumerate()
                .map(|(r, text)| Provided { text: *text, own: None, user: Some(&codes[r * q..r * q + user]) })
                .collect();
            self.lm.step_provided(lm, &provided)?
        } else {
            self.lm.step_forced(lm, &codes, q, &forced)?
        };
        if let Some(hidden) = lm.take_hidden() {
            let values = backend::read_floats(hidden)?;
            spread(&values, &taps, |t| t.lm, &mut outs, |o, v| o.latents.lm = Some(v));
        }
        if let Some(logits) = lm.take_text_logits() {
            let values = backend::read_floats(logits)?;
            let width = values.len() / b.max(1);
            for (r, (t, out)) in taps.iter().zip(outs.iter_mut()).enumerate() {
                let row = &values[r * width..(r + 1) * width];
                if t.logits > 0 {
                    out.latents.logits = Some(TopLogits::of(row, t.logits));
                }
                if saying[r] {
                    let top = TopLogits::of(row, 1).ids.first().map_or(pad, |&i| i64::from(i));
                    sessions[r].monologue.observe(top, pad);
                }
            }
        }
        let Some(step) = step else {
            return Ok(outs);
        };
        let is_ready: Vec<bool> = step.text.iter().map(|&t| t != UNGENERATED_TOKEN).collect();
        let ready: Vec<usize> = (0..b).filter(|&r| is_ready[r]).collect();
        let mut tokens = Vec::with_capacity(ready.len() * own);
        for &r in &ready {
            tokens.extend_from_slice(&step.audio[r * dep_q..r * dep_q + own]);
            outs[r].text = Some(step.text[r]);
            outs[r].audio = Some(step.audio[r * dep_q..(r + 1) * dep_q].to_vec());
        }
        let mut dec: DecState = batch::lend(ready_decoders(sessions, &is_ready));
        let decoded = self
            .mimi
            .codes_tensor(tokens, [ready.len(), own, 1])
            .and_then(|c| self.mimi.decode_chunk(&mut dec, c))
            .and_then(backend::read_floats);
        batch::give_back(ready_decoders(sessions, &is_ready), dec);
        let audio = decoded?;
        for (i, &r) in ready.iter().enumerate() {
            outs[r].pcm.copy_from_slice(&audio[i * frame..(i + 1) * frame]);
        }
        Ok(outs)
    }
}

/// The encoder states of the sessions that send audio, in order.
fn encoders<'a>(sessions: &'a mut [&mut SessionState], pcm: &'a [bool]) -> impl Iterator<Item = &'a mut EncState> {
    sessions.iter_mut().zip(pcm).filter(|(_, pcm)| **pcm).map(|(s, _)| &mut s.enc)
}

/// The decoder states of the sessions marked ready, in order.
fn ready_decoders<'a>(
    sessions: &'a mut [&mut SessionState],
    ready: &'a [bool],
) -> impl Iterator<Item = &'a mut DecState> {
    sessions.iter_mut().zip(ready).filter(|(_, ready)| **ready).map(|(s, _)| &mut s.dec)
}

/// Gives each session that asked (`wants`) its row of `values` (`[B, width]`, row-major).
fn spread(
    values: &[f32],
    taps: &[Taps],
    wants: impl Fn(&Taps) -> bool,
    outs: &mut [FrameOut],
    put: impl Fn(&mut FrameOut, Vec<f32>),
) {
    let width = values.len() / taps.len().max(1);
    for (r, (t, out)) in taps.iter().zip(outs.iter_mut()).enumerate() {
        if wants(t) {
            put(out, values[r * width..(r + 1) * width].to_vec());
        }
    }
}
