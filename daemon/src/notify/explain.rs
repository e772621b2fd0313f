//! `megaplan-cloudctl explain`: the last tick of a registration in a few lines — the facts it
//! observed, the rule of `chain::decide` that matched, the action, and the refusal. Pure: a
//! reading of the stored report, checked in the same order as `chain::decide::decide`.

use megaplan_cloud_api::wire::TickRecord;
use serde_json::{Value, json};

fn s<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(*p)?;
    }
    cur.as_str()
}

/// The rule of the supervise decision that produced this report.
pub fn rule(report: &Value) -> String {
    let status = s(report, &["effective_status"]).unwrap_or("unknown");
    let runner = s(report, &["runner", "status"]).unwrap_or("unknown");
    let probe = s(report, &["pr", "merge_probe"]).unwrap_or("unknown");
    if report.get("success").and_then(Value::as_bool) == Some(false)
        && s(report, &["event"]) == Some("supervisor_error")
        && status == "unknown"
    {
        return "the observation failed: a tick that cannot see the runner never acts".into();
    }
    if s(report, &["provider_consistency", "status"]) == Some("mismatch") {
        return "provider consistency mismatch: the last chain was launched elsewhere, so nothing is touched".into();
    }
    match status {
        "running" => "running → noop (a running chain is left alone)".to_string(),
        "complete" => "complete → done".to_string(),
        "human_prerequisite" => {
            "human_prerequisite → blocked until a person resolves it".to_string()
        }
        "quality_gate" => {
            "quality_gate → blocked until a person resolves or accepts it".to_string()
        }
        "awaiting_pr_merge" if probe != "merged" => {
            format!("awaiting_pr_merge with PR state {probe} → blocked until it is merged")
        }
        "awaiting_pr_merge" => format!(
            "awaiting_pr_merge, PR merged, runner {runner} → {}",
            if runner == "dead" {
                "advance"
            } else {
                "blocked (only a confirmed-dead runner is advanced)"
            }
        ),
        "stale_bookkeeping" => format!(
            "stale_bookkeeping, runner {runner} → {}",
            if runner == "dead" {
                "restart"
            } else {
                "blocked (a live or unprobeable runner is never restarted)"
            }
        ),
        other => format!("unknown status {other} → noop (no safe action)"),
    }
}

/// The explanation of one stored tick: JSON plus the lines for a terminal.
pub fn explain(rec: &TickRecord) -> Value {
    let r = &rec.report;
    let pick = |path: &[&str]| s(r, path).unwrap_or("-").to_string();
    let facts = json!({
        "effective_status": pick(&["effective_status"]),
        "runner": pick(&["runner", "status"]),
        "pr": {"number": r.pointer("/pr/pr_number"), "merge_probe": r.pointer("/pr/merge_probe")},
        "sync": r.get("sync"),
        "log": {"path": r.pointer("/logs/path"), "size": r.pointer("/logs/size"), "mtime": r.pointer("/logs/mtime")},
        "stalled": r.get("stalled"),
        "stalled_for_secs": r.get("stalled_for_secs"),
        "provider_consistency": pick(&["provider_consistency", "status"]),
        "paused": r.get("paused"),
        "dry_run": r.get("dry_run"),
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
            pick(&["effective_status"]),
            pick(&["runner", "status"]),
            r.pointer("/pr/pr_number")
                .map(|v| v.to_string())
                .filter(|v| v != "null")
                .unwrap_or_else(|| "-".into()),
            pick(&["pr", "merge_probe"]),
            r.pointer("/logs/size")
                .map(|v| v.to_string())
                .unwrap_or_else(|| "-".into()),
            pick(&["logs", "mtime"]),
        ),
        format!("rule:    {rule}"),
        format!("action:  {action}"),
    ];
    if r.get("stalled").and_then(Value::as_bool) == Some(true) {
        lines.push(format!(
            "stalled: the log has not grown for {} (threshold {}); reported only, never restarted",
            super::transitions::age_text(
                r.get("stalled_for_secs")
                    .and_then(Value::as_i64)
                    .unwrap_or(0)
            ),
            super::transitions::age_text(
                r.get("stall_after_secs")
                    .and_then(Value::as_i64)
                    .unwrap_or(0)
            )
        ));
    }
    if let Some(p) = r.get("paused").filter(|p| p.is_object()) {
        lines.push(format!(
            "paused:  by {} since {}",
            s(p, &["paused_by"]).unwrap_or("?"),
            s(p, &["since"]).unwrap_or("?")
        ));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_follow_the_decision_order() {
        let r = |v: Value| rule(&v);
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
            event: "supervisor_blocked".into(),
            next_action: "blocked".into(),
            acted: false,
            refused_reason: Some("paused by ops since 2026-01-01T00:00:00Z".into()),
            report: json!({"effective_status": "stale_bookkeeping", "runner": {"status": "dead"},
                           "paused": {"paused_by": "ops", "since": "2026-01-01T00:00:00Z"}}),
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
    }
}
