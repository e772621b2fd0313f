//! Types shared by `megaplan-cloudd` and `megaplan-cloudctl`.
//!
//! Everything both ends must agree on lives here and nowhere else: the wire types, the route
//! paths, the error codes, the API version, and the one resolver for the socket path and the
//! state root (two resolvers drifting apart is how clients end up talking to nobody).
//! Deliberately free of tokio, sqlx and the scheduler so the client stays thin.

pub mod duration;
pub mod error;
pub mod fleet;
pub mod legacy;
pub mod liveness;
pub mod marker;
pub mod notification;
pub mod output;
pub mod paths;
pub mod report;
pub mod schedule;
pub mod sorted;
pub mod status;
pub mod wire;

pub use error::{ErrorBody, ErrorCode};

/// Crate version of the binaries built from this workspace.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Bumped whenever a wire type changes incompatibly. The client warns (on stderr) on a mismatch.
pub const API_VERSION: u32 = 1;

/// The commented cloud.yaml written by `megaplan-cloudctl init`.
pub const CLOUD_YAML_SCAFFOLD: &str = include_str!("scaffold.cloud.yaml");

/// The `kubernetes:` section `init --provider kubernetes` appends to the scaffold.
const KUBERNETES_SCAFFOLD_SECTION: &str = include_str!("scaffold.kubernetes.yaml");

/// The providers `init --provider` takes.
pub const SCAFFOLD_PROVIDERS: [&str; 4] = ["railway", "local", "ssh", "kubernetes"];

/// The scaffold for `init --provider <provider>`: the commented scaffold with that provider
/// chosen (kubernetes also gets its commented `kubernetes:` section). `None`: not a provider.
pub fn cloud_yaml_scaffold(provider: &str) -> Option<String> {
    if !SCAFFOLD_PROVIDERS.contains(&provider) {
        return None;
    }
    let mut text = CLOUD_YAML_SCAFFOLD.replacen(
        "\nprovider: railway\n",
        &format!("\nprovider: {provider}\n"),
        1,
    );
    if provider == "kubernetes" {
        text.push_str(KUBERNETES_SCAFFOLD_SECTION);
    }
    Some(text)
}

/// How a JSON (or parsed YAML) value is named in error messages ("found a list"); the daemon's
/// config readers and the legacy marker reader say it the same way.
pub fn type_name(v: &serde_json::Value) -> &'static str {
    use serde_json::Value;
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// Route paths, versioned under `/v1`.
pub mod routes {
    pub const HEALTH: &str = "/v1/health";
    pub const CLOUDS: &str = "/v1/clouds";
    /// `DELETE /v1/clouds/{key}` unregisters; `POST /v1/clouds/{key}/tick` ticks now.
    pub const CLOUD: &str = "/v1/clouds/{key}";
    pub const CLOUD_TICK: &str = "/v1/clouds/{key}/tick";
    pub const TICKS: &str = "/v1/ticks";
    pub const TICKS_WATCH: &str = "/v1/ticks/watch";
    pub const MARKERS: &str = "/v1/markers";
    pub const RUN: &str = "/v1/run";
    /// `GET /v1/secret-names?cloud_yaml=P`: the secret names of a cloud.yaml, so the client
    /// knows which of its env vars to hand over (it never parses YAML itself).
    pub const SECRET_NAMES: &str = "/v1/secret-names";

    /// `POST` pauses (body `PauseRequest`), `DELETE` unpauses (docs/notifications.md).
    pub const CLOUD_PAUSE: &str = "/v1/clouds/{key}/pause";
    /// `DELETE` clears the crash-loop quarantine (`api::liveness::UnquarantineResult`).
    pub const CLOUD_QUARANTINE: &str = "/v1/clouds/{key}/quarantine";
    /// `GET`: the last tick of a registration explained (facts, rule, action, refusal).
    pub const CLOUD_EXPLAIN: &str = "/v1/clouds/{key}/explain";
    /// `GET /v1/notifications?cloud_yaml=P&limit=N`: the notification outbox, newest first.
    pub const NOTIFICATIONS: &str = "/v1/notifications";
    /// `POST` (body `notification::TestRequest`): send a test to every sink, one result each.
    pub const NOTIFICATIONS_TEST: &str = "/v1/notifications/test";
    /// `GET`: every registration's state, what needs a person first (`api::fleet::Fleet`).
    pub const FLEET: &str = "/v1/fleet";
    /// `POST` (body `DashboardRequest`): serve the dashboard on 127.0.0.1 for as long as this
    /// NDJSON stream stays open; its first stdout frame is the URL with the access token.
    pub const DASHBOARD: &str = "/v1/dashboard";

    pub fn cloud_pause(key: &str) -> String {
        format!("/v1/clouds/{key}/pause")
    }
    pub fn cloud_quarantine(key: &str) -> String {
        format!("/v1/clouds/{key}/quarantine")
    }
    pub fn cloud_explain(key: &str) -> String {
        format!("/v1/clouds/{key}/explain")
    }
    pub fn cloud(key: &str) -> String {
        format!("/v1/clouds/{key}")
    }
    pub fn cloud_tick(key: &str) -> String {
        format!("/v1/clouds/{key}/tick")
    }
}
