//! Codec-latent input: a session fed Mimi latents instead of audio (`FrameIn::Latent`,
//! `/api/pcm?input=latents`) answers exactly as one fed the audio those latents came from, alone
//! or in a batch with audio sessions; malformed latent frames are refused with a clear message.

mod common;

use burn::tensor::DType;
use common::*;
use kokichi::lm::GenConfig;
use kokichi::session::{Engine, FrameIn, FrameOut, Taps};

const FRAMES: usize = 10;

fn question(frame: usize) -> Vec<f32> {
    let mut pcm = kokichi::audio::read_audio(&fixture("speech/question.wav"), 24000).expect("read the question");
    pcm.resize(FRAMES * frame, 0.0);
    pcm
}

fn fixture_engine(device: &burn::prelude::Device) -> Engine {
    let files = kokichi::model_dir::resolve(fixture("tiny_model").to_str().unwrap_or_default()).expect("fixture");
    Engine::load(&files, device, DType::F32).expect("load")
}

#[test]
fn latent_input_answers_as_the_audio_it_came_from() {
    for (kind, device) in devices() {
        let engine = fixture_engine(&device);
        let frame = engine.frame_size();
        let pcm = question(frame);
        // Audio in, every frame's Mimi latent tapped.
        let mut heard = engine.init_session(GenConfig::greedy()).expect("session");
        heard.taps = Taps { mimi: true, lm: true, ..Taps::default() };
        let by_audio: Vec<FrameOut> =
            pcm.chunks_exact(frame).map(|c| engine.step(&mut [&mut heard], c).expect("step").remove(0)).collect();
        let latents: Vec<Vec<f32>> = by_audio.iter().map(|o| o.latents.mimi.clone().expect("mimi tap")).collect();

        // The same latents in, beside an audio session in one batch.
        let mut fed = engine.init_session(GenConfig::greedy()).expect("session");
        fed.taps = Taps { mimi: true, lm: true, ..Taps::default() };
        let mut beside = engine.init_session(GenConfig::greedy()).expect("session");
        beside.taps = Taps { mimi: true, lm: true, ..Taps::default() };
        for (f, (chunk, latent)) in pcm.chunks_exact(frame).zip(&latents).enumerate() {
            let outs = engine
                .step_inputs(&mut [&mut fed, &mut beside], &[FrameIn::Latent(latent), FrameIn::Pcm(chunk)])
                .expect("step");
            let want = &by_audio[f];
            for (who, got) in [("latent-fed", &outs[0]), ("audio beside it", &outs[1])] {
                assert_eq!(got.text, want.text, "{kind} {who} frame {f}: text token");
                assert_eq!(got.audio, want.audio, "{kind} {who} frame {f}: audio tokens");
                let (g, w) = (got.latents.lm.as_ref().unwrap(), want.latents.lm.as_ref().unwrap());
                assert_close(&format!("{kind} {who} frame {f}: lm"), g, w, 1e-4);
                assert_close(&format!("{kind} {who} frame {f}: pcm"), &got.pcm, &want.pcm, 1e-4);
            }
            assert_eq!(outs[0].latents.mimi.as_ref(), Some(latent), "{kind}: the mimi tap echoes the input");
        }

        // Wrong width and non-finite values are refused, naming what is wrong.
        let mut s = engine.init_session(GenConfig::greedy()).expect("session");
        let short = vec![0.0; engine.mimi.latent_dim() - 1];
        let e = engine.step_inputs(&mut [&mut s], &[FrameIn::Latent(&short)]).expect_err("short latent").to_string();
        assert!(e.contains("latent") && e.contains(&engine.mimi.latent_dim().to_string()), "{e}");
        let nan = vec![f32::NAN; engine.mimi.latent_dim()];
        let e = engine.step_inputs(&mut [&mut s], &[FrameIn::Latent(&nan)]).expect_err("NaN latent").to_string();
        assert!(e.contains("finite"), "{e}");
    }
}

/// Client one streams audio and asks for the `mimi` tap; client two sends those latents back
/// with `?input=latents` and hears the same answer, frame for frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_takes_latents_instead_of_audio() {
    use common::live::{FRAME, Running, raw_http, test_settings};
    use futures_util::{SinkExt, StreamExt};
    use kokichi::latent_frame::{self, Tap};
    use std::time::Duration;
    use tokio_tungstenite::tungstenite::Message;

    let d = Running::start(test_settings("latent_input", "daemon")).await;
    let pcm = question(FRAME);

    /// Sends `messages` at real time; returns the audio frames and the `mimi` latents received.
    async fn exchange(
        addr: std::net::SocketAddr,
        query: &str,
        messages: Vec<Vec<u8>>,
        frames: usize,
    ) -> (Vec<Vec<u8>>, Vec<Vec<f32>>) {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/api/pcm?{query}")).await.expect("connect");
        let (mut tx, mut rx) = ws.split();
        let send = async {
            for m in messages {
                tx.send(Message::Binary(m.into())).await.expect("send");
                tokio::time::sleep(Duration::from_millis(80)).await;
            }
            tx
        };
        let recv = async {
            let (mut audio, mut latents) = (Vec::new(), Vec::new());
            while audio.len() < frames {
                match tokio::time::timeout(Duration::from_secs(10), rx.next()).await {
                    Ok(Some(Ok(Message::Binary(b)))) if b.starts_with(latent_frame::PCM_TAG) => {
                        let l = latent_frame::decode(&b[4..]).expect("latent message");
                        assert_eq!(l.tap, Tap::Mimi);
                        latents.push(l.values);
                    }
                    Ok(Some(Ok(Message::Binary(b)))) => audio.push(b.to_vec()),
                    Ok(Some(Ok(_))) => {}
                    other => panic!("the stream ended early: {other:?}"),
                }
            }
            (audio, latents)
        };
        let (mut tx, got) = tokio::join!(send, recv);
        let _ = tx.close().await;
        got
    }

    let audio_messages: Vec<Vec<u8>> =
        pcm.chunks(FRAME).map(|c| c.iter().flat_map(|v| v.to_le_bytes()).collect()).collect();
    let (heard, latents) = exchange(d.addr, "latents=mimi", audio_messages, FRAMES).await;
    assert_eq!(latents.len(), FRAMES, "one mimi latent a frame");
    let c = latents[0].len();
    // Frames one at a time, then the rest as one [T, C] message.
    let mut messages: Vec<Vec<u8>> = latents[..4]
        .iter()
        .enumerate()
        .map(|(f, l)| {
            let mut m = latent_frame::PCM_TAG.to_vec();
            latent_frame::encode(Tap::Mimi, f as u64, &[c], l, &mut m);
            m
        })
        .collect();
    let rest: Vec<f32> = latents[4..].concat();
    let mut m = latent_frame::PCM_TAG.to_vec();
    latent_frame::encode(Tap::Mimi, 4, &[FRAMES - 4, c], &rest, &mut m);
    messages.push(m);
    let (fed, _) = exchange(d.addr, "input=latents", messages, FRAMES).await;
    assert_eq!(fed, heard, "latent input answered differently from the audio it came from");

    // Malformed latent frames: an error message naming the problem, then a close.
    for (what, message, says) in [
        ("audio bytes", vec![0u8; 4 * c], "KKLT"),
        (
            "the lm tap",
            {
                let mut m = latent_frame::PCM_TAG.to_vec();
                latent_frame::encode(Tap::Lm, 0, &[c], &latents[0], &mut m);
                m
            },
            "mimi tap",
        ),
        (
            "a narrow latent",
            {
                let mut m = latent_frame::PCM_TAG.to_vec();
                latent_frame::encode(Tap::Mimi, 0, &[c - 1], &latents[0][1..], &mut m);
                m
            },
            "expected",
        ),
    ] {
        let (ws, _) =
            tokio_tungstenite::connect_async(format!("ws://{}/api/pcm?input=latents", d.addr)).await.expect("connect");
        let (mut tx, mut rx) = ws.split();
        tx.send(Message::Binary(message.into())).await.expect("send");
        let mut error = None;
        let mut closed = false;
        while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(10), rx.next()).await {
            match msg {
                Ok(Message::Text(t)) => error = Some(t.to_string()),
                Ok(Message::Close(_)) | Err(_) => {
                    closed = true;
                    break;
                }
                _ => {}
            }
        }
        let error = error.unwrap_or_else(|| panic!("{what}: no error message"));
        assert!(error.starts_with("error:") && error.contains(says), "{what}: {error}");
        assert!(closed, "{what}: not closed");
    }
    let refused = raw_http(
        d.addr,
        "GET /api/pcm?input=mel HTTP/1.1\r\nHost: localhost\r\nConnection: close, Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await;
    assert!(refused.starts_with("HTTP/1.1 400") && refused.contains("mel"), "{refused}");
    d.shutdown().await;
}
