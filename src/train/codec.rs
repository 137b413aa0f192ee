//! Codec training: multi-scale mel-spectrogram L1 (linear and log), the waveform error relative
//! to the signal's energy (it makes the autoencoder learn in hundreds of steps where the
//! spectral loss alone needs tens of thousands), and the straight-through quantizer's codebook
//! and commitment losses, AdamW.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::grad_clipping::GradientClippingConfig;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::prelude::*;
use burn::tensor::module::conv1d;
use burn::tensor::ops::ConvOptions;
use rand::Rng;

use super::{Progress, cosine_lr};
use crate::backend;
use crate::error::{Error, Result};
use crate::mimi::Mimi;
use crate::weights::{self, Slots};

/// Spectrogram features at several resolutions, as a fixed (untrained) convolution.
pub struct MelLoss {
    scales: Vec<(usize, Tensor<3>, Tensor<3>)>,
}

impl MelLoss {
    pub fn new(device: &Device, rate: usize) -> Self {
        let scales = [256usize, 512, 1024, 2048]
            .iter()
            .map(|&n| {
                let bins = n / 2 + 1;
                // Windowed DFT rows: cosines then sines.
                let mut w = vec![0f32; 2 * bins * n];
                for k in 0..bins {
                    for i in 0..n {
                        let win = 0.5 - 0.5 * (std::f64::consts::TAU * i as f64 / n as f64).cos();
                        let a = std::f64::consts::TAU * (k * i) as f64 / n as f64;
                        w[k * n + i] = (win * a.cos()) as f32;
                        w[(bins + k) * n + i] = (-win * a.sin()) as f32;
                    }
                }
                let dft = Tensor::from_data(TensorData::new(w, [2 * bins, 1, n]), device);
                let fb = Tensor::<2>::from_data(TensorData::new(mel_filterbank(n, 64, rate), [64, bins]), device);
                (n, dft, fb.unsqueeze::<3>())
            })
            .collect();
        Self { scales }
    }

    fn mel(&self, x: Tensor<3>, n: usize, dft: &Tensor<3>, fb: &Tensor<3>) -> Tensor<3> {
        let spec = conv1d(x, dft.clone(), None, ConvOptions::new([n / 4], [0], [1], 1));
        let [b, c, f] = spec.dims();
        let bins = c / 2;
        let re = spec.clone().narrow(1, 0, bins);
        let im = spec.narrow(1, bins, bins);
        let mag = (re.square() + im.square()).add_scalar(1e-8).sqrt();
        fb.clone().expand([b, 64, bins]).matmul(mag).reshape([b, 64, f])
    }

    /// Mean over scales of L1(mel) + L1(log mel) between `y` and `x` `[B, T]`.
    pub fn forward(&self, y: Tensor<2>, x: Tensor<2>) -> Tensor<1> {
        let [b, t] = x.dims();
        let x = x.reshape([b, 1, t]);
        let y = y.reshape([b, 1, t]);
        let mut total: Option<Tensor<1>> = None;
        for (n, dft, fb) in &self.scales {
            let mx = self.mel(x.clone(), *n, dft, fb);
            let my = self.mel(y.clone(), *n, dft, fb);
            let lin = (mx.clone() - my.clone()).abs().mean();
            let log = (mx.add_scalar(1e-5).log() - my.add_scalar(1e-5).log()).abs().mean();
            let l = lin + log;
            total = Some(match total {
                Some(acc) => acc + l,
                None => l,
            });
        }
        total.map_or_else(|| Tensor::zeros([1], &x.device()), |t| t.div_scalar(self.scales.len() as f64))
    }
}

fn mel_filterbank(n_fft: usize, n_mels: usize, rate: usize) -> Vec<f32> {
    let hz_to_mel = |f: f64| 2595.0 * (1.0 + f / 700.0).log10();
    let mel_to_hz = |m: f64| 700.0 * (10f64.powf(m / 2595.0) - 1.0);
    let bins = n_fft / 2 + 1;
    let top = hz_to_mel(rate as f64 / 2.0);
    let pts: Vec<f64> = (0..n_mels + 2).map(|i| mel_to_hz(top * i as f64 / (n_mels + 1) as f64)).collect();
    let mut fb = vec![0f32; n_mels * bins];
    for m in 0..n_mels {
        let (lo, c, hi) = (pts[m], pts[m + 1], pts[m + 2]);
        for k in 0..bins {
            let f = k as f64 * rate as f64 / n_fft as f64;
            let up = (f - lo) / (c - lo).max(1e-9);
            let down = (hi - f) / (hi - c).max(1e-9);
            fb[m * bins + k] = up.min(down).max(0.0) as f32;
        }
    }
    fb
}

/// Clips to train on: the corpus's questions and answers (training/make_data.py).
pub struct Clips {
    audio: Vec<Vec<f32>>,
    len: usize,
}

impl Clips {
    /// Reads up to `max_files` wav files listed in `data/train.jsonl` and `data/answers.json`.
    pub fn read(data: &Path, rate: usize, frame: usize, seconds: f64, max_files: usize) -> Result<Self> {
        let mut files: Vec<PathBuf> = Vec::new();
        let manifest = data.join("train.jsonl");
        let text = std::fs::read_to_string(&manifest).map_err(|e| Error::io(&manifest, e))?;
        for line in text.lines() {
            let v: serde_json::Value =
                serde_json::from_str(line).map_err(|e| Error::File { path: manifest.clone(), msg: e.to_string() })?;
            if let Some(f) = v.get("file").and_then(|f| f.as_str()) {
                files.push(data.join(f));
            }
        }
        files.truncate(max_files);
        let mut audio = Vec::with_capacity(files.len());
        for f in &files {
            audio.push(crate::audio::read_audio(f, rate as u32)?);
        }
        if audio.is_empty() {
            return Err(Error::File { path: manifest, msg: "no audio files listed".into() });
        }
        let len = ((seconds * rate as f64 / frame as f64).round() as usize).max(1) * frame;
        Ok(Self { audio, len })
    }

    fn batch(&self, n: usize, rng: &mut impl Rng) -> Vec<f32> {
        let mut out = vec![0f32; n * self.len];
        for row in out.chunks_exact_mut(self.len) {
            let a = &self.audio[rng.random_range(0..self.audio.len())];
            if a.len() >= self.len {
                let s = rng.random_range(0..=a.len() - self.len);
                row.copy_from_slice(&a[s..s + self.len]);
            } else {
                let s = rng.random_range(0..=self.len - a.len());
                row[s..s + a.len()].copy_from_slice(a);
            }
        }
        out
    }
}

#[derive(Clone, Debug)]
pub struct CodecTrain {
    pub steps: usize,
    pub batch: usize,
    pub lr: f64,
    pub seed: u64,
    pub log_every: usize,
    pub save_every: usize,
}

/// Trains `mimi` (on an autodiff device); returns the model and seconds per step.
pub fn train(
    mut mimi: Mimi,
    slots: &Slots,
    clips: &Clips,
    s: &CodecTrain,
    out: &Path,
    start: usize,
) -> Result<(Mimi, f64)> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let device = mimi.encoder.first.weight.val().device();
    let mel = MelLoss::new(&device, mimi.sample_rate());
    let mut optim = AdamWConfig::new()
        .with_beta_1(0.8)
        .with_beta_2(0.99)
        .with_grad_clipping(Some(GradientClippingConfig::Norm(5.0)))
        .init();
    let mut rng = crate::lm::sampling::rng(Some(s.seed + start as u64));
    let t0 = Instant::now();
    let mut window = Instant::now();
    let mut last = 0.0;
    for step in start..s.steps {
        let x =
            backend::floats(clips.batch(s.batch, &mut rng), [s.batch, clips.len], &device, burn::tensor::DType::F32);
        let (y, vq) = mimi.train_forward(x.clone())?;
        let l_mel = mel.forward(y.clone(), x.clone());
        let energy = x.clone().square().mean().add_scalar(1e-8);
        let wave = (y - x).square().mean().div(energy);
        let total = l_mel.clone() + wave.mul_scalar(5.0) + vq.mul_scalar(0.1);
        let grads = GradientsParams::from_grads(total.backward(), &mimi);
        mimi = optim.step(cosine_lr(step, s.steps, s.lr, 300.min(s.steps / 10 + 1)), mimi, grads);
        if (step + 1) % s.log_every == 0 {
            let m = backend::read_floats(l_mel)?[0];
            let q = backend::read_floats(total.clone())?[0];
            last = m as f64;
            tracing::info!(
                step = step + 1,
                mel = m,
                total = q,
                s_per_step = window.elapsed().as_secs_f64() / s.log_every as f64,
                "train-codec"
            );
            window = Instant::now();
        }
        if (step + 1) % s.save_every == 0 || step + 1 == s.steps {
            save(&mimi, slots, out)?;
            Progress { step: step + 1, seconds: t0.elapsed().as_secs_f64(), last_loss: last }.write(out)?;
        }
    }
    let done = s.steps.saturating_sub(start).max(1);
    Ok((mimi, t0.elapsed().as_secs_f64() / done as f64))
}

/// Writes the codec and its config.
pub fn save(mimi: &Mimi, slots: &Slots, out: &Path) -> Result<()> {
    weights::export(mimi, slots, &out.join("mimi.safetensors"), false)?;
    let cfg = serde_json::to_string_pretty(&mimi.config).map_err(|e| Error::input(e.to_string()))?;
    let path = out.join("mimi_config.json");
    std::fs::write(&path, cfg).map_err(|e| Error::io(&path, e))
}
