//! The activations of the models' feed-forward blocks, shared by the plain-Burn path and the
//! kernels (which take them as a compile-time code and apply them in f32).

use burn::prelude::*;
use burn::tensor::activation::{gelu, relu, sigmoid, silu, tanh};

/// Activation of a gated unit (`gating` in the configs) or of a plain MLP (GELU).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    Silu,
    Gelu,
    Relu,
    Sigmoid,
    Tanh,
}

impl Act {
    /// Applies the activation with Burn's own ops (the reference of the kernels' code).
    pub fn apply<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Act::Silu => silu(x),
            Act::Gelu => gelu(x),
            Act::Relu => relu(x),
            Act::Sigmoid => sigmoid(x),
            Act::Tanh => tanh(x),
        }
    }

    /// The code the kernels branch on at compile time ([`apply_f32`]).
    pub(crate) fn code(self) -> u32 {
        match self {
            Act::Silu => 0,
            Act::Gelu => 1,
            Act::Relu => 2,
            Act::Sigmoid => 3,
            Act::Tanh => 4,
        }
    }
}

pub(crate) mod cube {
    use cubecl::prelude::*;

    /// The activation of code `act` ([`Act::code`](super::Act::code)) in f32, written as Burn
    /// writes it: GELU `x (erf(x / √2) + 1) / 2`, SiLU `x σ(x)`, σ `1 / (1 + e^-x)`.
    #[cube]
    pub fn apply_f32(x: f32, #[comptime] act: u32) -> f32 {
        let mut y = x;
        if comptime!(act == 0) {
            y = x * (1.0f32 / (1.0f32 + (-x).exp()));
        } else if comptime!(act == 1) {
            y = x * (Erf::erf(x / 1.414_213_5f32) + 1.0f32) / 2.0f32;
        } else if comptime!(act == 2) {
            y = f32::max(x, 0.0f32);
        } else if comptime!(act == 3) {
            y = 1.0f32 / (1.0f32 + (-x).exp());
        } else if comptime!(act == 4) {
            y = x.tanh();
        }
        y
    }
}
