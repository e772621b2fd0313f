//! The fleet view (`GET /v1/fleet`, `megaplan-cloudctl ls`): one row per registration saying
//! how its chain is and whether it needs a person. The daemon builds it from what it holds (the
//! registrations, each one's last stored tick report, the watch state, the pause, the
//! scheduler's next due time and back-off, the local cloud.yaml); it never asks a runner.
//! The client and the dashboard render the same type.

use crate::report::{ChainPosition, Pause};
use crate::wire::TickBackoff;
use serde::{Deserialize, Serialize};
use std::fmt;

/// `GET /v1/fleet`: every registration, what needs a person first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fleet {
    /// When the daemon built the view (RFC 3339, UTC): the "now" relative times are taken from.
    pub generated_at: String,
    /// Sorted by [`FleetState::rank`] (needs a person first), then by name and key.
    pub registrations: Vec<FleetRow>,
}

/// One registration as the fleet view shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetRow {
    /// The registration key (16 hex digits; any unique prefix names it on the command line).
    pub key: String,
    /// Absolute path of the registered cloud.yaml.
    pub cloud_yaml: String,
    /// A short name for people: the folder holding cloud.yaml.
    pub name: String,
    /// `ssh`, `local` or `railway`, from the cloud.yaml as it is now; `None` when the file
    /// cannot be read (then `attention` says why).
    #[serde(default)]
    pub provider: Option<String>,
    /// The ssh host (`ssh.host`); `None` for other providers.
    #[serde(default)]
    pub host: Option<String>,
    /// Where the chain stood at the last tick that read it.
    #[serde(default)]
    pub milestone: Option<ChainPosition>,
    pub state: FleetState,
    /// The chain's PR, when its state names one.
    #[serde(default)]
    pub pr_number: Option<i64>,
    /// For `stalled`: how long the chain log has not grown (seconds).
    #[serde(default)]
    pub stalled_for_secs: Option<i64>,
    /// Ticks in a row that failed.
    #[serde(default)]
    pub consecutive_failures: u32,
    /// When the last tick finished (RFC 3339).
    #[serde(default)]
    pub last_tick_at: Option<String>,
    /// When the chain log last grew, as observed by the last tick (RFC 3339, the runner's clock).
    #[serde(default)]
    pub last_progress_at: Option<String>,
    /// The next scheduled tick (RFC 3339); `None` when not scheduled.
    #[serde(default)]
    pub next_tick_at: Option<String>,
    /// The schedule as stored: `every:<secs>` or `cron:<expr>`.
    pub schedule: String,
    /// The pause in force.
    #[serde(default)]
    pub paused: Option<Pause>,
    /// Present while scheduled ticks back off after ticks that hit their deadline.
    #[serde(default)]
    pub backoff: Option<TickBackoff>,
    /// Why a person is needed and what to do; set for `needs_person`, `awaiting_pr`, `stalled`
    /// and `backing_off`.
    #[serde(default)]
    pub attention: Option<Attention>,
    /// The driver's liveness at the last tick that observed it (`live`, `dead`, `unknown` with
    /// the evidence); `None` before any.
    #[serde(default)]
    pub liveness: Option<crate::liveness::Liveness>,
}

/// What a person should know and do about one registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attention {
    /// What is wrong, in one sentence.
    pub reason: String,
    /// The command or action that resolves it.
    pub fix: String,
}

/// A registration's state in the fleet view, one word each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FleetState {
    /// The driver died right after each of its last restarts: the supervisor restarts it no
    /// more until a person runs `megaplan-cloudctl unquarantine` (or `resume`).
    Quarantined,
    /// Waiting for a person: a human prerequisite, a quality gate, a provider mismatch, an
    /// unreadable cloud.yaml, or ticks failing in a row (the notification threshold).
    NeedsPerson,
    /// The runner is alive but the chain log has not grown for the stall threshold.
    Stalled,
    /// Scheduled ticks are held back after ticks that hit their deadline (the daemon's
    /// quarantine of a hung runner; it ends by itself after a tick in time).
    BackingOff,
    /// The milestone's PR waits to be merged; the supervisor advances once it is.
    AwaitingPr,
    /// Paused by a person: ticks observe but never act.
    Paused,
    /// The chain runs (or is being restarted by the supervisor).
    Running,
    /// No tick has read the chain yet, or the last ticks failed (fewer than the threshold).
    Unknown,
    /// Every milestone is done.
    Complete,
}

impl FleetState {
    /// Sort rank: what needs a person first, what needs nobody last.
    pub fn rank(self) -> u8 {
        match self {
            FleetState::Quarantined => 0,
            FleetState::NeedsPerson => 0,
            FleetState::Stalled => 1,
            FleetState::BackingOff => 2,
            FleetState::AwaitingPr => 3,
            FleetState::Paused => 4,
            FleetState::Unknown => 5,
            FleetState::Running => 6,
            FleetState::Complete => 7,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FleetState::Quarantined => "quarantined",
            FleetState::NeedsPerson => "needs_person",
            FleetState::Stalled => "stalled",
            FleetState::BackingOff => "backing_off",
            FleetState::AwaitingPr => "awaiting_pr",
            FleetState::Paused => "paused",
            FleetState::Running => "running",
            FleetState::Unknown => "unknown",
            FleetState::Complete => "complete",
        }
    }

    /// Does this state ask something of a person?
    pub fn needs_attention(self) -> bool {
        matches!(
            self,
            FleetState::Quarantined
                | FleetState::NeedsPerson
                | FleetState::Stalled
                | FleetState::BackingOff
                | FleetState::AwaitingPr
        )
    }
}

impl fmt::Display for FleetState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Sort rows as the view shows them: by state rank, then name, then key.
pub fn sort_rows(rows: &mut [FleetRow]) {
    rows.sort_by(|a, b| (a.state.rank(), &a.name, &a.key).cmp(&(b.state.rank(), &b.name, &b.key)));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, state: FleetState) -> FleetRow {
        FleetRow {
            key: format!("{name:0>16}"),
            cloud_yaml: format!("/p/{name}/cloud.yaml"),
            name: name.into(),
            provider: Some("ssh".into()),
            host: None,
            milestone: None,
            state,
            pr_number: None,
            stalled_for_secs: None,
            consecutive_failures: 0,
            last_tick_at: None,
            last_progress_at: None,
            next_tick_at: None,
            schedule: "every:300".into(),
            paused: None,
            backoff: None,
            attention: None,
            liveness: None,
        }
    }

    #[test]
    fn what_needs_a_person_sorts_first() {
        let mut rows = vec![
            row("a", FleetState::Complete),
            row("b", FleetState::Running),
            row("c", FleetState::NeedsPerson),
            row("d", FleetState::AwaitingPr),
            row("e", FleetState::Stalled),
        ];
        sort_rows(&mut rows);
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["c", "e", "d", "b", "a"]);
    }

    #[test]
    fn states_are_snake_case_words() {
        let r = row("x", FleetState::NeedsPerson);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["state"], "needs_person");
        let back: FleetRow = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn a_position_counts_from_one_and_stops_at_the_end() {
        let labels = ["m1", "m2", "m3"];
        let p = ChainPosition::of(1, &labels);
        assert_eq!((p.number, p.count, p.label.as_deref()), (2, 3, Some("m2")));
        let start = ChainPosition::of(-1, &labels);
        assert_eq!((start.number, start.label), (0, None));
        let done = ChainPosition::of(3, &labels);
        assert_eq!((done.number, done.label.as_deref()), (3, Some("m3")));
    }
}
