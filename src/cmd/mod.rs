//! Subcommands of the `kokichi` binary.

pub mod codec;
pub mod devices;
pub mod gist;
pub mod quantize;
pub mod run;
pub mod serve;
pub mod tokens;
pub mod train;
