//! `make bench-daemon`: latency and capacity of `kokichi serve` on this machine.
//!
//! 1. Mouth-to-ear latency through `/api/pcm` on loopback: for each frame, the time from sending
//!    its last sample to receiving the first sample of the reply frame that step produced.
//! 2. Concurrent real-time sessions: N clients stream in real time; a level holds when every
//!    client gets every frame back with no drops and the step's real-time factor stays below 1.
//!
//! 3. With `--grad`, a `POST /api/grad` client runs back to back throughout (K = 8 latents,
//!    T = 40 frames, the tokens target), so that live sessions are measured beside gradients.
//!
//! Usage: bench_daemon [--model DIR (default kokichi-tiny)] [--backend cpu|wgpu] [--seconds S] [--max-sessions N] [--grad]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures_util::{SinkExt, StreamExt};
use kokichi::backend::{BackendKind, Precision};
use kokichi::daemon::settings::{LocalAudioSettings, NetworkSettings, RuntimeSettings};
use kokichi::daemon::{self, Settings};
use kokichi::lm::sampling::SamplingOverrides;
use tokio_tungstenite::tungstenite::Message;

const FRAME: usize = 1920;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

struct ClientResult {
    latencies_ms: Vec<f64>,
    frames: usize,
}

/// Streams `frames` frames of a 200 Hz tone in real time and times each reply.
async fn client(addr: SocketAddr, frames: usize) -> Result<ClientResult> {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/api/pcm")).await?;
    let (mut tx, mut rx) = ws.split();
    let (sent_tx, mut sent_rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let send = async move {
        let mut tick = tokio::time::interval(Duration::from_millis(80));
        for f in 0..frames {
            tick.tick().await;
            let pcm: Vec<u8> = (0..FRAME)
                .flat_map(|i| {
                    let t = (f * FRAME + i) as f32 / 24000.0;
                    (0.3 * (2.0 * std::f32::consts::PI * 200.0 * t).sin()).to_le_bytes()
                })
                .collect();
            tx.send(Message::Binary(pcm.into())).await?;
            let _ = sent_tx.send(Instant::now());
        }
        Ok::<_, anyhow::Error>(tx)
    };
    let recv = async {
        let mut lat = Vec::with_capacity(frames);
        while lat.len() < frames {
            match tokio::time::timeout(Duration::from_secs(30), rx.next()).await.context("no reply in 30 s")? {
                Some(Ok(Message::Binary(_))) => {
                    let sent = sent_rx.recv().await.context("reply without a frame")?;
                    lat.push(sent.elapsed().as_secs_f64() * 1000.0);
                }
                Some(Ok(_)) => {}
                other => anyhow::bail!("connection ended: {other:?}"),
            }
        }
        Ok(lat)
    };
    let (tx, lat) = tokio::join!(send, recv);
    let mut tx = tx?;
    let _ = tx.close().await;
    Ok(ClientResult { latencies_ms: lat?, frames })
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Posts gradient requests back to back until `stop`; returns (answered, busy, mean seconds).
async fn grad_load(
    addr: SocketAddr,
    dim: usize,
    streams: usize,
    stop: tokio::sync::watch::Receiver<bool>,
) -> (usize, usize, f64) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = serde_json::json!({
        "latents": vec![vec![0.01f32; dim]; 8],
        "codes": vec![vec![0i64; 40]; streams],
        "target": "tokens",
    })
    .to_string();
    let req = format!(
        "POST /api/grad HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (mut ok, mut busy, mut secs) = (0, 0, 0.0);
    while !*stop.borrow() {
        let t0 = Instant::now();
        let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else { break };
        if s.write_all(req.as_bytes()).await.is_err() {
            break;
        }
        let mut buf = String::new();
        let _ = s.read_to_string(&mut buf).await;
        if buf.starts_with("HTTP/1.1 200") {
            ok += 1;
            secs += t0.elapsed().as_secs_f64();
        } else {
            busy += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    (ok, busy, if ok > 0 { secs / ok as f64 } else { f64::NAN })
}

async fn status(addr: SocketAddr) -> Result<serde_json::Value> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"GET /api/status HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await?;
    Ok(serde_json::from_str(buf.split("\r\n\r\n").nth(1).context("no body")?)?)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let model = arg("--model").unwrap_or_else(|| kokichi::model_dir::EMBEDDED.into());
    let backend: BackendKind = arg("--backend").unwrap_or_else(|| "cpu".into()).parse()?;
    let seconds: f64 = arg("--seconds").map_or(Ok(6.0), |s| s.parse())?;
    let max_n: usize = arg("--max-sessions").map_or(Ok(64), |s| s.parse())?;
    let frames = (seconds * 12.5) as usize;
    let cfg = Settings {
        runtime: RuntimeSettings {
            model: model.clone(),
            backend,
            dtype: Precision::F32,
            max_sessions: max_n,
            ..RuntimeSettings::default()
        },
        network: NetworkSettings {
            bind: "127.0.0.1:0".parse()?,
            max_connections_per_peer: max_n,
            ..NetworkSettings::default()
        },
        local_audio: LocalAudioSettings {
            audio: false,
            control_socket: std::env::temp_dir().join(format!("kokichi-bench-{}.sock", std::process::id())),
            ..LocalAudioSettings::default()
        },
        // Moshi's sampling, whatever the model recommends.
        sampling: vec![SamplingOverrides { greedy: Some(false), ..SamplingOverrides::default() }],
        ..Settings::default()
    };
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(daemon::serve(
        cfg,
        async move {
            let _ = stop_rx.await;
        },
        Some(ready_tx),
    ));
    let addr = ready_rx.await.context("daemon did not start")?.addr;
    println!("model {model}, backend {backend}, {frames} frames of 80 ms per client");

    // Warm up (first-call costs), then one client for latency.
    client(addr, 5).await?;
    let (grad_stop, grad_rx) = tokio::sync::watch::channel(false);
    let grad = if std::env::args().any(|a| a == "--grad") {
        let files = kokichi::model_dir::resolve(&model)?;
        let (dim, streams) = (files.lm_config.dim, files.lm_config.n_q + 1);
        let task = tokio::spawn(grad_load(addr, dim, streams, grad_rx));
        // The gradient worker loads its model at the first request.
        tokio::time::sleep(Duration::from_secs(5)).await;
        println!("with a /api/grad client running back to back");
        Some(task)
    } else {
        None
    };
    let mut one = client(addr, frames).await?;
    let st = status(addr).await?;
    println!(
        "1 session: mouth-to-ear latency p50 {:.1} ms, p90 {:.1} ms, max {:.1} ms; step {:.2} ms (rtf {:.3})",
        percentile(&mut one.latencies_ms, 0.5),
        percentile(&mut one.latencies_ms, 0.9),
        percentile(&mut one.latencies_ms, 1.0),
        st["step_ms_avg"].as_f64().unwrap_or(0.0),
        st["rtf"].as_f64().unwrap_or(0.0),
    );

    let mut n = 2;
    let mut best = 1;
    while n <= max_n {
        let runs = futures_util::future::join_all((0..n).map(|_| client(addr, frames))).await;
        let st = status(addr).await?;
        let ok = runs.iter().all(|r| r.as_ref().is_ok_and(|r| r.latencies_ms.len() == r.frames));
        let mut lat: Vec<f64> =
            runs.iter().filter_map(|r| r.as_ref().ok()).flat_map(|r| r.latencies_ms.clone()).collect();
        let p90 = if lat.is_empty() { f64::NAN } else { percentile(&mut lat, 0.9) };
        let rtf = st["rtf"].as_f64().unwrap_or(f64::NAN);
        let holds = ok && rtf < 1.0 && p90 < 400.0;
        println!(
            "{n:3} sessions: {} p90 latency {p90:.1} ms, step {:.2} ms for batch {}, rtf {rtf:.3}",
            if holds { "real time, " } else { "FALLS BEHIND," },
            st["step_ms_avg"].as_f64().unwrap_or(0.0),
            st["last_batch"],
        );
        if !holds {
            break;
        }
        best = n;
        n *= 2;
    }
    println!("concurrent real-time sessions held: {best} (doubling search)");
    if let Some(task) = grad {
        let _ = grad_stop.send(true);
        let (ok, busy, mean) = task.await?;
        println!("/api/grad: {ok} answered (mean {mean:.2} s each), {busy} refused busy");
    }
    let _ = stop_tx.send(());
    server.await??;
    Ok(())
}
