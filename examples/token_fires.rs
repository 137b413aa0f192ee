//! How often an adapter's special token fires on held-out clips, greedy (docs/adapter.md):
//! the share of time questions on which `<clock>` (or `--token`) appears anywhere in the inner
//! monologue, and the share of other questions and of quiet windows on which it does. Also how
//! many clips it fired on more than once, and how many frames after the question's end it first
//! fired (a tool call's latency), the clips fired on per synthesizer, and the clips whose
//! monologue (the new tokens left out) is the model's without the adapter: what the adapter's
//! gist, if it has one, changed in the model's other answers; and, where `eval.jsonl` records
//! the answers, how many other questions the monologue answers right with and without it.
//!
//!   cargo run --example token_fires -- --adapter DIR --data DATA [--model M] [--token NAME] [--no-compare] [--list] [--margins FILE]
//!
//! `--no-compare` skips the model without the adapter (half the time; its counts read 0);
//! `--list` prints each time question it missed and each other clip it fired on; `--margins`
//! writes each clip's largest margin of the token's logit over the best other one (file, kind,
//! voice, margin; tab-separated): a clip fires when it is above 0, and the shares above other
//! thresholds show about what a decision threshold on the token would trade (about: after a
//! fire the clip goes on from the token, where it would have gone on from another pick). It
//! also prints the two thresholds the target names: at least 90% of time questions fired, and
//! at most 2% of other questions.
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
    let (mut compare, mut show, mut margins) = (true, false, None::<PathBuf>);
    let mut margin_lines = String::new();
    // Per kind: each clip's largest margin.
    let mut by_kind: std::collections::BTreeMap<String, Vec<f32>> = Default::default();
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--adapter" => adapter = Some(PathBuf::from(value()?)),
            "--data" => data = Some(PathBuf::from(value()?)),
            "--model" => model = value()?,
            "--token" => token = value()?,
            "--no-compare" => compare = false,
            "--list" => show = true,
            "--margins" => margins = Some(PathBuf::from(value()?)),
            other => bail!("unknown argument {other}"),
        }
    }
    let (Some(adapter), Some(data)) = (adapter, data) else { bail!("--adapter DIR --data DATA are required") };
    let files = kokichi::model_dir::resolve(&model)?;
    let device = backend::device(BackendKind::Cpu, Precision::F32)?;
    let engine = Engine::load_with_adapter(&files, &device, Precision::F32, Some(Adapter::read(&adapter)?))?;
    // The model without the adapter, to count the clips whose monologue the adapter changed.
    let base = compare.then(|| Engine::load_with_adapter(&files, &device, Precision::F32, None)).transpose()?;
    let id = engine.special_id(&token).with_context(|| format!("{token} is not a token of the adapter"))?;
    let list = std::fs::read_to_string(data.join("eval.jsonl")).context("eval.jsonl")?;
    // Per kind: clips fired on, clips, clips fired on more than once, first-fire delays (frames).
    let mut counts: std::collections::BTreeMap<String, (usize, usize, usize, Vec<i64>)> = Default::default();
    // Per synthesizer and kind: clips fired on, clips.
    let mut by_engine: std::collections::BTreeMap<(String, String), (usize, usize)> = Default::default();
    // Per kind: clips whose monologue, the new tokens left out, is the base model's.
    let mut same: std::collections::BTreeMap<String, usize> = Default::default();
    // Other questions with a recorded answer: (clips, answered right, right without the adapter).
    let mut right = (0usize, 0usize, 0usize);
    for line in list.lines() {
        let rec: serde_json::Value = serde_json::from_str(line)?;
        let kind = rec["kind"].as_str().unwrap_or("?").to_string();
        let pcm = kokichi::audio::read_audio(&data.join(rec["file"].as_str().unwrap_or_default()), 24000)?;
        let mut s = engine.init_session(GenConfig::greedy())?;
        s.taps.logits = if margins.is_some() { usize::MAX } else { 0 };
        let mut best_margin = f32::NEG_INFINITY;
        let frame = engine.frame_size();
        let mut b = base.as_ref().map(|e| e.init_session(GenConfig::greedy())).transpose()?;
        let (mut fires, mut said, mut base_said) = (Vec::new(), Vec::new(), Vec::new());
        for (f, c) in pcm.chunks_exact(frame).enumerate() {
            // Words only: padding and control tokens are None.
            let out = engine.step(&mut [&mut s], c)?.remove(0);
            if let Some(top) = &out.latents.logits {
                let own = top.ids.iter().position(|&i| i as i64 == id).map(|j| top.values[j]);
                let other = top.ids.iter().zip(&top.values).find(|(i, _)| **i as i64 != id).map(|(_, v)| *v);
                if let (Some(own), Some(other)) = (own, other) {
                    best_margin = best_margin.max(own - other);
                }
            }
            match out.text {
                Some(t) if t == id => fires.push(f as i64),
                Some(t) => said.extend(engine.text_piece(t)),
                None => {}
            }
            if let (Some(base), Some(b)) = (&base, b.as_mut()) {
                base_said.extend(base.step(&mut [b], c)?.remove(0).text.and_then(|t| base.text_piece(t)));
            }
        }
        margin_lines.push_str(&format!(
            "{}\t{kind}\t{}\t{best_margin}\n",
            rec["file"].as_str().unwrap_or_default(),
            rec["voice"].as_str().unwrap_or_default()
        ));
        by_kind.entry(kind.clone()).or_default().push(best_margin);
        *same.entry(kind.clone()).or_default() += usize::from(compare && said == base_said);
        if show && (fires.is_empty() == (kind == "time")) {
            let missed = if kind == "time" { "missed" } else { "fired" };
            println!("{missed}: {} ({kind}, {}): {:?}", rec["file"], rec["question"], said.concat());
        }
        if let Some(answer) = rec["answer"].as_str().filter(|a| kind == "other" && !a.is_empty()) {
            right.0 += 1;
            right.1 += usize::from(says(&said, answer));
            right.2 += usize::from(compare && says(&base_said, answer));
        }
        let engine = rec["voice"].as_str().and_then(|v| v.split(':').next()).unwrap_or_default();
        let e = by_engine.entry((engine.to_string(), kind.clone())).or_default();
        e.0 += usize::from(!fires.is_empty());
        e.1 += 1;
        let e = counts.entry(kind).or_default();
        e.0 += usize::from(!fires.is_empty());
        e.1 += 1;
        e.2 += usize::from(fires.len() > 1);
        if let (Some(first), Some(end)) = (fires.first(), rec["question_end_frame"].as_i64()) {
            e.3.push(first - end);
        }
    }
    if let Some(path) = &margins {
        std::fs::write(path, &margin_lines).with_context(|| format!("{}", path.display()))?;
        let (time, other) = (by_kind.remove("time").unwrap_or_default(), by_kind.remove("other").unwrap_or_default());
        print_thresholds(time, other);
    }
    for (kind, (fired, n, again, mut delays)) in counts {
        delays.sort_unstable();
        let median = delays.get(delays.len() / 2).map_or("-".to_string(), |d| d.to_string());
        println!(
            "{kind}: {token} fired on {fired}/{n} = {:.1}% (more than once on {again}; first fire a median {median} frames after the question)",
            100.0 * fired as f64 / n as f64
        );
        println!(
            "  monologue, {token} left out, as without the adapter on {}/{n}",
            same.get(&kind).copied().unwrap_or(0)
        );
    }
    if right.0 > 0 {
        println!(
            "other questions answered right (the answer's words in the monologue): {}/{} with the adapter, {}/{} without",
            right.1, right.0, right.2, right.0
        );
    }
    for ((engine, kind), (fired, n)) in by_engine.into_iter().filter(|((e, _), _)| !e.is_empty()) {
        println!("  {engine} {kind}: {fired}/{n}");
    }
    Ok(())
}

/// The two decision thresholds on the margin the target names: the highest at which at least 90%
/// of time questions fire, and the lowest at which at most 2% of other questions do, with what
/// each lets through.
fn print_thresholds(mut time: Vec<f32>, mut other: Vec<f32>) {
    if time.is_empty() || other.is_empty() {
        return;
    }
    let descending = |v: &mut Vec<f32>| v.sort_by(|a, b| b.total_cmp(a));
    descending(&mut time);
    descending(&mut other);
    let (nt, no) = (time.len(), other.len());
    // Fires at threshold x: margin >= x.
    let x = time[(nt * 9).div_ceil(10) - 1];
    let count = |v: &[f32], x: f32| v.iter().filter(|&&m| m >= x).count();
    println!(
        "threshold {x:.2} (time questions fired {}/{nt}): other questions fired {}/{no} = {:.1}%",
        count(&time, x),
        count(&other, x),
        100.0 * count(&other, x) as f64 / no as f64
    );
    // Fires above the margin of the (allowed + 1)-th highest other question.
    let allowed = no * 2 / 100;
    if let Some(&y) = other.get(allowed) {
        let above = |v: &[f32]| v.iter().filter(|&&m| m > y).count();
        println!(
            "threshold above {y:.2} (other questions fired {}/{no}): time questions fired {}/{nt} = {:.1}%",
            above(&other),
            above(&time),
            100.0 * above(&time) as f64 / nt as f64
        );
    }
}

/// Whether the monologue `pieces` holds the words of `answer` in a row.
fn says(pieces: &[String], answer: &str) -> bool {
    let words = |t: &str| t.split_whitespace().map(str::to_lowercase).collect::<Vec<_>>();
    let (said, answer) = (words(&pieces.concat()), words(answer));
    !answer.is_empty() && said.windows(answer.len()).any(|w| w == answer.as_slice())
}
