//! The digest (`digest: 1h` in notify.yaml): instead of one message per event that needs
//! nobody (complete, supervisor_acted, ticks_recovered), one message per period listing each
//! chain's progress — milestones done since the last digest and its state now. What needs a
//! person still goes at once. Pure: which chains go into the digest of which sink, and the
//! marks to remember, from the registrations, their last ticks and the last digest's marks.

use super::config::Sink;
use super::fleet::display_name;
use super::store::DigestMark;
use megaplan_cloud_api::notification::DigestChain;
use megaplan_cloud_api::report::EffectiveStatus;
use megaplan_cloud_api::wire::{Registration, TickRecord};
use std::collections::HashMap;

/// Milestones done at a tick: all of them once complete, else those before the current one.
fn done(rec: &TickRecord) -> Option<(u32, String)> {
    let r = &rec.report;
    if !r.success {
        return None;
    }
    let m = r.milestone.as_ref()?;
    let status = r.effective_status.to_string();
    let n = if r.effective_status.classified() == Some(EffectiveStatus::Complete) {
        m.count
    } else {
        m.number.saturating_sub(1)
    };
    Some((n, status))
}

/// One digest's plan: per sink, the chains it is told of (only chains that moved since the
/// last digest: milestones done or another state); and every registration's new mark.
pub struct Plan {
    pub per_sink: Vec<(Sink, Vec<DigestChain>)>,
    pub marks: Vec<DigestMark>,
}

/// `sinks_of`: each registration's sinks (the daemon's own and its given ones). A chain no
/// digest has told of yet counts from nothing: its first digest lists every milestone done.
pub fn plan(
    registrations: &[Registration],
    last_ticks: &HashMap<String, TickRecord>,
    marks: &HashMap<String, DigestMark>,
    sinks_of: &HashMap<String, Vec<Sink>>,
) -> Plan {
    let mut per_sink: Vec<(Sink, Vec<DigestChain>)> = Vec::new();
    let mut new_marks = Vec::new();
    for reg in registrations {
        let Some((now_done, status)) = last_ticks.get(&reg.key).and_then(done) else {
            continue;
        };
        let rec = last_ticks.get(&reg.key);
        new_marks.push(DigestMark {
            key: reg.key.clone(),
            milestone: now_done,
            status: status.clone(),
        });
        let (before, was) = marks
            .get(&reg.key)
            .map_or((0, ""), |m| (m.milestone, m.status.as_str()));
        if before == now_done && was == status {
            continue;
        }
        let chain = DigestChain {
            key: reg.key.clone(),
            chain: display_name(&reg.cloud_yaml),
            milestone: rec.and_then(|r| r.report.milestone.clone()),
            milestones_done: now_done.saturating_sub(before),
            state: status,
            cloud_yaml: reg.cloud_yaml.clone(),
        };
        for s in sinks_of.get(&reg.key).into_iter().flatten() {
            match per_sink.iter_mut().find(|(k, _)| k == s) {
                Some((_, chains)) => chains.push(chain.clone()),
                None => per_sink.push((s.clone(), vec![chain.clone()])),
            }
        }
    }
    Plan {
        per_sink,
        marks: new_marks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use megaplan_cloud_api::report::TickReport;
    use serde_json::json;

    fn reg(key: &str) -> Registration {
        serde_json::from_value(json!({
            "key": key, "cloud_yaml": format!("/w/{key}/cloud.yaml"), "schedule": "every:60",
            "remote_spec": null, "created_at": "t", "last_tick_at": null, "last_event": null,
            "last_success": null, "ticks_run": 0, "ticks_skipped": 0
        }))
        .unwrap()
    }

    fn tick(key: &str, status: &str, number: u32, count: u32) -> TickRecord {
        let report: TickReport = serde_json::from_value(json!({
            "success": true, "effective_status": status, "acted": false,
            "event": "supervisor_tick", "next_action": "noop",
            "milestone": {"number": number, "count": count}
        }))
        .unwrap();
        serde_json::from_value(json!({
            "id": 1, "key": key, "cloud_yaml": format!("/w/{key}/cloud.yaml"),
            "trigger": "schedule", "started_at": "t", "finished_at": "t", "duration_ms": 1,
            "success": true, "event": "supervisor_tick", "next_action": "noop", "acted": false,
            "refused_reason": null, "report": report
        }))
        .unwrap()
    }

    #[test]
    fn progress_since_the_last_digest_per_sink() {
        let hook = |p: u16| Sink::Webhook {
            url: format!("http://127.0.0.1:{p}/h"),
            preset: super::super::config::Preset::Json,
            secret_env: None,
        };
        let regs = [reg("a"), reg("b"), reg("c")];
        let ticks: HashMap<String, TickRecord> = [
            ("a".to_string(), tick("a", "running", 3, 4)),
            ("b".to_string(), tick("b", "complete", 2, 2)),
            ("c".to_string(), tick("c", "running", 1, 2)),
        ]
        .into();
        let mark = |k: &str, m: u32, s: &str| {
            (
                k.to_string(),
                DigestMark {
                    key: k.into(),
                    milestone: m,
                    status: s.into(),
                },
            )
        };
        // `a` moved from milestone 1 to 3, `b` finished its last, `c` is new: all it did.
        let marks: HashMap<String, DigestMark> =
            [mark("a", 0, "running"), mark("b", 1, "awaiting_pr_merge")].into();
        let sinks: HashMap<String, Vec<Sink>> = [
            ("a".to_string(), vec![hook(1)]),
            ("b".to_string(), vec![hook(1), hook(2)]),
            ("c".to_string(), vec![hook(1)]),
        ]
        .into();
        let p = plan(&regs, &ticks, &marks, &sinks);
        assert_eq!(p.marks.len(), 3);
        assert_eq!(p.per_sink.len(), 2);
        let (_, first) = &p.per_sink[0];
        let got: Vec<(&str, u32, &str)> = first
            .iter()
            .map(|c| (c.key.as_str(), c.milestones_done, c.state.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("a", 2, "running"),
                ("b", 1, "complete"),
                ("c", 0, "running")
            ]
        );
        assert_eq!(p.per_sink[1].1.len(), 1);
        // Nothing moved: nothing to tell.
        let marks: HashMap<String, DigestMark> =
            p.marks.iter().map(|m| (m.key.clone(), m.clone())).collect();
        assert!(plan(&regs, &ticks, &marks, &sinks).per_sink.is_empty());
    }
}
