//! The runner's life: `build`, `deploy`, `exec`, `logs`, `attach`, `down`, `destroy`. Each
//! request is built here from its clap arguments; the answers of build, deploy, down and destroy
//! are rendered for the question "did it work, and what changed?" (the daemon's own lines,
//! `build: ok`, `down: runner stopped`, already said the verdict as it happened).

use super::chain::Style;
use crate::cli::{self, Cmd};
use crate::columns;
use crate::failure::{local_error, usage_error};
use megaplan_cloud_api::ErrorCode;
use megaplan_cloud_api::output::{CommandOutput, Deployed, Destroyed};
use megaplan_cloud_api::wire::Command;
use std::io::{IsTerminal, Write};

/// The request of a runner command; `Err` is the exit code of a refusal said here.
pub fn request(cmd: Cmd, shown: &str) -> Result<Command, i32> {
    Ok(match cmd {
        Cmd::Build => Command::Build,
        Cmd::Deploy => Command::Deploy,
        Cmd::Logs {
            follow,
            no_follow,
            tail,
            since,
        } => {
            if let Some(bad) = since.as_deref().filter(|s| !cli::is_since(s)) {
                return Err(usage_error(format!(
                    "--since {bad:?}: use a duration ago in h, m, s (10m, 2h, 1h30m, 48h), a date (2026-12-01) or a time (2026-12-01T10:00:00Z)"
                )));
            }
            Command::Logs {
                follow: follow && !no_follow,
                tail,
                since,
            }
        }
        Cmd::Attach { session } => {
            // The runner's tmux needs a terminal on both ends; ssh would otherwise go on
            // without one and the operator would see a broken session.
            if !std::io::stdin().is_terminal() || !std::io::stdout().is_terminal() {
                return Err(local_error(
                    ErrorCode::InvalidArgs,
                    "attach needs a terminal (stdin and stdout are not both one): run it from an interactive shell, or use `exec` for one command",
                ));
            }
            Command::Attach { session }
        }
        Cmd::Exec { command, argv } => Command::Exec {
            cmd: command.unwrap_or_default(),
            argv,
        },
        Cmd::Down => Command::Down,
        Cmd::Destroy { yes } => {
            if !yes {
                confirm_destroy(shown)?;
            }
            Command::Destroy { yes: true }
        }
        other => return Err(not_mine(&other)),
    })
}

/// A dispatch mistake in this client, said rather than panicked on.
pub fn not_mine(cmd: &Cmd) -> i32 {
    local_error(
        ErrorCode::Internal,
        format!("megaplan-cloudctl sent {cmd:?} to the wrong command family; please report this"),
    )
}

/// Ask on the terminal before destroying; `Err` is the exit code when the answer is no (or
/// there is no terminal to ask on).
fn confirm_destroy(cloud_yaml: &str) -> Result<(), i32> {
    if !std::io::stdin().is_terminal() {
        return Err(local_error(
            ErrorCode::InvalidArgs,
            "destroy needs confirmation and there is no terminal to ask on: pass --yes",
        ));
    }
    eprint!(
        "Destroy the runner of {cloud_yaml}, its volume and deploy dir? Type 'yes' to confirm: "
    );
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    if std::io::stdin().read_line(&mut answer).is_ok() && answer.trim() == "yes" {
        Ok(())
    } else {
        // The operator said no: nothing failed, nothing to report but that.
        eprintln!("aborted");
        Err(1)
    }
}

/// The answer of build, deploy, down or destroy for a person.
pub fn text(out: &CommandOutput, style: Style) -> String {
    match out {
        // `build: ok` / `down: runner stopped` were the whole answer.
        CommandOutput::Built(_) | CommandOutput::Down(_) => String::new(),
        CommandOutput::Deployed(d) => deployed_text(d, style),
        CommandOutput::Destroyed(d) => destroyed_text(d),
        _ => String::new(),
    }
}

/// `deploy`: the verdict was said; a failed step is named with its detail and the last lines of
/// its output, so the fix needs no second command.
pub fn deployed_text(d: &Deployed, style: Style) -> String {
    let mut out = Vec::new();
    for step in d.report.steps.iter().filter(|s| s.status == "failed") {
        out.extend(columns::wrap(
            &format!("step {} failed: {}", step.name, step.detail),
            Some(style.width),
            "",
            "  ",
        ));
        let tail = if step.stderr_tail.trim().is_empty() {
            &step.stdout_tail
        } else {
            &step.stderr_tail
        };
        for line in tail
            .lines()
            .rev()
            .take(5)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            out.push(columns::truncate(&format!("  | {line}"), style.width));
        }
    }
    out.iter().map(|l| format!("{l}\n")).collect()
}

/// `destroy`: what went with the runner.
pub fn destroyed_text(d: &Destroyed) -> String {
    let mut out = String::new();
    if let Some(dir) = &d.deploy_dir_removed {
        out.push_str(&format!("removed the deploy dir {dir}\n"));
    }
    if let Some(volume) = &d.volume_deleted {
        out.push_str(&format!("deleted the volume {volume}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use megaplan_cloud_api::output::{DeployReport, DeployStep};

    #[test]
    fn a_failed_deploy_names_its_step_and_tail_within_80_columns() {
        let d = Deployed {
            report: DeployReport {
                success: false,
                provider: "ssh".into(),
                verdict: "deploy: failed".into(),
                image_rebuild: "unknown".into(),
                steps: vec![
                    DeployStep {
                        name: "build".into(),
                        status: "ok".into(),
                        detail: String::new(),
                        stdout_tail: String::new(),
                        stderr_tail: String::new(),
                    },
                    DeployStep {
                        name: "up".into(),
                        status: "failed".into(),
                        detail: "docker compose up exited 1".into(),
                        stdout_tail: String::new(),
                        stderr_tail: format!("{}\nport is already allocated", "x".repeat(200)),
                    },
                ],
                warnings: vec![],
            },
            agent_auth: None,
        };
        let text = deployed_text(
            &d,
            Style {
                width: 80,
                color: false,
            },
        );
        assert!(
            text.starts_with("step up failed: docker compose up exited 1\n"),
            "{text}"
        );
        assert!(text.contains("  | port is already allocated\n"), "{text}");
        assert!(!text.contains("step build"), "{text}");
        for line in text.lines() {
            assert!(line.chars().count() <= 80, "{line:?}");
        }
    }

    #[test]
    fn destroy_says_what_went_with_the_runner() {
        let d = Destroyed {
            deploy_dir_removed: Some("/home/u/.megaplan-cloud/deploy/k".into()),
            provider: "local".into(),
            success: true,
            volume_deleted: None,
        };
        assert_eq!(
            destroyed_text(&d),
            "removed the deploy dir /home/u/.megaplan-cloud/deploy/k\n"
        );
    }
}
