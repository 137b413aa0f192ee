//! kokichi's own gradient path: models written by the trainers load back unchanged, and Burn
//! training through the same model code lowers the loss.

mod common;

use burn::prelude::*;
use burn::tensor::DType;
use common::*;
use kokichi::lm::{LmConfig, LmModel};
use kokichi::mimi::{Mimi, MimiConfig};
use kokichi::train;
use kokichi::weights::{self, WeightFile};

fn tmp(name: &str) -> std::path::PathBuf {
    common::scratch("train", name)
}

#[test]
fn exported_codec_reloads_identically() {
    let device = Device::flex();
    let dir = fixture("mimi_a");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let cfg = MimiConfig::from_json(&json["mimi"].to_string()).unwrap();
    let mut w = WeightFile::open(&dir.join("mimi.safetensors"), &device, DType::F32).unwrap();
    let mimi = Mimi::build(&mut w, cfg.clone(), 8).unwrap();
    let slots = w.finish().unwrap();
    let path = tmp("mimi.safetensors");
    weights::export(&mimi, &slots, &path, false).unwrap();
    let again = Mimi::load(&path, cfg, 8, &device, DType::F32).unwrap();
    let exp = Expected::open(dir.join("expected.safetensors"));
    let shape = exp.shape("input");
    let pcm = exp.f32("input");
    let a = ints(mimi.encode(mimi.pcm_tensor(pcm.clone(), [shape[0], shape[1]])).unwrap());
    let b = ints(again.encode(again.pcm_tensor(pcm, [shape[0], shape[1]])).unwrap());
    assert_eq!(a, b);
    assert_eq!(a, exp.i64("batch.codes"));
}

#[test]
fn exported_lm_reloads_identically_in_f16_too() {
    let device = Device::flex();
    let dir = fixture("lm_other");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let cfg = LmConfig::from_json(&json["lm"].to_string()).unwrap();
    let mut w = WeightFile::open(&dir.join("model.safetensors"), &device, DType::F32).unwrap();
    let lm = LmModel::build(&mut w, cfg.clone()).unwrap();
    let slots = w.finish().unwrap();
    let exp = Expected::open(dir.join("expected.safetensors"));
    let shape = exp.shape("teacher.codes");
    let codes = exp.i64("teacher.codes");
    let (want, _) = lm.forward_teacher(&codes, shape[0], shape[2]).unwrap();
    for half in [false, true] {
        let path = tmp(&format!("lm-{half}.safetensors"));
        weights::export(&lm, &slots, &path, half).unwrap();
        let again = LmModel::load(&path, cfg.clone(), &device, DType::F32).unwrap();
        let (got, _) = again.forward_teacher(&codes, shape[0], shape[2]).unwrap();
        let tol = if half { 5e-2 } else { 0.0 };
        assert_close(&format!("reloaded logits (f16 file: {half})"), &floats(got), &floats(want.clone()), tol);
    }
}

#[test]
fn burn_training_lowers_the_lm_loss() {
    let device = Device::flex().autodiff();
    let dir = fixture("lm_real");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let cfg = LmConfig::from_json(&json["lm"].to_string()).unwrap();
    let (lm, slots) = LmModel::random(cfg.clone(), &device, 3).unwrap();
    // A small fixed set of sequences the model can fit.
    let exp = Expected::open(dir.join("expected.safetensors"));
    let shape = exp.shape("teacher.codes");
    let codes = exp.i64("teacher.codes");
    let data = train::lm::TokenSet { values: codes.clone(), n: shape[0], k: shape[1], t: shape[2] };
    let before = {
        let (t, a) = train::lm::loss(&lm, &codes, shape[0], shape[2], 0.5).unwrap();
        floats(t)[0] + floats(a)[0]
    };
    let settings =
        train::lm::LmTrain { steps: 60, batch: 2, lr: 3e-3, pad_weight: 0.5, seed: 1, log_every: 20, save_every: 60 };
    let out = tmp("lm-run");
    let (lm, _) = train::lm::train(lm, &slots, &data, &settings, &out, 0).unwrap();
    let (t, a) = train::lm::loss(&lm, &codes, shape[0], shape[2], 0.5).unwrap();
    let after = floats(t)[0] + floats(a)[0];
    assert!(after < 0.6 * before, "loss {before} -> {after}");
    // The run's output is a loadable model.
    let reloaded = LmModel::load(&out.join("model.safetensors"), cfg, &Device::flex(), DType::F32).unwrap();
    assert_eq!(reloaded.config.num_layers, 2);
    assert_eq!(train::Progress::read(&out).unwrap().step, 60);
}

#[test]
fn burn_training_lowers_the_codec_loss() {
    let device = Device::flex().autodiff();
    let dir = fixture("mimi_a");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let cfg = MimiConfig::from_json(&json["mimi"].to_string()).unwrap();
    let (mimi, slots) = Mimi::random(cfg.clone(), 4, &device, 5).unwrap();
    let mel = train::codec::MelLoss::new(&device, 24000);
    let exp = Expected::open(dir.join("expected.safetensors"));
    let pcm: Vec<f32> = exp.f32("input")[..1920 * 6].to_vec();
    let x = Tensor::<2>::from_data(TensorData::new(pcm, [1, 1920 * 6]), &device);
    let loss = |m: &Mimi| {
        let (y, vq) = m.train_forward(x.clone()).unwrap();
        mel.forward(y, x.clone()) + vq
    };
    let before = floats(loss(&mimi))[0];
    let mut optim = burn::optim::AdamWConfig::new().init();
    let mut mimi = mimi;
    for _ in 0..25 {
        let l = loss(&mimi);
        let grads = burn::optim::GradientsParams::from_grads(l.backward(), &mimi);
        mimi = optim.step(2e-3, mimi, grads);
    }
    let after = floats(loss(&mimi))[0];
    assert!(after < 0.8 * before, "loss {before} -> {after}");
    let path = tmp("codec.safetensors");
    weights::export(&mimi, &slots, &path, false).unwrap();
    Mimi::load(&path, cfg, 4, &Device::flex(), DType::F32).unwrap();
}
