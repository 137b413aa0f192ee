//! Clients that try to take the inference thread from the others, each beside a real-time victim
//! session whose lost frames and worst gap are asserted: a flood of restarts over many
//! connections (it must neither stall the victim nor leak sessions), a client sending ten times
//! faster than real time (paced), a silent session (not waited for by the batch window, then
//! ended), and `max_sessions` counting every session.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::live::{FRAME, Running, test_settings, victim};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(addr: SocketAddr, path: &str) -> Ws {
    tokio_tungstenite::connect_async(format!("ws://{addr}{path}")).await.expect("connect").0
}

fn silence_frame() -> Message {
    Message::Binary(vec![0u8; FRAME * 4].into())
}

/// Reads until the server closes the connection; returns the close reason.
async fn close_reason(ws: &mut Ws, within: Duration) -> Option<String> {
    let deadline = Instant::now() + within;
    while let Ok(Some(m)) = tokio::time::timeout_at(deadline.into(), ws.next()).await {
        match m {
            Ok(Message::Close(frame)) => return Some(frame.map(|f| f.reason.to_string()).unwrap_or_default()),
            Err(_) => return Some(String::new()),
            Ok(_) => {}
        }
    }
    None
}

async fn session_count(d: &Running) -> usize {
    d.status().await["sessions"].as_array().map_or(0, Vec::len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_flood_neither_stalls_others_nor_leaks_sessions() {
    let d = Running::start(test_settings("hostile_flood", "restarts")).await;
    let addr = d.addr;
    let flood = async move {
        let until = Instant::now() + Duration::from_secs(3);
        let mut sent = 0usize;
        while Instant::now() < until {
            // Moshi's restart control message, as fast as the socket takes it, then hang up.
            let mut ws = connect(addr, "/api/chat").await;
            for _ in 0..2000 {
                if ws.send(Message::Binary(vec![3u8, 3].into())).await.is_err() {
                    break;
                }
                sent += 1;
            }
            drop(ws);
        }
        sent
    };
    let (report, sent) = tokio::join!(victim(addr, 50), flood);
    eprintln!("restart flood: {sent} restarts; victim {report:?}");
    assert!(sent > 10_000, "the flood sent only {sent} restarts");
    report.assert_kept_up("restart flood", 2, Duration::from_secs(1));
    // Every flooding connection is gone: none of their sessions may be left behind.
    let deadline = Instant::now() + Duration::from_secs(5);
    while session_count(&d).await > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(session_count(&d).await, 0, "sessions leaked: {}", d.status().await["sessions"]);
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_sender_is_paced_to_real_time() {
    let d = Running::start(test_settings("hostile_flood", "fast")).await;
    let addr = d.addr;
    let seconds = 3.0;
    let fast = async move {
        let mut ws = connect(addr, "/api/pcm").await;
        let mut tick = tokio::time::interval(Duration::from_millis(8));
        let until = Instant::now() + Duration::from_secs_f64(seconds);
        let mut sent = 0usize;
        while Instant::now() < until {
            tick.tick().await;
            if ws.send(silence_frame()).await.is_err() {
                break;
            }
            sent += 1;
        }
        (ws, sent)
    };
    let started = Instant::now();
    let (report, (ws, sent)) = tokio::join!(victim(addr, 45), fast);
    let status = d.status().await;
    let elapsed = started.elapsed().as_secs_f64();
    let sessions = status["sessions"].as_array().cloned().unwrap_or_default();
    let local = match ws.get_ref() {
        tokio_tungstenite::MaybeTlsStream::Plain(tcp) => tcp.local_addr().expect("local address"),
        _ => unreachable!("a plain ws:// connection"),
    };
    let fast_one = sessions
        .iter()
        .find(|s| s["kind"].as_str().is_some_and(|k| k.ends_with(&local.to_string())))
        .unwrap_or_else(|| panic!("the fast session ({local}) is not live: {status}"));
    let stepped = fast_one["frames"].as_u64().unwrap_or(0) as f64;
    // Real time is 12.5 frames a second; allow the burst and some scheduling slack.
    assert!(sent as f64 > 5.0 * seconds * 12.5, "the client sent only {sent} frames in {seconds} s");
    let real_time = elapsed * 12.5;
    assert!(
        stepped <= 1.1 * real_time + 5.0,
        "a client sending {sent} frames in {seconds} s was stepped {stepped} times in {elapsed:.2} s (real time: {real_time:.1})"
    );
    assert!(fast_one["dropped_in"].as_u64().unwrap_or(0) > 0, "the excess must be dropped and counted: {fast_one}");
    eprintln!("fast sender: sent {sent}, stepped {stepped} in {seconds} s; victim {report:?}");
    report.assert_kept_up("fast sender", 2, Duration::from_secs(1));
    drop(ws);
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_session_is_not_waited_for_and_ends() {
    let mut settings = test_settings("hostile_flood", "silent");
    // A long batch window: waiting for the silent session at every step would cost the victim
    // 300 ms a frame, far behind real time.
    settings.runtime.batch_window_ms = 300;
    settings.runtime.idle_timeout_secs = 3;
    let d = Running::start(settings).await;
    let mut silent = connect(d.addr, "/api/pcm").await;
    // One frame makes it a session that has spoken, then nothing.
    silent.send(silence_frame()).await.expect("send");
    let started = Instant::now();
    let report = victim(d.addr, 30).await;
    eprintln!("silent session beside: victim {report:?}");
    report.assert_kept_up("beside a silent session", 2, Duration::from_millis(600));
    let reason = close_reason(&mut silent, Duration::from_secs(6)).await;
    let after = started.elapsed();
    assert!(
        reason.as_deref().is_some_and(|r| r.contains("idle")),
        "the silent session was not closed as idle (close reason {reason:?} after {after:?})"
    );
    assert!(after >= Duration::from_secs(3), "closed before its idle timeout ({after:?})");
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_sessions_counts_every_session() {
    let mut settings = test_settings("hostile_flood", "max");
    settings.runtime.max_sessions = 2;
    settings.network.max_connections_per_peer = 8;
    let d = Running::start(settings).await;
    let mut clients = Vec::new();
    for _ in 0..2 {
        let mut ws = connect(d.addr, "/api/pcm").await;
        ws.send(silence_frame()).await.expect("send");
        clients.push(ws);
    }
    let mut third = connect(d.addr, "/api/pcm").await;
    let reason = close_reason(&mut third, Duration::from_secs(5)).await;
    assert!(
        reason.as_deref().is_some_and(|r| r.contains("no free session")),
        "a third client on a daemon of 2 sessions was not refused (close reason {reason:?})"
    );
    // The refusal counts sessions as they are asked for; the status once they have started.
    let deadline = Instant::now() + Duration::from_secs(3);
    while session_count(&d).await < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(session_count(&d).await, 2, "{}", d.status().await);
    drop(clients);
    d.shutdown().await;
}
