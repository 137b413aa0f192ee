//! A daemon in process for tests (tiny model, CPU backend, no audio device) and a real-time
//! "victim" client that streams beside whatever a test throws at the daemon, recording when each
//! answer frame arrives.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use kokichi::backend::{BackendKind, Precision};
use kokichi::daemon::settings::{LocalAudioSettings, NetworkSettings, RuntimeSettings};
use kokichi::daemon::{self, Settings};
use kokichi::lm::sampling::SamplingOverrides;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;

use super::{fixture, scratch};

/// Samples in one 80 ms frame at 24 kHz.
pub const FRAME: usize = 1920;

/// Settings for an in-process daemon: the tiny fixture model, greedy, CPU, no audio device,
/// an ephemeral loopback port and a control socket of its own (`tag`/`name` keep tests apart).
pub fn test_settings(tag: &str, name: &str) -> Settings {
    Settings {
        runtime: RuntimeSettings {
            model: fixture("tiny_model").display().to_string(),
            backend: BackendKind::Cpu,
            dtype: Precision::F32,
            ..RuntimeSettings::default()
        },
        network: NetworkSettings { bind: SocketAddr::from(([127, 0, 0, 1], 0)), ..NetworkSettings::default() },
        local_audio: LocalAudioSettings {
            audio: false,
            control_socket: scratch(tag, &format!("{name}.sock")),
            ..LocalAudioSettings::default()
        },
        sampling: vec![SamplingOverrides::greedy()],
        ..Settings::default()
    }
}

/// A running daemon; [`Running::shutdown`] stops it and checks it ended cleanly.
pub struct Running {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<kokichi::Result<()>>,
}

impl Running {
    pub async fn start(settings: Settings) -> Self {
        let (ready_tx, ready_rx) = oneshot::channel();
        let (stop, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(daemon::serve(
            settings,
            async move {
                let _ = stop_rx.await;
            },
            Some(ready_tx),
        ));
        let ready = ready_rx.await.expect("daemon failed to start");
        Running { addr: ready.addr, stop: Some(stop), task }
    }

    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.task.await.expect("daemon task panicked").expect("daemon ended with an error");
    }

    /// `/api/status` as JSON.
    pub async fn status(&self) -> serde_json::Value {
        let reply =
            raw_http(self.addr, "GET /api/status HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await;
        let body = reply.split("\r\n\r\n").nth(1).unwrap_or_default();
        serde_json::from_str(body).unwrap_or_else(|e| panic!("status is not JSON ({e}): {reply}"))
    }
}

/// Sends `request` as is and returns the whole reply (the server must close the connection).
pub async fn raw_http(addr: SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(request.as_bytes()).await.expect("send request");
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

/// What a real-time client saw.
#[derive(Debug)]
pub struct VictimReport {
    pub sent: usize,
    pub received: usize,
    /// The longest wait between two answer frames (from the first one on).
    pub worst_gap: Duration,
}

impl VictimReport {
    pub fn lost(&self) -> usize {
        self.sent.saturating_sub(self.received)
    }

    /// Fails the test if the victim lost more than `max_lost` frames or waited longer than
    /// `max_gap` between two of them.
    pub fn assert_kept_up(&self, what: &str, max_lost: usize, max_gap: Duration) {
        assert!(
            self.lost() <= max_lost && self.worst_gap <= max_gap,
            "{what}: the victim lost {} of {} frames (at most {max_lost}) and waited {:?} between two (at most {max_gap:?})",
            self.lost(),
            self.sent,
            self.worst_gap
        );
    }
}

/// Streams `frames` frames of a quiet tone to `/api/pcm` in real time (one every 80 ms) and
/// waits up to 5 s after the last for the answers.
pub async fn victim(addr: SocketAddr, frames: usize) -> VictimReport {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/api/pcm")).await.expect("victim connects");
    let (mut tx, mut rx) = ws.split();
    let send = async {
        let mut tick = tokio::time::interval(Duration::from_millis(80));
        for f in 0..frames {
            tick.tick().await;
            let bytes: Vec<u8> = (0..FRAME)
                .map(|i| 0.05 * ((f * FRAME + i) as f32 * 0.05).sin())
                .flat_map(|v| v.to_le_bytes())
                .collect();
            if tx.send(Message::Binary(bytes.into())).await.is_err() {
                break;
            }
        }
        tx
    };
    let recv = async {
        let mut received = 0;
        let mut last: Option<Instant> = None;
        let mut worst_gap = Duration::ZERO;
        while received < frames {
            match tokio::time::timeout(Duration::from_secs(5), rx.next()).await {
                Ok(Some(Ok(Message::Binary(_)))) => {
                    let now = Instant::now();
                    if let Some(prev) = last {
                        worst_gap = worst_gap.max(now - prev);
                    }
                    last = Some(now);
                    received += 1;
                }
                Ok(Some(Ok(_))) => {}
                _ => break,
            }
        }
        (received, worst_gap)
    };
    let (mut tx, (received, worst_gap)) = tokio::join!(send, recv);
    let _ = tx.close().await;
    VictimReport { sent: frames, received, worst_gap }
}
