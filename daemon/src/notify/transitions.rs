//! Which notifications a stored tick report causes: a pure map from what the watcher last saw
//! of a registration (its [`WatchState`], kept in SQLite) and the new report to the next state
//! and the events worth telling a person. One event per transition, never one per tick.

use crate::runner::fence::PreflightCheck;
use chrono::{DateTime, Utc};
use megaplan_cloud_api::liveness::{Liveness, Quarantine};
use megaplan_cloud_api::notification::NotificationEvent;
use megaplan_cloud_api::report::{EffectiveStatus, LogsInfo, PrInfo, TickReport};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Statuses that wait for a person; `still_waiting` fires once per stay after the configured age.
pub const WAITING_STATUSES: [EffectiveStatus; 3] = [
    EffectiveStatus::HumanPrerequisite,
    EffectiveStatus::QualityGate,
    EffectiveStatus::AwaitingPrMerge,
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
    /// The preflight blocker already told (its failed checks), until a launch goes through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preflight_blocker: Option<String>,
    /// `driver_gone` sent for the current absence of the driver (its lease still held).
    #[serde(default)]
    pub driver_gone_sent: bool,
    /// `quarantined` sent for the current quarantine.
    #[serde(default)]
    pub quarantined_sent: bool,
    /// Since when the driver's liveness has been `unknown` (not waiting for a lease).
    #[serde(default)]
    pub unknown_since: Option<String>,
    /// `liveness_unknown` sent for the current stay.
    #[serde(default)]
    pub unknown_sent: bool,
    /// What the current waiting or complete status waits on (`pr-7`, the milestone): the
    /// same status with another blocker is a new occurrence. `None` in states stored before.
    #[serde(default)]
    pub blocker: Option<String>,
    /// The idempotency key of the notification of the current status, if one was sent
    /// (`still_waiting` derives its own from it).
    #[serde(default)]
    pub state_key: Option<String>,
}

/// Thresholds of the transition rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    pub still_waiting_after: chrono::Duration,
    pub failed_ticks: u32,
    /// `liveness_unknown` once the driver's liveness stayed `unknown` this long.
    pub unknown_after: chrono::Duration,
}

/// One notification to send (before it is addressed to sinks).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub event: NotificationEvent,
    pub title: String,
    pub details: Details,
    /// Stable per occurrence (see [`idempotency_key`]).
    pub idempotency_key: String,
}

/// The facts of one event: the notification's `details` (docs/notifications.md lists them per
/// event). Serialized as the bare object of the variant's fields.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Details {
    TicksFailing {
        consecutive_failures: u32,
        reason: Option<String>,
    },
    TicksRecovered {
        failed_ticks: u32,
    },
    /// `human_prerequisite`, `quality_gate`, `awaiting_pr_merge`.
    Waiting {
        reason: Option<String>,
        pr: PrInfo,
    },
    StillWaiting {
        status: String,
        waiting_since: String,
        waiting_secs: i64,
        reason: Option<String>,
    },
    SupervisorActed {
        action: String,
    },
    PreflightFailed {
        reason: Option<String>,
        checks: Vec<PreflightCheck>,
    },
    Stalled {
        stalled_for_secs: i64,
        log: LogsInfo,
    },
    DriverGone {
        liveness: Liveness,
    },
    Quarantined {
        quarantine: Quarantine,
        fix: String,
    },
    LivenessUnknown {
        liveness: Liveness,
        unknown_since: String,
    },
    /// `complete`, a test, a digest: `{}`.
    Empty {},
}

impl Details {
    /// The tick's refusal, for the events that carry it.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Details::TicksFailing { reason, .. }
            | Details::Waiting { reason, .. }
            | Details::StillWaiting { reason, .. }
            | Details::PreflightFailed { reason, .. } => reason.as_deref(),
            _ => None,
        }
    }
}

/// The runner's preflight verdict as the tick report keeps it (`extra.preflight`, written by
/// the supervisor from the gate's verdict).
#[derive(Debug, Deserialize)]
struct PreflightInReport {
    passed: bool,
    #[serde(default)]
    checks: Vec<PreflightCheck>,
}

/// Which stored tick of which registration the report is: part of every idempotency key, so
/// an occurrence's key is fixed when the tick that caused it is watched (once: the watch
/// cursor moves past it in the same transaction) and never reused by a later occurrence.
#[derive(Debug, Clone, Copy)]
pub struct Occurrence<'a> {
    pub registration: &'a str,
    pub tick_id: i64,
}

/// The idempotency key of one occurrence: 32 hex digits of SHA-256 over the registration, the
/// chain (its spec on the runner), the state (event), the blocker identity and the tick that
/// began the occurrence.
pub fn idempotency_key(
    at: Occurrence<'_>,
    chain: &str,
    event: NotificationEvent,
    blocker: &str,
) -> String {
    let mut h = Sha256::new();
    for part in [
        "megaplan-cloudd/notification/v1",
        at.registration,
        chain,
        event.as_str(),
        blocker,
        &at.tick_id.to_string(),
    ] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    let hex = hex::encode(h.finalize());
    hex.get(..32).unwrap_or(&hex).to_string()
}

/// What a waiting or complete status waits on: the PR for `awaiting_pr_merge`, the milestone
/// for the gates and for `complete` (a gate at another milestone is another blocker).
fn blocker_of(status: EffectiveStatus, report: &TickReport) -> String {
    let milestone = report
        .milestone
        .as_ref()
        .map(|m| {
            format!(
                "m{}/{}:{}",
                m.number,
                m.count,
                m.label.as_deref().unwrap_or_default()
            )
        })
        .unwrap_or_default();
    match status {
        EffectiveStatus::AwaitingPrMerge => match report.pr.pr_number.flatten() {
            Some(n) => format!("pr-{n}"),
            None => format!("pr-?:{milestone}"),
        },
        _ => milestone,
    }
}

/// The next watch state and the events of one stored tick report at `now`.
pub fn transitions(
    prev: &WatchState,
    report: &TickReport,
    now: DateTime<Utc>,
    rules: Rules,
    at: Occurrence<'_>,
) -> (WatchState, Vec<Event>) {
    let mut next = prev.clone();
    let mut events = Vec::new();
    let success = report.success;
    let reason = report.refused_reason.clone();
    let chain = report.spec.as_str();
    let key = |event: NotificationEvent, blocker: &str| idempotency_key(at, chain, event, blocker);

    if !success {
        next.consecutive_failures = prev.consecutive_failures.saturating_add(1);
        if next.consecutive_failures >= rules.failed_ticks.max(1) && !prev.failing_sent {
            next.failing_sent = true;
            events.push(Event {
                event: NotificationEvent::TicksFailing,
                title: format!("{} ticks in a row failed", next.consecutive_failures),
                details: Details::TicksFailing {
                    consecutive_failures: next.consecutive_failures,
                    reason,
                },
                idempotency_key: key(NotificationEvent::TicksFailing, ""),
            });
        }
        // A failed tick observed nothing: the other states stay as they were.
        return (next, events);
    }
    if prev.failing_sent {
        events.push(Event {
            event: NotificationEvent::TicksRecovered,
            title: format!(
                "ticks succeed again after {} failures",
                prev.consecutive_failures
            ),
            details: Details::TicksRecovered {
                failed_ticks: prev.consecutive_failures,
            },
            idempotency_key: key(NotificationEvent::TicksRecovered, ""),
        });
    }
    next.consecutive_failures = 0;
    next.failing_sent = false;

    // The watch state keeps the status word as stored (SQLite), compared word for word.
    let classified = report.effective_status.classified();
    let waiting = classified.filter(|s| s.is_waiting());
    let status = report.effective_status.to_string();
    let blocker = classified
        .filter(|s| s.is_waiting() || *s == EffectiveStatus::Complete)
        .map(|s| blocker_of(s, report));
    // Another blocker in the same status (PR #8 after PR #7, a gate at the next milestone) is
    // a new occurrence; a state stored before blockers were kept (`None`) is not compared.
    let blocker_moved = prev.blocker.is_some() && blocker.is_some() && prev.blocker != blocker;
    let changed = prev.status.as_deref() != Some(status.as_str()) || blocker_moved;
    if changed {
        next.waiting_since = None;
        next.still_waiting_sent = false;
        next.state_key = None;
        if let Some(w) = waiting {
            next.waiting_since = Some(now.to_rfc3339());
            let event = match w {
                EffectiveStatus::HumanPrerequisite => NotificationEvent::HumanPrerequisite,
                EffectiveStatus::QualityGate => NotificationEvent::QualityGate,
                _ => NotificationEvent::AwaitingPrMerge,
            };
            let k = key(event, blocker.as_deref().unwrap_or_default());
            next.state_key = Some(k.clone());
            events.push(Event {
                event,
                title: match w {
                    EffectiveStatus::HumanPrerequisite => {
                        "the chain waits for a human prerequisite".to_string()
                    }
                    EffectiveStatus::QualityGate => {
                        "the chain is held at a failing quality gate".to_string()
                    }
                    _ => "the chain waits for a pull request to be merged".to_string(),
                },
                details: Details::Waiting {
                    reason: reason.clone(),
                    pr: report.pr.clone(),
                },
                idempotency_key: k,
            });
        } else if classified == Some(EffectiveStatus::Complete) {
            let k = key(
                NotificationEvent::Complete,
                blocker.as_deref().unwrap_or_default(),
            );
            next.state_key = Some(k.clone());
            events.push(Event {
                event: NotificationEvent::Complete,
                title: "the chain is complete".to_string(),
                details: Details::Empty {},
                idempotency_key: k,
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
            // Once per stay: the stay's own key names it.
            let stay = prev.state_key.clone().unwrap_or_else(|| since.to_rfc3339());
            events.push(Event {
                event: NotificationEvent::StillWaiting,
                title: format!("the chain still waits ({status}) after {}", age_text(secs)),
                details: Details::StillWaiting {
                    status: status.clone(),
                    waiting_since: since.to_rfc3339(),
                    waiting_secs: secs,
                    reason: reason.clone(),
                },
                idempotency_key: key(NotificationEvent::StillWaiting, &stay),
            });
        }
    }
    if blocker.is_some() {
        next.blocker = blocker;
    } else if changed {
        next.blocker = None;
    }
    next.status = Some(status);

    if report.acted {
        let action = report.next_action.as_str();
        events.push(Event {
            event: NotificationEvent::SupervisorActed,
            title: format!("the supervisor acted: {action}"),
            details: Details::SupervisorActed {
                action: action.to_string(),
            },
            idempotency_key: key(NotificationEvent::SupervisorActed, action),
        });
    }

    // A launch the runner's preflight stopped (runner/fence.rs) needs a person: told once per
    // blocker (which checks failed), again only after a launch went through.
    let preflight = report
        .extra
        .get("preflight")
        .and_then(|p| PreflightInReport::deserialize(p).ok())
        .filter(|p| !p.passed);
    if let Some(p) = preflight {
        let blocker: Vec<String> = p
            .checks
            .iter()
            .map(|c| format!("{}:{}", c.check, c.field))
            .collect();
        let blocker = blocker.join(",");
        if prev.preflight_blocker.as_deref() != Some(blocker.as_str()) {
            let fix = p
                .checks
                .first()
                .map_or("see the tick report", |c| c.fix.as_str());
            events.push(Event {
                event: NotificationEvent::PreflightFailed,
                title: format!("a launch was stopped by the preflight; fix: {fix}"),
                details: Details::PreflightFailed {
                    reason: reason.clone(),
                    checks: p.checks.clone(),
                },
                idempotency_key: key(NotificationEvent::PreflightFailed, &blocker),
            });
        }
        next.preflight_blocker = Some(blocker);
    } else if report.acted {
        next.preflight_blocker = None;
    }

    let stalled = report.is_stalled();
    if stalled && !prev.stalled {
        let age = report.stalled_for_secs().unwrap_or(0);
        events.push(Event {
            event: NotificationEvent::Stalled,
            title: format!(
                "the runner is alive but its log has not grown for {}",
                age_text(age)
            ),
            details: Details::Stalled {
                stalled_for_secs: age,
                log: report.logs.clone(),
            },
            idempotency_key: key(
                NotificationEvent::Stalled,
                report.logs.mtime().unwrap_or_default(),
            ),
        });
    }
    next.stalled = stalled;

    // The driver seen gone while its lease still holds: the person hears at once; only the
    // restart waits for the verdict. Only where a driver should be running: a chain that waits
    // on a PR, a person or a gate, or is complete, ends its driver on purpose.
    let should_drive = matches!(
        report.effective_status.classified(),
        Some(EffectiveStatus::Running | EffectiveStatus::StaleBookkeeping)
    );
    match report
        .liveness
        .as_ref()
        .filter(|_| should_drive)
        .and_then(|l| l.pending_secs().map(|s| (l, s)))
    {
        Some((l, secs)) if !prev.driver_gone_sent => {
            next.driver_gone_sent = true;
            events.push(Event {
                event: NotificationEvent::DriverGone,
                title: format!(
                    "the driver process is gone; restart in {} s unless it comes back",
                    secs.ceil().max(1.0)
                ),
                details: Details::DriverGone {
                    liveness: l.clone(),
                },
                idempotency_key: key(NotificationEvent::DriverGone, ""),
            });
        }
        Some(_) => {}
        None => next.driver_gone_sent = false,
    }
    match &report.quarantine {
        Some(q) if !prev.quarantined_sent => {
            next.quarantined_sent = true;
            events.push(Event {
                event: NotificationEvent::Quarantined,
                idempotency_key: key(NotificationEvent::Quarantined, &q.since),
                title: format!("the chain is quarantined: {}", q.reason),
                details: Details::Quarantined {
                    quarantine: q.clone(),
                    fix: format!(
                        "`megaplan-cloudctl unquarantine {}` once the cause is fixed",
                        q.key
                    ),
                },
            });
        }
        Some(_) => {}
        None => next.quarantined_sent = false,
    }
    // Unknown (the driver not seen, not seen gone either) never authorizes a restart; when it
    // lasts, a person is told once. A tick that failed is `ticks_failing`'s, above.
    let unknown = report.liveness.as_ref().filter(|l| {
        l.state == megaplan_cloud_api::liveness::LiveState::Unknown && l.pending_secs().is_none()
    });
    match unknown {
        Some(l) => {
            let since = prev
                .unknown_since
                .as_deref()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&Utc))
                .unwrap_or(now);
            next.unknown_since = Some(since.to_rfc3339());
            if !prev.unknown_sent && now - since >= rules.unknown_after {
                next.unknown_sent = true;
                events.push(Event {
                    event: NotificationEvent::LivenessUnknown,
                    idempotency_key: key(NotificationEvent::LivenessUnknown, ""),
                    title: format!(
                        "the driver's liveness has been unknown for {}: {}",
                        age_text((now - since).num_seconds()),
                        l.evidence.detail
                    ),
                    details: Details::LivenessUnknown {
                        liveness: l.clone(),
                        unknown_since: since.to_rfc3339(),
                    },
                });
            }
        }
        None => {
            next.unknown_since = None;
            next.unknown_sent = false;
        }
    }
    (next, events)
}

/// A non-negative age in seconds for people (`95` → `1m35s`), by the tree's one formatter.
pub fn age_text(secs: i64) -> String {
    megaplan_cloud_api::duration::text(u64::try_from(secs).unwrap_or(0))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::{Value, json};

    const RULES: Rules = Rules {
        still_waiting_after: chrono::Duration::seconds(3600),
        failed_ticks: 3,
        unknown_after: chrono::Duration::seconds(600),
    };

    const AT: Occurrence<'static> = Occurrence {
        registration: "k",
        tick_id: 1,
    };

    #[test]
    fn a_gone_driver_is_told_once_and_a_lasting_unknown_once_it_lasts() {
        let t0 = Utc::now();
        let pending = report(
            json!({"effective_status": "running", "liveness": {"state": "unknown", "evidence": {
            "process_seen": false, "session_seen": false, "lease_age_secs": 1.0, "lease_ttl_secs": 15.0,
            "detail": "the driver process is gone; restart in 14 s unless it comes back"}}}),
        );
        let (s1, e1) = transitions(&WatchState::default(), &pending, t0, RULES, AT);
        assert_eq!(
            e1.iter().map(|e| e.event).collect::<Vec<_>>(),
            [NotificationEvent::DriverGone]
        );
        assert!(e1[0].title.contains("restart in 14 s"), "{}", e1[0].title);
        // A chain waiting on its PR ended its driver on purpose: nothing to tell.
        let mut waiting = pending.clone();
        waiting.effective_status = megaplan_cloud_api::report::ReportedStatus::Classified(
            EffectiveStatus::AwaitingPrMerge,
        );
        let (_, ew) = transitions(&WatchState::default(), &waiting, t0, RULES, AT);
        assert!(ew.iter().all(|e| e.event != NotificationEvent::DriverGone));
        let (s2, e2) = transitions(&s1, &pending, t0, RULES, AT);
        assert!(e2.iter().all(|e| e.event != NotificationEvent::DriverGone));
        let unknown = report(
            json!({"liveness": {"state": "unknown", "evidence": {"detail": "tmux failed"}}}),
        );
        let (s3, e3) = transitions(&s2, &unknown, t0, RULES, AT);
        assert!(
            e3.iter()
                .all(|e| e.event != NotificationEvent::LivenessUnknown)
        );
        let later = t0 + chrono::Duration::seconds(601);
        let (s4, e4) = transitions(&s3, &unknown, later, RULES, AT);
        assert_eq!(
            e4.iter()
                .filter(|e| e.event == NotificationEvent::LivenessUnknown)
                .count(),
            1
        );
        let (_, e5) = transitions(
            &s4,
            &unknown,
            later + chrono::Duration::seconds(5),
            RULES,
            AT,
        );
        assert!(
            e5.iter()
                .all(|e| e.event != NotificationEvent::LivenessUnknown)
        );
    }

    /// A report with the fields given and the rest of a plain tick (explain.rs's tests use it
    /// too).
    pub(crate) fn report(fields: Value) -> TickReport {
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
        run_keys(reports, step)
            .into_iter()
            .map(|(e, _)| e.as_str())
            .collect()
    }

    /// Each event with its idempotency key.
    fn run_keys(reports: &[TickReport], step: i64) -> Vec<(NotificationEvent, String)> {
        let mut st = WatchState::default();
        let t0 = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let mut out = Vec::new();
        for (i, r) in reports.iter().enumerate() {
            let at = Occurrence {
                registration: "k",
                tick_id: i as i64,
            };
            let (next, ev) = transitions(
                &st,
                r,
                t0 + chrono::Duration::seconds(step * i as i64),
                RULES,
                at,
            );
            out.extend(ev.into_iter().map(|e| (e.event, e.idempotency_key)));
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
    fn a_preflight_blocker_is_told_once_until_a_launch_goes_through() {
        let blocked = report(json!({"effective_status": "stale_bookkeeping",
            "event": "supervisor_blocked", "next_action": "blocked",
            "refused_reason": "preflight failed",
            "preflight": {"passed": false, "checks": [{"check": "disk",
                "field": "preflight.min_free_disk", "detail": "d", "fix": "free disk"}]}}));
        let acted = report(
            json!({"effective_status": "stale_bookkeeping", "acted": true,
            "event": "supervisor_restarted", "next_action": "restart"}),
        );
        let events = run(
            &[blocked.clone(), blocked.clone(), acted, blocked.clone()],
            1,
        );
        assert_eq!(
            events,
            ["preflight_failed", "supervisor_acted", "preflight_failed"]
        );
    }

    /// The `details` of an event are the object the untyped payloads were, key for key (the
    /// notification stores them as a JSON object, keys sorted).
    #[test]
    fn details_keep_their_shape() {
        let blocked = report(json!({"effective_status": "stale_bookkeeping",
            "event": "supervisor_blocked", "next_action": "blocked",
            "refused_reason": "preflight failed",
            "preflight": {"passed": false, "checks": [{"check": "disk",
                "field": "preflight.min_free_disk", "detail": "d", "fix": "free disk"}]}}));
        let (_, events) = transitions(&WatchState::default(), &blocked, Utc::now(), RULES, AT);
        let pre = events
            .iter()
            .find(|e| e.event == NotificationEvent::PreflightFailed)
            .unwrap();
        assert_eq!(pre.details.reason(), Some("preflight failed"));
        assert_eq!(
            serde_json::to_string(&serde_json::to_value(&pre.details).unwrap()).unwrap(),
            r#"{"checks":[{"check":"disk","detail":"d","field":"preflight.min_free_disk","fix":"free disk"}],"reason":"preflight failed"}"#
        );
        let (_, events) = transitions(&WatchState::default(), &awaiting(7), Utc::now(), RULES, AT);
        assert_eq!(
            serde_json::to_value(&events[0].details).unwrap(),
            json!({"reason": null, "pr": awaiting(7).pr})
        );
        let to = |d: Details| serde_json::to_string(&serde_json::to_value(d).unwrap()).unwrap();
        assert_eq!(to(Details::Empty {}), "{}");
        assert_eq!(
            to(Details::TicksFailing {
                consecutive_failures: 3,
                reason: None
            }),
            r#"{"consecutive_failures":3,"reason":null}"#
        );
        assert_eq!(
            to(Details::StillWaiting {
                status: "quality_gate".into(),
                waiting_since: "t".into(),
                waiting_secs: 5,
                reason: Some("r".into())
            }),
            r#"{"reason":"r","status":"quality_gate","waiting_secs":5,"waiting_since":"t"}"#
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
            assert!(
                NotificationEvent::ALL.iter().any(|k| k.as_str() == e),
                "{e}"
            );
        }
        assert_eq!(age_text(95), "1m35s");
        assert_eq!(age_text(7200), "2h00m");
    }

    fn awaiting(pr: i64) -> TickReport {
        report(json!({"effective_status": "awaiting_pr_merge", "pr": {"pr_number": pr}}))
    }

    /// Another PR in the same status is a new occurrence; the same PR across ticks is one,
    /// and each occurrence has its own key (a return to an earlier state gets a new one).
    #[test]
    fn a_new_blocker_is_a_new_occurrence_with_its_own_key() {
        let got = run_keys(
            &[
                awaiting(7),
                awaiting(7),
                awaiting(8),
                awaiting(8),
                ok("running"),
                awaiting(8),
            ],
            10,
        );
        let events: Vec<_> = got.iter().map(|(e, _)| e.as_str()).collect();
        assert_eq!(
            events,
            [
                "awaiting_pr_merge",
                "awaiting_pr_merge",
                "awaiting_pr_merge"
            ]
        );
        let mut keys: Vec<_> = got.iter().map(|(_, k)| k.clone()).collect();
        assert!(keys.iter().all(|k| k.len() == 32), "{keys:?}");
        keys.dedup();
        assert_eq!(keys.len(), 3, "{keys:?}");
    }

    /// The key is a pure function of (registration, chain, state, blocker, tick): computing
    /// it again (a restart re-reading the same tick) gives the same key.
    #[test]
    fn the_key_is_stable_for_one_occurrence() {
        let at = Occurrence {
            registration: "3f1c9a0b7d2e4f51",
            tick_id: 412,
        };
        let k = idempotency_key(
            at,
            "/w/chain.yaml",
            NotificationEvent::AwaitingPrMerge,
            "pr-7",
        );
        assert_eq!(
            k,
            idempotency_key(
                at,
                "/w/chain.yaml",
                NotificationEvent::AwaitingPrMerge,
                "pr-7"
            )
        );
        assert_ne!(
            k,
            idempotency_key(
                at,
                "/w/chain.yaml",
                NotificationEvent::AwaitingPrMerge,
                "pr-8"
            )
        );
        assert_ne!(
            k,
            idempotency_key(
                Occurrence { tick_id: 413, ..at },
                "/w/chain.yaml",
                NotificationEvent::AwaitingPrMerge,
                "pr-7"
            )
        );
    }

    /// A watch state stored by an earlier version (no blocker) is not a change by itself.
    #[test]
    fn an_older_watch_state_does_not_resend() {
        let prev = WatchState {
            status: Some("awaiting_pr_merge".into()),
            waiting_since: Some(Utc::now().to_rfc3339()),
            ..WatchState::default()
        };
        let at = Occurrence {
            registration: "k",
            tick_id: 1,
        };
        let (next, events) = transitions(&prev, &awaiting(7), Utc::now(), RULES, at);
        assert!(events.is_empty(), "{events:?}");
        assert_eq!(next.blocker.as_deref(), Some("pr-7"));
    }
}
