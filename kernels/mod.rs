//! Custom kernels for the hot paths of the models.
//!
//! Burn's generic ops are correct everywhere but not shaped for a one-position step: each op is
//! its own launch, and a matrix product is tiled for many rows. A kernel here either fuses a
//! chain of ops into one CubeCL launch (`rms_norm`) or replaces a general op with one shaped for
//! the step (`matvec`), on the CubeCL devices (wgpu), through Burn's backend extension API.
//!
//! Each kernel sits beside its plain-Burn reference, which runs on every other device (the flex
//! CPU backend) and whenever gradients are tracked, and `tests/kernels.rs` checks the two agree.

use burn::backend::DispatchDevice;
use burn::prelude::Device;

pub mod matvec;
pub mod rms_norm;

pub use rms_norm::rms_norm;

/// Whether `device` is a CubeCL device without autodiff (an autodiff device is its own
/// `DispatchDevice` variant): where the kernels here can launch.
fn on_cube(device: Device) -> bool {
    matches!(device.as_dispatch(), DispatchDevice::Cube(_))
}
