//! `/api/chat` (Moshi's protocol) and the limits every endpoint enforces: a malformed Ogg page,
//! an unknown kind byte, text where binary is expected, an oversize message, a client that never
//! reads: each gets an error or a close for that client alone, while another session keeps real
//! time. Plus the token, origin and per-peer connection checks.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::live::test_settings;
use futures_util::{SinkExt, StreamExt};
use kokichi::daemon::{self, Settings};
use kokichi::protocol::{self, OggOpusReader, OggOpusWriter};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn config(name: &str) -> Settings {
    let mut settings = test_settings("chat", name);
    settings.network.max_message_bytes = 64 * 1024;
    settings.network.max_connections_per_peer = 3;
    settings
}

async fn start(
    cfg: Settings,
) -> (SocketAddr, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<kokichi::Result<()>>) {
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(daemon::serve(
        cfg,
        async move {
            let _ = stop_rx.await;
        },
        Some(ready_tx),
    ));
    (ready_rx.await.unwrap().addr, stop_tx, task)
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(addr: SocketAddr, query: &str) -> Ws {
    tokio_tungstenite::connect_async(format!("ws://{addr}/api/chat?{query}")).await.unwrap().0
}

/// Reads until the server closes; returns the error messages (kind 0x05) seen.
async fn errors_until_close(ws: &mut Ws) -> (Vec<String>, bool) {
    let mut errors = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
        match m {
            Ok(Message::Binary(b)) if b.first() == Some(&protocol::ERROR) => {
                errors.push(String::from_utf8_lossy(&b[1..]).to_string())
            }
            Ok(Message::Close(_)) | Err(_) => return (errors, true),
            _ => {}
        }
    }
    (errors, false)
}

/// A well-behaved client: streams `frames` frames of a tone as Ogg/Opus in real time and
/// returns how many 80 ms frames of audio came back, the text, and the first message.
async fn good_client(addr: SocketAddr, frames: usize) -> (usize, String, Vec<u8>) {
    let mut ws = connect(addr, "").await;
    let first = match ws.next().await {
        Some(Ok(Message::Binary(b))) => b.to_vec(),
        other => panic!("no handshake: {other:?}"),
    };
    let (mut tx, mut rx) = ws.split();
    let send = async {
        let mut w = OggOpusWriter::new(42).unwrap();
        let mut tick = tokio::time::interval(Duration::from_millis(80));
        for f in 0..frames {
            tick.tick().await;
            let pcm: Vec<f32> = (0..1920).map(|i| 0.3 * (((f * 1920 + i) as f32) * 0.05).sin()).collect();
            for page in w.push(&pcm).unwrap() {
                let mut m = vec![protocol::AUDIO];
                m.extend_from_slice(&page);
                tx.send(Message::Binary(m.into())).await.unwrap();
            }
        }
        tx
    };
    let recv = async {
        let mut reader = OggOpusReader::new();
        let mut samples = Vec::new();
        let mut text = String::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while samples.len() < (frames - 2) * 1920 && Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_secs(10), rx.next()).await {
                Ok(Some(Ok(Message::Binary(b)))) => match b.first() {
                    Some(&protocol::AUDIO) => reader.push(&b[1..], &mut samples).unwrap(),
                    Some(&protocol::TEXT) => text.push_str(std::str::from_utf8(&b[1..]).unwrap()),
                    _ => {}
                },
                Ok(Some(Ok(_))) => {}
                _ => break,
            }
        }
        (samples.len() / 1920, text)
    };
    let (mut tx, (n, text)) = tokio::join!(send, recv);
    let _ = tx.close().await;
    (n, text, first)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moshi_protocol_conversation() {
    let (addr, stop, task) = start(config("conv")).await;
    let (frames, text, first) = good_client(addr, 25).await;
    assert_eq!(first, protocol::handshake());
    assert!(frames >= 23, "{frames} frames of answer audio");
    assert!(!text.is_empty());
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_clients_are_closed_alone() {
    let (addr, stop, task) = start(config("bad")).await;
    let good = tokio::spawn(good_client(addr, 30));
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Unknown kind byte.
    let mut ws = connect(addr, "").await;
    ws.send(Message::Binary(vec![0x42, 1, 2].into())).await.unwrap();
    let (errors, closed) = errors_until_close(&mut ws).await;
    assert!(closed && errors.iter().any(|e| e.contains("0x42")), "{errors:?}");
    // Text where binary is expected.
    let mut ws = connect(addr, "").await;
    ws.send(Message::Text("hello".into())).await.unwrap();
    let (errors, closed) = errors_until_close(&mut ws).await;
    assert!(closed && errors.iter().any(|e| e.contains("binary")), "{errors:?}");
    // A malformed Ogg page: complete, but its checksum does not match.
    let mut ws = connect(addr, "").await;
    let mut page = OggOpusWriter::new(9).unwrap().push(&[0.0; 1920]).unwrap().concat();
    let last = page.len() - 1;
    page[last] ^= 0x55;
    let mut m = vec![protocol::AUDIO];
    m.extend_from_slice(&page);
    ws.send(Message::Binary(m.into())).await.unwrap();
    let (errors, closed) = errors_until_close(&mut ws).await;
    assert!(closed && errors.iter().any(|e| e.contains("Ogg")), "{errors:?}");
    let mut ws = connect(addr, "").await;
    ws.send(Message::Binary(b"\x01not an ogg page at all, no capture pattern".to_vec().into())).await.unwrap();
    let (errors, closed) = errors_until_close(&mut ws).await;
    assert!(closed && errors.iter().any(|e| e.contains("Ogg")), "{errors:?}");
    // Oversize message (limit 64 KiB here).
    let mut ws = connect(addr, "").await;
    let _ = ws.send(Message::Binary(vec![1u8; 200 * 1024].into())).await;
    let (_, closed) = errors_until_close(&mut ws).await;
    assert!(closed);
    // A client that talks but never reads: its output queue stays bounded (oldest dropped) and
    // the good client keeps real time.
    let lazy = tokio::spawn(async move {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/api/pcm")).await.unwrap();
        let frame: Vec<u8> = (0..1920).flat_map(|i| (0.2 * (i as f32 * 0.03).sin()).to_le_bytes()).collect();
        let mut tick = tokio::time::interval(Duration::from_millis(80));
        for _ in 0..30 {
            tick.tick().await;
            if ws.send(Message::Binary(frame.clone().into())).await.is_err() {
                break;
            }
        }
        ws
    });
    let started = Instant::now();
    let (frames, _, _) = good.await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(8), "the good client was slowed down");
    drop(lazy.await.unwrap());
    assert!(frames >= 28, "the good client fell behind: {frames} frames");
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_origin_and_connection_limits() {
    let mut cfg = config("limits");
    cfg.network.token = Some("s3cret-token".into());
    let (addr, stop, task) = start(cfg).await;
    // No token: refused before the upgrade.
    assert!(tokio_tungstenite::connect_async(format!("ws://{addr}/api/chat")).await.is_err());
    // Token as a query parameter, and as a bearer header.
    let mut ok = connect(addr, "token=s3cret-token").await;
    assert!(matches!(ok.next().await, Some(Ok(Message::Binary(_)))));
    let mut req = format!("ws://{addr}/api/pcm").into_client_request().unwrap();
    req.headers_mut().insert("Authorization", "Bearer s3cret-token".parse().unwrap());
    assert!(tokio_tungstenite::connect_async(req).await.is_ok());
    // A foreign page's origin is refused; the daemon's own is accepted.
    let mut req = format!("ws://{addr}/api/chat?token=s3cret-token").into_client_request().unwrap();
    req.headers_mut().insert("Origin", "https://evil.example".parse().unwrap());
    assert!(tokio_tungstenite::connect_async(req).await.is_err());
    let mut req = format!("ws://{addr}/api/chat?token=s3cret-token").into_client_request().unwrap();
    req.headers_mut().insert("Origin", format!("http://{addr}").parse().unwrap());
    let own = tokio_tungstenite::connect_async(req).await;
    assert!(own.is_ok());
    drop(ok);
    drop(own);
    // Per-peer limit (3 here): once the earlier ones are gone, three open and a fourth is refused.
    let url = format!("ws://{addr}/api/chat?token=s3cret-token");
    let mut held = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while held.len() < 3 && Instant::now() < deadline {
        match tokio_tungstenite::connect_async(&url).await {
            Ok((ws, _)) => held.push(ws),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert_eq!(held.len(), 3);
    let extra = tokio_tungstenite::connect_async(&url).await;
    assert!(extra.is_err(), "a fourth connection from one address was accepted");
    drop(held);
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

#[test]
fn off_loopback_without_token_does_not_start() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut cfg = config("open");
    cfg.network.bind = "0.0.0.0:0".parse().unwrap();
    let err = rt.block_on(daemon::run(cfg, async {})).unwrap_err().to_string();
    assert!(err.contains("bind") && err.contains("token"), "{err}");
}
