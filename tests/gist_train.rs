//! Gist training through the frozen LM: the prefixed teacher path, the gradient it gives the
//! gist against finite differences, the weights untouched, and the held-out KL lowered.

mod common;

use burn::module::Module;
use burn::prelude::*;
use burn::tensor::DType;
use common::*;
use kokichi::backend::{self, BackendKind};
use kokichi::lm::{LmConfig, LmModel};
use kokichi::train::gist::{self as tg, Dialogues, GistTrain, Targets};
use kokichi::weights;

fn config() -> LmConfig {
    LmConfig { context: Some(32), ..LmConfig::tiny() }
}

/// Made-up dialogues: one prompt shared by `n` rows, each with its own continuation.
fn dialogues(cfg: &LmConfig, n: usize, tp: usize, tc: usize) -> Dialogues {
    let k = cfg.n_q + 1;
    let t = tp + tc;
    let mut codes = vec![0i64; n * k * t];
    for r in 0..n {
        for s in 0..k {
            let card = if s == 0 { cfg.text_card } else { cfg.card };
            for i in 0..t {
                let seed = if i < tp { s * 31 + i * 7 } else { r * 101 + s * 31 + i * 7 };
                codes[(r * k + s) * t + i] = ((seed * 2654435761usize) >> 7) as i64 % card as i64;
            }
        }
    }
    Dialogues { codes, n, k, tp, tc }
}

fn frozen(device: &Device, seed: u64) -> (LmModel, weights::Slots) {
    let (lm, slots) = LmModel::random(config(), device, seed).unwrap();
    (lm.no_grad(), slots)
}

#[test]
fn prefixed_teacher_without_prefix_is_the_teacher_and_a_prefix_changes_it() {
    let device = Device::flex();
    let (lm, _) = LmModel::random(config(), &device, 5).unwrap();
    let d = dialogues(&lm.config, 2, 3, 5);
    let codes = d.continuations(&[0, 1]);
    let (text, audio) = lm.forward_teacher(&codes, 2, 5).unwrap();
    let out = lm.forward_teacher_prefixed(None, &codes, 2, 5).unwrap();
    assert_eq!(floats(text.clone()), floats(out.text));
    assert_eq!(floats(audio.clone()), floats(out.audio));
    assert_eq!(out.hidden.dims(), [2, 5, lm.config.dim]);
    let prefix = backend::floats(vec![0.3; 2 * lm.config.dim], [2, lm.config.dim], &device, DType::F32);
    let p = lm.forward_teacher_prefixed(Some(prefix), &codes, 2, 5).unwrap();
    assert_eq!(p.text.dims(), text.dims());
    let moved = floats(p.text).iter().zip(floats(text)).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(moved > 1e-3, "a prefix should change the logits (max change {moved})");
    let bad = backend::floats(vec![0.0; 3], [1, 3], &device, DType::F32);
    let e = lm.forward_teacher_prefixed(Some(bad), &codes, 2, 5).unwrap_err().to_string();
    assert!(e.contains("prefix of [1, 3]"), "{e}");
}

/// Autodiff's gradient of the KL against central differences, at the coordinates where it is
/// largest (relative error) and a few others (absolute, against the gradient's scale).
fn gradient_check(kind: BackendKind, device: Device) {
    let (lm, _) = frozen(&device.autodiff(), 7);
    let d = dialogues(&lm.config, 3, 4, 5);
    let targets = Targets::new(&lm, &d, &[0, 1, 2]).unwrap();
    let k = 2;
    let x = tg::init_from_prompt(&lm, &d.prompt(0), d.tp, k).unwrap();
    let (loss, grad) = tg::loss_and_grad(&lm, &targets, &x, k).unwrap();
    assert!(loss.is_finite() && loss > 0.0, "{kind}: loss {loss}");
    assert!(grad.iter().all(|g| g.is_finite()), "{kind}: gradient not finite");
    let at = |v: &[f32]| -> f64 {
        let p = backend::floats(v.to_vec(), [k, lm.config.dim], &lm.device(), DType::F32);
        f64::from(floats(targets.kl(&lm, Some(p)).unwrap())[0])
    };
    let scale = grad.iter().fold(0f32, |m, g| m.max(g.abs()));
    assert!(scale > 1e-5, "{kind}: gradient vanishes ({scale})");
    let mut order: Vec<usize> = (0..grad.len()).collect();
    order.sort_by(|&a, &b| grad[b].abs().total_cmp(&grad[a].abs()));
    let picks: Vec<usize> = order[..4].iter().copied().chain([1, 17, lm.config.dim + 3]).collect();
    let eps = 1e-2f32;
    for i in picks {
        let (mut up, mut down) = (x.clone(), x.clone());
        up[i] += eps;
        down[i] -= eps;
        let fd = ((at(&up) - at(&down)) / (2.0 * f64::from(eps))) as f32;
        let err = (fd - grad[i]).abs();
        let rel = err / grad[i].abs().max(1e-12);
        assert!(
            rel < 0.05 || err < 0.02 * scale,
            "{kind}: coordinate {i}: autodiff {} vs finite differences {fd} (rel {rel:.3}, scale {scale})",
            grad[i]
        );
    }
}

#[test]
fn gist_gradient_matches_finite_differences() {
    for (kind, device) in devices() {
        gradient_check(kind, device);
    }
}

#[test]
fn gist_training_lowers_held_out_kl_and_leaves_the_weights() {
    let device = Device::flex().autodiff();
    let (lm, slots) = frozen(&device, 11);
    let before = scratch("gist", "before.safetensors");
    weights::export(&lm, &slots, &before, false).unwrap();
    let d = dialogues(&lm.config, 8, 6, 6);
    let settings = GistTrain { steps: 40, lr: 0.05, log_every: 0 };
    let (values, f) = tg::fit(&lm, &d, 2, None, &settings).unwrap();
    assert_eq!(values.len(), 2 * lm.config.dim);
    assert!(f.prompt.abs() < 1e-4, "the teacher path recomputed one dialogue at a time: {}", f.prompt);
    assert!(f.nothing > 1e-3, "the prompt should matter to the random model: {f:?}");
    assert!(f.gist < 0.85 * f.init && f.gist < 0.9 * f.nothing, "held-out KL not lowered: {f:?}");
    let after = scratch("gist", "after.safetensors");
    weights::export(&lm, &slots, &after, false).unwrap();
    assert_eq!(std::fs::read(&before).unwrap(), std::fs::read(&after).unwrap(), "the LM's weights changed");
}

fn cli(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kokichi"))
        .args(["--backend", "cpu", "gist", "train"])
        .args(args)
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn gist_train_cli_writes_a_gist_with_its_figures_and_names_bad_arguments() {
    let prompt = scratch("gist-cli", "prompt.wav");
    let tone: Vec<f32> = (0..24_000).map(|i| 0.3 * (i as f32 * 0.05).sin()).collect();
    kokichi::audio::write_wav(&prompt, &tone, 24_000).unwrap();
    let out = scratch("gist-cli", "g.safetensors");
    let model = fixture("tiny_model").display().to_string();
    let (p, o) = (prompt.display().to_string(), out.display().to_string());
    let base = ["--model", &model, "--prompt", &p, "--out", &o, "--samples", "4", "--steps", "5"];
    let (ok, err) = cli(&[&base[..], &["--k", "2", "--frames", "6", "--prompt-text", "a tone"]].concat());
    assert!(ok, "{err}");
    let g = kokichi::gist::Gist::read(&out).unwrap();
    assert_eq!((g.k, g.dim), (2, 32));
    for key in ["kl_prompt", "kl_gist", "kl_nothing", "k", "prompt_frames", "model"] {
        assert!(g.meta.contains_key(key), "metadata lacks {key}: {:?}", g.meta);
    }
    assert_eq!(g.meta["prompt_frames"], "13");
    assert_eq!(g.meta["prompt"], "a tone");
    let (ok, err) = cli(&[&base[..], &["--k", "0"]].concat());
    assert!(!ok && err.contains("--k 0"), "{err}");
    let (ok, err) = cli(&[&base[..], &["--k", "2", "--frames", "20"]].concat());
    assert!(!ok && err.contains("context of 8"), "{err}");
}
