//! `megaplan-cloudctl explain`: the last tick of a registration in a few lines — the facts it
//! observed, the rule of `chain::decide` that matched (recorded in the report), the action,
//! and the refusal. Pure: a reading of the stored report.

use megaplan_cloud_api::liveness::{Liveness as DriverLiveness, Quarantine};
use megaplan_cloud_api::report::{
    Liveness, NextAction, Pause, ProviderConsistency, ReportedStatus, SyncInfo, TickReport,
};
use megaplan_cloud_api::wire::{TickBackoff, TickRecord};
use serde::Serialize;

/// `GET /v1/clouds/{key}/explain`: the facts, the rule, the action and the lines a terminal
/// shows. Replied as [`megaplan_cloud_api::sorted::Sorted`] (keys sorted, as before it was
/// typed); the client reads it as [`megaplan_cloud_api::wire::Explanation`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explained {
    pub success: bool,
    pub tick_id: i64,
    pub facts: Facts,
    pub rule: String,
    pub action: NextAction,
    pub acted: bool,
    pub refused_reason: Option<String>,
    pub lines: Vec<String>,
    /// The registration's back-off, when its scheduled ticks are held back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backoff: Option<TickBackoff>,
}

/// What the tick observed, as `explain --json` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Facts {
    pub effective_status: ReportedStatus,
    /// The runner's liveness word, `-` when not observed.
    pub runner: String,
    pub pr: PrFacts,
    pub sync: SyncInfo,
    pub log: LogFacts,
    pub stalled: Option<bool>,
    pub stalled_for_secs: Option<Option<i64>>,
    /// The consistency word, `-` when not checked.
    pub provider_consistency: String,
    pub paused: Option<Option<Pause>>,
    /// `true` for a dry run, else `null`.
    pub dry_run: Option<bool>,
    pub liveness: Option<DriverLiveness>,
    pub quarantine: Option<Quarantine>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PrFacts {
    pub number: Option<Option<i64>>,
    pub merge_probe: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LogFacts {
    pub path: Option<String>,
    pub size: Option<Option<u64>>,
    pub mtime: Option<Option<String>>,
}

/// The rule of the supervise decision that produced this report, in words: the report
/// records which rule matched (`chain::decide`); the words are the rule's own (`Rule::text`).
pub fn rule(report: &TickReport) -> String {
    match &report.rule {
        Some(rule) => rule.text(),
        None if !report.success => {
            "the tick failed before a decision: a tick that cannot see the runner never acts"
                .to_string()
        }
        None => "not recorded (a report of an earlier version)".to_string(),
    }
}

/// The explanation of one stored tick: the facts plus the lines for a terminal.
pub fn explain(rec: &TickRecord) -> Explained {
    let r = &rec.report;
    let or_dash = |s: Option<&str>| s.unwrap_or("-").to_string();
    let runner = or_dash(r.runner.status.map(Liveness::as_str));
    let pr_number = r.pr.pr_number.flatten();
    let facts = Facts {
        effective_status: r.effective_status.clone(),
        runner: runner.clone(),
        pr: PrFacts {
            number: r.pr.pr_number,
            merge_probe: r.pr.merge_probe.clone(),
        },
        sync: r.sync.clone(),
        log: LogFacts {
            path: r.logs.path.clone(),
            size: r.logs.size,
            mtime: r.logs.mtime.clone(),
        },
        stalled: r.stalled,
        stalled_for_secs: r.stalled_for_secs,
        provider_consistency: or_dash(
            r.provider_consistency
                .as_ref()
                .map(ProviderConsistency::as_str),
        ),
        paused: r.paused.clone(),
        dry_run: r.dry_run.then_some(true),
        liveness: r.liveness.clone(),
        quarantine: r.quarantine.clone(),
    };
    let rule = rule(r);
    let action = format!(
        "{} (acted: {})",
        rec.next_action,
        if rec.acted { "yes" } else { "no" }
    );
    let mut lines = vec![
        format!(
            "tick #{} at {} ({}, {} ms): {}",
            rec.id, rec.finished_at, rec.trigger, rec.duration_ms, rec.event
        ),
        format!(
            "facts:   status {}, runner {}, PR {} ({}), log {} bytes modified {}",
            r.effective_status,
            runner,
            pr_number
                .map(|n| n.to_string())
                .unwrap_or_else(|| "-".into()),
            or_dash(r.pr.merge_probe.as_deref()),
            match r.logs.size {
                Some(Some(n)) => n.to_string(),
                Some(None) => "null".to_string(),
                None => "-".to_string(),
            },
            or_dash(r.logs.mtime()),
        ),
        format!("rule:    {rule}"),
        format!("action:  {action}"),
    ];
    if r.is_stalled() {
        lines.push(format!(
            "stalled: the log has not grown for {} (threshold {}); reported only, never restarted",
            super::transitions::age_text(r.stalled_for_secs().unwrap_or(0)),
            super::transitions::age_text(
                r.stall_after_secs
                    .and_then(|s| i64::try_from(s).ok())
                    .unwrap_or(0)
            )
        ));
    }
    if let Some(p) = r.pause() {
        lines.push(format!("paused:  by {} since {}", p.paused_by, p.since));
    }
    if let Some(l) = &r.liveness {
        lines.push(format!("liveness: {} ({})", l.state, l.evidence.detail));
    }
    if let Some(q) = &r.quarantine {
        lines.push(format!(
            "quarantined: since {}: {}; `megaplan-cloudctl unquarantine {}` (or `resume`) clears it",
            q.since, q.reason, q.key
        ));
        if !q.log_tail.is_empty() {
            lines.push("driver log (last lines):".to_string());
            lines.extend(q.log_tail.iter().map(|l| format!("  | {l}")));
        }
    }
    for w in r.warnings.iter().flatten() {
        lines.push(format!("warning: {w}"));
    }
    if let Some(reason) = &rec.refused_reason {
        lines.push(format!("refused: {reason}"));
    }
    Explained {
        success: true,
        tick_id: rec.id,
        facts,
        rule,
        action: rec.next_action.clone(),
        acted: rec.acted,
        refused_reason: rec.refused_reason.clone(),
        lines,
        backoff: None,
    }
}

/// Add the registration's back-off to an explanation: a `backoff` object and a line saying why
/// its scheduled ticks are held back and until when.
pub fn with_backoff(explained: &mut Explained, b: &TickBackoff) {
    explained.lines.push(backoff_line(b));
    explained.backoff = Some(b.clone());
}

/// `backoff: N tick(s) in a row hit their deadline (since T); scheduled ticks skipped until U
/// (K skipped so far); last: <reason>`.
pub fn backoff_line(b: &TickBackoff) -> String {
    format!(
        "backoff: {} tick{} in a row hit {} deadline (since {}); scheduled ticks are skipped until {} ({} skipped so far); last: {}",
        b.strikes,
        if b.strikes == 1 { "" } else { "s" },
        if b.strikes == 1 { "its" } else { "their" },
        b.since,
        b.until,
        b.skipped,
        b.reason
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::notify::transitions::tests::report;
    use megaplan_cloud_api::sorted::Sorted;
    use serde_json::{Value, json};

    #[test]
    fn the_rule_is_the_one_the_report_records() {
        let r = |v: Value| rule(&report(v));
        assert!(r(json!({"rule": "stale_dead_runner"})).ends_with("→ restart"));
        assert!(r(json!({"rule": "stale_live_runner"})).contains("never restarted"));
        assert!(r(json!({"rule": "awaiting_merge"})).contains("PR not merged"));
        assert!(r(json!({"rule": "provider_mismatch"})).contains("mismatch"));
        assert!(
            r(json!({"rule": "observation_failed", "success": false}))
                .contains("observation failed")
        );
        // Reports without a rule: a failed tick, or one stored by an earlier version.
        assert!(
            r(json!({"success": false, "event": "supervisor_error"}))
                .contains("failed before a decision")
        );
        assert!(r(json!({"effective_status": "running"})).contains("earlier version"));
    }

    /// A stored one-second tick of registration `k` that was blocked (not acted) for
    /// `refused`, with `report` (notify/mod.rs's tests use it too).
    pub(crate) fn blocked_record(id: i64, refused: &str, report: TickReport) -> TickRecord {
        TickRecord {
            id,
            key: "k".into(),
            cloud_yaml: "/p/cloud.yaml".into(),
            trigger: "schedule".into(),
            started_at: "2026-01-01T00:00:00Z".into(),
            finished_at: "2026-01-01T00:00:01Z".into(),
            duration_ms: 1000,
            success: true,
            event: megaplan_cloud_api::report::TickEvent::Blocked,
            next_action: megaplan_cloud_api::report::NextAction::Blocked,
            acted: false,
            refused_reason: Some(refused.to_string()),
            report,
            due_at: None,
        }
    }

    #[test]
    fn explain_renders_facts_rule_action_refusal() {
        let rec = blocked_record(
            3,
            "paused by ops since 2026-01-01T00:00:00Z",
            report(
                json!({"effective_status": "stale_bookkeeping", "runner": {"status": "dead"},
                           "rule": "stale_dead_runner",
                           "paused": {"paused_by": "ops", "since": "2026-01-01T00:00:00Z"}}),
            ),
        );
        let e = explain(&rec);
        let lines: Vec<&str> = e.lines.iter().map(String::as_str).collect();
        assert!(
            lines[1].starts_with("facts:   status stale_bookkeeping, runner dead"),
            "{lines:?}"
        );
        assert!(lines[2].ends_with("→ restart"), "{lines:?}");
        assert_eq!(lines[3], "action:  blocked (acted: no)");
        assert!(lines.iter().any(|l| l.starts_with("paused:  by ops")));
        assert!(lines.last().unwrap().starts_with("refused: paused by ops"));

        // A registration backing off: the explanation says why and until when.
        let mut e = explain(&rec);
        with_backoff(
            &mut e,
            &TickBackoff {
                strikes: 2,
                since: "2026-01-01T00:00:00Z".into(),
                until: "2026-01-01T00:00:30Z".into(),
                reason: "the resident observer did not answer within 3s".into(),
                skipped: 1,
            },
        );
        assert_eq!(e.backoff.as_ref().map(|b| b.strikes), Some(2));
        assert_eq!(
            e.lines.last().unwrap(),
            "backoff: 2 ticks in a row hit their deadline (since 2026-01-01T00:00:00Z); scheduled ticks are skipped until 2026-01-01T00:00:30Z (1 skipped so far); last: the resident observer did not answer within 3s"
        );
    }

    /// The reply is the object the hand-built payload was, byte for byte: the same names,
    /// nulls and keys sorted at every level.
    #[test]
    fn the_reply_keeps_its_bytes() {
        let r = report(
            json!({"effective_status": "running", "runner": {"status": "alive"},
            "pr": {"pr_number": 7, "merge_probe": "open", "pr_state": "OPEN"},
            "sync": {"branch": "main", "zz": 1}, "logs": {"path": "/w/l", "size": 5, "mtime": null},
            "stalled": false, "stalled_for_secs": null, "paused": null,
            "provider_consistency": {"status": "consistent"},
            "quarantine": {"key": "k", "reason": "r", "since": "s", "restarts": 3, "log_tail": []}}),
        );
        let rec = TickRecord {
            id: 9,
            key: "k".into(),
            cloud_yaml: "/p/cloud.yaml".into(),
            trigger: "schedule".into(),
            started_at: "a".into(),
            finished_at: "b".into(),
            duration_ms: 1,
            success: true,
            event: megaplan_cloud_api::report::TickEvent::Tick,
            next_action: NextAction::Noop,
            acted: false,
            refused_reason: None,
            report: r.clone(),
            due_at: None,
        };
        let mut typed = explain(&rec);
        let backoff = TickBackoff {
            strikes: 1,
            since: "s".into(),
            until: "u".into(),
            reason: "slow".into(),
            skipped: 0,
        };
        with_backoff(&mut typed, &backoff);
        // The payload as it was built by hand before it was typed.
        let facts = json!({
            "effective_status": r.effective_status,
            "runner": "alive",
            "pr": {"number": r.pr.pr_number, "merge_probe": r.pr.merge_probe},
            "sync": r.sync,
            "log": {"path": r.logs.path, "size": r.logs.size, "mtime": r.logs.mtime},
            "stalled": r.stalled,
            "stalled_for_secs": r.stalled_for_secs,
            "provider_consistency": "consistent",
            "paused": r.paused,
            "dry_run": r.dry_run.then_some(true),
            "liveness": r.liveness,
            "quarantine": r.quarantine,
        });
        let mut old: Value = json!({
            "success": true,
            "tick_id": rec.id,
            "facts": facts,
            "rule": rule(&r),
            "action": rec.next_action,
            "acted": rec.acted,
            "refused_reason": rec.refused_reason,
            "lines": typed.lines,
        });
        old["backoff"] = json!(backoff);
        assert_eq!(
            serde_json::to_string(&Sorted(&typed)).unwrap(),
            serde_json::to_string(&old).unwrap()
        );
        // What the client reads.
        let read: megaplan_cloud_api::wire::Explanation =
            serde_json::from_str(&serde_json::to_string(&Sorted(&typed)).unwrap()).unwrap();
        assert_eq!(read.lines, typed.lines);
    }
}
