//! What the handlers take from a request: a JSON body, the `{key}` path parameter, a
//! client-given cloud.yaml path, a registered key. Each refusal is an [`ApiError`] naming the
//! parameter.

use super::error::ApiError;
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::response::{IntoResponse, Response};
use megaplan_cloud_api::{ErrorBody, ErrorCode, paths};
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};

/// A request body parsed as JSON of `T`, whatever its `Content-Type`; a body that does not
/// parse is an `invalid_args` answer quoting the parser.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Response> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(IntoResponse::into_response)?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| bad_json(e).into_response())
    }
}

fn bad_json(e: serde_json::Error) -> ApiError {
    ApiError::new(
        ErrorCode::InvalidArgs,
        format!("request body is not valid JSON for this endpoint: {e}"),
    )
}

/// `{key}` may be the marker key itself (exactly 16 hex characters), or an absolute cloud.yaml
/// path percent-encoded; anything else is a 400 naming the parameter.
pub fn key_of(k: &str) -> Result<String, ApiError> {
    paths::key_param(k).map_err(|e| ApiError::new(ErrorCode::InvalidArgs, e).field("key"))
}

/// Resolve a client-given cloud.yaml path: absolute, normalised.
pub fn abs_cloud_yaml(p: &str) -> Result<PathBuf, ErrorBody> {
    let path = Path::new(p);
    if !path.is_absolute() {
        return Err(ErrorBody::new(
            ErrorCode::InvalidArgs,
            format!("cloud_yaml must be an absolute path, got {p:?}"),
        ));
    }
    Ok(paths::absolutize(path, Path::new("/")))
}

/// The key of a registered cloud.yaml, or the not-registered answer.
pub async fn registered_key(state: &AppState, k: &str) -> Result<String, ApiError> {
    let key = key_of(k)?;
    match state.store().get_registration(&key).await? {
        Some(_) => Ok(key),
        None => Err(ApiError::new(
            ErrorCode::NotRegistered,
            format!(
                "no registration with key {key}; register it first (`megaplan-cloudctl register`)"
            ),
        )),
    }
}

/// The answer while the daemon stops: no new work is taken.
pub fn refuse_if_shutting_down(state: &AppState) -> Result<(), ApiError> {
    if state.shutdown().is_cancelled() {
        return Err(ApiError::new(
            ErrorCode::ShuttingDown,
            "megaplan-cloudd is shutting down; retry once it is back",
        ));
    }
    Ok(())
}

/// Query naming one cloud.yaml (`?cloud_yaml=`).
#[derive(serde::Deserialize)]
pub struct CloudYamlQuery {
    pub cloud_yaml: String,
}
