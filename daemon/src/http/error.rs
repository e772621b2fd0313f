//! The one error answer of the API: an [`ErrorBody`] on the wire with the status its code
//! calls for. Every handler's error, and every refusal of the accept loop, becomes a response
//! through the single `IntoResponse` impl here.

use crate::store::StoreError;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use megaplan_cloud_api::{ErrorBody, ErrorCode};

/// An error answer: the wire body and its HTTP status.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
}

impl ApiError {
    /// An answer with the status its code calls for (see [`status_for`]).
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ErrorBody::new(code, message).into()
    }

    /// An answer with a status other than the code's own (a store that cannot be read makes
    /// `/v1/health` a 503; an unknown route is a 404).
    pub fn with_status(status: StatusCode, body: ErrorBody) -> ApiError {
        ApiError { status, body }
    }

    /// Name the request field at fault (`"field": name` in the body).
    pub fn field(mut self, name: &str) -> ApiError {
        self.body = self.body.with("field", name);
        self
    }
}

/// The HTTP status of an error code.
pub fn status_for(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::NotRegistered => StatusCode::NOT_FOUND,
        ErrorCode::StorageFailed | ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_REQUEST,
    }
}

impl From<ErrorBody> for ApiError {
    fn from(body: ErrorBody) -> ApiError {
        ApiError {
            status: status_for(body.error),
            body,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        ErrorBody::from(e).into()
    }
}

impl From<crate::cloud_yaml::ConfigError> for ApiError {
    fn from(e: crate::cloud_yaml::ConfigError) -> ApiError {
        ErrorBody::from(e).into()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // What the refusal log needs, without reading the body back.
        let refusal = super::guard::Refusal {
            code: self.body.error,
            field: self
                .body
                .extra
                .get("field")
                .and_then(|f| f.as_str())
                .map(str::to_string),
            message: self.body.message.clone(),
        };
        let mut resp = (self.status, axum::Json(self.body.to_value())).into_response();
        resp.extensions_mut().insert(refusal);
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_code_answers_with_its_status() {
        let cases = [
            (ErrorCode::NotRegistered, StatusCode::NOT_FOUND),
            (ErrorCode::StorageFailed, StatusCode::INTERNAL_SERVER_ERROR),
            (ErrorCode::Internal, StatusCode::INTERNAL_SERVER_ERROR),
            (ErrorCode::ShuttingDown, StatusCode::SERVICE_UNAVAILABLE),
            (ErrorCode::InvalidArgs, StatusCode::BAD_REQUEST),
            (ErrorCode::MissingRemoteSpec, StatusCode::BAD_REQUEST),
        ];
        for (code, status) in cases {
            assert_eq!(ApiError::new(code, "m").status, status, "{code}");
        }
    }
}
