//! Custom kernels for the hot paths of the models.
//!
//! Burn's generic ops are correct everywhere but not shaped for a one-position step: each op is
//! its own launch (a Moshi-7B step was ~5,400 of them), and a matrix product is tiled for many
//! rows. The kernels here do a step's work in few launches on the CubeCL devices (wgpu), through
//! Burn's backend extension API:
//!
//! - `matvec`: a step's matrix products as partial sums over row chunks (f32/f16 or 8-bit
//!   weights, `q8`), the input optionally gated (SiLU/GELU) from the previous partials;
//! - `residual`: the partials summed into the residual stream (or an embedding gather), scaled,
//!   then the next RMS/layer norm, one cube per row;
//! - `attention`: RoPE, the ring-buffer KV write and attention over the window in one launch,
//!   the output projection fused where it fits;
//! - `pick`: greedy or top-k sampling from the head's partials, tokens kept on the device;
//! - `conv`, `rvq`: Mimi's streaming convolutions (ELU fused) and its quantizer's codebooks;
//! - `rms_norm`, `embed`: the older single-op fusions the batch paths still use.
//!
//! Each kernel sits beside its plain-Burn reference, which runs on every other device (the flex
//! CPU backend) and whenever gradients are tracked; `tests/kernels.rs` and
//! `tests/step_kernels.rs` check the two agree.

// Kernel bodies are CubeCL's subset of Rust, expanded by `#[cube]`: clippy's rewrites of them
// (`is_multiple_of`, `div_ceil`, `core`'s constants, `comptime!` branches merged, casts the
// expansion needs) are not in that subset, and its argument lint reads the expansion's names.
// The host-side enums of a launch's operands are built and matched once per launch: boxing
// their larger variants would buy nothing.
#![allow(
    clippy::large_enum_variant,
    clippy::approx_constant,
    clippy::manual_is_multiple_of,
    clippy::manual_div_ceil,
    clippy::collapsible_if,
    clippy::unnecessary_cast,
    clippy::duplicate_underscore_argument
)]

use std::sync::atomic::{AtomicBool, Ordering};

use burn::backend::DispatchDevice;
use burn::prelude::Device;

pub mod act;
pub mod attention;
pub mod conv;
pub mod embed;
pub mod matvec;
pub mod pick;
pub mod q8;
pub mod residual;
pub mod rms_norm;
pub mod rvq;

pub use rms_norm::rms_norm;

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns every kernel here on or off for this process (on by default): off, each call takes its
/// plain-Burn reference, which is how tests and benchmarks compare the two on one device.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether the kernels are on ([`set_enabled`]).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Whether the kernels here launch on `device` (whatever the switch of [`set_enabled`] says):
/// where a model may keep copies of its weights laid out for them.
pub fn launches_on(device: &Device) -> bool {
    matches!(device.as_dispatch(), DispatchDevice::Cube(_))
}

/// Whether the kernels launch on `device` now: a CubeCL device without autodiff (an autodiff
/// device is its own `DispatchDevice` variant), with the kernels on.
pub fn run_on(device: &Device) -> bool {
    on_cube(device.clone())
}

/// Whether `device` is a CubeCL device without autodiff (an autodiff device is its own
/// `DispatchDevice` variant) and the kernels are on: where the kernels here launch.
fn on_cube(device: Device) -> bool {
    enabled() && matches!(device.as_dispatch(), DispatchDevice::Cube(_))
}
