//! The tick report: what one supervise tick observed, decided and did. Written by the daemon
//! (stored in SQLite, printed by `supervise --chain`, streamed by `watch`) and read back by the
//! notifications, `explain` and the client.
//!
//! The JSON is the one every earlier version of this project stored: the same field names,
//! optional fields omitted (or written as `null`) exactly as before, and keys in sorted order.
//! Serialize a report through [`to_sorted_value`] (the store and the wire do) so fields kept
//! in a flattened map come out in their sorted place too. Words this version does not know
//! (a report another version wrote) are kept as written in an `Other` variant; the daemon's
//! decisions never produce them and never match on strings.

use serde::de::Deserializer;
use serde::ser::{self, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt;
use std::str::FromStr;

/// A closed vocabulary serialized as its word. `Other` keeps a word this version does not
/// know, so an old report re-serializes unchanged.
macro_rules! word_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $word:literal,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
            /// A word written by another version of the daemon, kept as written.
            Other(String),
        }

        impl $name {
            pub fn as_str(&self) -> &str {
                match self {
                    $($name::$variant => $word,)*
                    $name::Other(s) => s.as_str(),
                }
            }

            /// Every known word, in declaration order.
            pub const KNOWN: &'static [&'static str] = &[$($word,)*];
        }

        impl FromStr for $name {
            type Err = std::convert::Infallible;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Ok(match s {
                    $($word => $name::$variant,)*
                    other => $name::Other(other.to_string()),
                })
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Ok(s.parse().unwrap_or_else(|e: std::convert::Infallible| match e {}))
            }
        }
    };
}

word_enum! {
    /// The report's `event`.
    TickEvent {
        /// Observed; nothing to do or nothing done (also a dry run).
        Tick => "supervisor_tick",
        /// A rule refused to act (`refused_reason` says which).
        Blocked => "supervisor_blocked",
        /// The PR was merged and the next milestone was started.
        Advanced => "supervisor_advanced",
        /// Stale bookkeeping with a dead runner: the runner was restarted.
        Restarted => "supervisor_restarted",
        /// The tick could not observe, or its mutation failed.
        Error => "supervisor_error",
    }
}

word_enum! {
    /// The report's `next_action`.
    NextAction {
        Noop => "noop",
        Done => "done",
        Blocked => "blocked",
        Advance => "advance",
        Restart => "restart",
        None => "none",
    }
}

word_enum! {
    /// The report's `rule`: which rule of the supervise decision (`chain::decide` in the
    /// daemon) matched, in the order they are checked. `explain` reads it; a pause or a dry
    /// run keeps the rule that matched (they are their own fields). Absent in reports of
    /// earlier versions and of ticks that failed before deciding.
    Rule {
        /// The observation failed: a tick that cannot see the runner never acts.
        ObservationFailed => "observation_failed",
        /// The last chain was launched with another provider or target.
        ProviderMismatch => "provider_mismatch",
        /// The provider cannot run commands on the runner.
        NoExec => "no_exec",
        Running => "running",
        Complete => "complete",
        HumanPrerequisite => "human_prerequisite",
        QualityGate => "quality_gate",
        /// Awaiting a PR merge that the probe did not confirm.
        AwaitingMerge => "awaiting_merge",
        MergedDeadRunner => "merged_dead_runner",
        MergedLiveRunner => "merged_live_runner",
        MergedUnknownRunner => "merged_unknown_runner",
        StaleDeadRunner => "stale_dead_runner",
        StaleLiveRunner => "stale_live_runner",
        StaleUnknownRunner => "stale_unknown_runner",
        /// The mutation script found the session marker naming another chain (exit 17).
        OtherChainSession => "other_chain_session",
        /// The mutation script found the runner alive after all (exit 18).
        LiveAtMutation => "live_at_mutation",
        /// The mutation script failed or could not be sent.
        MutationFailed => "mutation_failed",
        /// The runner's launch gate holds a newer fencing token: another daemon or a manual
        /// `chain` owns the chain.
        FencedOff => "fenced_off",
        /// The runner's launch gate stopped the launch: a preflight check failed.
        PreflightFailed => "preflight_failed",
        /// The driver died again after each recent restart: no more launches until a person
        /// clears the quarantine.
        Quarantined => "quarantined",
        /// A restart waits: restarts back off exponentially (with jitter) before a quarantine.
        RestartBackoff => "restart_backoff",
    }
}

impl Rule {
    /// The rule in words: the condition and what the supervisor does about it.
    pub fn text(&self) -> String {
        match self {
            Rule::ObservationFailed => {
                "the observation failed: a tick that cannot see the runner never acts"
            }
            Rule::ProviderMismatch => {
                "provider consistency mismatch: the last chain was launched elsewhere, so nothing is touched"
            }
            Rule::NoExec => {
                "the provider cannot run commands on the runner: nothing is probed or changed"
            }
            Rule::Running => "running → noop (a running chain is left alone)",
            Rule::Complete => "complete → done",
            Rule::HumanPrerequisite => "human_prerequisite → blocked until a person resolves it",
            Rule::QualityGate => "quality_gate → blocked until a person resolves or accepts it",
            Rule::AwaitingMerge => "awaiting_pr_merge, PR not merged → blocked until it is merged",
            Rule::MergedDeadRunner => "awaiting_pr_merge, PR merged, runner dead → advance",
            Rule::MergedLiveRunner => {
                "awaiting_pr_merge, PR merged, runner alive → blocked (only a confirmed-dead runner is advanced)"
            }
            Rule::MergedUnknownRunner => {
                "awaiting_pr_merge, PR merged, runner unknown → blocked (only a confirmed-dead runner is advanced)"
            }
            Rule::StaleDeadRunner => "stale_bookkeeping, runner dead → restart",
            Rule::StaleLiveRunner => {
                "stale_bookkeeping, runner alive → blocked (a live or unprobeable runner is never restarted)"
            }
            Rule::StaleUnknownRunner => {
                "stale_bookkeeping, runner unknown → blocked (a live or unprobeable runner is never restarted)"
            }
            Rule::OtherChainSession => {
                "the session marker names another chain → blocked (another chain's session is never touched)"
            }
            Rule::LiveAtMutation => {
                "the runner was alive when the mutation ran → blocked (a live runner is never killed or replaced)"
            }
            Rule::MutationFailed => {
                "the mutation failed → error (the next tick observes again)"
            }
            Rule::FencedOff => {
                "the runner's gate holds a newer fencing token → blocked (one driver per chain: another daemon or a manual chain owns it)"
            }
            Rule::Quarantined => {
                "quarantined after repeated crashes → blocked until `unquarantine` (or `resume`)"
            }
            Rule::RestartBackoff => {
                "restarted recently → the next restart waits (exponential back-off with jitter)"
            }
            Rule::PreflightFailed => {
                "the preflight before the launch failed → blocked until the named check passes"
            }
            Rule::Other(word) => return format!("{word} (a rule of another version)"),
        }
        .to_string()
    }
}

/// The status the supervisor acts on: the one classification of the observed chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EffectiveStatus {
    Complete,
    AwaitingPrMerge,
    Running,
    StaleBookkeeping,
    HumanPrerequisite,
    QualityGate,
}

impl EffectiveStatus {
    pub const ALL: [EffectiveStatus; 6] = [
        EffectiveStatus::Complete,
        EffectiveStatus::AwaitingPrMerge,
        EffectiveStatus::Running,
        EffectiveStatus::StaleBookkeeping,
        EffectiveStatus::HumanPrerequisite,
        EffectiveStatus::QualityGate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EffectiveStatus::Complete => "complete",
            EffectiveStatus::AwaitingPrMerge => "awaiting_pr_merge",
            EffectiveStatus::Running => "running",
            EffectiveStatus::StaleBookkeeping => "stale_bookkeeping",
            EffectiveStatus::HumanPrerequisite => "human_prerequisite",
            EffectiveStatus::QualityGate => "quality_gate",
        }
    }

    /// The statuses that wait for a person.
    pub fn is_waiting(self) -> bool {
        matches!(
            self,
            EffectiveStatus::HumanPrerequisite
                | EffectiveStatus::QualityGate
                | EffectiveStatus::AwaitingPrMerge
        )
    }
}

impl fmt::Display for EffectiveStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The report's `effective_status`: a classification, `unknown` when the tick could not
/// classify (it could not observe, or the provider cannot run commands), or a word of another
/// version kept as written.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ReportedStatus {
    Classified(EffectiveStatus),
    Unknown,
    Other(String),
}

impl ReportedStatus {
    pub fn as_str(&self) -> &str {
        match self {
            ReportedStatus::Classified(s) => s.as_str(),
            ReportedStatus::Unknown => "unknown",
            ReportedStatus::Other(s) => s.as_str(),
        }
    }

    pub fn classified(&self) -> Option<EffectiveStatus> {
        match self {
            ReportedStatus::Classified(s) => Some(*s),
            _ => None,
        }
    }
}

impl From<EffectiveStatus> for ReportedStatus {
    fn from(s: EffectiveStatus) -> Self {
        ReportedStatus::Classified(s)
    }
}

impl FromStr for ReportedStatus {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "unknown" {
            return Ok(ReportedStatus::Unknown);
        }
        Ok(EffectiveStatus::ALL
            .iter()
            .find(|k| k.as_str() == s)
            .map(|k| ReportedStatus::Classified(*k))
            .unwrap_or_else(|| ReportedStatus::Other(s.to_string())))
    }
}

impl fmt::Display for ReportedStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ReportedStatus {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ReportedStatus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(s.parse()
            .unwrap_or_else(|e: std::convert::Infallible| match e {}))
    }
}

/// What the runner probe (`tmux has-session`, or a process driving the chain) said.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Liveness {
    Alive,
    Dead,
    /// The runner could not be probed (tmux missing, probe failed).
    Unknown,
}

/// Read leniently like [`Liveness::from_status`]: a word another version of the observer (or
/// the original's `connected`) sends must not make the whole observation unreadable.
impl<'de> Deserialize<'de> for Liveness {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let word = String::deserialize(d)?;
        Ok(Liveness::from_status(&word))
    }
}

impl Liveness {
    pub fn as_str(self) -> &'static str {
        match self {
            Liveness::Alive => "alive",
            Liveness::Dead => "dead",
            Liveness::Unknown => "unknown",
        }
    }

    /// Read a runner status word; "connected" counts as alive like in the original.
    pub fn from_status(status: &str) -> Liveness {
        match status {
            "alive" | "connected" => Liveness::Alive,
            "dead" => Liveness::Dead,
            _ => Liveness::Unknown,
        }
    }
}

impl fmt::Display for Liveness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Does the last-chain marker belong to the provider cloud.yaml names now?
/// `{"status": "consistent" | "mismatch" | "unknown" | "not_applicable", "reason"?: ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ProviderConsistency {
    Consistent,
    /// The last chain was launched with another provider or target: nothing is touched.
    Mismatch {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    Unknown {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// Only railway can drift; local and ssh runners are addressed by the deploy dir itself.
    NotApplicable,
}

impl ProviderConsistency {
    pub fn as_str(&self) -> &'static str {
        match self {
            ProviderConsistency::Consistent => "consistent",
            ProviderConsistency::Mismatch { .. } => "mismatch",
            ProviderConsistency::Unknown { .. } => "unknown",
            ProviderConsistency::NotApplicable => "not_applicable",
        }
    }
}

/// The report's `runner`: what the runner probe (`runner_probe` in observe.py) said, with its
/// `status` read as a [`Liveness`]. A driver process found alive adds `pid`, `source:
/// "process"` and the `target_session` asked about; a probe that could not tell gives a
/// `reason`; a gone session the tmux `detail`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunnerInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Liveness>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_session: Option<String>,
    /// The driver's lease as the observer read it on the runner (issue 24 item 2); absent
    /// for a chain launched before leases existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<RunnerLease>,
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// The runner's `lease`: its age and TTL on the runner's clock, and `mismatch` when it is bound
/// to another chain (then age and TTL do not count).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunnerLease {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age_secs: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<f64>,
    #[serde(default)]
    pub mismatch: Option<String>,
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// The report's `pr`: `pr_number`, `pr_state`, `pr_head` of the chain state (written, possibly
/// `null`, when the chain was observed) and, when probed, `merge_probe` (the lowercased `gh pr
/// view` state).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PrInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merge_probe: Option<String>,
    #[serde(default, skip_serializing_if = "absent", deserialize_with = "present")]
    pub pr_head: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "absent", deserialize_with = "present")]
    pub pr_number: Option<Option<i64>>,
    #[serde(default, skip_serializing_if = "absent", deserialize_with = "present")]
    pub pr_state: Option<Option<String>>,
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// The report's `logs`: the chain log as observed (`path`, `exists`, `mtime`, `size`, and the
/// stat `error`) and the original tool's fields beside it (`workspace`, `plan_log`,
/// `agent_log`, `chain_log`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LogsInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_log: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain_log: Option<ChainLogCompat>,
    /// Why the log could not be stat'ed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exists: Option<bool>,
    /// RFC 3339 on the runner's clock; present as `null` when the log is missing.
    #[serde(default, skip_serializing_if = "absent", deserialize_with = "present")]
    pub mtime: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The current plan's log (`null` when no plan runs).
    #[serde(default, skip_serializing_if = "absent", deserialize_with = "present")]
    pub plan_log: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "absent", deserialize_with = "present")]
    pub size: Option<Option<u64>>,
    /// The log's last lines (at most 12 of at most 300 characters), redacted; absent in reports
    /// of earlier versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<String>,
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// The original tool's `chain_log`: `mtime` in epoch seconds and `size`, or `status:
/// "unavailable"` when the log cannot be stat'ed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainLogCompat {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime: Option<i64>,
    #[serde(default)]
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

impl LogsInfo {
    pub fn mtime(&self) -> Option<&str> {
        self.mtime.as_ref().and_then(|m| m.as_deref())
    }
    pub fn size(&self) -> Option<u64> {
        self.size.flatten()
    }
}

/// The git sync facts of the chain state (`branch_head`, `pr_head`, `last_pushed_commit`,
/// `dirty_flag`, `sync_state`): all written (strings or `null`) when the chain was observed,
/// none (`{}`) in a report of a tick that could not observe.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SyncInfo {
    #[serde(default, skip_serializing_if = "absent", deserialize_with = "present")]
    pub branch_head: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dirty_flag: Option<bool>,
    #[serde(default, skip_serializing_if = "absent", deserialize_with = "present")]
    pub last_pushed_commit: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "absent", deserialize_with = "present")]
    pub pr_head: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "absent", deserialize_with = "present")]
    pub sync_state: Option<Option<String>>,
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

impl SyncInfo {
    /// The five facts of an observed chain state.
    pub fn observed(
        branch_head: Option<String>,
        pr_head: Option<String>,
        last_pushed_commit: Option<String>,
        dirty_flag: bool,
        sync_state: Option<String>,
    ) -> SyncInfo {
        SyncInfo {
            branch_head: Some(branch_head),
            dirty_flag: Some(dirty_flag),
            last_pushed_commit: Some(last_pushed_commit),
            pr_head: Some(pr_head),
            sync_state: Some(sync_state),
            rest: Map::new(),
        }
    }
}

/// The sync refresh's result (`_capture_sync_state` on the runner): `status` `ok`, `failed`
/// or `skipped`, with the `reason` of the last two.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncRefresh {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub status: String,
}

/// Where the chain stood when the tick observed it: milestone `number` of `count` (1-based;
/// 0 before the first milestone starts, `count` once the chain is complete) and its label.
/// Read by the fleet view and `status --chain`; absent in reports of earlier versions and
/// when the tick could not read the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainPosition {
    pub number: u32,
    pub count: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

impl ChainPosition {
    /// From the chain state's `current_milestone_index` (-1 before the start, `count` when
    /// done) and the spec's milestone labels.
    pub fn of(current_index: i64, labels: &[&str]) -> ChainPosition {
        let count = u32::try_from(labels.len()).unwrap_or(u32::MAX);
        let at = usize::try_from(current_index).ok();
        let number = match at {
            None => 0,
            Some(i) => u32::try_from(i.saturating_add(1))
                .unwrap_or(u32::MAX)
                .min(count),
        };
        let label = at
            .and_then(|i| labels.get(i.min(labels.len().saturating_sub(1))))
            .map(|l| (*l).to_string());
        ChainPosition {
            number,
            count,
            label,
        }
    }
}

/// A pause as stored (`megaplan-cloudctl pause`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pause {
    #[serde(default)]
    pub key: String,
    pub paused_by: String,
    #[serde(default)]
    pub reason: Option<String>,
    pub since: String,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// `skip_serializing_if` of a field read with [`present`]: write it unless it was absent.
pub fn absent<T>(field: &Option<Option<T>>) -> bool {
    field.is_none()
}

/// A field that may be present as `null`: `None` absent, `Some(None)` null.
pub fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// One supervise tick's report. Fields in sorted order; see the module doc.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TickReport {
    pub acted: bool,
    /// `supervise --chain --dry-run`: nothing was changed (written only when true).
    #[serde(default, skip_serializing_if = "is_false")]
    pub dry_run: bool,
    pub effective_status: ReportedStatus,
    /// The error code when the observation failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub event: TickEvent,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// The driver's tri-state liveness with its evidence (issue 24); absent in reports stored
    /// before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness: Option<crate::liveness::Liveness>,
    #[serde(default)]
    pub logs: LogsInfo,
    /// Where the chain stands after the tick: the milestone observed, or the next one when the
    /// tick advanced (added after the first stored reports: absent in theirs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub milestone: Option<ChainPosition>,
    pub next_action: NextAction,
    /// The pause in force (`null` when none); absent when the tick failed before reading it.
    #[serde(default, skip_serializing_if = "absent", deserialize_with = "present")]
    pub paused: Option<Option<Pause>>,
    #[serde(default)]
    pub pr: PrInfo,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_consistency: Option<ProviderConsistency>,
    /// Time spent waiting for a tick slot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued_ms: Option<u64>,
    /// The crash-loop quarantine in force, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantine: Option<crate::liveness::Quarantine>,
    /// Always written, `null` when nothing was refused.
    #[serde(default)]
    pub refused_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_round_trips: Option<u32>,
    /// The rule of the decision that matched (absent in earlier versions' reports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<Rule>,
    /// Imports of the megaplan core the tick caused on the runner (0 in steady state, when the
    /// resident observer answers); absent in reports stored before it was counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub core_starts: Option<u32>,
    #[serde(default)]
    pub runner: RunnerInfo,
    #[serde(default)]
    pub spec: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stall_after_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stalled: Option<bool>,
    #[serde(default, skip_serializing_if = "absent", deserialize_with = "present")]
    pub stalled_for_secs: Option<Option<i64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    pub success: bool,
    #[serde(default)]
    pub sync: SyncInfo,
    /// The sync refresh's result (`null` when not run); absent on a failed tick.
    #[serde(default, skip_serializing_if = "absent", deserialize_with = "present")]
    pub sync_refresh: Option<Option<SyncRefresh>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warnings: Option<Vec<String>>,
    /// Fields of another version's report, kept as written.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl TickReport {
    /// A `supervisor_error` report (the same shape as every tick report).
    pub fn error(reason: &str) -> TickReport {
        TickReport {
            acted: false,
            dry_run: false,
            effective_status: ReportedStatus::Unknown,
            error: None,
            event: TickEvent::Error,
            finished_at: None,
            liveness: None,
            logs: LogsInfo::default(),
            milestone: None,
            next_action: NextAction::None,
            paused: None,
            pr: PrInfo::default(),
            provider_consistency: None,
            queued_ms: None,
            quarantine: None,
            refused_reason: Some(reason.to_string()),
            remote_round_trips: None,
            rule: None,
            core_starts: None,
            runner: RunnerInfo::default(),
            spec: String::new(),
            stall_after_secs: None,
            stalled: None,
            stalled_for_secs: None,
            started_at: None,
            success: false,
            sync: SyncInfo::default(),
            sync_refresh: None,
            warnings: None,
            extra: Map::new(),
        }
    }

    pub fn is_stalled(&self) -> bool {
        self.stalled == Some(true)
    }

    pub fn stalled_for_secs(&self) -> Option<i64> {
        self.stalled_for_secs.flatten()
    }

    /// The pause in force when the tick ran.
    pub fn pause(&self) -> Option<&Pause> {
        self.paused.as_ref().and_then(Option::as_ref)
    }
}

/// `supervise tick: <event> | acted=<bool> | next_action=<action>[ | refused_reason=<why>]`:
/// the one-line summary `supervise --chain` prints on stderr.
impl fmt::Display for TickReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "supervisor tick: {} | acted={} | next_action={}",
            self.event, self.acted, self.next_action
        )?;
        if let Some(reason) = &self.refused_reason {
            write!(f, " | refused_reason={reason}")?;
        }
        Ok(())
    }
}

/// The JSON object of `t` with its keys in sorted order, flattened fields included: the form
/// stored in SQLite and sent on the wire.
pub fn to_sorted_value<T: Serialize>(t: &T) -> Result<Value, serde_json::Error> {
    serde_json::to_value(t)
}

/// `serialize_with` for fields whose JSON must come out with sorted keys.
pub fn serialize_sorted<T: Serialize, S: Serializer>(t: &T, s: S) -> Result<S::Ok, S::Error> {
    to_sorted_value(t).map_err(ser::Error::custom)?.serialize(s)
}

/// Read a stored report. A row no version of this type can read (it should not exist) still
/// loads: its JSON is kept whole in `extra` beside what its columns say.
pub fn read_stored(text: &str, fallback: impl FnOnce() -> TickReport) -> TickReport {
    match serde_json::from_str::<TickReport>(text) {
        Ok(r) => r,
        Err(_) => {
            let mut r = fallback();
            if let Ok(Value::Object(m)) = serde_json::from_str::<Value>(text) {
                r.extra = m;
            }
            r
        }
    }
}

/// Deserialize a report from a JSON value (e.g. a `supervise --chain` payload).
pub fn from_value(v: Value) -> Result<TickReport, String> {
    serde_json::from_value(v).map_err(|e| format!("not a tick report: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A report as `supervise --chain` stored it before the report was typed (an acting tick
    /// on a dead runner, produced with the previous code).
    const ACTED: &str = r#"{"acted":true,"effective_status":"stale_bookkeeping","event":"supervisor_restarted","finished_at":"2026-12-01T10:00:03.5+00:00","logs":{"chain_log":{"mtime":1764583200,"path":"/workspace/app/.megaplan/cloud-chain.log","size":12},"exists":true,"mtime":"2026-12-01T10:00:00Z","path":"/workspace/app/.megaplan/cloud-chain.log","plan_log":"/workspace/app/.megaplan/logs/latest.log","size":12,"workspace":"/workspace/app"},"next_action":"restart","paused":null,"pr":{"pr_head":null,"pr_number":null,"pr_state":null},"provider_consistency":{"status":"not_applicable"},"queued_ms":0,"refused_reason":null,"remote_round_trips":2,"runner":{"detail":"can't find session: megaplan-chain","session":"megaplan-chain","status":"dead"},"spec":"/workspace/app/chain.yaml","stall_after_secs":1800,"stalled":false,"stalled_for_secs":null,"started_at":"2026-12-01T10:00:00.1+00:00","success":true,"sync":{"branch_head":null,"dirty_flag":false,"last_pushed_commit":null,"pr_head":null,"sync_state":null},"sync_refresh":{"status":"ok"}}"#;

    /// A blocked tick with a PR probe, a pause and marker warnings.
    const BLOCKED: &str = r#"{"acted":false,"effective_status":"awaiting_pr_merge","event":"supervisor_blocked","finished_at":"2026-12-01T10:00:03+00:00","logs":{"exists":false,"mtime":null,"path":"/w/.megaplan/cloud-chain.log","size":null},"next_action":"blocked","paused":{"key":"0123456789abcdef","paused_by":"ops@box","reason":null,"since":"2026-12-01T09:00:00Z"},"pr":{"merge_probe":"open","pr_head":"def","pr_number":42,"pr_state":"open"},"provider_consistency":{"reason":"the last-chain marker does not record a provider","status":"unknown"},"queued_ms":3,"refused_reason":"awaiting PR merge (PR #42 state=open); supervisor will not advance until PR is merged","remote_round_trips":1,"runner":{"session":"megaplan-chain","status":"alive"},"spec":"/w/chain.yaml","stall_after_secs":1800,"stalled":true,"stalled_for_secs":4000,"started_at":"2026-12-01T10:00:00+00:00","success":true,"sync":{},"sync_refresh":null,"warnings":["ignoring the legacy marker /m: it is not valid JSON"]}"#;

    /// `tick::error_report` for a tick that hit its deadline (no timestamps, no consistency).
    const TIMED_OUT: &str = r#"{"acted":false,"effective_status":"unknown","event":"supervisor_error","logs":{},"next_action":"none","pr":{},"queued_ms":0,"refused_reason":"tick exceeded its deadline of 5s after 5s; its remote commands were killed","runner":{},"spec":"","success":false,"sync":{}}"#;

    /// A failed observation: `error` carries the code.
    const READ_FAILED: &str = r#"{"acted":false,"effective_status":"unknown","error":"provider_failed","event":"supervisor_error","finished_at":"2026-12-01T10:00:01+00:00","logs":{},"next_action":"none","pr":{},"queued_ms":0,"refused_reason":"chain status read failed: ssh: connect refused","remote_round_trips":1,"runner":{},"spec":"","started_at":"2026-12-01T10:00:00+00:00","success":false,"sync":{}}"#;

    /// A dry run: `dry_run` is written only when true.
    const DRY_RUN: &str = r#"{"acted":false,"dry_run":true,"effective_status":"stale_bookkeeping","event":"supervisor_tick","finished_at":"f","logs":{},"next_action":"restart","paused":null,"pr":{},"provider_consistency":{"reason":"the last chain was launched with provider 'ssh' but cloud.yaml now uses 'railway'","status":"mismatch"},"refused_reason":"dry run: the supervisor would restart (nothing was changed)","remote_round_trips":1,"runner":{"status":"unknown"},"spec":"/s","stall_after_secs":60,"stalled":false,"stalled_for_secs":null,"started_at":"s","success":true,"sync":{},"sync_refresh":null}"#;

    /// A restart as this version stores it: the rule that matched is recorded.
    const WITH_RULE: &str = r#"{"acted":true,"core_starts":0,"effective_status":"stale_bookkeeping","event":"supervisor_restarted","finished_at":"2026-12-04T10:00:01+00:00","logs":{},"milestone":{"count":3,"label":"m2","number":2},"next_action":"restart","paused":null,"pr":{"pr_head":null,"pr_number":null,"pr_state":null},"provider_consistency":{"status":"not_applicable"},"refused_reason":null,"remote_round_trips":2,"rule":"stale_dead_runner","runner":{"session":"megaplan-chain","status":"dead"},"spec":"/w/chain.yaml","stall_after_secs":1800,"stalled":false,"stalled_for_secs":null,"started_at":"2026-12-04T10:00:00+00:00","success":true,"sync":{"branch_head":null,"dirty_flag":false,"last_pushed_commit":null,"pr_head":null,"sync_state":null},"sync_refresh":{"status":"ok"}}"#;

    #[test]
    fn the_rule_is_stored_and_read_back() {
        let r = round_trip(WITH_RULE);
        assert_eq!(r.rule, Some(Rule::StaleDeadRunner));
        assert!(r.rule.unwrap().text().ends_with("→ restart"));
        let r = round_trip(ACTED);
        assert_eq!(r.rule, None, "absent in earlier reports");
        for w in Rule::KNOWN {
            let rule: Rule = w.parse().unwrap();
            assert!(!matches!(rule, Rule::Other(_)), "{w}");
            assert!(!rule.text().contains("another version"), "{w}");
        }
        assert_eq!(
            "wait_for_ci".parse::<Rule>().unwrap().text(),
            "wait_for_ci (a rule of another version)"
        );
    }

    fn round_trip(text: &str) -> TickReport {
        let r: TickReport = serde_json::from_str(text).unwrap();
        let back = serde_json::to_string(&to_sorted_value(&r).unwrap()).unwrap();
        assert_eq!(back, text, "re-serialized differently");
        r
    }

    #[test]
    fn todays_reports_re_serialize_byte_for_byte() {
        let r = round_trip(ACTED);
        assert_eq!(r.event, TickEvent::Restarted);
        assert_eq!(r.next_action, NextAction::Restart);
        assert_eq!(
            r.effective_status,
            ReportedStatus::Classified(EffectiveStatus::StaleBookkeeping)
        );
        assert_eq!(r.runner.status, Some(Liveness::Dead));
        assert_eq!(
            r.provider_consistency,
            Some(ProviderConsistency::NotApplicable)
        );
        assert_eq!(r.paused, Some(None));
        assert_eq!(r.logs.mtime(), Some("2026-12-01T10:00:00Z"));
        let r = round_trip(BLOCKED);
        assert_eq!(r.pr.merge_probe.as_deref(), Some("open"));
        assert_eq!(r.pause().map(|p| p.paused_by.as_str()), Some("ops@box"));
        assert_eq!(r.stalled_for_secs(), Some(4000));
        assert_eq!(r.sync_refresh, Some(None));
        assert_eq!(r.logs.mtime, Some(None));
        let r = round_trip(TIMED_OUT);
        assert_eq!(r.effective_status, ReportedStatus::Unknown);
        assert_eq!(r.paused, None);
        assert_eq!(r.provider_consistency, None);
        let r = round_trip(READ_FAILED);
        assert_eq!(r.error.as_deref(), Some("provider_failed"));
        let r = round_trip(DRY_RUN);
        assert!(r.dry_run);
        assert!(matches!(
            r.provider_consistency,
            Some(ProviderConsistency::Mismatch { reason: Some(_) })
        ));
    }

    #[test]
    fn the_error_report_is_the_old_shape() {
        let mut r = TickReport::error(
            "tick exceeded its deadline of 5s after 5s; its remote commands were killed",
        );
        r.queued_ms = Some(0);
        assert_eq!(
            serde_json::to_string(&to_sorted_value(&r).unwrap()).unwrap(),
            TIMED_OUT
        );
    }

    #[test]
    fn words_of_another_version_are_kept_and_unknown_fields_too() {
        let old = r#"{"acted":false,"effective_status":"paused","event":"supervisor_waited","future_field":{"a":1},"logs":{},"next_action":"wait","pr":{},"refused_reason":null,"runner":{"status":"alive"},"spec":"","success":true,"sync":{}}"#;
        let r: TickReport = serde_json::from_str(old).unwrap();
        assert_eq!(r.event, TickEvent::Other("supervisor_waited".into()));
        assert_eq!(r.next_action, NextAction::Other("wait".into()));
        assert_eq!(r.effective_status, ReportedStatus::Other("paused".into()));
        assert_eq!(r.extra["future_field"]["a"], 1);
        assert_eq!(
            serde_json::to_string(&to_sorted_value(&r).unwrap()).unwrap(),
            old
        );
    }

    #[test]
    fn an_unreadable_row_still_loads_from_its_columns() {
        let r = read_stored(r#"{"acted":"yes","event":7}"#, || {
            TickReport::error("from the columns")
        });
        assert_eq!(r.refused_reason.as_deref(), Some("from the columns"));
        assert_eq!(r.extra["acted"], "yes");
    }

    #[test]
    fn display_is_the_stderr_line() {
        let r: TickReport = serde_json::from_str(BLOCKED).unwrap();
        assert_eq!(
            r.to_string(),
            "supervisor tick: supervisor_blocked | acted=false | next_action=blocked | refused_reason=awaiting PR merge (PR #42 state=open); supervisor will not advance until PR is merged"
        );
        let r: TickReport = serde_json::from_str(ACTED).unwrap();
        assert_eq!(
            r.to_string(),
            "supervisor tick: supervisor_restarted | acted=true | next_action=restart"
        );
    }

    /// The assertions of the old `stderr_line` test, on the typed report.
    #[test]
    fn stderr_line_format() {
        let mut report = TickReport::error("why");
        report.event = TickEvent::Blocked;
        report.next_action = NextAction::Blocked;
        assert_eq!(
            report.to_string(),
            "supervisor tick: supervisor_blocked | acted=false | next_action=blocked | refused_reason=why"
        );
        report.event = TickEvent::Restarted;
        report.acted = true;
        report.next_action = NextAction::Restart;
        report.refused_reason = None;
        assert_eq!(
            report.to_string(),
            "supervisor tick: supervisor_restarted | acted=true | next_action=restart"
        );
    }

    #[test]
    fn words_read_back_as_written() {
        for w in TickEvent::KNOWN {
            let e: TickEvent = w.parse().unwrap();
            assert!(!matches!(e, TickEvent::Other(_)), "{w}");
            assert_eq!(e.as_str(), *w);
        }
        for w in NextAction::KNOWN {
            let a: NextAction = w.parse().unwrap();
            assert!(!matches!(a, NextAction::Other(_)), "{w}");
        }
        for s in EffectiveStatus::ALL {
            assert_eq!(
                s.as_str().parse::<ReportedStatus>().unwrap(),
                ReportedStatus::Classified(s)
            );
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }
}
