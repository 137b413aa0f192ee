//! Moshi's own Python client (the `moshi` package's protocol code and its sphn Opus/Ogg
//! reader and writer) holds a conversation with `kokichi serve` over /api/chat, headless.
//! Needs the reference Python environment (`make venv`; `KOKICHI_PYTHON` overrides its path).

mod common;

use std::process::Command;

use common::fixture;
use kokichi::backend::{BackendKind, Precision};
use kokichi::daemon::settings::{LocalAudioSettings, NetworkSettings, RuntimeSettings};
use kokichi::daemon::{self, Settings};
use kokichi::lm::sampling::SamplingOverrides;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moshi_python_client_talks_to_kokichi() {
    let python = std::env::var("KOKICHI_PYTHON").unwrap_or_else(|_| "/var/tmp/kokichi-venv/bin/python".into());
    assert!(
        std::path::Path::new(&python).exists(),
        "{python} not found: run `make venv` (the reference moshi package)"
    );
    let cfg = Settings {
        runtime: RuntimeSettings {
            model: fixture("tiny_model").display().to_string(),
            backend: BackendKind::Cpu,
            dtype: Precision::F32,
            ..RuntimeSettings::default()
        },
        network: NetworkSettings { bind: "127.0.0.1:0".parse().unwrap(), ..NetworkSettings::default() },
        local_audio: LocalAudioSettings {
            audio: false,
            control_socket: std::env::temp_dir().join(format!("kokichi-moshi-client-{}.sock", std::process::id())),
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
    let addr = ready_rx.await.unwrap().addr;
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/moshi_client_check.py"))
            .arg("--url")
            .arg(format!("ws://{addr}"))
            .arg("--wav")
            .arg(fixture("speech/question.wav"))
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}\n{stderr}");
    assert!(out.status.success(), "the moshi client check failed");
    let summary: serde_json::Value = serde_json::from_str(stdout.trim().lines().last().unwrap()).unwrap();
    assert_eq!(summary["handshake"], serde_json::json!([0, 0, 0, 0, 0, 0, 0, 0, 0]));
    let _ = stop_tx.send(());
    server.await.unwrap().unwrap();
}
