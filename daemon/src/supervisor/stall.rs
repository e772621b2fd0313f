//! Stall detection: a runner that is alive but whose chain log has not grown (its mtime has
//! not moved) for `stall_after`. Pure; fed by the observation's `runner` and `logs` objects.
//! A stalled chain is only reported and notified, never killed or restarted.

use chrono::{DateTime, Utc};
use megaplan_cloud_api::report::{Liveness, TickReport};
use serde_json::{Value, json};
use std::time::Duration;

/// Seconds since the chain log last grew, when the runner is alive and that is at least
/// `stall_after`. The log's mtime is the runner's clock; the age is taken on the daemon's, so a
/// clock skew of seconds is noise against a threshold of minutes.
pub fn stalled_for(
    runner: &Value,
    logs: &Value,
    now: DateTime<Utc>,
    stall_after: Duration,
) -> Option<i64> {
    let alive = runner.get("status").and_then(Value::as_str) == Some("alive");
    let exists = logs.get("exists").and_then(Value::as_bool) == Some(true);
    stalled_age(
        alive,
        exists,
        logs.get("mtime").and_then(Value::as_str),
        now,
        stall_after,
    )
}

/// The rule itself: a live runner, an existing log, and its mtime `stall_after` old or more.
fn stalled_age(
    alive: bool,
    log_exists: bool,
    mtime: Option<&str>,
    now: DateTime<Utc>,
    stall_after: Duration,
) -> Option<i64> {
    if !alive || !log_exists {
        return None;
    }
    let mtime = DateTime::parse_from_rfc3339(mtime?)
        .ok()?
        .with_timezone(&Utc);
    let age = (now - mtime).num_seconds();
    let limit = i64::try_from(stall_after.as_secs()).unwrap_or(i64::MAX);
    (age >= limit).then_some(age)
}

/// Set `stalled`, `stalled_for_secs` and `stall_after_secs` of a tick report.
pub fn annotate_report(report: &mut TickReport, now: DateTime<Utc>, stall_after: Duration) {
    let age = stalled_age(
        report.runner.status == Some(Liveness::Alive),
        report.logs.exists == Some(true),
        report.logs.mtime(),
        now,
        stall_after,
    );
    report.stalled = Some(age.is_some());
    report.stalled_for_secs = Some(age);
    report.stall_after_secs = Some(stall_after.as_secs());
}

/// Add `stalled`, `stalled_for_secs` and `stall_after_secs` to a `status --chain` payload
/// (its `runner` and `logs` objects).
pub fn annotate(payload: &mut Value, now: DateTime<Utc>, stall_after: Duration) {
    let empty = json!({});
    let age = stalled_for(
        payload.get("runner").unwrap_or(&empty),
        payload.get("logs").unwrap_or(&empty),
        now,
        stall_after,
    );
    if let Some(o) = payload.as_object_mut() {
        o.insert("stalled".into(), age.is_some().into());
        o.insert("stalled_for_secs".into(), json!(age));
        o.insert("stall_after_secs".into(), stall_after.as_secs().into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(t).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn only_a_live_runner_with_an_old_log_is_stalled() {
        let logs = json!({"exists": true, "mtime": "2026-01-01T10:00:00Z", "size": 10});
        let alive = json!({"status": "alive"});
        let thirty = Duration::from_secs(1800);
        assert_eq!(
            stalled_for(&alive, &logs, at("2026-01-01T10:31:00Z"), thirty),
            Some(1860)
        );
        assert_eq!(
            stalled_for(&alive, &logs, at("2026-01-01T10:29:00Z"), thirty),
            None
        );
        for runner in [
            json!({"status": "dead"}),
            json!({"status": "unknown"}),
            json!({}),
        ] {
            assert_eq!(
                stalled_for(&runner, &logs, at("2026-01-02T00:00:00Z"), thirty),
                None
            );
        }
        let missing = json!({"exists": false, "mtime": null});
        assert_eq!(
            stalled_for(&alive, &missing, at("2026-01-02T00:00:00Z"), thirty),
            None
        );
        let mut p = json!({"runner": alive, "logs": logs});
        annotate(&mut p, at("2026-01-01T11:00:00Z"), thirty);
        assert_eq!(p["stalled"], true);
        assert_eq!(p["stalled_for_secs"], 3600);
        assert_eq!(p["stall_after_secs"], 1800);
    }
}
