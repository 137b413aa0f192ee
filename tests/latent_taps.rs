//! Latent taps (`Session` step output) against the model's own intermediate tensors, on every
//! backend: the `mimi` tap equals the codec's latent from a whole-signal pass (`Mimi::trace`),
//! and the `lm` tap equals the temporal output of a plain step on host picking (on wgpu, the
//! session steps through the fused kernels instead). A session that asks for nothing gets
//! nothing, also when it shares a batch with one that asks.

mod common;

use burn::tensor::DType;
use common::*;
use kokichi::lm::{GenConfig, Picking};
use kokichi::session::{Engine, Taps, TopLogits};

const FRAMES: usize = 10;
/// Frames within the fixture codec's transformer context (10 positions at 25 Hz).
const CONTEXT_FRAMES: usize = 4;

fn question(frame: usize) -> Vec<f32> {
    let mut pcm = kokichi::audio::read_audio(&fixture("speech/question.wav"), 24000).expect("read the question");
    pcm.resize(FRAMES * frame, 0.0);
    pcm
}

#[test]
fn taps_are_the_models_own_intermediates() {
    let files = kokichi::model_dir::resolve(fixture("tiny_model").to_str().unwrap_or_default()).expect("fixture");
    for (kind, device) in devices() {
        let engine = Engine::load(&files, &device, DType::F32).expect("load");
        let frame = engine.frame_size();
        let pcm = question(frame);
        let (c, d) = (engine.mimi.latent_dim(), engine.lm.config.dim);

        // Two sessions in one batch, only the first tapping.
        let mut tapped = engine.init_session(GenConfig::greedy()).expect("session");
        tapped.taps = Taps { mimi: true, lm: true, logits: 5 };
        let mut plain = engine.init_session(GenConfig::greedy()).expect("session");
        let (mut mimi, mut lm, mut top) = (Vec::new(), Vec::new(), Vec::new());
        for chunk in pcm.chunks_exact(frame) {
            let both: Vec<f32> = chunk.iter().chain(chunk).copied().collect();
            let outs = engine.step(&mut [&mut tapped, &mut plain], &both).expect("step");
            let latents = &outs[0].latents;
            mimi.extend(latents.mimi.clone().expect("the mimi tap"));
            lm.extend(latents.lm.clone().expect("the lm tap"));
            top.push(latents.logits.clone().expect("the logits tap"));
            assert_eq!(outs[1].latents, Default::default(), "{kind}: an untapped session got latents");
            assert_eq!(outs[0].pcm, outs[1].pcm, "{kind}: tapping changed the output");
        }
        assert_eq!((mimi.len(), lm.len()), (FRAMES * c, FRAMES * d), "{kind}: tap sizes");

        // Mimi: the whole-signal latent [1, C, T], as [T, C], over the frames within the
        // codec transformer's context (past it, streaming and whole-signal passes differ, as
        // in the reference).
        let trace = engine.mimi.trace(engine.mimi.pcm_tensor(pcm.clone(), [1, FRAMES * frame])).expect("trace");
        let whole = floats(trace.latent.reshape([c, FRAMES]).transpose());
        let within = CONTEXT_FRAMES * c;
        assert_close(&format!("{kind} mimi tap"), &mimi[..within], &whole[..within], 1e-4);

        // Every frame: a streaming encoder and an LM state of their own, the LM on host picking
        // (plain Burn ops; the session's steps on wgpu go through the fused kernels).
        let mut enc = engine.mimi.init_enc_state(1).expect("encoder");
        let mut state = engine.lm.init_state(&[GenConfig::greedy()]).expect("lm state");
        state.set_picking(Picking::Host);
        state.set_keep_hidden(true);
        state.set_keep_text_logits(true);
        let (mut want_mimi, mut want_lm, mut want_top) = (Vec::new(), Vec::new(), Vec::new());
        for chunk in pcm.chunks_exact(frame) {
            let pcm = engine.mimi.pcm_tensor(chunk.to_vec(), [1, frame]);
            let latent = engine.mimi.encode_chunk_latent(&mut enc, pcm).expect("encode");
            want_mimi.extend(floats(latent.clone()));
            let codes = engine.mimi.quantize(latent);
            let q = codes.dims()[1];
            engine.lm.step(&mut state, &ints(codes), q).expect("lm step");
            want_lm.extend(floats(state.take_hidden().expect("kept hidden state")));
            want_top.push(TopLogits::of(&floats(state.take_text_logits().expect("kept logits")), 5));
        }
        assert_close(&format!("{kind} mimi tap, streaming"), &mimi, &want_mimi, 1e-5);
        assert_close(&format!("{kind} lm tap"), &lm, &want_lm, 1e-4);
        for (f, (got, want)) in top.iter().zip(&want_top).enumerate() {
            assert_eq!(got.ids, want.ids, "{kind} logits tap, frame {f}");
            assert_close(&format!("{kind} logits tap, frame {f}"), &got.values, &want.values, 1e-4);
        }
    }
}

#[test]
fn run_dumps_the_latents_of_every_frame() {
    let dir = scratch("latent_taps", "run");
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let latents = dir.join("latents.safetensors");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_kokichi"))
        .args(["--backend", "cpu", "run", "--greedy", "--model"])
        .arg(fixture("tiny_model"))
        .arg("--input")
        .arg(fixture("speech/question.wav"))
        .arg("--output")
        .arg(dir.join("answer.wav"))
        .arg("--dump-latents")
        .arg(&latents)
        .status()
        .expect("run kokichi");
    assert!(status.success());
    let got = Expected::open(latents);

    // The same frames through the library, on the same backend.
    let files = kokichi::model_dir::resolve(fixture("tiny_model").to_str().unwrap_or_default()).expect("fixture");
    let engine = Engine::load(&files, &burn::prelude::Device::flex(), DType::F32).expect("load");
    let frame = engine.frame_size();
    let mut pcm = kokichi::audio::read_audio(&fixture("speech/question.wav"), 24000).expect("read the question");
    let frames = pcm.len().div_ceil(frame);
    pcm.resize(frames * frame, 0.0);
    let mut session = engine.init_session(GenConfig::greedy()).expect("session");
    session.taps = Taps { mimi: true, lm: true, logits: 10 };
    let (mut mimi, mut lm, mut ids, mut values) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for chunk in pcm.chunks_exact(frame) {
        let out = engine.step(&mut [&mut session], chunk).expect("step").remove(0);
        mimi.extend(out.latents.mimi.expect("mimi tap"));
        lm.extend(out.latents.lm.expect("lm tap"));
        let top = out.latents.logits.expect("logits tap");
        ids.extend(top.ids.iter().map(|&i| i64::from(i)));
        values.extend(top.values);
    }
    assert_eq!(got.shape("mimi"), vec![frames, engine.mimi.latent_dim()]);
    assert_eq!(got.shape("lm"), vec![frames, engine.lm.config.dim]);
    assert_eq!(got.f32("mimi"), mimi);
    assert_eq!(got.f32("lm"), lm);
    assert_eq!(got.shape("logits_ids"), vec![frames, 10]);
    assert_eq!(got.i64("logits_ids"), ids);
    assert_eq!(got.f32("logits"), values);
    std::fs::remove_dir_all(&dir).ok();
}

/// `/api/pcm?latents=mimi,lm`: every frame's taps arrive as tagged messages, equal to the
/// library's; a client that does not ask gets none, and an unknown tap name is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_streams_the_taps_a_client_asks_for() {
    use common::live::{FRAME, Running, raw_http, test_settings};
    use futures_util::{SinkExt, StreamExt};
    use kokichi::latent_frame::{self, Tap};
    use tokio_tungstenite::tungstenite::Message;

    let d = Running::start(test_settings("latent_taps", "daemon")).await;
    let frames = 12;
    let pcm = question(FRAME);
    let pcm = &pcm[..frames.min(FRAMES) * FRAME];
    let frames = pcm.len() / FRAME;

    let stream = |query: &'static str| {
        let addr = d.addr;
        let pcm = pcm.to_vec();
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
                let (mut audio, mut latents) = (0, Vec::new());
                while audio < frames {
                    match tokio::time::timeout(std::time::Duration::from_secs(10), rx.next()).await {
                        Ok(Some(Ok(Message::Binary(b)))) if b.starts_with(latent_frame::PCM_TAG) => {
                            latents.push(latent_frame::decode(&b[4..]).expect("a latent message"));
                        }
                        Ok(Some(Ok(Message::Binary(_)))) => audio += 1,
                        Ok(Some(Ok(_))) => {}
                        other => panic!("the stream ended early: {other:?}"),
                    }
                }
                latents
            };
            let (mut tx, latents) = tokio::join!(send, recv);
            let _ = tx.close().await;
            latents
        }
    };
    let (tapped, untapped) = tokio::join!(stream("latents=mimi,lm,logits:5"), stream(""));
    assert!(untapped.is_empty(), "a client that did not ask got {} latent messages", untapped.len());

    // The library's taps for the same frames.
    let files = kokichi::model_dir::resolve(fixture("tiny_model").to_str().unwrap_or_default()).expect("fixture");
    let engine = Engine::load(&files, &burn::prelude::Device::flex(), DType::F32).expect("load");
    let mut session = engine.init_session(GenConfig::greedy()).expect("session");
    session.taps = Taps { mimi: true, lm: true, logits: 5 };
    for (f, chunk) in pcm.chunks_exact(FRAME).enumerate() {
        let out = engine.step(&mut [&mut session], chunk).expect("step").remove(0);
        let top = out.latents.logits.expect("library logits tap");
        let top = top.ids.iter().map(|&i| i as f32).chain(top.values).collect();
        for (tap, want) in [(Tap::Mimi, out.latents.mimi), (Tap::Lm, out.latents.lm), (Tap::Logits, Some(top))] {
            let want = want.expect("library tap");
            let got = tapped
                .iter()
                .find(|l| l.tap == tap && l.frame == f as u64)
                .unwrap_or_else(|| panic!("no {} latent for frame {f}", tap.name()));
            let shape = if tap == Tap::Logits { vec![2, want.len() / 2] } else { vec![want.len()] };
            assert_eq!(got.shape, shape);
            assert_eq!(got.values, want, "{} latent of frame {f}", tap.name());
        }
    }

    let refused = raw_http(
        d.addr,
        "GET /api/pcm?latents=mimi,gist HTTP/1.1\r\nHost: localhost\r\nConnection: close, Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await;
    assert!(refused.starts_with("HTTP/1.1 400") && refused.contains("gist"), "{refused}");
    d.shutdown().await;
}
