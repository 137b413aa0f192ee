//! Answers many spoken files with one loaded model, streaming each through Mimi encode ->
//! LM step -> Mimi decode exactly as `kokichi run` does (used by training/eval_lm.py).
//!
//! Usage: answer_many --model DIR --list FILE --out DIR [--greedy] [--seed S] [--backend cpu]
//!        [--text-temp T] [--text-top-k K] [--audio-temp T] [--audio-top-k K] [--input-gain DB]
//! FILE lists one input wav per line; writes OUT/<stem>.wav and OUT/<stem>.txt. Without
//! `--greedy`, Moshi's sampling; the four sampling flags override one stream's setting of
//! either, so the text can be greedy while the audio is sampled; file i is seeded with S + i.
//! `--input-gain` scales every input as `kokichi run --input-gain` does.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use burn::tensor::DType;
use kokichi::backend::{self, BackendKind, Precision};
use kokichi::lm::GenConfig;
use kokichi::lm::sampling::SamplingOverrides;
use kokichi::session::Engine;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

fn parsed<T: std::str::FromStr>(name: &str) -> Result<Option<T>>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    arg(name).map(|s| s.parse::<T>().with_context(|| format!("{name} {s}"))).transpose()
}

fn main() -> Result<()> {
    let model = arg("--model").context("--model")?;
    let list = PathBuf::from(arg("--list").context("--list")?);
    let out = PathBuf::from(arg("--out").context("--out")?);
    let kind: BackendKind = arg("--backend").unwrap_or_else(|| "cpu".into()).parse()?;
    let greedy = std::env::args().any(|a| a == "--greedy");
    let seed: u64 = parsed("--seed")?.unwrap_or(0);
    let gain: f32 = parsed("--input-gain")?.unwrap_or(0.0);
    anyhow::ensure!(kokichi::audio::gain_db_ok(gain), "--input-gain {gain} dB is out of range");
    let gain = kokichi::audio::gain_factor(gain);
    let sampling = SamplingOverrides {
        greedy: greedy.then_some(true),
        text_temperature: parsed("--text-temp")?,
        text_topk: parsed("--text-top-k")?,
        audio_temperature: parsed("--audio-temp")?,
        audio_topk: parsed("--audio-top-k")?,
        seed: None,
    }
    .over(GenConfig::default());
    std::fs::create_dir_all(&out)?;
    let device = backend::device(kind, Precision::F32)?;
    let engine = Engine::load(&kokichi::model_dir::resolve(&model)?, &device, DType::F32)?;
    let frame = engine.frame_size();
    let inputs = std::fs::read_to_string(&list).with_context(|| format!("{}", list.display()))?;
    for (i, line) in inputs.lines().filter(|l| !l.trim().is_empty()).enumerate() {
        let input = Path::new(line.trim());
        let mut pcm = kokichi::audio::read_audio(input, engine.sample_rate() as u32)?;
        kokichi::audio::apply_gain(&mut pcm, gain);
        pcm.resize(pcm.len().div_ceil(frame) * frame, 0.0);
        let config =
            GenConfig { text_seed: Some(seed + i as u64), audio_seed: Some(seed + 1_000_000 + i as u64), ..sampling };
        let mut s = engine.init_session(config)?;
        let mut audio = Vec::with_capacity(pcm.len());
        let mut text = String::new();
        for chunk in pcm.chunks_exact(frame) {
            let f = engine.step(&mut [&mut s], chunk)?.pop().context("no output")?;
            audio.extend_from_slice(&f.pcm);
            if let Some(p) = f.text.and_then(|t| engine.text_piece(t)) {
                text.push_str(&p);
            }
        }
        let stem = input.file_stem().and_then(|s| s.to_str()).unwrap_or("out");
        kokichi::audio::write_wav(&out.join(format!("{stem}.wav")), &audio, engine.sample_rate() as u32)?;
        std::fs::write(out.join(format!("{stem}.txt")), format!("{}\n", text.trim()))?;
    }
    Ok(())
}
