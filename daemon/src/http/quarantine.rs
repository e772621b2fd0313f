//! `DELETE /v1/clouds/{key}/quarantine`: clear a registration's crash-loop quarantine
//! (`megaplan-cloudctl unquarantine`, the dashboard's Unquarantine button, and `resume`).

use super::error::ApiError;
use super::extract::registered_key;
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path as AxPath, State};
use megaplan_cloud_api::liveness::UnquarantineResult;
use std::sync::Arc;

pub async fn unquarantine(
    State(state): State<Arc<AppState>>,
    AxPath(k): AxPath<String>,
) -> Result<Json<UnquarantineResult>, ApiError> {
    let key = registered_key(&state, &k).await?;
    let cleared = crate::supervisor::quarantine::clear(state.store(), &key).await?;
    tracing::info!(key = %key, cleared, "unquarantined");
    state.announce_change(key.clone());
    if cleared {
        // Look at the chain at once: the restart it was held from may be due now.
        let events = state.runner_events().clone();
        let _ = events
            .send(crate::provider::resident::RunnerEvent {
                key: key.clone(),
                what: "the quarantine was cleared".into(),
                lost: false,
            })
            .await;
    }
    Ok(Json(UnquarantineResult { key, cleared }))
}
