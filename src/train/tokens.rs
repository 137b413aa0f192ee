//! Training a vocabulary adapter ([`crate::adapter`]) through the frozen LM: only the 2N new
//! rows (each new token's text embedding row and text head row) learn; every other weight stays
//! as loaded. The depth transformer's rows of the new tokens stay copies of the padding row.
//!
//! The model is built on an autodiff device with every parameter frozen but the two text
//! tables; after each backward pass the new rows' gradients are read out and Adam moves those
//! rows alone on the host, so no other row, even of those two tables, can change. The loss is
//! the teacher-forced text cross-entropy (padding weighted down as in [`super::lm`]); the audio
//! streams are inputs only, since the new tokens' audio path is the padding token's.

use super::HostAdam;
use std::path::Path;

use burn::module::{Module, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::DType;

use super::lm::{TokenSet, text_nll};
use crate::adapter::{Adapter, TEXT_EMB};
use crate::backend;
use crate::error::{Error, Result};
use crate::lm::{LmConfig, LmModel};
use crate::weights::{Slots, WeightFile};

/// Training settings.
#[derive(Clone, Debug)]
pub struct TokenTrain {
    pub steps: usize,
    pub batch: usize,
    pub lr: f64,
    pub pad_weight: f32,
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
    if data.k != config.n_q + 1 {
        return Err(Error::config("lm.n_q", format!("tokens have {} streams, the model {}", data.k, config.n_q + 1)));
    }
    if let Some(bad) = data.values.iter().enumerate().find_map(|(i, &tok)| {
        let text = (i / data.t) % data.k == 0;
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
    let mut rng = crate::lm::sampling::rng(Some(settings.seed));
    let mut losses = Vec::with_capacity(settings.steps);
    for step in 0..settings.steps {
        use rand::Rng;
        let rows: Vec<usize> = (0..settings.batch).map(|_| rng.random_range(0..data.n)).collect();
        let codes = data.batch(&rows);
        let logits = lm.forward_teacher_text(&codes, settings.batch, data.t)?;
        let loss = text_nll(&lm, logits, &codes, settings.batch, data.t, settings.pad_weight);
        let value = backend::read_floats(loss.clone())?[0];
        losses.push(value);
        let mut grads = GradientsParams::from_grads(loss.backward(), &lm);
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
    Ok(Trained { adapter, lm, slots, losses })
}

/// The share of the frames whose target is one of the adapter's tokens at which the model's
/// greedy text token is that token, and the share of the other frames at which it is one of the
/// new tokens (teacher-forced on `data`, rows `rows`).
pub fn teacher_forced_firing(lm: &LmModel, data: &TokenSet, rows: &[usize], first_new: usize) -> Result<(f64, f64)> {
    let (mut hit, mut pos, mut false_fire, mut neg) = (0usize, 0usize, 0usize, 0usize);
    for chunk in rows.chunks(8) {
        let codes = data.batch(chunk);
        let logits = lm.forward_teacher_text(&codes, chunk.len(), data.t)?;
        let [b, t, vocab] = logits.dims();
        let picks = backend::read_ints(logits.argmax(2).flatten::<1>(0, 2))?;
        for r in 0..b {
            for i in 0..t {
                let target = codes[r * data.k * data.t + i];
                let pick = picks[r * t + i];
                debug_assert!((pick as usize) < vocab);
                if target >= first_new as i64 {
                    pos += 1;
                    hit += usize::from(pick == target);
                } else {
                    neg += 1;
                    false_fire += usize::from(pick >= first_new as i64);
                }
            }
        }
    }
    Ok((hit as f64 / pos.max(1) as f64, false_fire as f64 / neg.max(1) as f64))
}
