//! Shared test helpers: one device per backend per test binary, fixture readers, comparisons.
#![allow(dead_code)]

pub mod live;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use burn::prelude::*;
use kokichi::backend::{self, BackendKind, Precision};
use safetensors::{Dtype, SafeTensors};

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("fixtures").join(name)
}

/// A path in this test run's scratch folder, `$TMPDIR/kokichi-<tag>-<pid>/<name>`, made on first use:
/// one folder per test binary and process, so parallel runs never share files.
pub fn scratch(tag: &str, name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kokichi-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// The devices the parity tests run on: flex always, wgpu (lavapipe in CI) too.
/// Set `KOKICHI_TEST_BACKENDS=cpu` to skip wgpu locally.
pub fn devices() -> Vec<(BackendKind, Device)> {
    static DEVICES: OnceLock<Vec<(BackendKind, Device)>> = OnceLock::new();
    DEVICES
        .get_or_init(|| {
            let wanted = std::env::var("KOKICHI_TEST_BACKENDS").unwrap_or_else(|_| "cpu,wgpu".into());
            let mut out = Vec::new();
            for name in wanted.split(',') {
                let kind: BackendKind = name.trim().parse().expect("backend name");
                let dev = backend::device(kind, Precision::F32).expect("device");
                eprintln!("test backend {kind}: adapter {}", backend::adapter_name(&dev));
                out.push((kind, dev));
            }
            out
        })
        .clone()
}

/// A tensor of an expected-values file.
pub struct Expected {
    bytes: Vec<u8>,
    pub path: PathBuf,
}

impl Expected {
    pub fn open(path: PathBuf) -> Self {
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Self { bytes, path }
    }

    fn st(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).expect("safetensors")
    }

    pub fn shape(&self, name: &str) -> Vec<usize> {
        self.st().tensor(name).unwrap_or_else(|_| panic!("missing {name}")).shape().to_vec()
    }

    pub fn f32(&self, name: &str) -> Vec<f32> {
        let st = self.st();
        let v = st.tensor(name).unwrap_or_else(|_| panic!("missing {name}"));
        assert_eq!(v.dtype(), Dtype::F32, "{name}");
        v.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    }

    pub fn i64(&self, name: &str) -> Vec<i64> {
        let st = self.st();
        let v = st.tensor(name).unwrap_or_else(|_| panic!("missing {name}"));
        assert_eq!(v.dtype(), Dtype::I64, "{name}");
        v.data().chunks_exact(8).map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])).collect()
    }

    pub fn tensor<const D: usize>(&self, name: &str, device: &Device) -> Tensor<D> {
        let shape: [usize; D] = self.shape(name).try_into().expect("rank");
        Tensor::from_data(TensorData::new(self.f32(name), shape), device)
    }
}

/// Largest absolute difference; panics with context when above `tol`.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = 0f32;
    let mut at = 0;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let d = (g - w).abs();
        // True for NaN too, which must count as the worst.
        #[allow(clippy::neg_cmp_op_on_partial_ord)]
        if !(d <= worst) {
            worst = d;
            at = i;
        }
    }
    assert!(worst <= tol, "{what}: max abs diff {worst:e} at {at} (got {}, want {}) > {tol:e}", got[at], want[at]);
}

pub fn floats<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    backend::read_floats(t).expect("read")
}

pub fn ints<const D: usize>(t: Tensor<D, Int>) -> Vec<i64> {
    backend::read_ints(t).expect("read")
}

/// Greedy steps of two streams of `lm` on made-up user codes: the text and audio tokens of each
/// step that produced some.
pub fn greedy_tokens(lm: &kokichi::lm::LmModel, steps: usize) -> Vec<(Vec<i64>, Vec<i64>)> {
    let configs = [kokichi::lm::GenConfig::greedy(), kokichi::lm::GenConfig::greedy()];
    let mut state = lm.init_state(&configs).expect("lm state");
    let user = lm.config.user_streams();
    let mut out = Vec::new();
    for i in 0..steps {
        let codes: Vec<i64> = (0..2 * user).map(|k| ((i * 7 + k * 13) % lm.config.card) as i64).collect();
        if let Some(o) = lm.step(&mut state, &codes, user).expect("lm step") {
            out.push((o.text, o.audio));
        }
    }
    out
}
