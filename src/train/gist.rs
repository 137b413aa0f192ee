//! Gist training: K prefix vectors learned through the frozen LM so that, placed before a
//! session (see [`crate::gist`]), they stand in for a spoken prompt.
//!
//! The objective is teacher-forced: over continuation dialogues, the LM's next-token
//! distributions (text and the generated audio streams, at the positions valid under Moshi's
//! delays) after [gist] should match those after the whole [prompt], by KL(prompt || gist).
//! The teacher's log-probabilities are computed once; only the K vectors get gradients (the LM's
//! parameters are marked `no_grad` and never updated); Adam steps them on the host.

use super::HostAdam;
use burn::prelude::*;
use burn::tensor::activation::log_softmax;

use crate::backend;
use crate::error::{Error, Result};
use crate::lm::{GenConfig, LmModel};
use crate::session::Engine;

/// Dialogues `[N, 1 + n_q, tp + tc]` (text first): a shared prompt of `tp` frames, then a
/// continuation of `tc` frames each.
#[derive(Clone, Debug)]
pub struct Dialogues {
    pub codes: Vec<i64>,
    pub n: usize,
    pub k: usize,
    pub tp: usize,
    pub tc: usize,
}

impl Dialogues {
    fn len(&self) -> usize {
        self.tp + self.tc
    }

    /// The whole dialogues of `rows`, `[rows, k, tp + tc]`.
    pub fn full(&self, rows: &[usize]) -> Vec<i64> {
        let n = self.k * self.len();
        rows.iter().flat_map(|&r| self.codes[r * n..(r + 1) * n].iter().copied()).collect()
    }

    /// The continuations of `rows`, `[rows, k, tc]`.
    pub fn continuations(&self, rows: &[usize]) -> Vec<i64> {
        let t = self.len();
        let mut out = Vec::with_capacity(rows.len() * self.k * self.tc);
        for &r in rows {
            for s in 0..self.k {
                let at = (r * self.k + s) * t + self.tp;
                out.extend_from_slice(&self.codes[at..at + self.tc]);
            }
        }
        out
    }

    /// The prompt of row `row`, `[1, k, tp]`.
    pub fn prompt(&self, row: usize) -> Vec<i64> {
        let t = self.len();
        (0..self.k)
            .flat_map(|s| self.codes[(row * self.k + s) * t..(row * self.k + s) * t + self.tp].to_vec())
            .collect()
    }
}

/// Generates dialogues with `engine`: the user says `prompt` (24 kHz samples) while the LM
/// answers greedily, then, one row per entry of `users`, the user says `users[r]` (silence
/// after it) for `frames` frames while the LM continues with `configs[r]`.
pub fn dialogues(
    engine: &Engine,
    prompt: &[f32],
    users: &[Vec<f32>],
    configs: &[GenConfig],
    frames: usize,
) -> Result<Dialogues> {
    use crate::nn::batch::Batched;
    let n = users.len();
    if n == 0 || configs.len() != n || frames == 0 || prompt.is_empty() {
        return Err(Error::input(format!(
            "dialogues need a prompt, continuations ({n}) with one sampling setting each ({}) and frames ({frames})",
            configs.len()
        )));
    }
    let c = &engine.lm.config;
    let frame = engine.frame_size();
    let tp = prompt.len().div_ceil(frame);
    let extra = c.max_delay();
    let total = tp + frames + extra;
    let user = c.user_streams();
    // The user's codes per row, [n][total][user]: prompt, the row's audio, silence.
    let mut user_codes = Vec::with_capacity(n);
    for u in users {
        let mut pcm = prompt.to_vec();
        pcm.resize(tp * frame, 0.0);
        pcm.extend(u.iter().take(frames * frame));
        pcm.resize(total * frame, 0.0);
        let codes = engine.mimi.encode(engine.mimi.pcm_tensor(pcm, [1, total * frame]))?;
        let q = codes.dims()[1];
        let codes = backend::read_ints(codes)?;
        if q < user {
            return Err(Error::config("mimi_codebooks", format!("{q} codebooks for {user} user streams")));
        }
        let per_frame: Vec<Vec<i64>> = (0..total).map(|i| (0..user).map(|s| codes[s * total + i]).collect()).collect();
        user_codes.push(per_frame);
    }
    let lm = &engine.lm;
    let mut one = lm.init_state(&[GenConfig::greedy()])?;
    let mut made: Vec<Vec<Vec<i64>>> = vec![Vec::new(); n]; // [n][frame][1 + dep_q]
    let push = |made: &mut Vec<Vec<Vec<i64>>>, out: crate::lm::StepOut| {
        let dep_q = c.dep_q;
        for (r, m) in made.iter_mut().enumerate() {
            let mut col = vec![out.text[r]];
            col.extend_from_slice(&out.audio[r * dep_q..(r + 1) * dep_q]);
            m.push(col);
        }
    };
    let mut shared = Vec::new();
    for codes in user_codes[0].iter().take(tp) {
        if let Some(out) = lm.step(&mut one, codes, user)? {
            shared.push(out);
        }
    }
    let mut state = crate::lm::LmState::merge(vec![one; n]);
    for (r, cfg) in configs.iter().enumerate() {
        state.set_config(r, *cfg)?;
    }
    for out in shared {
        let dep_q = c.dep_q;
        for m in made.iter_mut() {
            let mut col = vec![out.text[0]];
            col.extend_from_slice(&out.audio[..dep_q]);
            m.push(col);
        }
    }
    for i in tp..total {
        let codes: Vec<i64> = user_codes.iter().flat_map(|u| u[i].iter().copied()).collect();
        if let Some(out) = lm.step(&mut state, &codes, user)? {
            push(&mut made, out);
        }
    }
    let (k, len) = (c.n_q + 1, tp + frames);
    let mut out = vec![0i64; n * k * len];
    for r in 0..n {
        if made[r].len() < len {
            return Err(Error::input(format!("generation gave {} frames, expected {len}", made[r].len())));
        }
        for i in 0..len {
            for s in 0..k {
                out[(r * k + s) * len + i] =
                    if s <= c.dep_q { made[r][i][s] } else { user_codes[r][i][s - c.dep_q - 1] };
            }
        }
    }
    Ok(Dialogues { codes: out, n, k, tp, tc: frames })
}

/// The teacher's side of the objective for some dialogues: the LM's log-probabilities at the
/// continuation positions after the whole prompt (no gradient), and which positions count.
pub struct Targets {
    pub n: usize,
    pub tc: usize,
    /// The continuations `[n, k, tc]`, what the student reads after the gist.
    pub continuations: Vec<i64>,
    text: Tensor<3>,
    audio: Tensor<4>,
    text_w: Tensor<3>,
    audio_w: Tensor<4>,
}

/// Per-stream weights `[1 + dep_q][tc]`: 1 where a teacher-forced logit exists under the delays.
fn valid_weights(lm: &LmModel, tc: usize) -> Vec<Vec<f32>> {
    (0..=lm.config.dep_q).map(|s| (0..tc).map(|i| if lm.valid_mask(s, i, tc) { 1.0 } else { 0.0 }).collect()).collect()
}

impl Targets {
    /// Teacher log-probabilities of dialogues `rows` under `lm`.
    pub fn new(lm: &LmModel, d: &Dialogues, rows: &[usize]) -> Result<Self> {
        let n = rows.len();
        let (tp, tc) = (d.tp, d.tc);
        let (text, audio) = lm.forward_teacher(&d.full(rows), n, tp + tc)?;
        let text = log_softmax(text.narrow(1, tp, tc).cast(burn::tensor::DType::F32), 2).detach();
        let audio = log_softmax(audio.narrow(2, tp, tc).cast(burn::tensor::DType::F32), 3).detach();
        Self::with(lm, d.continuations(rows), n, tc, text, audio)
    }

    fn with(
        lm: &LmModel,
        continuations: Vec<i64>,
        n: usize,
        tc: usize,
        text: Tensor<3>,
        audio: Tensor<4>,
    ) -> Result<Self> {
        let device = lm.device();
        let w = valid_weights(lm, tc);
        let dep_q = lm.config.dep_q;
        let text_w = backend::floats(w[0].clone(), [1, tc, 1], &device, burn::tensor::DType::F32);
        let audio_w = backend::floats(w[1..].concat(), [1, dep_q, tc, 1], &device, burn::tensor::DType::F32);
        Ok(Self { n, tc, continuations, text, audio, text_w, audio_w })
    }

    /// KL(teacher || student) in nats per continuation frame (text and audio streams summed),
    /// the student reading the continuations after `prefix` `[K, dim]` (none: a fresh session).
    pub fn kl(&self, lm: &LmModel, prefix: Option<Tensor<2>>) -> Result<Tensor<1>> {
        let out = lm.forward_teacher_prefixed(prefix, &self.continuations, self.n, self.tc)?;
        Ok(self.kl_of(out.text, out.audio))
    }

    /// [`Targets::kl`] of given student logits `[n, tc, V]` and `[n, dep_q, tc, card]`.
    pub fn kl_of(&self, text: Tensor<3>, audio: Tensor<4>) -> Tensor<1> {
        let lq = log_softmax(text.cast(burn::tensor::DType::F32), 2);
        let kt = (self.text.clone().exp() * (self.text.clone() - lq)) * self.text_w.clone();
        let lq = log_softmax(audio.cast(burn::tensor::DType::F32), 3);
        let ka = (self.audio.clone().exp() * (self.audio.clone() - lq)) * self.audio_w.clone();
        (kt.sum() + ka.sum()).div_scalar((self.n * self.tc) as f32)
    }
}

/// The temporal transformer's input vectors at the last `k` positions of a prompt `[1, K, tp]`
/// (what the LM read there: delayed tokens' embedding sums), `[k, dim]` on the host; where the
/// prompt is shorter than `k`, its first position's repeats in front.
pub fn init_from_prompt(lm: &LmModel, prompt: &[i64], tp: usize, k: usize) -> Result<Vec<f32>> {
    let streams = lm.config.n_q + 1;
    if prompt.len() != streams * tp || tp == 0 {
        return Err(Error::input(format!("prompt of {} codes for [1, {streams}, {tp}]", prompt.len())));
    }
    let c = &lm.config;
    let initial = |s: usize| if s == 0 { c.text_card as i64 } else { c.card as i64 };
    // Delayed input at position p of stream s: the token of frame p - 1 - d (initial before).
    let mut cols = vec![0i64; streams * tp];
    for s in 0..streams {
        for p in 0..tp {
            let back = 1 + c.delays[s];
            cols[s * tp + p] = if p < back { initial(s) } else { prompt[s * tp + p - back] };
        }
    }
    let x = backend::read_floats(lm.input_embeddings(&cols, 1, tp)?.cast(burn::tensor::DType::F32))?;
    let dim = c.dim;
    Ok((0..k)
        .flat_map(|j| {
            let p = (tp + j).saturating_sub(k);
            x[p * dim..(p + 1) * dim].to_vec()
        })
        .collect())
}

/// Settings of [`train`].
#[derive(Clone, Debug)]
pub struct GistTrain {
    pub steps: usize,
    pub lr: f64,
    pub log_every: usize,
}

/// A prefix `[k, dim]` on `lm`'s device from host values, tracked for gradients.
pub fn prefix_tensor(lm: &LmModel, values: &[f32], k: usize) -> Tensor<2> {
    backend::floats(values.to_vec(), [k, lm.config.dim], &lm.device(), burn::tensor::DType::F32).require_grad()
}

/// The loss at `values` and its gradient with respect to them, on the host.
pub fn loss_and_grad(lm: &LmModel, targets: &Targets, values: &[f32], k: usize) -> Result<(f32, Vec<f32>)> {
    let prefix = prefix_tensor(lm, values, k);
    let loss = targets.kl(lm, Some(prefix.clone()))?;
    let grads = loss.backward();
    let value = backend::read_floats(loss.detach())?[0];
    let g = prefix
        .grad(&grads)
        .ok_or_else(|| Error::Backend("no gradient reached the gist (is the device an autodiff one?)".into()))?;
    Ok((value, backend::read_floats(g)?))
}

/// Learns `k` prefix vectors from `init` against `targets` through `lm` (an autodiff device;
/// its parameters are never updated). Returns the vectors and the last training loss.
pub fn train(
    lm: &LmModel,
    targets: &Targets,
    init: Vec<f32>,
    k: usize,
    settings: &GistTrain,
) -> Result<(Vec<f32>, f32)> {
    if init.len() != k * lm.config.dim {
        return Err(Error::input(format!("{} initial values for a gist of [{k}, {}]", init.len(), lm.config.dim)));
    }
    let mut x = init;
    let mut adam = HostAdam::new(x.len());
    let mut last = f32::NAN;
    for step in 0..settings.steps {
        let (loss, g) = loss_and_grad(lm, targets, &x, k)?;
        if !loss.is_finite() || g.iter().any(|v| !v.is_finite()) {
            return Err(Error::Backend(format!("gist step {step}: loss or gradient not finite ({loss})")));
        }
        let lr = super::cosine_lr(step, settings.steps, settings.lr, (settings.steps / 20).max(1));
        adam.step(&mut x, &g, lr as f32);
        last = loss;
        if settings.log_every > 0 && (step + 1) % settings.log_every == 0 {
            tracing::info!(step = step + 1, kl = loss, "train-gist");
        }
    }
    Ok((x, last))
}

/// Held-out figures of a gist, in nats per continuation frame.
#[derive(Clone, Debug, PartialEq)]
pub struct Figures {
    /// After the whole prompt, recomputed one dialogue at a time (≈ 0: the teacher path).
    pub prompt: f32,
    /// After the prompt's own input vectors replayed as a prefix of `tp` positions.
    pub replay: f32,
    /// After the initial vectors (before training).
    pub init: f32,
    /// After the trained gist.
    pub gist: f32,
    /// After nothing: a fresh session.
    pub nothing: f32,
}

impl Figures {
    /// The share of the gap between nothing and the prompt that the gist closes.
    pub fn closed(&self) -> f32 {
        let gap = self.nothing - self.prompt;
        if gap > 0.0 { (self.nothing - self.gist) / gap } else { f32::NAN }
    }
}

/// The split of `n` dialogues: every fourth (at least one) held out, the rest trained on.
pub fn split(n: usize) -> (Vec<usize>, Vec<usize>) {
    let held: Vec<usize> = (0..n).filter(|r| r % 4 == 3 || (n < 4 && *r == n - 1)).collect();
    let train = (0..n).filter(|r| !held.contains(r)).collect();
    (train, held)
}

/// A gist of `k` vectors for dialogues `d` through the frozen `lm` (an autodiff device, its
/// parameters `no_grad`): initialised from `init` (`[k, dim]`) or else the prompt's last `k`
/// input vectors, trained on the training split, measured on the held-out split. Returns the
/// vectors and the figures.
pub fn fit(
    lm: &LmModel,
    d: &Dialogues,
    k: usize,
    init: Option<Vec<f32>>,
    settings: &GistTrain,
) -> Result<(Vec<f32>, Figures)> {
    if d.n < 2 {
        return Err(Error::input(format!("{} dialogues: at least 2 are needed (train and held out)", d.n)));
    }
    if let Some(ctx) = lm.config.context.filter(|&ctx| k + d.tc > ctx) {
        return Err(Error::input(format!("{k} gist vectors + {} frames exceed the LM's context of {ctx}", d.tc)));
    }
    let (train_rows, held_rows) = split(d.n);
    let train_t = Targets::new(lm, d, &train_rows)?;
    let held = Targets::new(lm, d, &held_rows)?;
    let init = match init {
        Some(v) => v,
        None => init_from_prompt(lm, &d.prompt(0), d.tp, k)?,
    };
    if init.len() != k * lm.config.dim {
        return Err(Error::input(format!("{} initial values for a gist of [{k}, {}]", init.len(), lm.config.dim)));
    }
    let read = |t: Tensor<1>| -> Result<f32> { Ok(backend::read_floats(t.detach())?[0]) };
    let dim = lm.config.dim;
    let as_prefix = |v: &[f32], n: usize| backend::floats(v.to_vec(), [n, dim], &lm.device(), burn::tensor::DType::F32);
    let mut prompt = 0.0;
    for (i, &r) in held_rows.iter().enumerate() {
        let (text, audio) = lm.forward_teacher(&d.full(&[r]), 1, d.tp + d.tc)?;
        let one = Targets::with(
            lm,
            d.continuations(&[r]),
            1,
            d.tc,
            held.text.clone().narrow(0, i, 1),
            held.audio.clone().narrow(0, i, 1),
        )?;
        prompt += read(one.kl_of(text.narrow(1, d.tp, d.tc), audio.narrow(2, d.tp, d.tc)))? / held_rows.len() as f32;
    }
    let replay_vectors = init_from_prompt(lm, &d.prompt(0), d.tp, d.tp)?;
    let replay = read(held.kl(lm, Some(as_prefix(&replay_vectors, d.tp)))?)?;
    let nothing = read(held.kl(lm, None)?)?;
    let init_kl = read(held.kl(lm, Some(as_prefix(&init, k)))?)?;
    tracing::info!(prompt, replay, nothing, init = init_kl, "held-out KL before training");
    let (values, _) = train(lm, &train_t, init, k, settings)?;
    let gist = read(held.kl(lm, Some(as_prefix(&values, k)))?)?;
    Ok((values, Figures { prompt, replay, init: init_kl, gist, nothing }))
}
