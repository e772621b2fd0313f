//! The `supervise:` section of cloud.yaml: how the supervisor judges this chain's driver
//! (the lease's time to live) and when a crash loop stops it (the quarantine and the restart
//! back-off). Every field has a default; each is checked here with an error naming it.

use super::error::ConfigError;
use serde::Serialize;
use serde_json::{Map, Value};
use std::path::Path;
use std::time::Duration;

/// The section's fields, for unknown-key warnings.
pub const KEYS: &[&str] = &[
    "lease_ttl",
    "pr_poll",
    "quarantine_after",
    "quarantine_window",
    "restart_backoff",
];

/// The validated `supervise:` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Supervise {
    /// How long the driver's lease holds after the runner last saw the driver: a driver gone
    /// is `dead` (restartable) only once its lease expired. Default 15 s.
    pub lease_ttl: Duration,
    /// How often the runner watch asks GitHub whether the pull request a chain waits on was
    /// merged, only while the chain state says `awaiting_pr_merge`. Default 1 min.
    pub pr_poll: Duration,
    /// Restarts within `quarantine_window` after which the next needed restart quarantines
    /// the chain instead. Unset: notify.yaml's `quarantine_after`, else 3.
    pub quarantine_after: Option<u32>,
    /// Unset: notify.yaml's `quarantine_window`, else 15 min.
    pub quarantine_window: Option<Duration>,
    /// The first restart back-off; it doubles with each restart in the window (with jitter).
    /// Default 10 s.
    pub restart_backoff: Duration,
}

impl Default for Supervise {
    fn default() -> Self {
        Supervise {
            lease_ttl: Duration::from_secs(15),
            pr_poll: Duration::from_secs(60),
            quarantine_after: None,
            quarantine_window: None,
            restart_backoff: Duration::from_secs(10),
        }
    }
}

fn invalid_field(file: &Path, field: &str, message: impl std::fmt::Display) -> ConfigError {
    ConfigError::field(file, field, message)
}

/// `500ms`, `90s`, `5m`, `2h`, or plain seconds; longer than zero.
fn duration(file: &Path, field: &str, v: &Value) -> Result<Duration, ConfigError> {
    let bad = || {
        invalid_field(
            file,
            field,
            format!("{field} must be a duration such as 3s, 90s, 15m or 1h, found {v}"),
        )
    };
    let text = match v {
        Value::String(s) => s.trim().to_string(),
        Value::Number(n) if n.as_u64().is_some() => n.to_string(),
        _ => return Err(bad()),
    };
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(bad()),
    };
    if d.is_zero() {
        return Err(bad());
    }
    Ok(d)
}

/// Parse the section (absent: every default).
pub fn parse(file: &Path, section: Option<&Map<String, Value>>) -> Result<Supervise, ConfigError> {
    let mut out = Supervise::default();
    let Some(sec) = section else {
        return Ok(out);
    };
    if let Some(v) = sec.get("lease_ttl").filter(|v| !v.is_null()) {
        out.lease_ttl = duration(file, "supervise.lease_ttl", v)?;
        if out.lease_ttl < Duration::from_secs(1) || out.lease_ttl > Duration::from_secs(3600) {
            return Err(invalid_field(
                file,
                "supervise.lease_ttl",
                "supervise.lease_ttl must be between 1s and 1h (the runner refreshes the lease every 2 s)",
            ));
        }
    }
    if let Some(v) = sec.get("pr_poll").filter(|v| !v.is_null()) {
        out.pr_poll = duration(file, "supervise.pr_poll", v)?;
        if out.pr_poll < Duration::from_secs(10) || out.pr_poll > Duration::from_secs(86_400) {
            return Err(invalid_field(
                file,
                "supervise.pr_poll",
                "supervise.pr_poll must be between 10s and 1d (each poll is one `gh pr view` on the runner), e.g. pr_poll: 2m",
            ));
        }
    }
    if let Some(v) = sec.get("quarantine_after").filter(|v| !v.is_null()) {
        out.quarantine_after = v
            .as_u64()
            .filter(|n| (1..=100).contains(n))
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| {
                invalid_field(
                    file,
                    "supervise.quarantine_after",
                    format!(
                        "supervise.quarantine_after must be a whole number of restarts from 1 to 100, found {v}"
                    ),
                )
            })?;
    }
    if let Some(v) = sec.get("quarantine_window").filter(|v| !v.is_null()) {
        out.quarantine_window = Some(duration(file, "supervise.quarantine_window", v)?);
    }
    if let Some(v) = sec.get("restart_backoff").filter(|v| !v.is_null()) {
        out.restart_backoff = duration(file, "supervise.restart_backoff", v)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_and_fields_and_a_clear_error() {
        let f = Path::new("/p/cloud.yaml");
        assert_eq!(parse(f, None).unwrap(), Supervise::default());
        let m = json!({"lease_ttl": "3s", "pr_poll": "2m", "quarantine_after": 2, "quarantine_window": "5m", "restart_backoff": 1});
        let s = parse(f, m.as_object()).unwrap();
        assert_eq!(s.lease_ttl, Duration::from_secs(3));
        assert_eq!(s.pr_poll, Duration::from_secs(120));
        let e = parse(
            Path::new("/p/cloud.yaml"),
            json!({"pr_poll": "1s"}).as_object(),
        )
        .unwrap_err();
        let e = megaplan_cloud_api::ErrorBody::from(e);
        assert_eq!(e.extra["field"], "supervise.pr_poll", "{}", e.message);
        assert_eq!(s.quarantine_after, Some(2));
        assert_eq!(s.quarantine_window, Some(Duration::from_secs(300)));
        assert_eq!(s.restart_backoff, Duration::from_secs(1));
        let bad = json!({"quarantine_after": 0});
        let e = parse(f, bad.as_object()).unwrap_err();
        let e = megaplan_cloud_api::ErrorBody::from(e);
        assert!(
            e.message.contains("supervise.quarantine_after"),
            "{}",
            e.message
        );
        let bad = json!({"lease_ttl": "soon"});
        let e = parse(f, bad.as_object()).unwrap_err();
        let e = megaplan_cloud_api::ErrorBody::from(e);
        assert!(e.message.contains("supervise.lease_ttl"), "{}", e.message);
    }
}
