//! Hostile messages against a live daemon, with a real-time victim streaming beside the
//! attacker (issue 51): an empty-packet decompression bomb on `/api/chat`, Ogg pages that open
//! streams or continue a packet forever, client text meant to forge log lines, and messages
//! around `max_message_bytes` on both endpoints. Each must cost the daemon a bounded amount and
//! be answered on the protocol's terms.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::live::{Running, test_settings, victim};
use futures_util::{SinkExt, StreamExt};
use kokichi::protocol::{self, OggOpusWriter, opus_head, raw_ogg_page};
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Resident memory of this process (the daemon runs in it).
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

/// An `/api/chat` client past the handshake.
async fn chat(addr: SocketAddr) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/api/chat")).await.unwrap();
    match ws.next().await {
        Some(Ok(Message::Binary(b))) => assert_eq!(b[..], protocol::handshake()[..]),
        other => panic!("no handshake: {other:?}"),
    }
    ws
}

fn audio(pages: &[u8]) -> Message {
    let mut m = vec![protocol::AUDIO];
    m.extend_from_slice(pages);
    Message::Binary(m.into())
}

/// What a client saw until the server closed (or `wait` passed).
#[derive(Debug, Default)]
struct Seen {
    errors: Vec<String>,
    close: Option<(u16, String)>,
    closed: bool,
}

impl Seen {
    fn absorb(&mut self, later: Seen) {
        self.errors.extend(later.errors);
        self.close = self.close.take().or(later.close);
        self.closed |= later.closed;
    }
}

/// Reads for up to `wait`, or until the server closes (`until_close`) or an error message
/// (kind 0x05) containing `until_error` arrives.
async fn read(ws: &mut Ws, wait: Duration, until_error: Option<&str>) -> Seen {
    let mut seen = Seen::default();
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Some(m)) = tokio::time::timeout_at(deadline, ws.next()).await {
        match m {
            Ok(Message::Binary(b)) if b.first() == Some(&protocol::ERROR) => {
                let e = String::from_utf8_lossy(&b[1..]).to_string();
                let done = until_error.is_some_and(|u| e.contains(u));
                seen.errors.push(e);
                if done {
                    break;
                }
            }
            Ok(Message::Text(t)) if t.starts_with("error") || t.starts_with("warning") => {
                seen.errors.push(t.to_string())
            }
            Ok(Message::Close(frame)) => {
                seen.close = frame.map(|f| (u16::from(f.code), f.reason.to_string()));
                seen.closed = true;
                break;
            }
            Err(_) => {
                seen.closed = true;
                break;
            }
            _ => {}
        }
    }
    seen
}

/// The OpusHead page, then `pages` pages of 255 empty packets each: 282 bytes a page, each
/// empty packet asking the decoder to conceal a lost packet.
fn empty_packet_bomb(serial: u32, pages: u32) -> Vec<u8> {
    let mut bytes = raw_ogg_page(2, serial, 0, &[19], &opus_head());
    for seq in 1..=pages {
        bytes.extend(raw_ogg_page(0, serial, seq, &[0; 255], &[]));
    }
    bytes
}

fn chat_session(status: &serde_json::Value) -> Option<serde_json::Value> {
    status["sessions"].as_array()?.iter().find(|s| s["kind"].as_str().is_some_and(|k| k.starts_with("chat"))).cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_packet_bomb_is_capped_and_the_client_told() {
    let run = Running::start(test_settings("hostile", "bomb")).await;
    let victim = tokio::spawn(victim(run.addr, 50));
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut ws = chat(run.addr).await;
    let before = rss_bytes();
    // 28 KB: 100 pages of 255 empty packets (1.15 GB of decoded audio, unbounded).
    let bomb = empty_packet_bomb(7, 100);
    ws.send(audio(&bomb)).await.unwrap();
    let seen = read(&mut ws, Duration::from_secs(5), Some("warning")).await;
    let grown = rss_bytes().saturating_sub(before);
    // The status is published after each step of the model.
    let mut status = run.status().await;
    for _ in 0..20 {
        if chat_session(&status).is_some_and(|s| s["dropped_in"].as_u64() > Some(0)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        status = run.status().await;
    }
    let session = chat_session(&status);
    let report = victim.await.unwrap();
    eprintln!(
        "bomb of {} bytes: RSS +{:.1} MB; victim lost {} of {} frames, worst gap {:?}; chat session {session:?}",
        bomb.len() + 1,
        grown as f64 / 1e6,
        report.lost(),
        report.sent,
        report.worst_gap
    );
    assert!(grown < 64 << 20, "one 28 KB message grew RSS by {} MB", grown >> 20);
    report.assert_kept_up("empty-packet bomb", 2, Duration::from_secs(1));
    assert!(!seen.closed, "a well-formed stream was closed: {seen:?}");
    assert!(seen.errors.iter().any(|e| e.starts_with("warning") && e.contains("dropped")), "{seen:?}");
    let dropped = session.as_ref().and_then(|s| s["dropped_in"].as_u64()).unwrap_or(0);
    assert!(dropped > 100, "dropped_in {dropped}: {status}");
    drop(ws);
    run.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ogg_reader_state_is_bounded() {
    let run = Running::start(test_settings("hostile", "ogg")).await;
    let victim = tokio::spawn(victim(run.addr, 40));
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Pages that each open a new stream, with a 64 KB first packet (an OpusHead padded out).
    let mut head = opus_head();
    head.resize(254 * 255, 0);
    let mut lacing = vec![255u8; 254];
    lacing.push(0);
    let mut ws = chat(run.addr).await;
    let before = rss_bytes();
    let mut sent = 0;
    let mut seen = Seen::default();
    for msg in 0..25u32 {
        let pages: Vec<u8> = (0..4).flat_map(|p| raw_ogg_page(2, msg * 4 + p, 0, &lacing, &head)).collect();
        if ws.send(audio(&pages)).await.is_err() {
            break;
        }
        sent += 1;
        seen.absorb(read(&mut ws, Duration::from_millis(20), None).await);
        if seen.closed {
            break;
        }
    }
    if !seen.closed {
        seen.absorb(read(&mut ws, Duration::from_secs(3), None).await);
    }
    let grown = rss_bytes().saturating_sub(before);
    eprintln!("new streams: {sent} messages sent, RSS +{:.1} MB, {seen:?}", grown as f64 / 1e6);
    assert!(seen.closed && seen.errors.iter().any(|e| e.contains("Ogg streams")), "{seen:?}");
    assert_eq!(seen.close.as_ref().map(|c| c.0), Some(1008), "{seen:?}");
    assert!(grown < 16 << 20, "{sent} messages of new streams grew RSS by {} MB", grown >> 20);
    // A packet that never ends: 64 KB pages, each continuing it.
    let mut ws = chat(run.addr).await;
    ws.send(audio(&raw_ogg_page(2, 1, 0, &[19], &opus_head()))).await.unwrap();
    let body = vec![1u8; 255 * 255];
    let mut seen = Seen::default();
    for seq in 1..50u32 {
        if ws.send(audio(&raw_ogg_page(if seq == 1 { 0 } else { 1 }, 1, seq, &[255; 255], &body))).await.is_err() {
            break;
        }
        seen.absorb(read(&mut ws, Duration::from_millis(20), None).await);
        if seen.closed {
            break;
        }
    }
    assert!(seen.closed && seen.errors.iter().any(|e| e.contains("packet longer than")), "{seen:?}");
    let report = victim.await.unwrap();
    eprintln!("ogg: victim lost {} of {}, worst gap {:?}", report.lost(), report.sent, report.worst_gap);
    report.assert_kept_up("Ogg state", 2, Duration::from_secs(1));
    run.shutdown().await;
}

/// Everything the daemon logs in this test binary.
fn captured_log() -> Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || Capture(sink.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one subscriber per test binary");
        log
    })
    .clone()
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_text_cannot_forge_or_flood_the_log() {
    let log = captured_log();
    let run = Running::start(test_settings("hostile", "log")).await;
    let mut ws = chat(run.addr).await;
    let forged = "FORGED-2a7c INFO kokichi::daemon::socket: token accepted";
    let mut payload = format!("boom-2a7c\n{forged}\r\n\x1b[2K").into_bytes();
    payload.extend(std::iter::repeat_n(b'x', 100_000));
    let mut msg = vec![protocol::ERROR];
    msg.extend_from_slice(&payload);
    for _ in 0..40 {
        ws.send(Message::Binary(msg.clone().into())).await.unwrap();
    }
    ws.close(None).await.unwrap();
    let _ = read(&mut ws, Duration::from_secs(3), None).await;
    // The session's last line comes after the socket closes.
    let mut text = String::new();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        text = String::from_utf8_lossy(&log.lock().unwrap()).to_string();
        if text.contains("suppressed") {
            break;
        }
    }
    run.shutdown().await;
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("2a7c")).collect();
    assert!(!lines.is_empty(), "the client's reports were not logged:\n{text}");
    assert!(lines.iter().all(|l| !l.contains("FORGED-2a7c INFO") || l.contains("boom-2a7c\\n")), "{lines:#?}");
    assert!(!text.lines().any(|l| l.starts_with("FORGED")), "a forged line:\n{text}");
    assert!(!text.contains('\x1b'), "a terminal escape reached the log");
    assert!(lines.iter().all(|l| l.len() < 1000), "an untruncated line: {} bytes", lines[0].len());
    assert!(lines.len() <= 5, "{} lines for one client's 40 reports", lines.len());
    assert!(text.lines().any(|l| l.contains("suppressed")), "no line counts the suppressed reports:\n{text}");
    assert!(text.len() < 100_000, "{} bytes of log for 4 MB of client text", text.len());
}

/// Valid Ogg/Opus audio of more than `bytes` bytes, in one message's worth of pages.
fn long_valid_stream(bytes: usize) -> Vec<u8> {
    let mut w = OggOpusWriter::new(11).unwrap();
    let mut out = Vec::new();
    let mut i = 0usize;
    while out.len() < bytes {
        let pcm: Vec<f32> = (0..24000).map(|k| 0.3 * (((i * 24000 + k) as f32) * 0.05).sin()).collect();
        out.extend(w.push(&pcm).unwrap().concat());
        i += 1;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_message_bytes_is_the_limit_on_both_endpoints() {
    let settings = test_settings("hostile", "size");
    let max = settings.network.max_message_bytes;
    let run = Running::start(settings).await;
    // Under the limit, many pages in one message are taken (the audio over the session's
    // budget is dropped, and the client told).
    let mut ws = chat(run.addr).await;
    let stream = long_valid_stream(300 * 1024);
    assert!(stream.len() + 1 < max);
    ws.send(audio(&stream)).await.unwrap();
    let seen = read(&mut ws, Duration::from_secs(2), Some("warning")).await;
    assert!(!seen.closed, "{} bytes under a {max}-byte limit were refused: {seen:?}", stream.len() + 1);
    assert!(seen.errors.iter().all(|e| e.starts_with("warning")), "{seen:?}");
    drop(ws);
    // Over it: close 1009 with a reason, on both endpoints.
    let mut ws = chat(run.addr).await;
    let _ = ws.send(Message::Binary(vec![protocol::AUDIO; max + 1000].into())).await;
    let seen = read(&mut ws, Duration::from_secs(5), None).await;
    assert_eq!(seen.close.as_ref().map(|c| c.0), Some(1009), "{seen:?}");
    assert!(seen.errors.iter().any(|e| e.contains("over the limit")), "{seen:?}");
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/api/pcm", run.addr)).await.unwrap();
    let _ = ws.send(Message::Binary(vec![0u8; max + 4].into())).await;
    let seen = read(&mut ws, Duration::from_secs(5), None).await;
    assert_eq!(seen.close.as_ref().map(|c| c.0), Some(1009), "{seen:?}");
    assert!(seen.close.as_ref().is_some_and(|c| !c.1.is_empty()), "{seen:?}");
    // Far over it: refused at the header; the connection ends (with 1009 if the close frame
    // gets through before the rest of the message is refused).
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/api/pcm", run.addr)).await.unwrap();
    let _ = ws.send(Message::Binary(vec![0u8; 4 * max].into())).await;
    let seen = read(&mut ws, Duration::from_secs(5), None).await;
    assert!(seen.closed, "{seen:?}");
    if let Some((code, _)) = &seen.close {
        assert_eq!(*code, 1009, "{seen:?}");
    }
    run.shutdown().await;
}
