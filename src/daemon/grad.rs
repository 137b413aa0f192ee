//! `POST /api/grad`: the loss of a token sequence (or of an upstream gradient on the output
//! hidden states) after prefix latents, and its gradient with respect to the latents, through
//! the frozen LM (`train::grad`).
//!
//! The computing is `grad_worker.rs`'s (a low-priority thread, one request at a time); a request
//! it cannot queue gets 503 with `Retry-After`. Requests are bounded by K (64), T (256), the body
//! size and a time budget; errors are JSON `{"error": ...}`.

use std::collections::HashMap;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::grad_worker::{Job, MAX_BODY_BYTES, TIME_BUDGET};
use super::socket::{App, authorize};
use crate::train::grad::{self as g, Target};

/// The request body: `latents` `[K, d_model]`, `codes` `[1 + n_q, T]` (text first), and either
/// `"target": "tokens"` or `hidden_grad` `[T, d_model]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    latents: Vec<Vec<f32>>,
    codes: Vec<Vec<i64>>,
    #[serde(default)]
    target: Option<String>,
    #[serde(default)]
    hidden_grad: Option<Vec<Vec<f32>>>,
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, axum::Json(serde_json::json!({ "error": msg.into() }))).into_response()
}

/// Rows of equal length flattened, or which row differs.
fn flatten<T: Copy>(rows: &[Vec<T>], what: &str) -> std::result::Result<(Vec<T>, usize, usize), String> {
    let n = rows.first().map_or(0, Vec::len);
    if rows.is_empty() || n == 0 {
        return Err(format!("{what}: empty"));
    }
    if let Some(i) = rows.iter().position(|r| r.len() != n) {
        return Err(format!("{what}: row {i} holds {} values, row 0 holds {n}", rows[i].len()));
    }
    Ok((rows.concat(), rows.len(), n))
}

fn parse(body: &[u8]) -> std::result::Result<(Vec<f32>, usize, Vec<i64>, usize, Target), String> {
    let r: Request = serde_json::from_slice(body).map_err(|e| format!("body: {e}"))?;
    if r.latents.len() > crate::gist::MAX_K {
        return Err(format!("latents: {} rows, at most {}", r.latents.len(), crate::gist::MAX_K));
    }
    let (latents, k, _) = flatten(&r.latents, "latents")?;
    let (codes, _, t) = flatten(&r.codes, "codes")?;
    if t > g::MAX_T {
        return Err(format!("codes: {t} frames, at most {}", g::MAX_T));
    }
    let target = match (r.target.as_deref(), r.hidden_grad) {
        (Some("tokens"), None) => Target::Tokens,
        (None, Some(h)) => {
            let (values, rows, _) = flatten(&h, "hidden_grad")?;
            if rows != t {
                return Err(format!("hidden_grad: {rows} rows, codes have {t} frames"));
            }
            Target::Hidden(values)
        }
        (Some(other), None) => return Err(format!("target `{other}`: expected \"tokens\" (or give hidden_grad)")),
        _ => return Err("give either \"target\": \"tokens\" or \"hidden_grad\", not both".into()),
    };
    Ok((latents, k, codes, t, target))
}

pub async fn grad(
    State(app): State<App>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    body: Body,
) -> Response {
    if let Err(r) = authorize(&app, &headers, &q) {
        let msg = if r.status() == StatusCode::UNAUTHORIZED { "missing or wrong token" } else { "origin not allowed" };
        return error(r.status(), msg);
    }
    let Some(service) = &app.grad else {
        return error(StatusCode::NOT_FOUND, "gradients are disabled on this daemon");
    };
    let too_big = || error(StatusCode::PAYLOAD_TOO_LARGE, format!("body over {MAX_BODY_BYTES} bytes, or cut short"));
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return too_big();
    }
    let body = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(_) => return too_big(),
    };
    let (latents, k, codes, t, target) = match parse(&body) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let (reply, answer) = tokio::sync::oneshot::channel();
    let deadline = Instant::now() + TIME_BUDGET;
    if let Err(why) = service.submit(Job { latents, k, codes, t, target, deadline, reply }) {
        if why.starts_with("busy") {
            let mut r = error(StatusCode::SERVICE_UNAVAILABLE, why);
            r.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            return r;
        }
        return error(StatusCode::INTERNAL_SERVER_ERROR, why);
    }
    match tokio::time::timeout(TIME_BUDGET, answer).await {
        Ok(Ok(Ok((loss, grad)))) => {
            let dim = grad.len() / k.max(1);
            let rows: Vec<&[f32]> = grad.chunks(dim.max(1)).collect();
            axum::Json(serde_json::json!({ "loss": loss, "grad": rows })).into_response()
        }
        Ok(Ok(Err((status, msg)))) => error(status, msg),
        Ok(Err(_)) => error(StatusCode::INTERNAL_SERVER_ERROR, "the gradient worker dropped the request"),
        Err(_) => error(StatusCode::GATEWAY_TIMEOUT, format!("over the time budget of {} s", TIME_BUDGET.as_secs())),
    }
}
