//! Gradients of a loss after prefix latents with respect to those latents, through the frozen
//! LM: what `POST /api/grad` serves. Two losses: the teacher-forced cross-entropy of a token
//! sequence read after the prefix (text and the generated audio streams, Moshi's delays), or
//! `Σ hidden · hidden_grad` over the temporal transformer's output at each frame, so that a
//! caller can chain its own upstream gradient.

use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::activation::log_softmax;

use crate::backend;
use crate::error::{Error, Result};
use crate::gist::MAX_K;
use crate::lm::LmModel;

/// Longest token sequence a request may hold.
pub const MAX_T: usize = 256;

/// What the loss is taken of.
#[derive(Clone, Debug)]
pub enum Target {
    /// Cross-entropy of the codes themselves (mean over the text stream plus mean over the
    /// generated audio streams, the positions valid under the delays).
    Tokens,
    /// `Σ hidden · g` with `g` `[T, dim]` row-major.
    Hidden(Vec<f32>),
}

/// Checks the shapes of a request: `latents` `[k, dim]`, `codes` `[1 + n_q, t]`, the target.
pub fn check(lm: &LmModel, latents: &[f32], k: usize, codes: &[i64], t: usize, target: &Target) -> Result<()> {
    let c = &lm.config;
    let streams = c.n_q + 1;
    if k == 0 || k > MAX_K {
        return Err(Error::input(format!("latents: {k} rows, expected 1..={MAX_K}")));
    }
    if latents.len() != k * c.dim {
        return Err(Error::input(format!(
            "latents: rows of {} values, expected d_model = {}",
            latents.len() / k,
            c.dim
        )));
    }
    if let Some(i) = latents.iter().position(|v| !v.is_finite()) {
        return Err(Error::input(format!("latents: value {i} is not finite")));
    }
    if t == 0 || t > MAX_T {
        return Err(Error::input(format!("codes: {t} frames, expected 1..={MAX_T}")));
    }
    if codes.len() != streams * t {
        return Err(Error::input(format!("codes: {} values, expected [{streams}, {t}] (1 + n_q rows)", codes.len())));
    }
    for (s, row) in codes.chunks(t).enumerate() {
        let card = if s == 0 { c.text_card } else { c.card };
        if let Some(v) = row.iter().find(|&&v| v < 0 || v as usize >= card) {
            return Err(Error::input(format!("codes: stream {s} holds {v}, outside 0..{card}")));
        }
    }
    if let Target::Hidden(g) = target {
        if g.len() != t * c.dim {
            return Err(Error::input(format!("hidden_grad: {} values, expected [{t}, {}]", g.len(), c.dim)));
        }
        if g.iter().any(|v| !v.is_finite()) {
            return Err(Error::input("hidden_grad: a value is not finite"));
        }
    }
    Ok(())
}

/// The loss after `prefix` `[k, dim]` (a tensor on `lm`'s device, tracked or not).
pub fn loss(lm: &LmModel, prefix: Tensor<2>, codes: &[i64], t: usize, target: &Target) -> Result<Tensor<1>> {
    let c = &lm.config;
    let device = lm.device();
    let out = lm.forward_teacher_prefixed(Some(prefix), codes, 1, t)?;
    match target {
        Target::Hidden(g) => {
            let g = backend::floats(g.clone(), [1, t, c.dim], &device, DType::F32);
            Ok((out.hidden.cast(DType::F32) * g).sum())
        }
        Target::Tokens => {
            let text = nll(lm, out.text.reshape([t, c.text_out()]), (0..t).map(|i| (0, i)).collect(), codes, t);
            let audio_rows: Vec<(usize, usize)> = (0..c.dep_q).flat_map(|s| (0..t).map(move |i| (s + 1, i))).collect();
            let audio = nll(lm, out.audio.reshape([c.dep_q * t, c.card]), audio_rows, codes, t);
            Ok(text + audio)
        }
    }
}

/// Mean negative log-likelihood of the codes at `rows` ((stream, frame) per logit row), the
/// rows beyond a stream's delay left out.
fn nll(lm: &LmModel, logits: Tensor<2>, rows: Vec<(usize, usize)>, codes: &[i64], t: usize) -> Tensor<1> {
    let device = lm.device();
    let n = rows.len();
    let (mut idx, mut w) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for &(s, i) in &rows {
        let valid = lm.valid_mask(s, i, t);
        idx.push(if valid { codes[s * t + i] } else { 0 });
        w.push(if valid { 1.0f32 } else { 0.0 });
    }
    let total = w.iter().sum::<f32>().max(1.0);
    let lp = log_softmax(logits.cast(DType::F32), 1);
    let picked = lp.gather(1, backend::ints(idx, [n, 1], &device));
    (picked * backend::floats(w, [n, 1], &device, DType::F32)).sum().neg().div_scalar(total)
}

/// The loss and d(loss)/d(latents) `[k, dim]` on the host; `lm` on an autodiff device.
pub fn loss_and_grad(
    lm: &LmModel,
    latents: &[f32],
    k: usize,
    codes: &[i64],
    t: usize,
    target: &Target,
) -> Result<(f32, Vec<f32>)> {
    check(lm, latents, k, codes, t, target)?;
    let prefix = backend::floats(latents.to_vec(), [k, lm.config.dim], &lm.device(), DType::F32).require_grad();
    let l = loss(lm, prefix.clone(), codes, t, target)?;
    let grads = l.backward();
    let value = backend::read_floats(l.detach())?[0];
    let g = prefix
        .grad(&grads)
        .ok_or_else(|| Error::Backend("no gradient reached the latents (is the device an autodiff one?)".into()))?;
    Ok((value, backend::read_floats(g)?))
}
