//! The `status --chain` payload, typed where a person's view reads it: what the chain is,
//! where it stands, its runner, log and PR, and what the stall check said. Fields this type does
//! not name (the chain state, policy, sync, plan status, ...) are kept whole in `rest`, so the
//! document a script reads is the daemon's, unchanged.

use crate::report::{LogsInfo, PrInfo, ProviderConsistency, ReportedStatus, RunnerInfo};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `status --chain`'s result document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChainStatus {
    /// The chain spec path on the runner.
    #[serde(default)]
    pub spec: String,
    pub effective_status: ReportedStatus,
    #[serde(default)]
    pub milestone_count: u32,
    #[serde(default)]
    pub summary: ChainSummary,
    #[serde(default)]
    pub runner: RunnerInfo,
    #[serde(default)]
    pub logs: LogsInfo,
    #[serde(default)]
    pub pr: PrInfo,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_consistency: Option<ProviderConsistency>,
    /// Set by the stall check: a live runner whose log has not grown for `stall_after_secs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stalled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stalled_for_secs: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stall_after_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_session: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// The core's `format_chain_status` summary: where the chain stands milestone by milestone.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChainSummary {
    #[serde(default)]
    pub current_milestone: Option<MilestoneRef>,
    #[serde(default)]
    pub completed: Vec<MilestoneRef>,
    #[serde(default)]
    pub remaining: Vec<MilestoneRef>,
    #[serde(default)]
    pub per_milestone: Vec<MilestoneEntry>,
    #[serde(default)]
    pub current_plan_name: Option<String>,
    #[serde(default)]
    pub last_state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pr_number: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pr_state: Option<String>,
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// A milestone named by label and index (0-based, as the spec lists them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MilestoneRef {
    pub label: String,
    pub index: u32,
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// One milestone and its status word (`completed`, `in_progress`, `pending`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MilestoneEntry {
    pub label: String,
    pub index: u32,
    pub status: String,
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
        self.stalled == Some(true)
    }

    /// The PR the chain waits on: the state's number, else the summary's.
    pub fn pr_number(&self) -> Option<i64> {
        self.pr.pr_number.flatten().or(self.summary.pr_number)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A payload as the daemon writes it (trimmed), read and written back unchanged.
    const PAYLOAD: &str = r#"{"chain_state":{"current_milestone_index":1},"effective_status":"awaiting_pr_merge","logs":{"exists":true,"mtime":"2026-12-01T11:59:20Z","path":"/w/.megaplan/cloud-chain.log","size":120},"milestone_count":2,"policy":{"prerequisite_policy":"none"},"pr":{"merge_probe":"open","pr_head":"abc","pr_number":7,"pr_state":"open"},"provider_consistency":{"status":"not_applicable"},"resolved_session":"megaplan-chain","runner":{"session":"megaplan-chain","status":"alive"},"spec":"/w/chain.yaml","stall_after_secs":1800,"stalled":false,"stalled_for_secs":null,"success":true,"summary":{"completed":[{"index":0,"label":"m1"}],"current_milestone":{"index":1,"label":"m2"},"current_plan_name":"plan-m2","last_state":"awaiting_pr_merge","per_milestone":[{"index":0,"label":"m1","status":"completed"},{"index":1,"label":"m2","status":"in_progress"}],"pr_number":7,"pr_state":"open","remaining":[{"index":1,"label":"m2"}]}}"#;

    #[test]
    fn the_payload_reads_typed_and_keeps_every_field() {
        let s: ChainStatus = serde_json::from_str(PAYLOAD).unwrap();
        assert_eq!(s.effective_status.as_str(), "awaiting_pr_merge");
        assert_eq!(s.pr_number(), Some(7));
        assert_eq!(s.summary.current_milestone.as_ref().unwrap().label, "m2");
        assert_eq!(s.summary.per_milestone[0].status, "completed");
        assert_eq!(s.logs.mtime(), Some("2026-12-01T11:59:20Z"));
        let back: Value = serde_json::to_value(&s).unwrap();
        let orig: Value = serde_json::from_str(PAYLOAD).unwrap();
        // `stalled_for_secs: null` is the one field written back absent.
        let mut orig = orig;
        orig.as_object_mut().unwrap().remove("stalled_for_secs");
        assert_eq!(back, orig);
    }
}
