//! Hostile network clients against a live daemon, each beside a real-time victim client whose
//! lost frames and worst gap are asserted: DNS-rebinding `Host`s, a WebSocket that upgrades and
//! goes silent, slowloris headers, more idle connections than the open-file limit allows (in a
//! subprocess under a low `RLIMIT_NOFILE`), wrong tokens, the token file and `KOKICHI_TOKEN`,
//! and a client reconnecting as soon as it has closed.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::live::{Running, test_settings, victim};
use common::{fixture, scratch};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

const TAG: &str = "hostile-net";
/// What CI (two tests at a time on two cores) lets the victim lose.
const LOST: usize = 2;
const GAP: Duration = Duration::from_secs(1);

/// Sends `request` and returns the reply's head (through the blank line), or whatever came
/// before the connection closed or 5 s passed; the connection is returned still open.
async fn send(addr: SocketAddr, request: &str) -> (TcpStream, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request.as_bytes()).await.expect("send request");
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while !buf.ends_with(b"\r\n\r\n") {
            match s.read(&mut byte).await {
                Ok(1) => buf.push(byte[0]),
                _ => break,
            }
        }
    })
    .await;
    (s, String::from_utf8_lossy(&buf).into_owned())
}

/// The status code of a reply head (0 when there is none).
fn code(head: &str) -> u16 {
    head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

fn get(path: &str, host: &str, origin: Option<&str>) -> String {
    let origin = origin.map(|o| format!("Origin: {o}\r\n")).unwrap_or_default();
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{origin}Connection: close\r\n\r\n")
}

fn upgrade(path: &str, host: &str, origin: Option<&str>) -> String {
    let origin = origin.map(|o| format!("Origin: {o}\r\n")).unwrap_or_default();
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\n{origin}Connection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
}

/// Waits until the peer closes `s` (reading and dropping whatever comes, never answering), up to
/// `limit`; returns how long that took, or `None` if it stayed open.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let t = Instant::now();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(limit, async { while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {} })
        .await
        .ok()
        .map(|_| t.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebinding_hosts_are_refused() {
    let mut s = test_settings(TAG, "rebind");
    s.network.allowed_hosts = vec!["kokichi.lan".into()];
    let d = Running::start(s).await;
    let (addr, port) = (d.addr, d.addr.port());
    let v = tokio::spawn(victim(addr, 40));
    for host in [format!("evil.example:{port}"), "evil.example".into(), format!("localhost.evil.example:{port}")] {
        // What a page on a rebound domain sends: its own Host and a matching Origin.
        let origin = format!("http://{host}");
        for req in [
            get("/api/status", &host, Some(&origin)),
            get("/", &host, None),
            upgrade("/api/pcm", &host, Some(&origin)),
            upgrade("/api/chat", &host, Some(&origin)),
        ] {
            let (_, head) = send(addr, &req).await;
            assert_eq!(code(&head), 403, "{req}-> {head}");
        }
    }
    // A target naming another host, and no Host at all.
    let (_, head) = send(
        addr,
        &format!(
            "GET http://evil.example:{port}/api/status HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(code(&head), 403, "{head}");
    let (_, head) = send(addr, "GET /api/status HTTP/1.0\r\n\r\n").await;
    assert_eq!(code(&head), 403, "{head}");
    // Loopback names, any port, and the configured name are served.
    for host in
        [format!("localhost:{port}"), format!("127.0.0.1:{port}"), format!("[::1]:{port}"), "kokichi.lan".into()]
    {
        let origin = format!("http://{host}");
        let (_, head) = send(addr, &get("/api/status", &host, Some(&origin))).await;
        assert_eq!(code(&head), 200, "{host}: {head}");
        let (_, head) = send(addr, &upgrade("/api/pcm", &host, Some(&origin))).await;
        assert_eq!(code(&head), 101, "{host}: {head}");
    }
    v.await.unwrap().assert_kept_up("rebinding Hosts", LOST, GAP);
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_websocket_is_closed_by_the_ping_timeout() {
    let mut s = test_settings(TAG, "silent");
    (s.network.ping_interval_secs, s.network.ping_timeout_secs) = (1, 2);
    let d = Running::start(s).await;
    let addr = d.addr;
    let v = tokio::spawn(victim(addr, 60));
    // Upgrades, then never sends a byte (a vanished peer, or one holding a session).
    let (mut silent, head) = send(addr, &upgrade("/api/pcm", &format!("localhost:{}", addr.port()), None)).await;
    assert_eq!(code(&head), 101, "{head}");
    let upgraded = Instant::now();
    // Sessions start at the inference thread's next tick: wait for both to show.
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut sessions = 0;
    while sessions < 2 && Instant::now() < deadline {
        sessions = d.status().await["sessions"].as_array().map_or(0, Vec::len);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sessions, 2, "the victim's session and the silent one");
    let closed = closed_within(&mut silent, Duration::from_secs(10)).await;
    let took = upgraded.elapsed();
    eprintln!("silent WebSocket closed {took:?} after its upgrade");
    assert!(closed.is_some(), "the silent WebSocket was still open after {took:?}");
    assert!(took >= Duration::from_millis(1500) && took <= Duration::from_secs(5), "{took:?}");
    // The victim answers every ping (it reads throughout) and keeps its session.
    let report = v.await.unwrap();
    report.assert_kept_up("a silent WebSocket", LOST, GAP);
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_dropped_by_the_header_timeout() {
    let mut s = test_settings(TAG, "slowloris");
    s.network.header_timeout_secs = 2;
    let d = Running::start(s).await;
    let addr = d.addr;
    let v = tokio::spawn(victim(addr, 75));
    // 50 connections, each sending its headers one byte a second.
    let request = get("/api/status", "localhost", None).into_bytes();
    let mut clients = Vec::new();
    for _ in 0..50 {
        let request = request.clone();
        clients.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            let t = Instant::now();
            for b in request {
                if s.write_all(&[b]).await.is_err() {
                    break;
                }
                let mut buf = [0u8; 256];
                if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
                    break;
                }
                if t.elapsed() > Duration::from_secs(20) {
                    return None;
                }
            }
            Some(t.elapsed())
        }));
    }
    let mut worst = Duration::ZERO;
    for c in clients {
        let held = c.await.unwrap().expect("a slowloris connection was held 20 s");
        worst = worst.max(held);
    }
    eprintln!("50 slowloris connections: the last was dropped after {worst:?}");
    assert!(worst <= Duration::from_secs(5), "{worst:?}");
    // A plain request is served as before.
    let (_, head) = send(addr, &get("/api/status", "localhost", None)).await;
    assert_eq!(code(&head), 200, "{head}");
    v.await.unwrap().assert_kept_up("slowloris", LOST, GAP);
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_tokens_are_delayed() {
    let mut s = test_settings(TAG, "auth");
    s.network.token = Some("correct-horse".into());
    let d = Running::start(s).await;
    let addr = d.addr;
    let mut delays = Vec::new();
    for _ in 0..6 {
        let t = Instant::now();
        let (_, head) = send(addr, &get("/api/status?token=wrong-horse", "localhost", None)).await;
        assert_eq!(code(&head), 401, "{head}");
        delays.push(t.elapsed());
    }
    eprintln!("401 after {delays:?}");
    assert!(delays[0] < Duration::from_millis(700), "{delays:?}");
    assert!(delays.windows(2).all(|w| w[1] + Duration::from_millis(50) >= w[0]), "not growing: {delays:?}");
    assert!(delays[5] >= Duration::from_millis(900) && delays[5] < Duration::from_secs(3), "{delays:?}");
    // The right token is not delayed.
    let t = Instant::now();
    let (_, head) = send(addr, &get("/api/status?token=correct-horse", "localhost", None)).await;
    assert_eq!(code(&head), 200, "{head}");
    assert!(t.elapsed() < Duration::from_millis(700), "{:?}", t.elapsed());
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_client_may_reconnect_at_once() {
    let mut s = test_settings(TAG, "reconnect");
    s.network.max_connections_per_peer = 2;
    let d = Running::start(s).await;
    let url = format!("ws://{}/api/pcm", d.addr);
    let (mut held, _) = tokio_tungstenite::connect_async(&url).await.expect("first connection");
    let mut refused = 0;
    for i in 0..40 {
        let (mut ws, _) = match tokio_tungstenite::connect_async(&url).await {
            Ok(c) => c,
            Err(e) => {
                refused += 1;
                eprintln!("reconnect refused: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        ws.send(Message::Binary(vec![0u8; 4 * 1920].into())).await.unwrap();
        ws.close(None).await.unwrap();
        // Half the time a clean close (ours, then the daemon's answer); else gone at once.
        if i % 2 == 0 {
            while let Some(Ok(_)) = ws.next().await {}
        }
    }
    eprintln!("{refused} of 40 reconnections refused");
    assert_eq!(refused, 0);
    held.close(None).await.unwrap();
    d.shutdown().await;
}

/// `kokichi serve` in a subprocess (tiny model, cpu, no audio) with its log collected.
struct Daemon {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Daemon {
    /// Starts it with `args` and `env` and waits until it accepts connections; `nofile` sets
    /// its `RLIMIT_NOFILE`. `Err` holds the log of a daemon that exited instead.
    fn start(name: &str, args: &[&str], env: &[(&str, &str)], nofile: Option<u64>) -> Result<Self, String> {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let config = scratch(TAG, &format!("{name}.toml"));
        std::fs::write(&config, "").unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kokichi"));
        cmd.args(["--backend", "cpu", "serve", "--no-audio", "--model"])
            .arg(fixture("tiny_model"))
            .arg("--config")
            .arg(&config)
            .arg("--control-socket")
            .arg(scratch(TAG, &format!("{name}.sock")))
            .args(["--bind", &addr.to_string()])
            .args(args)
            .env_remove("KOKICHI_TOKEN")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(n) = nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe, and the closure touches nothing else.
            unsafe {
                cmd.pre_exec(move || {
                    let r = libc::rlimit { rlim_cur: n, rlim_max: n };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().expect("spawn kokichi");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                std::thread::sleep(Duration::from_millis(200));
                return Err(log.lock().unwrap().clone());
            }
            if std::net::TcpStream::connect(addr).is_ok() {
                return Ok(Self { child, addr, log });
            }
            assert!(Instant::now() < deadline, "the daemon did not listen within 60 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_idle_connections_than_descriptors() {
    let d = Daemon::start("fd", &["--header-timeout-secs", "3"], &[], Some(64)).expect("daemon");
    let addr = d.addr;
    let v = tokio::spawn(victim(addr, 100));
    tokio::time::sleep(Duration::from_millis(500)).await;
    // More idle connections than the daemon has descriptors.
    let mut idle = Vec::new();
    for _ in 0..100 {
        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr)).await {
            idle.push(s);
        }
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    // A well-behaved client gets an answer at once: served, or refused with a clear status.
    let t = Instant::now();
    let (_, head) = send(addr, &get("/api/status", "localhost", None)).await;
    let took = t.elapsed();
    eprintln!("{} idle connections; then /api/status answered {} in {took:?}", idle.len(), code(&head));
    assert!(matches!(code(&head), 200 | 503), "no clear answer under fd pressure: {head:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    // Once the header timeout has dropped the idle connections, it is served.
    let mut served = false;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !served && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        served = code(&send(addr, &get("/api/status", "localhost", None)).await.1) == 200;
    }
    assert!(served, "not served after the idle connections timed out");
    v.await.unwrap().assert_kept_up("fd pressure", LOST, GAP);
    let log = d.log();
    assert!(log.contains("lowers max_connections"), "{log}");
    assert!(log.contains("connection limit reached"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_file_and_environment() {
    let token = "file-token-123";
    let path = scratch(TAG, "token");
    std::fs::write(&path, format!("{token}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let file_arg = path.display().to_string();
    let status = |addr: SocketAddr, token: &'static str| async move {
        code(&send(addr, &get(&format!("/api/status?token={token}"), "localhost", None)).await.1)
    };
    // From the file: not on the command line, so not in `ps`.
    let d = Daemon::start("tokenfile", &["--token-file", &file_arg], &[], None).expect("daemon");
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", d.child.id())).unwrap();
    assert!(!String::from_utf8_lossy(&cmdline).contains(token));
    assert_eq!(status(d.addr, "file-token-123").await, 200);
    assert_eq!(status(d.addr, "wrong-token-00").await, 401);
    // Wrong tokens are logged, rate-limited: one line for several.
    for _ in 0..3 {
        assert_eq!(status(d.addr, "wrong-token-00").await, 401);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = d.log();
    assert_eq!(log.matches("wrong or missing token").count(), 1, "{log}");
    drop(d);
    // From the environment; the command line's --token-file wins over it.
    let env = [("KOKICHI_TOKEN", "env-token-4567")];
    let d = Daemon::start("tokenenv", &[], &env, None).expect("daemon");
    assert_eq!(status(d.addr, "env-token-4567").await, 200);
    assert_eq!(status(d.addr, "file-token-123").await, 401);
    drop(d);
    let d = Daemon::start("tokenboth", &["--token-file", &file_arg], &env, None).expect("daemon");
    assert_eq!(status(d.addr, "file-token-123").await, 200);
    drop(d);
    // A file others may read, or an empty one, stops the daemon with one line naming it.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let log = Daemon::start("tokenopen", &["--token-file", &file_arg], &[], None).err().expect("started");
    assert!(log.contains(&file_arg) && log.contains("chmod 600"), "{log}");
    std::fs::write(&path, "\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let log = Daemon::start("tokenempty", &["--token-file", &file_arg], &[], None).err().expect("started");
    assert!(log.contains(&file_arg) && log.contains("empty"), "{log}");
}
