//! The structured error every command and endpoint returns:
//! `{"success": false, "error": "<code>", "message": "<what and how to fix>", ...extra}`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Error codes. The first eleven are the original tool's; the rest are the daemon's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidSpec,
    FutureProvider,
    ProviderUnavailable,
    ProviderFailed,
    MissingSecrets,
    MissingIdeaFile,
    MissingRemoteSpec,
    ChainSessionCollision,
    InvalidArgs,
    InvalidStatus,
    RailwayServiceMissing,
    /// The client could not reach the daemon's socket.
    DaemonUnreachable,
    /// The daemon answered with something the client does not understand (version skew).
    ProtocolError,
    /// No registration for the given cloud.yaml.
    NotRegistered,
    /// The daemon's own storage failed (disk full, read-only database, ...).
    StorageFailed,
    /// A remote command or tick ran past its deadline and was killed.
    DeadlineExceeded,
    /// The daemon is shutting down and takes no new work.
    ShuttingDown,
    /// Anything else; the message says what.
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidSpec => "invalid_spec",
            ErrorCode::FutureProvider => "future_provider",
            ErrorCode::ProviderUnavailable => "provider_unavailable",
            ErrorCode::ProviderFailed => "provider_failed",
            ErrorCode::MissingSecrets => "missing_secrets",
            ErrorCode::MissingIdeaFile => "missing_idea_file",
            ErrorCode::MissingRemoteSpec => "missing_remote_spec",
            ErrorCode::ChainSessionCollision => "chain_session_collision",
            ErrorCode::InvalidArgs => "invalid_args",
            ErrorCode::InvalidStatus => "invalid_status",
            ErrorCode::RailwayServiceMissing => "railway_service_missing",
            ErrorCode::DaemonUnreachable => "daemon_unreachable",
            ErrorCode::ProtocolError => "protocol_error",
            ErrorCode::NotRegistered => "not_registered",
            ErrorCode::StorageFailed => "storage_failed",
            ErrorCode::DeadlineExceeded => "deadline_exceeded",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A structured error. `extra` fields are flattened next to the three fixed ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub success: bool,
    pub error: ErrorCode,
    pub message: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ErrorBody {
    pub fn new(error: ErrorCode, message: impl Into<String>) -> Self {
        ErrorBody {
            success: false,
            error,
            message: message.into(),
            extra: Map::new(),
        }
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(key.to_string(), value.into());
        self
    }

    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or_else(|_| {
            serde_json::json!({"success": false, "error": self.error.as_str(), "message": self.message})
        })
    }
}

impl std::fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.error, self.message)
    }
}

impl std::error::Error for ErrorBody {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_shape_is_flat() {
        let body = ErrorBody::new(ErrorCode::MissingIdeaFile, "m1 idea not found")
            .with("tried", vec!["/a", "/b"]);
        let v = body.to_value();
        assert_eq!(v["success"], false);
        assert_eq!(v["error"], "missing_idea_file");
        assert_eq!(v["message"], "m1 idea not found");
        assert_eq!(v["tried"][1], "/b");
        let back: ErrorBody = serde_json::from_value(v).unwrap();
        assert_eq!(back, body);
    }

    #[test]
    fn every_code_serializes_as_its_str() {
        for code in [
            ErrorCode::InvalidSpec,
            ErrorCode::FutureProvider,
            ErrorCode::ProviderUnavailable,
            ErrorCode::ProviderFailed,
            ErrorCode::MissingSecrets,
            ErrorCode::MissingIdeaFile,
            ErrorCode::MissingRemoteSpec,
            ErrorCode::ChainSessionCollision,
            ErrorCode::InvalidArgs,
            ErrorCode::InvalidStatus,
            ErrorCode::RailwayServiceMissing,
            ErrorCode::DaemonUnreachable,
            ErrorCode::ProtocolError,
            ErrorCode::NotRegistered,
            ErrorCode::StorageFailed,
            ErrorCode::DeadlineExceeded,
            ErrorCode::ShuttingDown,
            ErrorCode::Internal,
        ] {
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
        }
    }
}
