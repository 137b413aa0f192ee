//! kokichi: a local speech-to-speech runtime. Microphone audio becomes Mimi codec tokens, the
//! Moshi language model answers in audio tokens, and Mimi turns them back into sound. No ASR or
//! TTS stage sits in between.
//!
//! The models are reimplemented in Burn and run on its wgpu backend (or the `flex` CPU backend);
//! real Kyutai checkpoints load unchanged.

pub mod adapter;
pub mod audio;
pub mod backend;
pub mod cost;
pub mod daemon;
pub mod echo;
pub mod error;
pub mod gist;
pub mod hub;
#[path = "../kernels/mod.rs"]
pub mod kernels;
pub mod latent_frame;
pub mod lm;
pub mod mimi;
pub mod model_dir;
pub mod monologue;
pub mod nn;
pub mod protocol;
mod quiet_stderr;
pub mod session;
pub mod system_prompt;
pub mod tokenizer;
pub mod train;
pub mod weights;

pub use error::{Error, Result};
