//! The HTTP front: the web page, `GET /api/status` (JSON metrics), `GET /metrics` (the same
//! for Prometheus), the WebSocket endpoints (`/api/pcm` in `pcm.rs`, `/api/chat` in `chat.rs`)
//! and `POST /api/grad` (`grad.rs`), all behind the same token and origin
//! checks (`socket.rs`).

use std::collections::HashMap;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::socket::{App, authorize};
use super::{chat, grad, pcm};

pub fn router(app: App) -> Router {
    Router::new()
        .route("/", get(|| async { page("text/html; charset=utf-8", include_str!("../../assets/web/index.html")) }))
        .route("/app.js", get(|| async { page("text/javascript", include_str!("../../assets/web/app.js")) }))
        .route("/worklet.js", get(|| async { page("text/javascript", include_str!("../../assets/web/worklet.js")) }))
        .route("/api/status", get(status))
        .route("/metrics", get(metrics))
        .route("/api/pcm", get(pcm::pcm))
        .route("/api/chat", get(chat::chat))
        .route("/api/grad", post(grad::grad).layer(DefaultBodyLimit::disable()))
        .with_state(app)
}

/// The web page (compiled in, so the daemon is one file).
fn page(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

async fn status(State(app): State<App>, headers: HeaderMap, Query(q): Query<HashMap<String, String>>) -> Response {
    if let Err(r) = authorize(&app, &headers, &q) {
        return r;
    }
    axum::Json(app.metrics.snapshot()).into_response()
}

/// Prometheus' text format; the same token and origin rules as `/api/status`.
async fn metrics(State(app): State<App>, headers: HeaderMap, Query(q): Query<HashMap<String, String>>) -> Response {
    if let Err(r) = authorize(&app, &headers, &q) {
        return r;
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], app.metrics.prometheus()).into_response()
}
