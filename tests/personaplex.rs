//! PersonaPlex's provided schedule and system prompts (src/lm/provided.rs, src/system_prompt.rs)
//! on random weights: an LM whose depth transformer predicts all 16 streams (the `lm_dep16`
//! fixture, checked against the `moshi` package in tests/lm_parity.rs) with the tiny fixture's
//! codec and tokenizer.
//!
//! - Stepping on the provided schedule is the teacher-forced forward pass over the history it
//!   leaves: every generated token is the greedy pick of `forward_teacher` on that history, and
//!   every provided token is in the history where the schedule puts it.
//! - In a conversation the user's streams are the microphone's codes, not the model's guesses.
//! - A prompted engine starts each session from the state its voice and role prompt left.

mod common;

use std::path::PathBuf;

use burn::prelude::*;
use burn::tensor::DType;
use common::*;
use kokichi::lm::{GenConfig, LmConfig, LmModel, Picking, Provided};
use kokichi::session::{Engine, FrameOut};
use kokichi::system_prompt::{self, SystemPrompt};

fn lm(device: &Device) -> LmModel {
    let dir = fixture("lm_dep16");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let cfg = LmConfig::from_json(&json["lm"].to_string()).unwrap();
    LmModel::load(&dir.join("model.safetensors"), cfg, device, DType::F32).unwrap()
}

/// A model folder: the tiny fixture's codec and tokenizer, the 16-stream LM.
fn personaplex_folder() -> PathBuf {
    let dir = scratch("personaplex", "model");
    if dir.join("config.json").exists() {
        return dir;
    }
    std::fs::create_dir_all(&dir).unwrap();
    let tiny = fixture("tiny_model");
    let dep16 = fixture("lm_dep16");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tiny.join("config.json")).unwrap()).unwrap();
    let lm: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dep16.join("config.json")).unwrap()).unwrap();
    cfg["lm"] = lm["lm"].clone();
    cfg["mimi_codebooks"] = 8.into();
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    std::fs::copy(dep16.join("model.safetensors"), dir.join("model.safetensors")).unwrap();
    for f in ["mimi.safetensors", "tokenizer.model"] {
        std::fs::copy(tiny.join(f), dir.join(f)).unwrap();
    }
    dir
}

fn engine(device: &Device) -> Engine {
    let files = kokichi::model_dir::resolve(personaplex_folder().to_str().unwrap()).unwrap();
    Engine::load(&files, device, DType::F32).unwrap()
}

fn code(i: usize, j: usize, card: usize) -> i64 {
    ((i * 31 + j * 17 + 5) % card) as i64
}

#[test]
fn provided_steps_are_the_teacher_forced_forward_of_their_history() {
    const CALLS: usize = 14;
    const PROMPT: usize = 5;
    for (kind, device) in devices() {
        let lm = lm(&device);
        let c = lm.config.clone();
        let (k, half, ring_delay) = (c.n_q + 1, c.n_q / 2, c.max_delay());
        for picking in [Picking::Host, Picking::Device] {
            let mut state = lm.init_state(&[GenConfig::greedy()]).unwrap();
            state.set_picking(picking);
            // given[s][p]: the token provided at position p of stream s.
            let mut given = vec![vec![None; CALLS + 2]; k];
            let mut history = vec![vec![None; CALLS + 2]; k];
            for o in 0..CALLS {
                let own: Vec<i64> = (0..half).map(|j| code(o, j, c.card)).collect();
                let user: Vec<i64> = (0..half).map(|j| code(o + 50, j, c.card)).collect();
                let text = (o < PROMPT).then_some((o % 7 + 4) as i64);
                let p = Provided { text, own: (o < PROMPT).then_some(&own[..]), user: Some(&user[..]) };
                if let Some(t) = text {
                    given[0][o] = Some(t);
                }
                for j in 0..half {
                    if o < PROMPT {
                        given[1 + j][o + c.delays[1 + j]] = Some(own[j]);
                    }
                    given[1 + half + j][o + c.delays[1 + half + j]] = Some(user[j]);
                }
                for (s, g) in given.iter_mut().enumerate() {
                    if o <= c.delays[s] {
                        g[o] = Some(if s == 0 { c.text_card as i64 } else { c.card as i64 });
                    }
                }
                let out = lm.step_provided(&mut state, &[p]).unwrap();
                assert_eq!(out.is_some(), o > ring_delay, "{kind} {picking:?}: call {o} output");
                if let Some(out) = out {
                    for s in 0..k {
                        let v = if s == 0 { out.text[0] } else { out.audio[s - 1] };
                        history[s][o - ring_delay + c.delays[s]] = Some(v);
                    }
                }
            }
            // Position 0 is every stream's initial token; the rest came out of the steps.
            let t = CALLS - ring_delay - 1;
            let mut codes = vec![0i64; k * t];
            let mut checked = 0;
            for s in 0..k {
                // Positions inside a stream's delay hold its initial token and never come out.
                for p in 0..=c.delays[s] {
                    history[s][p] = given[s][p];
                }
                for p in 0..=t {
                    let v = history[s][p].unwrap_or_else(|| panic!("{kind}: no token at stream {s} position {p}"));
                    if let Some(g) = given[s][p] {
                        assert_eq!(v, g, "{kind} {picking:?}: provided token at stream {s} position {p}");
                    }
                }
                for j in 0..t {
                    codes[s * t + j] = history[s].get(j + c.delays[s] + 1).copied().flatten().unwrap_or(0);
                }
            }
            let (text_logits, audio_logits) = lm.forward_teacher(&codes, 1, t).unwrap();
            let text_pick = ints(text_logits.argmax(2).flatten::<1>(0, 2));
            let audio_pick = ints(audio_logits.argmax(3).flatten::<1>(0, 3));
            for s in 0..k {
                for j in (0..t).filter(|&j| lm.valid_mask(s, j, t)) {
                    let p = j + c.delays[s] + 1;
                    if given[s][p].is_some() {
                        continue;
                    }
                    let pick = if s == 0 { text_pick[j] } else { audio_pick[(s - 1) * t + j] };
                    assert_eq!(pick, codes[s * t + j], "{kind} {picking:?}: stream {s} position {p}");
                    checked += 1;
                }
            }
            // Text after the prompt and the model's own audio after it are generated and checked.
            assert!(checked >= (t - PROMPT) * (1 + half) - 2 * half, "{kind}: only {checked} generated tokens checked");
        }
    }
}

#[test]
fn the_provided_schedule_refuses_what_it_cannot_take() {
    let device = Device::flex();
    let lm = lm(&device);
    let mut state = lm.init_state(&[GenConfig::greedy()]).unwrap();
    let short = [1i64; 3];
    let err = lm.step_provided(&mut state, &[Provided { user: Some(&short), ..Default::default() }]).unwrap_err();
    assert!(err.to_string().contains("3 user audio codes, the model takes 8"), "{err}");
    let bad = [64i64; 8];
    let err = lm.step_provided(&mut state, &[Provided { own: Some(&bad), ..Default::default() }]).unwrap_err();
    assert!(err.to_string().contains("own audio code 64 outside 0..64"), "{err}");
    let err = lm.step_provided(&mut state, &[]).unwrap_err();
    assert!(err.to_string().contains("0 provided frames for a batch of 1"), "{err}");
    // Moshi's kind (the user's streams are inputs, not predicted) has no provided schedule.
    let tiny = kokichi::model_dir::resolve(fixture("tiny_model").to_str().unwrap()).unwrap();
    let moshi = LmModel::load(&tiny.lm, tiny.lm_config.clone(), &device, DType::F32).unwrap();
    let mut state = moshi.init_state(&[GenConfig::greedy()]).unwrap();
    let err = moshi.step_provided(&mut state, &[Provided::default()]).unwrap_err();
    assert!(err.to_string().contains("predicts all"), "{err}");
}

/// The Mimi codes of `pcm` from a fresh encoder, `[frames][codebooks]`.
fn mic_codes(engine: &Engine, pcm: &[f32]) -> Vec<Vec<i64>> {
    let frame = engine.frame_size();
    let mut enc = engine.mimi.init_enc_state(1).unwrap();
    pcm.chunks_exact(frame)
        .map(|chunk| {
            let pcm = engine.mimi.pcm_tensor(chunk.to_vec(), [1, frame]);
            ints(engine.mimi.quantize(engine.mimi.encode_chunk_latent(&mut enc, pcm).unwrap()))
        })
        .collect()
}

fn converse(engine: &Engine, pcm: &[f32]) -> Vec<FrameOut> {
    let mut s = engine.init_session(GenConfig::greedy()).unwrap();
    pcm.chunks_exact(engine.frame_size()).map(|c| engine.step(&mut [&mut s], c).unwrap().remove(0)).collect()
}

#[test]
fn a_conversation_hears_the_microphone_after_the_system_prompt() {
    const FRAMES: usize = 10;
    let device = Device::flex();
    let mut engine = engine(&device);
    let c = engine.lm.config.clone();
    let frame = engine.frame_size();
    let mut pcm = kokichi::audio::read_audio(&fixture("speech/question.wav"), 24000).unwrap();
    pcm.resize(FRAMES * frame, 0.0);
    let plain = converse(&engine, &pcm);

    // The question at a tenth of its level as the voice, its last frame cut short.
    let voice: Vec<f32> = pcm[..pcm.len() - 100].iter().map(|s| s * 0.1).collect();
    let role = "You enjoy having a good conversation.";
    let prompt = SystemPrompt { voice: Some(voice), text: Some(role.into()) };
    let tokens = engine.tokenizer.as_ref().unwrap().encode_lossy(&system_prompt::wrap_with_system_tags(role)).unwrap();
    // As SentencePiece encodes it (the `sentencepiece` package on this tokenizer): the
    // characters the tiny vocabulary lacks (`<`, `>`, `Y`, `.`) are its unknown piece, 0.
    let want = [
        99, 0, 92, 85, 92, 97, 98, 86, 0, 99, 0, 96, 87, 99, 98, 95, 75, 96, 85, 99, 94, 93, 80, 91, 95, 79, 99, 93,
        42, 99, 82, 96, 95, 80, 98, 90, 92, 93, 97, 91, 96, 95, 0, 99, 0, 92, 85, 92, 97, 98, 86, 0,
    ];
    assert_eq!(tokens, want);
    let frames = engine.set_system_prompt(prompt).unwrap();
    assert_eq!(frames, FRAMES + 6 + tokens.len() + 6, "voice, silence, role, silence");
    let prompted = converse(&engine, &pcm);
    assert_eq!(converse(&engine, &pcm), prompted, "each session starts from its own copy of the prompted state");
    assert_ne!(prompted, plain, "the prompt changes the conversation");

    // The user's streams of every output are the microphone's codes, the own voice is decoded.
    let mic = mic_codes(&engine, &pcm);
    let half = c.n_q / 2;
    for (i, out) in prompted.iter().enumerate() {
        let audio = out.audio.as_ref().unwrap_or_else(|| panic!("frame {i}: no tokens"));
        assert_eq!(audio.len(), c.dep_q);
        for j in 0..half {
            // Output i is position (prompt + 1 + i) - 1 + delay; the microphone's frame f sits
            // at position prompt + 1 + f + delay (position 0 primes).
            let d = c.delays[1 + half + j];
            let f = i as i64 - 1;
            if f >= 0 && (f as usize) < FRAMES {
                assert_eq!(audio[half + j], mic[f as usize][j], "frame {i}: user codebook {j} (delay {d})");
            }
        }
        assert!(out.pcm.iter().all(|v| v.is_finite()));
    }
    // The first output is the prompt's last frame: padding text, silence as the model's audio.
    let silence = mic_codes(&engine, &vec![0.0; frame]).remove(0);
    assert_eq!(prompted[0].text, Some(c.existing_text_padding_id as i64));
    assert_eq!(prompted[0].audio.as_ref().unwrap()[0], silence[0], "semantic code of the silence frame");

    // A prompted session and an unprompted one share a batch and answer as alone.
    let mut a = engine.init_session(GenConfig::greedy()).unwrap();
    let mut b = self::engine(&device).init_session(GenConfig::greedy()).unwrap();
    for (f, chunk) in pcm.chunks_exact(frame).enumerate() {
        let two: Vec<f32> = chunk.iter().chain(chunk).copied().collect();
        let outs = engine.step(&mut [&mut a, &mut b], &two).unwrap();
        assert_eq!(outs[0], prompted[f], "frame {f}: the prompted session in a batch");
        assert_eq!(outs[1], plain[f], "frame {f}: the unprompted session in a batch");
    }
}

#[test]
fn system_prompt_errors_are_one_clear_line() {
    let device = Device::flex();
    let mut engine = engine(&device);
    let err = engine.set_system_prompt(SystemPrompt { voice: Some(vec![0.0; 24000]), text: None }).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("voice prompt") && msg.contains("loudness") && !msg.contains('\n'), "{msg}");
    let tiny = kokichi::model_dir::resolve(fixture("tiny_model").to_str().unwrap()).unwrap();
    let mut moshi = Engine::load(&tiny, &device, DType::F32).unwrap();
    let err = moshi.set_system_prompt(SystemPrompt { voice: None, text: Some("hi".into()) }).unwrap_err();
    assert!(err.to_string().contains("PersonaPlex"), "{err}");
}

#[test]
fn kokichi_run_takes_a_voice_and_a_role_prompt() {
    let dir = personaplex_folder();
    let out = scratch("personaplex", "answer.wav");
    let voice = fixture("speech/question.wav");
    let run = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_kokichi"))
            .args(["--backend", "cpu", "run", "--model", dir.to_str().unwrap()])
            .args(["--input", voice.to_str().unwrap(), "--output", out.to_str().unwrap()])
            .args(extra)
            .output()
            .unwrap()
    };
    let ok = run(&["--voice-prompt", voice.to_str().unwrap(), "--text-prompt", "You are a helpful assistant."]);
    let log = String::from_utf8_lossy(&ok.stderr);
    assert!(ok.status.success(), "{log}");
    assert!(log.contains("system prompt stepped"), "{log}");
    let answer = kokichi::audio::read_audio(&out, 24000).unwrap();
    let question = kokichi::audio::read_audio(&voice, 24000).unwrap();
    assert!(answer.len() >= question.len(), "{} samples for {}", answer.len(), question.len());
    // On Moshi's kind of model a system prompt is refused in one line.
    let tiny = fixture("tiny_model");
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_kokichi"))
        .args(["--backend", "cpu", "run", "--model", tiny.to_str().unwrap()])
        .args(["--input", voice.to_str().unwrap(), "--output", out.to_str().unwrap(), "--text-prompt", "hi"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && err.contains("PersonaPlex"), "{err}");
}
