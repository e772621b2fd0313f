//! The daemon's notification config file (`--notify-config`, default
//! `<state root>/notify.yaml`; absent means built-in defaults and no global sinks) and the
//! sinks given per registration. See docs/notifications.md.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

/// How a webhook body is shaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    /// The documented notification JSON (docs/notifications.md).
    #[default]
    Json,
    /// ntfy: the message as a plain-text body, `Title`/`Tags` headers.
    Ntfy,
    /// Slack incoming-webhook compatible `{"text": ...}`.
    Slack,
}

impl Preset {
    pub fn parse(s: &str) -> Result<Preset, String> {
        match s {
            "json" => Ok(Preset::Json),
            "ntfy" => Ok(Preset::Ntfy),
            "slack" => Ok(Preset::Slack),
            other => Err(format!(
                "unknown notification preset {:?}; use json, ntfy or slack",
                other.chars().take(32).collect::<String>()
            )),
        }
    }
}

/// One place a notification goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Sink {
    /// HTTP POST. Signed with HMAC-SHA256 when `secret_env` names a variable set in the
    /// daemon's environment (the value itself is never stored).
    Webhook {
        url: String,
        #[serde(default)]
        preset: Preset,
        #[serde(default)]
        secret_env: Option<String>,
    },
    /// `sh -c COMMAND` with the notification JSON on stdin; exit 0 means delivered.
    Command { command: String },
}

impl Sink {
    /// A short name for logs and the outbox (no secret in it: URLs with credentials are refused).
    pub fn label(&self) -> String {
        match self {
            Sink::Webhook { url, .. } => format!("webhook {url}"),
            Sink::Command { command } => format!("command {command}"),
        }
    }

    /// Check a sink before it is stored: http or https, and no credentials in the URL (they
    /// would be stored).
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Sink::Webhook {
                url, secret_env, ..
            } => {
                if url.len() > MAX_URL_BYTES {
                    return Err(format!(
                        "notify url of {} bytes is over the limit of {MAX_URL_BYTES} bytes",
                        url.len()
                    ));
                }
                let uri: hyper::Uri = url
                    .parse()
                    .map_err(|e| format!("notify url {url:?} is not a URL: {e}"))?;
                match uri.scheme_str() {
                    Some("http" | "https") => {}
                    _ => {
                        return Err(format!(
                            "notify url {url:?} must start with http:// or https://"
                        ));
                    }
                }
                if uri.host().is_none() {
                    return Err(format!("notify url {url:?} has no host"));
                }
                if let Some(a) = uri.authority() {
                    check_port(url, a.as_str())?;
                }
                if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
                    return Err(format!(
                        "notify url {url:?} carries credentials; they would be stored in the database: sign with secret_env instead"
                    ));
                }
                if let Some(n) = secret_env
                    && (n.is_empty() || !n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
                {
                    return Err(format!(
                        "secret_env {n:?} is not an environment variable name"
                    ));
                }
                Ok(())
            }
            Sink::Command { command } => {
                if command.trim().is_empty() {
                    return Err("notify command is empty".to_string());
                }
                if command.len() > MAX_COMMAND_BYTES {
                    return Err(format!(
                        "notify command of {} bytes is over the limit of {MAX_COMMAND_BYTES} bytes; put a longer one in a script and name the script",
                        command.len()
                    ));
                }
                Ok(())
            }
        }
    }
}

/// Most sinks of one registration, and of the config file.
pub const MAX_SINKS: usize = 16;

/// Longest webhook URL.
pub const MAX_URL_BYTES: usize = 2048;

/// Longest notify command.
pub const MAX_COMMAND_BYTES: usize = 4096;

/// The port of a URL's authority, when one is written, must be 1 to 65535 (the URL parser
/// takes any digits there).
fn check_port(url: &str, authority: &str) -> Result<(), String> {
    // After the last `:` that is not inside an IPv6 literal's brackets.
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let Some((_, port)) = host_port.rsplit_once(':').filter(|(_, p)| !p.contains(']')) else {
        return Ok(());
    };
    match port.parse::<u32>() {
        _ if port.is_empty() => Ok(()),
        Ok(1..=65535) => Ok(()),
        _ => Err(format!(
            "notify url {url:?} has port {port:?}; a port is a number from 1 to 65535"
        )),
    }
}

/// Delivery retries: `initial_delay`, doubled per attempt up to `max_delay`, at most
/// `max_attempts` attempts; each attempt bounded by `timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial_delay: Duration,
    pub max_delay: Duration,
    pub timeout: Duration,
}

impl RetryPolicy {
    /// Delay before attempt `attempts + 1` after `attempts` failed ones.
    pub fn delay_after(&self, attempts: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempts.saturating_sub(1).min(20));
        self.initial_delay
            .saturating_mul(factor)
            .min(self.max_delay)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct NotifyConfig {
    /// Sinks every registration notifies (besides its own).
    pub sinks: Vec<Sink>,
    /// Secret env var used to sign per-registration webhooks (default
    /// `MEGAPLAN_CLOUDD_NOTIFY_SECRET`; unsigned when unset in the daemon's environment).
    pub registration_secret_env: String,
    /// A live runner whose chain log has not grown for this long is `stalled`.
    pub stall_after: Duration,
    /// `still_waiting` after this long in a status that waits for a person.
    pub still_waiting_after: Duration,
    /// `ticks_failing` after this many failed ticks in a row.
    pub failed_ticks: u32,
    pub retry: RetryPolicy,
    /// Delivered/failed outbox rows kept per registration.
    pub keep_outbox: u32,
    /// Deliveries to one sink (a webhook's origin, or a command) running at once.
    pub max_in_flight_per_sink: u32,
    /// A sink's breaker opens after this many failed deliveries in a row.
    pub breaker_after: u32,
    /// How long an open breaker defers its sink's rows before one probe delivery.
    pub breaker_cooldown: Duration,
    /// `liveness_unknown` once a driver's liveness stayed `unknown` this long.
    pub unknown_after: Duration,
    /// The crash-loop quarantine for every registration whose cloud.yaml `supervise:` section
    /// does not set its own: restarts within `quarantine_window`.
    pub quarantine_after: Option<u32>,
    pub quarantine_window: Option<Duration>,
    /// `digest: 1h`: what needs nobody (complete, acted, recovered) is summed up in one
    /// message per period instead of one per event; what needs a person still goes at once.
    pub digest: Option<Duration>,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            sinks: Vec::new(),
            registration_secret_env: "MEGAPLAN_CLOUDD_NOTIFY_SECRET".to_string(),
            stall_after: Duration::from_secs(30 * 60),
            still_waiting_after: Duration::from_secs(24 * 3600),
            failed_ticks: 3,
            retry: RetryPolicy {
                max_attempts: 10,
                initial_delay: Duration::from_secs(5),
                max_delay: Duration::from_secs(30 * 60),
                timeout: Duration::from_secs(10),
            },
            keep_outbox: 200,
            max_in_flight_per_sink: 4,
            breaker_after: 5,
            breaker_cooldown: Duration::from_secs(60),
            unknown_after: Duration::from_secs(10 * 60),
            quarantine_after: None,
            quarantine_window: None,
            digest: None,
        }
    }
}

/// `500ms`, `90s`, `5m`, `1h30m`, `1d`, or plain seconds; longer than zero (the tree's one
/// parser, `megaplan_cloud_api::duration`).
pub fn parse_duration(field: &str, text: &str) -> Result<Duration, String> {
    megaplan_cloud_api::duration::parse_positive(text, true).map_err(|e| format!("{field}: {e}"))
}

const KEYS: [&str; 14] = [
    "digest",
    "sinks",
    "registration_secret_env",
    "stall_after",
    "still_waiting_after",
    "failed_ticks",
    "retry",
    "keep_outbox",
    "max_in_flight_per_sink",
    "breaker_after",
    "breaker_cooldown",
    "unknown_after",
    "quarantine_after",
    "quarantine_window",
];

impl NotifyConfig {
    /// Read the config file; a missing file is the defaults. Errors name the file and field.
    pub fn load(path: &Path) -> Result<NotifyConfig, String> {
        let shown = path.display();
        // Read as cloud.yaml is: non-blocking open, a regular file, at most 1 MiB (a FIFO or
        // /dev/zero is refused at once, never waited on or read without end).
        let bytes = match crate::cloud_yaml::read_bounded(path, crate::cloud_yaml::MAX_INPUT_BYTES)
        {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(NotifyConfig::default());
            }
            Err(e) => return Err(format!("cannot read notify config {shown}: {e}")),
        };
        let text = String::from_utf8(bytes)
            .map_err(|e| format!("notify config {shown} is not UTF-8 text: {e}"))?;
        let v = crate::yaml::parse(&text).map_err(|e| format!("notify config {shown}: {e}"))?;
        NotifyConfig::from_value(&v).map_err(|e| format!("notify config {shown}: {e}"))
    }

    pub fn from_value(v: &Value) -> Result<NotifyConfig, String> {
        let mut c = NotifyConfig::default();
        let obj = match v {
            Value::Null => return Ok(c),
            Value::Object(o) => o,
            other => {
                return Err(format!(
                    "expected a mapping at the top, found {}",
                    crate::yaml::type_name(other)
                ));
            }
        };
        for k in obj.keys() {
            if !KEYS.contains(&k.as_str()) {
                return Err(format!(
                    "unknown key {k:?}; known keys: {}",
                    KEYS.join(", ")
                ));
            }
        }
        let dur = |field: &str, v: Option<&Value>, default: Duration| -> Result<Duration, String> {
            match v {
                None => Ok(default),
                Some(Value::String(s)) => parse_duration(field, s),
                Some(Value::Number(n)) => n
                    .as_u64()
                    .filter(|n| *n > 0)
                    .map(Duration::from_secs)
                    .ok_or_else(|| format!("{field}: must be a positive number of seconds")),
                Some(other) => Err(format!(
                    "{field}: expected a duration such as 30m, found {}",
                    crate::yaml::type_name(other)
                )),
            }
        };
        c.stall_after = dur("stall_after", obj.get("stall_after"), c.stall_after)?;
        c.still_waiting_after = dur(
            "still_waiting_after",
            obj.get("still_waiting_after"),
            c.still_waiting_after,
        )?;
        c.unknown_after = dur("unknown_after", obj.get("unknown_after"), c.unknown_after)?;
        if let Some(v) = obj.get("quarantine_window") {
            c.quarantine_window = Some(dur("quarantine_window", Some(v), Duration::ZERO)?);
        }
        if let Some(n) = obj.get("quarantine_after") {
            c.quarantine_after = Some(
                n.as_u64()
                    .filter(|n| (1..=100).contains(n))
                    .ok_or("quarantine_after: expected a whole number of restarts from 1 to 100")?
                    as u32,
            );
        }
        if let Some(n) = obj.get("failed_ticks") {
            c.failed_ticks = n
                .as_u64()
                .filter(|n| (1..=10_000).contains(n))
                .ok_or("failed_ticks: expected a whole number from 1 to 10000")?
                as u32;
        }
        if let Some(n) = obj.get("keep_outbox") {
            c.keep_outbox = n
                .as_u64()
                .filter(|n| (1..=1_000_000).contains(n))
                .ok_or("keep_outbox: expected a whole number from 1 to 1000000")?
                as u32;
        }
        if let Some(n) = obj.get("max_in_flight_per_sink") {
            c.max_in_flight_per_sink = n
                .as_u64()
                .filter(|n| (1..=64).contains(n))
                .ok_or("max_in_flight_per_sink: expected a whole number from 1 to 64")?
                as u32;
        }
        if let Some(n) = obj.get("breaker_after") {
            c.breaker_after = n
                .as_u64()
                .filter(|n| (1..=1000).contains(n))
                .ok_or("breaker_after: expected a whole number from 1 to 1000")?
                as u32;
        }
        c.breaker_cooldown = dur(
            "breaker_cooldown",
            obj.get("breaker_cooldown"),
            c.breaker_cooldown,
        )?;
        c.digest = match obj.get("digest") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.trim() == "off" => None,
            Some(v @ (Value::String(_) | Value::Number(_))) => {
                let d = dur("digest", Some(v), Duration::ZERO).map_err(|e| {
                    format!("{e}; write the period between digests, e.g. digest: 1h (or off)")
                })?;
                if d < Duration::from_secs(1) {
                    return Err(format!(
                        "digest: {v} is shorter than a second; write the period between digests, e.g. digest: 1h"
                    ));
                }
                Some(d)
            }
            Some(other) => {
                return Err(format!(
                    "digest: expected a period such as 1h (or off), found {}",
                    crate::yaml::type_name(other)
                ));
            }
        };
        if let Some(n) = obj.get("registration_secret_env") {
            c.registration_secret_env = n
                .as_str()
                .ok_or("registration_secret_env: expected an environment variable name")?
                .to_string();
        }
        if let Some(r) = obj.get("retry") {
            let r = r.as_object().ok_or(
                "retry: expected a mapping with max_attempts, initial_delay, max_delay, timeout",
            )?;
            for k in r.keys() {
                if !["max_attempts", "initial_delay", "max_delay", "timeout"].contains(&k.as_str())
                {
                    return Err(format!(
                        "retry: unknown key {k:?}; known keys: max_attempts, initial_delay, max_delay, timeout"
                    ));
                }
            }
            if let Some(n) = r.get("max_attempts") {
                c.retry.max_attempts = n
                    .as_u64()
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or("retry.max_attempts: expected a whole number from 1 to 1000")?
                    as u32;
            }
            c.retry.initial_delay = dur(
                "retry.initial_delay",
                r.get("initial_delay"),
                c.retry.initial_delay,
            )?;
            c.retry.max_delay = dur("retry.max_delay", r.get("max_delay"), c.retry.max_delay)?;
            c.retry.timeout = dur("retry.timeout", r.get("timeout"), c.retry.timeout)?;
        }
        if let Some(sinks) = obj.get("sinks") {
            let list = sinks
                .as_array()
                .ok_or("sinks: expected a list of {url: ...} or {command: ...}")?;
            if list.len() > MAX_SINKS {
                return Err(format!(
                    "sinks: {} sinks, over the limit of {MAX_SINKS}",
                    list.len()
                ));
            }
            for (i, s) in list.iter().enumerate() {
                let sink = sink_from_value(s).map_err(|e| format!("sinks[{i}]: {e}"))?;
                sink.validate().map_err(|e| format!("sinks[{i}]: {e}"))?;
                c.sinks.push(sink);
            }
        }
        Ok(c)
    }
}

fn sink_from_value(v: &Value) -> Result<Sink, String> {
    let o = v
        .as_object()
        .ok_or("expected a mapping with url (and preset, secret_env) or command")?;
    for k in o.keys() {
        if !["url", "preset", "secret_env", "command"].contains(&k.as_str()) {
            return Err(format!(
                "unknown key {k:?}; known keys: url, preset, secret_env, command"
            ));
        }
    }
    let text = |k: &str| -> Result<Option<String>, String> {
        match o.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(format!(
                "{k}: expected a string, found {}",
                crate::yaml::type_name(other)
            )),
        }
    };
    match (text("url")?, text("command")?) {
        (Some(url), None) => Ok(Sink::Webhook {
            url,
            preset: text("preset")?
                .map(|p| Preset::parse(&p))
                .transpose()?
                .unwrap_or_default(),
            secret_env: text("secret_env")?,
        }),
        (None, Some(command)) => Ok(Sink::Command { command }),
        (Some(_), Some(_)) => Err("give url or command, not both".to_string()),
        (None, None) => Err("give url or command".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_and_a_full_file() {
        assert_eq!(
            NotifyConfig::from_value(&Value::Null).unwrap(),
            NotifyConfig::default()
        );
        let c = NotifyConfig::from_value(&json!({
            "stall_after": "2s", "still_waiting_after": "1h", "failed_ticks": 2,
            "retry": {"max_attempts": 4, "initial_delay": "200ms", "max_delay": "1s", "timeout": "3s"},
            "sinks": [
                {"url": "http://127.0.0.1:9/hook", "preset": "ntfy", "secret_env": "HOOK_KEY"},
                {"command": "cat >> /tmp/n.log"}
            ]
        }))
        .unwrap();
        assert_eq!(c.stall_after, Duration::from_secs(2));
        assert_eq!(c.failed_ticks, 2);
        assert_eq!(c.retry.initial_delay, Duration::from_millis(200));
        assert_eq!(c.sinks.len(), 2);
        assert_eq!(c.max_in_flight_per_sink, 4);
        assert_eq!(c.retry.delay_after(1), Duration::from_millis(200));
        assert_eq!(c.retry.delay_after(2), Duration::from_millis(400));
        assert_eq!(c.retry.delay_after(30), Duration::from_secs(1));
        let c = NotifyConfig::from_value(&json!({
            "max_in_flight_per_sink": 2, "breaker_after": 3, "breaker_cooldown": "10m"
        }))
        .unwrap();
        assert_eq!(
            (
                c.max_in_flight_per_sink,
                c.breaker_after,
                c.breaker_cooldown
            ),
            (2, 3, Duration::from_secs(600))
        );
        assert_eq!(c.digest, None);
        let c = NotifyConfig::from_value(&json!({"digest": "1h"})).unwrap();
        assert_eq!(c.digest, Some(Duration::from_secs(3600)));
        let c = NotifyConfig::from_value(&json!({"digest": "off"})).unwrap();
        assert_eq!(c.digest, None);
    }

    #[test]
    fn bad_input_names_the_field() {
        let e = |v: Value| NotifyConfig::from_value(&v).unwrap_err();
        assert!(e(json!({"stal_after": "1m"})).contains("stal_after"));
        assert!(e(json!({"stall_after": "0s"})).contains("stall_after"));
        assert!(e(json!({"retry": {"max_attempts": 0}})).contains("retry.max_attempts"));
        assert!(e(json!({"max_in_flight_per_sink": 0})).contains("max_in_flight_per_sink"));
        assert!(e(json!({"breaker_after": "x"})).contains("breaker_after"));
        assert!(e(json!({"breaker_cooldown": "soon"})).contains("breaker_cooldown"));
        for bad in [
            json!({"digest": "hourly"}),
            json!({"digest": [1]}),
            json!({"digest": "500ms"}),
            json!({"digest": 0}),
        ] {
            let m = e(bad.clone());
            assert!(m.starts_with("digest:") && m.contains("1h"), "{bad}: {m}");
        }
        assert!(e(json!({"sinks": [{"url": "ftp://x.example/h"}]})).contains("https://"));
        assert!(e(json!({"sinks": [{"url": "http://u:p@x/h"}]})).contains("credentials"));
        assert!(e(json!({"sinks": [{"url": "http://x/h", "preset": "teams"}]})).contains("teams"));
        assert!(e(json!({"sinks": [{}]})).starts_with("sinks[0]"));
        assert!(e(json!([1])).contains("mapping"));
        assert!(e(json!({"sinks": [{"url": "http://127.0.0.1:99999/h"}]})).contains("99999"));
        assert!(e(json!({"sinks": [{"url": "http://127.0.0.1:0/h"}]})).contains("1 to 65535"));
        let long = format!("http://x/{}", "a".repeat(MAX_URL_BYTES));
        assert!(e(json!({"sinks": [{"url": long}]})).contains("over the limit"));
        let many: Vec<Value> = (0..=MAX_SINKS)
            .map(|_| json!({"url": "http://x/h"}))
            .collect();
        assert!(e(json!({ "sinks": many })).contains("sinks"));
        assert!(
            e(json!({"sinks": [{"command": "x".repeat(MAX_COMMAND_BYTES + 1)}]}))
                .contains("over the limit")
        );
        for ok in [
            "http://127.0.0.1:65535/h",
            "http://127.0.0.1/h",
            "https://[::1]:8443/h",
            "https://[::1]/h",
        ] {
            NotifyConfig::from_value(&json!({"sinks": [{"url": ok}]})).unwrap();
        }
    }
}
