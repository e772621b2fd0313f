//! Which notifications a stored tick report causes: a pure map from what the watcher last saw
//! of a registration (its [`WatchState`], kept in SQLite) and the new report to the next state
//! and the events worth telling a person. One event per transition, never one per tick.

use chrono::{DateTime, Utc};
use megaplan_cloud_api::report::{EffectiveStatus, TickReport};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Statuses that wait for a person; `still_waiting` fires once per stay after the configured age.
pub const WAITING_STATUSES: [EffectiveStatus; 3] = [
    EffectiveStatus::HumanPrerequisite,
    EffectiveStatus::QualityGate,
    EffectiveStatus::AwaitingPrMerge,
];

/// Every event a notification can carry (docs/notifications.md).
pub const EVENTS: [&str; 9] = [
    "human_prerequisite",
    "quality_gate",
    "awaiting_pr_merge",
    "still_waiting",
    "complete",
    "supervisor_acted",
    "stalled",
    "ticks_failing",
    "ticks_recovered",
];

/// What the watcher remembers of one registration between ticks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchState {
    /// `effective_status` of the last successful tick.
    #[serde(default)]
    pub status: Option<String>,
    /// When the current waiting status was first seen (RFC 3339).
    #[serde(default)]
    pub waiting_since: Option<String>,
    /// `still_waiting` already sent for the current stay.
    #[serde(default)]
    pub still_waiting_sent: bool,
    #[serde(default)]
    pub stalled: bool,
    #[serde(default)]
    pub consecutive_failures: u32,
    /// `ticks_failing` sent for the current run of failures.
    #[serde(default)]
    pub failing_sent: bool,
}

/// Thresholds of the transition rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    pub still_waiting_after: chrono::Duration,
    pub failed_ticks: u32,
}

/// One notification to send (before it is addressed to sinks).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub event: &'static str,
    pub title: String,
    pub details: Value,
}

/// The next watch state and the events of one stored tick report at `now`.
pub fn transitions(
    prev: &WatchState,
    report: &TickReport,
    now: DateTime<Utc>,
    rules: Rules,
) -> (WatchState, Vec<Event>) {
    let mut next = prev.clone();
    let mut events = Vec::new();
    let success = report.success;
    let reason = report.refused_reason.clone();

    if !success {
        next.consecutive_failures = prev.consecutive_failures.saturating_add(1);
        if next.consecutive_failures >= rules.failed_ticks.max(1) && !prev.failing_sent {
            next.failing_sent = true;
            events.push(Event {
                event: "ticks_failing",
                title: format!("{} ticks in a row failed", next.consecutive_failures),
                details: json!({"consecutive_failures": next.consecutive_failures, "reason": reason}),
            });
        }
        // A failed tick observed nothing: the other states stay as they were.
        return (next, events);
    }
    if prev.failing_sent {
        events.push(Event {
            event: "ticks_recovered",
            title: format!(
                "ticks succeed again after {} failures",
                prev.consecutive_failures
            ),
            details: json!({"failed_ticks": prev.consecutive_failures}),
        });
    }
    next.consecutive_failures = 0;
    next.failing_sent = false;

    // The watch state keeps the status word as stored (SQLite), compared word for word.
    let classified = report.effective_status.classified();
    let waiting = classified.filter(|s| s.is_waiting());
    let status = report.effective_status.to_string();
    let changed = prev.status.as_deref() != Some(status.as_str());
    if changed {
        next.waiting_since = None;
        next.still_waiting_sent = false;
        if let Some(w) = waiting {
            next.waiting_since = Some(now.to_rfc3339());
            events.push(Event {
                event: w.as_str(),
                title: match w {
                    EffectiveStatus::HumanPrerequisite => {
                        "the chain waits for a human prerequisite".to_string()
                    }
                    EffectiveStatus::QualityGate => {
                        "the chain is held at a failing quality gate".to_string()
                    }
                    _ => "the chain waits for a pull request to be merged".to_string(),
                },
                details: json!({"reason": reason, "pr": report.pr}),
            });
        } else if classified == Some(EffectiveStatus::Complete) {
            events.push(Event {
                event: "complete",
                title: "the chain is complete".to_string(),
                details: json!({}),
            });
        }
    } else if waiting.is_some() && !prev.still_waiting_sent {
        let since = prev
            .waiting_since
            .as_deref()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc));
        if let Some(since) = since
            && now - since >= rules.still_waiting_after
        {
            next.still_waiting_sent = true;
            let secs = (now - since).num_seconds();
            events.push(Event {
                event: "still_waiting",
                title: format!("the chain still waits ({status}) after {}", age_text(secs)),
                details: json!({"status": status, "waiting_since": since.to_rfc3339(), "waiting_secs": secs, "reason": reason}),
            });
        }
    }
    next.status = Some(status);

    if report.acted {
        let action = report.next_action.as_str();
        events.push(Event {
            event: "supervisor_acted",
            title: format!("the supervisor acted: {action}"),
            details: json!({"action": action}),
        });
    }

    let stalled = report.is_stalled();
    if stalled && !prev.stalled {
        let age = report.stalled_for_secs().unwrap_or(0);
        events.push(Event {
            event: "stalled",
            title: format!(
                "the runner is alive but its log has not grown for {}",
                age_text(age)
            ),
            details: json!({"stalled_for_secs": age, "log": report.logs}),
        });
    }
    next.stalled = stalled;
    (next, events)
}

/// A non-negative age in seconds for people (`95` → `1m35s`), by the tree's one formatter.
pub fn age_text(secs: i64) -> String {
    megaplan_cloud_api::duration::text(u64::try_from(secs).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: Rules = Rules {
        still_waiting_after: chrono::Duration::seconds(3600),
        failed_ticks: 3,
    };

    /// A report with the fields given and the rest of a plain tick.
    fn report(fields: Value) -> TickReport {
        let mut v = json!({"success": true, "effective_status": "unknown", "acted": false,
                           "event": "supervisor_tick", "next_action": "noop"});
        for (k, x) in fields.as_object().unwrap() {
            v[k] = x.clone();
        }
        serde_json::from_value(v).unwrap()
    }

    fn ok(status: &str) -> TickReport {
        report(
            json!({"success": true, "effective_status": status, "acted": false, "next_action": "noop"}),
        )
    }

    fn fail() -> TickReport {
        report(
            json!({"success": false, "effective_status": "unknown", "refused_reason": "ssh failed"}),
        )
    }

    fn run(reports: &[TickReport], step: i64) -> Vec<&'static str> {
        let mut st = WatchState::default();
        let t0 = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let mut out = Vec::new();
        for (i, r) in reports.iter().enumerate() {
            let (next, ev) = transitions(
                &st,
                r,
                t0 + chrono::Duration::seconds(step * i as i64),
                RULES,
            );
            out.extend(ev.into_iter().map(|e| e.event));
            st = next;
        }
        out
    }

    #[test]
    fn one_event_per_transition_not_per_tick() {
        let reports = [
            ok("running"),
            ok("running"),
            ok("awaiting_pr_merge"),
            ok("awaiting_pr_merge"),
            ok("awaiting_pr_merge"),
            ok("running"),
            ok("complete"),
            ok("complete"),
        ];
        assert_eq!(run(&reports, 10), ["awaiting_pr_merge", "complete"]);
    }

    #[test]
    fn still_waiting_fires_once_after_the_age() {
        let reports: Vec<TickReport> = std::iter::repeat_n(ok("human_prerequisite"), 10).collect();
        // 1000 s apart: the 5th tick is 4000 s after the first.
        assert_eq!(run(&reports, 1000), ["human_prerequisite", "still_waiting"]);
        // Leaving and re-entering starts a new stay.
        let mut again = reports.clone();
        again.push(ok("running"));
        again.extend(std::iter::repeat_n(ok("human_prerequisite"), 6));
        assert_eq!(
            run(&again, 1000),
            [
                "human_prerequisite",
                "still_waiting",
                "human_prerequisite",
                "still_waiting"
            ]
        );
    }

    #[test]
    fn failures_notify_at_the_threshold_and_on_recovery() {
        let reports = [
            fail(),
            fail(),
            ok("running"),
            fail(),
            fail(),
            fail(),
            fail(),
            fail(),
            ok("running"),
            ok("running"),
        ];
        assert_eq!(run(&reports, 10), ["ticks_failing", "ticks_recovered"]);
    }

    #[test]
    fn a_failed_tick_does_not_reset_the_status() {
        let reports = [ok("quality_gate"), fail(), ok("quality_gate")];
        assert_eq!(run(&reports, 10), ["quality_gate"]);
    }

    #[test]
    fn every_act_and_each_stall_onset_is_told() {
        let acted = report(
            json!({"success": true, "effective_status": "stale_bookkeeping", "acted": true, "next_action": "restart"}),
        );
        let stalled = report(
            json!({"success": true, "effective_status": "running", "stalled": true, "stalled_for_secs": 1900}),
        );
        let reports = [
            acted.clone(),
            ok("running"),
            acted,
            stalled.clone(),
            stalled.clone(),
            ok("running"),
            stalled,
        ];
        assert_eq!(
            run(&reports, 10),
            ["supervisor_acted", "supervisor_acted", "stalled", "stalled"]
        );
    }

    #[test]
    fn every_event_is_listed() {
        for e in run(
            &[
                ok("human_prerequisite"),
                ok("quality_gate"),
                ok("awaiting_pr_merge"),
                ok("complete"),
            ],
            1,
        ) {
            assert!(EVENTS.contains(&e), "{e}");
        }
        assert_eq!(age_text(95), "1m35s");
        assert_eq!(age_text(7200), "2h00m");
    }
}
