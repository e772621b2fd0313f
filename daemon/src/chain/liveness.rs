//! The tri-state liveness verdict (issue 24 item 2): a pure map from what the observation saw
//! of the chain's driver on the runner (the probe's `runner` object: a driving process, the
//! tmux session, the driver's lease) to `live`, `dead` or `unknown` with that evidence.
//!
//! `dead` needs BOTH the exact target's driver gone (no process drives this spec, no session)
//! AND its lease expired: a lease bound to another chain (workspace, spec, session, identity
//! digest) does not count, and a chain launched before leases existed has none (then the
//! process evidence alone decides, as before). A driver gone with its lease still fresh is
//! `unknown` until the lease expires: the person hears at once, the restart waits.

use crate::chain::classify::Liveness as ProbeWord;
use megaplan_cloud_api::liveness::{Evidence, LiveState, Liveness};
use megaplan_cloud_api::report::RunnerInfo;

/// The verdict of one observation's `runner` object.
pub fn verdict(runner: &RunnerInfo) -> Liveness {
    let probe = runner.status.unwrap_or(ProbeWord::Unknown);
    let from_process = runner.source.as_deref() == Some("process");
    let lease = runner.lease.as_ref();
    let mismatch = lease.and_then(|l| l.mismatch.clone());
    let (age, ttl) = match (&mismatch, lease) {
        (None, Some(l)) => (l.age_secs, l.ttl_secs),
        _ => (None, None),
    };
    let mut evidence = Evidence {
        reachable: Some(true),
        process_seen: Some(from_process),
        session_seen: match probe {
            ProbeWord::Alive => (!from_process).then_some(true),
            ProbeWord::Dead => Some(false),
            ProbeWord::Unknown => None,
        },
        lease_age_secs: age,
        lease_ttl_secs: ttl,
        lease_mismatch: mismatch,
        detail: String::new(),
    };
    let reason = runner
        .reason
        .as_deref()
        .unwrap_or("the probe was ambiguous");
    let state = match (probe, age, ttl) {
        (ProbeWord::Alive, _, _) => {
            evidence.detail = if from_process {
                let pid = runner.pid.unwrap_or(0);
                format!("the chain's driver process (pid {pid}) is running")
            } else {
                "the chain's tmux session is alive".to_string()
            };
            LiveState::Live
        }
        (ProbeWord::Unknown, _, _) => {
            evidence.detail = format!("the driver could not be probed: {reason}");
            LiveState::Unknown
        }
        (ProbeWord::Dead, Some(age), Some(ttl)) if age < ttl => {
            evidence.detail = format!(
                "the driver process is gone; restart in {} s unless it comes back (its lease was refreshed {} s ago)",
                (ttl - age).ceil().max(1.0),
                age.floor()
            );
            LiveState::Unknown
        }
        (ProbeWord::Dead, Some(age), Some(_)) => {
            evidence.detail = format!(
                "the driver process and its session are gone and its lease expired {} s ago",
                age.floor()
            );
            LiveState::Dead
        }
        (ProbeWord::Dead, _, _) => {
            evidence.detail = match &evidence.lease_mismatch {
                Some(m) => format!(
                    "the driver process and its session are gone; the lease on the runner belongs to another chain ({m})"
                ),
                None => "the driver process and its session are gone (no lease on the runner)"
                    .to_string(),
            };
            LiveState::Dead
        }
    };
    Liveness { state, evidence }
}

/// The probe word the classification and the pure decision read: only a `dead` verdict is
/// dead, so `unknown` never authorizes a restart or an advance.
pub fn probe_word(l: &Liveness) -> ProbeWord {
    match l.state {
        LiveState::Live => ProbeWord::Alive,
        LiveState::Dead => ProbeWord::Dead,
        LiveState::Unknown => ProbeWord::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    /// The observer's `runner` object as the observation reads it.
    fn runner(v: Value) -> RunnerInfo {
        serde_json::from_value(v).expect("a runner object")
    }

    fn dead_probe(lease: Value) -> Value {
        json!({"status": "dead", "session": "megaplan-chain", "lease": lease})
    }

    #[test]
    fn a_gone_driver_is_dead_only_once_its_lease_expired() {
        let fresh = verdict(&runner(dead_probe(
            json!({"age_secs": 2.0, "ttl_secs": 15.0}),
        )));
        assert_eq!(fresh.state, LiveState::Unknown);
        assert_eq!(fresh.pending_secs(), Some(13.0));
        assert!(
            fresh
                .evidence
                .detail
                .starts_with("the driver process is gone; restart in 13 s"),
            "{}",
            fresh.evidence.detail
        );
        let expired = verdict(&runner(dead_probe(
            json!({"age_secs": 16.0, "ttl_secs": 15.0}),
        )));
        assert_eq!(expired.state, LiveState::Dead);
        assert_eq!(expired.pending_secs(), None);
        // No lease at all (a chain launched before leases): the process evidence decides.
        assert_eq!(
            verdict(&runner(dead_probe(Value::Null))).state,
            LiveState::Dead
        );
        // A lease naming another chain does not hold the verdict.
        let other = verdict(&runner(dead_probe(
            json!({"age_secs": 1.0, "ttl_secs": 15.0, "mismatch": "the lease names spec '/x'"}),
        )));
        assert_eq!(other.state, LiveState::Dead);
        assert_eq!(other.evidence.lease_age_secs, None);
    }

    #[test]
    fn a_seen_driver_is_live_and_an_unprobed_one_unknown() {
        let live = verdict(&runner(
            json!({"status": "alive", "source": "process", "pid": 7, "target_session": "megaplan-chain", "session": "agent"}),
        ));
        assert_eq!(live.state, LiveState::Live);
        assert_eq!(live.evidence.process_seen, Some(true));
        let unknown = verdict(&runner(
            json!({"status": "unknown", "reason": "tmux missing"}),
        ));
        assert_eq!(unknown.state, LiveState::Unknown);
        assert_eq!(probe_word(&unknown), ProbeWord::Unknown);
    }

    proptest! {
        /// `unknown` never yields a mutation: whatever the status, the PR and the evidence, the
        /// pure decision restarts or advances only on a `dead` verdict.
        #[test]
        fn unknown_never_yields_a_mutation(
            status in prop_oneof![Just("alive"), Just("dead"), Just("unknown")],
            source in prop_oneof![Just("process"), Just("tmux")],
            age in proptest::option::of(0.0f64..100.0),
            ttl in proptest::option::of(0.5f64..60.0),
            effective in proptest::sample::select(crate::chain::classify::EffectiveStatus::ALL.to_vec()),
            merged in proptest::bool::ANY,
        ) {
            let mut lease = json!({});
            if let Some(a) = age { lease["age_secs"] = json!(a); }
            if let Some(t) = ttl { lease["ttl_secs"] = json!(t); }
            let v = verdict(&runner(json!({"status": status, "source": source, "lease": lease})));
            let d = crate::chain::decide::decide(&crate::chain::decide::TickFacts {
                effective_status: effective,
                provider_consistency: megaplan_cloud_api::report::ProviderConsistency::NotApplicable,
                has_exec: true,
                liveness: probe_word(&v),
                pr_number: Some(1),
                pr_probe: merged.then(|| "merged".to_string()),
            });
            if d.mutation.is_some() {
                prop_assert_eq!(v.state, LiveState::Dead, "{:?} mutated: {:?}", v, d);
            }
        }

        /// Whatever the lease says, only a probe that saw the driver gone can be `dead`, and a
        /// fresh identity-bound lease always holds the verdict at `unknown`.
        #[test]
        fn dead_needs_the_process_gone_and_the_lease_expired(
            status in prop_oneof![Just("alive"), Just("dead"), Just("unknown"), Just("weird")],
            age in proptest::option::of(0.0f64..100.0),
            ttl in proptest::option::of(0.5f64..60.0),
            mismatch in proptest::bool::ANY,
        ) {
            let mut lease = json!({});
            if let Some(a) = age { lease["age_secs"] = json!(a); }
            if let Some(t) = ttl { lease["ttl_secs"] = json!(t); }
            if mismatch { lease["mismatch"] = json!("other chain"); }
            let v = verdict(&runner(json!({"status": status, "lease": lease})));
            if v.state == LiveState::Dead {
                prop_assert_eq!(status, "dead");
                let fresh = !mismatch && matches!((age, ttl), (Some(a), Some(t)) if a < t);
                prop_assert!(!fresh, "dead with a fresh lease: {:?}", v);
            }
        }
    }
}
