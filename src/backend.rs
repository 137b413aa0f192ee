//! Picking the compute device at run time (Burn 0.22 has no backend type parameter) and the
//! small host <-> device helpers the models share.
//!
//! `wgpu` is the default: Vulkan, Metal or DX12, and Mesa's lavapipe on machines without a GPU.
//! `cpu` is Burn's pure-Rust `flex` backend. The model code is identical on both.

use std::fmt;
use std::str::FromStr;

use burn::prelude::*;
use burn::tensor::{DType, DeviceKind};

use crate::error::{Error, Result};

/// Which Burn backend runs the models.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Burn's wgpu backend (Vulkan / Metal / DX12 / lavapipe).
    #[default]
    Wgpu,
    /// Burn's `flex` CPU backend.
    Cpu,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Wgpu => "wgpu",
            BackendKind::Cpu => "cpu",
        })
    }
}

impl FromStr for BackendKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "wgpu" | "gpu" => Ok(BackendKind::Wgpu),
            "cpu" | "flex" => Ok(BackendKind::Cpu),
            other => Err(Error::config("backend", format!("unknown backend `{other}` (expected wgpu or cpu)"))),
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
}

impl Precision {
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::F16 => DType::F16,
        }
    }
}

impl FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(Precision::F32),
            "f16" => Ok(Precision::F16),
            "bf16" => Err(Error::config(
                "dtype",
                "bf16 is not computed correctly on wgpu; use f16 or f32 (bf16 checkpoints are cast at load)",
            )),
            other => Err(Error::config("dtype", format!("unknown dtype `{other}` (expected f32 or f16)"))),
        }
    }
}

/// Creates the device of `kind`, checking that it can compute in `precision`.
///
/// wgpu device creation panics inside Burn when no adapter exists; that panic is caught here
/// and turned into an error, so a machine without Vulkan gets one clear line.
pub fn device(kind: BackendKind, precision: Precision) -> Result<Device> {
    let device = match kind {
        BackendKind::Cpu => Device::flex(),
        BackendKind::Wgpu => {
            let probe = std::panic::catch_unwind(|| {
                let device = Device::wgpu(DeviceKind::DefaultDevice);
                // Force adapter selection now rather than at the first model call.
                let _ = Tensor::<1>::zeros([1], &device).into_data();
                device
            });
            probe.map_err(|_| {
                Error::Backend(
                    "no usable wgpu adapter (install a Vulkan driver such as Mesa's \
                     mesa-vulkan-drivers, or use --backend cpu)"
                        .into(),
                )
            })?
        }
    };
    if !device.supports_dtype(precision.dtype()) {
        return Err(Error::Backend(format!("{kind} device does not support {:?}", precision.dtype())));
    }
    Ok(device)
}

/// Whether `device` is the CPU (`flex`) backend's.
pub fn is_cpu(device: &Device) -> bool {
    *device == Device::flex()
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
    Tensor::from_data(TensorData::new(values, shape), (device, dtype))
}

/// Uploads host integers as an int tensor.
pub fn ints<const D: usize>(values: Vec<i64>, shape: [usize; D], device: &Device) -> Tensor<D, Int> {
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// Reads a float tensor back as f32 values.
pub fn read_floats<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    t.try_into_vec_as::<f32>().map_err(|e| Error::Backend(format!("reading a tensor back: {e:?}")))
}

/// Reads an int tensor back as i64 values.
pub fn read_ints<const D: usize>(t: Tensor<D, Int>) -> Result<Vec<i64>> {
    t.try_into_vec_as::<i64>().map_err(|e| Error::Backend(format!("reading a tensor back: {e:?}")))
}
