//! The `status --chain` payload, typed from the runner's observation to the terminal: what the
//! chain is, where it stands (summary), its sync, PR, log, runner, policy and what the stall
//! check said. Built by the daemon (`chain::summary`), read by the client's renderer. The chain
//! state is the core's own object and is kept whole (`chain_state`); fields of another version
//! land in `rest`. The JSON is the one written before the type existed, keys sorted; the test
//! below pins it byte for byte.

use crate::report::{
    LogsInfo, PrInfo, ProviderConsistency, ReportedStatus, RunnerInfo, SyncInfo, SyncRefresh,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `status --chain`'s result document. Fields in sorted order (the JSON's order).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChainStatus {
    /// The core's chain state as it shows it (`to_dict`): unknown fields kept.
    #[serde(default)]
    pub chain_state: Map<String, Value>,
    pub effective_status: ReportedStatus,
    #[serde(default)]
    pub logs: LogsInfo,
    #[serde(default)]
    pub milestone_count: u32,
    /// The current plan's status as the core reports it.
    #[serde(default)]
    pub plan_status: PlanStatus,
    /// The policies in force (`source` says whether an override applies).
    #[serde(default)]
    pub policy: ChainPolicy,
    #[serde(default)]
    pub pr: PrInfo,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_consistency: Option<ProviderConsistency>,
    #[serde(default)]
    pub resolved_context: ResolvedContext,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_session: Option<String>,
    /// The spec path as the runner resolves it (symlinks followed there).
    #[serde(default)]
    pub resolved_spec: String,
    #[serde(default)]
    pub resolved_workspace: String,
    #[serde(default)]
    pub runner: RunnerInfo,
    #[serde(default)]
    pub seed_plan: Option<String>,
    /// The chain spec path on the runner.
    #[serde(default)]
    pub spec: String,
    /// Where the spec path came from (`--remote-spec`, `last_chain marker`, `cloud.yaml chain.spec`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_source: Option<String>,
    #[serde(default)]
    pub stall_after_secs: u64,
    /// Set by the stall check: a live runner whose log has not grown for `stall_after_secs`.
    #[serde(default)]
    pub stalled: bool,
    #[serde(default)]
    pub stalled_for_secs: Option<i64>,
    /// The chain state file the runner derived.
    #[serde(default)]
    pub state_file: String,
    #[serde(default = "yes")]
    pub success: bool,
    #[serde(default)]
    pub summary: ChainSummary,
    #[serde(default)]
    pub sync: SyncInfo,
    /// The sync refresh's result; absent when not run (`status --chain` does not run it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_refresh: Option<SyncRefresh>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Fields of another version, kept as written.
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

fn yes() -> bool {
    true
}

/// The core's `format_chain_status` summary: where the chain stands milestone by milestone.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChainSummary {
    #[serde(default)]
    pub base_branch: Option<String>,
    #[serde(default)]
    pub completed: Vec<MilestoneRef>,
    #[serde(default)]
    pub current_milestone: Option<MilestoneRef>,
    #[serde(default)]
    pub current_plan_name: Option<String>,
    #[serde(default)]
    pub last_state: Option<String>,
    #[serde(default)]
    pub per_milestone: Vec<MilestoneEntry>,
    /// The spec's own policies (no override applied, no `source`).
    #[serde(default)]
    pub policy: ChainPolicy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pr_number: Option<i64>,
    /// Written (possibly `null`) exactly when `pr_number` is.
    #[serde(
        default,
        skip_serializing_if = "crate::report::absent",
        deserialize_with = "crate::report::present"
    )]
    pub pr_state: Option<Option<String>>,
    #[serde(default)]
    pub remaining: Vec<MilestoneRef>,
    #[serde(default)]
    pub seed_plan: Option<String>,
    #[serde(default)]
    pub sync: SyncInfo,
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// A milestone named by label and index (0-based, as the spec lists them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MilestoneRef {
    /// The milestone's branch (only on `current_milestone`, when the spec names one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    pub index: u32,
    pub label: String,
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// One milestone and its status word (`completed`, `in_progress`, `pending`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MilestoneEntry {
    pub index: u32,
    pub label: String,
    pub status: String,
}

/// The chain's policies: `prerequisite_policy`, `validation_policy`, `review_policy`, and in
/// the effective ones the `source` (`chain_yaml` or `runtime_override`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainPolicy {
    #[serde(default)]
    pub prerequisite_policy: String,
    #[serde(default)]
    pub review_policy: ReviewPolicy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default)]
    pub validation_policy: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReviewPolicy {
    #[serde(default)]
    pub clean_milestone_pr: String,
}

/// The current plan's status as the observer read it (`megaplan status`, else the plan's own
/// state file): `status` the core's word (`missing`, `unavailable` when it could not tell),
/// `source` where it came from, `reason` why it fell back.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_step: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

/// The repositories the chain works in besides the workspace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedContext {
    #[serde(default)]
    pub extra_repos: Vec<String>,
}

/// `status --sessions` / `chains`: the megaplan-chain* sessions on one runner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChainSessions {
    pub sessions: Vec<ChainSession>,
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// One tmux session and its session marker (the spec it drives, when it started).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChainSession {
    pub session: String,
    #[serde(default)]
    pub alive: bool,
    /// `present`, `missing` or `invalid`.
    #[serde(default)]
    pub marker_status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_spec: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// `chain`: the chain just launched (or found already running).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChainLaunched {
    pub session: String,
    // Absent fields stay absent when the daemon writes this answer through the type.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub already_running: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_alive: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_spec: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub milestones: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_milestone: Option<String>,
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

impl ChainStatus {
    pub fn is_stalled(&self) -> bool {
        self.stalled
    }

    /// The PR the chain waits on: the state's number, else the summary's.
    pub fn pr_number(&self) -> Option<i64> {
        self.pr.pr_number.flatten().or(self.summary.pr_number)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The payload `status --chain` wrote before it was typed (a live runner, a stalled log, a
    /// runtime override, a skipped sync refresh, a probe warning), produced with that code.
    const PAYLOAD: &str = include_str!("status_payload.json");

    #[test]
    fn the_payload_re_serializes_byte_for_byte() {
        let s: ChainStatus = serde_json::from_str(PAYLOAD.trim_end()).unwrap();
        assert_eq!(s.effective_status.as_str(), "awaiting_pr_merge");
        assert_eq!(s.pr_number(), Some(42));
        assert_eq!(s.summary.current_milestone.as_ref().unwrap().label, "m2");
        assert_eq!(s.summary.per_milestone[0].status, "completed");
        assert_eq!(s.logs.mtime(), Some("2026-06-01T10:00:00Z"));
        assert_eq!(s.runner.session.as_deref(), Some("megaplan-chain"));
        assert_eq!(s.pr.pr_state, Some(None));
        assert_eq!(s.plan_status.next_step.as_deref(), Some("execute"));
        assert_eq!(s.policy.source.as_deref(), Some("runtime_override"));
        assert!(s.is_stalled() && s.stalled_for_secs == Some(3600));
        assert!(s.rest.is_empty(), "every field is named: {:?}", s.rest);
        let back = serde_json::to_string(&crate::report::to_sorted_value(&s).unwrap()).unwrap();
        assert_eq!(back, PAYLOAD.trim_end());
    }

    #[test]
    fn a_trimmed_payload_of_another_version_still_reads() {
        let s: ChainStatus = serde_json::from_str(
            r#"{"effective_status":"paused","future":{"a":1},"summary":{"per_milestone":[]}}"#,
        )
        .unwrap();
        assert_eq!(s.effective_status.as_str(), "paused");
        assert_eq!(s.rest["future"]["a"], 1);
        assert!(s.success && !s.is_stalled());
    }
}
