//! The supervise decision: a pure map from the observed facts of one tick to one event, one
//! next action and at most one mutation, plus the only mutation script the supervisor can emit.
//!
//! The mutation script is built from a closed set of commands (tmux, mkdir, the launcher's
//! python for the session marker, `chain start --one`). It never runs git, never deletes
//! files, and never kills a runner that is alive or that belongs to another chain.

use crate::chain::classify::{EffectiveStatus, Liveness};
use crate::chain::observe::{DRIVER_CHECK_PY, DRIVER_WAIT_PY, python_prelude};
use crate::shell::quote;
use megaplan_cloud_api::report::{NextAction, ProviderConsistency, TickEvent};

/// Exit status of the mutation script when the session marker names another chain.
pub const EXIT_FOREIGN_MARKER: i32 = 17;
/// Exit status when the runner session turned out to be alive at mutation time.
pub const EXIT_LIVE_RUNNER: i32 = 18;

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

    fn plain(event: TickEvent, next_action: NextAction) -> Decision {
        Decision {
            event,
            next_action,
            acted: false,
            refused_reason: None,
            mutation: None,
        }
    }

    fn refuse(event: TickEvent, next_action: NextAction, reason: String) -> Decision {
        Decision {
            refused_reason: Some(reason),
            ..Decision::plain(event, next_action)
        }
    }

    fn blocked(reason: impl Into<String>) -> Decision {
        Decision::refuse(TickEvent::Blocked, NextAction::Blocked, reason.into())
    }

    fn mutate(kind: MutationKind) -> Decision {
        let event = match kind {
            MutationKind::RestartRunner => TickEvent::Restarted,
            MutationKind::Advance => TickEvent::Advanced,
        };
        Decision {
            acted: true,
            mutation: Some(kind),
            ..Decision::plain(event, kind.next_action())
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
        return Some(Decision::blocked(format!(
            "provider consistency mismatch: {}",
            reason.as_deref().unwrap_or("unknown")
        )));
    }
    (!has_exec).then(|| Decision::blocked(NO_EXEC_REASON))
}

/// The decision for a provider that cannot run commands on the runner (nothing observed, so
/// there is no status): the same first two checks as [`decide`].
pub fn decide_without_exec(consistency: &ProviderConsistency) -> Decision {
    precheck(consistency, false).unwrap_or_else(|| Decision::blocked(NO_EXEC_REASON))
}

/// Decide one tick. Checked in order: provider consistency, exec capability, then the status.
pub fn decide(f: &TickFacts) -> Decision {
    if let Some(d) = precheck(&f.provider_consistency, f.has_exec) {
        return d;
    }
    match f.effective_status {
        EffectiveStatus::Running => Decision::plain(TickEvent::Tick, NextAction::Noop),
        EffectiveStatus::Complete => Decision::plain(TickEvent::Tick, NextAction::Done),
        EffectiveStatus::HumanPrerequisite => Decision::blocked(HUMAN_PREREQUISITE_REASON),
        EffectiveStatus::QualityGate => Decision::blocked(QUALITY_GATE_REASON),
        EffectiveStatus::AwaitingPrMerge => {
            let probe = f.pr_probe.as_deref().unwrap_or("unknown");
            let pr = pr_label(f.pr_number);
            if probe != "merged" {
                return Decision::blocked(format!(
                    "awaiting PR merge (PR #{pr} state={probe}); supervisor will not advance until PR is merged"
                ));
            }
            // The one-shot start would collide with a session still present, and an
            // unprobeable runner might be live: only a confirmed-dead runner is advanced.
            match f.liveness {
                Liveness::Dead => Decision::mutate(MutationKind::Advance),
                Liveness::Alive => Decision::blocked(format!(
                    "PR #{pr} is merged but the runner session is alive; supervisor will not start a second runner or kill a live one"
                )),
                Liveness::Unknown => Decision::blocked(format!(
                    "PR #{pr} is merged but runner liveness is unknown; supervisor will not advance without confirming the runner is stopped"
                )),
            }
        }
        EffectiveStatus::StaleBookkeeping => match f.liveness {
            Liveness::Dead => Decision::mutate(MutationKind::RestartRunner),
            Liveness::Alive => Decision::blocked(LIVE_STALE_REASON),
            Liveness::Unknown => Decision::blocked(
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
        Hold::Paused { by, since } => Decision::blocked(format!(
            "paused by {by} since {since}: the supervisor would {} but does not mutate a paused registration; `megaplan-cloudctl unpause` resumes it",
            kind.as_str()
        )),
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
            TickEvent::Error,
            NextAction::Blocked,
            format!("{prefix}: {why}"),
        )
    };
    let detail = detail.trim();
    match result {
        Ok(0) => Decision::mutate(kind),
        Ok(EXIT_FOREIGN_MARKER) => Decision::blocked(
            "the session marker on the runner names a different chain; supervisor will not touch another chain's session",
        ),
        Ok(EXIT_LIVE_RUNNER) => Decision::blocked(
            "the runner is alive at restart time (its session, or a process driving this chain); supervisor will not kill or replace a live runner",
        ),
        Ok(code) if detail.is_empty() => failed(format!("exit status {code}")),
        Ok(code) => failed(format!("exit status {code}: {detail}")),
        Err(e) => failed(e),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MutationTarget {
    pub session: String,
    pub workspace: String,
    /// The remote spec path.
    pub spec: String,
    pub launcher: String,
    /// Chain log; relative paths are under the workspace.
    pub log_path: String,
    pub marker_dir: String,
    pub identity_digest: Option<String>,
}

impl MutationTarget {
    pub(crate) fn log_abs(&self) -> String {
        if self.log_path.starts_with('/') {
            self.log_path.clone()
        } else {
            format!("{}/{}", self.workspace.trim_end_matches('/'), self.log_path)
        }
    }

    pub(crate) fn log_dir(&self) -> String {
        let abs = self.log_abs();
        match abs.rsplit_once('/') {
            Some(("", _)) => "/".to_string(),
            Some((dir, _)) => dir.to_string(),
            None => ".".to_string(),
        }
    }

    pub(crate) fn marker_file(&self) -> String {
        format!(
            "{}/{}.json",
            self.marker_dir.trim_end_matches('/'),
            self.session
        )
    }

    /// The runner command tmux starts: the canonical one-shot chain tick, appending to the log.
    pub(crate) fn runner_command(&self) -> String {
        let launcher: Vec<String> = self.launcher.split_whitespace().map(quote).collect();
        format!(
            "MEGAPLAN_TRUSTED_CONTAINER=1 {} chain start --spec {} --one >> {} 2>&1",
            launcher.join(" "),
            quote(&self.spec),
            quote(&self.log_abs())
        )
    }
}

/// Exits 0 when the marker is absent or names this spec (compared after resolving both paths
/// on the runner), 17 otherwise. argv: marker file, spec.
const MARKER_CHECK_PY: &str = r#"import json, os, sys
path, spec = sys.argv[1], sys.argv[2]
if not os.path.exists(path):
    sys.exit(0)
try:
    with open(path) as fh:
        named = json.load(fh).get("remote_spec")
except Exception as exc:
    sys.stderr.write("megaplan-supervisor: unreadable session marker %s: %s\n" % (path, exc))
    sys.exit(17)
if isinstance(named, str) and (named == spec or os.path.realpath(named) == os.path.realpath(spec)):
    sys.exit(0)
sys.stderr.write("megaplan-supervisor: session marker %s names %r, not %r\n" % (path, named, spec))
sys.exit(17)
"#;

/// Writes the session marker atomically. argv: marker file, session, workspace, spec, identity
/// digest ('' = none), run kind, trigger.
const MARKER_WRITE_PY: &str = r#"import datetime, json, os, sys
path, session, workspace, spec, digest, kind, trigger = sys.argv[1:8]
now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
marker = {"session": session, "workspace": workspace, "remote_spec": spec,
          "identity_digest": digest or None, "run_kind": kind, "trigger": trigger,
          "started_at": now.isoformat().replace("+00:00", "Z")}
tmp = path + ".tmp"
with open(tmp, "w") as fh:
    fh.write(json.dumps(marker, sort_keys=True) + "\n")
os.replace(tmp, path)
"#;

/// The shell command writing a launch's session marker on the runner (atomically, sorted keys):
/// `{session, workspace, remote_spec, identity_digest, run_kind, trigger, started_at}`. Needs
/// `$py` from [`python_prelude`]. Every launch, by `chain` or by the supervisor, writes it.
pub fn session_marker_command(
    marker_file: &str,
    session: &str,
    workspace: &str,
    spec: &str,
    digest: &str,
    run_kind: &str,
    trigger: &str,
) -> String {
    format!(
        "\"$py\" -c {} {} {} {} {} {} {} {}",
        quote(MARKER_WRITE_PY),
        quote(marker_file),
        quote(session),
        quote(workspace),
        quote(spec),
        quote(digest),
        quote(run_kind),
        quote(trigger)
    )
}

/// The ONLY mutation script the supervisor emits. In order: refuse (17) when the session marker
/// names another chain; refuse (18) when any process on the runner drives `chain start` for this
/// spec (whatever tmux session started it, or none: `observe.py` mode `drivers`); if the session
/// exists, refuse (18) unless every pane in it is dead, then kill exactly that session; create
/// the log and marker dirs; write the session marker (every launch writes it); start the
/// one-shot chain tick in tmux. A `--one` tick may legitimately
/// finish within a second, so a session already gone afterwards is reported, not failed.
/// Every value is passed through `shell::quote`.
pub fn mutation_script(kind: MutationKind, t: &MutationTarget) -> String {
    let target = quote(&format!("={}", t.session));
    let lines = [
        python_prelude(&t.launcher),
        format!(
            "\"$py\" -c {} {} {}; rc=$?; if [ \"$rc\" -ne 0 ]; then exit \"$rc\"; fi",
            quote(MARKER_CHECK_PY),
            quote(&t.marker_file()),
            quote(&t.spec)
        ),
        format!(
            "\"$py\" -c {} {} {} {}; rc=$?; if [ \"$rc\" -ne 0 ]; then exit \"$rc\"; fi",
            quote(DRIVER_CHECK_PY),
            quote(&t.spec),
            quote(&t.workspace),
            quote(&t.launcher)
        ),
        format!("if tmux has-session -t {target} 2>/dev/null; then"),
        format!(
            "  panes=$(tmux list-panes -s -t {target} -F '#{{pane_dead}}' 2>/dev/null) || {{ echo 'megaplan-supervisor: cannot inspect the existing runner session; refusing to kill it' >&2; exit {EXIT_LIVE_RUNNER}; }}"
        ),
        format!(
            "  if [ -z \"$panes\" ] || printf '%s\\n' \"$panes\" | grep -qx 0; then echo 'megaplan-supervisor: the runner session has a live process; refusing to kill or replace it' >&2; exit {EXIT_LIVE_RUNNER}; fi"
        ),
        format!("  tmux kill-session -t {target} || exit 1"),
        "fi".to_string(),
        format!(
            "mkdir -p {} {} || exit 1",
            quote(&t.log_dir()),
            quote(t.marker_dir.trim_end_matches('/'))
        ),
        format!(
            "{} || exit 1",
            session_marker_command(
                &t.marker_file(),
                &t.session,
                &t.workspace,
                &t.spec,
                t.identity_digest.as_deref().unwrap_or(""),
                "supervise",
                kind.as_str()
            )
        ),
        format!(
            "tmux new-session -d -s {} -c {} {} || exit 1",
            quote(&t.session),
            quote(&t.workspace),
            quote(&t.runner_command())
        ),
        // Verify the new runner without a fixed sleep (drivers.py `wait_main`).
        format!(
            "\"$py\" -c {} {} {} {} {}",
            quote(DRIVER_WAIT_PY),
            quote(&t.spec),
            quote(&t.workspace),
            quote(&t.launcher),
            quote(&t.session)
        ),
        format!(
            "if tmux has-session -t {target} 2>/dev/null; then echo 'megaplan-supervisor: runner started'; else echo 'megaplan-supervisor: runner started and already finished its one-shot tick'; fi"
        ),
    ];
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;
    use std::path::Path;
    use std::process::Command;

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
        for (name, f, want) in cases {
            let d = decide(&f);
            assert_eq!(row(&d), want, "{name}");
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
        let d = mutation_outcome(Advance, Ok(EXIT_FOREIGN_MARKER), "names /other");
        assert_eq!(
            (d.event.as_str(), d.acted, d.success()),
            ("supervisor_blocked", false, true)
        );
        let d = mutation_outcome(RestartRunner, Ok(EXIT_LIVE_RUNNER), "");
        assert_eq!((d.event.as_str(), d.acted), ("supervisor_blocked", false));
        let d = mutation_outcome(RestartRunner, Ok(1), " tmux: no server \n");
        assert_eq!(
            d.refused_reason.as_deref(),
            Some("stale bookkeeping restart failed: exit status 1: tmux: no server")
        );
        let d = mutation_outcome(Advance, Err("timed out".into()), "");
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

    // ---- a small POSIX tokenizer, enough to read our own scripts back ----

    #[derive(Debug, Clone, PartialEq)]
    enum Tok {
        Word(String),
        Op(String),
    }

    fn tokenize(s: &str) -> Vec<Tok> {
        let mut out = Vec::new();
        let mut word = String::new();
        let mut in_word = false;
        let mut chars = s.chars().peekable();
        let flush = |word: &mut String, in_word: &mut bool, out: &mut Vec<Tok>| {
            if *in_word {
                out.push(Tok::Word(std::mem::take(word)));
                *in_word = false;
            }
        };
        while let Some(c) = chars.next() {
            match c {
                '\'' => {
                    in_word = true;
                    for q in chars.by_ref() {
                        if q == '\'' {
                            break;
                        }
                        word.push(q);
                    }
                }
                '"' => {
                    in_word = true;
                    while let Some(q) = chars.next() {
                        match q {
                            '"' => break,
                            '\\' if matches!(chars.peek(), Some('"' | '\\' | '$' | '`')) => {
                                word.push(chars.next().unwrap_or_default())
                            }
                            _ => word.push(q),
                        }
                    }
                }
                '\\' => {
                    in_word = true;
                    if let Some(n) = chars.next() {
                        word.push(n);
                    }
                }
                ' ' | '\t' => flush(&mut word, &mut in_word, &mut out),
                '\n' => {
                    flush(&mut word, &mut in_word, &mut out);
                    out.push(Tok::Op(";".into()));
                }
                ';' | '|' | '&' | '(' | ')' | '<' | '>' => {
                    flush(&mut word, &mut in_word, &mut out);
                    let mut op = c.to_string();
                    while let Some(&n) = chars.peek() {
                        if ";|&<>".contains(n) && !(op.ends_with(';') && n != ';') {
                            op.push(n);
                            chars.next();
                        } else {
                            break;
                        }
                    }
                    out.push(Tok::Op(op));
                }
                _ => {
                    in_word = true;
                    word.push(c);
                }
            }
        }
        flush(&mut word, &mut in_word, &mut out);
        out
    }

    /// The words of every simple command: split at `;`, `|`, `&`, `(`, `)` and newlines, with
    /// leading keywords and assignments dropped and redirection targets removed.
    fn simple_commands(toks: &[Tok]) -> Vec<Vec<String>> {
        const KEYWORDS: [&str; 8] = ["if", "then", "else", "elif", "fi", "!", "{", "}"];
        let mut out: Vec<Vec<String>> = Vec::new();
        let mut current: Vec<String> = Vec::new();
        let mut after_redirect = false;
        for t in toks {
            match t {
                Tok::Op(op) if op.contains('<') || op.contains('>') => after_redirect = true,
                Tok::Op(_) => {
                    if !current.is_empty() {
                        out.push(std::mem::take(&mut current));
                    }
                    after_redirect = false;
                }
                Tok::Word(w) => {
                    if after_redirect {
                        after_redirect = false;
                        continue;
                    }
                    let is_assignment = w.split_once('=').is_some_and(|(n, _)| {
                        !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    });
                    if current.is_empty() && (KEYWORDS.contains(&w.as_str()) || is_assignment) {
                        continue;
                    }
                    current.push(w.clone());
                }
            }
        }
        if !current.is_empty() {
            out.push(current);
        }
        out
    }

    const ALLOWED_COMMANDS: [&str; 10] = [
        "$py", "tmux", "mkdir", "exit", "echo", "sleep", "printf", "grep", "[", "command",
    ];
    const FORBIDDEN: [&str; 9] = [
        "push",
        "reset",
        "checkout",
        "branch -d",
        "branch -D",
        "rm -rf",
        "rm -r",
        "clean -f",
        "git ",
    ];

    fn neutral_target() -> MutationTarget {
        MutationTarget {
            session: "megaplan-chain".into(),
            workspace: "/workspace/app".into(),
            spec: "/workspace/app/chain.yaml".into(),
            launcher: "python -m arnold.pipelines.megaplan".into(),
            log_path: ".megaplan/cloud-chain.log".into(),
            marker_dir: "/workspace/.megaplan/cloud-sessions".into(),
            identity_digest: Some("abc".into()),
        }
    }

    /// An acting tick verifies the new runner by polling, never by a fixed sleep.
    #[test]
    fn mutation_script_has_no_fixed_sleep() {
        for kind in [MutationKind::RestartRunner, MutationKind::Advance] {
            let script = mutation_script(kind, &neutral_target());
            for cmd in simple_commands(&tokenize(&script)) {
                assert_ne!(
                    cmd[0], "sleep",
                    "a fixed sleep in the mutation script: {cmd:?}"
                );
            }
            assert!(script.contains(&quote(DRIVER_WAIT_PY)));
        }
    }

    #[test]
    fn template_has_no_destructive_commands() {
        for kind in [MutationKind::RestartRunner, MutationKind::Advance] {
            let script = mutation_script(kind, &neutral_target());
            for bad in FORBIDDEN {
                assert!(!script.contains(bad), "{bad:?} in {script}");
            }
            check_script(kind, &neutral_target()).unwrap();
        }
        let t = neutral_target();
        assert_eq!(
            t.runner_command(),
            "MEGAPLAN_TRUSTED_CONTAINER=1 python -m arnold.pipelines.megaplan chain start --spec /workspace/app/chain.yaml --one >> /workspace/app/.megaplan/cloud-chain.log 2>&1"
        );
        assert_eq!(t.log_dir(), "/workspace/app/.megaplan");
        assert_eq!(
            t.marker_file(),
            "/workspace/.megaplan/cloud-sessions/megaplan-chain.json"
        );
        let abs = MutationTarget {
            log_path: "/var/log/chain.log".into(),
            ..neutral_target()
        };
        assert_eq!(
            (abs.log_abs().as_str(), abs.log_dir().as_str()),
            ("/var/log/chain.log", "/var/log")
        );
    }

    /// Read one generated script back: only allowed commands; every tmux, python and mkdir
    /// command has exactly the expected arguments (so every tmux target is the given session);
    /// one start, at most one kill; and the runner command tmux gets reads back word for word.
    fn check_script(kind: MutationKind, t: &MutationTarget) -> Result<(), TestCaseError> {
        let script = mutation_script(kind, t);
        let session_target = format!("={}", t.session);
        let s = |x: &str| x.to_string();
        let mut kills = 0;
        let mut starts = 0;
        for cmd in simple_commands(&tokenize(&script)) {
            prop_assert!(
                ALLOWED_COMMANDS.contains(&cmd[0].as_str()),
                "command {:?}",
                cmd
            );
            match cmd[0].as_str() {
                "tmux" => match cmd.get(1).map(String::as_str) {
                    Some("has-session") => {
                        prop_assert_eq!(&cmd[2..], &[s("-t"), session_target.clone(), s("2")])
                    }
                    Some("list-panes") => prop_assert_eq!(
                        &cmd[2..],
                        &[
                            s("-s"),
                            s("-t"),
                            session_target.clone(),
                            s("-F"),
                            s("#{pane_dead}"),
                            s("2")
                        ]
                    ),
                    Some("kill-session") => {
                        kills += 1;
                        prop_assert_eq!(&cmd[2..], &[s("-t"), session_target.clone()]);
                    }
                    Some("new-session") => {
                        starts += 1;
                        prop_assert_eq!(cmd.len(), 8);
                        prop_assert_eq!(
                            &cmd[2..7],
                            &[
                                s("-d"),
                                s("-s"),
                                t.session.clone(),
                                s("-c"),
                                t.workspace.clone()
                            ]
                        );
                        let mut expected: Vec<Tok> =
                            vec![Tok::Word(s("MEGAPLAN_TRUSTED_CONTAINER=1"))];
                        expected.extend(t.launcher.split_whitespace().map(|x| Tok::Word(s(x))));
                        for x in ["chain", "start", "--spec", t.spec.as_str(), "--one"] {
                            expected.push(Tok::Word(s(x)));
                        }
                        expected.extend([
                            Tok::Op(s(">>")),
                            Tok::Word(t.log_abs()),
                            Tok::Word(s("2")),
                            Tok::Op(s(">&")),
                            Tok::Word(s("1")),
                        ]);
                        prop_assert_eq!(tokenize(&cmd[7]), expected);
                    }
                    other => prop_assert!(false, "unexpected tmux subcommand {:?}", other),
                },
                "$py" => {
                    prop_assert_eq!(&cmd[1], "-c");
                    if cmd[2] == MARKER_CHECK_PY {
                        prop_assert_eq!(&cmd[3..], &[t.marker_file(), t.spec.clone()]);
                    } else if cmd[2] == DRIVER_WAIT_PY {
                        prop_assert_eq!(
                            &cmd[3..],
                            &[
                                t.spec.clone(),
                                t.workspace.clone(),
                                t.launcher.clone(),
                                t.session.clone()
                            ]
                        );
                    } else if cmd[2] == DRIVER_CHECK_PY {
                        prop_assert_eq!(
                            &cmd[3..],
                            &[t.spec.clone(), t.workspace.clone(), t.launcher.clone()]
                        );
                    } else {
                        prop_assert_eq!(&cmd[2], MARKER_WRITE_PY);
                        prop_assert_eq!(
                            &cmd[3..],
                            &[
                                t.marker_file(),
                                t.session.clone(),
                                t.workspace.clone(),
                                t.spec.clone(),
                                t.identity_digest.clone().unwrap_or_default(),
                                s("supervise"),
                                s(kind.as_str()),
                            ]
                        );
                    }
                }
                "mkdir" => prop_assert_eq!(
                    &cmd[1..],
                    &[s("-p"), t.log_dir(), s(t.marker_dir.trim_end_matches('/'))]
                ),
                _ => {}
            }
        }
        prop_assert_eq!(starts, 1);
        prop_assert!(kills <= 1);
        Ok(())
    }

    fn hostile() -> impl Strategy<Value = String> {
        prop_oneof![
            "[^\\x00]{1,16}",
            Just("push".to_string()),
            Just("x; git push --force origin main".to_string()),
            Just("$(rm -rf /)".to_string()),
            Just("`git reset --hard`".to_string()),
            Just("a'b\"c\nd".to_string()),
            Just("-t".to_string()),
        ]
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

        #[test]
        fn mutation_scripts_are_closed_and_target_only_the_session(
            session in hostile(), workspace in hostile(), spec in hostile(),
            launcher_words in proptest::collection::vec("[^\\s\\x00]{1,10}", 1..4),
            log_path in hostile(), marker_dir in hostile(),
            digest in proptest::option::of(hostile()),
            advance in any::<bool>(),
        ) {
            let t = MutationTarget {
                session, workspace, spec,
                launcher: launcher_words.join(" "),
                log_path, marker_dir, identity_digest: digest,
            };
            let kind = if advance { MutationKind::Advance } else { MutationKind::RestartRunner };
            check_script(kind, &t)?;
        }
    }

    // ---- end to end against this machine's tmux (private socket dir) ----

    fn sh(script: &str, tmux_dir: &Path) -> std::process::Output {
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .env("TMUX_TMPDIR", tmux_dir)
            .env_remove("TMUX")
            .output()
            .unwrap()
    }

    fn tmux(tmux_dir: &Path, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .args(args)
            .env("TMUX_TMPDIR", tmux_dir)
            .env_remove("TMUX")
            .output()
            .expect("tmux must be installed to run the mutation script end to end")
    }

    /// Kills the private tmux server this test started, even when an assertion fails.
    struct PrivateTmux<'a>(&'a Path);
    impl Drop for PrivateTmux<'_> {
        fn drop(&mut self) {
            let _ = tmux(self.0, &["kill-server"]);
        }
    }

    /// A process driving `chain start` for this spec outside the target session (here: no tmux
    /// at all, started by a relative spec path from the workspace) makes the mutation refuse
    /// with 18 and start nothing; a driver of another spec does not.
    #[test]
    fn mutation_script_refuses_when_any_process_drives_this_chain() {
        let root = tempfile::tempdir().unwrap();
        let tmux_dir = root.path().join("tmux");
        let ws = root.path().join("ws");
        std::fs::create_dir_all(&tmux_dir).unwrap();
        std::fs::create_dir_all(&ws).unwrap();
        std::fs::write(ws.join("chain.yaml"), "milestones: []\n").unwrap();
        std::fs::write(ws.join("other.yaml"), "milestones: []\n").unwrap();
        let _server = PrivateTmux(&tmux_dir);
        let driver = |spec: &str| {
            // python3 -c CODE -m <core> chain start --spec S: the argv a real driver has.
            Command::new("python3")
                .args([
                    "-c",
                    "import time; time.sleep(60)",
                    "-m",
                    "arnold_pipelines.megaplan",
                    "chain",
                    "start",
                    "--spec",
                    spec,
                    "--one",
                ])
                .current_dir(&ws)
                .spawn()
                .unwrap()
        };
        struct Kill(std::process::Child);
        impl Drop for Kill {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let t = MutationTarget {
            session: format!("megaplan-chain-drv-{}", std::process::id()),
            workspace: ws.to_str().unwrap().to_string(),
            spec: ws.join("chain.yaml").to_str().unwrap().to_string(),
            launcher: "python3 -m arnold_pipelines.megaplan".into(),
            log_path: ".megaplan/cloud-chain.log".into(),
            marker_dir: root.path().join("markers").to_str().unwrap().to_string(),
            identity_digest: None,
        };
        let other = Kill(driver("other.yaml"));
        let started = || {
            tmux(
                &tmux_dir,
                &["has-session", "-t", &format!("={}", t.session)],
            )
            .status
            .success()
        };
        let mine = Kill(driver("chain.yaml"));
        let out = sh(&mutation_script(MutationKind::RestartRunner, &t), &tmux_dir);
        assert_eq!(out.status.code(), Some(EXIT_LIVE_RUNNER), "{out:?}");
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            said.contains(&format!("pid {}", mine.0.id())) && said.contains("tmux session none"),
            "{said}"
        );
        assert!(!started(), "nothing was started beside the live driver");
        drop(mine);
        // Only another spec's driver left: this chain has none, so the runner starts.
        let out = sh(&mutation_script(MutationKind::RestartRunner, &t), &tmux_dir);
        assert_ne!(out.status.code(), Some(EXIT_LIVE_RUNNER), "{out:?}");
        drop(other);
    }

    #[test]
    fn mutation_script_end_to_end_with_a_fake_launcher() {
        let root = tempfile::tempdir().unwrap();
        let tmux_dir = root.path().join("tmux");
        let ws = root.path().join("work space 'q'");
        let markers = root.path().join("markers dir");
        std::fs::create_dir_all(&tmux_dir).unwrap();
        std::fs::create_dir_all(&ws).unwrap();
        let args_file = root.path().join("args");
        let launcher = root.path().join("fake-launcher");
        std::fs::write(
            &launcher,
            format!(
                "#!/bin/sh\necho \"$MEGAPLAN_TRUSTED_CONTAINER|$*\" > {}\necho runner-output\nexec sleep 30\n",
                quote(args_file.to_str().unwrap())
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&launcher, std::fs::Permissions::from_mode(0o755)).unwrap();
        let _server = PrivateTmux(&tmux_dir);
        let spec = format!("{}/chain $x.yaml", ws.to_str().unwrap());
        let t = MutationTarget {
            session: format!("megaplan-chain-e2e-{}", std::process::id()),
            workspace: ws.to_str().unwrap().to_string(),
            spec: spec.clone(),
            launcher: launcher.to_str().unwrap().to_string(),
            log_path: ".megaplan/cloud-chain.log".into(),
            marker_dir: markers.to_str().unwrap().to_string(),
            identity_digest: Some("digest-1".into()),
        };

        // A foreign marker: refused with 17, nothing started.
        std::fs::create_dir_all(&markers).unwrap();
        let marker_file = markers.join(format!("{}.json", t.session));
        std::fs::write(&marker_file, r#"{"remote_spec": "/other/chain.yaml"}"#).unwrap();
        let out = sh(&mutation_script(MutationKind::RestartRunner, &t), &tmux_dir);
        assert_eq!(out.status.code(), Some(EXIT_FOREIGN_MARKER), "{out:?}");
        assert!(
            !tmux(
                &tmux_dir,
                &["has-session", "-t", &format!("={}", t.session)]
            )
            .status
            .success()
        );
        std::fs::remove_file(&marker_file).unwrap();

        // No marker, no session: starts the runner, writes the marker.
        let out = sh(&mutation_script(MutationKind::RestartRunner, &t), &tmux_dir);
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        assert!(
            tmux(
                &tmux_dir,
                &["has-session", "-t", &format!("={}", t.session)]
            )
            .status
            .success()
        );
        let marker: Value =
            serde_json::from_str(&std::fs::read_to_string(&marker_file).unwrap()).unwrap();
        assert_eq!(marker["session"], t.session.as_str());
        assert_eq!(marker["remote_spec"], spec.as_str());
        assert_eq!(marker["workspace"], t.workspace.as_str());
        assert_eq!(marker["identity_digest"], "digest-1");
        assert_eq!(marker["run_kind"], "supervise");
        assert_eq!(marker["trigger"], "restart");
        assert!(marker["started_at"].as_str().unwrap().ends_with('Z'));
        let args = std::fs::read_to_string(&args_file).unwrap();
        assert_eq!(
            args.trim_end(),
            format!("1|chain start --spec {spec} --one")
        );
        let log = std::fs::read_to_string(ws.join(".megaplan/cloud-chain.log")).unwrap();
        assert!(log.contains("runner-output"), "{log}");

        // The session is alive now (marker names this spec): never killed, refused with 18.
        let out = sh(&mutation_script(MutationKind::Advance, &t), &tmux_dir);
        assert_eq!(out.status.code(), Some(EXIT_LIVE_RUNNER), "{out:?}");
        assert!(
            tmux(
                &tmux_dir,
                &["has-session", "-t", &format!("={}", t.session)]
            )
            .status
            .success()
        );
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
