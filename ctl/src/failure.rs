//! How the client says a command failed: the structured error (JSON for scripts, one `error:`
//! line for a person) and its exit code.

use crate::output;
use megaplan_cloud_api::{ErrorBody, ErrorCode, paths};
use megaplan_cloudctl::client::ClientError;

/// Print a structured error and return its exit code. For scripts: the JSON document on
/// stdout plus one `error:` line on stderr; on a terminal: the one line on stderr only.
pub fn fail(e: ClientError) -> i32 {
    let (body, code) = match e {
        ClientError::Unreachable(body) => (body, output::EXIT_DAEMON_UNREACHABLE),
        ClientError::Api(body) => (body, 1),
    };
    if output::json_mode() {
        output::print_json_unfiltered(&body.to_value());
    }
    let message = output::strip_controls(&body.message);
    if code == output::EXIT_DAEMON_UNREACHABLE {
        eprintln!("{} {message}", output::paint("error:", "1;31"));
    } else {
        eprintln!(
            "{} {}: {message}",
            output::paint("error:", "1;31"),
            body.error
        );
    }
    code
}

/// [`fail`] for a command about one cloud.yaml: "not registered" names the file (the key is a
/// hash nobody recognises) and says how to register it.
pub fn fail_for(e: ClientError, cloud_yaml: &str) -> i32 {
    match e {
        // Named by its key: there is no file to suggest registering.
        ClientError::Api(body)
            if body.error == ErrorCode::NotRegistered && paths::is_marker_key(cloud_yaml) =>
        {
            fail(ClientError::Api(no_registration(cloud_yaml)))
        }
        ClientError::Api(body) if body.error == ErrorCode::NotRegistered => {
            let message = format!(
                "{cloud_yaml} is not registered with megaplan-cloudd; register it with `megaplan-cloudctl register --cloud-yaml {cloud_yaml}`"
            );
            let mut renamed = ErrorBody::new(ErrorCode::NotRegistered, message);
            renamed.extra = body.extra;
            fail(ClientError::Api(
                renamed.with("cloud_yaml", cloud_yaml.to_string()),
            ))
        }
        other => fail(other),
    }
}

pub fn no_registration(key: &str) -> ErrorBody {
    ErrorBody::new(
        ErrorCode::NotRegistered,
        format!(
            "no registration with key {key}; `megaplan-cloudctl ls` lists every registration with its key"
        ),
    )
    .with("key", key.to_string())
}

/// A bad value of a flag: the structured error, exit 2 (a usage error, as clap's own).
pub fn usage_error(message: impl Into<String>) -> i32 {
    local_error(ErrorCode::InvalidArgs, message);
    2
}

pub fn local_error(code: ErrorCode, message: impl Into<String>) -> i32 {
    fail(ClientError::Api(ErrorBody::new(code, message)))
}
