//! One plan on the runner: `status` ("where is my plan and what comes next?"), `bootstrap`
//! ("did my idea become a plan?") and `resume` ("did the next step run?"). Requests built from
//! the clap arguments; renderers over the api types, each a few lines at 80 columns.

use super::chain::Style;
use super::runner::not_mine;
use crate::cli::{Cmd, RepoOverrideArgs};
use crate::columns;
use crate::target::abs;
use megaplan_cloud_api::output::{Bootstrapped, PlanStatus, Resumed};
use megaplan_cloud_api::wire::{Command, RepoOverrides};

/// The repo overrides `bootstrap` and `chain` take (in memory only, never stored).
pub fn overrides(o: RepoOverrideArgs) -> RepoOverrides {
    RepoOverrides {
        repo_url: o.repo_url,
        repo_branch: o.repo_branch,
        repo_workspace: o.repo_workspace,
    }
}

/// The request of `status` (without --chain or --sessions), `bootstrap` or `resume`.
pub fn request(cmd: Cmd) -> Result<Command, i32> {
    Ok(match cmd {
        Cmd::Status {
            chain,
            all,
            remote_spec,
            plan,
        } => Command::Status {
            chain,
            all,
            remote_spec,
            plan,
        },
        Cmd::Bootstrap {
            idea,
            plan_name,
            robustness,
            overrides: o,
        } => Command::Bootstrap {
            idea: abs(&idea).display().to_string(),
            plan_name,
            robustness,
            overrides: overrides(o),
        },
        Cmd::Resume { plan } => Command::Resume { plan },
        other => return Err(not_mine(&other)),
    })
}

/// `label  value` lines, the value wrapped under itself.
fn fields(rows: &[(&str, String)], style: Style) -> String {
    let mut out = String::new();
    for (label, value) in rows {
        for line in columns::wrap(
            value,
            Some(style.width),
            &format!("{label:<11}"),
            &" ".repeat(11),
        ) {
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

/// `status`: the plan, its state and the step that comes next (and how to run it).
pub fn status_text(s: &PlanStatus, style: Style) -> String {
    let state = s.state().unwrap_or("unknown");
    let mut rows = vec![
        ("plan", s.plan().unwrap_or("(the most recent)").to_string()),
        ("state", state.to_string()),
    ];
    if s.failed() {
        let said = s.message().unwrap_or("the core reported success: false");
        rows.push(("failed", said.to_string()));
    }
    match s.next_step() {
        Some(step) => rows.push((
            "next",
            format!("{step} (run it with `megaplan-cloudctl resume`)"),
        )),
        None => rows.push(("next", "nothing to resume".to_string())),
    }
    fields(&rows, style)
}

/// `bootstrap`: where the idea went and the plan it became.
pub fn bootstrapped_text(b: &Bootstrapped, style: Style) -> String {
    let mut rows = vec![("idea", b.idea_file.clone())];
    if let Some(plan) = b.plan() {
        rows.push(("plan", plan.to_string()));
    }
    rows.push(("robustness", b.robustness.clone()));
    if b.success {
        rows.push((
            "next",
            "follow it with `megaplan-cloudctl status` or `megaplan-cloudctl attach`".to_string(),
        ));
    } else {
        rows.push((
            "failed",
            format!(
                "`megaplan init` exited {} (its output is above)",
                b.exit_code
            ),
        ));
    }
    fields(&rows, style)
}

/// `resume`: the step run and how it ended.
pub fn resumed_text(r: &Resumed, style: Style) -> String {
    let verdict = if r.success {
        "done".to_string()
    } else {
        format!("exited {} (its output is above)", r.exit_code)
    };
    let mut rows = vec![("step", format!("{}: {verdict}", r.next_step))];
    if let Some(plan) = &r.plan {
        rows.push(("plan", plan.clone()));
    }
    rows.push(("command", r.command.join(" ")));
    fields(&rows, style)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const AT_80: Style = Style {
        width: 80,
        color: false,
    };

    fn fits(text: &str) {
        for line in text.lines() {
            assert!(line.chars().count() <= 80, "{line:?}");
        }
    }

    #[test]
    fn status_says_the_plan_its_state_and_what_comes_next() {
        let s: PlanStatus = serde_json::from_value(json!({
            "plan": "add-login", "state": "executed", "next_step": "review",
            "iterations": 3, "artifacts": {"plan": "/w/.megaplan/plans/add-login/plan.md"}
        }))
        .unwrap();
        let text = status_text(&s, AT_80);
        assert_eq!(
            text,
            "plan       add-login\nstate      executed\nnext       review (run it with `megaplan-cloudctl resume`)\n"
        );
        let failed: PlanStatus = serde_json::from_value(json!({
            "success": false, "message": "no plans found in /w/.megaplan/plans; run bootstrap first with an idea file, then ask again"
        }))
        .unwrap();
        let text = status_text(&failed, AT_80);
        assert!(text.contains("state      unknown\n"), "{text}");
        assert!(text.contains("failed     no plans found"), "{text}");
        assert!(text.contains("next       nothing to resume\n"), "{text}");
        fits(&text);
        assert!(text.lines().count() <= 6, "{text}");
    }

    #[test]
    fn bootstrap_and_resume_answer_in_a_few_lines() {
        let b = Bootstrapped {
            exit_code: 0,
            idea_file: "/workspace/app/idea.txt".into(),
            init: serde_json::from_value(json!({"plan": "idea-1"})).unwrap(),
            plan_name: None,
            robustness: "standard".into(),
            success: true,
            workspace: "/workspace/app".into(),
        };
        let text = bootstrapped_text(&b, AT_80);
        assert!(
            text.starts_with("idea       /workspace/app/idea.txt\nplan       idea-1\n"),
            "{text}"
        );
        fits(&text);
        let r = Resumed {
            command: vec!["execute".into(), "--confirm-destructive".into()],
            exit_code: 2,
            next_step: "execute".into(),
            plan: Some("idea-1".into()),
            success: false,
            unquarantined: false,
        };
        let text = resumed_text(&r, AT_80);
        assert_eq!(
            text,
            "step       execute: exited 2 (its output is above)\nplan       idea-1\ncommand    execute --confirm-destructive\n"
        );
    }
}
