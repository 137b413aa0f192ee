//! The `kokichi` command line.

mod cmd;

use clap::{Parser, Subcommand};

use kokichi::backend::{BackendKind, Precision};

#[derive(Parser, Debug)]
#[command(name = "kokichi", version, about = "Local speech-to-speech: Mimi codec + Moshi LM in Burn")]
struct Cli {
    /// Compute backend: auto (the default: wgpu on a hardware GPU, else cpu), wgpu
    /// (Vulkan/Metal/DX12, software adapters included) or cpu (Burn's flex backend).
    #[arg(long, global = true)]
    backend: Option<BackendKind>,
    /// Float type of weights and activations: f32 (default), f16 on GPUs, or q8 (the LM's
    /// matrices in 8 bits, the rest in f16).
    #[arg(long, global = true)]
    dtype: Option<Precision>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Encode audio into Mimi codes.
    Encode(cmd::codec::EncodeArgs),
    /// Decode Mimi codes back into audio.
    Decode(cmd::codec::DecodeArgs),
    /// Offline speech-to-speech: answer a spoken file with the model's voice.
    Run(cmd::run::RunArgs),
    /// The daemon: live sessions from the microphone and over WebSocket.
    Serve(cmd::serve::ServeArgs),
    /// Push-to-talk for a running daemon: press, release, toggle or status.
    Ptt(cmd::serve::PttArgs),
    /// Train a codec with Burn (resumes from --out).
    TrainCodec(cmd::train::CodecArgs),
    /// Train a language model with Burn (resumes from --out).
    TrainLm(cmd::train::LmArgs),
    /// Special tokens: `tokens train` trains a vocabulary adapter (docs/adapter.md).
    Tokens(cmd::tokens::TokensArgs),
    /// List audio input and output devices with their default formats.
    Devices(cmd::devices::DevicesArgs),
    /// Prefix latents ("gists"): learn K vectors that stand in for a spoken prompt.
    #[command(subcommand)]
    Gist(cmd::gist::GistCommand),
    /// Write a copy of a model with the LM's matrices in 8 bits (loads with --dtype q8 implied).
    Quantize(cmd::quantize::QuantizeArgs),
}

fn main() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let cli = Cli::parse();
    let backend = cli.backend.unwrap_or_default();
    let dtype = cli.dtype.unwrap_or_default();
    let result = match cli.command {
        Command::Encode(a) => cmd::codec::encode(backend, dtype, a),
        Command::Decode(a) => cmd::codec::decode(backend, dtype, a),
        Command::Run(a) => cmd::run::run(backend, dtype, a),
        Command::Serve(a) => cmd::serve::serve(a, cli.backend, cli.dtype),
        Command::Ptt(a) => cmd::serve::ptt(a),
        Command::TrainCodec(a) => cmd::train::codec(backend, a),
        Command::TrainLm(a) => cmd::train::lm(backend, a),
        Command::Tokens(a) => cmd::tokens::tokens(backend, a),
        Command::Devices(a) => cmd::devices::devices(a),
        Command::Quantize(a) => cmd::quantize::quantize(a),
        Command::Gist(c) => cmd::gist::gist(backend, c),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
