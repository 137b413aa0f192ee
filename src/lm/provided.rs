//! The provided schedule: generation for an LM whose depth transformer predicts every stream,
//! the user's too (`dep_q == n_q`, NVIDIA's PersonaPlex), as its reference `LMGen` steps it.
//!
//! Any stream's token of a frame may be *provided* instead of generated: the user's codes from
//! the microphone, or during a system prompt the model's own audio (a voice prompt) and its text
//! (a role prompt). A provided token is written into the history at the frame plus the stream's
//! delay, and when the model reaches that position it replaces the model's pick there, both in
//! the history and as the next depth step's input, so the model's following codebooks are
//! conditioned on it.
//!
//! The schedule differs from Moshi's ([`super::generate`]) by one frame: a call writes frame
//! `o`'s provided tokens, then predicts position `o` from position `o - 1`, so the user's
//! semantic code of frame `o` already steers the depth transformer's acoustic codebooks of
//! that position. The first call only primes the history (every stream's initial token) and
//! returns nothing; the tokens of position `o - max_delay` come out of call `o`.

use super::StepOut;
use super::generate::LmState;
use super::model::{LmModel, UNGENERATED_TOKEN};
use crate::error::{Error, Result};

/// The tokens given for one stream's frame; `None` where the model generates.
#[derive(Clone, Copy, Debug, Default)]
pub struct Provided<'a> {
    /// The inner-monologue text token.
    pub text: Option<i64>,
    /// The model's own audio codes, `[n_q / 2]` (a voice prompt).
    pub own: Option<&'a [i64]>,
    /// The user's audio codes, `[n_q / 2]` (the microphone).
    pub user: Option<&'a [i64]>,
}

impl LmModel {
    /// One step of the provided schedule, one [`Provided`] per row. Returns the tokens of
    /// position `offset - max_delay` (text and all `dep_q` audio streams), `None` while every
    /// row's delays are filling.
    pub fn step_provided(&self, state: &mut LmState, provided: &[Provided]) -> Result<Option<StepOut>> {
        let c = &self.config;
        let b = state.rows.len();
        if !c.predicts_user() || !c.n_q.is_multiple_of(2) {
            return Err(Error::input(format!(
                "the provided schedule needs a depth transformer that predicts all of an even number of streams \
                 (this LM: {} of {})",
                c.dep_q, c.n_q
            )));
        }
        if provided.len() != b {
            return Err(Error::input(format!("{} provided frames for a batch of {b}", provided.len())));
        }
        let half = c.n_q / 2;
        for p in provided {
            if let Some(t) = p.text.filter(|&t| t < 0 || t > c.text_card as i64) {
                return Err(Error::input(format!("provided text token {t} outside 0..={}", c.text_card)));
            }
            for (side, codes) in [("own", p.own), ("user", p.user)] {
                let Some(codes) = codes else { continue };
                if codes.len() != half {
                    return Err(Error::input(format!("{} {side} audio codes, the model takes {half}", codes.len())));
                }
                if let Some(bad) = codes.iter().find(|&&v| v < 0 || v >= c.card as i64) {
                    return Err(Error::input(format!("{side} audio code {bad} outside 0..{}", c.card)));
                }
            }
        }
        let k = c.n_q + 1;
        let ring = c.max_delay() + 2;
        let initial = |s: usize| if s == 0 { c.text_card as i64 } else { c.card as i64 };
        // Write the provided tokens at their delayed positions, and the initial tokens of the
        // streams still inside their delay.
        for (row, p) in state.rows.iter_mut().zip(provided) {
            let o = row.offset;
            let mut give = |s: usize, v: i64| {
                let pos = (o + c.delays[s]) % ring;
                row.cache[s][pos] = v;
                row.provided[s][pos] = true;
            };
            if let Some(t) = p.text {
                give(0, t);
            }
            for (first, codes) in [(1, p.own), (1 + half, p.user)] {
                for (j, &v) in codes.unwrap_or_default().iter().enumerate() {
                    give(first + j, v);
                }
            }
            for s in 0..k {
                if o <= c.delays[s] {
                    row.cache[s][o % ring] = initial(s);
                    row.provided[s][o % ring] = true;
                }
            }
        }
        // The first call of a row only primes it: position 0 holds the initial tokens.
        let priming: Vec<bool> = state.rows.iter().map(|r| r.offset == 0).collect();
        if priming.iter().all(|&p| p) {
            for row in &mut state.rows {
                row.offset = 1;
            }
            return Ok(None);
        }
        if priming.iter().any(|&p| p) {
            return Err(Error::input("rows of one provided step must all be primed, or none"));
        }
        let mut input = vec![0i64; b * k];
        let mut forced = vec![None; b * k];
        for (r, row) in state.rows.iter().enumerate() {
            let (prev, at) = ((row.offset - 1) % ring, row.offset % ring);
            for s in 0..k {
                input[r * k + s] = row.cache[s][prev];
                if row.provided[s][at] {
                    forced[s * b + r] = Some(row.cache[s][at]);
                }
            }
        }
        let flat = self.step_model(state, &input, &forced)?;
        let max_delay = c.max_delay();
        let (mut text, mut audio) = (Vec::with_capacity(b), Vec::with_capacity(b * c.dep_q));
        let mut any_ready = false;
        for (r, row) in state.rows.iter_mut().enumerate() {
            let o = row.offset;
            let (prev, at) = ((o - 1) % ring, o % ring);
            for s in 0..k {
                row.provided[s][prev] = false;
                if !row.provided[s][at] {
                    row.cache[s][at] = flat[s * b + r];
                }
            }
            let ready = o > max_delay;
            any_ready |= ready;
            for s in 0..k {
                let v = if ready { row.cache[s][(o - max_delay + c.delays[s]) % ring] } else { UNGENERATED_TOKEN };
                if s == 0 { text.push(v) } else { audio.push(v) }
            }
            row.offset += 1;
        }
        Ok(any_ready.then_some(StepOut { text, audio }))
    }
}
