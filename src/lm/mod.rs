//! The Moshi audio language model.

pub mod config;
pub mod generate;
pub mod infer;
pub mod model;
pub mod pick;
pub mod provided;
pub mod sampling;

pub use config::LmConfig;
pub use generate::{LmState, StepOut};
pub use model::{LmModel, TeacherOut};
pub use pick::Picking;
pub use provided::Provided;
pub use sampling::GenConfig;
