//! deploy/nginx.conf on loopback: Debian's nginx (run as a plain process with a config made from
//! the shipped file, not the system service) in front of two `kokichi serve` daemons. Clients
//! spread over both (least connections first); one daemon is killed mid-stream: its clients'
//! connections end promptly (nginx cannot send a close frame for it, so they end without one),
//! the other's keep streaming, and new clients land on the survivor. The survivor stopped with
//! SIGTERM closes its clients with a close frame (1001) through nginx. Needs nginx, so it is ignored by
//! `cargo test`: `make test-deploy` runs it (`KOKICHI_NGINX` names another nginx binary).

mod common;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::live::{FRAME, raw_http};
use common::{fixture, scratch};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

const TOKEN: &str = "deploy-test-token";

/// A child process killed when dropped (a failing test leaves nothing running).
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn daemon(name: &str, port: u16) -> Proc {
    let log = std::fs::File::create(scratch("deploy", &format!("{name}.log"))).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_kokichi"))
        .args(["--backend", "cpu", "serve", "--no-audio", "--greedy", "--model"])
        .arg(fixture("tiny_model"))
        .args(["--bind", &format!("127.0.0.1:{port}"), "--max-connections-per-peer", "16", "--control-socket"])
        .arg(scratch("deploy", &format!("{name}.sock")))
        .env("KOKICHI_TOKEN", TOKEN)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start kokichi serve");
    Proc(child)
}

/// GET `path` with the token; the body of a 200 answer.
async fn get(addr: SocketAddr, path: &str) -> Option<String> {
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n");
    // Not listening (yet, or any more): no answer.
    tokio::net::TcpStream::connect(addr).await.ok()?;
    let reply = raw_http(addr, &request).await;
    reply.starts_with("HTTP/1.1 200").then(|| reply.split("\r\n\r\n").nth(1).unwrap_or_default().to_string())
}

/// Live sessions of one daemon, from its own /api/status.
async fn sessions(addr: SocketAddr) -> usize {
    let body = get(addr, "/api/status").await.expect("status answers");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    status["sessions"].as_array().unwrap().len()
}

async fn wait_until(what: &str, limit: Duration, mut ok: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !ok().await {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn nginx_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("KOKICHI_NGINX") {
        return p.into();
    }
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .expect("nginx not found: apt-get install nginx-light, or set KOKICHI_NGINX")
}

/// nginx with deploy/nginx.conf, its two upstreams and listen port replaced.
fn nginx(dir: &Path, port: u16, upstreams: [u16; 2]) -> Proc {
    let shipped = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/nginx.conf")).unwrap();
    let mut site = shipped.clone();
    for (from, to) in [
        ("server 127.0.0.1:8998 ", format!("server 127.0.0.1:{} ", upstreams[0])),
        ("server 127.0.0.1:8999 ", format!("server 127.0.0.1:{} ", upstreams[1])),
        ("listen 80;", format!("listen 127.0.0.1:{port};")),
    ] {
        assert_eq!(site.matches(from).count(), 1, "deploy/nginx.conf should have `{from}` once");
        site = site.replace(from, &to);
    }
    std::fs::write(dir.join("kokichi.conf"), site).unwrap();
    let tmp = dir.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    // Workers may run as another user (nobody, when started as root).
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o777)).unwrap();
    let d = dir.display();
    let main = format!(
        "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/tmp/body;\n  \
         proxy_temp_path {d}/tmp/proxy;\n  fastcgi_temp_path {d}/tmp/fastcgi;\n  uwsgi_temp_path {d}/tmp/uwsgi;\n  \
         scgi_temp_path {d}/tmp/scgi;\n  include {d}/kokichi.conf;\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), main).unwrap();
    let child = Command::new(nginx_binary())
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .arg("-e")
        .arg(dir.join("error.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap())
        .spawn()
        .expect("start nginx");
    Proc(child)
}

/// How a client's stream ended.
#[derive(Debug, Clone, PartialEq)]
enum End {
    /// The test stopped it.
    Stopped,
    /// A close frame, or the connection closed without one (TCP FIN or reset), at this instant.
    Closed(Instant, String),
    /// Anything else (a protocol error, a read that failed for another reason).
    Failed(String),
}

/// A client streaming to /api/pcm through nginx in real time, counting the answer frames.
struct Client {
    frames: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<End>,
}

async fn client(proxy: SocketAddr, i: usize) -> Client {
    // Half pass the token in the query string, half in the Authorization header.
    let mut request = if i.is_multiple_of(2) {
        format!("ws://{proxy}/api/pcm?token={TOKEN}").into_client_request().unwrap()
    } else {
        let mut r = format!("ws://{proxy}/api/pcm").into_client_request().unwrap();
        r.headers_mut().insert("Authorization", format!("Bearer {TOKEN}").parse().unwrap());
        r
    };
    request.headers_mut().insert("Origin", format!("http://{proxy}").parse().unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(request).await.expect("client connects through nginx");
    let (frames, stop) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(false)));
    let (f, s) = (frames.clone(), stop.clone());
    let task = tokio::spawn(async move {
        let (mut tx, mut rx) = ws.split();
        let mut tick = tokio::time::interval(Duration::from_millis(80));
        let mut n = 0usize;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if s.load(Ordering::SeqCst) {
                        let _ = tx.close().await;
                        return End::Stopped;
                    }
                    let bytes: Vec<u8> = (0..FRAME)
                        .map(|k| 0.05 * ((n * FRAME + k) as f32 * 0.05).sin())
                        .flat_map(|v| v.to_le_bytes())
                        .collect();
                    n += 1;
                    // A send into a closed connection: the read side reports how it ended.
                    let _ = tx.send(Message::Binary(bytes.into())).await;
                }
                msg = rx.next() => match msg {
                    Some(Ok(Message::Binary(_))) => { f.fetch_add(1, Ordering::SeqCst); }
                    Some(Ok(Message::Close(c))) => return End::Closed(Instant::now(), format!("close frame {c:?}")),
                    Some(Ok(_)) => {}
                    None => return End::Closed(Instant::now(), "connection closed".into()),
                    Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => {
                        return End::Closed(Instant::now(), "connection closed".into());
                    }
                    Some(Err(WsError::Protocol(p))) if p.to_string().contains("without closing handshake") => {
                        return End::Closed(Instant::now(), format!("connection closed without a close frame ({p})"));
                    }
                    Some(Err(WsError::Io(e))) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                        return End::Closed(Instant::now(), format!("connection reset ({e})"));
                    }
                    Some(Err(e)) => return End::Failed(e.to_string()),
                },
            }
        }
    });
    Client { frames, stop, task }
}

impl Client {
    async fn wait_frames(&self, n: usize, what: &str) {
        let frames = self.frames.clone();
        wait_until(what, Duration::from_secs(20), async || frames.load(Ordering::SeqCst) >= n).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nginx: run with `make test-deploy`"]
async fn nginx_spreads_clients_and_survives_a_killed_daemon() {
    let dir = scratch("deploy", "nginx");
    std::fs::create_dir_all(&dir).unwrap();
    let (pa, pb, pn) = (free_port(), free_port(), free_port());
    let (a_addr, b_addr, proxy): (SocketAddr, SocketAddr, SocketAddr) =
        (([127, 0, 0, 1], pa).into(), ([127, 0, 0, 1], pb).into(), ([127, 0, 0, 1], pn).into());
    let mut a = daemon("a", pa);
    let b = daemon("b", pb);
    for addr in [a_addr, b_addr] {
        wait_until("daemon up", Duration::from_secs(60), async || get(addr, "/api/status").await.is_some()).await;
    }
    let _nginx = nginx(&dir, pn, [pa, pb]);
    wait_until("nginx up", Duration::from_secs(20), async || get(proxy, "/api/status").await.is_some()).await;

    // The token is checked by the daemons and passed through by nginx.
    let refused = raw_http(proxy, "GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").await;
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
    let no_token = tokio_tungstenite::connect_async(format!("ws://{proxy}/api/pcm")).await;
    assert!(matches!(no_token, Err(WsError::Http(ref r)) if r.status() == 401), "{no_token:?}");

    // Four clients, opened one after another, two on each daemon; each one's daemon is told
    // by whose /api/status counts it.
    let mut first = Vec::new();
    let mut on_b = Vec::new();
    for i in 0..4 {
        let before = sessions(b_addr).await;
        let c = client(proxy, i).await;
        c.wait_frames(2, "answer frames through nginx").await;
        on_b.push(sessions(b_addr).await > before);
        first.push(c);
    }
    assert_eq!((sessions(a_addr).await, sessions(b_addr).await), (2, 2), "sessions per daemon");
    // B's two leave; least_conn sends the next two to B (round robin would split them).
    let mut kept = Vec::new();
    for (c, b) in first.into_iter().zip(on_b) {
        if b {
            c.stop.store(true, Ordering::SeqCst);
            assert_eq!(c.task.await.unwrap(), End::Stopped);
        } else {
            kept.push(c);
        }
    }
    wait_until("B's sessions end", Duration::from_secs(10), async || sessions(b_addr).await == 0).await;
    for i in 0..2 {
        let c = client(proxy, i).await;
        c.wait_frames(2, "answer frames through nginx").await;
        kept.push(c);
    }
    assert_eq!((sessions(a_addr).await, sessions(b_addr).await), (2, 2), "least connections first");
    let first = kept;

    // Daemon A dies: its two clients' connections end within a bounded time, B's keep going.
    let killed = Instant::now();
    a.0.kill().unwrap();
    a.0.wait().unwrap();
    let limit = Duration::from_secs(5);
    wait_until("A's clients see their connection end", limit, async || {
        first.iter().filter(|c| c.task.is_finished()).count() >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (ended, alive): (Vec<Client>, Vec<Client>) = first.into_iter().partition(|c| c.task.is_finished());
    assert_eq!((ended.len(), alive.len()), (2, 2), "only A's clients ended");
    for c in ended {
        match c.task.await.unwrap() {
            End::Closed(at, how) => {
                let after = at - killed;
                eprintln!("client of the killed daemon: {how}, {} ms after the kill", after.as_millis());
                assert!(after < limit, "{how} after {after:?}");
            }
            other => panic!("a client of the killed daemon ended badly: {other:?}"),
        }
    }
    for c in &alive {
        let now = c.frames.load(Ordering::SeqCst);
        c.wait_frames(now + 5, "B's clients keep streaming").await;
    }

    // New clients go to the survivor (nginx skips A: refused, then left out for fail_timeout).
    let mut second = Vec::new();
    for i in 0..3 {
        let c = client(proxy, i).await;
        c.wait_frames(2, "a new client is answered").await;
        second.push(c);
    }
    assert_eq!(sessions(b_addr).await, 5, "B holds the old two and the new three");
    let metrics = get(b_addr, "/metrics").await.expect("B's /metrics");
    assert!(metrics.lines().any(|l| l == "kokichi_sessions 5"), "{metrics}");
    // Two that left, two that stayed, three new.
    assert!(metrics.lines().any(|l| l == "kokichi_sessions_started_total 7"), "{metrics}");

    // B stopped cleanly (SIGTERM: systemd stop, a rolling restart): its sessions end with a
    // WebSocket close frame, 1001 "going away", which nginx passes through.
    let stopping = Instant::now();
    unsafe { libc::kill(b.0.id() as i32, libc::SIGTERM) };
    for c in alive.into_iter().chain(second) {
        match tokio::time::timeout(limit, c.task).await {
            Ok(Ok(End::Closed(at, how))) => {
                assert!(how.contains("close frame") && how.contains("Away"), "{how}");
                assert!(at - stopping < limit);
            }
            other => panic!("a client of the stopped daemon: {other:?}"),
        }
    }
    eprintln!("SIGTERM: all of B's clients got a close frame (1001) within {:?}", stopping.elapsed());
}
