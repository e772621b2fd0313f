//! The chain as a person asks about it: `status --chain` ("where is my chain and what happens
//! next?") and `tick`/`supervise --chain` ("what did that tick see and do?"). Pure renderers over
//! the api types; the caller prints.

use crate::cli::Cmd;
use crate::columns;
use crate::failure::local_error;
use crate::render::{duration_text, relative};
use crate::target::abs;
use chrono::{DateTime, Utc};
use megaplan_cloud_api::ErrorCode;
use megaplan_cloud_api::report::{
    EffectiveStatus, Liveness, ProviderConsistency, ReportedStatus, TickEvent, TickReport,
};
use megaplan_cloud_api::status::{ChainLaunched, ChainSessions, ChainStatus};
use megaplan_cloud_api::wire::Command;
use megaplan_cloud_api::wire::TickRecord;

/// The request of `chain`, `chains` and `supervise --chain` (`status --chain` is built with
/// `status` in plan.rs; its answer is rendered here).
pub fn request(cmd: Cmd) -> Result<Command, i32> {
    Ok(match cmd {
        Cmd::Chain {
            spec,
            idea_dir,
            fresh,
            no_git_refresh,
            overrides,
        } => Command::Chain {
            spec: abs(&spec).display().to_string(),
            idea_dir: idea_dir.map(|d| abs(&d).display().to_string()),
            fresh,
            no_git_refresh,
            overrides: super::plan::overrides(overrides),
        },
        Cmd::Chains => Command::Chains,
        Cmd::Supervise { chain: false, .. } => {
            return Err(local_error(
                ErrorCode::InvalidArgs,
                "supervise needs --chain (the chain supervisor is the only one)",
            ));
        }
        Cmd::Supervise {
            remote_spec,
            dry_run,
            ..
        } => Command::Supervise {
            remote_spec,
            dry_run,
        },
        other => return Err(super::runner::not_mine(&other)),
    })
}

/// How the text is laid out: the terminal's width and colour.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    pub width: usize,
    pub color: bool,
}

impl Style {
    /// This terminal's width and the colour choice of the run.
    pub fn of_terminal() -> Self {
        Style {
            width: crate::columns::terminal_width(),
            color: crate::output::get().color,
        }
    }

    fn paint(&self, text: &str, sgr: &str) -> String {
        if self.color {
            format!("\x1b[{sgr}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    /// `label  value`, the value wrapped under itself.
    fn field(&self, out: &mut Vec<String>, label: &str, value: &str) {
        let first = format!("{label:<10}");
        let lines = columns::wrap(value, Some(self.width), &first, &" ".repeat(10));
        out.extend(lines);
    }
}

/// A status word for people, and its colour.
fn status_words(s: &ReportedStatus, stalled: Option<i64>) -> (String, &'static str) {
    if let Some(age) = stalled {
        return (
            format!(
                "stalled: the runner is alive but its log has not grown for {}",
                duration_text(age.unsigned_abs())
            ),
            "33",
        );
    }
    match s.classified() {
        Some(EffectiveStatus::Running) => ("running".into(), "32"),
        Some(EffectiveStatus::Complete) => ("complete".into(), "34"),
        Some(EffectiveStatus::AwaitingPrMerge) => ("awaiting PR merge".into(), "36"),
        Some(EffectiveStatus::StaleBookkeeping) => (
            "stale bookkeeping (the runner stopped mid-milestone)".into(),
            "33",
        ),
        Some(EffectiveStatus::HumanPrerequisite) => {
            ("waiting for a human prerequisite".into(), "1;31")
        }
        Some(EffectiveStatus::QualityGate) => ("stopped at a quality gate".into(), "1;31"),
        None => (format!("{s} (not classified)"), "2"),
    }
}

/// What the supervisor does with this chain at its next tick, and what a person should do
/// (`None` when nobody needs to).
fn next_and_fix(
    s: &ReportedStatus,
    runner: Liveness,
    pr: Option<i64>,
    consistency: Option<&ProviderConsistency>,
    stalled: bool,
    next_label: Option<&str>,
) -> (String, Option<String>) {
    if let Some(ProviderConsistency::Mismatch { reason }) = consistency {
        return (
            "nothing: the last chain was launched elsewhere, so ticks never touch it".into(),
            Some(
                reason
                    .clone()
                    .unwrap_or_else(|| "relaunch the chain with this cloud.yaml".into()),
            ),
        );
    }
    let pr_text = pr.map_or_else(|| "the milestone's PR".to_string(), |n| format!("PR #{n}"));
    let attach = "look at the runner: `megaplan-cloudctl attach` (or `logs`)";
    let (next, fix) = match s.classified() {
        Some(EffectiveStatus::Running) => (
            "nothing: a running chain is left alone".to_string(),
            stalled.then(|| attach.to_string()),
        ),
        Some(EffectiveStatus::Complete) => ("nothing: every milestone is done".to_string(), None),
        Some(EffectiveStatus::AwaitingPrMerge) => (
            format!(
                "once {pr_text} is merged and the runner has stopped, the next tick starts {}",
                next_label.map_or_else(|| "the next milestone".to_string(), |l| l.to_string())
            ),
            Some(format!("merge {pr_text}")),
        ),
        Some(EffectiveStatus::StaleBookkeeping) if runner == Liveness::Dead => {
            ("the next tick restarts the runner".to_string(), None)
        }
        Some(EffectiveStatus::StaleBookkeeping) => (
            "nothing while the runner is alive (a live runner is never restarted)".to_string(),
            stalled.then(|| attach.to_string()),
        ),
        Some(EffectiveStatus::HumanPrerequisite) => (
            "nothing until a person resolves the prerequisite".to_string(),
            Some(format!("{attach}, resolve it; the next tick continues")),
        ),
        Some(EffectiveStatus::QualityGate) => (
            "nothing until a person resolves or accepts the gate".to_string(),
            Some(format!(
                "{attach}, resolve or accept it; the next tick continues"
            )),
        ),
        None => (
            "nothing: an unknown status is never acted on".to_string(),
            Some("run `megaplan-cloudctl status --chain --json` and check the runner".into()),
        ),
    };
    (next, fix)
}

fn ago(at: Option<&str>, now: DateTime<Utc>) -> Option<String> {
    at.map(|t| match relative(t, now).as_str() {
        "now" => "just now".to_string(),
        other => other.to_string(),
    })
}

/// `status --chain` for a person: at most 25 lines at 80 columns.
pub fn status_text(s: &ChainStatus, now: DateTime<Utc>, style: Style) -> String {
    let mut out = Vec::new();
    style.field(&mut out, "chain", &s.spec);
    let stalled = s.is_stalled().then(|| s.stalled_for_secs.unwrap_or(0));
    let (words, sgr) = status_words(&s.effective_status, stalled);
    let state_lines = columns::wrap(&words, Some(style.width), "state     ", "          ");
    for l in state_lines {
        // Only the words are painted; the label (the first 10 columns) stays plain.
        match (l.get(..10), l.get(10..)) {
            (Some(label), Some(text)) => out.push(format!("{label}{}", style.paint(text, sgr))),
            _ => out.push(l),
        }
    }
    let count = s
        .milestone_count
        .max(u32::try_from(s.summary.per_milestone.len()).unwrap_or(0));
    let milestone = match &s.summary.current_milestone {
        Some(m) => format!("{}/{count} {}", m.index + 1, m.label),
        None if !s.summary.completed.is_empty()
            && s.summary.completed.len() == s.summary.per_milestone.len() =>
        {
            format!("{count}/{count} (all done)")
        }
        None => format!("0/{count} (not started)"),
    };
    let plan = s
        .summary
        .current_plan_name
        .as_deref()
        .map(|p| format!(", plan {p}"))
        .unwrap_or_default();
    style.field(&mut out, "milestone", &format!("{milestone}{plan}"));
    if !s.summary.per_milestone.is_empty() {
        let marks: Vec<String> = s
            .summary
            .per_milestone
            .iter()
            .map(|m| match m.status.as_str() {
                "completed" => format!("✓ {}", m.label),
                "in_progress" => format!("▶ {}", m.label),
                _ => format!("· {}", m.label),
            })
            .collect();
        let line = format!("{:<10}{}", "", marks.join("  "));
        out.push(columns::truncate(&line, style.width));
    }
    if let Some(n) = s.pr_number() {
        let state =
            s.pr.merge_probe
                .clone()
                .or_else(|| s.pr.pr_state.clone().flatten())
                .or_else(|| s.summary.pr_state.clone().flatten())
                .unwrap_or_else(|| "state unknown".into());
        style.field(&mut out, "PR", &format!("#{n} ({state})"));
    }
    let runner = s.runner.status.unwrap_or(Liveness::Unknown);
    let session = s
        .runner
        .session
        .as_deref()
        .or(s.resolved_session.as_deref())
        .map(|name| format!(" (tmux session {name})"))
        .unwrap_or_default();
    style.field(&mut out, "runner", &format!("{runner}{session}"));
    let progress = match (ago(s.logs.mtime(), now), s.logs.size()) {
        (Some(when), Some(size)) => format!("log grew {when} ({size} bytes)"),
        (Some(when), None) => format!("log grew {when}"),
        _ => "no chain log yet".to_string(),
    };
    style.field(&mut out, "progress", &progress);
    let next_label = s
        .summary
        .per_milestone
        .iter()
        .find(|m| m.status == "pending")
        .map(|m| m.label.as_str());
    let (next, fix) = next_and_fix(
        &s.effective_status,
        runner,
        s.pr_number(),
        s.provider_consistency.as_ref(),
        s.is_stalled(),
        next_label,
    );
    style.field(&mut out, "next", &next);
    if let Some(fix) = fix {
        let mut lines = Vec::new();
        style.field(&mut lines, "fix", &fix);
        out.extend(lines.into_iter().map(|l| style.paint(&l, "1")));
    }
    let mut text = out.join("\n");
    text.push('\n');
    text
}

/// `status --sessions` / `chains`: one line per session.
pub fn sessions_text(s: &ChainSessions, width: Option<usize>, color: bool) -> String {
    use crate::columns::{Cell, Column, Fit};
    if s.sessions.is_empty() {
        return "no megaplan-chain sessions on the runner\n".to_string();
    }
    let columns = [
        Column {
            header: "SESSION",
            fit: Fit::Keep,
        },
        Column {
            header: "STATE",
            fit: Fit::Keep,
        },
        Column {
            header: "STARTED",
            fit: Fit::Keep,
        },
        Column {
            header: "SPEC",
            fit: Fit::CutStart { min: 10 },
        },
    ];
    let now = Utc::now();
    let rows: Vec<Vec<Cell>> = s
        .sessions
        .iter()
        .map(|x| {
            let state = if x.alive {
                Cell::painted("running", "32")
            } else {
                Cell::painted("dead", "2")
            };
            let spec = match x.marker_status.as_str() {
                "present" => x.remote_spec.clone().unwrap_or_else(|| "-".into()),
                other => format!("(marker {other})"),
            };
            vec![
                Cell::plain(x.session.clone()),
                state,
                Cell::plain(
                    x.started_at
                        .as_deref()
                        .map_or("-".into(), |t| relative(t, now)),
                ),
                Cell::plain(spec),
            ]
        })
        .collect();
    let mut text = columns::render(&columns, &rows, width, color).join("\n");
    text.push('\n');
    text
}

/// `chain`: what was started and how to follow it.
pub fn launched_text(c: &ChainLaunched) -> String {
    if c.already_running {
        return format!(
            "the chain is already running in tmux session {}; nothing was started\n",
            c.session
        );
    }
    let what = match (c.milestones, &c.current_milestone) {
        (Some(n), Some(first)) => format!(" ({n} milestones, starting with {first})"),
        (Some(n), None) => format!(" ({n} milestones)"),
        _ => String::new(),
    };
    let alive = if c.session_alive == Some(false) {
        " — but the session has already exited: see `megaplan-cloudctl logs`"
    } else {
        ""
    };
    format!(
        "started the chain{what} in tmux session {}{alive}\nfollow it: `megaplan-cloudctl status --chain`, `megaplan-cloudctl ls`, `megaplan-cloudctl attach`\n",
        c.session
    )
}

fn event_words(r: &TickReport) -> &'static str {
    match (&r.event, r.dry_run) {
        (_, true) => "dry run: nothing was changed",
        (TickEvent::Tick, _) => "observed; nothing to do",
        (TickEvent::Blocked, _) => "refused to act",
        (TickEvent::Advanced, _) => "merged PR seen: started the next milestone",
        (TickEvent::Restarted, _) => "restarted the stopped runner",
        (TickEvent::Error, _) => "failed",
        (TickEvent::Other(_), _) => "did something this client does not know",
    }
}

/// A tick for a person (`tick`, `supervise --chain`): at most 10 lines.
pub fn tick_text(
    rec: Option<&TickRecord>,
    r: &TickReport,
    now: DateTime<Utc>,
    style: Style,
) -> String {
    let mut out = Vec::new();
    let head = match rec {
        Some(t) => format!(
            "{} tick {} ({:.1}s): {}",
            t.trigger,
            relative(&t.finished_at, now),
            t.duration_ms as f64 / 1000.0,
            event_words(r)
        ),
        None => format!("tick: {}", event_words(r)),
    };
    let sgr = if r.success { "1" } else { "1;31" };
    out.push(style.paint(&columns::truncate(&head, style.width), sgr));
    if r.success {
        let stalled = r.is_stalled().then(|| r.stalled_for_secs().unwrap_or(0));
        let (words, _) = status_words(&r.effective_status, stalled);
        let at = r
            .milestone
            .as_ref()
            .map(|m| match &m.label {
                Some(l) => format!(", milestone {}/{} {l}", m.number, m.count),
                None => format!(", milestone {}/{}", m.number, m.count),
            })
            .unwrap_or_default();
        style.field(&mut out, "saw", &format!("{words}{at}"));
        let runner = r.runner.status.unwrap_or(Liveness::Unknown);
        let grew = ago(r.logs.mtime(), now)
            .map(|w| format!(", log grew {w}"))
            .unwrap_or_default();
        style.field(&mut out, "runner", &format!("{runner}{grew}"));
    }
    if let Some(why) = &r.refused_reason {
        style.field(&mut out, "why", why);
    }
    if let Some(p) = r.pause() {
        style.field(
            &mut out,
            "paused",
            &format!("by {} {}", p.paused_by, relative(&p.since, now)),
        );
    }
    let mut text: Vec<String> = out.into_iter().take(10).collect();
    text.push(String::new());
    text.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-12-01T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn style() -> Style {
        Style {
            width: 80,
            color: false,
        }
    }

    fn status(json: serde_json::Value) -> ChainStatus {
        serde_json::from_value(json).unwrap()
    }

    fn stalled_chain() -> ChainStatus {
        let labels: Vec<String> = (1..=12).map(|i| format!("milestone-number-{i}")).collect();
        let per: Vec<serde_json::Value> = labels
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let st = match i {
                    0..=3 => "completed",
                    4 => "in_progress",
                    _ => "pending",
                };
                serde_json::json!({"label": l, "index": i, "status": st})
            })
            .collect();
        status(serde_json::json!({
            "spec": "/workspace/app/epic/chain.yaml", "effective_status": "running",
            "milestone_count": 12,
            "summary": {"current_milestone": {"label": "milestone-number-5", "index": 4},
                        "per_milestone": per, "current_plan_name": "plan-m5",
                        "completed": [], "remaining": []},
            "runner": {"status": "alive", "session": "megaplan-chain"},
            "logs": {"path": "/w/log", "exists": true, "mtime": "2026-12-01T11:45:59Z", "size": 4096},
            "pr": {"pr_number": null}, "stalled": true, "stalled_for_secs": 841,
            "stall_after_secs": 600,
            "warnings": ["one", "two", "three", "four"],
            "chain_state": {"lots": "of", "other": ["fields"]}, "sync": {"sync_state": "synced"}
        }))
    }

    #[test]
    fn a_stalled_chain_fits_25_lines_of_80_columns_and_says_what_to_do() {
        let t = status_text(&stalled_chain(), now(), style());
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines.len() <= 25, "{} lines:\n{t}", lines.len());
        for l in &lines {
            assert!(columns::chars(l) <= 80, "{l}");
        }
        assert!(
            t.contains("stalled: the runner is alive but its log has not grown for 14m01s"),
            "{t}"
        );
        assert!(
            t.contains("milestone 5/12 milestone-number-5, plan plan-m5"),
            "{t}"
        );
        assert!(t.contains("log grew 14m ago (4096 bytes)"), "{t}");
        assert!(t.contains("fix       look at the runner"), "{t}");
        // Warnings reach the terminal on stderr, as the daemon says them.
        assert!(!t.contains("warning"), "{t}");
        assert!(
            !t.contains("lots"),
            "the rest of the payload stays in --json: {t}"
        );
    }

    #[test]
    fn awaiting_a_pr_names_it_and_what_the_next_tick_does() {
        let s = status(serde_json::json!({
            "spec": "/w/chain.yaml", "effective_status": "awaiting_pr_merge", "milestone_count": 2,
            "summary": {"current_milestone": {"label": "m1", "index": 0},
                        "per_milestone": [{"label": "m1", "index": 0, "status": "in_progress"},
                                          {"label": "m2", "index": 1, "status": "pending"}]},
            "runner": {"status": "dead"}, "pr": {"pr_number": 7, "pr_state": "open"}
        }));
        let t = status_text(&s, now(), style());
        assert!(t.contains("PR        #7 (open)"), "{t}");
        assert!(t.contains("runner    dead\n"), "{t}");
        assert!(t.contains("once PR #7 is merged"), "{t}");
        assert!(
            t.contains("the next tick starts") && t.contains("m2"),
            "{t}"
        );
        assert!(t.contains("fix       merge PR #7"), "{t}");
    }

    #[test]
    fn a_tick_is_a_few_lines() {
        let r: TickReport = serde_json::from_value(serde_json::json!({
            "acted": false, "effective_status": "awaiting_pr_merge", "event": "supervisor_blocked",
            "next_action": "blocked", "success": true,
            "refused_reason": "awaiting PR merge (PR #7 state=open); supervisor will not advance until PR is merged",
            "runner": {"status": "alive"}, "logs": {"mtime": "2026-12-01T11:59:00Z"},
            "milestone": {"number": 1, "count": 2, "label": "m1"}
        }))
        .unwrap();
        let t = tick_text(None, &r, now(), style());
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines.len() <= 10, "{t}");
        assert!(lines[0].contains("refused to act"), "{t}");
        assert!(
            t.contains("saw       awaiting PR merge, milestone 1/2 m1"),
            "{t}"
        );
        assert!(t.contains("runner    alive, log grew 1m ago"), "{t}");
        assert!(t.contains("why       awaiting PR merge (PR #7"), "{t}");
        for l in &lines {
            assert!(columns::chars(l) <= 80, "{l}");
        }
    }

    #[test]
    fn sessions_are_one_line_each_and_a_launch_says_how_to_follow_it() {
        let s: ChainSessions = serde_json::from_value(serde_json::json!({"success": true,
        "sessions": [
            {"session": "megaplan-chain", "alive": true, "marker_status": "present",
             "remote_spec": "/workspace/app/a/very/long/path/to/the/epic/chain.yaml",
             "started_at": "2026-12-01T11:00:00Z", "status": "running"},
            {"session": "megaplan-chain-2", "alive": false, "marker_status": "missing"}
        ]}))
        .unwrap();
        let t = sessions_text(&s, Some(60), false);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(
            lines[1].starts_with("megaplan-chain ") && lines[1].contains("running"),
            "{t}"
        );
        assert!(lines[1].ends_with("epic/chain.yaml"), "{t}");
        assert!(
            lines[2].contains("dead") && lines[2].contains("(marker missing)"),
            "{t}"
        );
        for l in &lines {
            assert!(columns::chars(l) <= 60, "{l}");
        }
        let c: ChainLaunched = serde_json::from_value(serde_json::json!({
            "session": "megaplan-chain", "session_alive": true, "milestones": 3,
            "current_milestone": "m1", "event": "cloud_chain_launched"}))
        .unwrap();
        let t = launched_text(&c);
        assert!(
            t.starts_with(
                "started the chain (3 milestones, starting with m1) in tmux session megaplan-chain"
            ),
            "{t}"
        );
        assert!(t.contains("status --chain"), "{t}");
    }
}
