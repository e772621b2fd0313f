//! Stall detection: a runner that is alive but whose chain log has not grown (its mtime has
//! not moved) for `stall_after`. Pure; fed by the observation's runner probe and log stat.
//! A stalled chain is only reported and notified, never killed or restarted.

use chrono::{DateTime, Utc};
use megaplan_cloud_api::report::{Liveness, TickReport};
use megaplan_cloud_api::status::ChainStatus;
use std::time::Duration;

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

/// Set `stalled`, `stalled_for_secs` and `stall_after_secs` of a `status --chain` payload.
pub fn annotate(payload: &mut ChainStatus, now: DateTime<Utc>, stall_after: Duration) {
    let age = stalled_age(
        payload.runner.status == Some(Liveness::Alive),
        payload.logs.exists == Some(true),
        payload.logs.mtime(),
        now,
        stall_after,
    );
    payload.stalled = age.is_some();
    payload.stalled_for_secs = age;
    payload.stall_after_secs = stall_after.as_secs();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(t).unwrap().with_timezone(&Utc)
    }

    fn payload(runner: &str, exists: bool, mtime: Option<&str>) -> ChainStatus {
        serde_json::from_value(serde_json::json!({
            "effective_status": "running",
            "runner": {"status": runner},
            "logs": {"exists": exists, "mtime": mtime, "size": 10},
        }))
        .unwrap()
    }

    #[test]
    fn only_a_live_runner_with_an_old_log_is_stalled() {
        let thirty = Duration::from_secs(1800);
        let stalled = |mut p: ChainStatus, now: &str| {
            annotate(&mut p, at(now), thirty);
            assert_eq!(p.stall_after_secs, 1800);
            assert_eq!(p.stalled, p.stalled_for_secs.is_some());
            p.stalled_for_secs
        };
        let old = Some("2026-01-01T10:00:00Z");
        assert_eq!(
            stalled(payload("alive", true, old), "2026-01-01T10:31:00Z"),
            Some(1860)
        );
        assert_eq!(
            stalled(payload("alive", true, old), "2026-01-01T10:29:00Z"),
            None
        );
        for runner in ["dead", "unknown"] {
            assert_eq!(
                stalled(payload(runner, true, old), "2026-01-02T00:00:00Z"),
                None
            );
        }
        assert_eq!(
            stalled(payload("alive", false, None), "2026-01-02T00:00:00Z"),
            None
        );
    }
}
