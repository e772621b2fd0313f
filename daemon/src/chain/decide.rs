//! The supervise decision: a pure map from the observed facts of one tick to one event, one
//! next action and at most one mutation. The mutation's script is `crate::runner::mutation`;
//! its exit codes are the runner layout's.

use crate::chain::classify::{EffectiveStatus, Liveness};
use crate::runner::layout::{EXIT_LIVE_RUNNER, EXIT_OTHER_CHAIN};
use megaplan_cloud_api::report::{NextAction, ProviderConsistency, Rule, TickEvent};

#[derive(Debug, Clone, PartialEq)]
pub struct TickFacts {
    pub effective_status: EffectiveStatus,
    pub provider_consistency: ProviderConsistency,
    /// Whether the provider can run commands on the runner.
    pub has_exec: bool,
    pub liveness: Liveness,
    pub pr_number: Option<i64>,
    /// Lowercased `gh pr view` state, when probed.
    pub pr_probe: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MutationKind {
    RestartRunner,
    Advance,
}

impl MutationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MutationKind::RestartRunner => "restart",
            MutationKind::Advance => "advance",
        }
    }

    /// The report's `next_action` of this mutation.
    pub fn next_action(self) -> NextAction {
        match self {
            MutationKind::RestartRunner => NextAction::Restart,
            MutationKind::Advance => NextAction::Advance,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Which rule matched: stored in the report, read by `explain`.
    pub rule: Rule,
    pub event: TickEvent,
    pub next_action: NextAction,
    /// True iff a mutation is to be applied (or, after [`mutation_outcome`], was applied).
    pub acted: bool,
    pub refused_reason: Option<String>,
    pub mutation: Option<MutationKind>,
}

impl Decision {
    /// The report's `success`: false only for `supervisor_error`.
    pub fn success(&self) -> bool {
        self.event != TickEvent::Error
    }

    fn plain(rule: Rule, event: TickEvent, next_action: NextAction) -> Decision {
        Decision {
            rule,
            event,
            next_action,
            acted: false,
            refused_reason: None,
            mutation: None,
        }
    }

    fn refuse(rule: Rule, event: TickEvent, next_action: NextAction, reason: String) -> Decision {
        Decision {
            refused_reason: Some(reason),
            ..Decision::plain(rule, event, next_action)
        }
    }

    fn blocked(rule: Rule, reason: impl Into<String>) -> Decision {
        Decision::refuse(rule, TickEvent::Blocked, NextAction::Blocked, reason.into())
    }

    fn mutate(kind: MutationKind) -> Decision {
        let (event, rule) = match kind {
            MutationKind::RestartRunner => (TickEvent::Restarted, Rule::StaleDeadRunner),
            MutationKind::Advance => (TickEvent::Advanced, Rule::MergedDeadRunner),
        };
        Decision {
            acted: true,
            mutation: Some(kind),
            ..Decision::plain(rule, event, kind.next_action())
        }
    }
}

pub const HUMAN_PREREQUISITE_REASON: &str = "human prerequisite policy is 'required' and unmet; a human operator must resolve it via `python -m arnold.pipelines.megaplan user-action resolve` or `python -m arnold.pipelines.megaplan chain override`";
pub const QUALITY_GATE_REASON: &str = "validation policy is 'required' and quality gate is failing; a human operator must resolve the blocker or accept with debt";
pub const NO_EXEC_REASON: &str =
    "provider lacks ssh_exec; cannot probe or mutate the remote runner";
pub const LIVE_STALE_REASON: &str =
    "stale bookkeeping but runner is alive; supervisor will not force-restart a live runner";

fn pr_label(n: Option<i64>) -> String {
    n.map(|n| n.to_string()).unwrap_or_else(|| "none".into())
}

/// The checks that come before the status: provider consistency, then exec capability.
fn precheck(consistency: &ProviderConsistency, has_exec: bool) -> Option<Decision> {
    if let ProviderConsistency::Mismatch { reason } = consistency {
        return Some(Decision::blocked(
            Rule::ProviderMismatch,
            format!(
                "provider consistency mismatch: {}",
                reason.as_deref().unwrap_or("unknown")
            ),
        ));
    }
    (!has_exec).then(|| Decision::blocked(Rule::NoExec, NO_EXEC_REASON))
}

/// The decision for a provider that cannot run commands on the runner (nothing observed, so
/// there is no status): the same first two checks as [`decide`].
pub fn decide_without_exec(consistency: &ProviderConsistency) -> Decision {
    precheck(consistency, false).unwrap_or_else(|| Decision::blocked(Rule::NoExec, NO_EXEC_REASON))
}

/// Decide one tick. Checked in order: provider consistency, exec capability, then the status.
pub fn decide(f: &TickFacts) -> Decision {
    if let Some(d) = precheck(&f.provider_consistency, f.has_exec) {
        return d;
    }
    match f.effective_status {
        EffectiveStatus::Running => {
            Decision::plain(Rule::Running, TickEvent::Tick, NextAction::Noop)
        }
        EffectiveStatus::Complete => {
            Decision::plain(Rule::Complete, TickEvent::Tick, NextAction::Done)
        }
        EffectiveStatus::HumanPrerequisite => {
            Decision::blocked(Rule::HumanPrerequisite, HUMAN_PREREQUISITE_REASON)
        }
        EffectiveStatus::QualityGate => Decision::blocked(Rule::QualityGate, QUALITY_GATE_REASON),
        EffectiveStatus::AwaitingPrMerge => {
            let probe = f.pr_probe.as_deref().unwrap_or("unknown");
            let pr = pr_label(f.pr_number);
            if probe != "merged" {
                return Decision::blocked(
                    Rule::AwaitingMerge,
                    format!(
                        "awaiting PR merge (PR #{pr} state={probe}); supervisor will not advance until PR is merged"
                    ),
                );
            }
            // The one-shot start would collide with a session still present, and an
            // unprobeable runner might be live: only a confirmed-dead runner is advanced.
            match f.liveness {
                Liveness::Dead => Decision::mutate(MutationKind::Advance),
                Liveness::Alive => Decision::blocked(
                    Rule::MergedLiveRunner,
                    format!(
                        "PR #{pr} is merged but the runner session is alive; supervisor will not start a second runner or kill a live one"
                    ),
                ),
                Liveness::Unknown => Decision::blocked(
                    Rule::MergedUnknownRunner,
                    format!(
                        "PR #{pr} is merged but runner liveness is unknown; supervisor will not advance without confirming the runner is stopped"
                    ),
                ),
            }
        }
        EffectiveStatus::StaleBookkeeping => match f.liveness {
            Liveness::Dead => Decision::mutate(MutationKind::RestartRunner),
            Liveness::Alive => Decision::blocked(Rule::StaleLiveRunner, LIVE_STALE_REASON),
            Liveness::Unknown => Decision::blocked(
                Rule::StaleUnknownRunner,
                "stale bookkeeping but runner liveness is unknown; supervisor will not force-restart a runner it cannot confirm is dead",
            ),
        },
    }
}

/// Why a tick may not mutate even when the decision says so: a separate input to the pure
/// decision, applied by [`hold`] after [`decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hold {
    /// `megaplan-cloudctl pause`: observe and report, never mutate.
    Paused { by: String, since: String },
    /// `supervise --chain --dry-run`: the whole tick, no mutation.
    DryRun,
}

/// Withhold the mutation of `d` under `hold`. A paused tick is `supervisor_blocked` with a
/// refusal naming who paused and since when; a dry run keeps `next_action` (what it would have
/// done) with `acted: false`. Decisions without a mutation pass unchanged.
pub fn hold(d: Decision, hold: Option<&Hold>) -> Decision {
    let (Some(h), Some(kind)) = (hold, d.mutation) else {
        return d;
    };
    match h {
        // The rule that matched stays; the pause is the report's own field.
        Hold::Paused { by, since } => Decision::blocked(
            d.rule,
            format!(
                "paused by {by} since {since}: the supervisor would {} but does not mutate a paused registration; `megaplan-cloudctl unpause` resumes it",
                kind.as_str()
            ),
        ),
        Hold::DryRun => Decision {
            event: TickEvent::Tick,
            acted: false,
            mutation: None,
            refused_reason: Some(format!(
                "dry run: the supervisor would {} (nothing was changed)",
                kind.as_str()
            )),
            ..d
        },
    }
}

/// The decision when the status read (the observation) itself failed.
pub fn status_read_failed(reason: &str) -> Decision {
    Decision::refuse(
        Rule::ObservationFailed,
        TickEvent::Error,
        NextAction::None,
        format!("chain status read failed: {reason}"),
    )
}

/// The final decision after running the mutation script. `result` is the script's exit status,
/// or the transport error; `detail` is its (redacted) explanation for failure texts.
pub fn mutation_outcome(kind: MutationKind, result: Result<i32, String>, detail: &str) -> Decision {
    let failed = |why: String| {
        let prefix = match kind {
            MutationKind::RestartRunner => "stale bookkeeping restart failed",
            MutationKind::Advance => "PR merged but restart failed",
        };
        Decision::refuse(
            Rule::MutationFailed,
            TickEvent::Error,
            NextAction::Blocked,
            format!("{prefix}: {why}"),
        )
    };
    let detail = detail.trim();
    match result {
        Ok(0) => Decision::mutate(kind),
        Ok(EXIT_OTHER_CHAIN) => Decision::blocked(
            Rule::OtherChainSession,
            "the session marker on the runner names a different chain; supervisor will not touch another chain's session",
        ),
        Ok(EXIT_LIVE_RUNNER) => Decision::blocked(
            Rule::LiveAtMutation,
            "the runner is alive at restart time (its session, or a process driving this chain); supervisor will not kill or replace a live runner",
        ),
        Ok(code) if detail.is_empty() => failed(format!("exit status {code}")),
        Ok(code) => failed(format!("exit status {code}: {detail}")),
        Err(e) => failed(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The status of a word (the table below reads as the report does).
    fn status(word: &str) -> EffectiveStatus {
        EffectiveStatus::ALL
            .into_iter()
            .find(|s| s.as_str() == word)
            .unwrap_or_else(|| panic!("no status {word}"))
    }

    fn mismatch(reason: Option<&str>) -> ProviderConsistency {
        ProviderConsistency::Mismatch {
            reason: reason.map(str::to_string),
        }
    }

    fn facts(word: &str, liveness: Liveness) -> TickFacts {
        TickFacts {
            effective_status: status(word),
            provider_consistency: ProviderConsistency::NotApplicable,
            has_exec: true,
            liveness,
            pr_number: Some(42),
            pr_probe: None,
        }
    }

    /// (event, next_action, acted, refused_reason, mutation) of a decision.
    type Row<'a> = (
        &'a str,
        &'a str,
        bool,
        Option<&'a str>,
        Option<MutationKind>,
    );

    fn row(d: &Decision) -> Row<'_> {
        (
            d.event.as_str(),
            d.next_action.as_str(),
            d.acted,
            d.refused_reason.as_deref(),
            d.mutation,
        )
    }

    #[test]
    fn decision_table() {
        use Liveness::*;
        let merged = |l| TickFacts {
            pr_probe: Some("merged".into()),
            ..facts("awaiting_pr_merge", l)
        };
        let cases: Vec<(&str, TickFacts, Row)> = vec![
            (
                "mismatch first",
                TickFacts {
                    provider_consistency: mismatch(Some("service moved")),
                    ..facts("stale_bookkeeping", Dead)
                },
                (
                    "supervisor_blocked",
                    "blocked",
                    false,
                    Some("provider consistency mismatch: service moved"),
                    None,
                ),
            ),
            (
                "mismatch without reason",
                TickFacts {
                    provider_consistency: mismatch(None),
                    ..facts("running", Alive)
                },
                (
                    "supervisor_blocked",
                    "blocked",
                    false,
                    Some("provider consistency mismatch: unknown"),
                    None,
                ),
            ),
            (
                "no exec",
                TickFacts {
                    has_exec: false,
                    ..facts("stale_bookkeeping", Dead)
                },
                (
                    "supervisor_blocked",
                    "blocked",
                    false,
                    Some(NO_EXEC_REASON),
                    None,
                ),
            ),
            (
                "running",
                facts("running", Alive),
                ("supervisor_tick", "noop", false, None, None),
            ),
            (
                "complete",
                facts("complete", Dead),
                ("supervisor_tick", "done", false, None, None),
            ),
            (
                "human prerequisite",
                facts("human_prerequisite", Dead),
                (
                    "supervisor_blocked",
                    "blocked",
                    false,
                    Some(HUMAN_PREREQUISITE_REASON),
                    None,
                ),
            ),
            (
                "quality gate",
                facts("quality_gate", Dead),
                (
                    "supervisor_blocked",
                    "blocked",
                    false,
                    Some(QUALITY_GATE_REASON),
                    None,
                ),
            ),
            (
                "awaiting, not probed",
                facts("awaiting_pr_merge", Dead),
                (
                    "supervisor_blocked",
                    "blocked",
                    false,
                    Some(
                        "awaiting PR merge (PR #42 state=unknown); supervisor will not advance until PR is merged",
                    ),
                    None,
                ),
            ),
            (
                "awaiting, open, no number",
                TickFacts {
                    pr_probe: Some("open".into()),
                    pr_number: None,
                    ..facts("awaiting_pr_merge", Dead)
                },
                (
                    "supervisor_blocked",
                    "blocked",
                    false,
                    Some(
                        "awaiting PR merge (PR #none state=open); supervisor will not advance until PR is merged",
                    ),
                    None,
                ),
            ),
            (
                "merged, dead runner",
                merged(Dead),
                (
                    "supervisor_advanced",
                    "advance",
                    true,
                    None,
                    Some(MutationKind::Advance),
                ),
            ),
            (
                "merged, live runner",
                merged(Alive),
                (
                    "supervisor_blocked",
                    "blocked",
                    false,
                    Some(
                        "PR #42 is merged but the runner session is alive; supervisor will not start a second runner or kill a live one",
                    ),
                    None,
                ),
            ),
            (
                "merged, unknown runner",
                merged(Unknown),
                (
                    "supervisor_blocked",
                    "blocked",
                    false,
                    Some(
                        "PR #42 is merged but runner liveness is unknown; supervisor will not advance without confirming the runner is stopped",
                    ),
                    None,
                ),
            ),
            (
                "stale, dead",
                facts("stale_bookkeeping", Dead),
                (
                    "supervisor_restarted",
                    "restart",
                    true,
                    None,
                    Some(MutationKind::RestartRunner),
                ),
            ),
            (
                "stale, alive",
                facts("stale_bookkeeping", Alive),
                (
                    "supervisor_blocked",
                    "blocked",
                    false,
                    Some(LIVE_STALE_REASON),
                    None,
                ),
            ),
            (
                "stale, unknown",
                facts("stale_bookkeeping", Unknown),
                (
                    "supervisor_blocked",
                    "blocked",
                    false,
                    Some(
                        "stale bookkeeping but runner liveness is unknown; supervisor will not force-restart a runner it cannot confirm is dead",
                    ),
                    None,
                ),
            ),
        ];
        let rules = [
            Rule::ProviderMismatch,
            Rule::ProviderMismatch,
            Rule::NoExec,
            Rule::Running,
            Rule::Complete,
            Rule::HumanPrerequisite,
            Rule::QualityGate,
            Rule::AwaitingMerge,
            Rule::AwaitingMerge,
            Rule::MergedDeadRunner,
            Rule::MergedLiveRunner,
            Rule::MergedUnknownRunner,
            Rule::StaleDeadRunner,
            Rule::StaleLiveRunner,
            Rule::StaleUnknownRunner,
        ];
        assert_eq!(cases.len(), rules.len());
        for ((name, f, want), rule) in cases.into_iter().zip(rules) {
            let d = decide(&f);
            assert_eq!(row(&d), want, "{name}");
            assert_eq!(d.rule, rule, "{name}");
            assert!(d.success(), "{name}");
        }
        assert!(
            HUMAN_PREREQUISITE_REASON
                .contains("python -m arnold.pipelines.megaplan user-action resolve")
        );
        assert!(
            HUMAN_PREREQUISITE_REASON
                .contains("python -m arnold.pipelines.megaplan chain override")
        );
    }

    #[test]
    fn failure_decisions() {
        let d = status_read_failed("ssh: connection refused");
        assert_eq!(
            row(&d),
            (
                "supervisor_error",
                "none",
                false,
                Some("chain status read failed: ssh: connection refused"),
                None
            )
        );
        assert!(!d.success());

        use MutationKind::*;
        assert_eq!(
            mutation_outcome(RestartRunner, Ok(0), ""),
            decide(&facts("stale_bookkeeping", Liveness::Dead))
        );
        assert_eq!(d.rule, Rule::ObservationFailed);
        let d = mutation_outcome(Advance, Ok(EXIT_OTHER_CHAIN), "names /other");
        assert_eq!(d.rule, Rule::OtherChainSession);
        assert_eq!(
            (d.event.as_str(), d.acted, d.success()),
            ("supervisor_blocked", false, true)
        );
        let d = mutation_outcome(RestartRunner, Ok(EXIT_LIVE_RUNNER), "");
        assert_eq!(d.rule, Rule::LiveAtMutation);
        assert_eq!((d.event.as_str(), d.acted), ("supervisor_blocked", false));
        let d = mutation_outcome(RestartRunner, Ok(1), " tmux: no server \n");
        assert_eq!(
            d.refused_reason.as_deref(),
            Some("stale bookkeeping restart failed: exit status 1: tmux: no server")
        );
        let d = mutation_outcome(Advance, Err("timed out".into()), "");
        assert_eq!(d.rule, Rule::MutationFailed);
        assert_eq!(
            row(&d),
            (
                "supervisor_error",
                "blocked",
                false,
                Some("PR merged but restart failed: timed out"),
                None
            )
        );
    }

    fn liveness() -> impl Strategy<Value = Liveness> {
        prop_oneof![
            Just(Liveness::Alive),
            Just(Liveness::Dead),
            Just(Liveness::Unknown)
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn decisions_mutate_at_most_once_and_only_when_safe(
            status in proptest::sample::select(EffectiveStatus::ALL.to_vec()),
            mismatch in any::<bool>(),
            has_exec in any::<bool>(),
            live in liveness(),
            pr_number in proptest::option::of(any::<i64>()),
            pr_probe in proptest::option::of(prop_oneof![Just("merged".to_string()), "[a-z]{0,8}"]),
        ) {
            let f = TickFacts {
                effective_status: status,
                provider_consistency: if mismatch { ProviderConsistency::Mismatch { reason: None } } else { ProviderConsistency::Consistent },
                has_exec,
                liveness: live,
                pr_number,
                pr_probe: pr_probe.clone(),
            };
            let d = decide(&f);
            prop_assert_eq!(d.acted, d.mutation.is_some());
            // The rule recorded names the branch that decided.
            prop_assert!(!matches!(d.rule, Rule::Other(_)));
            match d.mutation {
                Some(MutationKind::RestartRunner) => prop_assert_eq!(&d.rule, &Rule::StaleDeadRunner),
                Some(MutationKind::Advance) => prop_assert_eq!(&d.rule, &Rule::MergedDeadRunner),
                None => prop_assert!(d.rule != Rule::StaleDeadRunner && d.rule != Rule::MergedDeadRunner),
            }
            if mismatch {
                prop_assert_eq!(&d.rule, &Rule::ProviderMismatch);
            }
            if let Some(kind) = d.mutation {
                prop_assert!(!mismatch && has_exec);
                prop_assert_eq!(live, Liveness::Dead, "never mutates unless the runner is confirmed dead");
                match kind {
                    MutationKind::RestartRunner => prop_assert_eq!(status.as_str(), "stale_bookkeeping"),
                    MutationKind::Advance => {
                        prop_assert_eq!(status.as_str(), "awaiting_pr_merge");
                        prop_assert_eq!(pr_probe.as_deref(), Some("merged"));
                    }
                }
            } else {
                prop_assert!(d.event.as_str() != "supervisor_restarted" && d.event.as_str() != "supervisor_advanced");
            }
            prop_assert!(d.success());
        }

    }
}

#[cfg(test)]
mod hold_tests {
    use super::*;

    fn dead_stale() -> Decision {
        decide(&TickFacts {
            effective_status: EffectiveStatus::StaleBookkeeping,
            provider_consistency: ProviderConsistency::NotApplicable,
            has_exec: true,
            liveness: Liveness::Dead,
            pr_number: None,
            pr_probe: None,
        })
    }

    #[test]
    fn a_pause_withholds_the_mutation_and_says_who_and_since_when() {
        let p = Hold::Paused {
            by: "ops@box".into(),
            since: "2026-01-01T00:00:00Z".into(),
        };
        let d = hold(dead_stale(), Some(&p));
        assert_eq!(d.mutation, None);
        assert_eq!(d.rule, Rule::StaleDeadRunner, "the rule that matched stays");
        assert!(!d.acted);
        assert_eq!(d.event.as_str(), "supervisor_blocked");
        let r = d.refused_reason.unwrap();
        assert!(
            r.starts_with("paused by ops@box since 2026-01-01T00:00:00Z") && r.contains("restart"),
            "{r}"
        );
    }

    #[test]
    fn a_dry_run_keeps_the_next_action_but_acts_not() {
        let d = hold(dead_stale(), Some(&Hold::DryRun));
        assert_eq!(
            (d.next_action.as_str(), d.acted, d.mutation),
            ("restart", false, None)
        );
        assert!(d.refused_reason.unwrap().starts_with("dry run"));
    }

    #[test]
    fn no_hold_or_no_mutation_passes_unchanged() {
        assert_eq!(hold(dead_stale(), None), dead_stale());
        let running = decide(&TickFacts {
            effective_status: EffectiveStatus::Running,
            provider_consistency: ProviderConsistency::Unknown { reason: None },
            has_exec: true,
            liveness: Liveness::Alive,
            pr_number: None,
            pr_probe: None,
        });
        assert_eq!(hold(running.clone(), Some(&Hold::DryRun)), running);
    }
}
