//! How often an adapter's special token fires on held-out clips, greedy (docs/adapter.md):
//! the share of time questions on which `<clock>` (or `--token`) appears anywhere in the inner
//! monologue, and the share of other questions and of quiet windows on which it does.
//!
//!   cargo run --release --example token_fires -- --adapter DIR --data DATA [--model M] [--token NAME]
//!
//! DATA is training/tool_tokens.py's output (`eval.jsonl` and `eval/*.wav`).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use kokichi::adapter::Adapter;
use kokichi::backend::{self, BackendKind, Precision};
use kokichi::lm::GenConfig;
use kokichi::session::Engine;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut adapter, mut data, mut model, mut token) = (None, None, "kokichi-tiny".to_string(), "<clock>".to_string());
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--adapter" => adapter = Some(PathBuf::from(value()?)),
            "--data" => data = Some(PathBuf::from(value()?)),
            "--model" => model = value()?,
            "--token" => token = value()?,
            other => bail!("unknown argument {other}"),
        }
    }
    let (Some(adapter), Some(data)) = (adapter, data) else { bail!("--adapter DIR --data DATA are required") };
    let files = kokichi::model_dir::resolve(&model)?;
    let device = backend::device(BackendKind::Cpu, Precision::F32)?;
    let engine = Engine::load_with_adapter(&files, &device, Precision::F32, Some(Adapter::read(&adapter)?))?;
    let id = engine.special_id(&token).with_context(|| format!("{token} is not a token of the adapter"))?;
    let list = std::fs::read_to_string(data.join("eval.jsonl")).context("eval.jsonl")?;
    let mut counts: std::collections::BTreeMap<String, (usize, usize)> = Default::default();
    for line in list.lines() {
        let rec: serde_json::Value = serde_json::from_str(line)?;
        let kind = rec["kind"].as_str().unwrap_or("?").to_string();
        let pcm = kokichi::audio::read_audio(&data.join(rec["file"].as_str().unwrap_or_default()), 24000)?;
        let mut s = engine.init_session(GenConfig::greedy())?;
        let frame = engine.frame_size();
        let mut fired = false;
        for c in pcm.chunks_exact(frame) {
            fired |= engine.step(&mut [&mut s], c)?.remove(0).text == Some(id);
        }
        let e = counts.entry(kind).or_default();
        e.0 += usize::from(fired);
        e.1 += 1;
    }
    for (kind, (fired, n)) in counts {
        println!("{kind}: {token} fired on {fired}/{n} = {:.1}%", 100.0 * fired as f64 / n as f64);
    }
    Ok(())
}
