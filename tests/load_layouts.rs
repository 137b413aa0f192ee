//! Real checkpoint layouts load unchanged: files with exactly the tensor names and shapes of
//! Kyutai's released Mimi and moshiko checkpoints (tests/fixtures/reference/layout_*.txt, read
//! off the real files), stored as bf16 as Kyutai ships them. The data is a sparse all-zero file,
//! so the test costs no disk; the moshiko file keeps only its first layers to fit in memory.
//! NVIDIA's PersonaPlex-7B layout is moshiko's with the changes listed in benob/personaplex-mlx
//! `docs/weight_diff.md` (475 tensors: 16 generated codebooks, doubled per-step depformer
//! attention); the LM configuration of a snapshot without `config.json` is inferred from these.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::tensor::DType;
use common::fixture;
use kokichi::lm::infer::infer;
use kokichi::lm::{GenConfig, LmConfig, LmModel};
use kokichi::mimi::{Mimi, MimiConfig};

/// (name, shape) pairs of a layout file.
fn layout(name: &str) -> Vec<(String, Vec<usize>)> {
    let text = std::fs::read_to_string(fixture("reference").join(name)).unwrap();
    text.lines()
        .map(|l| {
            let mut parts = l.split('\t');
            let n = parts.next().unwrap().to_string();
            let shape = parts.next().unwrap();
            let dims = shape
                .trim_matches(|c| c == '[' || c == ']')
                .split(',')
                .filter(|s| !s.trim().is_empty())
                .map(|s| s.trim().parse().unwrap())
                .collect();
            (n, dims)
        })
        .collect()
}

/// Writes a bf16 safetensors file of zeros with these tensors, sparse on disk.
fn sparse_bf16(path: &Path, tensors: &[(String, Vec<usize>)]) {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, shape) in tensors {
        let bytes = shape.iter().product::<usize>() * 2;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut h = serde_json::Value::Object(header).to_string().into_bytes();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(&(h.len() as u64).to_le_bytes()).unwrap();
    f.write_all(&h).unwrap();
    f.set_len((8 + h.len() + offset) as u64).unwrap();
}

fn tmp(name: &str) -> PathBuf {
    common::scratch("layouts", name)
}

#[test]
fn real_mimi_layout_loads_from_bf16() {
    let tensors = layout("layout_mimi.txt");
    assert_eq!(tensors.len(), 318);
    let path = tmp("mimi.safetensors");
    sparse_bf16(&path, &tensors);
    let device = Device::flex();
    let mimi = Mimi::load(&path, MimiConfig::v0_1(), 8, &device, DType::F32).unwrap();
    assert_eq!(mimi.frame_size(), 1920);
    assert_eq!(mimi.quantizer.total_codebooks(), 32);
    // One streaming frame through the full-size graph.
    let mut enc = mimi.init_enc_state(1).unwrap();
    let codes = mimi.encode_step(&mut enc, mimi.pcm_tensor(vec![0.0; 1920], [1, 1920])).unwrap();
    assert_eq!(codes.dims(), [1, 8]);
    let mut dec = mimi.init_dec_state(1).unwrap();
    let audio = mimi.decode_step(&mut dec, codes).unwrap();
    assert_eq!(audio.dims(), [1, 1920]);
    // A missing tensor is named.
    let short: Vec<_> = tensors.iter().filter(|(n, _)| !n.starts_with("decoder.model.14")).cloned().collect();
    sparse_bf16(&path, &short);
    let err = Mimi::load(&path, MimiConfig::v0_1(), 8, &device, DType::F32).unwrap_err().to_string();
    assert!(err.contains("decoder.model.14.conv.conv.weight") && err.contains("missing"), "{err}");
    std::fs::remove_file(&path).ok();
}

#[test]
fn real_moshiko_layout_loads_from_bf16_in_f16() {
    // Everything but temporal layers >= 2 and depformer layers >= 1 (memory).
    let keep = |n: &str| {
        let layer = |prefix: &str| n.strip_prefix(prefix).and_then(|r| r.split('.').next()?.parse::<usize>().ok());
        match (layer("transformer.layers."), layer("depformer.layers.")) {
            (Some(i), _) => i < 2,
            (_, Some(i)) => i < 1,
            _ => true,
        }
    };
    let tensors: Vec<_> = layout("layout_moshiko.txt").into_iter().filter(|(n, _)| keep(n)).collect();
    let path = tmp("moshiko.safetensors");
    sparse_bf16(&path, &tensors);
    let cfg = LmConfig { num_layers: 2, depformer_num_layers: 1, ..LmConfig::moshiko() };
    let device = Device::flex();
    let lm = LmModel::load(&path, cfg.clone(), &device, DType::F16).unwrap();
    assert_eq!(lm.text_emb.val().dtype(), DType::F16);
    assert_eq!(lm.text_linear.dims(), [4096, 32000]); // held input-major
    assert_eq!(lm.linears.len(), 8);
    // A config that does not match the file is an error naming a tensor.
    let wrong = LmConfig { num_layers: 1, ..cfg };
    let err = LmModel::load(&path, wrong, &device, DType::F16).unwrap_err().to_string();
    assert!(err.contains("transformer.layers.1") && err.contains("unexpected"), "{err}");
    drop(lm);
    std::fs::remove_file(&path).ok();
}

#[test]
fn full_layout_names_are_what_the_loader_asks_for() {
    // The temporal layers of the layout are numbered 0..32 and the depformer's 0..6: the same
    // names the loader derives from LmConfig::moshiko().
    let tensors = layout("layout_moshiko.txt");
    assert_eq!(tensors.len(), 355);
    let cfg = LmConfig::moshiko();
    let max = |prefix: &str| {
        tensors
            .iter()
            .filter_map(|(n, _)| n.strip_prefix(prefix)?.split('.').next()?.parse::<usize>().ok())
            .max()
            .unwrap()
    };
    assert_eq!(max("transformer.layers.") + 1, cfg.num_layers);
    assert_eq!(max("depformer.layers.") + 1, cfg.depformer_num_layers);
    assert_eq!(max("emb.") + 1, cfg.n_q);
    assert_eq!(max("linears.") + 1, cfg.dep_q);
    let _ = GenConfig::greedy();
}

/// PersonaPlex-7B's layout: moshiko's plus the per-step weights of codebooks 8..16 and the
/// depformer attention of 16 steps instead of 8.
fn personaplex_layout() -> Vec<(String, Vec<usize>)> {
    let mut out: Vec<(String, Vec<usize>)> = layout("layout_moshiko.txt")
        .into_iter()
        .map(|(n, mut s)| {
            if n.starts_with("depformer.layers.") && n.contains(".self_attn.") {
                s[0] *= 2;
            }
            (n, s)
        })
        .collect();
    for k in 8..16 {
        out.push((format!("linears.{k}.weight"), vec![2048, 1024]));
        out.push((format!("depformer_in.{k}.weight"), vec![1024, 4096]));
        out.push((format!("depformer_emb.{}.weight", k - 1), vec![2049, 1024]));
        for l in 0..6 {
            out.push((format!("depformer.layers.{l}.gating.{k}.linear_in.weight"), vec![5632, 1024]));
            out.push((format!("depformer.layers.{l}.gating.{k}.linear_out.weight"), vec![1024, 2816]));
        }
    }
    out
}

fn shapes(tensors: &[(String, Vec<usize>)]) -> std::collections::BTreeMap<String, Vec<usize>> {
    tensors.iter().cloned().collect()
}

#[test]
fn moshiko_configuration_is_inferred_from_its_tensors() {
    assert_eq!(infer(&shapes(&layout("layout_moshiko.txt"))).unwrap(), LmConfig::moshiko());
}

#[test]
fn personaplex_configuration_is_inferred_from_its_tensors() {
    let tensors = personaplex_layout();
    assert_eq!(tensors.len(), 475);
    let cfg = infer(&shapes(&tensors)).unwrap();
    assert_eq!(cfg, LmConfig { dep_q: 16, ..LmConfig::moshiko() });
    // A depformer whose attention is not per generated codebook does not fit.
    let mut bad = shapes(&tensors);
    bad.insert("depformer.layers.0.self_attn.in_proj_weight".into(), vec![24576, 1024]);
    let err = infer(&bad).unwrap_err();
    assert!(err.contains("in_proj_weight") && err.contains("24576"), "{err}");
}

#[test]
fn a_snapshot_without_config_json_is_configured_from_its_tensors() {
    // A PersonaPlex snapshot cut to 2 temporal layers and 1 depformer layer (memory).
    let keep = |n: &str| {
        let layer = |prefix: &str| n.strip_prefix(prefix).and_then(|r| r.split('.').next()?.parse::<usize>().ok());
        match (layer("transformer.layers."), layer("depformer.layers.")) {
            (Some(i), _) => i < 2,
            (_, Some(i)) => i < 1,
            _ => true,
        }
    };
    let tensors: Vec<_> = personaplex_layout().into_iter().filter(|(n, _)| keep(n)).collect();
    let dir = tmp("personaplex");
    std::fs::create_dir_all(&dir).unwrap();
    sparse_bf16(&dir.join("model.safetensors"), &tensors);
    sparse_bf16(&dir.join(kokichi::model_dir::KYUTAI_MIMI), &layout("layout_mimi.txt"));
    let files = kokichi::model_dir::from_dir(&dir).unwrap();
    let want = LmConfig { dep_q: 16, num_layers: 2, depformer_num_layers: 1, ..LmConfig::moshiko() };
    assert_eq!(files.lm_config, want);
    assert_eq!(files.codebooks, 8);
    // It greedy-steps: one text and 16 audio tokens a frame once the delay of 1 has passed.
    let device = Device::flex();
    let lm = LmModel::load(&files.lm, files.lm_config.clone(), &device, DType::F16).unwrap();
    assert_eq!(lm.linears.len(), 16);
    let mut state = lm.init_state(&[GenConfig::greedy()]).unwrap();
    let outs: Vec<_> = (0..3).map(|_| lm.step(&mut state, &[], 0).unwrap()).collect();
    assert!(outs[0].is_none());
    for out in outs[1..].iter().map(|o| o.as_ref().unwrap()) {
        assert_eq!((out.text.len(), out.audio.len()), (1, 16));
        assert!(out.audio.iter().all(|&t| (0..2048).contains(&t)));
    }
    drop(lm);
    // Tensors that fit no Moshi LM: one line naming the file and asking for a config.json.
    sparse_bf16(&dir.join("model.safetensors"), &tensors[..tensors.len() / 2]);
    let err = kokichi::model_dir::from_dir(&dir).unwrap_err().to_string();
    assert!(err.contains("model.safetensors") && err.contains("config.json") && !err.contains('\n'), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}
