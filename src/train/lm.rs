//! Language-model training: teacher-forced cross-entropy on the text stream (padding weighted
//! down) and the model's audio streams, with Moshi's delays, AdamW, gradient clipping.

use std::path::Path;
use std::time::Instant;

use burn::grad_clipping::GradientClippingConfig;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::prelude::*;
use burn::tensor::activation::log_softmax;

use super::{Progress, cosine_lr};
use crate::backend;
use crate::error::{Error, Result};
use crate::lm::{LmConfig, LmModel};
use crate::weights::{self, Slots};

/// Token sequences `[N, 1 + n_q, T]` (text first), as written by training/train_lm.py.
pub struct TokenSet {
    pub values: Vec<i64>,
    pub n: usize,
    pub k: usize,
    pub t: usize,
}

impl TokenSet {
    pub fn read(path: &Path, name: &str) -> Result<Self> {
        let (values, shape) = weights::read_int_tensor(path, name)?;
        let [n, k, t] = match shape.as_slice() {
            &[n, k, t] => [n, k, t],
            other => {
                return Err(Error::Tensor {
                    path: path.to_path_buf(),
                    name: name.into(),
                    msg: format!("shape {other:?}, expected [N, 1 + n_q, T]"),
                });
            }
        };
        Ok(Self { values, n, k, t })
    }

    /// The rows of `path`'s `name` after this set's; their shapes must agree but for N.
    pub fn append(&mut self, path: &Path, name: &str) -> Result<()> {
        let more = Self::read(path, name)?;
        if (more.k, more.t) != (self.k, self.t) {
            return Err(Error::Tensor {
                path: path.to_path_buf(),
                name: name.into(),
                msg: format!("rows of [{}, {}], the first file's are [{}, {}]", more.k, more.t, self.k, self.t),
            });
        }
        self.values.extend(more.values);
        self.n += more.n;
        Ok(())
    }

    pub(crate) fn batch(&self, rows: &[usize]) -> Vec<i64> {
        let len = self.k * self.t;
        rows.iter().flat_map(|&r| self.values[r * len..(r + 1) * len].iter().copied()).collect()
    }
}

/// Training settings.
#[derive(Clone, Debug)]
pub struct LmTrain {
    pub steps: usize,
    pub batch: usize,
    pub lr: f64,
    pub pad_weight: f32,
    pub seed: u64,
    pub log_every: usize,
    pub save_every: usize,
}

/// Teacher-forced loss of a batch `codes` `[B, K, T]`: (text, audio) cross-entropies.
pub fn loss(lm: &LmModel, codes: &[i64], b: usize, t: usize, pad_weight: f32) -> Result<(Tensor<1>, Tensor<1>)> {
    let c = &lm.config;
    let k = c.n_q + 1;
    let device = lm.device();
    let (text, audio) = lm.forward_teacher(codes, b, t)?;
    let text = text_nll(lm, text, codes, b, t, pad_weight);
    // Audio: the dep_q generated streams, positions inside their delay excluded.
    let card = c.card;
    let mut idx = Vec::with_capacity(b * c.dep_q * t);
    let mut w = Vec::with_capacity(b * c.dep_q * t);
    for r in 0..b {
        for s in 0..c.dep_q {
            for i in 0..t {
                let tok = codes[(r * k + 1 + s) * t + i];
                let valid = lm.valid_mask(s + 1, i, t) && tok >= 0 && (tok as usize) < card;
                idx.push(if valid { tok } else { 0 });
                w.push(if valid { 1.0 } else { 0.0 });
            }
        }
    }
    let audio = nll(audio.reshape([b * c.dep_q * t, card]), idx, w, &device);
    Ok((text, audio))
}

/// Text cross-entropy of `text` logits `[B, T, text_out]` against the text stream of `codes`
/// `[B, K, T]`: every valid position counts, padding `pad_weight`.
pub fn text_nll(lm: &LmModel, text: Tensor<3>, codes: &[i64], b: usize, t: usize, pad_weight: f32) -> Tensor<1> {
    let c = &lm.config;
    let k = c.n_q + 1;
    let v = c.text_out();
    let mut idx = Vec::with_capacity(b * t);
    let mut w = Vec::with_capacity(b * t);
    for r in 0..b {
        for i in 0..t {
            let tok = codes[(r * k) * t + i];
            let valid = lm.valid_mask(0, i, t) && tok >= 0 && (tok as usize) < v;
            idx.push(if valid { tok } else { 0 });
            w.push(if !valid {
                0.0
            } else if tok as usize == c.existing_text_padding_id {
                pad_weight
            } else {
                1.0
            });
        }
    }
    nll(text.reshape([b * t, v]), idx, w, &lm.device())
}

/// Weighted mean negative log-likelihood of `targets` under `logits` `[N, V]`.
fn nll(logits: Tensor<2>, targets: Vec<i64>, weights: Vec<f32>, device: &Device) -> Tensor<1> {
    let n = targets.len();
    let total: f32 = weights.iter().sum::<f32>().max(1.0);
    let lp = log_softmax(logits, 1);
    let picked = lp.gather(1, backend::ints(targets, [n, 1], device));
    let w = backend::floats(weights, [n, 1], device, picked.dtype());
    (picked * w).sum().neg().div_scalar(total)
}

/// Trains `lm` (on an autodiff device) on `data`; writes `out/model.safetensors` (with its
/// config) every `save_every` steps and at the end. Returns seconds per step.
pub fn train(
    mut lm: LmModel,
    slots: &Slots,
    data: &TokenSet,
    settings: &LmTrain,
    out: &Path,
    start: usize,
) -> Result<(LmModel, f64)> {
    if data.k != lm.config.n_q + 1 {
        return Err(Error::config(
            "lm.n_q",
            format!("tokens have {} streams, the model {}", data.k, lm.config.n_q + 1),
        ));
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let mut optim = AdamWConfig::new()
        .with_beta_2(0.95)
        .with_weight_decay(0.05)
        .with_grad_clipping(Some(GradientClippingConfig::Norm(1.0)))
        .init();
    let mut rng = crate::lm::sampling::rng(Some(settings.seed + start as u64));
    let t0 = Instant::now();
    let mut window = Instant::now();
    let mut last = 0.0;
    for step in start..settings.steps {
        use rand::Rng;
        let rows: Vec<usize> = (0..settings.batch).map(|_| rng.random_range(0..data.n)).collect();
        let codes = data.batch(&rows);
        let (lt, la) = loss(&lm, &codes, settings.batch, data.t, settings.pad_weight)?;
        let total = lt.clone() + la.clone();
        let grads = GradientsParams::from_grads(total.backward(), &lm);
        let lr = cosine_lr(step, settings.steps, settings.lr, 500.min(settings.steps / 10 + 1));
        lm = optim.step(lr, lm, grads);
        if (step + 1) % settings.log_every == 0 {
            let lt = backend::read_floats(lt)?[0];
            let la = backend::read_floats(la)?[0];
            last = (lt + la) as f64;
            tracing::info!(
                step = step + 1,
                text = lt,
                audio = la,
                s_per_step = window.elapsed().as_secs_f64() / settings.log_every as f64,
                "train-lm"
            );
            window = Instant::now();
        }
        if (step + 1) % settings.save_every == 0 || step + 1 == settings.steps {
            save(&lm, slots, out)?;
            Progress { step: step + 1, seconds: t0.elapsed().as_secs_f64(), last_loss: last }.write(out)?;
        }
    }
    let done = settings.steps.saturating_sub(start).max(1);
    Ok((lm, t0.elapsed().as_secs_f64() / done as f64))
}

/// Writes the model and its config in the kokichi model-folder form.
pub fn save(lm: &LmModel, slots: &Slots, out: &Path) -> Result<()> {
    weights::export(lm, slots, &out.join("model.safetensors"), false)?;
    let cfg = serde_json::to_string_pretty(&lm.config).map_err(|e| Error::input(e.to_string()))?;
    let path = out.join("lm_config.json");
    std::fs::write(&path, cfg).map_err(|e| Error::io(&path, e))
}

/// Loads or creates the model to train: resumes from `out` when it holds a previous run.
pub fn resume_or_init(config: LmConfig, device: &Device, out: &Path, seed: u64) -> Result<(LmModel, Slots, usize)> {
    let weights = out.join("model.safetensors");
    if let (Some(p), true) = (Progress::read(out), weights.is_file()) {
        let mut w = weights::WeightFile::open(&weights, device, burn::tensor::DType::F32)?;
        let lm = LmModel::build(&mut w, config)?;
        let slots = w.finish()?;
        tracing::info!(step = p.step, "resuming");
        return Ok((lm, slots, p.step));
    }
    let (lm, slots) = LmModel::random(config, device, seed)?;
    Ok((lm, slots, 0))
}
