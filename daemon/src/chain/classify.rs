//! Effective-status classification: one pure function from observed facts to the status the
//! supervisor acts on. The rules are tried in order (see [`classify`]); a current plan whose
//! runner is dead is `stale_bookkeeping`, not `running`.

pub use megaplan_cloud_api::report::{EffectiveStatus, Liveness};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassifyInput<'a> {
    pub milestone_count: usize,
    pub current_milestone_index: i64,
    pub last_state: Option<&'a str>,
    pub current_plan: Option<&'a str>,
    /// The current plan's status word (`state` or `status` of the core's output).
    pub plan_status: Option<&'a str>,
    pub runner: Liveness,
    pub sync_state: Option<&'a str>,
    pub prerequisite_policy: &'a str,
    pub validation_policy: &'a str,
}

const RUNNING_PLAN_STATUSES: [&str; 3] = ["running", "active", "in_progress"];

/// Classify; the first matching rule wins.
pub fn classify(i: &ClassifyInput) -> EffectiveStatus {
    let count = i64::try_from(i.milestone_count).unwrap_or(i64::MAX);
    if count > 0 && i.current_milestone_index >= count {
        return EffectiveStatus::Complete;
    }
    if i.last_state == Some("awaiting_pr_merge") {
        return EffectiveStatus::AwaitingPrMerge;
    }
    let plan_running = i
        .plan_status
        .map(|s| RUNNING_PLAN_STATUSES.contains(&s.trim().to_ascii_lowercase().as_str()))
        .unwrap_or(false);
    match i.runner {
        // Benefit of the doubt: without a probe there is no evidence the runner stopped.
        Liveness::Unknown => return EffectiveStatus::Running,
        Liveness::Alive if plan_running => return EffectiveStatus::Running,
        _ => {}
    }
    let has_plan = i.current_plan.is_some_and(|p| !p.trim().is_empty());
    if has_plan {
        if matches!(i.sync_state, Some("stale" | "dirty")) {
            return EffectiveStatus::StaleBookkeeping;
        }
        if i.prerequisite_policy == "required" {
            return EffectiveStatus::HumanPrerequisite;
        }
        if i.validation_policy == "required" {
            return EffectiveStatus::QualityGate;
        }
        if i.runner == Liveness::Dead {
            return EffectiveStatus::StaleBookkeeping;
        }
        return EffectiveStatus::Running;
    }
    if i.runner != Liveness::Alive {
        return EffectiveStatus::StaleBookkeeping;
    }
    EffectiveStatus::Running
}

#[cfg(test)]
mod tests {
    use super::*;
    use EffectiveStatus::*;
    use Liveness::*;

    /// A chain mid-way with a current plan that is not confirmed running, a live runner,
    /// clean sync and no policies: classifies as `running` (the last fall-through).
    fn base() -> ClassifyInput<'static> {
        ClassifyInput {
            milestone_count: 3,
            current_milestone_index: 1,
            last_state: None,
            current_plan: Some("plan-m2"),
            plan_status: Some("planned"),
            runner: Alive,
            sync_state: Some("synced"),
            prerequisite_policy: "none",
            validation_policy: "none",
        }
    }

    #[test]
    fn table() {
        let b = base();
        let rows: Vec<(&str, ClassifyInput, EffectiveStatus)> = vec![
            ("base falls through to running", b, Running),
            (
                "index == count is complete",
                ClassifyInput {
                    current_milestone_index: 3,
                    ..b
                },
                Complete,
            ),
            (
                "index > count is complete",
                ClassifyInput {
                    current_milestone_index: 7,
                    ..b
                },
                Complete,
            ),
            (
                "zero milestones is never complete",
                ClassifyInput {
                    milestone_count: 0,
                    current_milestone_index: 0,
                    current_plan: None,
                    runner: Dead,
                    ..b
                },
                StaleBookkeeping,
            ),
            (
                "awaiting merge",
                ClassifyInput {
                    last_state: Some("awaiting_pr_merge"),
                    ..b
                },
                AwaitingPrMerge,
            ),
            (
                "running plan + alive",
                ClassifyInput {
                    plan_status: Some("running"),
                    ..b
                },
                Running,
            ),
            (
                "active plan + alive",
                ClassifyInput {
                    plan_status: Some("active"),
                    ..b
                },
                Running,
            ),
            (
                "in_progress plan + alive",
                ClassifyInput {
                    plan_status: Some("in_progress"),
                    ..b
                },
                Running,
            ),
            (
                "plan status is case-insensitive",
                ClassifyInput {
                    plan_status: Some("Running"),
                    ..b
                },
                Running,
            ),
            (
                "unknown runner is running",
                ClassifyInput {
                    runner: Unknown,
                    plan_status: None,
                    current_plan: None,
                    ..b
                },
                Running,
            ),
            (
                "stale sync",
                ClassifyInput {
                    sync_state: Some("stale"),
                    ..b
                },
                StaleBookkeeping,
            ),
            (
                "dirty sync",
                ClassifyInput {
                    sync_state: Some("dirty"),
                    ..b
                },
                StaleBookkeeping,
            ),
            (
                "prerequisite required",
                ClassifyInput {
                    prerequisite_policy: "required",
                    ..b
                },
                HumanPrerequisite,
            ),
            (
                "validation required",
                ClassifyInput {
                    validation_policy: "required",
                    ..b
                },
                QualityGate,
            ),
            (
                "plan + dead runner (section 8 fix)",
                ClassifyInput { runner: Dead, ..b },
                StaleBookkeeping,
            ),
            (
                "no plan + dead runner",
                ClassifyInput {
                    current_plan: None,
                    runner: Dead,
                    ..b
                },
                StaleBookkeeping,
            ),
            (
                "blank plan name counts as no plan",
                ClassifyInput {
                    current_plan: Some("  "),
                    runner: Dead,
                    prerequisite_policy: "required",
                    ..b
                },
                StaleBookkeeping,
            ),
            (
                "no plan + alive runner",
                ClassifyInput {
                    current_plan: None,
                    ..b
                },
                Running,
            ),
            (
                "not started, nothing running",
                ClassifyInput {
                    current_milestone_index: -1,
                    current_plan: None,
                    plan_status: None,
                    runner: Dead,
                    ..b
                },
                StaleBookkeeping,
            ),
        ];
        for (name, input, want) in rows {
            assert_eq!(classify(&input), want, "{name}: {input:?}");
        }
    }

    #[test]
    fn precedence_between_rules() {
        let b = base();
        let rows: Vec<(&str, ClassifyInput, EffectiveStatus)> = vec![
            (
                "complete beats awaiting_pr_merge",
                ClassifyInput {
                    current_milestone_index: 3,
                    last_state: Some("awaiting_pr_merge"),
                    ..b
                },
                Complete,
            ),
            (
                "complete beats a dead runner",
                ClassifyInput {
                    current_milestone_index: 3,
                    runner: Dead,
                    current_plan: None,
                    ..b
                },
                Complete,
            ),
            (
                "awaiting beats running",
                ClassifyInput {
                    last_state: Some("awaiting_pr_merge"),
                    plan_status: Some("running"),
                    ..b
                },
                AwaitingPrMerge,
            ),
            (
                "awaiting beats a dead runner",
                ClassifyInput {
                    last_state: Some("awaiting_pr_merge"),
                    runner: Dead,
                    ..b
                },
                AwaitingPrMerge,
            ),
            (
                "running beats stale sync",
                ClassifyInput {
                    plan_status: Some("running"),
                    sync_state: Some("stale"),
                    ..b
                },
                Running,
            ),
            (
                "running beats required policies",
                ClassifyInput {
                    plan_status: Some("running"),
                    prerequisite_policy: "required",
                    validation_policy: "required",
                    ..b
                },
                Running,
            ),
            (
                "unknown runner beats stale sync and policies",
                ClassifyInput {
                    runner: Unknown,
                    sync_state: Some("dirty"),
                    prerequisite_policy: "required",
                    ..b
                },
                Running,
            ),
            (
                "sync beats prerequisite",
                ClassifyInput {
                    sync_state: Some("stale"),
                    prerequisite_policy: "required",
                    ..b
                },
                StaleBookkeeping,
            ),
            (
                "prerequisite beats validation",
                ClassifyInput {
                    prerequisite_policy: "required",
                    validation_policy: "required",
                    ..b
                },
                HumanPrerequisite,
            ),
            (
                "validation beats a dead runner",
                ClassifyInput {
                    validation_policy: "required",
                    runner: Dead,
                    ..b
                },
                QualityGate,
            ),
            (
                "prerequisite beats a dead runner",
                ClassifyInput {
                    prerequisite_policy: "required",
                    runner: Dead,
                    ..b
                },
                HumanPrerequisite,
            ),
            (
                "dead runner + running plan is not running",
                ClassifyInput {
                    plan_status: Some("running"),
                    runner: Dead,
                    ..b
                },
                StaleBookkeeping,
            ),
            (
                "no plan: policies do not apply, dead runner is stale",
                ClassifyInput {
                    current_plan: None,
                    runner: Dead,
                    prerequisite_policy: "required",
                    validation_policy: "required",
                    ..b
                },
                StaleBookkeeping,
            ),
        ];
        for (name, input, want) in rows {
            assert_eq!(classify(&input), want, "{name}: {input:?}");
        }
    }

    #[test]
    fn names_are_snake_case() {
        assert_eq!(AwaitingPrMerge.as_str(), "awaiting_pr_merge");
        assert_eq!(
            serde_json::to_value(StaleBookkeeping).unwrap(),
            "stale_bookkeeping"
        );
        assert_eq!(HumanPrerequisite.to_string(), "human_prerequisite");
        assert_eq!(Liveness::from_status("connected"), Alive);
        assert_eq!(Liveness::from_status("dead"), Dead);
        assert_eq!(Liveness::from_status("weird"), Unknown);
    }
}
