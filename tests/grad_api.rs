//! `POST /api/grad` on a live daemon: the returned gradient against finite differences of the
//! same loss computed here, the hidden-state target, and refusals (token, origin, size, shape)
//! as JSON with their status codes.

mod common;

use std::net::SocketAddr;

use burn::prelude::*;
use burn::tensor::DType;
use common::live::{Running, raw_http, test_settings};
use common::*;
use kokichi::backend::{self, Precision};
use kokichi::lm::LmModel;
use kokichi::train::grad::{self as g, Target};

async fn post(addr: SocketAddr, extra_headers: &str, body: &str) -> (u16, serde_json::Value) {
    let req = format!(
        "POST /api/grad HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\n{extra_headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let reply = raw_http(addr, &req).await;
    let status: u16 = reply.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("reply: {reply}"));
    let body = reply.split("\r\n\r\n").nth(1).unwrap_or_default();
    let json = serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {reply}"));
    (status, json)
}

fn local_model() -> LmModel {
    let files = kokichi::model_dir::resolve(&fixture("tiny_model").display().to_string()).unwrap();
    LmModel::load_as(&files.lm, files.lm_config.clone(), &Device::flex(), Precision::F32).unwrap()
}

fn local_loss(lm: &LmModel, latents: &[f32], k: usize, codes: &[i64], t: usize, target: &Target) -> f64 {
    let p = backend::floats(latents.to_vec(), [k, lm.config.dim], &lm.device(), DType::F32);
    f64::from(floats(g::loss(lm, p, codes, t, target).unwrap())[0])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grad_endpoint_matches_finite_differences_and_refuses_bad_requests() {
    let mut settings = test_settings("grad", "grad");
    settings.network.token = Some("s3cret-token".into());
    let daemon = Running::start(settings).await;
    let lm = local_model();
    let (dim, streams) = (lm.config.dim, lm.config.n_q + 1);
    let (k, t) = (2, 6);
    let latents: Vec<f32> = (0..k * dim).map(|i| ((i * 37 % 19) as f32 - 9.0) * 0.05).collect();
    let codes: Vec<i64> = (0..streams * t)
        .map(|i| {
            let card = if i < t { lm.config.text_card } else { lm.config.card };
            ((i * 7919) % card) as i64
        })
        .collect();
    let rows = |v: &[f32], w: usize| serde_json::json!(v.chunks(w).collect::<Vec<_>>());
    let body = serde_json::json!({
        "latents": rows(&latents, dim),
        "codes": codes.chunks(t).collect::<Vec<_>>(),
        "target": "tokens",
    })
    .to_string();
    let auth = "Authorization: Bearer s3cret-token\r\n";

    // Refusals.
    let (s, j) = post(daemon.addr, "", &body).await;
    assert_eq!((s, j["error"].as_str().unwrap()), (401, "missing or wrong token"));
    let (s, _) = post(daemon.addr, &format!("{auth}Origin: http://evil.example\r\n"), &body).await;
    assert_eq!(s, 403);
    let big = format!(
        "POST /api/grad HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: 40000000\r\n\r\n{{}}"
    );
    let reply = raw_http(daemon.addr, &big).await;
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    let too_many = serde_json::json!({ "latents": vec![vec![0.0f32; dim]; 65], "codes": [[0]], "target": "tokens" });
    let (s, j) = post(daemon.addr, auth, &too_many.to_string()).await;
    assert_eq!(s, 400);
    assert!(j["error"].as_str().unwrap().contains("at most 64"), "{j}");
    let narrow = serde_json::json!({ "latents": [[0.0, 1.0]], "codes": codes.chunks(t).collect::<Vec<_>>(), "target": "tokens" });
    let (s, j) = post(daemon.addr, auth, &narrow.to_string()).await;
    assert_eq!(s, 400);
    assert!(j["error"].as_str().unwrap().contains("d_model"), "{j}");

    // Tokens: loss and gradient against the same loss computed here.
    let (s, j) = post(daemon.addr, auth, &body).await;
    assert_eq!(s, 200, "{j}");
    let loss = j["loss"].as_f64().unwrap();
    let grad: Vec<f32> = j["grad"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32))
        .collect();
    assert_eq!(grad.len(), k * dim);
    let want = local_loss(&lm, &latents, k, &codes, t, &Target::Tokens);
    assert!((loss - want).abs() < 1e-4 * want.abs().max(1.0), "loss {loss} vs {want} here");
    let scale = grad.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(scale > 1e-6, "gradient vanishes");
    let mut order: Vec<usize> = (0..grad.len()).collect();
    order.sort_by(|&a, &b| grad[b].abs().total_cmp(&grad[a].abs()));
    let eps = 1e-2f32;
    for &i in order.iter().take(3) {
        let (mut up, mut down) = (latents.clone(), latents.clone());
        up[i] += eps;
        down[i] -= eps;
        let fd = ((local_loss(&lm, &up, k, &codes, t, &Target::Tokens)
            - local_loss(&lm, &down, k, &codes, t, &Target::Tokens))
            / (2.0 * f64::from(eps))) as f32;
        assert!((fd - grad[i]).abs() < 0.05 * grad[i].abs() + 0.01 * scale, "coordinate {i}: {} vs {fd}", grad[i]);
    }

    // An upstream gradient on the hidden states.
    let hidden: Vec<f32> = (0..t * dim).map(|i| ((i * 13 % 7) as f32 - 3.0) * 0.1).collect();
    let hbody = serde_json::json!({
        "latents": rows(&latents, dim),
        "codes": codes.chunks(t).collect::<Vec<_>>(),
        "hidden_grad": rows(&hidden, dim),
    });
    let (s, j) = post(daemon.addr, auth, &hbody.to_string()).await;
    assert_eq!(s, 200, "{j}");
    let target = Target::Hidden(hidden);
    let want = local_loss(&lm, &latents, k, &codes, t, &target);
    assert!((j["loss"].as_f64().unwrap() - want).abs() < 1e-3 * want.abs().max(1.0), "{j} vs {want}");
    let hgrad: Vec<f32> = j["grad"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32))
        .collect();
    let i = (0..hgrad.len()).max_by(|&a, &b| hgrad[a].abs().total_cmp(&hgrad[b].abs())).unwrap();
    let (mut up, mut down) = (latents.clone(), latents.clone());
    up[i] += eps;
    down[i] -= eps;
    let fd = ((local_loss(&lm, &up, k, &codes, t, &target) - local_loss(&lm, &down, k, &codes, t, &target))
        / (2.0 * f64::from(eps))) as f32;
    assert!((fd - hgrad[i]).abs() < 0.05 * hgrad[i].abs(), "hidden target, coordinate {i}: {} vs {fd}", hgrad[i]);
    daemon.shutdown().await;
}
