//! The `status --chain` payload, the human chain summary printed on stderr, and the provider
//! consistency check between the last-chain marker and the current cloud.yaml.

use crate::chain::classify::{ClassifyInput, EffectiveStatus, classify};
use crate::chain::observe::Observation;
use crate::chain::spec::ChainSpec;
use crate::chain::state::ChainState;
use megaplan_cloud_api::marker::LastChainMarker;
use megaplan_cloud_api::report::ProviderConsistency;
use serde_json::{Map, Value, json};

/// Classify an observation against the (remote) spec.
pub fn effective_status(obs: &Observation, spec: &ChainSpec) -> EffectiveStatus {
    let state = obs.state_or_default();
    classify(&ClassifyInput {
        milestone_count: spec.milestones.len(),
        current_milestone_index: state.current_milestone_index,
        last_state: state.last_state.as_deref(),
        current_plan: state.current_plan_name.as_deref(),
        plan_status: obs.plan_status.get("status").and_then(Value::as_str),
        runner: obs.liveness,
        sync_state: state.sync_state.as_deref(),
        prerequisite_policy: &obs.policy.prerequisite_policy,
        validation_policy: &obs.policy.validation_policy,
    })
}

fn sync_of(state: &ChainState) -> Value {
    json!({
        "branch_head": state.branch_head,
        "pr_head": state.pr_head,
        "last_pushed_commit": state.last_pushed_commit,
        "dirty_flag": state.dirty_flag,
        "sync_state": state.sync_state,
    })
}

/// The core's `format_chain_status` dict: where the chain stands, milestone by milestone.
pub fn summary_dict(spec: &ChainSpec, state: &ChainState) -> Value {
    let done = state.completed_labels();
    let cursor = state.current_milestone_index;
    let current = usize::try_from(cursor)
        .ok()
        .and_then(|i| spec.milestones.get(i))
        .map(|m| {
            let mut c = json!({"label": m.label, "index": m.index});
            if let (Some(branch), Value::Object(obj)) = (&m.branch, &mut c) {
                obj.insert("branch".into(), json!(branch));
            }
            c
        });
    let mut per_milestone = Vec::new();
    let mut completed = Vec::new();
    let mut remaining = Vec::new();
    for m in &spec.milestones {
        let status = if done.contains(&m.label.as_str()) {
            "completed"
        } else if i64::try_from(m.index).ok() == Some(cursor) && state.current_plan_name.is_some() {
            "in_progress"
        } else {
            "pending"
        };
        per_milestone.push(json!({"label": m.label, "index": m.index, "status": status}));
        let entry = json!({"label": m.label, "index": m.index});
        if status == "completed" {
            completed.push(entry);
        } else {
            remaining.push(entry);
        }
    }
    let mut summary = json!({
        "current_milestone": current,
        "completed": completed,
        "remaining": remaining,
        "per_milestone": per_milestone,
        "seed_plan": spec.seed_plan,
        "base_branch": spec.base_branch,
        "current_plan_name": state.current_plan_name,
        "last_state": state.last_state,
        "sync": sync_of(state),
        "policy": {
            "prerequisite_policy": spec.prerequisite_policy,
            "validation_policy": spec.validation_policy,
            "review_policy": {"clean_milestone_pr": spec.review_clean_milestone_pr},
        },
    });
    if let (Some(n), Value::Object(obj)) = (state.pr_number, &mut summary) {
        obj.insert("pr_number".into(), json!(n));
        obj.insert("pr_state".into(), json!(state.pr_state));
    }
    summary
}

/// The `status --chain` payload (stdout). `spec` is the remote spec as parsed from the runner.
pub fn status_payload(
    obs: &Observation,
    spec: &ChainSpec,
    provider_consistency: &ProviderConsistency,
    resolved_session: &str,
    workspace: &str,
) -> Value {
    let state = obs.state_or_default();
    let mut pr = json!({
        "pr_number": state.pr_number,
        "pr_state": state.pr_state,
        "pr_head": state.pr_head,
    });
    if let (Some(probe), Value::Object(obj)) = (&obs.pr_probe, &mut pr) {
        obj.insert("merge_probe".into(), json!(probe));
    }
    let mut payload = json!({
        "success": true,
        "spec": obs.spec_path,
        "resolved_spec": obs.resolved_spec,
        "state_file": obs.state_path,
        "milestone_count": spec.milestones.len(),
        "seed_plan": spec.seed_plan,
        "chain_state": state.to_value(),
        "summary": summary_dict(spec, &state),
        "effective_status": effective_status(obs, spec).as_str(),
        "policy": obs.policy.to_value(),
        "sync": sync_of(&state),
        "plan_status": obs.plan_status,
        "runner": obs.runner,
        "logs": crate::chain::compat::status_logs(&obs.logs, workspace, state.current_plan_name.as_deref()),
        "pr": pr,
        "provider_consistency": provider_consistency,
        "resolved_workspace": workspace,
        "resolved_session": resolved_session,
        "resolved_context": {"extra_repos": state.extra_repos},
    });
    if let Value::Object(obj) = &mut payload {
        if let Some(refresh) = &obs.sync_refresh {
            obj.insert("sync_refresh".into(), refresh.clone());
        }
        if !obs.warnings.is_empty() {
            obj.insert("warnings".into(), json!(obs.warnings));
        }
    }
    payload
}

fn str_at<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

fn labels(list: Option<&Value>) -> String {
    let names: Vec<&str> = list
        .and_then(Value::as_array)
        .map(|items| items.iter().filter_map(|i| str_at(i, "label")).collect())
        .unwrap_or_default();
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

/// The human chain summary (stderr): the block the core's `chain status` prints. Policies are
/// the effective ones from the payload, with their source shown when an override applies.
pub fn summary_text(payload: &Value) -> String {
    let empty = Value::Object(Map::new());
    let summary = payload.get("summary").unwrap_or(&empty);
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    let current = match summary.get("current_milestone") {
        Some(c @ Value::Object(_)) => format!(
            "{} (index {})",
            str_at(c, "label").unwrap_or("?"),
            c.get("index")
                .map(Value::to_string)
                .unwrap_or_else(|| "?".into())
        ),
        _ => "none".to_string(),
    };
    line(format!("Current milestone: {current}"));
    line(format!("Completed: {}", labels(summary.get("completed"))));
    line(format!("Remaining: {}", labels(summary.get("remaining"))));
    if let Some(seed) = str_at(summary, "seed_plan") {
        line(format!("Seed plan: {seed}"));
    }
    line(format!(
        "Base branch: {}",
        str_at(summary, "base_branch").unwrap_or("main")
    ));
    if let Some(plan) = str_at(summary, "current_plan_name") {
        line(format!("Current plan: {plan}"));
    }
    if let Some(last) = str_at(summary, "last_state") {
        line(format!("Last state: {last}"));
    }
    if let Some(n) = summary
        .get("pr_number")
        .and_then(Value::as_i64)
        .filter(|n| *n != 0)
    {
        line(format!(
            "Current PR: #{n} ({})",
            str_at(summary, "pr_state").unwrap_or("unknown")
        ));
    }
    let sync = summary.get("sync").unwrap_or(&empty);
    let dirty = sync
        .get("dirty_flag")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let sync_lines: Vec<String> = [
        ("branch_head", "Branch head"),
        ("pr_head", "PR head"),
        ("last_pushed_commit", "Last pushed"),
    ]
    .iter()
    .filter_map(|(key, name)| str_at(sync, key).map(|v| format!("  {name}: {v}")))
    .chain(dirty.then(|| "  Dirty: yes".to_string()))
    .chain(str_at(sync, "sync_state").map(|s| format!("  Sync state: {s}")))
    .collect();
    if !sync_lines.is_empty() {
        line("Sync:".to_string());
        for l in sync_lines {
            line(l);
        }
    }
    let policy = match payload.get("policy") {
        Some(p @ Value::Object(_)) => p,
        _ => summary.get("policy").unwrap_or(&empty),
    };
    line("Policy:".to_string());
    line(format!(
        "  Prerequisite: {}",
        str_at(policy, "prerequisite_policy").unwrap_or("none")
    ));
    line(format!(
        "  Validation: {}",
        str_at(policy, "validation_policy").unwrap_or("none")
    ));
    line(format!(
        "  Review (clean_milestone_pr): {}",
        policy
            .get("review_policy")
            .and_then(|r| str_at(r, "clean_milestone_pr"))
            .unwrap_or("auto")
    ));
    if str_at(policy, "source") == Some("runtime_override") {
        line("  Source: runtime override file".to_string());
    }
    line("Per-milestone:".to_string());
    if let Some(items) = summary.get("per_milestone").and_then(Value::as_array) {
        for item in items {
            line(format!(
                "  - [{}] {} (index {})",
                str_at(item, "status").unwrap_or("pending"),
                str_at(item, "label").unwrap_or("?"),
                item.get("index")
                    .map(Value::to_string)
                    .unwrap_or_else(|| "?".into())
            ));
        }
    }
    out
}

/// Cloud-side lines an operator wants next to the summary: effective status, runner, log.
pub fn cloud_lines(payload: &Value) -> String {
    let empty = Value::Object(Map::new());
    let runner = payload.get("runner").unwrap_or(&empty);
    let logs = payload.get("logs").unwrap_or(&empty);
    let mut out = format!(
        "Effective status: {}\nRunner: {} (session {})\n",
        str_at(payload, "effective_status").unwrap_or("unknown"),
        str_at(runner, "status").unwrap_or("unknown"),
        str_at(runner, "session")
            .or_else(|| str_at(payload, "resolved_session"))
            .unwrap_or("?"),
    );
    if let Some(path) = str_at(logs, "path") {
        match (
            str_at(logs, "mtime"),
            logs.get("size").and_then(Value::as_u64),
        ) {
            (Some(mtime), Some(size)) => {
                out.push_str(&format!("Log: {path} ({size} bytes, modified {mtime})\n"))
            }
            _ => out.push_str(&format!("Log: {path} (missing)\n")),
        }
    }
    out
}

/// Does the last-chain marker belong to the provider cloud.yaml names now? Only railway can
/// drift (a service or project change keeps the same cloud.yaml); local and ssh runners are
/// addressed by the deploy dir itself, so the check does not apply to them.
pub fn provider_consistency(
    provider: &str,
    provider_identity: &Value,
    marker: Option<&LastChainMarker>,
) -> ProviderConsistency {
    if provider != "railway" {
        return ProviderConsistency::NotApplicable;
    }
    let Some(marker) = marker else {
        return ProviderConsistency::Unknown {
            reason: Some(
                "no last-chain marker for this cloud.yaml; nothing to compare".to_string(),
            ),
        };
    };
    let marker_provider = marker.provider.as_deref();
    let marker_identity = marker.provider_identity.get().map(|s| json!(s));
    let fix = "relaunch the chain with `megaplan-cloudctl chain <spec>` or pass --remote-spec";
    if let Some(mp) = marker_provider
        && mp != provider
    {
        return ProviderConsistency::Mismatch {
            reason: Some(format!(
                "the last chain was launched with provider '{mp}' but cloud.yaml now uses '{provider}'; {fix}"
            )),
        };
    }
    if let Some(mi) = &marker_identity
        && mi != provider_identity
    {
        return ProviderConsistency::Mismatch {
            reason: Some(format!(
                "the last chain was launched on railway {mi} but cloud.yaml now targets {provider_identity}; {fix}"
            )),
        };
    }
    if marker_provider.is_none() && marker_identity.is_none() {
        return ProviderConsistency::Unknown {
            reason: Some("the last-chain marker does not record a provider".to_string()),
        };
    }
    ProviderConsistency::Consistent
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::observe::{OBSERVATION_PREFIX, parse_observation};
    use crate::chain::spec::parse_chain_spec;

    fn observation(state: Value, runner: &str, plan_status: &str) -> Observation {
        let obs = json!({
            "version": 1,
            "spec_path": "/workspace/app/chain.yaml",
            "resolved_spec": "/workspace/app/chain.yaml",
            "state_path": "/workspace/app/.megaplan/plans/.chains/chain-880bd6e04632.json",
            "policy_path": "/workspace/app/.megaplan/plans/.chains/chain-880bd6e04632.runtime_policy.json",
            "spec_text": SPEC,
            "state_text": state.to_string(),
            "policy_text": null,
            "plan_status": {"status": plan_status, "plan": "plan-m2"},
            "runner": {"status": runner, "session": "megaplan-chain"},
            "logs": {"path": "/workspace/app/.megaplan/cloud-chain.log", "exists": true, "mtime": "2026-06-01T10:00:00Z", "size": 12},
            "sessions": [],
            "pr_probe": "open",
        });
        parse_observation(&format!("{OBSERVATION_PREFIX}{obs}\n")).unwrap()
    }

    const SPEC: &str = "seed:\n  plan: seed-plan\nbase_branch: develop\nmilestones:\n  - {label: m1, idea: a.md, branch: megaplan/m1}\n  - {label: m2, idea: b.md, branch: megaplan/m2}\n  - {label: m3, idea: c.md}\n";

    fn spec() -> ChainSpec {
        parse_chain_spec(SPEC, "/workspace/app/chain.yaml").unwrap()
    }

    fn mid_chain_state() -> Value {
        json!({
            "current_milestone_index": 1, "current_plan_name": "plan-m2",
            "last_state": "awaiting_pr_merge", "pr_number": 42, "pr_state": "open",
            "completed": [{"label": "m1", "plan": "p1", "status": "done"}],
            "branch_head": "abc123", "pr_head": "def456", "last_pushed_commit": "abc123",
            "dirty_flag": true, "sync_state": "stale", "extra_repos": ["/workspace/lib"],
            "custom": "kept"
        })
    }

    #[test]
    fn payload_has_every_field() {
        let obs = observation(mid_chain_state(), "dead", "planned");
        let p = status_payload(
            &obs,
            &spec(),
            &ProviderConsistency::NotApplicable,
            "megaplan-chain",
            "/workspace/app",
        );
        for key in [
            "success",
            "spec",
            "milestone_count",
            "seed_plan",
            "chain_state",
            "summary",
            "effective_status",
            "policy",
            "sync",
            "plan_status",
            "runner",
            "logs",
            "pr",
            "provider_consistency",
            "resolved_workspace",
            "resolved_session",
        ] {
            assert!(p.get(key).is_some(), "missing {key}: {p}");
        }
        assert_eq!(p["success"], true);
        assert_eq!(p["spec"], "/workspace/app/chain.yaml");
        assert_eq!(p["milestone_count"], 3);
        assert_eq!(p["seed_plan"], "seed-plan");
        assert_eq!(p["effective_status"], "awaiting_pr_merge");
        assert_eq!(p["chain_state"]["custom"], "kept");
        assert_eq!(
            p["pr"],
            json!({"pr_number": 42, "pr_state": "open", "pr_head": "def456", "merge_probe": "open"})
        );
        assert_eq!(p["sync"]["sync_state"], "stale");
        assert_eq!(p["policy"]["source"], "chain_yaml");
        assert_eq!(p["resolved_session"], "megaplan-chain");
        assert_eq!(p["resolved_workspace"], "/workspace/app");
        assert_eq!(p["resolved_context"]["extra_repos"][0], "/workspace/lib");
        assert_eq!(p["runner"]["status"], "dead");
        let s = &p["summary"];
        assert_eq!(
            s["current_milestone"],
            json!({"label": "m2", "index": 1, "branch": "megaplan/m2"})
        );
        assert_eq!(s["completed"], json!([{"label": "m1", "index": 0}]));
        assert_eq!(
            s["remaining"],
            json!([{"label": "m2", "index": 1}, {"label": "m3", "index": 2}])
        );
        assert_eq!(s["per_milestone"][1]["status"], "in_progress");
        assert_eq!(s["per_milestone"][2]["status"], "pending");
        assert_eq!(s["pr_number"], 42);
    }

    #[test]
    fn effective_status_uses_observed_liveness() {
        let state = json!({"current_milestone_index": 1, "current_plan_name": "plan-m2"});
        let s = spec();
        assert_eq!(
            effective_status(&observation(state.clone(), "alive", "running"), &s),
            EffectiveStatus::Running
        );
        assert_eq!(
            effective_status(&observation(state.clone(), "dead", "running"), &s),
            EffectiveStatus::StaleBookkeeping
        );
        assert_eq!(
            effective_status(&observation(state, "unknown", "planned"), &s),
            EffectiveStatus::Running
        );
        let done = json!({"current_milestone_index": 3});
        assert_eq!(
            effective_status(&observation(done, "dead", "missing"), &s),
            EffectiveStatus::Complete
        );
    }

    #[test]
    fn summary_text_block() {
        let obs = observation(mid_chain_state(), "dead", "planned");
        let p = status_payload(
            &obs,
            &spec(),
            &ProviderConsistency::NotApplicable,
            "megaplan-chain",
            "/workspace/app",
        );
        let text = summary_text(&p);
        assert_eq!(
            text,
            "Current milestone: m2 (index 1)\n\
             Completed: m1\n\
             Remaining: m2, m3\n\
             Seed plan: seed-plan\n\
             Base branch: develop\n\
             Current plan: plan-m2\n\
             Last state: awaiting_pr_merge\n\
             Current PR: #42 (open)\n\
             Sync:\n\
             \x20 Branch head: abc123\n\
             \x20 PR head: def456\n\
             \x20 Last pushed: abc123\n\
             \x20 Dirty: yes\n\
             \x20 Sync state: stale\n\
             Policy:\n\
             \x20 Prerequisite: none\n\
             \x20 Validation: none\n\
             \x20 Review (clean_milestone_pr): auto\n\
             Per-milestone:\n\
             \x20 - [completed] m1 (index 0)\n\
             \x20 - [in_progress] m2 (index 1)\n\
             \x20 - [pending] m3 (index 2)\n"
        );
    }

    #[test]
    fn summary_text_for_a_fresh_chain() {
        let spec =
            parse_chain_spec("milestones:\n  - {label: m1, idea: a.md}\n", "c.yaml").unwrap();
        let mut p = json!({"summary": summary_dict(&spec, &ChainState::default())});
        p["policy"] = json!({"prerequisite_policy": "required", "validation_policy": "none", "review_policy": {"clean_milestone_pr": "manual"}, "source": "runtime_override"});
        assert_eq!(
            summary_text(&p),
            "Current milestone: none\nCompleted: none\nRemaining: m1\nBase branch: main\nPolicy:\n  Prerequisite: required\n  Validation: none\n  Review (clean_milestone_pr): manual\n  Source: runtime override file\nPer-milestone:\n  - [pending] m1 (index 0)\n"
        );
    }

    #[test]
    fn cloud_lines_show_status_runner_and_log() {
        let obs = observation(mid_chain_state(), "dead", "planned");
        let p = status_payload(
            &obs,
            &spec(),
            &ProviderConsistency::NotApplicable,
            "megaplan-chain",
            "/workspace/app",
        );
        assert_eq!(
            cloud_lines(&p),
            "Effective status: awaiting_pr_merge\nRunner: dead (session megaplan-chain)\nLog: /workspace/app/.megaplan/cloud-chain.log (12 bytes, modified 2026-06-01T10:00:00Z)\n"
        );
    }

    #[test]
    fn provider_consistency_rules() {
        // What `workflow::markers::provider_identity` gives for a railway cloud.yaml.
        let id = json!("agent");
        let m = |v: Value| LastChainMarker::read(v);
        let status = |c: ProviderConsistency| c.as_str();
        assert_eq!(
            status(provider_consistency("ssh", &Value::Null, None)),
            "not_applicable"
        );
        assert_eq!(
            status(provider_consistency(
                "local",
                &Value::Null,
                Some(&m(json!({"provider": "railway"})))
            )),
            "not_applicable"
        );
        assert_eq!(
            status(provider_consistency("railway", &id, None)),
            "unknown"
        );
        assert_eq!(
            status(provider_consistency(
                "railway",
                &id,
                Some(&m(
                    json!({"provider": "railway", "provider_identity": {"service": "agent", "project": "p1"}})
                ))
            )),
            "consistent"
        );
        let reason = |c: ProviderConsistency| match c {
            ProviderConsistency::Mismatch { reason } => reason.unwrap_or_default(),
            other => panic!("not a mismatch: {other:?}"),
        };
        let r = reason(provider_consistency(
            "railway",
            &id,
            Some(&m(json!({"provider": "ssh", "provider_identity": null}))),
        ));
        assert!(r.contains("provider 'ssh'"), "{r}");
        let r = reason(provider_consistency(
            "railway",
            &id,
            Some(&m(
                json!({"provider": "railway", "provider_identity": {"service": "other"}}),
            )),
        ));
        assert!(r.contains("\"other\""), "{r}");
        assert_eq!(
            status(provider_consistency(
                "railway",
                &id,
                Some(&m(json!({"remote_spec": "/x"})))
            )),
            "unknown"
        );
    }
}
