//! The only script a supervise tick runs to act: restart a dead runner or advance after a
//! merged PR, both as one `chain start --one` in the chain's tmux session.
//!
//! Built from a closed set of commands (tmux, mkdir, the launcher's python for the session
//! marker and the driver checks, `chain start --one`). It never runs git, never deletes files,
//! and never kills a runner that is alive or that belongs to another chain.

use super::observe::python_prelude;
use super::python::{driver_check_py, driver_wait_py, marker_check_py, marker_write_py};
use crate::runner::layout::EXIT_LIVE_RUNNER;
use crate::shell::quote;

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
    pub fn log_abs(&self) -> String {
        if self.log_path.starts_with('/') {
            self.log_path.clone()
        } else {
            format!("{}/{}", self.workspace.trim_end_matches('/'), self.log_path)
        }
    }

    pub fn log_dir(&self) -> String {
        let abs = self.log_abs();
        match abs.rsplit_once('/') {
            Some(("", _)) => "/".to_string(),
            Some((dir, _)) => dir.to_string(),
            None => ".".to_string(),
        }
    }

    pub fn marker_file(&self) -> String {
        format!(
            "{}/{}.json",
            self.marker_dir.trim_end_matches('/'),
            self.session
        )
    }

    /// The runner command tmux starts: the canonical one-shot chain tick, appending to the log.
    pub fn runner_command(&self) -> String {
        let launcher: Vec<String> = self.launcher.split_whitespace().map(quote).collect();
        format!(
            "MEGAPLAN_TRUSTED_CONTAINER=1 {} chain start --spec {} --one >> {} 2>&1",
            launcher.join(" "),
            quote(&self.spec),
            quote(&self.log_abs())
        )
    }
}

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
        quote(&marker_write_py()),
        quote(marker_file),
        quote(session),
        quote(workspace),
        quote(spec),
        quote(digest),
        quote(run_kind),
        quote(trigger)
    )
}

/// The ONLY mutation script the supervisor emits; `trigger` is the decision's mutation
/// (`restart`, `advance`), recorded in the session marker. In order: refuse
/// ([`EXIT_OTHER_CHAIN`]) when the session marker names another chain; refuse
/// ([`EXIT_LIVE_RUNNER`]) when any process on the runner drives `chain start` for this spec
/// (whatever tmux session started it, or none: `drivers.py`); if the session exists, refuse
/// ([`EXIT_LIVE_RUNNER`]) unless every pane in it is dead, then kill exactly that session; create
/// the log and marker dirs; write the session marker (every launch writes it); start the
/// one-shot chain tick in tmux. A `--one` tick may legitimately
/// finish within a second, so a session already gone afterwards is reported, not failed.
/// Every value is passed through `shell::quote`.
pub fn mutation_script(trigger: &str, t: &MutationTarget) -> String {
    let target = quote(&format!("={}", t.session));
    let lines = [
        python_prelude(&t.launcher),
        format!(
            "\"$py\" -c {} {} {}; rc=$?; if [ \"$rc\" -ne 0 ]; then exit \"$rc\"; fi",
            quote(&marker_check_py()),
            quote(&t.marker_file()),
            quote(&t.spec)
        ),
        format!(
            "\"$py\" -c {} {} {} {}; rc=$?; if [ \"$rc\" -ne 0 ]; then exit \"$rc\"; fi",
            quote(&driver_check_py()),
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
                trigger
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
            quote(&driver_wait_py()),
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
    use crate::runner::layout::EXIT_OTHER_CHAIN;
    use crate::runner::observe::tests::run_sh;
    use proptest::prelude::*;
    use std::path::Path;
    use std::process::Command;

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
        for kind in ["restart", "advance"] {
            let script = mutation_script(kind, &neutral_target());
            for cmd in simple_commands(&tokenize(&script)) {
                assert_ne!(
                    cmd[0], "sleep",
                    "a fixed sleep in the mutation script: {cmd:?}"
                );
            }
            assert!(script.contains(&quote(&driver_wait_py())));
        }
    }

    #[test]
    fn template_has_no_destructive_commands() {
        for kind in ["restart", "advance"] {
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
    fn check_script(kind: &str, t: &MutationTarget) -> Result<(), TestCaseError> {
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
                    if cmd[2] == marker_check_py() {
                        prop_assert_eq!(&cmd[3..], &[t.marker_file(), t.spec.clone()]);
                    } else if cmd[2] == driver_wait_py() {
                        prop_assert_eq!(
                            &cmd[3..],
                            &[
                                t.spec.clone(),
                                t.workspace.clone(),
                                t.launcher.clone(),
                                t.session.clone()
                            ]
                        );
                    } else if cmd[2] == driver_check_py() {
                        prop_assert_eq!(
                            &cmd[3..],
                            &[t.spec.clone(), t.workspace.clone(), t.launcher.clone()]
                        );
                    } else {
                        prop_assert_eq!(&cmd[2], &marker_write_py());
                        prop_assert_eq!(
                            &cmd[3..],
                            &[
                                t.marker_file(),
                                t.session.clone(),
                                t.workspace.clone(),
                                t.spec.clone(),
                                t.identity_digest.clone().unwrap_or_default(),
                                s("supervise"),
                                s(kind),
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

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

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
            let kind = if advance { "advance" } else { "restart" };
            check_script(kind, &t)?;
        }
    }

    // ---- end to end against this machine's tmux (private socket dir) ----

    fn tmux(tmux_dir: &Path, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .args(args)
            .env("TMUX_TMPDIR", tmux_dir)
            .env_remove("TMUX")
            .output()
            .expect("tmux must be installed to run the mutation script end to end")
    }

    /// Whether the private tmux server has a session named exactly `session`.
    fn has_session(tmux_dir: &Path, session: &str) -> bool {
        tmux(tmux_dir, &["has-session", "-t", &format!("={session}")])
            .status
            .success()
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
        let started = || has_session(&tmux_dir, &t.session);
        let mine = Kill(driver("chain.yaml"));
        let out = run_sh(&mutation_script("restart", &t), &tmux_dir);
        assert_eq!(out.status.code(), Some(EXIT_LIVE_RUNNER), "{out:?}");
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            said.contains(&format!("pid {}", mine.0.id())) && said.contains("tmux session none"),
            "{said}"
        );
        assert!(!started(), "nothing was started beside the live driver");
        drop(mine);
        // Only another spec's driver left: this chain has none, so the runner starts.
        let out = run_sh(&mutation_script("restart", &t), &tmux_dir);
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
        let out = run_sh(&mutation_script("restart", &t), &tmux_dir);
        assert_eq!(out.status.code(), Some(EXIT_OTHER_CHAIN), "{out:?}");
        assert!(!has_session(&tmux_dir, &t.session));
        std::fs::remove_file(&marker_file).unwrap();

        // No marker, no session: starts the runner, writes the marker.
        let out = run_sh(&mutation_script("restart", &t), &tmux_dir);
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        assert!(has_session(&tmux_dir, &t.session));
        let marker: serde_json::Value =
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
        let out = run_sh(&mutation_script("advance", &t), &tmux_dir);
        assert_eq!(out.status.code(), Some(EXIT_LIVE_RUNNER), "{out:?}");
        assert!(has_session(&tmux_dir, &t.session));
    }
}
