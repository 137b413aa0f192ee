//! Open mic on speakers, offline: the "microphone" hears a user's question (assets/examples)
//! plus kokichi-tiny's own voice through a known echo path (a frame of playback latency, 25 ms
//! more, and a room filter), and the local session's echo canceller
//! ([`kokichi::daemon::local_audio::echo`], the daemon's own source and sink wrappers) cleans it.
//! Each question is asked three times in a row; the canceller learns the room on the model's
//! first answers. Checked: the echo return loss enhancement in the last third where only the
//! model speaks (measured 23.7 to 29.1 dB, mean 25.6), and that where the model (greedy) answers
//! right all three times without echo, it does through the echo too. It also says stray words the echo made it hear (with
//! the canceller as without: mostly while the canceller is still learning); the test prints them.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use burn::tensor::DType;
use kokichi::daemon::io::{AudioSink, AudioSource, Poll};
use kokichi::daemon::local_audio::echo::cancel_echo;
use kokichi::echo::erle_db;
use kokichi::lm::GenConfig;
use kokichi::model_dir;
use kokichi::session::Engine;

const RATE: usize = 24000;

/// The microphone: frames the test writes.
struct Mic(Arc<Mutex<VecDeque<Vec<f32>>>>);

impl AudioSource for Mic {
    fn poll_frame(&mut self, frame: &mut [f32]) -> Poll {
        match self.0.lock().unwrap().pop_front() {
            Some(f) => {
                frame.copy_from_slice(&f);
                Poll::Frame
            }
            None => Poll::Pending,
        }
    }
}

/// The speaker: everything played.
struct Speaker(Arc<Mutex<Vec<f32>>>);

impl AudioSink for Speaker {
    fn push(&mut self, pcm: &[f32], _text: Option<&str>) {
        self.0.lock().unwrap().extend_from_slice(pcm);
    }

    fn close(&mut self, _reason: &str) {}
}

/// The room between speaker and microphone: `played` delayed by one frame (playback and capture
/// latency) plus 25 ms, through a decaying four-tap filter, at about -6 dB. Sample `i` of the echo.
fn echo_at(played: &[f32], frame: usize, i: usize) -> f32 {
    let lag = frame + RATE / 40;
    let taps = [(0, 0.5), (7, 0.2), (19, -0.12), (240, 0.08)];
    taps.iter()
        .map(|&(k, g)| if i >= lag + k && i - lag - k < played.len() { g * played[i - lag - k] } else { 0.0 })
        .sum()
}

struct Run {
    transcript: String,
    /// The echo as it reached the microphone, and what the model heard instead.
    echo: Vec<f32>,
    heard: Vec<f32>,
}

/// One greedy session over `question`: with `echo`, the microphone also hears the model; with
/// `cancel`, through the daemon's echo canceller.
fn converse(engine: &Engine, question: &[f32], echo: bool, cancel: bool) -> Run {
    let frame = engine.frame_size();
    let frames = question.len().div_ceil(frame);
    let mut near = question.to_vec();
    near.resize(frames * frame, 0.0);
    let queue = Arc::new(Mutex::new(VecDeque::new()));
    let played = Arc::new(Mutex::new(Vec::new()));
    let mic: Box<dyn AudioSource> = Box::new(Mic(queue.clone()));
    let speaker: Box<dyn AudioSink> = Box::new(Speaker(played.clone()));
    let (mut source, mut sink) =
        if cancel { cancel_echo(mic, speaker, RATE as u32, frame).unwrap() } else { (mic, speaker) };
    let mut session = engine.init_session(GenConfig::greedy()).unwrap();
    let (mut transcript, mut echo_in, mut heard) = (String::new(), Vec::new(), Vec::new());
    let mut input = vec![0.0; frame];
    for t in 0..frames {
        let span = t * frame..(t + 1) * frame;
        let e: Vec<f32> = {
            let p = played.lock().unwrap();
            span.clone().map(|i| if echo { echo_at(&p, frame, i) } else { 0.0 }).collect()
        };
        queue.lock().unwrap().push_back(near[span].iter().zip(&e).map(|(q, e)| q + e).collect());
        assert_eq!(source.poll_frame(&mut input), Poll::Frame);
        echo_in.extend_from_slice(&e);
        heard.extend_from_slice(&input);
        let out = engine.step(&mut [&mut session], &input).unwrap().pop().unwrap();
        if let Some(p) = out.text.and_then(|t| engine.text_piece(t)) {
            transcript.push_str(&p);
        }
        sink.push(&out.pcm, None);
    }
    Run { transcript: transcript.trim().to_string(), echo: echo_in, heard }
}

/// The examples kokichi-tiny answers, each asked three times in a row.
fn thrice_asked(engine: &Engine) -> Vec<(String, Vec<f32>, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/examples");
    let text = std::fs::read_to_string(dir.join("expected.json")).unwrap();
    let map: BTreeMap<String, serde_json::Value> = serde_json::from_str(&text).unwrap();
    map.into_iter()
        .filter(|(_, v)| !v["answer"].as_str().unwrap().is_empty())
        .map(|(name, v)| {
            let q = kokichi::audio::read_audio(&dir.join(format!("{name}.wav")), engine.sample_rate() as u32).unwrap();
            let twice = [q.as_slice(), q.as_slice(), q.as_slice()].concat();
            (name, twice, v["answer"].as_str().unwrap().to_string())
        })
        .collect()
}

#[test]
fn the_model_answers_through_its_own_echo_with_the_canceller() {
    let files = model_dir::resolve(model_dir::EMBEDDED).unwrap();
    let engine = Engine::load(&files, &burn::prelude::Device::flex(), DType::F32).unwrap();
    let frame = engine.frame_size();
    let examples = thrice_asked(&engine);
    assert!(examples.len() >= 5);
    let (mut erles, mut stable) = (Vec::new(), 0);
    for (name, input, answer) in &examples {
        let clean = converse(&engine, input, false, false);
        let raw = converse(&engine, input, true, false);
        let aec = converse(&engine, input, true, true);
        // Where only the model speaks, in the last third: frames whose echo is loud, where the
        // question is silent.
        let half = input.len() * 2 / 3 / frame * frame;
        let (mut e, mut r) = (Vec::new(), Vec::new());
        for t in half / frame..aec.echo.len() / frame {
            let span = t * frame..(t + 1) * frame;
            let near: f32 = input.get(span.clone()).map_or(0.0, |x| x.iter().map(|v| v * v).sum());
            let echo: f32 = aec.echo[span.clone()].iter().map(|v| v * v).sum();
            if near < 1e-6 && echo > 1e-4 {
                e.extend_from_slice(&aec.echo[span.clone()]);
                r.extend_from_slice(&aec.heard[span]);
            }
        }
        let erle = erle_db(&e, &r);
        eprintln!(
            "{name}: expected {answer:?}; clean {:?}; echo {:?}; echo+AEC {:?}; ERLE {erle:.1} dB over {:.2} s",
            clean.transcript,
            raw.transcript,
            aec.transcript,
            e.len() as f64 / RATE as f64
        );
        assert!(e.len() >= frame * 3, "{name}: the model's last answer is too short to measure");
        erles.push(erle);
        let said = |t: &str| t.matches(answer.as_str()).count();
        let (n_clean, n_raw, n_aec) = (said(&clean.transcript), said(&raw.transcript), said(&aec.transcript));
        eprintln!("  {answer:?} said: clean {n_clean}, echo {n_raw}, echo+AEC {n_aec}");
        assert!(erle >= 20.0, "{name}: ERLE {erle:.1} dB");
        // Where the model answers all three times without echo, it does through the echo.
        if n_clean == 3 {
            stable += 1;
            assert!(n_aec >= 3, "{name}: {answer:?} said {n_aec} times through the echo, 3 without");
        }
    }
    let mean = erles.iter().sum::<f64>() / erles.len() as f64;
    eprintln!("ERLE mean {mean:.1} dB, min {:.1} dB", erles.iter().copied().fold(f64::INFINITY, f64::min));
    assert!(mean >= 22.0, "mean ERLE {mean:.1} dB");
    assert!(stable >= 4, "only {stable} examples answered right three times without echo");
}
