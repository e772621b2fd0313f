//! The notification: what the daemon tells a person, and the body of a plain (`preset: json`)
//! webhook and of a command sink's stdin. One typed, versioned shape (`schema`
//! [`SCHEMA`], documented in docs/api.md); the ntfy and Slack presets are rendered from it.
//!
//! Fields come in the order a person reads them: what happened and whether a person is needed,
//! the chain, its milestone and state, the PR, the one-line fix, then the message and the
//! bookkeeping, the local cloud.yaml path last. Version 1 only ever gains optional fields; a
//! field removed or changing meaning would be version 2. `idempotency_key` is stable per
//! occurrence (the same on every retry of one delivery and never reused for another
//! occurrence), so a receiver can drop what it has seen.

use crate::report::{ChainPosition, NextAction, TickEvent};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;

/// The `schema` of every notification this version sends.
pub const SCHEMA: &str = "megaplan-cloudd/notification/v1";

/// The header carrying [`Notification::idempotency_key`] on every webhook request.
pub const IDEMPOTENCY_HEADER: &str = "X-Idempotency-Key";

/// What a notification is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotificationEvent {
    /// The chain's effective status became `human_prerequisite`.
    HumanPrerequisite,
    /// … became `quality_gate`.
    QualityGate,
    /// … became `awaiting_pr_merge`, or it waits for another PR than before.
    AwaitingPrMerge,
    /// Still in one of the three above `still_waiting_after` after entering it.
    StillWaiting,
    /// Every milestone is done.
    Complete,
    /// A tick restarted or advanced the runner.
    SupervisorActed,
    /// The runner is alive but its log has not grown for `stall_after`.
    Stalled,
    /// `failed_ticks` ticks in a row failed.
    TicksFailing,
    /// The first successful tick after `ticks_failing`.
    TicksRecovered,
    /// A launch was stopped by the runner's preflight (low disk or inodes, an expired agent
    /// login, an unreadable chain spec).
    PreflightFailed,
    /// The driver process is gone while its lease still holds ("restart in N s unless it
    /// comes back").
    DriverGone,
    /// The chain was quarantined after a crash loop.
    Quarantined,
    /// The driver's liveness stayed `unknown` for `unknown_after`.
    LivenessUnknown,
    /// The periodic summary of `digest:` (progress per chain since the last one).
    Digest,
    /// `megaplan-cloudctl notifications test` / `doctor --send-test`.
    Test,
}

impl NotificationEvent {
    /// Every event, in declaration order.
    pub const ALL: [NotificationEvent; 15] = [
        NotificationEvent::HumanPrerequisite,
        NotificationEvent::QualityGate,
        NotificationEvent::AwaitingPrMerge,
        NotificationEvent::StillWaiting,
        NotificationEvent::Complete,
        NotificationEvent::SupervisorActed,
        NotificationEvent::Stalled,
        NotificationEvent::TicksFailing,
        NotificationEvent::TicksRecovered,
        NotificationEvent::PreflightFailed,
        NotificationEvent::DriverGone,
        NotificationEvent::Quarantined,
        NotificationEvent::LivenessUnknown,
        NotificationEvent::Digest,
        NotificationEvent::Test,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NotificationEvent::HumanPrerequisite => "human_prerequisite",
            NotificationEvent::QualityGate => "quality_gate",
            NotificationEvent::AwaitingPrMerge => "awaiting_pr_merge",
            NotificationEvent::StillWaiting => "still_waiting",
            NotificationEvent::Complete => "complete",
            NotificationEvent::SupervisorActed => "supervisor_acted",
            NotificationEvent::Stalled => "stalled",
            NotificationEvent::TicksFailing => "ticks_failing",
            NotificationEvent::TicksRecovered => "ticks_recovered",
            NotificationEvent::PreflightFailed => "preflight_failed",
            NotificationEvent::DriverGone => "driver_gone",
            NotificationEvent::Quarantined => "quarantined",
            NotificationEvent::LivenessUnknown => "liveness_unknown",
            NotificationEvent::Digest => "digest",
            NotificationEvent::Test => "test",
        }
    }

    /// Nothing moves until a person acts: sent at once (also with `digest:`), high priority.
    pub fn needs_person(self) -> bool {
        matches!(
            self,
            NotificationEvent::HumanPrerequisite
                | NotificationEvent::QualityGate
                | NotificationEvent::AwaitingPrMerge
                | NotificationEvent::StillWaiting
                | NotificationEvent::Stalled
                | NotificationEvent::TicksFailing
                | NotificationEvent::PreflightFailed
                | NotificationEvent::Quarantined
                | NotificationEvent::LivenessUnknown
        )
    }
}

impl fmt::Display for NotificationEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The chain's pull request, when its state names one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrLink {
    pub number: i64,
    /// The PR's web page, when the repository is on GitHub (from cloud.yaml's `repo.url`).
    #[serde(default)]
    pub url: Option<String>,
}

/// The tick that caused a notification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NotificationTick {
    pub id: i64,
    pub trigger: String,
    pub finished_at: String,
    pub success: bool,
    pub event: TickEvent,
    pub next_action: NextAction,
    pub acted: bool,
    #[serde(default)]
    pub refused_reason: Option<String>,
}

/// One chain in a [`NotificationEvent::Digest`]: its progress since the last digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestChain {
    /// The registration key.
    pub key: String,
    /// The chain's name for people (the folder holding cloud.yaml).
    pub chain: String,
    /// Where the chain stands now.
    #[serde(default)]
    pub milestone: Option<ChainPosition>,
    /// Milestones finished since the last digest.
    pub milestones_done: u32,
    /// The effective status of the last tick.
    pub state: String,
    pub cloud_yaml: String,
}

/// The notification (`schema` [`SCHEMA`]); see docs/api.md for each field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    pub schema: String,
    pub event: NotificationEvent,
    /// True when nothing moves until a person acts.
    #[serde(default)]
    pub needs_person: bool,
    /// The chain's name for people (the folder holding cloud.yaml); empty for a digest.
    #[serde(default)]
    pub chain: String,
    #[serde(default)]
    pub milestone: Option<ChainPosition>,
    /// The chain's effective status at the tick (`null` for a digest or a test).
    #[serde(default)]
    pub effective_status: Option<String>,
    #[serde(default)]
    pub pr: Option<PrLink>,
    /// The one thing to do, when a person is needed.
    #[serde(default)]
    pub fix: Option<String>,
    /// One line: what happened.
    #[serde(default)]
    pub title: String,
    /// The full text: the title, the reason, the fix, then the cloud.yaml path.
    #[serde(default)]
    pub message: String,
    /// Stable per occurrence: the same on every retry, never reused for another occurrence.
    #[serde(default)]
    pub idempotency_key: String,
    /// Stable per (registration, tick, event); kept from the first version of the schema.
    #[serde(default)]
    pub id: String,
    /// The registration key (empty for a digest or a test of the daemon's own sinks).
    #[serde(default)]
    pub key: String,
    /// The chain spec on the runner.
    #[serde(default)]
    pub spec: String,
    #[serde(default)]
    pub tick: Option<NotificationTick>,
    /// Facts of the event (docs/notifications.md lists them per event).
    #[serde(default)]
    pub details: Value,
    /// Chains of a digest, each with its progress since the last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<Vec<DigestChain>>,
    /// RFC 3339, when the notification was made.
    #[serde(default)]
    pub created_at: String,
    /// The local cloud.yaml (empty for a digest or a test of the daemon's own sinks).
    #[serde(default)]
    pub cloud_yaml: String,
}

/// `POST /v1/notifications/test`: which sinks to test.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestRequest {
    /// A registration key or an absolute cloud.yaml path: the daemon's sinks and that
    /// registration's; `None`: the daemon's sinks and every registration's.
    #[serde(default)]
    pub cloud_yaml: Option<String>,
}

/// How one sink answered a test notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkTestResult {
    /// The sink as `notifications` lists it (`webhook URL` or `command CMD`).
    pub sink: String,
    /// `json`, `ntfy` or `slack` for a webhook; `null` for a command.
    #[serde(default)]
    pub preset: Option<String>,
    /// Where it comes from: `notify.yaml` or the registration key.
    pub source: String,
    pub ok: bool,
    /// The HTTP status a webhook answered with, or a command's exit status.
    #[serde(default)]
    pub status: Option<i64>,
    pub latency_ms: u64,
    #[serde(default)]
    pub error: Option<String>,
}

/// `POST /v1/notifications/test`: one result per sink, in the order they were configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestResults {
    /// The test notification's idempotency key (the same on every sink).
    pub idempotency_key: String,
    pub results: Vec<SinkTestResult>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn awaiting() -> Notification {
        Notification {
            schema: SCHEMA.to_string(),
            event: NotificationEvent::AwaitingPrMerge,
            needs_person: true,
            chain: "proj".into(),
            milestone: Some(ChainPosition {
                number: 1,
                count: 2,
                label: Some("m1".into()),
            }),
            effective_status: Some("awaiting_pr_merge".into()),
            pr: Some(PrLink {
                number: 7,
                url: Some("https://github.com/o/r/pull/7".into()),
            }),
            fix: Some("merge PR #7; the next tick starts the next milestone".into()),
            title: "proj: milestone 1/2 (m1) waits for PR #7 to be merged".into(),
            message: "m".into(),
            idempotency_key: "0123456789abcdef0123456789abcdef".into(),
            id: "3f1c9a0b7d2e4f51:412:awaiting_pr_merge".into(),
            key: "3f1c9a0b7d2e4f51".into(),
            spec: "/workspace/app/chain.yaml".into(),
            tick: Some(NotificationTick {
                id: 412,
                trigger: "schedule".into(),
                finished_at: "2026-06-01T10:00:01.204Z".into(),
                success: true,
                event: TickEvent::Blocked,
                next_action: NextAction::Blocked,
                acted: false,
                refused_reason: Some("awaiting PR merge".into()),
            }),
            details: json!({"pr": {"pr_number": 7}, "reason": "awaiting PR merge"}),
            digest: None,
            created_at: "2026-06-01T10:00:01.230Z".into(),
            cloud_yaml: "/home/op/proj/cloud.yaml".into(),
        }
    }

    /// The plain-webhook body, byte for byte: field order is what a person reads first, the
    /// cloud.yaml path last; receivers parse these names (docs/api.md).
    #[test]
    fn the_webhook_body_is_pinned_byte_for_byte() {
        const PINNED: &str = r#"{"schema":"megaplan-cloudd/notification/v1","event":"awaiting_pr_merge","needs_person":true,"chain":"proj","milestone":{"number":1,"count":2,"label":"m1"},"effective_status":"awaiting_pr_merge","pr":{"number":7,"url":"https://github.com/o/r/pull/7"},"fix":"merge PR #7; the next tick starts the next milestone","title":"proj: milestone 1/2 (m1) waits for PR #7 to be merged","message":"m","idempotency_key":"0123456789abcdef0123456789abcdef","id":"3f1c9a0b7d2e4f51:412:awaiting_pr_merge","key":"3f1c9a0b7d2e4f51","spec":"/workspace/app/chain.yaml","tick":{"id":412,"trigger":"schedule","finished_at":"2026-06-01T10:00:01.204Z","success":true,"event":"supervisor_blocked","next_action":"blocked","acted":false,"refused_reason":"awaiting PR merge"},"details":{"pr":{"pr_number":7},"reason":"awaiting PR merge"},"created_at":"2026-06-01T10:00:01.230Z","cloud_yaml":"/home/op/proj/cloud.yaml"}"#;
        let n = awaiting();
        assert_eq!(serde_json::to_string(&n).unwrap(), PINNED);
        let back: Notification = serde_json::from_str(PINNED).unwrap();
        assert_eq!(back, n);
    }

    #[test]
    fn a_digest_is_pinned_too() {
        const PINNED: &str = r#"{"schema":"megaplan-cloudd/notification/v1","event":"digest","needs_person":false,"chain":"","milestone":null,"effective_status":null,"pr":null,"fix":null,"title":"1 chain, 2 milestones done","message":"m","idempotency_key":"k","id":"digest:7","key":"","spec":"","tick":null,"details":{},"digest":[{"key":"3f1c9a0b7d2e4f51","chain":"proj","milestone":{"number":3,"count":4},"milestones_done":2,"state":"running","cloud_yaml":"/home/op/proj/cloud.yaml"}],"created_at":"t","cloud_yaml":""}"#;
        let n: Notification = serde_json::from_str(PINNED).unwrap();
        assert_eq!(n.event, NotificationEvent::Digest);
        assert_eq!(n.digest.as_ref().unwrap()[0].milestones_done, 2);
        assert_eq!(serde_json::to_string(&n).unwrap(), PINNED);
    }

    #[test]
    fn event_words_and_who_is_needed() {
        for e in NotificationEvent::ALL {
            let word = serde_json::to_value(e).unwrap();
            assert_eq!(word, e.as_str());
            assert_eq!(
                serde_json::from_value::<NotificationEvent>(word).unwrap(),
                e
            );
        }
        assert!(NotificationEvent::QualityGate.needs_person());
        assert!(!NotificationEvent::Complete.needs_person());
        assert!(!NotificationEvent::Digest.needs_person());
    }
}
