//! Fuzzes loading a model folder through kokichi's own loader: the input is split into a
//! `config.json` and a safetensors file (a little-endian u16 gives the config's length; 0xFFFF:
//! no `config.json`, a Kyutai snapshot whose LM configuration is inferred from the tensors),
//! written to a scratch folder, then `model_dir::from_dir` reads the folder, the configuration is
//! inferred from the tensors' header, and `WeightFile` opens the weights and decodes every tensor
//! (`stored`, `host`, `read_int_tensor`).
//! Run with a memory limit, e.g. `-rss_limit_mb=2048 -malloc_limit_mb=256`.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use kokichi::backend::{self, BackendKind, Precision};
use kokichi::weights::{self, WeightFile};
use libfuzzer_sys::fuzz_target;

struct Setup {
    dir: PathBuf,
    device: burn::prelude::Device,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("kokichi-fuzz-model-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch folder");
        let device = backend::device(BackendKind::Cpu, Precision::F32).expect("cpu device");
        Setup { dir, device }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((len, rest)) = data.split_first_chunk::<2>() else { return };
    let len = u16::from_le_bytes(*len);
    let split = (len as usize).min(rest.len());
    let (config, tensors) = if len == u16::MAX { (&rest[..0], rest) } else { rest.split_at(split) };
    let s = setup();
    let write = |name: &str, bytes: &[u8]| std::fs::write(s.dir.join(name), bytes).expect("scratch file");
    if len == u16::MAX {
        let _ = std::fs::remove_file(s.dir.join("config.json"));
        write(kokichi::model_dir::KYUTAI_MIMI, tensors);
    } else {
        let _ = std::fs::remove_file(s.dir.join(kokichi::model_dir::KYUTAI_MIMI));
        write("config.json", config);
    }
    write("model.safetensors", tensors);
    write("mimi.safetensors", tensors);
    let _ = kokichi::model_dir::from_dir(&s.dir);
    let path = s.dir.join("model.safetensors");
    let _ = kokichi::lm::infer::infer_file(&path);
    let Ok(mut file) = WeightFile::open(&path, &s.device, burn::tensor::DType::F32) else { return };
    let names: Vec<String> = file.names().map(str::to_string).collect();
    for name in &names {
        let _ = file.stored(name).map(|(_, _, bytes)| bytes.len());
        if let Some(shape) = file.shape_of(name).map(<[usize]>::to_vec) {
            let _ = file.host(name, &shape);
        }
        let _ = weights::read_int_tensor(&path, name);
    }
});
