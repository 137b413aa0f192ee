//! kokichi's own gradient path: training the codec and the language model with Burn's autodiff
//! on the same model code that runs inference. Used by `kokichi train-codec` and
//! `kokichi train-lm`, and the prefix latents of `kokichi gist train`; models are written in the reference checkpoint layout.
//!
//! On this project's 2-core CPUs Burn trains several times slower than PyTorch (measured by
//! `make bench-train`), so the shipped kokichi-tiny weights come from training/*.py with
//! the reference classes; these trainers produce loadable models and are tested end to end.

pub mod codec;
pub mod gist;
pub mod grad;
pub mod lm;
pub mod tokens;

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Progress of a training run, kept beside its weights so a run can resume.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Progress {
    pub step: usize,
    pub seconds: f64,
    pub last_loss: f64,
}

impl Progress {
    pub fn read(dir: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(dir.join("progress.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    pub fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join("progress.json");
        let text = serde_json::to_string_pretty(self).map_err(|e| Error::input(e.to_string()))?;
        std::fs::write(&path, text).map_err(|e| Error::io(&path, e))
    }
}

/// Cosine decay with linear warm-up, to a tenth of `base`.
pub fn cosine_lr(step: usize, total: usize, base: f64, warmup: usize) -> f64 {
    if step < warmup {
        return base * (step + 1) as f64 / warmup as f64;
    }
    let p = ((step - warmup) as f64 / (total.saturating_sub(warmup).max(1)) as f64).min(1.0);
    base * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * p).cos()))
}

/// Adam on host values: the trainers that move a few vectors through a frozen model (gists,
/// new vocabulary rows) keep them on the host and update them here.
pub(crate) struct HostAdam {
    m: Vec<f32>,
    v: Vec<f32>,
    t: i32,
}

impl HostAdam {
    pub(crate) fn new(n: usize) -> Self {
        Self { m: vec![0.0; n], v: vec![0.0; n], t: 0 }
    }

    pub(crate) fn step(&mut self, x: &mut [f32], g: &[f32], lr: f32) {
        let (b1, b2, eps) = (0.9f32, 0.999f32, 1e-8f32);
        self.t += 1;
        let (c1, c2) = (1.0 - b1.powi(self.t), 1.0 - b2.powi(self.t));
        for i in 0..x.len() {
            self.m[i] = b1 * self.m[i] + (1.0 - b1) * g[i];
            self.v[i] = b2 * self.v[i] + (1.0 - b2) * g[i] * g[i];
            x[i] -= lr * (self.m[i] / c1) / ((self.v[i] / c2).sqrt() + eps);
        }
    }
}
