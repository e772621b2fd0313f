//! The HTTP API on the Unix socket. `server` is the accept loop and its limits; one file per
//! request family holds the handlers, each returning `Result<Json<T>, ApiError>` (or a stream);
//! `error` is the one error answer, `extract` what handlers take from a request.

pub mod clouds;
pub mod dashboard;
pub mod dashboard_html;
pub mod error;
pub mod extract;
pub mod fleet;
pub mod guard;
pub mod health;
pub mod lookup;
pub mod notifications;
pub mod pause;
pub mod quarantine;
pub mod run;
pub mod server;
pub mod stream;
pub mod ticks;

use crate::state::AppState;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use error::ApiError;
use megaplan_cloud_api::{ErrorBody, ErrorCode, routes};
use std::sync::Arc;

/// Largest request body accepted (a RunRequest with paths and secret values is tiny).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(routes::HEALTH, get(health::health))
        .route(
            routes::CLOUDS,
            get(clouds::list_clouds).post(clouds::register),
        )
        .route(routes::CLOUD, delete(clouds::unregister))
        .route(routes::CLOUD_TICK, post(clouds::tick_now))
        .route(routes::TICKS, get(ticks::list_ticks))
        .route(routes::TICKS_WATCH, get(ticks::watch_ticks))
        .route(routes::MARKERS, get(lookup::get_marker))
        .route(routes::RUN, post(run::run_command))
        .route(routes::SECRET_NAMES, get(lookup::secret_names))
        .route(
            routes::CLOUD_PAUSE,
            post(pause::pause).delete(pause::unpause),
        )
        .route(routes::CLOUD_QUARANTINE, delete(quarantine::unquarantine))
        .route(routes::CLOUD_EXPLAIN, get(ticks::explain))
        .route(routes::NOTIFICATIONS, get(ticks::list_notifications))
        .route(routes::NOTIFICATIONS_TEST, post(notifications::test))
        .route(routes::FLEET, get(fleet::fleet))
        .route(routes::DASHBOARD, post(dashboard::open))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        // A panicking handler answers 500; every refusal is logged, rate-limited per kind.
        .layer(axum::middleware::from_fn(guard::catch_panic))
        .layer(axum::middleware::from_fn(guard::log_refusals))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::with_status(
        StatusCode::NOT_FOUND,
        ErrorBody::new(
            ErrorCode::InvalidArgs,
            "no such endpoint; see docs/api.md for the /v1 routes",
        ),
    )
}
