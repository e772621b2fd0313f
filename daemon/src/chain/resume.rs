//! `resume`: the core's `next_step` translated into the words of the command that runs it.
//!
//! The real core (peteromallet/Arnold at 80208d744) names steps from its workflow table
//! (`arnold_pipelines/megaplan/_core/workflow_data.py` `WORKFLOW`) plus `feedback` and
//! `recover-blocked`; its own driver translates them in `auto._phase_command`: `execute` gets
//! `--confirm-destructive --user-approved --retry-blocked-tasks`, `feedback` becomes
//! `feedback workflow` (the non-interactive operation), `recover-blocked` becomes
//! `override recover-blocked --reason ...`, and multi-word steps (`override add-note`) are split
//! into words. Only the steps listed here are run; anything else is refused.

use crate::chain::error::ChainError;

/// Every `next_step` the core's workflow names, as it names it.
pub const RESUMABLE_STEPS: [&str; 19] = [
    "prep",
    "plan",
    "critique",
    "revise",
    "gate",
    "finalize",
    "execute",
    "review",
    "feedback",
    "tiebreaker",
    "tiebreaker-run",
    "tiebreaker-decide",
    "verify-human",
    "resume-clarify",
    "recover-blocked",
    "override add-note",
    "override force-proceed",
    "override abort",
    "override replan",
];

/// The reason `recover-blocked` passes, as the core's own driver words it.
pub const RECOVER_REASON: &str =
    "megaplan-cloudd resume: recover blocked plan after blocker resolution";

/// The command words for a `next_step`, without `--plan`.
pub fn step_command(next_step: &str) -> Result<Vec<String>, ChainError> {
    let step = next_step.trim();
    if !RESUMABLE_STEPS.contains(&step) {
        return Err(ChainError::NotResumable {
            next_step: next_step.to_string(),
        });
    }
    let words: Vec<String> = match step {
        "execute" => vec![
            "execute",
            "--confirm-destructive",
            "--user-approved",
            "--retry-blocked-tasks",
        ]
        .into_iter()
        .map(str::to_string)
        .collect(),
        "feedback" => vec!["feedback".into(), "workflow".into()],
        "recover-blocked" => vec![
            "override".into(),
            "recover-blocked".into(),
            "--reason".into(),
            RECOVER_REASON.into(),
        ],
        other => other.split_whitespace().map(str::to_string).collect(),
    };
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(step: &str) -> Vec<String> {
        step_command(step).unwrap()
    }

    #[test]
    fn steps_map_as_the_core_driver_maps_them() {
        assert_eq!(
            words("execute"),
            [
                "execute",
                "--confirm-destructive",
                "--user-approved",
                "--retry-blocked-tasks"
            ]
        );
        assert_eq!(words("feedback"), ["feedback", "workflow"]);
        assert_eq!(words("override add-note"), ["override", "add-note"]);
        assert_eq!(
            words("recover-blocked"),
            ["override", "recover-blocked", "--reason", RECOVER_REASON]
        );
        assert_eq!(words("critique"), ["critique"]);
        assert_eq!(words("verify-human"), ["verify-human"]);
    }

    #[test]
    fn anything_else_is_refused_naming_the_step() {
        for bad in [
            "step",
            "rm -rf /",
            "execute; id",
            "override set-model",
            "",
            "EXECUTE",
        ] {
            let e = step_command(bad).unwrap_err();
            assert_eq!(
                e.code(),
                megaplan_cloud_api::ErrorCode::InvalidStatus,
                "{bad}"
            );
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
    }
}
