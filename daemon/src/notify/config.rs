//! The daemon's notification config file (`--notify-config`, default
//! `<state root>/notify.yaml`; absent means built-in defaults and no global sinks) and the
//! sinks given per registration. See docs/notifications.md.

use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
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
    /// The word notify.yaml and the API use (its serde name).
    pub fn as_str(self) -> &'static str {
        match self {
            Preset::Json => "json",
            Preset::Ntfy => "ntfy",
            Preset::Slack => "slack",
        }
    }

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
        NotifyConfig::parse(&text).map_err(|e| format!("notify config {shown}: {e}"))
    }

    /// The config of a notify.yaml text (empty: the defaults). An error names the field
    /// (`retry.max_attempts`, `sinks[2].url`) and what to write instead.
    pub fn parse(text: &str) -> Result<NotifyConfig, String> {
        let doc = crate::yaml::parse(text).map_err(|e| e.to_string())?;
        if doc.is_null() {
            return Ok(NotifyConfig::default());
        }
        let file: Mapping<NotifyFile> = serde_path_to_error::deserialize(doc).map_err(|e| {
            let path = e.path().to_string();
            match path.as_str() {
                "." => format!("at the top: {}", e.into_inner()),
                _ => format!("{path}: {}", e.into_inner()),
            }
        })?;
        file.0.into_config()
    }
}

/// notify.yaml as written: every key optional, an unknown one refused. A key given with the
/// wrong kind of value is refused by its field's type, naming what was found.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NotifyFile {
    #[serde(default)]
    digest: Option<DigestPeriod>,
    #[serde(default, deserialize_with = "present")]
    sinks: Option<Vec<Mapping<SinkFile>>>,
    #[serde(default, deserialize_with = "present")]
    registration_secret_env: Option<Text>,
    #[serde(default, deserialize_with = "present")]
    stall_after: Option<Period>,
    #[serde(default, deserialize_with = "present")]
    still_waiting_after: Option<Period>,
    #[serde(default, deserialize_with = "present")]
    failed_ticks: Option<Whole>,
    #[serde(default, deserialize_with = "present")]
    retry: Option<Mapping<RetryFile>>,
    #[serde(default, deserialize_with = "present")]
    keep_outbox: Option<Whole>,
    #[serde(default, deserialize_with = "present")]
    max_in_flight_per_sink: Option<Whole>,
    #[serde(default, deserialize_with = "present")]
    breaker_after: Option<Whole>,
    #[serde(default, deserialize_with = "present")]
    breaker_cooldown: Option<Period>,
    #[serde(default, deserialize_with = "present")]
    unknown_after: Option<Period>,
    #[serde(default, deserialize_with = "present")]
    quarantine_after: Option<Whole>,
    #[serde(default, deserialize_with = "present")]
    quarantine_window: Option<Period>,
}

/// `retry:` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryFile {
    #[serde(default, deserialize_with = "present")]
    max_attempts: Option<Whole>,
    #[serde(default, deserialize_with = "present")]
    initial_delay: Option<Period>,
    #[serde(default, deserialize_with = "present")]
    max_delay: Option<Period>,
    #[serde(default, deserialize_with = "present")]
    timeout: Option<Period>,
}

/// One entry of `sinks:` as written (`null` counts as not given).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SinkFile {
    #[serde(default)]
    url: Option<Text>,
    #[serde(default)]
    preset: Option<Text>,
    #[serde(default)]
    secret_env: Option<Text>,
    #[serde(default)]
    command: Option<Text>,
}

/// A key that is present is read by its type, `null` included (which the type refuses):
/// only a missing key is "not given".
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

impl NotifyFile {
    fn into_config(self) -> Result<NotifyConfig, String> {
        let mut c = NotifyConfig::default();
        let period = |p: Option<Period>, default: Duration| p.map_or(default, |p| p.0);
        c.stall_after = period(self.stall_after, c.stall_after);
        c.still_waiting_after = period(self.still_waiting_after, c.still_waiting_after);
        c.unknown_after = period(self.unknown_after, c.unknown_after);
        c.breaker_cooldown = period(self.breaker_cooldown, c.breaker_cooldown);
        c.quarantine_window = self.quarantine_window.map(|p| p.0);
        if let Some(n) = self.quarantine_after {
            c.quarantine_after = Some(n.within(
                1..=100,
                "quarantine_after: expected a whole number of restarts from 1 to 100",
            )?);
        }
        if let Some(n) = self.failed_ticks {
            c.failed_ticks = n.within(
                1..=10_000,
                "failed_ticks: expected a whole number from 1 to 10000",
            )?;
        }
        if let Some(n) = self.keep_outbox {
            c.keep_outbox = n.within(
                1..=1_000_000,
                "keep_outbox: expected a whole number from 1 to 1000000",
            )?;
        }
        if let Some(n) = self.max_in_flight_per_sink {
            c.max_in_flight_per_sink = n.within(
                1..=64,
                "max_in_flight_per_sink: expected a whole number from 1 to 64",
            )?;
        }
        if let Some(n) = self.breaker_after {
            c.breaker_after = n.within(
                1..=1000,
                "breaker_after: expected a whole number from 1 to 1000",
            )?;
        }
        c.digest = match self.digest {
            None | Some(DigestPeriod::Off) => None,
            Some(DigestPeriod::Every(d)) => Some(d),
        };
        if let Some(Text(name)) = self.registration_secret_env {
            c.registration_secret_env = name;
        }
        if let Some(Mapping(r)) = self.retry {
            if let Some(n) = r.max_attempts {
                c.retry.max_attempts = n.within(
                    1..=1000,
                    "retry.max_attempts: expected a whole number from 1 to 1000",
                )?;
            }
            c.retry.initial_delay = period(r.initial_delay, c.retry.initial_delay);
            c.retry.max_delay = period(r.max_delay, c.retry.max_delay);
            c.retry.timeout = period(r.timeout, c.retry.timeout);
        }
        if let Some(list) = self.sinks {
            if list.len() > MAX_SINKS {
                return Err(format!(
                    "sinks: {} sinks, over the limit of {MAX_SINKS}",
                    list.len()
                ));
            }
            for (i, Mapping(s)) in list.into_iter().enumerate() {
                let sink = s.into_sink().map_err(|e| format!("sinks[{i}]: {e}"))?;
                sink.validate().map_err(|e| format!("sinks[{i}]: {e}"))?;
                c.sinks.push(sink);
            }
        }
        Ok(c)
    }
}

impl SinkFile {
    fn into_sink(self) -> Result<Sink, String> {
        let text = |t: Option<Text>| t.map(|t| t.0);
        match (text(self.url), text(self.command)) {
            (Some(url), None) => Ok(Sink::Webhook {
                url,
                preset: text(self.preset)
                    .map(|p| Preset::parse(&p))
                    .transpose()?
                    .unwrap_or_default(),
                secret_env: text(self.secret_env),
            }),
            (None, Some(command)) => Ok(Sink::Command { command }),
            (Some(_), Some(_)) => Err("give url or command, not both".to_string()),
            (None, None) => Err("give url or command".to_string()),
        }
    }
}

/// One value of notify.yaml as written, before its field reads it: what a wrong one is named
/// by ("found a list"). Every value is one of these (the last takes what is left: a mapping).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
enum Written {
    Null,
    Bool(bool),
    /// A whole number from 0 up.
    Whole(u64),
    /// Any other number (negative, fractional).
    Number(f64),
    Text(String),
    List(Vec<IgnoredAny>),
    Mapping(IgnoredAny),
}

impl Written {
    fn kind(&self) -> &'static str {
        match self {
            Written::Null => "null",
            Written::Bool(_) => "a boolean",
            Written::Whole(_) | Written::Number(_) => "a number",
            Written::Text(_) => "a string",
            Written::List(_) => "a list",
            Written::Mapping(_) => "a mapping",
        }
    }
}

/// A duration field: `30m`, `1h30m`, or a positive number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(try_from = "Written")]
struct Period(Duration);

impl TryFrom<Written> for Period {
    type Error = String;
    fn try_from(w: Written) -> Result<Period, String> {
        match w {
            Written::Text(s) => megaplan_cloud_api::duration::parse_positive(&s, true)
                .map(Period)
                .map_err(|e| e.to_string()),
            Written::Whole(n) if n > 0 => Ok(Period(Duration::from_secs(n))),
            Written::Whole(_) | Written::Number(_) => {
                Err("must be a positive number of seconds".to_string())
            }
            other => Err(format!(
                "expected a duration such as 30m, found {}",
                other.kind()
            )),
        }
    }
}

/// `digest:` — a period of at least a second, or `off` (also `null`).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(try_from = "Written")]
enum DigestPeriod {
    Off,
    Every(Duration),
}

impl TryFrom<Written> for DigestPeriod {
    type Error = String;
    fn try_from(w: Written) -> Result<DigestPeriod, String> {
        const HOW: &str = "write the period between digests, e.g. digest: 1h";
        match w {
            Written::Null => Ok(DigestPeriod::Off),
            Written::Text(s) if s.trim() == "off" => Ok(DigestPeriod::Off),
            w @ (Written::Text(_) | Written::Whole(_) | Written::Number(_)) => {
                let shown = match &w {
                    Written::Text(s) => format!("{s:?}"),
                    Written::Whole(n) => n.to_string(),
                    Written::Number(n) => n.to_string(),
                    _ => String::new(),
                };
                let Period(d) = Period::try_from(w).map_err(|e| format!("{e}; {HOW} (or off)"))?;
                if d < Duration::from_secs(1) {
                    return Err(format!("{shown} is shorter than a second; {HOW}"));
                }
                Ok(DigestPeriod::Every(d))
            }
            other => Err(format!(
                "expected a period such as 1h (or off), found {}",
                other.kind()
            )),
        }
    }
}

/// A count field: a whole number, checked against its range by the field (whose message says
/// the range); anything else is kept as "not a whole number" for that message.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(from = "Written")]
struct Whole(Option<u64>);

impl From<Written> for Whole {
    fn from(w: Written) -> Whole {
        match w {
            Written::Whole(n) => Whole(Some(n)),
            _ => Whole(None),
        }
    }
}

impl Whole {
    fn within(self, range: std::ops::RangeInclusive<u32>, error: &str) -> Result<u32, String> {
        self.0
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| range.contains(n))
            .ok_or_else(|| error.to_string())
    }
}

/// A text field.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "Written")]
struct Text(String);

impl TryFrom<Written> for Text {
    type Error = String;
    fn try_from(w: Written) -> Result<Text, String> {
        match w {
            Written::Text(s) => Ok(Text(s)),
            other => Err(format!("expected a string, found {}", other.kind())),
        }
    }
}

/// A mapping, and only a mapping: a derived struct alone would also read a list (its fields by
/// position).
#[derive(Debug)]
struct Mapping<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Mapping<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct OnlyMap<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for OnlyMap<T> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(OnlyMap(std::marker::PhantomData))
            .map(Mapping)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    /// The config of a file holding `v` (JSON is YAML).
    fn from_value(v: &Value) -> Result<NotifyConfig, String> {
        NotifyConfig::parse(&v.to_string())
    }

    #[test]
    fn defaults_and_a_full_file() {
        assert_eq!(from_value(&Value::Null).unwrap(), NotifyConfig::default());
        assert_eq!(
            NotifyConfig::parse("# nothing yet\n").unwrap(),
            NotifyConfig::default()
        );
        let c = from_value(&json!({
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
        let c = from_value(&json!({
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
        let c = from_value(&json!({"digest": "1h"})).unwrap();
        assert_eq!(c.digest, Some(Duration::from_secs(3600)));
        let c = from_value(&json!({"digest": "off"})).unwrap();
        assert_eq!(c.digest, None);
    }

    #[test]
    fn bad_input_names_the_field() {
        let e = |v: Value| from_value(&v).unwrap_err();
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
            from_value(&json!({"sinks": [{"url": ok}]})).unwrap();
        }
    }

    /// Every malformed file gets one message naming the field (with its path) and what to
    /// write; YAML as an operator writes it.
    #[test]
    fn malformed_yaml_names_the_field_and_the_fix() {
        let cases: &[(&str, &str)] = &[
            (
                "stal_after: 1m\n",
                "unknown field `stal_after`, expected one of",
            ),
            (
                "- 1\n",
                "at the top: invalid type: sequence, expected a mapping",
            ),
            (
                "stall_after: [1]\n",
                "stall_after: expected a duration such as 30m, found a list",
            ),
            (
                "stall_after:\n",
                "stall_after: expected a duration such as 30m, found null",
            ),
            (
                "stall_after: -5\n",
                "stall_after: must be a positive number of seconds",
            ),
            ("stall_after: soon\n", "stall_after: "),
            (
                "failed_ticks: x\n",
                "failed_ticks: expected a whole number from 1 to 10000",
            ),
            (
                "failed_ticks: 2.5\n",
                "failed_ticks: expected a whole number from 1 to 10000",
            ),
            (
                "failed_ticks: 99999999999\n",
                "failed_ticks: expected a whole number from 1 to 10000",
            ),
            (
                "quarantine_after: 0\n",
                "quarantine_after: expected a whole number of restarts from 1 to 100",
            ),
            ("retry: 3\n", "retry: invalid type"),
            ("retry: [1, 2]\n", "expected a mapping"),
            (
                "retry:\n  tries: 3\n",
                "retry.tries: unknown field `tries`, expected one of `max_attempts`",
            ),
            (
                "retry:\n  timeout: {a: 1}\n",
                "retry.timeout: expected a duration such as 30m, found a mapping",
            ),
            (
                "registration_secret_env: 7\n",
                "registration_secret_env: expected a string, found a number",
            ),
            (
                "digest: true\n",
                "digest: expected a period such as 1h (or off), found a boolean",
            ),
            (
                "digest: 500ms\n",
                "digest: \"500ms\" is shorter than a second; write the period between digests, e.g. digest: 1h",
            ),
            (
                "sinks: {url: x}\n",
                "sinks: invalid type: map, expected a sequence",
            ),
            ("sinks:\n  - 1\n", "sinks[0]: invalid type"),
            ("sinks:\n  - [http://x/h]\n", "sinks[0]: invalid type"),
            (
                "sinks:\n  - url: 5\n",
                "sinks[0].url: expected a string, found a number",
            ),
            (
                "sinks:\n  - url: http://x/h\n    hook: 1\n",
                "sinks[0].hook: unknown field `hook`",
            ),
            (
                "sinks:\n  - url: http://x/h\n    command: cat\n",
                "sinks[0]: give url or command, not both",
            ),
            (
                "sinks:\n  - preset: ntfy\n",
                "sinks[0]: give url or command",
            ),
            ("stall_after: [\n", ""),
        ];
        for (text, want) in cases {
            let e = NotifyConfig::parse(text).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
        }
        // `null` sink fields count as not given, as before.
        let c = NotifyConfig::parse("sinks:\n  - url: http://x/h\n    preset: ~\n").unwrap();
        assert_eq!(
            c.sinks,
            vec![Sink::Webhook {
                url: "http://x/h".into(),
                preset: Preset::Json,
                secret_env: None
            }]
        );
        let c =
            NotifyConfig::parse("digest: ~\nquarantine_window: 90\nquarantine_after: 4\n").unwrap();
        assert_eq!(
            (c.digest, c.quarantine_window, c.quarantine_after),
            (None, Some(Duration::from_secs(90)), Some(4))
        );
    }

    #[test]
    fn preset_words_are_their_serde_names() {
        for p in [Preset::Json, Preset::Ntfy, Preset::Slack] {
            assert_eq!(serde_json::to_value(p).unwrap(), p.as_str());
            assert_eq!(Preset::parse(p.as_str()), Ok(p));
        }
    }
}
