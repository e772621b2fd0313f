//! What the daemon knows about one cloud.yaml: `GET /v1/secret-names` (its secret names and
//! the loader's warnings) and `GET /v1/markers` (its last-chain marker).

use super::error::ApiError;
use super::extract::{CloudYamlQuery, abs_cloud_yaml, key_of};
use crate::cloud_yaml;
use crate::state::AppState;
use crate::supervisor::markers;
use axum::Json;
use axum::extract::{Query, State};
use megaplan_cloud_api::ErrorCode;
use megaplan_cloud_api::marker::LastChainMarker;
use megaplan_cloud_api::sorted::Sorted;
use megaplan_cloud_api::wire::SecretNamesResponse;
use std::sync::Arc;

pub async fn secret_names(
    Query(q): Query<CloudYamlQuery>,
) -> Result<Json<SecretNamesResponse>, ApiError> {
    let path = abs_cloud_yaml(&q.cloud_yaml)?;
    let spec = cloud_yaml::load_async(&path).await?;
    // `warnings` (the loader's, e.g. keys of the original handled differently here) is what
    // `megaplan-cloudctl doctor` shows for each cloud.yaml it finds; `codex_auth` tells the
    // client whether `deploy`/`chain` hand over the agents' login files.
    Ok(Json(SecretNamesResponse {
        codex_auth: Some(spec.megaplan.codex_auth),
        names: spec.secrets,
        success: true,
        warnings: spec.warnings,
    }))
}

pub async fn get_marker(
    State(state): State<Arc<AppState>>,
    Query(q): Query<CloudYamlQuery>,
) -> Result<Json<Sorted<LastChainMarker>>, ApiError> {
    let key = key_of(&q.cloud_yaml)?;
    let cy = if q.cloud_yaml.starts_with('/') {
        q.cloud_yaml.as_str()
    } else {
        ""
    };
    match markers::load(&state, &key, cy, true).await?.marker {
        // Keys sorted, as the marker is stored.
        Some(m) => Ok(Json(Sorted(m))),
        None => Err(ApiError::new(
            ErrorCode::MissingRemoteSpec,
            format!(
                "no last-chain marker for key {key}; run `megaplan-cloudctl chain <spec>` first"
            ),
        )),
    }
}
