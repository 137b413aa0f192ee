//! Custom kernels for the hot paths of the models.
//!
//! Burn's generic ops are correct everywhere but not shaped for a one-position step: each op is
//! its own launch, and a matrix product is tiled for many rows. A kernel here either fuses a
//! chain of ops into one CubeCL launch (`rms_norm`) or replaces a general op with one shaped for
//! the step (`matvec`), on the CubeCL devices (wgpu), through Burn's backend extension API.
//!
//! Each kernel sits beside its plain-Burn reference, which runs on every other device (the flex
//! CPU backend) and whenever gradients are tracked, and `tests/kernels.rs` checks the two agree.

pub mod matvec;
pub mod rms_norm;

pub use rms_norm::rms_norm;
