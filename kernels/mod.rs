//! Custom kernels for the hot paths of the models.
//!
//! Burn's generic ops are correct everywhere but launch one kernel per op; on a GPU the LM's
//! per-step cost is dominated by those launches, not by arithmetic. A kernel here fuses one such
//! chain into a single CubeCL launch on the CubeCL devices (wgpu), through Burn's backend
//! extension API.
//!
//! Each kernel sits beside its plain-Burn reference, which runs on every other device (the flex
//! CPU backend) and whenever gradients are tracked, and `tests/kernels.rs` checks the two agree.

pub mod rms_norm;

pub use rms_norm::rms_norm;
