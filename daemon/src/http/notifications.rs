//! `POST /v1/notifications/test`: send a test notification to every sink and answer with each
//! sink's result (`megaplan-cloudctl notifications test`, `doctor --send-test`).

use super::error::ApiError;
use super::extract::{JsonBody, refuse_if_shutting_down, registered_key};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use megaplan_cloud_api::notification::{TestRequest, TestResults};
use std::sync::Arc;

pub async fn test(
    State(state): State<Arc<AppState>>,
    JsonBody(req): JsonBody<TestRequest>,
) -> Result<Json<TestResults>, ApiError> {
    refuse_if_shutting_down(&state)?;
    let registration = match req.cloud_yaml.as_deref() {
        None => None,
        Some(k) => {
            let key = registered_key(&state, k).await?;
            let cloud_yaml = state
                .store()
                .get_registration(&key)
                .await?
                .map(|r| r.cloud_yaml)
                .unwrap_or_default();
            Some((key, cloud_yaml))
        }
    };
    let results = crate::notify::send_test(
        &state,
        registration.as_ref().map(|(k, c)| (k.as_str(), c.as_str())),
    )
    .await?;
    Ok(Json(results))
}
