//! Real checkpoint layouts load unchanged: files with exactly the tensor names and shapes of
//! Kyutai's released Mimi and moshiko checkpoints (tests/fixtures/reference/layout_*.txt, read
//! off the real files), stored as bf16 as Kyutai ships them. The data is a sparse all-zero file,
//! so the test costs no disk; the moshiko file keeps only its first layers to fit in memory.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::tensor::DType;
use common::fixture;
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
    while h.len() % 8 != 0 {
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
