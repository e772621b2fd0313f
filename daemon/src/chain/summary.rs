//! The `status --chain` payload (`api::status::ChainStatus`, built here from the observation
//! by moving its parts), the human chain summary printed on stderr, and the provider
//! consistency check between the last-chain marker and the current cloud.yaml.

use crate::chain::classify::{ClassifyInput, EffectiveStatus, classify};
use crate::chain::observe::Observation;
use crate::chain::spec::ChainSpec;
use crate::chain::state::ChainState;
use megaplan_cloud_api::marker::LastChainMarker;
use megaplan_cloud_api::report::{PrInfo, ProviderConsistency, SyncInfo};
use megaplan_cloud_api::status::{
    ChainPolicy, ChainStatus, ChainSummary, MilestoneEntry, MilestoneRef, ResolvedContext,
    ReviewPolicy,
};
use serde_json::Map;

/// Classify an observation against the (remote) spec.
pub fn effective_status(obs: &Observation, spec: &ChainSpec) -> EffectiveStatus {
    let state = obs.state_or_default();
    classify(&ClassifyInput {
        milestone_count: spec.milestones.len(),
        current_milestone_index: state.current_milestone_index,
        last_state: state.last_state.as_deref(),
        current_plan: state.current_plan_name.as_deref(),
        plan_status: obs.plan_status.status.as_deref(),
        runner: obs.liveness,
        sync_state: state.sync_state.as_deref(),
        prerequisite_policy: &obs.policy.prerequisite_policy,
        validation_policy: &obs.policy.validation_policy,
    })
}

fn sync_of(state: &ChainState) -> SyncInfo {
    SyncInfo::observed(
        state.branch_head.clone(),
        state.pr_head.clone(),
        state.last_pushed_commit.clone(),
        state.dirty_flag,
        state.sync_state.clone(),
    )
}

fn u32_of(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn milestone_ref(label: &str, index: usize) -> MilestoneRef {
    MilestoneRef {
        branch: None,
        index: u32_of(index),
        label: label.to_string(),
        rest: Map::new(),
    }
}

/// The core's `format_chain_status` dict: where the chain stands, milestone by milestone.
pub fn summary_dict(spec: &ChainSpec, state: &ChainState) -> ChainSummary {
    let done = state.completed_labels();
    let cursor = state.current_milestone_index;
    let current = usize::try_from(cursor)
        .ok()
        .and_then(|i| spec.milestones.get(i))
        .map(|m| MilestoneRef {
            branch: m.branch.clone(),
            ..milestone_ref(&m.label, m.index)
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
        per_milestone.push(MilestoneEntry {
            index: u32_of(m.index),
            label: m.label.clone(),
            status: status.to_string(),
        });
        let entry = milestone_ref(&m.label, m.index);
        if status == "completed" {
            completed.push(entry);
        } else {
            remaining.push(entry);
        }
    }
    ChainSummary {
        base_branch: spec.base_branch.clone(),
        completed,
        current_milestone: current,
        current_plan_name: state.current_plan_name.clone(),
        last_state: state.last_state.clone(),
        per_milestone,
        policy: ChainPolicy {
            prerequisite_policy: spec.prerequisite_policy.clone(),
            review_policy: ReviewPolicy {
                clean_milestone_pr: spec.review_clean_milestone_pr.clone(),
            },
            source: None,
            validation_policy: spec.validation_policy.clone(),
        },
        pr_number: state.pr_number,
        pr_state: state.pr_number.map(|_| state.pr_state.clone()),
        remaining,
        seed_plan: spec.seed_plan.clone(),
        sync: sync_of(state),
        rest: Map::new(),
    }
}

/// The `status --chain` payload (stdout), the observation's parts moved into it. `spec` is the
/// remote spec as parsed from the runner. Not yet redacted, and not yet checked for a stall
/// (`supervisor::stall::annotate`).
pub fn status_payload(
    obs: Observation,
    spec: &ChainSpec,
    provider_consistency: &ProviderConsistency,
    resolved_session: &str,
    workspace: &str,
) -> ChainStatus {
    let state = obs.state_or_default();
    let effective = effective_status(&obs, spec);
    let pr = PrInfo {
        merge_probe: obs.pr_probe,
        pr_head: Some(state.pr_head.clone()),
        pr_number: Some(state.pr_number),
        pr_state: Some(state.pr_state.clone()),
        rest: Map::new(),
    };
    ChainStatus {
        chain_state: state.to_map(),
        effective_status: effective.into(),
        logs: crate::chain::compat::status_logs(
            obs.logs,
            workspace,
            state.current_plan_name.as_deref(),
        ),
        milestone_count: u32_of(spec.milestones.len()),
        plan_status: obs.plan_status,
        policy: obs.policy.to_api(),
        pr,
        provider_consistency: Some(provider_consistency.clone()),
        resolved_context: ResolvedContext {
            extra_repos: state.extra_repos.clone(),
        },
        resolved_session: Some(resolved_session.to_string()),
        resolved_spec: obs.resolved_spec,
        resolved_workspace: workspace.to_string(),
        runner: obs.runner,
        seed_plan: spec.seed_plan.clone(),
        spec: obs.spec_path,
        spec_source: None,
        stall_after_secs: 0,
        stalled: false,
        stalled_for_secs: None,
        state_file: obs.state_path,
        success: true,
        summary: summary_dict(spec, &state),
        sync: sync_of(&state),
        sync_refresh: obs.sync_refresh,
        warnings: obs.warnings,
        rest: Map::new(),
    }
}

fn or_none(names: Vec<&str>) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

fn labels(list: &[MilestoneRef]) -> String {
    or_none(
        list.iter()
            .map(|m| m.label.as_str())
            .filter(|l| !l.is_empty())
            .collect(),
    )
}

/// A non-empty text of an optional field.
fn text(v: &Option<String>) -> Option<&str> {
    v.as_deref().filter(|s| !s.is_empty())
}

/// A non-empty text of a field that may be written as `null`.
fn text2(v: &Option<Option<String>>) -> Option<&str> {
    v.as_ref().and_then(text)
}

/// The human chain summary (stderr): the block the core's `chain status` prints. Policies are
/// the effective ones from the payload, with their source shown when an override applies.
pub fn summary_text(payload: &ChainStatus) -> String {
    let summary = &payload.summary;
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    let current = match &summary.current_milestone {
        Some(c) => format!(
            "{} (index {})",
            Some(c.label.as_str())
                .filter(|l| !l.is_empty())
                .unwrap_or("?"),
            c.index
        ),
        None => "none".to_string(),
    };
    line(format!("Current milestone: {current}"));
    line(format!("Completed: {}", labels(&summary.completed)));
    line(format!("Remaining: {}", labels(&summary.remaining)));
    if let Some(seed) = text(&summary.seed_plan) {
        line(format!("Seed plan: {seed}"));
    }
    line(format!(
        "Base branch: {}",
        text(&summary.base_branch).unwrap_or("main")
    ));
    if let Some(plan) = text(&summary.current_plan_name) {
        line(format!("Current plan: {plan}"));
    }
    if let Some(last) = text(&summary.last_state) {
        line(format!("Last state: {last}"));
    }
    if let Some(n) = summary.pr_number.filter(|n| *n != 0) {
        line(format!(
            "Current PR: #{n} ({})",
            text2(&summary.pr_state).unwrap_or("unknown")
        ));
    }
    let sync = &summary.sync;
    let sync_lines: Vec<String> = [
        (&sync.branch_head, "Branch head"),
        (&sync.pr_head, "PR head"),
        (&sync.last_pushed_commit, "Last pushed"),
    ]
    .iter()
    .filter_map(|(v, name)| text2(v).map(|v| format!("  {name}: {v}")))
    .chain((sync.dirty_flag == Some(true)).then(|| "  Dirty: yes".to_string()))
    .chain(text2(&sync.sync_state).map(|s| format!("  Sync state: {s}")))
    .collect();
    if !sync_lines.is_empty() {
        line("Sync:".to_string());
        for l in sync_lines {
            line(l);
        }
    }
    let policy = &payload.policy;
    let or = |s: &str, d: &'static str| {
        if s.is_empty() {
            d.to_string()
        } else {
            s.to_string()
        }
    };
    line("Policy:".to_string());
    line(format!(
        "  Prerequisite: {}",
        or(&policy.prerequisite_policy, "none")
    ));
    line(format!(
        "  Validation: {}",
        or(&policy.validation_policy, "none")
    ));
    line(format!(
        "  Review (clean_milestone_pr): {}",
        or(&policy.review_policy.clean_milestone_pr, "auto")
    ));
    if policy.source.as_deref() == Some("runtime_override") {
        line("  Source: runtime override file".to_string());
    }
    line("Per-milestone:".to_string());
    for item in &summary.per_milestone {
        line(format!(
            "  - [{}] {} (index {})",
            or(&item.status, "pending"),
            or(&item.label, "?"),
            item.index
        ));
    }
    out
}

/// Cloud-side lines an operator wants next to the summary: effective status, runner, log.
pub fn cloud_lines(payload: &ChainStatus) -> String {
    let runner = &payload.runner;
    let logs = &payload.logs;
    let mut out = format!(
        "Effective status: {}\nRunner: {} (session {})\n",
        payload.effective_status,
        runner.status.map(|l| l.as_str()).unwrap_or("unknown"),
        text(&runner.session)
            .or_else(|| text(&payload.resolved_session))
            .unwrap_or("?"),
    );
    if let Some(path) = text(&logs.path) {
        match (logs.mtime().filter(|m| !m.is_empty()), logs.size()) {
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
/// addressed by the deploy dir itself, so the check does not apply to them. `provider_identity`
/// is what cloud.yaml names now (`supervisor::markers::provider_identity`; none without one).
pub fn provider_consistency(
    provider: &str,
    provider_identity: Option<&str>,
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
    let marker_identity = marker.provider_identity.as_deref();
    // Identities are shown as JSON (`"agent"`, or `null` for none).
    let shown = |id: Option<&str>| serde_json::to_string(&id).unwrap_or_default();
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
    if marker_identity.is_some() && marker_identity != provider_identity {
        return ProviderConsistency::Mismatch {
            reason: Some(format!(
                "the last chain was launched on railway {} but cloud.yaml now targets {}; {fix}",
                shown(marker_identity),
                shown(provider_identity)
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
    use serde_json::{Value, json};

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
        let p = serde_json::to_value(status_payload(
            obs,
            &spec(),
            &ProviderConsistency::NotApplicable,
            "megaplan-chain",
            "/workspace/app",
        ))
        .unwrap();
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
            obs,
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
        let p: ChainStatus = serde_json::from_value(json!({
            "effective_status": "running",
            "summary": summary_dict(&spec, &ChainState::default()),
            "policy": {"prerequisite_policy": "required", "validation_policy": "none", "review_policy": {"clean_milestone_pr": "manual"}, "source": "runtime_override"},
        }))
        .unwrap();
        assert_eq!(
            summary_text(&p),
            "Current milestone: none\nCompleted: none\nRemaining: m1\nBase branch: main\nPolicy:\n  Prerequisite: required\n  Validation: none\n  Review (clean_milestone_pr): manual\n  Source: runtime override file\nPer-milestone:\n  - [pending] m1 (index 0)\n"
        );
    }

    #[test]
    fn cloud_lines_show_status_runner_and_log() {
        let obs = observation(mid_chain_state(), "dead", "planned");
        let p = status_payload(
            obs,
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
        let id = Some("agent");
        let m = |v: Value| LastChainMarker::read(v);
        let status = |c: ProviderConsistency| c.as_str();
        assert_eq!(
            status(provider_consistency("ssh", None, None)),
            "not_applicable"
        );
        assert_eq!(
            status(provider_consistency(
                "local",
                None,
                Some(&m(json!({"provider": "railway"})))
            )),
            "not_applicable"
        );
        assert_eq!(status(provider_consistency("railway", id, None)), "unknown");
        assert_eq!(
            status(provider_consistency(
                "railway",
                id,
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
            id,
            Some(&m(json!({"provider": "ssh", "provider_identity": null}))),
        ));
        assert!(r.contains("provider 'ssh'"), "{r}");
        let r = reason(provider_consistency(
            "railway",
            id,
            Some(&m(
                json!({"provider": "railway", "provider_identity": {"service": "other"}}),
            )),
        ));
        assert!(r.contains("\"other\""), "{r}");
        assert!(
            r.contains("launched on railway \"other\" but cloud.yaml now targets \"agent\""),
            "{r}"
        );
        // A cloud.yaml naming no service is shown as `null`.
        let r = reason(provider_consistency(
            "railway",
            None,
            Some(&m(
                json!({"provider": "railway", "provider_identity": "agent"}),
            )),
        ));
        assert!(r.contains("now targets null"), "{r}");
        assert_eq!(
            status(provider_consistency(
                "railway",
                id,
                Some(&m(json!({"remote_spec": "/x"})))
            )),
            "unknown"
        );
    }

    /// The payload and the stderr block `status --chain` wrote before the payload was typed
    /// (produced with that code from this observation): the typed builder writes the same bytes.
    #[test]
    fn the_typed_payload_is_the_one_written_before() {
        let state = json!({
            "current_milestone_index": 1, "current_plan_name": "plan-m2",
            "last_state": "awaiting_pr_merge", "pr_number": 42,
            "completed": [{"label": "m1", "plan": "p1", "status": "done"}],
            "branch_head": "abc123", "pr_head": "def456", "last_pushed_commit": "abc123",
            "dirty_flag": true, "sync_state": "stale", "extra_repos": ["/workspace/lib"],
            "custom": "kept"
        });
        let obs = json!({
            "version": 1,
            "spec_path": "/workspace/app/chain.yaml",
            "resolved_spec": "/workspace/app/chain.yaml",
            "state_path": "/workspace/app/.megaplan/plans/.chains/chain-880bd6e04632.json",
            "policy_path": "/workspace/app/.megaplan/plans/.chains/chain-880bd6e04632.runtime_policy.json",
            "spec_text": "seed:\n  plan: seed-plan\nmilestones:\n  - {label: m1, idea: a.md, branch: megaplan/m1}\n  - {label: m2, idea: b.md, branch: megaplan/m2}\n  - {label: m3, idea: c.md}\n",
            "state_text": state.to_string(),
            "policy_text": "{\"validation_policy\": \"required\"}",
            "plan_status": {"status": "running", "plan": "plan-m2", "source": "megaplan status", "next_step": "execute"},
            "runner": {"status": "alive", "session": "megaplan-chain", "pid": 4242, "source": "process", "target_session": "megaplan-chain"},
            "logs": {"path": "/workspace/app/.megaplan/cloud-chain.log", "exists": true, "mtime": "2026-06-01T10:00:00Z", "size": 12},
            "sessions": [],
            "sync_refresh": {"status": "skipped", "reason": "a chain driver is alive (pid 4242); the core takes no lock on the state file"},
            "pr_probe": "open",
            "pr_probe_error": "gh: rate limited",
        });
        let obs = parse_observation(&format!("{OBSERVATION_PREFIX}{obs}\n")).unwrap();
        let spec = obs.spec.clone().unwrap();
        let mut p = status_payload(
            obs,
            &spec,
            &ProviderConsistency::Unknown {
                reason: Some("the last-chain marker does not record a provider".into()),
            },
            "megaplan-chain",
            "/workspace/app",
        );
        p.spec_source = Some("last_chain marker".into());
        crate::supervisor::stall::annotate(
            &mut p,
            chrono::DateTime::parse_from_rfc3339("2026-06-01T11:00:00Z")
                .unwrap()
                .with_timezone(&chrono::Utc),
            std::time::Duration::from_secs(1800),
        );
        let text = serde_json::to_string(&megaplan_cloud_api::report::to_sorted_value(&p).unwrap())
            .unwrap();
        assert_eq!(
            text,
            include_str!("../../../api/src/status_payload.json").trim_end()
        );
        assert_eq!(
            summary_text(&p) + &cloud_lines(&p),
            include_str!("summary_text.txt")
        );
    }
}
