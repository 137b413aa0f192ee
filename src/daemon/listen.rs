//! The HTTP listener in front of the router. It accepts connections up to a cap that fits the
//! open-file limit (more get 503, not a silent stall), gives each request's headers a deadline
//! (slowloris), refuses a `Host` that is not this daemon's before any route sees it (DNS
//! rebinding), and slows down and logs repeated wrong tokens from one address. A WebSocket
//! upgrade from an address at its connection limit waits briefly for a slot before its 429.
//!
//! axum's `serve` has no header timeout and no connection limit, hence this accept loop over
//! hyper's HTTP/1 connections.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tower_service::Service;

use super::server;
use super::settings::NetworkSettings;
use super::socket::{App, PeerSlot};

/// Refusals (503) being written at once; beyond, a connection over the cap is closed at once.
const REFUSALS_IN_FLIGHT: usize = 16;
/// Wrong tokens from one address delay its next 401 by this, doubling up to [`AUTH_DELAY_MAX`].
const AUTH_DELAY_BASE: Duration = Duration::from_millis(100);
const AUTH_DELAY_MAX: Duration = Duration::from_secs(1);
/// An address's wrong tokens are forgotten after this long without one.
const AUTH_FORGET: Duration = Duration::from_secs(60);
/// Addresses remembered for their wrong tokens, at most.
const AUTH_PEERS_MAX: usize = 4096;
/// A warning of one kind is logged at most this often; the rest are counted.
const LOG_EVERY: Duration = Duration::from_secs(10);
/// How long a WebSocket upgrade waits for its address's connection slot before the 429: a
/// client that reconnects as soon as it has closed may arrive before its old session has ended.
const SLOT_GRACE: Duration = Duration::from_millis(250);

/// Logs an event at most once per period, counting the ones it skips.
pub struct LogLimiter {
    every: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl LogLimiter {
    pub fn new(every: Duration) -> Self {
        Self { every, state: Mutex::new((None, 0)) }
    }

    /// `Some(skipped)` when this event should be logged, with the number skipped since the last
    /// one logged; `None` when it should only be counted.
    pub fn check(&self) -> Option<u64> {
        let mut state = self.state.lock().ok()?;
        let (last, skipped) = &mut *state;
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < self.every) {
            *skipped += 1;
            return None;
        }
        *last = Some(now);
        Some(std::mem::take(skipped))
    }
}

/// Which `Host` a request may name. On a loopback bind: `localhost`, a loopback address, and
/// `allowed_hosts`. Off loopback (a token is required there): `allowed_hosts` and the bound
/// address when the list is set, any host when it is empty. `*` in the list accepts any.
#[derive(Clone, Debug)]
pub struct HostRule {
    any: bool,
    allowed: Vec<String>,
}

impl HostRule {
    pub fn new(network: &NetworkSettings) -> Self {
        let mut allowed: Vec<String> = network.allowed_hosts.iter().map(|h| h.to_ascii_lowercase()).collect();
        let loopback = network.bind.ip().is_loopback();
        let any = allowed.iter().any(|h| h == "*") || (!loopback && allowed.is_empty());
        let ip = network.bind.ip();
        if !ip.is_unspecified() {
            allowed.push(match ip {
                IpAddr::V4(v4) => v4.to_string(),
                IpAddr::V6(v6) => format!("[{v6}]"),
            });
        }
        Self { any, allowed }
    }

    /// Whether `host` (a `Host` header or a request target's authority) names this daemon.
    pub fn allows(&self, host: &str) -> bool {
        if self.any {
            return true;
        }
        let host = host.to_ascii_lowercase();
        let name = host_name(&host);
        if name == "localhost" || is_loopback_literal(name) {
            return true;
        }
        self.allowed.iter().any(|a| *a == host || a == name)
    }
}

/// `host` without its `:port`, when it has a numeric one (`[::1]:80` is `[::1]`).
fn host_name(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((name, port))
            if !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && (!host.starts_with('[') || name.ends_with(']')) =>
        {
            name
        }
        _ => host,
    }
}

fn is_loopback_literal(name: &str) -> bool {
    let bare = name.strip_prefix('[').and_then(|n| n.strip_suffix(']'));
    match bare {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok_and(|ip| ip.is_loopback()),
        None => name.parse::<std::net::Ipv4Addr>().is_ok_and(|ip| ip.is_loopback()),
    }
}

/// The host a request names: its target's authority (absolute form), else its one `Host`
/// header. `None` when there is none, or more than one.
fn request_host<B>(req: &Request<B>) -> Option<String> {
    if let Some(a) = req.uri().authority() {
        return Some(a.as_str().to_string());
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next()?.to_str().ok()?.to_string();
    hosts.next().is_none().then_some(host)
}

/// Wrong tokens per address: each one delays that address's next 401 further.
struct AuthFailures {
    peers: Mutex<HashMap<IpAddr, (u32, Instant)>>,
    log: LogLimiter,
}

impl AuthFailures {
    /// Counts a wrong token from `peer`, logs it (rate-limited) and waits before the 401 goes out.
    async fn failed(&self, peer: SocketAddr, path: &str) {
        let failures = {
            let Ok(mut peers) = self.peers.lock() else { return };
            let now = Instant::now();
            if peers.len() >= AUTH_PEERS_MAX {
                peers.retain(|_, (_, last)| now.duration_since(*last) < AUTH_FORGET);
                if peers.len() >= AUTH_PEERS_MAX {
                    peers.clear();
                }
            }
            let (n, last) = peers.entry(peer.ip()).or_insert((0, now));
            if now.duration_since(*last) >= AUTH_FORGET {
                *n = 0;
            }
            *n = n.saturating_add(1);
            *last = now;
            *n
        };
        let delay = AUTH_DELAY_BASE.saturating_mul(1 << failures.saturating_sub(1).min(16)).min(AUTH_DELAY_MAX);
        if let Some(skipped) = self.log.check() {
            let path: String = path.chars().take(100).collect();
            tracing::warn!(%peer, path, failures, delay_ms = delay.as_millis() as u64, skipped, "wrong or missing token");
        }
        tokio::time::sleep(delay).await;
    }
}

/// What every request goes through before the router.
struct Front {
    router: Router,
    app: App,
    hosts: HostRule,
    auth: AuthFailures,
    host_log: LogLimiter,
}

impl Front {
    async fn handle(&self, mut req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let host = request_host(&req);
        if !host.as_deref().is_some_and(|h| self.hosts.allows(h)) {
            if let Some(skipped) = self.host_log.check() {
                let shown: String = host.as_deref().unwrap_or("(none)").chars().take(100).collect();
                tracing::warn!(%peer, host = ?shown, skipped, "refused a request for another host (DNS rebinding?)");
            }
            return plain(StatusCode::FORBIDDEN, "this Host is not served here (see allowed_hosts)\n");
        }
        if is_websocket(&req) && !PeerSlot::available(&self.app, peer.ip()) {
            let deadline = Instant::now() + SLOT_GRACE;
            while Instant::now() < deadline && !PeerSlot::available(&self.app, peer.ip()) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        req.extensions_mut().insert(ConnectInfo(peer));
        let path = req.uri().path().to_string();
        let mut router = self.router.clone();
        let resp = match router.call(req).await {
            Ok(r) => r,
            Err(e) => match e {},
        };
        if resp.status() == StatusCode::UNAUTHORIZED {
            self.auth.failed(peer, &path).await;
        }
        resp
    }
}

fn is_websocket<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|p| p.trim().eq_ignore_ascii_case("websocket")))
}

fn plain(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// A connection's socket, holding its place under the connection cap for as long as it is open
/// (through a WebSocket upgrade too).
struct Counted {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
}

impl AsyncRead for Counted {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The connection cap: `wanted`, lowered so that the connections, the refusals in flight and the
/// descriptors the daemon already holds (plus a margin) fit under the soft open-file limit.
pub fn connection_cap(wanted: usize) -> usize {
    let Some(limit) = open_file_limit() else { return wanted };
    let open = open_files().unwrap_or(32);
    let reserve = open + REFUSALS_IN_FLIGHT + (limit / 16).max(8);
    let fits = limit.saturating_sub(reserve).max(1);
    if fits < wanted {
        tracing::warn!(
            open_file_limit = limit,
            open_now = open,
            max_connections = fits,
            "the open-file limit lowers max_connections (raise it with `ulimit -n` or LimitNOFILE=)"
        );
    }
    wanted.min(fits)
}

/// The soft `RLIMIT_NOFILE`, when there is one.
fn open_file_limit() -> Option<usize> {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `r` is a valid, writable rlimit; the call only writes it.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 || r.rlim_cur == libc::RLIM_INFINITY {
        return None;
    }
    usize::try_from(r.rlim_cur).ok()
}

/// Descriptors open in this process now (Linux; elsewhere unknown).
fn open_files() -> Option<usize> {
    std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count())
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets the connections finish
/// their requests (upgraded WebSockets are the sessions' business).
pub async fn serve(listener: TcpListener, app: App, shutdown: impl Future<Output = ()> + Send) {
    let network = &app.settings.network.clone();
    let cap = connection_cap(network.max_connections);
    tracing::info!(max_connections = cap, "connection cap");
    let permits = Arc::new(Semaphore::new(cap));
    let refusals = Arc::new(Semaphore::new(REFUSALS_IN_FLIGHT));
    let front = Arc::new(Front {
        router: server::router(app.clone()),
        app,
        hosts: HostRule::new(network),
        auth: AuthFailures { peers: Mutex::new(HashMap::new()), log: LogLimiter::new(LOG_EVERY) },
        host_log: LogLimiter::new(LOG_EVERY),
    });
    let header_timeout = network.header_timeout();
    let full_log = LogLimiter::new(LOG_EVERY);
    let accept_log = LogLimiter::new(LOG_EVERY);
    let (signal_tx, signal_rx) = watch::channel(());
    let (close_tx, close_rx) = watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors (or a connection reset before it was accepted): the
                // pending connection stays queued, so wait a little rather than spin.
                if let Some(skipped) = accept_log.check() {
                    tracing::warn!(skipped, "accepting a connection: {e}");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            if let Some(skipped) = full_log.check() {
                tracing::warn!(%peer, max_connections = cap, skipped, "connection limit reached: answering 503");
            }
            if let Ok(p) = refusals.clone().try_acquire_owned() {
                tokio::spawn(refuse(stream, p));
            }
            continue;
        };
        let io = TokioIo::new(Counted { stream, _permit: permit });
        let front = front.clone();
        let mut signal = signal_rx.clone();
        let close = close_rx.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let front = front.clone();
                async move { Ok::<_, Infallible>(front.handle(req, peer).await) }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(header_timeout);
            let mut conn = std::pin::pin!(builder.serve_connection(io, service).with_upgrades());
            loop {
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(%peer, "connection: {e}");
                        }
                        break;
                    }
                    _ = signal.changed() => conn.as_mut().graceful_shutdown(),
                }
            }
            drop(close);
        });
    }
    drop(listener);
    let _ = signal_tx.send(());
    drop(signal_rx);
    drop(close_rx);
    close_tx.closed().await;
}

/// Answers a connection over the cap with 503, then closes it.
async fn refuse(mut stream: TcpStream, _permit: OwnedSemaphorePermit) {
    const REPLY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n\
        Content-Length: 38\r\nRetry-After: 1\r\nConnection: close\r\n\r\ntoo many connections: try again later\n";
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(REPLY)).await;
    let _ = stream.shutdown().await;
    // Read what the client sent, briefly, so that closing does not reset the connection before
    // it has read the reply.
    let mut buf = [0u8; 1024];
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(bind: &str, allowed: &[&str]) -> HostRule {
        HostRule::new(&NetworkSettings {
            bind: bind.parse().unwrap(),
            allowed_hosts: allowed.iter().map(|s| s.to_string()).collect(),
            ..NetworkSettings::default()
        })
    }

    #[test]
    fn hosts_on_loopback() {
        let r = rule("127.0.0.1:8998", &["kokichi.lan", "box:9000"]);
        for ok in ["localhost", "localhost:8998", "LOCALHOST:1", "127.0.0.1:8998", "[::1]:8998", "[::1]", "127.0.0.2"] {
            assert!(r.allows(ok), "{ok}");
        }
        for ok in ["kokichi.lan", "kokichi.lan:8998", "box:9000"] {
            assert!(r.allows(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8998",
            "localhost.evil.example",
            "localhost:80:evil",
            "box:9001",
            "box",
            "",
            "[::2]:8998",
            "10.0.0.1:8998",
        ] {
            assert!(!r.allows(bad), "{bad}");
        }
        assert!(rule("127.0.0.1:8998", &["*"]).allows("evil.example"));
    }

    #[test]
    fn hosts_off_loopback() {
        assert!(rule("0.0.0.0:8998", &[]).allows("anything.example:8998"));
        let r = rule("192.168.1.5:8998", &["box.lan"]);
        assert!(r.allows("box.lan:8998") && r.allows("192.168.1.5:8998") && r.allows("localhost:8998"));
        assert!(!r.allows("evil.example:8998"));
    }

    #[test]
    fn log_limiter_counts_what_it_skips() {
        let l = LogLimiter::new(Duration::from_secs(60));
        assert_eq!(l.check(), Some(0));
        assert_eq!(l.check(), None);
        assert_eq!(l.check(), None);
        let l = LogLimiter::new(Duration::ZERO);
        assert_eq!(l.check(), Some(0));
        assert_eq!(l.check(), Some(0));
    }

    #[test]
    fn the_cap_fits_the_limit() {
        let cap = connection_cap(usize::MAX);
        if let Some(limit) = open_file_limit() {
            assert!(cap < limit, "{cap} >= {limit}");
        }
        assert_eq!(connection_cap(1), 1);
    }
}
