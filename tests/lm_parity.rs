//! The Moshi LM against the reference `moshi` package (fixtures from scripts/gen_lm_fixtures.py):
//! teacher-forced logits within 1e-4, greedy `LMGen` tokens identical over 25 steps (beyond the
//! KV context, so the ring cache wraps), for Moshi's real stream layout, another one, and
//! PersonaPlex's (the depth transformer generates all 16 audio streams).

mod common;

use burn::prelude::*;
use burn::tensor::DType;
use common::*;
use kokichi::lm::{GenConfig, LmConfig, LmModel};

fn load(name: &str, device: &Device) -> (LmModel, Expected) {
    let dir = fixture(&format!("lm_{name}"));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let cfg = LmConfig::from_json(&json["lm"].to_string()).unwrap();
    let lm = LmModel::load(&dir.join("model.safetensors"), cfg, device, DType::F32).unwrap();
    (lm, Expected::open(dir.join("expected.safetensors")))
}

/// Compares where the reference has a value (NaN marks invalid positions).
fn close_where_valid(what: &str, got: &[f32], want: &[f32], tol: f32) -> usize {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut n = 0;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if w.is_nan() {
            continue;
        }
        n += 1;
        assert!((g - w).abs() <= tol, "{what}: at {i} got {g}, want {w}");
    }
    n
}

fn teacher_case(name: &str) {
    for (kind, device) in devices() {
        let (lm, exp) = load(name, &device);
        let shape = exp.shape("teacher.codes");
        let (b, t) = (shape[0], shape[2]);
        let (text, audio) = lm.forward_teacher(&exp.i64("teacher.codes"), b, t).unwrap();
        let n = close_where_valid(
            &format!("{kind} {name} text logits"),
            &floats(text),
            &exp.f32("teacher.text_logits"),
            1e-4,
        );
        assert!(n > 0);
        let n =
            close_where_valid(&format!("{kind} {name} audio logits"), &floats(audio), &exp.f32("teacher.logits"), 1e-4);
        assert!(n > 0);
    }
}

fn greedy_case(name: &str) {
    greedy_with(name, |device| load(name, device));
}

fn greedy_with(name: &str, load: impl Fn(&Device) -> (LmModel, Expected)) {
    for (kind, device) in devices() {
        let (lm, exp) = load(&device);
        let ushape = exp.shape("gen.user");
        let (b, steps, cols) = (ushape[0], ushape[1], ushape[2]);
        let user = exp.i64("gen.user");
        let want = exp.i64("gen.tokens");
        let tshape = exp.shape("gen.tokens");
        let (k, n_out) = (tshape[1], tshape[2]);
        let mut state = lm.init_state(&vec![GenConfig::greedy(); b]).unwrap();
        let mut got: Vec<Vec<i64>> = Vec::new(); // per produced step: [B * k]
        let mut nones = 0;
        for s in 0..steps {
            let mut codes = Vec::with_capacity(b * cols);
            for r in 0..b {
                codes.extend_from_slice(&user[(r * steps + s) * cols..(r * steps + s + 1) * cols]);
            }
            match lm.step(&mut state, &codes, cols).unwrap() {
                None => nones += 1,
                Some(out) => {
                    let dep_q = k - 1;
                    let mut col = Vec::with_capacity(b * k);
                    for r in 0..b {
                        col.push(out.text[r]);
                        col.extend_from_slice(&out.audio[r * dep_q..(r + 1) * dep_q]);
                    }
                    got.push(col);
                }
            }
        }
        assert_eq!(nones, steps - n_out, "{kind} {name}: steps without output");
        for (i, col) in got.iter().enumerate() {
            for r in 0..b {
                for s in 0..k {
                    assert_eq!(
                        col[r * k + s],
                        want[(r * k + s) * n_out + i],
                        "{kind} {name}: step {i} row {r} stream {s}"
                    );
                }
            }
        }
    }
}

#[test]
fn teacher_forced_logits_real_layout() {
    teacher_case("real");
}

#[test]
fn teacher_forced_logits_other_layout() {
    teacher_case("other");
}

#[test]
fn greedy_generation_real_layout() {
    greedy_case("real");
}

#[test]
fn greedy_generation_other_layout() {
    greedy_case("other");
}

#[test]
fn teacher_forced_logits_sixteen_generated_streams() {
    teacher_case("dep16");
}

#[test]
fn greedy_generation_sixteen_generated_streams() {
    greedy_case("dep16");
}

/// A Kyutai snapshot as moshika-rl-seamless and J-Moshi ship it: moshiko's files plus a
/// `config.json` with the LM's keyword arguments at the top level and the loader's own keys.
#[test]
fn greedy_generation_from_a_kyutai_snapshot_config() {
    let src = fixture("lm_real");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    let mut config = json["lm"].as_object().unwrap().clone();
    for (k, v) in [
        ("model_type", serde_json::json!("moshi")),
        ("moshi_name", serde_json::json!("model.safetensors")),
        ("mimi_name", serde_json::json!(kokichi::model_dir::KYUTAI_MIMI)),
        ("tokenizer_name", serde_json::json!(kokichi::model_dir::KYUTAI_TOKENIZER)),
        ("lm_gen_config", serde_json::json!({"temp": 0.8, "temp_text": 0.7, "top_k": 250, "top_k_text": 25})),
        ("depformer_causal", serde_json::json!(true)),
    ] {
        config.insert(k.into(), v);
    }
    let dir = scratch("kyutai-snapshot", "snapshot");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), serde_json::Value::Object(config).to_string()).unwrap();
    std::fs::copy(src.join("model.safetensors"), dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join(kokichi::model_dir::KYUTAI_MIMI), b"").unwrap();
    let files = kokichi::model_dir::from_dir(&dir).unwrap();
    assert_eq!(files.lm_config, LmConfig::from_json(&json["lm"].to_string()).unwrap());
    assert_eq!(files.codebooks, 8);
    greedy_with("kyutai snapshot", |device| {
        let lm = LmModel::load(&files.lm, files.lm_config.clone(), device, DType::F32).unwrap();
        (lm, Expected::open(src.join("expected.safetensors")))
    });
    std::fs::remove_dir_all(&dir).ok();
}
