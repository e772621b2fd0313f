//! `POST /v1/clouds/{key}/pause` and `DELETE /v1/clouds/{key}/pause`.

use super::error::ApiError;
use super::extract::{JsonBody, registered_key};
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path as AxPath, State};
use megaplan_cloud_api::ErrorCode;
use megaplan_cloud_api::report::Pause;
use megaplan_cloud_api::wire::{PauseRequest, PauseResponse, UnpauseResponse};
use std::sync::Arc;

/// Longest pause `reason` accepted (it is stored once; reports carry a clipped copy).
pub const MAX_REASON_BYTES: usize = 1024;

fn wire(p: crate::notify::store::Pause) -> Pause {
    Pause {
        key: p.key,
        paused_by: p.paused_by,
        reason: p.reason,
        since: p.since,
    }
}

pub async fn pause(
    State(state): State<Arc<AppState>>,
    AxPath(k): AxPath<String>,
    JsonBody(req): JsonBody<PauseRequest>,
) -> Result<Json<PauseResponse>, ApiError> {
    if req.by.trim().is_empty() || req.by.len() > 200 {
        return Err(ApiError::new(
            ErrorCode::InvalidArgs,
            "pause needs `by` (1 to 200 characters)",
        )
        .field("by"));
    }
    if let Some(reason) = &req.reason
        && reason.len() > MAX_REASON_BYTES
    {
        return Err(ApiError::new(
            ErrorCode::InvalidArgs,
            format!(
                "pause `reason` is {} bytes, over the limit of {MAX_REASON_BYTES}; give a short note (tick reports carry only its first {} bytes)",
                reason.len(),
                crate::supervisor::supervise::REPORT_PAUSE_REASON_BYTES
            ),
        )
        .field("reason"));
    }
    let key = registered_key(&state, &k).await?;
    let p =
        crate::supervisor::pause::set_pause(state.store(), &key, &req.by, req.reason.as_deref())
            .await?;
    tracing::info!(key = %key, by = %p.paused_by, "paused");
    state.announce_change(key.clone());
    Ok(Json(PauseResponse {
        key,
        paused: wire(p),
        success: true,
    }))
}

pub async fn unpause(
    State(state): State<Arc<AppState>>,
    AxPath(k): AxPath<String>,
) -> Result<Json<UnpauseResponse>, ApiError> {
    let key = registered_key(&state, &k).await?;
    let was = crate::supervisor::pause::clear_pause(state.store(), &key).await?;
    tracing::info!(key = %key, "unpaused");
    state.announce_change(key.clone());
    Ok(Json(UnpauseResponse {
        key,
        paused: None,
        success: true,
        was_paused: was.map(wire),
    }))
}
