//! The Moshi LM against the reference `moshi` package (fixtures from scripts/gen_lm_fixtures.py):
//! teacher-forced logits within 1e-4, greedy `LMGen` tokens identical over 25 steps (beyond the
//! KV context, so the ring cache wraps), for Moshi's real stream layout and another one.

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
    for (kind, device) in devices() {
        let (lm, exp) = load(name, &device);
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
