//! Two layers around every handler (see [`super::router`]):
//! - [`catch_panic`]: a handler that panics answers `500 internal` with the usual
//!   [`ErrorBody`](megaplan_cloud_api::ErrorBody) instead of dropping the connection (the client
//!   would say the daemon is unreachable); the panic is logged.
//! - [`log_refusals`]: every refused request (a 4xx or 5xx answer) is logged at WARN, but
//!   rate-limited per kind (status, error code, field): the first one in full, then at most one
//!   line a minute saying how many more like it were refused. A flood of bad requests cannot
//!   fill the log.

use super::error::ApiError;
use crate::ratelog::{Admit, KindLog, clip};
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;
use megaplan_cloud_api::ErrorCode;
use std::sync::LazyLock;
use std::time::Instant;

/// Longest part of a refusal's message or path copied into a log line.
const LOGGED_TEXT_BYTES: usize = 200;

/// What an error answer carries for the log (inserted into the response's extensions by
/// `ApiError::into_response`).
#[derive(Debug, Clone)]
pub struct Refusal {
    pub code: ErrorCode,
    pub field: Option<String>,
    pub message: String,
}

static REFUSALS: LazyLock<KindLog> = LazyLock::new(|| KindLog::new(crate::ratelog::EVERY));

/// Log a refused request (rate-limited per kind). Called for every 4xx/5xx answer, by
/// [`log_refusals`] and by the accept loop's own refusals (413, 408).
pub fn note_refusal(method: &str, path: &str, status: u16, refusal: Option<&Refusal>) {
    let code = refusal.map_or("-", |r| r.code.as_str());
    let field = refusal.and_then(|r| r.field.as_deref()).unwrap_or("-");
    let kind = format!("{status} {code} {field} {}", clip(method, 16));
    let path = clip(path, LOGGED_TEXT_BYTES);
    match REFUSALS.admit(&kind, Instant::now()) {
        Admit::Quiet => {}
        Admit::Line => {
            let message = refusal.map_or(String::new(), |r| clip(&r.message, LOGGED_TEXT_BYTES));
            tracing::warn!(
                status,
                error = code,
                field,
                "refused {} {path}: {message} (more like this are counted, one line a minute)",
                clip(method, 16)
            );
        }
        Admit::Summary(n) => {
            tracing::warn!(
                status,
                error = code,
                field,
                "{n} more requests like this were refused in the last minute (latest: {} {path})",
                clip(method, 16)
            );
        }
    }
}

/// The text of a panic's payload.
fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}

/// A panicking handler answers `500 internal` (the usual JSON body); the panic is logged.
pub async fn catch_panic(req: Request, next: Next) -> Response {
    let what = format!(
        "{} {}",
        req.method(),
        clip(req.uri().path(), LOGGED_TEXT_BYTES)
    );
    match std::panic::AssertUnwindSafe(next.run(req))
        .catch_unwind()
        .await
    {
        Ok(resp) => resp,
        Err(payload) => {
            let text = clip(&panic_text(payload.as_ref()), LOGGED_TEXT_BYTES);
            match REFUSALS.admit("panic", Instant::now()) {
                Admit::Quiet => {}
                Admit::Line => tracing::error!("a handler panicked answering {what}: {text}"),
                Admit::Summary(n) => tracing::error!(
                    "{n} more handler panics in the last minute; the latest answering {what}: {text}"
                ),
            }
            ApiError::new(
                ErrorCode::Internal,
                format!(
                    "megaplan-cloudd hit an internal error answering {what}; its log says more (\"a handler panicked\"). The daemon keeps serving; please report it"
                ),
            )
            .into_response()
        }
    }
}

/// Log every refused request (4xx/5xx), rate-limited per kind.
pub async fn log_refusals(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let resp = next.run(req).await;
    let status = resp.status();
    if status.is_client_error() || status.is_server_error() {
        note_refusal(
            method.as_str(),
            &path,
            status.as_u16(),
            resp.extensions().get::<Refusal>(),
        );
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn boom() -> &'static str {
        panic!("kaboom {}", 42)
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_500_with_the_error_body() {
        let app = Router::new()
            .route("/boom", get(boom))
            .route("/fine", get(|| async { "ok" }))
            .layer(axum::middleware::from_fn(catch_panic));
        let resp = app
            .clone()
            .oneshot(Request::get("/boom").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 500);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["success"], false, "{v}");
        assert_eq!(v["error"], "internal", "{v}");
        let message = v["message"].as_str().unwrap();
        assert!(
            message.contains("internal error answering GET /boom"),
            "{v}"
        );
        // What the panic said stays in the log (it might quote anything).
        assert!(!message.contains("kaboom"), "{v}");
        // The same service keeps answering.
        let resp = app
            .oneshot(Request::get("/fine").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
    }
}
