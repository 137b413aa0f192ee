//! Picking the compute device at run time (Burn 0.22 has no backend type parameter) and the
//! small host <-> device helpers the models share.
//!
//! `auto` (the default) takes wgpu where its adapter is a hardware GPU and the `cpu` backend
//! where it is a software rasterizer (Mesa's lavapipe/llvmpipe, SwiftShader, WARP), which runs
//! kokichi's models slower than Burn's own CPU backend. `wgpu` is Vulkan, Metal or DX12, software
//! adapters included; `cpu` is Burn's pure-Rust `flex` backend. The model code is identical on
//! both.
//!
//! Every upload and read-back of a model step goes through the helpers here, which count them
//! for [`cost`](crate::cost).

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use burn::prelude::*;
use burn::tensor::wgpu::wgpu;
use burn::tensor::{Bool, DType};

use crate::cost;
use crate::error::{Error, Result};

/// Which Burn backend runs the models.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// wgpu on a hardware GPU, else the CPU backend ([`resolve`]).
    #[default]
    Auto,
    /// Burn's wgpu backend (Vulkan / Metal / DX12 / lavapipe).
    Wgpu,
    /// Burn's `flex` CPU backend.
    Cpu,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Auto => "auto",
            BackendKind::Wgpu => "wgpu",
            BackendKind::Cpu => "cpu",
        })
    }
}

impl FromStr for BackendKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(BackendKind::Auto),
            "wgpu" | "gpu" => Ok(BackendKind::Wgpu),
            "cpu" | "flex" => Ok(BackendKind::Cpu),
            other => Err(Error::config("backend", format!("unknown backend `{other}` (expected auto, wgpu or cpu)"))),
        }
    }
}

/// Floating point type the weights and activations are kept in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// 32-bit floats: exact parity with the reference.
    #[default]
    F32,
    /// 16-bit IEEE floats: half the memory, for large models on GPUs.
    F16,
    /// The LM's products' weights and embedding tables in 8 bits (per-column scales in blocks of
    /// 128 rows, `kernels/q8.rs`), everything else in f16: a quarter of f32's memory.
    Q8,
}

impl Precision {
    /// The dtype activations and unquantized weights are in.
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::F16 | Precision::Q8 => DType::F16,
        }
    }

    /// Whether the LM's matrices are held in 8 bits.
    pub fn quantized(self) -> bool {
        self == Precision::Q8
    }
}

impl FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(Precision::F32),
            "f16" => Ok(Precision::F16),
            "q8" => Ok(Precision::Q8),
            "bf16" => Err(Error::config(
                "dtype",
                "bf16 is not computed correctly on wgpu; use f16 or f32 (bf16 checkpoints are cast at load)",
            )),
            other => Err(Error::config("dtype", format!("unknown dtype `{other}` (expected f32, f16 or q8)"))),
        }
    }
}

/// The wgpu device kokichi made, with the handles Burn's runtime uses (adapter and queue).
struct WgpuHandles {
    device: Device,
    adapter: wgpu::Adapter,
    queue: wgpu::Queue,
}

static WGPU: OnceLock<std::result::Result<WgpuHandles, String>> = OnceLock::new();

/// The wgpu device, made once per process on the default adapter (a high-performance GPU
/// where there is one), with the Vulkan loader's and drivers' stderr chatter routed to the
/// debug log.
fn wgpu_handles() -> Result<&'static WgpuHandles> {
    let made = WGPU.get_or_init(|| {
        let _quiet = crate::quiet_stderr::Quiet::start("wgpu adapter");
        let made = std::panic::catch_unwind(|| Device::wgpu_options().init_with_setup());
        match made {
            Ok(Ok((device, setup))) => {
                // Force the runtime's first use now rather than at the first model call.
                let _ = Tensor::<1>::zeros([1], &device).into_data();
                Ok(WgpuHandles { device, adapter: setup.adapter, queue: setup.queue })
            }
            Ok(Err(e)) => Err(format!("{e}")),
            Err(_) => Err("the wgpu runtime panicked while starting".into()),
        }
    });
    made.as_ref().map_err(|e| {
        Error::Backend(format!(
            "no usable wgpu adapter ({e}; install a Vulkan driver such as Mesa's mesa-vulkan-drivers, or use --backend cpu)"
        ))
    })
}

/// Whether the wgpu adapter is a software rasterizer (device type CPU: lavapipe, llvmpipe,
/// SwiftShader, WARP), by its reported type or, failing that, its name.
pub fn is_software(info: &wgpu::AdapterInfo) -> bool {
    let name = info.name.to_lowercase();
    info.device_type == wgpu::DeviceType::Cpu
        || ["llvmpipe", "lavapipe", "swiftshader", "microsoft basic render"].iter().any(|n| name.contains(n))
}

/// The backend `kind` stands for, and why: `auto` becomes wgpu on a hardware GPU and cpu
/// otherwise (no adapter, or a software one); the others stand for themselves.
pub fn resolve(kind: BackendKind) -> (BackendKind, String) {
    match kind {
        BackendKind::Auto => match wgpu_handles() {
            Ok(h) => {
                let info = h.adapter.get_info();
                if is_software(&info) {
                    (
                        BackendKind::Cpu,
                        format!(
                            "the wgpu adapter `{}` is a software rasterizer, slower than the cpu backend",
                            info.name
                        ),
                    )
                } else {
                    (BackendKind::Wgpu, format!("the wgpu adapter `{}` is a {:?} GPU", info.name, info.device_type))
                }
            }
            Err(_) => (BackendKind::Cpu, "no usable wgpu adapter".to_string()),
        },
        BackendKind::Wgpu => (BackendKind::Wgpu, "asked for".to_string()),
        BackendKind::Cpu => (BackendKind::Cpu, "asked for".to_string()),
    }
}

/// Creates the device of `kind` (`auto` resolved by [`resolve`]), checking that it can compute
/// in `precision`. A machine without a usable wgpu adapter gets one clear line.
pub fn device(kind: BackendKind, precision: Precision) -> Result<Device> {
    let (chosen, why) = resolve(kind);
    tracing::info!("backend {chosen}: {why}");
    let device = match chosen {
        BackendKind::Cpu | BackendKind::Auto => Device::flex(),
        BackendKind::Wgpu => wgpu_handles()?.device.clone(),
    };
    if !device.supports_dtype(precision.dtype()) {
        return Err(Error::Backend(format!("{kind} device does not support {:?}", precision.dtype())));
    }
    Ok(device)
}

/// The wgpu queue's next submission index, read by submitting nothing (one empty submit);
/// `None` before a wgpu device exists. [`cost`] counts submits as the difference of two.
pub(crate) fn submission_index() -> Option<u64> {
    let h = WGPU.get()?.as_ref().ok()?;
    let index = h.queue.submit(std::iter::empty());
    // wgpu keeps the number private; its Debug form is `SubmissionIndex { index: N }`.
    let text = format!("{index:?}");
    text.rsplit(|c: char| !c.is_ascii_digit()).find(|s| !s.is_empty())?.parse().ok()
}

/// Whether `device` is the CPU (`flex`) backend's.
pub fn is_cpu(device: &Device) -> bool {
    *device == Device::flex()
}

/// The backend `device` belongs to (what `auto` resolved to).
pub fn kind_of(device: &Device) -> BackendKind {
    if is_cpu(device) { BackendKind::Cpu } else { BackendKind::Wgpu }
}

/// A human-readable name of the device's adapter, for logs.
pub fn adapter_name(device: &Device) -> String {
    match device.identity() {
        Some(id) => id.name,
        None => format!("{device:?}"),
    }
}

/// The most bytes one tensor may take on `device`: the largest buffer its adapter allocates in
/// one go (lavapipe: 128 MiB), `None` where nothing smaller than memory applies (the CPU
/// backend, and autodiff devices, which train small models).
pub fn max_tensor_bytes(device: &Device) -> Option<u64> {
    match device.as_dispatch() {
        burn::backend::DispatchDevice::Cube(d) => Some(d.client().properties().memory.max_page_size),
        _ => None,
    }
}

/// Checks that a tensor `name` of `elements` values in `dtype` fits in one buffer of `device`
/// ([`max_tensor_bytes`]). Past it, wgpu fails only at the first read-back, with an allocation
/// error that names no tensor; this names it at load and says what would fit.
pub fn check_fits(device: &Device, name: &str, elements: usize, dtype: DType) -> Result<()> {
    let bytes = elements as u64 * dtype.size() as u64;
    match max_tensor_bytes(device) {
        Some(max) if bytes > max => {
            let half = if dtype == DType::F32 && bytes / 2 <= max { " (it would fit with --dtype f16)" } else { "" };
            Err(Error::Backend(format!(
                "tensor `{name}` takes {bytes} bytes as {dtype:?}, more than the {max} bytes the adapter `{}` \
                 allocates in one buffer{half}",
                adapter_name(device)
            )))
        }
        _ => Ok(()),
    }
}

/// Uploads host floats as a float tensor of the given dtype.
pub fn floats<const D: usize>(values: Vec<f32>, shape: [usize; D], device: &Device, dtype: DType) -> Tensor<D> {
    cost::count_upload(values.len() * dtype.size());
    Tensor::from_data(TensorData::new(values, shape), (device, dtype))
}

/// Uploads host integers as an int tensor.
pub fn ints<const D: usize>(values: Vec<i64>, shape: [usize; D], device: &Device) -> Tensor<D, Int> {
    cost::count_upload(values.len() * 4);
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// Uploads host booleans as a bool tensor.
pub fn bools<const D: usize>(values: Vec<bool>, shape: [usize; D], device: &Device) -> Tensor<D, Bool> {
    cost::count_upload(values.len());
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// Reads a float tensor back as f32 values.
pub fn read_floats<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    cost::reading();
    let v = t.try_into_vec_as::<f32>().map_err(|e| Error::Backend(format!("reading a tensor back: {e:?}")))?;
    cost::count_readback(v.len() * 4);
    Ok(v)
}

/// Reads an int tensor back as i64 values.
pub fn read_ints<const D: usize>(t: Tensor<D, Int>) -> Result<Vec<i64>> {
    cost::reading();
    let v = t.try_into_vec_as::<i64>().map_err(|e| Error::Backend(format!("reading a tensor back: {e:?}")))?;
    cost::count_readback(v.len() * 4);
    Ok(v)
}
