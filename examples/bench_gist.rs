//! Time to first answer with a gist against replaying the prompt it stands for. A session that
//! is to start "already prompted" either steps through the prompt's frames (replay: one model
//! step per 80 ms of prompt, before the user has said anything) or reads K prefix latents in one
//! pass ([`Engine::init_session_with`]). Both are measured in one run, `--runs` times each, on
//! the model and backend given; the prompt is `--prompt FILE.wav` (default: the fixture
//! question, padded to `--prompt-seconds`), the gist `--gist FILE` (default: K = `--k` random
//! vectors: the cost does not depend on their values).
//!
//! Also prints the attention cache a pinned prefix adds to one session.
//!
//! `cargo run --example bench_gist -- [--model M] [--backend cpu|wgpu] [--prompt F] [--prompt-seconds S] [--gist F] [--k K] [--runs R]`

use std::time::Instant;

use anyhow::{Context, Result};
use kokichi::backend::{self, BackendKind, Precision};
use kokichi::gist::Gist;
use kokichi::session::Engine;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let model = arg("--model").unwrap_or_else(|| "kokichi-tiny".into());
    let kind: BackendKind = match arg("--backend").as_deref() {
        Some("wgpu") => BackendKind::Wgpu,
        _ => BackendKind::Cpu,
    };
    let runs: usize = arg("--runs").and_then(|r| r.parse().ok()).unwrap_or(5);
    let k: usize = arg("--k").and_then(|r| r.parse().ok()).unwrap_or(8);
    let seconds: f64 = arg("--prompt-seconds").and_then(|r| r.parse().ok()).unwrap_or(4.0);
    let files = kokichi::model_dir::resolve(&model)?;
    let device = backend::device(kind, Precision::F32)?;
    let engine = Engine::load_as(&files, &device, Precision::F32)?;
    let config = engine.sampling;
    let dim = engine.lm.config.dim;
    let prompt_path = arg("--prompt").unwrap_or_else(|| "tests/fixtures/speech/question.wav".into());
    let mut prompt = kokichi::audio::read_audio(std::path::Path::new(&prompt_path), engine.sample_rate() as u32)
        .with_context(|| prompt_path.clone())?;
    let frame = engine.frame_size();
    let want = ((seconds * engine.sample_rate() as f64) as usize).div_ceil(frame) * frame;
    prompt.resize(want.max(prompt.len().div_ceil(frame) * frame), 0.0);
    let gist = match arg("--gist") {
        Some(p) => Gist::read(std::path::Path::new(&p))?,
        None => Gist::new((0..k * dim).map(|i| ((i as f32) * 0.37).sin()).collect(), k, dim)?,
    };
    let prompt_frames = prompt.len() / frame;
    engine.warm_up(config, 4)?;
    // Each ends with the first frame of the user's turn, whose step reads its answer back (so
    // that a device backend has finished the work queued before it).
    let first = vec![0f32; frame];
    let (mut replay, mut prefixed) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let t0 = Instant::now();
        let mut s = engine.init_session(config)?;
        for chunk in prompt.chunks_exact(frame) {
            engine.step(&mut [&mut s], chunk)?;
        }
        engine.step(&mut [&mut s], &first)?;
        replay.push(t0.elapsed().as_secs_f64() * 1e3);
        let t0 = Instant::now();
        let mut s = engine.init_session_with(config, Some(&gist))?;
        engine.step(&mut [&mut s], &first)?;
        prefixed.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    let (r, g) = (median(replay), median(prefixed));
    println!(
        "model {} on {}: prompt {prompt_frames} frames, gist K = {}",
        engine.source,
        backend::kind_of(&device),
        gist.k
    );
    println!(
        "to the first frame of the user's turn: replaying the prompt {r:.1} ms, reading the gist {g:.2} ms; {:.0}x sooner",
        r / g.max(1e-6)
    );
    let c = &engine.lm.config;
    let pinned_bytes = 2 * c.num_layers * gist.k * c.dim * engine.lm.dtype().size();
    println!(
        "pinned prefix: {pinned_bytes} bytes of attention cache per session ({} layers x K {} x d_model {} x k,v)",
        c.num_layers, gist.k, c.dim
    );
    Ok(())
}
