//! Streaming generation with Moshi's acoustic delays, as the reference `LMGen`.
//!
//! Each stream (text, Moshi's audio, the user's audio) is shifted by its delay. Every step takes
//! the user's codes of one frame, feeds the temporal transformer the tokens due at this step
//! (start tokens while a stream is still inside its delay), samples the text token, runs the
//! depth transformer for the generated audio streams, and returns the tokens that are complete
//! once the delays are undone. With a maximum delay of 1 the first step returns nothing.
//!
//! The token history lives on the host, per stream, in a ring of `max_delay + 2` steps, so
//! streams of one batch may be at different positions and a session can run forever. Tokens are
//! picked on the device and read back once per step ([`pick`](super::pick); on the CPU
//! backend, on the host).

use burn::prelude::*;
use burn::tensor::DType;
use rand::RngCore;
use rand::rngs::StdRng;

use super::model::{LmModel, UNGENERATED_TOKEN};
use super::pick::{self, Draw, Picking};
use super::sampling::{self, GenConfig, Sampling};
use crate::backend;
use crate::error::{Error, Result};
use crate::gist::Gist;
use crate::kernels::embed::Column;
use crate::kernels::matvec::{self, Input};
use crate::kernels::pick as kpick;
use crate::kernels::residual::{Base, Update, residual_norm};
use crate::nn::batch::Batched;
use crate::nn::matrix::Matrix;
use crate::nn::transformer::TransformerState;

/// Generation state of one stream.
#[derive(Clone, Debug)]
pub struct GenRow {
    /// `[1 + n_q][ring]` token history.
    pub(super) cache: Vec<Vec<i64>>,
    /// `[1 + n_q][ring]`: which entries of `cache` were given rather than generated (only the
    /// provided schedule, [`super::provided`], sets them).
    pub(super) provided: Vec<Vec<bool>>,
    /// Steps taken.
    pub(super) offset: usize,
    config: GenConfig,
    text_rng: StdRng,
    audio_rng: StdRng,
}

/// Generation state of a batch of streams.
#[derive(Clone, Debug)]
pub struct LmState {
    pub(super) transformer: TransformerState,
    /// The depth transformer's rings, reset every frame and kept so that they are not cleared
    /// anew each frame.
    pub(super) depformer: TransformerState,
    pub(super) rows: Vec<GenRow>,
    picking: Picking,
    /// Keep each step's temporal output ([`LmState::take_hidden`]).
    keep_hidden: bool,
    hidden: Option<Tensor<2>>,
    /// Keep each step's text logits ([`LmState::take_text_logits`]).
    keep_text_logits: bool,
    text_logits: Option<Tensor<2>>,
}

impl LmState {
    /// Whether the steps keep the text head's logits for [`LmState::take_text_logits`].
    pub fn set_keep_text_logits(&mut self, keep: bool) {
        self.keep_text_logits = keep;
        if !keep {
            self.text_logits = None;
        }
    }

    /// The last step's text logits before sampling, `[B, text vocabulary]` in f32. `None`
    /// unless kept.
    pub fn take_text_logits(&mut self) -> Option<Tensor<2>> {
        self.text_logits.take()
    }

    /// Whether the steps keep the temporal transformer's output for [`LmState::take_hidden`]
    /// (the `lm` latent tap; reading it back costs a device sync, so it is off by default).
    pub fn set_keep_hidden(&mut self, keep: bool) {
        self.keep_hidden = keep;
        if !keep {
            self.hidden = None;
        }
    }

    /// The last step's temporal transformer output after its final norm, `[B, dim]`: what the
    /// text head and the depth transformer read. `None` unless kept.
    pub fn take_hidden(&mut self) -> Option<Tensor<2>> {
        self.hidden.take()
    }

    /// Where the steps pick their tokens (unless set, [`Picking::for_device`] of the model's).
    pub fn set_picking(&mut self, picking: Picking) {
        self.picking = picking;
    }

    /// Gives row `row` new sampling settings from its next step on, its generators reseeded
    /// from them (several sampled continuations from one shared, greedy start).
    pub fn set_config(&mut self, row: usize, config: GenConfig) -> Result<()> {
        let n = self.rows.len();
        let r = self.rows.get_mut(row).ok_or_else(|| Error::input(format!("row {row} of a batch of {n}")))?;
        r.config = config;
        r.text_rng = sampling::rng(config.text_seed);
        r.audio_rng = sampling::rng(config.audio_seed);
        Ok(())
    }

    /// Steps taken by each stream.
    pub fn offsets(&self) -> Vec<usize> {
        self.rows.iter().map(|r| r.offset).collect()
    }
}

impl Batched for LmState {
    /// A state of no streams (a placeholder while a session's state is lent to a batch).
    fn empty() -> Self {
        LmState {
            transformer: TransformerState::empty(),
            depformer: TransformerState::empty(),
            rows: Vec::new(),
            picking: Picking::Host,
            keep_hidden: false,
            hidden: None,
            keep_text_logits: false,
            text_logits: None,
        }
    }

    fn batch(&self) -> usize {
        self.rows.len()
    }

    fn merge(parts: Vec<LmState>) -> LmState {
        let picking = parts.first().map_or(Picking::Host, |p| p.picking);
        let keep_hidden = parts.iter().any(|p| p.keep_hidden);
        let keep_text_logits = parts.iter().any(|p| p.keep_text_logits);
        let mut tr = Vec::with_capacity(parts.len());
        let mut dep = Vec::with_capacity(parts.len());
        let mut rows = Vec::new();
        for p in parts {
            tr.push(p.transformer);
            dep.push(p.depformer);
            rows.extend(p.rows);
        }
        LmState {
            transformer: TransformerState::merge(tr),
            depformer: TransformerState::merge(dep),
            rows,
            picking,
            keep_hidden,
            hidden: None,
            keep_text_logits,
            text_logits: None,
        }
    }

    fn split(self) -> Vec<LmState> {
        let picking = self.picking;
        self.transformer
            .split()
            .into_iter()
            .zip(self.depformer.split())
            .zip(self.rows)
            .map(|((t, d), r)| LmState {
                transformer: t,
                depformer: d,
                rows: vec![r],
                picking,
                keep_hidden: false,
                hidden: None,
                keep_text_logits: false,
                text_logits: None,
            })
            .collect()
    }
}

/// Tokens produced by one step: `text` `[B]` and `audio` `[B, dep_q]` (row-major). Rows of a
/// mixed batch whose delays are still filling hold `-2` (not generated).
#[derive(Clone, Debug, PartialEq)]
pub struct StepOut {
    pub text: Vec<i64>,
    pub audio: Vec<i64>,
}

impl LmModel {
    /// A fresh generation state, one row per entry of `configs`.
    pub fn init_state(&self, configs: &[GenConfig]) -> Result<LmState> {
        let c = &self.config;
        let ring = c.max_delay() + 2;
        let rows = configs
            .iter()
            .map(|cfg| GenRow {
                cache: vec![vec![UNGENERATED_TOKEN; ring]; c.n_q + 1],
                provided: vec![vec![false; ring]; c.n_q + 1],
                offset: 0,
                config: *cfg,
                text_rng: sampling::rng(cfg.text_seed),
                audio_rng: sampling::rng(cfg.audio_seed),
            })
            .collect();
        Ok(LmState {
            transformer: self.init_transformer_state(configs.len())?,
            depformer: self.init_depformer_state(configs.len())?,
            rows,
            picking: Picking::for_device(&self.device()),
            keep_hidden: false,
            hidden: None,
            keep_text_logits: false,
            text_logits: None,
        })
    }

    /// A fresh generation state of one stream that starts prompted by `gist`: its K vectors go
    /// through the temporal transformer as positions `0..K` before the first frame, pinned in
    /// its attention cache for the whole stream; the stream then starts as a fresh one.
    pub fn init_state_with_gist(&self, config: GenConfig, gist: &Gist) -> Result<LmState> {
        gist.check_width(self.config.dim, std::path::Path::new("gist"))?;
        let mut state = self.init_state(&[config])?;
        state.transformer = self.transformer.init_state_pinned(1, gist.k)?;
        let prefix = backend::floats(gist.values.clone(), [1, gist.k, gist.dim], &self.device(), self.dtype());
        self.transformer.forward(prefix, Some(&mut state.transformer))?;
        Ok(state)
    }

    /// One generation step. `user_codes` holds `[B, n_q - dep_q]` codes (row-major, extra
    /// columns ignored if `cols` is larger). Returns `None` while the delays of every row are filling.
    pub fn step(&self, state: &mut LmState, user_codes: &[i64], cols: usize) -> Result<Option<StepOut>> {
        let forced = vec![None; state.rows.len()];
        self.step_forced(state, user_codes, cols, &forced)
    }

    /// Like [`LmModel::step`], with optional forced text tokens per row (teacher forcing).
    pub fn step_forced(
        &self,
        state: &mut LmState,
        user_codes: &[i64],
        cols: usize,
        forced_text: &[Option<i64>],
    ) -> Result<Option<StepOut>> {
        let c = &self.config;
        let b = state.rows.len();
        let k = c.n_q + 1;
        let dep_q = c.dep_q;
        let user = c.user_streams();
        if cols < user || user_codes.len() != b * cols {
            return Err(Error::input(format!(
                "expected [{b}, {user}] user codes, got {} values in rows of {cols}",
                user_codes.len()
            )));
        }
        if let Some(bad) = user_codes.iter().find(|&&v| v < 0 || v >= c.card as i64) {
            return Err(Error::input(format!("user code {bad} outside 0..{}", c.card)));
        }
        let ring = c.max_delay() + 2;
        let initial = |s: usize| if s == 0 { c.text_card as i64 } else { c.card as i64 };
        // Write the user's codes at their delayed positions and gather this step's input.
        let mut input = vec![0i64; b * k];
        for (r, row) in state.rows.iter_mut().enumerate() {
            for u in 0..user {
                let s = dep_q + 1 + u;
                let pos = (row.offset + c.delays[s]) % ring;
                row.cache[s][pos] = user_codes[r * cols + u];
            }
            for s in 0..k {
                input[r * k + s] = if row.offset <= c.delays[s] { initial(s) } else { row.cache[s][row.offset % ring] };
            }
        }
        if let Some(bad) = forced_text.iter().flatten().find(|&&t| t < 0 || t > c.text_card as i64) {
            return Err(Error::input(format!("forced text token {bad} outside 0..={}", c.text_card)));
        }
        let mut forced = vec![None; b * (1 + dep_q)];
        for (slot, t) in forced.iter_mut().zip(forced_text) {
            *slot = *t;
        }
        let flat = self.step_model(state, &input, &forced)?;
        let text = &flat[..b];
        let mut audio = vec![0i64; b * dep_q];
        for (step, col) in flat[b..].chunks(b).enumerate() {
            for r in 0..b {
                audio[r * dep_q + step] = col[r];
            }
        }
        // Store the generated tokens and read back the undelayed ones.
        let max_delay = c.max_delay();
        let mut any_ready = false;
        let mut out_text = Vec::with_capacity(b);
        let mut out_audio = Vec::with_capacity(b * dep_q);
        for (r, row) in state.rows.iter_mut().enumerate() {
            row.offset += 1;
            let pos = row.offset % ring;
            row.cache[0][pos] = text[r];
            for s in 0..dep_q {
                row.cache[1 + s][pos] = audio[r * dep_q + s];
            }
            let ready = row.offset > max_delay;
            any_ready |= ready;
            for s in 0..=dep_q {
                let v =
                    if ready { row.cache[s][(row.offset - max_delay + c.delays[s]) % ring] } else { UNGENERATED_TOKEN };
                if s == 0 {
                    out_text.push(v);
                } else {
                    out_audio.push(v);
                }
            }
        }
        if !any_ready {
            return Ok(None);
        }
        Ok(Some(StepOut { text: out_text, audio: out_audio }))
    }
}

impl LmModel {
    /// The model part of a step: `input` `[B, 1 + n_q]` in, the step's tokens `[1 + dep_q][B]`
    /// out, picked where the state says. `forced` `[1 + dep_q][B]` replaces a pick (and so the
    /// next depth step's input) where given.
    pub(super) fn step_model(&self, state: &mut LmState, input: &[i64], forced: &[Option<i64>]) -> Result<Vec<i64>> {
        let b = state.rows.len();
        if forced.len() != b * (1 + self.config.dep_q) {
            return Err(Error::input(format!(
                "{} forced slots for {b} rows of {} tokens",
                forced.len(),
                1 + self.config.dep_q
            )));
        }
        match state.picking {
            Picking::Device => self.step_on_device(state, input, forced),
            Picking::Host => self.step_on_host(state, input, forced),
        }
    }

    /// The model part of a step on the host's picking: the temporal transformer, the text token
    /// and each codebook in turn, each read back to be drawn on the host. Returns the step's
    /// tokens as `[1 + dep_q][B]`.
    fn step_on_host(&self, state: &mut LmState, input: &[i64], forced: &[Option<i64>]) -> Result<Vec<i64>> {
        let c = &self.config;
        let b = state.rows.len();
        let (out, text_logits) = self.forward_text(input, b, 1, Some(&mut state.transformer))?;
        if state.keep_hidden {
            state.hidden = Some(out.clone().reshape([b, c.dim]));
        }
        if state.keep_text_logits {
            state.text_logits = Some(text_logits.clone().reshape([b, c.text_out()]).cast(DType::F32));
        }
        let mut scratch = Vec::new();
        let mut draws: Vec<Draw> =
            state.rows.iter_mut().map(|row| Draw { params: row.config.text, rng: &mut row.text_rng }).collect();
        let text =
            pick::pick(text_logits.reshape([b, c.text_out()]), &mut draws, &forced[..b], Picking::Host, &mut scratch)?;
        let dep_state = &mut state.depformer;
        dep_state.reset();
        let mut prev = text.device.clone();
        let mut picked = vec![text];
        for step in 0..c.dep_q {
            let logits = self.depformer_step(step, prev, out.clone(), dep_state)?;
            let mut draws: Vec<Draw> =
                state.rows.iter_mut().map(|row| Draw { params: row.config.audio, rng: &mut row.audio_rng }).collect();
            let at = &forced[(step + 1) * b..(step + 2) * b];
            let tok = pick::pick(logits.reshape([b, c.card]), &mut draws, at, Picking::Host, &mut scratch)?;
            prev = tok.device.clone();
            picked.push(tok);
        }
        match picked.iter_mut().map(|p| p.host.take()).collect::<Option<Vec<_>>>() {
            Some(rows) => Ok(rows.concat()),
            None => backend::read_ints(Tensor::cat(picked.into_iter().map(|p| p.device).collect(), 0)),
        }
    }

    /// The model part of a step on the device: every upload first (tokens, RoPE tables, the
    /// picks' parameters), then fused launches only (`kernels/`), the tokens picked into one
    /// tensor that the depth steps read their inputs from, and one read-back at the end.
    /// Returns the step's tokens as `[1 + dep_q][B]`.
    fn step_on_device(&self, state: &mut LmState, input: &[i64], forced: &[Option<i64>]) -> Result<Vec<i64>> {
        let c = &self.config;
        let b = state.rows.len();
        let k = c.n_q + 1;
        let device = self.device();
        let dtype = self.dtype();
        // Uploads: an upload after a launch would cost a queue submit. With the input tables
        // stacked in one, each token is shifted to its table's rows.
        let shifted: Vec<i64> = match &self.input_table {
            Some(t) => {
                input.iter().enumerate().map(|(i, &v)| if v < 0 { v } else { v + t.offsets[i % k] as i64 }).collect()
            }
            None => input.to_vec(),
        };
        let tokens = backend::ints(shifted, [b, k], &device);
        let mut draws = Vec::with_capacity(c.dep_q + 1);
        draws.push(
            state
                .rows
                .iter_mut()
                .zip(&forced[..b])
                .map(|(row, forced)| device_draw(row.config.text, &mut row.text_rng, *forced))
                .collect::<Vec<_>>(),
        );
        for step in 0..c.dep_q {
            let at = &forced[(step + 1) * b..(step + 2) * b];
            draws.push(
                state
                    .rows
                    .iter_mut()
                    .zip(at)
                    .map(|(row, forced)| device_draw(row.config.audio, &mut row.audio_rng, *forced))
                    .collect(),
            );
        }
        let params = kpick::params(&draws, &device);
        let rope = self.transformer.step_rope(&state.transformer, 1, &device);
        let mut picked = Tensor::<2, Int>::empty([c.dep_q + 1, b], &device);

        // Temporal transformer and text token: the input rows (one launch with the tables
        // stacked, else one per table), then the layers.
        let first_norm = self.transformer.layers.first().map(|l| l.norm1.params());
        let (x, h0) = match &self.input_table {
            Some(t) => {
                let base = Base::Gather {
                    table: t.table.clone(),
                    idx: tokens,
                    column: Column { offset: 0, stride: k },
                    count: k,
                    rows: b,
                };
                residual_norm(base, None, None, first_norm.as_ref(), dtype)
            }
            None => {
                // One launch a table, each adding its rows to the sum so far.
                let tables: Vec<&Matrix> = std::iter::once(&self.text_emb).chain(self.emb.iter()).collect();
                let mut sum: Option<(Tensor<2>, Option<Tensor<2>>)> = None;
                for (s, table) in tables.iter().enumerate() {
                    let base = Base::Gather {
                        table: table.weight(),
                        idx: tokens.clone(),
                        column: Column { offset: s, stride: k },
                        count: 1,
                        rows: b,
                    };
                    let so_far = sum.take().map(|(x, _)| Update::from(x.reshape([1, b, c.dim])));
                    let norm = if s + 1 == tables.len() { first_norm.as_ref() } else { None };
                    sum = Some(residual_norm(base, so_far, None, norm, dtype));
                }
                sum.ok_or_else(|| Error::input("an LM without input tables"))?
            }
        };
        let (_, h) = self.transformer.step(
            x.reshape([b, 1, c.dim]),
            h0,
            &mut state.transformer,
            rope.as_ref(),
            Some(&self.out_norm),
        )?;
        let h = h.ok_or_else(|| Error::input("the temporal step lost its output norm"))?;
        if state.keep_hidden {
            state.hidden = Some(h.clone().reshape([b, c.dim]));
        }
        let logits = matvec::partials(Input::Rows(h.clone()), self.text_linear.weight());
        if state.keep_text_logits {
            state.text_logits = Some(matvec::sum_parts(logits.clone(), DType::F32));
        }
        picked = kpick::pick(logits, &params, &draws[0], 0, picked);

        // Depth transformer: each codebook from the token just picked, on the device.
        let dep_state = &mut state.depformer;
        dep_state.reset();
        let first_norm = self.depformer.layers.first().map(|l| l.norm1.params());
        // Every depth step's input projection of the temporal output, in one launch.
        let all = self.depformer_in_all.as_ref().map(|w| matvec::partials(Input::Rows(h.clone()), w.clone()));
        for step in 0..c.dep_q {
            let proj = match &all {
                Some(p) => Update { partials: p.clone(), offset: step * c.depformer_dim },
                None => matvec::partials(Input::Rows(h.clone()), self.depformer_in_weight(step)?).into(),
            };
            let table = if step == 0 { &self.depformer_text_emb } else { &self.depformer_emb[step - 1] };
            let prev = Base::Gather {
                table: table.weight(),
                idx: picked.clone(),
                column: Column { offset: step * b, stride: 1 },
                count: 1,
                rows: b,
            };
            let (x, hn) = residual_norm(prev, Some(proj), None, first_norm.as_ref(), dtype);
            let (y, _) = self.depformer.step(x.reshape([b, 1, c.depformer_dim]), hn, dep_state, None, None)?;
            let logits = matvec::partials(Input::Rows(y), self.linears[step].weight());
            picked = kpick::pick(logits, &params, &draws[step + 1], step + 1, picked);
        }
        backend::read_ints(picked)
    }
}

/// A device pick of `params`, seeded from the row's generator.
fn device_draw(params: Sampling, rng: &mut StdRng, forced: Option<i64>) -> kpick::Draw {
    let greedy = params.is_greedy();
    kpick::Draw {
        inv_temperature: if greedy { 0.0 } else { 1.0 / params.temperature },
        top_k: params.top_k,
        seed: if greedy { 0 } else { rng.next_u64() },
        forced,
    }
}
