//! Subcommands of the `kokichi` binary.

pub mod codec;
pub mod run;
pub mod serve;
