//! A matrix parameter as the models hold it, a product's weight `[in, out]` or an embedding
//! table `[rows, width]`: a float parameter, and its 8-bit form where the model was loaded with
//! `--dtype q8` (the parameter is then a one-value stand-in, so that the 8-bit form is the only
//! copy in memory).

use burn::module::Param;
use burn::prelude::*;

use crate::kernels::matvec::{Q8, Weight};

/// A matrix parameter.
#[derive(Module, Debug)]
pub struct Matrix {
    /// `[in, out]` (input-major) or `[rows, width]`; a `[1, 1]` stand-in when `q8` holds it.
    pub weight: Param<Tensor<2>>,
    /// The 8-bit weight and the dtype the model computes in.
    #[module(skip)]
    pub q8: Option<(Q8, burn::tensor::DType)>,
}

impl Matrix {
    /// A float matrix.
    pub fn new(weight: Param<Tensor<2>>) -> Self {
        Self { weight, q8: None }
    }

    /// The matrix for the kernels: 8-bit where it is, else the float parameter.
    pub fn weight(&self) -> Weight {
        match &self.q8 {
            Some((q, dtype)) => Weight::Q8(q.clone(), *dtype),
            None => Weight::Float(self.weight.val()),
        }
    }

    /// The matrix as a float tensor (an 8-bit one dequantized: for the unfused paths).
    pub fn val(&self) -> Tensor<2> {
        match &self.q8 {
            Some(_) => self.weight().to_float(),
            None => self.weight.val(),
        }
    }

    /// Rows `idx` (`[n]`) of the matrix, `[n, width]` in its compute dtype (an 8-bit matrix's
    /// rows dequantized alone).
    pub fn rows(&self, idx: Tensor<1, Int>) -> Tensor<2> {
        match &self.q8 {
            Some((q, dtype)) => crate::kernels::q8::rows(q, idx, *dtype),
            None => self.weight.val().select(0, idx),
        }
    }

    /// `[in, out]`.
    pub fn dims(&self) -> [usize; 2] {
        match &self.q8 {
            Some((q, _)) => q.dims(),
            None => self.weight.dims(),
        }
    }

    /// Bytes it takes on its device.
    pub fn bytes(&self) -> u64 {
        match &self.q8 {
            Some((q, _)) => q.bytes(),
            None => (self.weight.num_params() * self.weight.val().dtype().size()) as u64,
        }
    }
}
