//! Training a vocabulary adapter ([`crate::adapter`]) through the frozen LM: only the 2N new
//! rows (each new token's text embedding row and text head row) learn; every other weight stays
//! as loaded. The depth transformer's rows of the new tokens stay copies of the padding row.
//!
//! The model is built on an autodiff device with every parameter frozen but the two text
//! tables; after each backward pass the new rows' gradients are read out and Adam moves those
//! rows alone on the host, so no other row, even of those two tables, can change. The audio
//! streams are inputs only, since the new tokens' audio path is the padding token's.
//!
//! The loss ([`token_loss`]) is the teacher-forced text cross-entropy (padding weighted down as
//! in [`super::lm`]) but at the new tokens' frames. A tool call need not land on one exact frame,
//! and a new token is rare (about one frame in a hundred), so a new token at frame p opens a
//! window of `window` frames, p..p + window, whose targets are replaced by one term weighted
//! `token_weight`: the log-probability that the token is the first thing said in the window,
//! `log Σ_i p_i Π_{j<i} q_j` with `p_i` the token's probability at frame i and `q_j` padding's.
//! Waiting is fine, but only in silence: a model that says its own answer first has already
//! answered (a small model does, with a word it guesses), and its input has left what the
//! window assumes. Inside the window the inputs read padding (nothing said yet); the token is
//! read at the window's last frame, so the frames after it learn what follows it (quiet). A
//! window of 1 and a weight of 1 is the plain cross-entropy of the token at its frame. Rows
//! without a new token (the negatives) can weigh more than the others (`negative_weight`): their
//! frames are where a false fire would be.
//!
//! Two rows only read the frozen model's last hidden state out linearly, which on a small model
//! may not tell a time question from another question well enough. With `gist` K > 0 a prefix of
//! K input vectors ([`crate::gist`]) learns with the rows, through the same loss, and goes into
//! the adapter: every session then starts after it, so the model's own layers can be steered to
//! carry what the new rows read, while the ordinary frames' cross-entropy keeps its other answers.

use super::HostAdam;
use std::path::Path;

use burn::module::{Module, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::activation::log_softmax;

use super::lm::TokenSet;
use crate::adapter::{Adapter, TEXT_EMB};
use crate::backend;
use crate::error::{Error, Result};
use crate::gist::Gist;
use crate::lm::{LmConfig, LmModel};
use crate::weights::{Slots, WeightFile};

/// Training settings.
#[derive(Clone, Debug)]
pub struct TokenTrain {
    pub steps: usize,
    pub batch: usize,
    pub lr: f64,
    pub pad_weight: f32,
    /// Weight of each new token's term against one ordinary frame's.
    pub token_weight: f32,
    /// Frames from a new token's frame in which saying it counts (1: that frame only).
    pub window: usize,
    /// Weight of each frame of a row without a new token (another question, a quiet window)
    /// against the same frame in a row with one (1: alike).
    pub negative_weight: f32,
    /// Prefix vectors learned with the rows and stored in the adapter (0: none; at most 64).
    pub gist: usize,
    pub seed: u64,
    pub log_every: usize,
}

/// A trained adapter, the adapted model as trained (for checks), and the loss of every step.
pub struct Trained {
    pub adapter: Adapter,
    pub lm: LmModel,
    pub slots: Slots,
    pub losses: Vec<f32>,
}

/// Trains new tokens `names` for the LM stored at `lm_path` (a model of `config`) on `data`
/// (`[N, 1 + n_q, T]`, text first, in the extended vocabulary: token j of `names` is id
/// `config.text_card + j`), on `device` (an autodiff device). The new embedding rows start as
/// the padding token's, the head rows at zero.
pub fn train(
    lm_path: &Path,
    config: &LmConfig,
    names: Vec<String>,
    data: &TokenSet,
    settings: &TokenTrain,
    device: &Device,
) -> Result<Trained> {
    let (v, n, d) = (config.text_card, names.len(), config.dim);
    let positive = |x: f32| x.is_finite() && x > 0.0;
    if settings.window == 0 || !positive(settings.token_weight) || !positive(settings.negative_weight) {
        return Err(Error::input("the window, the token weight and the negative weight must be positive".to_string()));
    }
    if settings.gist > crate::gist::MAX_K {
        return Err(Error::input(format!("a gist of {} vectors; at most {}", settings.gist, crate::gist::MAX_K)));
    }
    if data.k != config.n_q + 1 {
        return Err(Error::config("lm.n_q", format!("tokens have {} streams, the model {}", data.k, config.n_q + 1)));
    }
    if let Some(bad) = data.values.iter().enumerate().find_map(|(i, &tok)| {
        let text = (i / data.t).is_multiple_of(data.k);
        (text && (tok < 0 || tok as usize >= v + n)).then_some(tok)
    }) {
        return Err(Error::input(format!("text token {bad} outside the extended vocabulary 0..{}", v + n)));
    }
    let pad = config.existing_text_padding_id;
    let mut probe = WeightFile::open(lm_path, device, DType::F32)?;
    let emb = probe.host(TEXT_EMB, &[v + 1, d])?;
    let mut adapter = Adapter {
        path: lm_path.with_file_name(crate::adapter::JSON),
        tokens: names,
        d_model: d,
        model: None,
        text_emb: (0..n).flat_map(|_| emb[pad * d..(pad + 1) * d].iter().copied()).collect(),
        text_linear: vec![0.0; n * d],
        text_linear_bias: None,
        gist: None,
    };
    let mut w = WeightFile::open(lm_path, device, DType::F32)?;
    let extended = adapter.apply(&mut w, config)?;
    let lm = LmModel::build(&mut w, extended)?;
    let slots = w.finish()?;
    let mut lm = lm.no_grad();
    // The two tables on the host, to write the new rows into after each step.
    let mut emb_all = backend::read_floats(lm.text_emb.weight.val().flatten::<1>(0, 1))?;
    let head_dims = lm.text_linear.weight.dims();
    let mut head_all = backend::read_floats(lm.text_linear.weight.val().flatten::<1>(0, 1))?;
    if lm.text_emb.q8.is_some() || lm.text_linear.q8.is_some() || head_dims != [d, v + n] {
        return Err(Error::input("training an adapter needs float text tables".to_string()));
    }
    let upload = |p: &Param<Tensor<2>>, values: &[f32], shape: [usize; 2]| {
        Param::initialized(p.id, backend::floats(values.to_vec(), shape, device, DType::F32).require_grad())
    };
    lm.text_emb.weight = upload(&lm.text_emb.weight, &emb_all, [v + n + 1, d]);
    lm.text_linear.weight = upload(&lm.text_linear.weight, &head_all, [d, v + n]);
    let mut opt_emb = HostAdam::new(n * d);
    let mut opt_head = HostAdam::new(n * d);
    // The prefix starts as K copies of the input vector of a session's first frame (every
    // stream's initial token), which a model has always read first.
    let k_gist = settings.gist;
    let mut gist_values = match k_gist {
        0 => Vec::new(),
        k => super::gist::init_from_prompt(&lm, &vec![0; config.n_q + 1], 1, k)?,
    };
    let mut opt_gist = HostAdam::new(gist_values.len());
    let mut rng = crate::lm::sampling::rng(Some(settings.seed));
    let mut losses = Vec::with_capacity(settings.steps);
    for step in 0..settings.steps {
        use rand::Rng;
        let rows: Vec<usize> = (0..settings.batch).map(|_| rng.random_range(0..data.n)).collect();
        let codes = data.batch(&rows);
        let prefix = (k_gist > 0).then(|| super::gist::prefix_tensor(&lm, &gist_values, k_gist));
        let loss = token_loss(&lm, prefix.clone(), &codes, settings.batch, data.t, v, settings)?;
        let value = backend::read_floats(loss.clone())?[0];
        losses.push(value);
        let grads = loss.backward();
        let g_gist = match &prefix {
            Some(p) => Some(backend::read_floats(
                p.grad(&grads).ok_or_else(|| Error::Backend("no gradient reached the gist".into()))?,
            )?),
            None => None,
        };
        let mut grads = GradientsParams::from_grads(grads, &lm);
        let g_emb = grads
            .remove::<2>(lm.text_emb.weight.id)
            .ok_or_else(|| Error::Backend("no gradient for the text embedding".into()))?;
        let g_head = grads
            .remove::<2>(lm.text_linear.weight.id)
            .ok_or_else(|| Error::Backend("no gradient for the text head".into()))?;
        let g_emb = backend::read_floats(g_emb.narrow(0, v, n).flatten::<1>(0, 1))?;
        // The head is held [d, v + n]: its new rows are columns, read out [d, n], used [n, d].
        let g_cols = backend::read_floats(g_head.narrow(1, v, n).flatten::<1>(0, 1))?;
        let g_head: Vec<f32> = (0..n * d).map(|i| g_cols[(i % d) * n + i / d]).collect();
        let lr = super::cosine_lr(step, settings.steps, settings.lr, settings.steps / 10 + 1) as f32;
        opt_emb.step(&mut adapter.text_emb, &g_emb, lr);
        opt_head.step(&mut adapter.text_linear, &g_head, lr);
        if let Some(g) = g_gist {
            opt_gist.step(&mut gist_values, &g, lr);
        }
        emb_all[v * d..(v + n) * d].copy_from_slice(&adapter.text_emb);
        for j in 0..n {
            for i in 0..d {
                head_all[i * (v + n) + v + j] = adapter.text_linear[j * d + i];
            }
        }
        lm.text_emb.weight = upload(&lm.text_emb.weight, &emb_all, [v + n + 1, d]);
        lm.text_linear.weight = upload(&lm.text_linear.weight, &head_all, [d, v + n]);
        if settings.log_every > 0 && (step + 1) % settings.log_every == 0 {
            tracing::info!(step = step + 1, text = value, "tokens-train");
        }
    }
    if k_gist > 0 {
        adapter.gist = Some(Gist::new(gist_values, k_gist, d)?);
    }
    // The trained tables no longer tracked, so that evaluating the model records no graph.
    lm.text_emb.weight = Param::initialized(lm.text_emb.weight.id, lm.text_emb.weight.val().detach());
    lm.text_linear.weight = Param::initialized(lm.text_linear.weight.id, lm.text_linear.weight.val().detach());
    Ok(Trained { adapter, lm, slots, losses })
}

/// Where a new token may fire: `token` at frames `start..end` of row `row`.
struct Window {
    row: usize,
    start: usize,
    end: usize,
    token: i64,
}

/// The teacher-forcing input of `codes` `[B, K, T]` and the windows of its new tokens (ids from
/// `first_new` on): each new token at frame p opens frames p..p + `window` (cut at the last valid
/// frame), and is read as padding there but at the window's last frame.
fn windows(
    lm: &LmModel,
    codes: &[i64],
    b: usize,
    t: usize,
    first_new: usize,
    window: usize,
) -> (Vec<i64>, Vec<Window>) {
    let c = &lm.config;
    let (k, v, pad) = (c.n_q + 1, c.text_out(), c.existing_text_padding_id as i64);
    let valid = (0..t).take_while(|&i| lm.valid_mask(0, i, t)).count();
    let mut input = codes.to_vec();
    let mut found = Vec::new();
    for row in 0..b {
        for (start, &token) in codes[row * k * t..row * k * t + valid].iter().enumerate() {
            if token >= first_new as i64 && (token as usize) < v {
                let end = (start + window.max(1)).min(valid);
                input[row * k * t + start] = pad;
                input[row * k * t + end - 1] = token;
                found.push(Window { row, start, end, token });
            }
        }
    }
    (input, found)
}

/// The training loss of a batch `codes` `[B, K, T]` (text first; ids from `first_new` on are new
/// tokens) for `lm`, the adapted model, after the gist `prefix` if any: the module docs say what
/// it is.
pub fn token_loss(
    lm: &LmModel,
    prefix: Option<Tensor<2>>,
    codes: &[i64],
    b: usize,
    t: usize,
    first_new: usize,
    settings: &TokenTrain,
) -> Result<Tensor<1>> {
    let c = &lm.config;
    let (k, v, pad, w_len) = (c.n_q + 1, c.text_out(), c.existing_text_padding_id, settings.window);
    let (input, windows) = windows(lm, codes, b, t, first_new, w_len);
    let (mut idx, mut weights) = (vec![0i64; b * t], vec![0f32; b * t]);
    let valid = (0..t).take_while(|&i| lm.valid_mask(0, i, t)).count();
    for r in 0..b {
        let row_weight = if windows.iter().any(|w| w.row == r) { 1.0 } else { settings.negative_weight };
        for (i, &tok) in codes[r * k * t..r * k * t + valid].iter().enumerate() {
            let covered = windows.iter().any(|w| w.row == r && (w.start..w.end).contains(&i));
            if !covered && tok >= 0 && (tok as usize) < v {
                idx[r * t + i] = tok;
                weights[r * t + i] = row_weight * if tok as usize == pad { settings.pad_weight } else { 1.0 };
            }
        }
    }
    let device = lm.device();
    let logits = lm.forward_teacher_text_prefixed(prefix, &input, b, t)?;
    let lp = log_softmax(logits.reshape([b * t, v]), 1);
    let dtype = lp.dtype();
    let ordinary = lp.clone().gather(1, backend::ints(idx, [b * t, 1], &device));
    let total_w = weights.iter().sum::<f32>() + settings.token_weight * windows.len() as f32;
    let ordinary = (ordinary * backend::floats(weights, [b * t, 1], &device, dtype)).sum();
    if windows.is_empty() {
        return Ok(ordinary.neg().div_scalar(total_w.max(1.0)));
    }
    // [G, W]: log p(token) at each window frame; short windows padded with a frame masked out.
    let g = windows.len();
    let (mut rows, mut cols, mut mask) = (vec![0i64; g * w_len], vec![0i64; g * w_len], vec![0f32; g * w_len]);
    for (j, w) in windows.iter().enumerate() {
        for (f, i) in (w.start..w.end).enumerate() {
            rows[j * w_len + f] = (w.row * t + i) as i64;
            cols[j * w_len + f] = w.token;
            mask[j * w_len + f] = 1.0;
        }
    }
    let frames = lp.select(0, backend::ints(rows, [g * w_len], &device));
    let lp_pad = frames.clone().slice([0..g * w_len, pad..pad + 1]).reshape([g, w_len]);
    let lp_tok = frames.gather(1, backend::ints(cols, [g * w_len, 1], &device)).reshape([g, w_len]);
    let mask = backend::floats(mask, [g, w_len], &device, dtype);
    // log q_j summed over the frames before each frame, with a strictly upper-triangular [W, W]
    // of ones.
    let silent = lp_pad * mask.clone();
    let before: Vec<f32> = (0..w_len * w_len).map(|x| if x / w_len < x % w_len { 1.0 } else { 0.0 }).collect();
    let before = backend::floats(before, [w_len, w_len], &device, dtype);
    // Said first at frame i: log p_i + Σ_{j<i} log q_j; masked frames at -1e4.
    let first = lp_tok + silent.matmul(before) + (mask - 1.0) * 1e4;
    let top = first.clone().max_dim(1).detach();
    let said = (first - top.clone()).exp().sum_dim(1).log() + top;
    let total = ordinary + said.sum() * settings.token_weight;
    Ok(total.neg().div_scalar(total_w.max(1.0)))
}

/// How often new tokens are the greedy pick, teacher-forced ([`teacher_forced_firing`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Firing {
    /// The share of the new tokens' windows in which the first greedy text token other than
    /// padding is that token (window 1: the share of their own frames at which they are picked).
    pub hits: f64,
    /// The share of the frames outside the windows at which a new token is picked.
    pub false_frames: f64,
    /// The share of the rows without a new token (negatives) on which one is picked at some frame.
    pub false_rows: f64,
}

/// Teacher-forced on `data` (rows `rows`), with the inputs of the training loss for `window`:
/// [`Firing`]. Sessions start after `gist` when given (the adapter's).
pub fn teacher_forced_firing(
    lm: &LmModel,
    gist: Option<&Gist>,
    data: &TokenSet,
    rows: &[usize],
    first_new: usize,
    window: usize,
) -> Result<Firing> {
    let (mut hit, mut pos, mut false_fire, mut neg) = (0usize, 0usize, 0usize, 0usize);
    let (mut fired_rows, mut neg_rows) = (0usize, 0usize);
    let valid = (0..data.t).take_while(|&i| lm.valid_mask(0, i, data.t)).count();
    let pad = lm.config.existing_text_padding_id as i64;
    let prefix = gist.map(|g| backend::floats(g.values.clone(), [g.k, g.dim], &lm.device(), DType::F32));
    for chunk in rows.chunks(8) {
        let codes = data.batch(chunk);
        let (input, windows) = windows(lm, &codes, chunk.len(), data.t, first_new, window);
        let logits = lm.forward_teacher_text_prefixed(prefix.clone(), &input, chunk.len(), data.t)?;
        let [b, t, _] = logits.dims();
        let picks = backend::read_ints(logits.argmax(2).flatten::<1>(0, 2))?;
        for w in &windows {
            pos += 1;
            let first = (w.start..w.end).map(|i| picks[w.row * t + i]).find(|&p| p != pad);
            hit += usize::from(first == Some(w.token));
        }
        for r in 0..b {
            let negative = !windows.iter().any(|w| w.row == r);
            let mut fired = false;
            for i in 0..valid {
                if !windows.iter().any(|w| w.row == r && (w.start..w.end).contains(&i)) {
                    neg += 1;
                    let new = picks[r * t + i] >= first_new as i64;
                    false_fire += usize::from(new);
                    fired |= new;
                }
            }
            neg_rows += usize::from(negative);
            fired_rows += usize::from(negative && fired);
        }
    }
    let share = |a: usize, b: usize| a as f64 / b.max(1) as f64;
    Ok(Firing { hits: share(hit, pos), false_frames: share(false_fire, neg), false_rows: share(fired_rows, neg_rows) })
}
