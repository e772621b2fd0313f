//! `GET /v1/health`.

use super::error::ApiError;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use megaplan_cloud_api::wire::Health;
use std::sync::Arc;

pub async fn health(State(state): State<Arc<AppState>>) -> Result<Json<Health>, ApiError> {
    // A store that cannot be read is reported as such (503), never as "0 registrations".
    let (registrations, ticks, storage) = match (
        state.store().count_registrations().await,
        state.store().tick_counters().await,
        state.store().storage().await,
    ) {
        (Ok(r), Ok(t), Ok(s)) => (r, t, s),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            return Err(ApiError::with_status(
                StatusCode::SERVICE_UNAVAILABLE,
                e.into(),
            ));
        }
    };
    let tools = ["ssh", "docker", "docker-compose", "rsync", "scp", "railway"]
        .iter()
        .map(|t| {
            (
                t.to_string(),
                crate::process::which(t).map(|p| p.display().to_string()),
            )
        })
        .collect();
    Ok(Json(Health {
        version: megaplan_cloud_api::VERSION.to_string(),
        api_version: megaplan_cloud_api::API_VERSION,
        pid: std::process::id(),
        started_at: state.started_at().to_rfc3339(),
        uptime_secs: state.uptime().as_secs(),
        socket: state.settings().socket.display().to_string(),
        database: state.settings().db.display().to_string(),
        cloud_home: state.settings().cloud_home.display().to_string(),
        registrations,
        ticks,
        tools,
        ssh_sessions: state.ssh().count() as u64,
        shutting_down: state.shutdown().is_cancelled(),
        schedule: state.scheduler().health(),
        storage,
    }))
}
