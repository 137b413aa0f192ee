//! Sessions prompted by prefix latents (`kokichi::gist`): through the library, `kokichi run
//! --gist` and the daemon's `--gist NAME=FILE` with `?gist=NAME`; bad gists are refused with the
//! file or the name in the message.

mod common;

use burn::tensor::DType;
use common::*;
use kokichi::gist::Gist;
use kokichi::lm::GenConfig;
use kokichi::session::{Engine, Taps};

const FRAMES: usize = 12;

fn question(frame: usize) -> Vec<f32> {
    let mut pcm = kokichi::audio::read_audio(&fixture("speech/question.wav"), 24000).expect("read the question");
    pcm.resize(FRAMES * frame, 0.0);
    pcm
}

/// A gist of `k` vectors of width `dim`, deterministic, of the size of the model's activations.
fn gist(k: usize, dim: usize, seed: u32) -> Gist {
    let values = (0..k * dim).map(|i| (i as f32 * 0.37 + seed as f32 * 1.3).sin() * 1.7).collect();
    Gist::new(values, k, dim).expect("gist")
}

fn fixture_files() -> kokichi::model_dir::ModelFiles {
    kokichi::model_dir::resolve(fixture("tiny_model").to_str().unwrap_or_default()).expect("fixture")
}

/// The `lm` tap of every frame of `pcm` for a session started with `gist`.
fn lm_taps(engine: &Engine, gist: Option<&Gist>, pcm: &[f32]) -> Vec<Vec<f32>> {
    let mut session = engine.init_session_with(GenConfig::greedy(), gist).expect("session");
    session.taps = Taps { lm: true, ..Taps::default() };
    pcm.chunks_exact(engine.frame_size())
        .map(|chunk| engine.step(&mut [&mut session], chunk).expect("step").remove(0).latents.lm.expect("lm tap"))
        .collect()
}

#[test]
fn a_gist_prompts_the_session_on_every_backend() {
    let files = fixture_files();
    let mut per_backend = Vec::new();
    for (kind, device) in devices() {
        let engine = Engine::load(&files, &device, DType::F32).expect("load");
        let dim = engine.lm.config.dim;
        let pcm = question(engine.frame_size());
        let plain = lm_taps(&engine, None, &pcm);
        let prompted = lm_taps(&engine, Some(&gist(3, dim, 1)), &pcm);
        let other = lm_taps(&engine, Some(&gist(3, dim, 2)), &pcm);
        assert_eq!(lm_taps(&engine, None, &pcm), plain, "{kind}: a plain session is deterministic");
        assert_eq!(lm_taps(&engine, Some(&gist(3, dim, 1)), &pcm), prompted, "{kind}: so is a prompted one");
        for (what, a, b) in [("no gist", &plain, &prompted), ("another gist", &other, &prompted)] {
            let d = a[0].iter().zip(&b[0]).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
            assert!(d > 1e-3, "{kind}: the first frame's output is the same as with {what} ({d})");
        }
        // Two sessions, prompted and not, stepped in one batch, each as alone.
        let mut a = engine.init_session_with(GenConfig::greedy(), Some(&gist(3, dim, 1))).expect("session");
        let mut b = engine.init_session(GenConfig::greedy()).expect("session");
        a.taps.lm = true;
        b.taps.lm = true;
        let frame = engine.frame_size();
        for (f, chunk) in pcm.chunks_exact(frame).enumerate() {
            let both: Vec<f32> = chunk.iter().chain(chunk).copied().collect();
            let outs = engine.step(&mut [&mut a, &mut b], &both).expect("step");
            assert_close(
                &format!("{kind} batched prompted {f}"),
                outs[0].latents.lm.as_ref().unwrap(),
                &prompted[f],
                1e-4,
            );
            assert_close(&format!("{kind} batched plain {f}"), outs[1].latents.lm.as_ref().unwrap(), &plain[f], 1e-4);
        }
        per_backend.push((kind, prompted));
    }
    // The first frames agree across backends (later ones may follow different greedy tokens).
    if let [(ka, a), (kb, b), ..] = per_backend.as_slice() {
        for f in 0..2 {
            assert_close(&format!("{ka} vs {kb} frame {f}"), &a[f], &b[f], 1e-3);
        }
    }
}

#[test]
fn run_takes_a_gist_and_names_a_bad_one() {
    let input = fixture("speech/question.wav");
    let dim = fixture_files().lm_config.dim;
    let good = scratch("gist_sessions", "good.safetensors");
    gist(4, dim, 3).write(&good).expect("write");
    let wide = scratch("gist_sessions", "wide.safetensors");
    gist(4, dim + 2, 3).write(&wide).expect("write");
    let run = |gist: &std::path::Path, tag: &str| {
        let out = scratch("gist_sessions", &format!("{tag}-tokens.safetensors"));
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_kokichi"))
            .args(["--backend", "cpu", "run", "--greedy", "--model"])
            .arg(fixture("tiny_model"))
            .arg("--input")
            .arg(&input)
            .arg("--output")
            .arg(scratch("gist_sessions", &format!("{tag}.wav")))
            .arg("--dump-tokens")
            .arg(&out)
            .arg("--gist")
            .arg(gist)
            .output()
            .expect("kokichi run");
        (o.status.success(), String::from_utf8_lossy(&o.stderr).to_string(), out)
    };
    let (ok, stderr, tokens) = run(&good, "good");
    assert!(ok, "{stderr}");
    assert!(tokens.is_file(), "no tokens written");
    let (ok, stderr, _) = run(&wide, "wide");
    assert!(!ok, "a gist of the wrong width was taken");
    let last = stderr.trim().lines().last().unwrap_or_default();
    assert!(last.contains("wide.safetensors") && last.contains("d_model"), "{stderr}");
}

#[test]
fn gist_settings_are_checked() {
    use kokichi::daemon::settings::RuntimeSettings;
    let with = |entries: &[&str]| RuntimeSettings {
        gist: entries.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    assert_eq!(with(&["a=x.st", "b-2=/y"]).gists().expect("valid").len(), 2);
    for (bad, says) in
        [(&["nofile"][..], "NAME=FILE"), (&["a b=x"], "letters"), (&["a=x", "a=y"], "twice"), (&["a="], "no file")]
    {
        let e = with(bad).gists().expect_err("invalid").to_string();
        assert!(e.contains("gist") && e.contains(says), "{bad:?}: {e}");
    }
}

/// `?gist=NAME` starts the client's session with that gist: its `lm` taps are the library's
/// for the same gist and differ from a plain session's; an unknown name is refused by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_starts_sessions_with_a_named_gist() {
    use common::live::{FRAME, Running, raw_http, test_settings};
    use futures_util::{SinkExt, StreamExt};
    use kokichi::latent_frame::{self, Tap};
    use tokio_tungstenite::tungstenite::Message;

    let files = fixture_files();
    let engine = Engine::load(&files, &burn::prelude::Device::flex(), DType::F32).expect("load");
    let persona = gist(5, engine.lm.config.dim, 4);
    let path = scratch("gist_sessions", "persona.safetensors");
    persona.write(&path).expect("write");
    let mut settings = test_settings("gist_sessions", "daemon");
    settings.runtime.gist = vec![format!("persona={}", path.display())];
    let d = Running::start(settings).await;
    let frames = 8;
    let pcm = question(FRAME)[..frames * FRAME].to_vec();

    let stream = |query: &'static str| {
        let (addr, pcm) = (d.addr, pcm.clone());
        async move {
            let (ws, _) =
                tokio_tungstenite::connect_async(format!("ws://{addr}/api/pcm?{query}")).await.expect("connect");
            let (mut tx, mut rx) = ws.split();
            let send = async {
                for chunk in pcm.chunks(FRAME) {
                    let bytes: Vec<u8> = chunk.iter().flat_map(|v| v.to_le_bytes()).collect();
                    tx.send(Message::Binary(bytes.into())).await.expect("send");
                    tokio::time::sleep(std::time::Duration::from_millis(80)).await;
                }
                tx
            };
            let recv = async {
                let mut lm = vec![Vec::new(); frames];
                let mut audio = 0;
                while audio < frames {
                    match tokio::time::timeout(std::time::Duration::from_secs(10), rx.next()).await {
                        Ok(Some(Ok(Message::Binary(b)))) if b.starts_with(latent_frame::PCM_TAG) => {
                            let l = latent_frame::decode(&b[4..]).expect("a latent message");
                            assert_eq!(l.tap, Tap::Lm);
                            lm[l.frame as usize] = l.values;
                        }
                        Ok(Some(Ok(Message::Binary(_)))) => audio += 1,
                        Ok(Some(Ok(_))) => {}
                        other => panic!("the stream ended early: {other:?}"),
                    }
                }
                lm
            };
            let (mut tx, lm) = tokio::join!(send, recv);
            let _ = tx.close().await;
            lm
        }
    };
    let (prompted, plain) = tokio::join!(stream("gist=persona&latents=lm"), stream("latents=lm"));
    let want = lm_taps(&engine, Some(&persona), &pcm);
    let want_plain = lm_taps(&engine, None, &pcm);
    assert_eq!(prompted, want, "the daemon's prompted session differs from the library's");
    assert_eq!(plain, want_plain, "the daemon's plain session differs from the library's");
    assert_ne!(prompted[0], plain[0], "the gist changed nothing");

    let refused = raw_http(
        d.addr,
        "GET /api/pcm?gist=villain HTTP/1.1\r\nHost: localhost\r\nConnection: close, Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await;
    assert!(
        refused.starts_with("HTTP/1.1 400") && refused.contains("villain") && refused.contains("persona"),
        "{refused}"
    );
    d.shutdown().await;

    // A gist of another width stops the daemon at start, naming the file.
    let wide = scratch("gist_sessions", "wide-daemon.safetensors");
    gist(2, engine.lm.config.dim + 1, 5).write(&wide).expect("write");
    let mut settings = test_settings("gist_sessions", "daemon-wide");
    settings.runtime.gist = vec![format!("wide={}", wide.display())];
    let e = kokichi::daemon::run(settings, std::future::pending()).await.expect_err("a wrong width was taken");
    assert!(e.to_string().contains("wide-daemon.safetensors"), "{e}");
}

/// A streaming session started with a gist, run greedily well past the LM's context (the gist
/// pinned), against the batch form training uses (`forward_teacher_prefixed`) on the tokens it
/// produced: each greedy token is the batch form's best (within float noise), so what a gist is
/// trained for is what a session with it does.
#[test]
fn streaming_with_a_gist_matches_the_prefixed_teacher() {
    let files = fixture_files();
    for (kind, device) in devices() {
        let engine = Engine::load(&files, &device, DType::F32).expect("load");
        let lm = &engine.lm;
        let c = &lm.config;
        let g = gist(4, c.dim, 7);
        let mut state = lm.init_state_with_gist(GenConfig::greedy(), &g).expect("state");
        let user = c.user_streams();
        let steps = 3 * c.context.unwrap_or(8) + 4;
        let user_codes: Vec<Vec<i64>> =
            (0..steps).map(|i| (0..user).map(|k| ((i * 7 + k * 13 + 5) % c.card) as i64).collect()).collect();
        let mut outs = Vec::new();
        for u in &user_codes {
            if let Some(o) = lm.step(&mut state, u, user).expect("step") {
                outs.push(o);
            }
        }
        // Undelayed codes [1, 1 + n_q, T]: text, the model's audio, the user's (a step's user
        // codes sit in the frame before its outputs', as in Moshi's delayed layout).
        let t = outs.len();
        let k = c.n_q + 1;
        let mut codes = vec![0i64; k * t];
        for (i, o) in outs.iter().enumerate() {
            codes[i] = o.text[0];
            for s in 0..c.dep_q {
                codes[(1 + s) * t + i] = o.audio[s];
            }
            for u in 0..user {
                codes[(1 + c.dep_q + u) * t + i] = user_codes[i + 1][u];
            }
        }
        let prefix = kokichi::backend::floats(g.values.clone(), [g.k, g.dim], &device, lm.dtype());
        let teacher = lm.forward_teacher_prefixed(Some(prefix), &codes, 1, t).expect("teacher");
        let text = floats(teacher.text);
        let audio = floats(teacher.audio);
        let v = c.text_out();
        let near_best = |row: &[f32], tok: i64| {
            let best = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            best - row[tok as usize] <= 1e-3
        };
        let mut checked = 0;
        for i in 0..t {
            if lm.valid_mask(0, i, t) {
                assert!(near_best(&text[i * v..(i + 1) * v], codes[i]), "{kind}: text token of frame {i}");
                checked += 1;
            }
            for s in 0..c.dep_q {
                if lm.valid_mask(s + 1, i, t) {
                    let row = &audio[(s * t + i) * c.card..(s * t + i + 1) * c.card];
                    assert!(near_best(row, codes[(1 + s) * t + i]), "{kind}: audio stream {s} of frame {i}");
                    checked += 1;
                }
            }
        }
        assert!(checked > 3 * c.context.unwrap_or(8), "{kind}: only {checked} tokens checked");
    }
}
