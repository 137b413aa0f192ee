//! 8-bit LMs (`--dtype q8`): a random LM held in 8 bits steps through the kernels and picks the
//! tokens its plain-Burn references pick, on every test backend; moshiko's weights held that way
//! fit in 8 GB, counted from the tensors loaded on the cpu backend; and `kokichi quantize`
//! writes a folder that loads in 8 bits and answers as the folder quantized at load does. Its own
//! binary: the kernels' switch is process-wide.

mod common;

use burn::prelude::*;
use burn::tensor::DType;
use common::*;
use kokichi::backend::Precision;
use kokichi::kernels;
use kokichi::lm::{LmConfig, LmModel};
use kokichi::weights::{HostData, RandomWeights, Slots, Weights};

/// The switch is process-wide: one test at a time flips it.
static SWITCH: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Whether every matrix is held in 8 bits but the narrow output projections, which the attention
/// launch reads as floats (`kernels::attention::PROJECT_MAX_WIDTH`), and some are.
fn in_8_bits(lm: &LmModel) -> bool {
    let float_ok = |m: &kokichi::nn::matrix::Matrix| {
        let [k, n] = m.weight.val().dims();
        k == n && k <= kernels::attention::PROJECT_MAX_WIDTH
    };
    let ms = lm.matrices();
    ms.iter().all(|m| m.q8.is_some() || float_ok(m)) && ms.iter().filter(|m| m.q8.is_some()).count() > ms.len() / 2
}

#[test]
fn an_8_bit_lm_through_the_kernels_picks_the_references_tokens() {
    let _one = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    for (kind, device) in devices() {
        // Activations in f32, so that the plain-Burn reference (dequantized weights times f32
        // rows) and the kernel (f32 sums of the 8-bit values) differ by rounding alone.
        let mut w = RandomWeights::new(&device, DType::F32, 5);
        w.q8 = true;
        let lm = LmModel::build(&mut w, LmConfig::kokichi_tiny(300)).unwrap();
        assert!(in_8_bits(&lm), "{kind}: every matrix in 8 bits");
        kernels::set_enabled(true);
        let fused = greedy_tokens(&lm, 10);
        kernels::set_enabled(false);
        let plain = greedy_tokens(&lm, 10);
        kernels::set_enabled(true);
        assert!(fused.len() >= 6, "{kind}: {} steps gave tokens", fused.len());
        assert_eq!(fused, plain, "{kind}: tokens");
    }
}

/// A weight source of constant values: loading moshiko's shapes without drawing 7 G random values.
struct Constant {
    device: Device,
    slots: Slots,
}

impl Weights for Constant {
    fn device(&self) -> &Device {
        &self.device
    }
    fn dtype(&self) -> DType {
        DType::F16
    }
    fn take(&mut self, _name: &str, shape: &[usize]) -> kokichi::Result<HostData> {
        Ok(HostData::F32(vec![0.01; shape.iter().product()]))
    }
    fn skip(&mut self, _name: &str) {}
    fn slots(&mut self) -> &mut Slots {
        &mut self.slots
    }
    fn q8(&self) -> bool {
        true
    }
}

#[test]
fn moshiko_in_8_bits_fits_in_8_gb() {
    let mut w = Constant { device: Device::flex(), slots: Slots::default() };
    let lm = LmModel::build(&mut w, LmConfig::moshiko()).unwrap();
    assert!(in_8_bits(&lm), "every matrix in 8 bits");
    let bytes = lm.resident_bytes();
    eprintln!("moshiko in 8 bits: {:.3} GB resident", bytes as f64 / 1e9);
    assert!(bytes <= 8_000_000_000, "{bytes} bytes");
    // Every 7.7 G value is there once: not less than a byte each.
    assert!(bytes >= 7_600_000_000, "{bytes} bytes: weights missing?");
}

/// `kokichi quantize` writes a folder that loads in 8 bits (without `--dtype q8`) and steps
/// exactly as the original folder quantized at load.
#[test]
fn a_quantized_folder_loads_as_it_was_quantized() {
    let dir = scratch("q8", "tiny_model_q8");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_kokichi"))
        .args(["quantize", "--model"])
        .arg(fixture("tiny_model"))
        .arg("--out")
        .arg(&dir)
        .status()
        .unwrap();
    assert!(status.success(), "kokichi quantize failed");
    for f in ["config.json", "mimi.safetensors", "model.safetensors", "tokenizer.model"] {
        assert!(dir.join(f).is_file(), "{f} written");
    }
    let device = Device::flex();
    let original = kokichi::model_dir::resolve(fixture("tiny_model").to_str().unwrap()).unwrap();
    let quantized = kokichi::model_dir::resolve(dir.to_str().unwrap()).unwrap();
    let at_load = LmModel::load_as(&original.lm, original.lm_config.clone(), &device, Precision::Q8).unwrap();
    // Asked for f32, a quantized file still loads in 8 bits.
    let written = LmModel::load_as(&quantized.lm, quantized.lm_config.clone(), &device, Precision::F32).unwrap();
    assert!(in_8_bits(&written), "the written folder loads in 8 bits");
    assert_eq!(written.resident_bytes(), at_load.resident_bytes());
    assert_eq!(greedy_tokens(&written, 8), greedy_tokens(&at_load, 8), "the same tokens");
}
