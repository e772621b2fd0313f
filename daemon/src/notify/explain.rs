//! `megaplan-cloudctl explain`: the last tick of a registration in a few lines — the facts it
//! observed, the rule of `chain::decide` that matched, the action, and the refusal. Pure: a
//! reading of the stored report, checked in the same order as `chain::decide::decide`.

use megaplan_cloud_api::report::{
    EffectiveStatus, Liveness, ProviderConsistency, ReportedStatus, TickEvent, TickReport,
};
use megaplan_cloud_api::wire::{TickBackoff, TickRecord};
use serde_json::{Value, json};

/// The rule of the supervise decision that produced this report.
pub fn rule(report: &TickReport) -> String {
    let runner = report.runner.status.unwrap_or(Liveness::Unknown);
    let probe = report.pr.merge_probe.as_deref().unwrap_or("unknown");
    if !report.success
        && report.event == TickEvent::Error
        && report.effective_status == ReportedStatus::Unknown
    {
        return "the observation failed: a tick that cannot see the runner never acts".into();
    }
    if matches!(
        report.provider_consistency,
        Some(ProviderConsistency::Mismatch { .. })
    ) {
        return "provider consistency mismatch: the last chain was launched elsewhere, so nothing is touched".into();
    }
    let status = match &report.effective_status {
        ReportedStatus::Classified(s) => *s,
        // A report another version wrote, or one that never classified.
        other => return format!("unknown status {other} → noop (no safe action)"),
    };
    match status {
        EffectiveStatus::Running => "running → noop (a running chain is left alone)".to_string(),
        EffectiveStatus::Complete => "complete → done".to_string(),
        EffectiveStatus::HumanPrerequisite => {
            "human_prerequisite → blocked until a person resolves it".to_string()
        }
        EffectiveStatus::QualityGate => {
            "quality_gate → blocked until a person resolves or accepts it".to_string()
        }
        EffectiveStatus::AwaitingPrMerge if probe != "merged" => {
            format!("awaiting_pr_merge with PR state {probe} → blocked until it is merged")
        }
        EffectiveStatus::AwaitingPrMerge => format!(
            "awaiting_pr_merge, PR merged, runner {runner} → {}",
            if runner == Liveness::Dead {
                "advance"
            } else {
                "blocked (only a confirmed-dead runner is advanced)"
            }
        ),
        EffectiveStatus::StaleBookkeeping => format!(
            "stale_bookkeeping, runner {runner} → {}",
            if runner == Liveness::Dead {
                "restart"
            } else {
                "blocked (a live or unprobeable runner is never restarted)"
            }
        ),
    }
}

/// The explanation of one stored tick: JSON plus the lines for a terminal.
pub fn explain(rec: &TickRecord) -> Value {
    let r = &rec.report;
    let or_dash = |s: Option<&str>| s.unwrap_or("-").to_string();
    let runner = or_dash(r.runner.status.map(Liveness::as_str));
    let pr_number = r.pr.pr_number.flatten();
    let facts = json!({
        "effective_status": r.effective_status,
        "runner": runner,
        "pr": {"number": r.pr.pr_number, "merge_probe": r.pr.merge_probe},
        "sync": r.sync,
        "log": {"path": r.logs.path, "size": r.logs.size, "mtime": r.logs.mtime},
        "stalled": r.stalled,
        "stalled_for_secs": r.stalled_for_secs,
        "provider_consistency": or_dash(r.provider_consistency.as_ref().map(ProviderConsistency::as_str)),
        "paused": r.paused,
        "dry_run": r.dry_run.then_some(true),
        "liveness": r.liveness,
        "quarantine": r.quarantine,
    });
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
    json!({
        "success": true,
        "tick_id": rec.id,
        "facts": facts,
        "rule": rule,
        "action": rec.next_action,
        "acted": rec.acted,
        "refused_reason": rec.refused_reason,
        "lines": lines,
    })
}

/// Add the registration's back-off to an explanation: a `backoff` object and a line saying why
/// its scheduled ticks are held back and until when.
pub fn with_backoff(explained: &mut Value, b: &TickBackoff) {
    let line = backoff_line(b);
    if let Some(o) = explained.as_object_mut() {
        o.insert("backoff".into(), json!(b));
        if let Some(lines) = o.get_mut("lines").and_then(Value::as_array_mut) {
            lines.push(Value::String(line));
        }
    }
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
mod tests {
    use super::*;

    /// A stored report with the fields given and the rest of a plain tick.
    fn report(fields: Value) -> TickReport {
        let mut v = json!({"success": true, "effective_status": "unknown", "acted": false,
                           "event": "supervisor_tick", "next_action": "noop"});
        for (k, x) in fields.as_object().unwrap() {
            v[k] = x.clone();
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn rules_follow_the_decision_order() {
        let r = |v: Value| rule(&report(v));
        assert!(
            r(json!({"effective_status": "stale_bookkeeping", "runner": {"status": "dead"}}))
                .ends_with("restart")
        );
        assert!(
            r(json!({"effective_status": "stale_bookkeeping", "runner": {"status": "alive"}}))
                .contains("never restarted")
        );
        assert!(
            r(json!({"effective_status": "awaiting_pr_merge", "pr": {"merge_probe": "open"}}))
                .contains("PR state open")
        );
        assert!(r(json!({"effective_status": "running", "provider_consistency": {"status": "mismatch"}})).contains("mismatch"));
        assert!(r(json!({"success": false, "event": "supervisor_error", "effective_status": "unknown"})).contains("observation failed"));
    }

    #[test]
    fn explain_renders_facts_rule_action_refusal() {
        let rec = TickRecord {
            id: 3,
            key: "k".into(),
            cloud_yaml: "/p/cloud.yaml".into(),
            trigger: "schedule".into(),
            started_at: "2026-01-01T00:00:00Z".into(),
            finished_at: "2026-01-01T00:00:01Z".into(),
            duration_ms: 1000,
            success: true,
            event: TickEvent::Blocked,
            next_action: megaplan_cloud_api::report::NextAction::Blocked,
            acted: false,
            refused_reason: Some("paused by ops since 2026-01-01T00:00:00Z".into()),
            report: report(
                json!({"effective_status": "stale_bookkeeping", "runner": {"status": "dead"},
                           "paused": {"paused_by": "ops", "since": "2026-01-01T00:00:00Z"}}),
            ),
            due_at: None,
        };
        let e = explain(&rec);
        let lines: Vec<&str> = e["lines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap())
            .collect();
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
        assert_eq!(e["backoff"]["strikes"], 2);
        assert_eq!(
            e["lines"].as_array().unwrap().last().unwrap(),
            "backoff: 2 ticks in a row hit their deadline (since 2026-01-01T00:00:00Z); scheduled ticks are skipped until 2026-01-01T00:00:30Z (1 skipped so far); last: the resident observer did not answer within 3s"
        );
    }
}
