//! Building blocks shared by the codec and the language model.

pub mod attention;
pub mod batch;
pub mod conv;
pub mod matrix;
pub mod norm;
pub mod rope;
pub mod transformer;
