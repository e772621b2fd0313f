//! Tri-state liveness of a chain's driver, with the evidence the verdict rests on (issue 24
//! item 2), and the crash-loop quarantine of a registration (item 4). The daemon decides both;
//! the tick report, the fleet row and `explain` carry them as these types.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The verdict: `live` (the chain's driver or its session is seen), `dead` (the driver is gone
/// AND its lease expired), `unknown` (not observed, or the evidence disagrees). Only `dead`
/// authorizes a restart or an advance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LiveState {
    Live,
    Dead,
    Unknown,
}

impl LiveState {
    pub fn as_str(self) -> &'static str {
        match self {
            LiveState::Live => "live",
            LiveState::Dead => "dead",
            LiveState::Unknown => "unknown",
        }
    }
}

impl fmt::Display for LiveState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What was seen. `None` means "not looked at" (the observation did not get that far).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// Whether the runner answered over its transport (ssh, docker, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reachable: Option<bool>,
    /// A process driving this chain's spec was seen on the runner (`/proc`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_seen: Option<bool>,
    /// The chain's tmux session exists on the runner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_seen: Option<bool>,
    /// Seconds since the driver's lease was last refreshed (runner clock); absent: no lease
    /// bound to this chain's identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_age_secs: Option<f64>,
    /// The lease's time to live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_ttl_secs: Option<f64>,
    /// Why a lease found on the runner does not count (it names another chain or session).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_mismatch: Option<String>,
    /// One line a person reads: what was seen and what follows from it.
    #[serde(default)]
    pub detail: String,
}

/// The liveness of one chain's driver as a tick saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Liveness {
    pub state: LiveState,
    pub evidence: Evidence,
}

impl Liveness {
    /// Seconds until the lease expires, when the driver is gone but its lease still holds
    /// (the verdict waits for it: "restart in N s unless it comes back").
    pub fn pending_secs(&self) -> Option<f64> {
        let e = &self.evidence;
        if self.state != LiveState::Unknown || e.process_seen != Some(false) {
            return None;
        }
        if e.session_seen == Some(true) || e.lease_mismatch.is_some() {
            return None;
        }
        let (age, ttl) = (e.lease_age_secs?, e.lease_ttl_secs?);
        (age < ttl).then_some(ttl - age)
    }

    /// `unknown` because the runner did not answer at all.
    pub fn unreachable(why: &str) -> Liveness {
        Liveness {
            state: LiveState::Unknown,
            evidence: Evidence {
                reachable: Some(false),
                detail: format!("the runner did not answer: {why}"),
                ..Evidence::default()
            },
        }
    }
}

impl fmt::Display for Liveness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.state, self.evidence.detail)
    }
}

/// A registration whose driver kept dying right after each restart: the supervisor restarts it
/// no more until a person clears it (`megaplan-cloudctl unquarantine`, or `resume`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quarantine {
    pub key: String,
    /// RFC 3339.
    pub since: String,
    /// Restarts counted in the window that led to it.
    pub restarts: u32,
    /// Why, in one sentence.
    pub reason: String,
    /// The last lines of the driver log when it was quarantined, redacted.
    #[serde(default)]
    pub log_tail: Vec<String>,
}

/// The answer of `POST /v1/clouds/{key}/unquarantine`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnquarantineResult {
    pub key: String,
    /// Whether a quarantine was in force (and is now cleared).
    pub cleared: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gone_driver_with_a_fresh_lease_is_pending_until_the_lease_expires() {
        let l = Liveness {
            state: LiveState::Unknown,
            evidence: Evidence {
                reachable: Some(true),
                process_seen: Some(false),
                session_seen: Some(false),
                lease_age_secs: Some(4.0),
                lease_ttl_secs: Some(15.0),
                ..Evidence::default()
            },
        };
        assert_eq!(l.pending_secs(), Some(11.0));
        let v = serde_json::to_value(&l).unwrap();
        assert_eq!(v["state"], "unknown");
        assert_eq!(v["evidence"]["lease_age_secs"], 4.0);
        assert!(v["evidence"].get("lease_mismatch").is_none());
        assert_eq!(Liveness::unreachable("x").pending_secs(), None);
    }
}
