//! The observation scripts: one remote execution of `observe.py` under the launcher's
//! interpreter gathers the spec, the chain state, the runtime policy, the optional sync
//! refresh, the current plan's status, runner liveness, the log's mtime/size, session markers
//! and the PR merge probe. Run one-shot ([`observe_script`], one `MEGAPLAN_OBSERVATION <json>`
//! line) or answered by the resident observer ([`resident_script`], see `provider::resident`).
//! `crate::chain::observe` parses the result.

use crate::runner::layout::SESSION_MARKER_DIR;
use crate::shell;
use serde::Serialize;
use std::sync::LazyLock;
use std::time::Duration;

/// [`super::python::py_library`] and `observe.py` (definitions only; each script ends with its own
/// entry call).
fn library() -> &'static str {
    static TEXT: LazyLock<String> = LazyLock::new(|| {
        format!(
            "{}{}\n",
            super::python::py_library(),
            include_str!("observe.py")
        )
    });
    &TEXT
}

/// The one-shot observation script: argv `<request JSON> <interpreter>`.
pub fn observe_py() -> &'static str {
    static TEXT: LazyLock<String> =
        LazyLock::new(|| format!("{}\nsys.exit(main(sys.argv))\n", library()));
    &TEXT
}

/// The resident observer (`resident.py` after the library): argv `<interpreter>`.
pub fn resident_py() -> &'static str {
    static TEXT: LazyLock<String> = LazyLock::new(|| {
        format!(
            "{}\n{}\nsys.exit(serve(sys.argv[1] if len(sys.argv) > 1 else None))\n",
            library(),
            include_str!("resident.py")
        )
    });
    &TEXT
}

/// Upper bound for one observation: sync refresh (180 s) + plan status (60 s) + PR probe
/// (60 s) + tmux probes, with slack for the transport.
pub const OBSERVE_DEADLINE: Duration = Duration::from_secs(360);

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ObserveRequest {
    /// The remote spec path as the operator/marker names it.
    pub spec: String,
    pub session: String,
    pub workspace: String,
    /// The launcher, e.g. `python -m arnold_pipelines.megaplan`; empty: the observation finds
    /// the core itself and reports it.
    pub launcher: String,
    pub log_path: String,
    /// Run the core's `_capture_sync_state` before reading the state (supervise ticks).
    pub sync_refresh: bool,
    /// Ask `gh` whether the awaited PR is merged (supervise ticks).
    pub pr_probe: bool,
}

impl ObserveRequest {
    /// The request as `observe.py` reads it, its session markers in `marker_dir`.
    pub fn input(&self, marker_dir: &str) -> ObserveInput {
        ObserveInput {
            request: self.clone(),
            marker_dir: marker_dir.to_string(),
        }
    }
}

/// The input of `observe.py` (its argv one-shot, the `request` of a resident observer's
/// `observe`): the request's fields and the session marker folder, in one JSON object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ObserveInput {
    #[serde(flatten)]
    pub request: ObserveRequest,
    pub marker_dir: String,
}

impl ObserveInput {
    /// The one JSON line `observe.py` reads.
    pub fn to_line(&self) -> String {
        // Strings and booleans only: encoding cannot fail; an empty object would only make
        // `observe.py` report the missing spec.
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_string())
    }
}

fn is_env_assignment(word: &str) -> bool {
    match word.split_once('=') {
        Some((name, _)) => {
            let mut chars = name.chars();
            chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        }
        None => false,
    }
}

/// The Python interpreter of a launcher: its first word when it runs a module (`<python> -m
/// <module>`), `python` when no launcher is known yet (the runner is probed; the prelude falls
/// back to `python3`), else `python3` (a console-script launcher has no interpreter of its own).
pub fn launcher_interpreter(launcher: &str) -> String {
    let words: Vec<&str> = launcher
        .split_whitespace()
        .skip_while(|w| is_env_assignment(w))
        .collect();
    match words.first() {
        None => "python".to_string(),
        Some(first) if words.contains(&"-m") => (*first).to_string(),
        _ => "python3".to_string(),
    }
}

/// Shell prelude setting `$py` to the launcher's interpreter, falling back to `python3` when
/// that name is not on the runner's PATH. Shared by every script that runs Python.
pub fn python_prelude(launcher: &str) -> String {
    format!(
        "py={}; command -v \"$py\" >/dev/null 2>&1 || py=python3",
        shell::quote(&launcher_interpreter(launcher))
    )
}

/// The complete remote shell command for one one-shot observation; pass it to the provider's
/// exec as one script.
pub fn observe_script(req: &ObserveRequest) -> String {
    observe_script_in(req, SESSION_MARKER_DIR)
}

pub(crate) fn observe_script_in(req: &ObserveRequest, marker_dir: &str) -> String {
    format!(
        "{}; \"$py\" -c {} {} \"$py\"",
        python_prelude(&req.launcher),
        shell::quote(observe_py()),
        shell::quote(&req.input(marker_dir).to_line())
    )
}

/// The remote shell command starting the resident observer under the launcher's interpreter
/// (unbuffered; `exec`, so the observer is the process the transport holds).
pub fn resident_script(launcher: &str) -> String {
    format!(
        "{}; exec \"$py\" -u -c {} \"$py\"",
        python_prelude(launcher),
        shell::quote(resident_py())
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::chain::classify::Liveness;
    use crate::chain::observe::parse_observation;
    use crate::runner::layout::DEFAULT_CHAIN_LOG;
    use serde_json::{Value, json};
    use std::path::Path;
    use std::process::Command;

    /// A typed part of the observation as JSON, to read it by field name.
    fn jv(v: &impl serde::Serialize) -> Value {
        serde_json::to_value(v).unwrap()
    }

    #[test]
    fn interpreter_comes_from_the_launcher() {
        assert_eq!(
            launcher_interpreter("python -m arnold.pipelines.megaplan"),
            "python"
        );
        assert_eq!(
            launcher_interpreter("FOO=1 /opt/py/bin/python3.11 -m x"),
            "/opt/py/bin/python3.11"
        );
        assert_eq!(launcher_interpreter("megaplan"), "python3");
        assert_eq!(launcher_interpreter(""), "python");
    }

    #[test]
    fn script_quotes_every_value() {
        let req = ObserveRequest {
            spec: "/w/it's $(x).yaml".into(),
            session: "s`id`".into(),
            workspace: "/w".into(),
            launcher: "python -m arnold.pipelines.megaplan".into(),
            log_path: DEFAULT_CHAIN_LOG.into(),
            sync_refresh: true,
            pr_probe: false,
        };
        let script = observe_script(&req);
        assert!(script.starts_with(
            "py=python; command -v \"$py\" >/dev/null 2>&1 || py=python3; \"$py\" -c '"
        ));
        // The JSON argument is one quoted word: hostile values sit inside it, never bare.
        let input = req.input(SESSION_MARKER_DIR).to_line();
        assert!(script.ends_with(&format!(" {} \"$py\"", shell::quote(&input))));
        // ... and it is the object `observe.py` reads, field for field.
        assert_eq!(
            serde_json::from_str::<Value>(&input).unwrap(),
            json!({
                "spec": req.spec, "session": req.session, "workspace": req.workspace,
                "launcher": req.launcher, "log_path": req.log_path, "sync_refresh": true,
                "pr_probe": false, "marker_dir": SESSION_MARKER_DIR,
            })
        );
    }

    /// Run a script under `sh -c` with a private tmux socket dir.
    pub(crate) fn run_sh(script: &str, tmux_dir: &Path) -> std::process::Output {
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .env("TMUX_TMPDIR", tmux_dir)
            .env_remove("TMUX")
            .output()
            .unwrap()
    }

    fn tmux_installed() -> bool {
        Command::new("tmux")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// End to end on this machine: the real script, quoted by `observe_script_in`, against a
    /// fake workspace whose path needs quoting. The core is absent, so the sync refresh fails
    /// (reported, not raised) and the plan status falls back to the plan's state file.
    #[test]
    fn observe_py_end_to_end_on_a_fake_workspace() {
        let root = tempfile::tempdir().unwrap();
        let ws = root.path().join("work space's $HOME");
        let markers = root.path().join("markers");
        let tmux_dir = root.path().join("tmux");
        for d in [&ws, &markers, &tmux_dir] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::create_dir_all(ws.join(".megaplan/plans/plan-m2")).unwrap();
        std::fs::write(
            ws.join(".megaplan/plans/plan-m2/state.json"),
            r#"{"current_state": "running"}"#,
        )
        .unwrap();
        std::fs::write(
            ws.join("real-chain.yaml"),
            "milestones:\n  - {label: m1, idea: a.md}\n  - {label: m2, idea: b.md}\n",
        )
        .unwrap();
        // The operator names a symlink; the runner must resolve it before deriving the state name.
        std::os::unix::fs::symlink(ws.join("real-chain.yaml"), ws.join("chain.yaml")).unwrap();
        let resolved = std::fs::canonicalize(ws.join("real-chain.yaml")).unwrap();
        let resolved = resolved.to_str().unwrap();
        use sha1::Digest as _;
        let digest = hex::encode(sha1::Sha1::digest(resolved.as_bytes()));
        let chains = ws.join(".megaplan/plans/.chains");
        std::fs::create_dir_all(&chains).unwrap();
        let state_file = chains.join(format!("real-chain-{}.json", &digest[..12]));
        std::fs::write(
            &state_file,
            r#"{"current_milestone_index": 1, "current_plan_name": "plan-m2", "last_state": "awaiting_pr_merge", "sync_state": "stale"}"#,
        )
        .unwrap();
        std::fs::write(
            chains.join(format!("real-chain-{}.runtime_policy.json", &digest[..12])),
            r#"{"prerequisite_policy": "required"}"#,
        )
        .unwrap();
        std::fs::write(ws.join(".megaplan/cloud-chain.log"), "hello\n").unwrap();
        let session = format!("megaplan-chain-test-{}", std::process::id());
        std::fs::write(
            markers.join(format!("{session}.json")),
            r#"{"remote_spec": "/x/chain.yaml"}"#,
        )
        .unwrap();

        let req = ObserveRequest {
            spec: ws.join("chain.yaml").to_str().unwrap().to_string(),
            session: session.clone(),
            workspace: ws.to_str().unwrap().to_string(),
            launcher: "python3 -m megaplan_core_that_is_not_installed".into(),
            log_path: DEFAULT_CHAIN_LOG.into(),
            sync_refresh: true,
            pr_probe: true,
        };
        let out = run_sh(
            &observe_script_in(&req, markers.to_str().unwrap()),
            &tmux_dir,
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "stdout={stdout} stderr={}",
            String::from_utf8_lossy(&out.stderr)
        );
        let obs = parse_observation(&stdout).unwrap();

        assert_eq!(obs.resolved_spec, resolved);
        assert_eq!(obs.state_path, state_file.to_str().unwrap());
        assert!(obs.spec_error.is_none(), "{:?}", obs.spec_error);
        assert_eq!(obs.spec.as_ref().unwrap().milestones.len(), 2);
        let state = obs.state.as_ref().unwrap();
        assert_eq!(state.current_plan_name.as_deref(), Some("plan-m2"));
        assert_eq!(obs.policy.prerequisite_policy, "required");
        assert_eq!(obs.policy.source, "runtime_override");
        let sync = obs.sync_refresh.as_ref().unwrap();
        assert_eq!(jv(sync)["status"], "failed", "{sync:?}");
        assert!(
            jv(sync)["reason"]
                .as_str()
                .unwrap()
                .contains("megaplan_core_that_is_not_installed"),
            "{sync:?}"
        );
        assert_eq!(
            jv(&obs.plan_status)["status"],
            "running",
            "{:?}",
            obs.plan_status
        );
        assert_eq!(jv(&obs.plan_status)["source"], "state_file");
        let expected = if tmux_installed() {
            Liveness::Dead
        } else {
            Liveness::Unknown
        };
        assert_eq!(obs.liveness, expected, "{:?}", obs.runner);
        assert_eq!(jv(&obs.runner)["session"], session.as_str());
        assert_eq!(jv(&obs.logs)["exists"], true);
        assert_eq!(jv(&obs.logs)["size"], 6);
        assert!(jv(&obs.logs)["mtime"].as_str().unwrap().ends_with('Z'));
        assert_eq!(
            obs.session_marker.as_ref().unwrap().remote_spec.as_deref(),
            Some("/x/chain.yaml")
        );
        assert_eq!(obs.sessions.len(), 1);
        assert!(!obs.sessions[0].alive);
        // awaiting_pr_merge without a pr_number: probed as unknown, with a reason.
        assert_eq!(obs.pr_probe.as_deref(), Some("unknown"));
        assert!(
            obs.warnings.iter().any(|w| w.contains("no pr_number")),
            "{:?}",
            obs.warnings
        );
    }

    /// No launcher: the observation finds the core itself (here the bench's stand-in, which
    /// ships only `arnold_pipelines.megaplan`), uses it for the plan status and reports it.
    #[test]
    fn observe_py_finds_the_core_when_no_launcher_is_set() {
        let standin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/bench/standin");
        let root = tempfile::tempdir().unwrap();
        let ws = chain_workspace(root.path());
        let tmux_dir = root.path().join("tmux");
        std::fs::create_dir_all(&tmux_dir).unwrap();
        let mut req = ObserveRequest {
            spec: ws.join("chain.yaml").to_str().unwrap().to_string(),
            session: "megaplan-chain".into(),
            workspace: ws.to_str().unwrap().to_string(),
            launcher: String::new(),
            log_path: DEFAULT_CHAIN_LOG.into(),
            sync_refresh: false,
            pr_probe: false,
        };
        let run = |req: &ObserveRequest, pythonpath: &Path| {
            let out = Command::new("sh")
                .arg("-c")
                .arg(observe_script_in(req, root.path().to_str().unwrap()))
                .env("TMUX_TMPDIR", &tmux_dir)
                .env("PYTHONPATH", pythonpath)
                .env("MEGAPLAN_STANDIN_IMPORT_SECONDS", "0")
                .env_remove("TMUX")
                .output()
                .unwrap();
            parse_observation(&String::from_utf8_lossy(&out.stdout)).unwrap()
        };
        let obs = run(&req, &standin);
        let launcher = obs.core_launcher.clone().expect("core found");
        assert!(
            launcher.ends_with(" -m arnold_pipelines.megaplan"),
            "{launcher}"
        );
        assert_eq!(
            jv(&obs.plan_status)["source"],
            "megaplan status",
            "{:?}",
            obs.plan_status
        );
        assert_eq!(jv(&obs.plan_status)["status"], "finalized");
        assert_eq!(jv(&obs.plan_status)["next_step"], "execute");

        // Neither module importable: a clear reason naming both, and the state file fallback.
        let empty = root.path().join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        let obs = run(&req, &empty);
        assert!(obs.core_launcher.is_none());
        let why = obs.core_error.clone().unwrap();
        assert!(
            why.contains("arnold_pipelines.megaplan") && why.contains("arnold.pipelines.megaplan"),
            "{why}"
        );
        assert_eq!(jv(&obs.plan_status)["source"], "state_file");
        assert!(
            jv(&obs.plan_status)["reason"]
                .as_str()
                .unwrap()
                .contains("megaplan.launcher")
        );

        // A launcher given is used as written: nothing is probed.
        req.launcher = "python3 -m arnold_pipelines.megaplan".into();
        let obs = run(&req, &standin);
        assert!(obs.core_launcher.is_none() && obs.core_error.is_none());
        assert_eq!(jv(&obs.plan_status)["source"], "megaplan status");
    }

    /// `root/ws`: a one-milestone chain (`chain.yaml`, m1) whose state file names the
    /// finalized plan `plan-m1`, as the core lays them out.
    pub(crate) fn chain_workspace(root: &Path) -> std::path::PathBuf {
        let ws = root.join("ws");
        std::fs::create_dir_all(ws.join(".megaplan/plans/plan-m1")).unwrap();
        std::fs::write(
            ws.join(".megaplan/plans/plan-m1/state.json"),
            r#"{"name": "plan-m1", "current_state": "finalized"}"#,
        )
        .unwrap();
        std::fs::write(
            ws.join("chain.yaml"),
            "milestones:\n  - {label: m1, idea: a.md}\n",
        )
        .unwrap();
        let state = state_file_for(&ws.join("chain.yaml"));
        std::fs::create_dir_all(state.parent().unwrap()).unwrap();
        std::fs::write(
            &state,
            r#"{"current_milestone_index": 0, "current_plan_name": "plan-m1"}"#,
        )
        .unwrap();
        ws
    }

    pub(crate) fn state_file_for(spec: &Path) -> std::path::PathBuf {
        use sha1::Digest as _;
        let resolved = std::fs::canonicalize(spec).unwrap();
        let text = resolved.to_str().unwrap().to_string();
        let digest = hex::encode(sha1::Sha1::digest(text.as_bytes()));
        let stem = resolved.file_stem().unwrap().to_str().unwrap().to_string();
        resolved.parent().unwrap().join(format!(
            ".megaplan/plans/.chains/{stem}-{}.json",
            &digest[..12]
        ))
    }

    /// The resident observer ends at once when its input ends, even while a request hangs in
    /// the core (the stand-in's `hang_status`) with a deadline far away: its client (the
    /// daemon, through its session) is gone, so nothing would read the answer.
    #[test]
    fn resident_observer_ends_on_end_of_input_even_mid_request() {
        use std::io::{BufRead, Write};
        let standin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/bench/standin");
        let root = tempfile::tempdir().unwrap();
        let ws = chain_workspace(root.path());
        let tmux_dir = root.path().join("tmux");
        std::fs::create_dir_all(&tmux_dir).unwrap();
        std::fs::write(
            ws.join(".megaplan/standin-control.json"),
            r#"{"hang_status": true}"#,
        )
        .unwrap();
        let launcher = "python3 -m arnold_pipelines.megaplan";
        let req = ObserveRequest {
            spec: ws.join("chain.yaml").to_str().unwrap().to_string(),
            session: "megaplan-chain".into(),
            workspace: ws.to_str().unwrap().to_string(),
            launcher: launcher.into(),
            log_path: DEFAULT_CHAIN_LOG.into(),
            sync_refresh: false,
            pr_probe: false,
        }
        .input(root.path().to_str().unwrap());
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(resident_script(launcher))
            .env("PYTHONPATH", &standin)
            .env("MEGAPLAN_STANDIN_IMPORT_SECONDS", "0")
            .env("TMUX_TMPDIR", &tmux_dir)
            .env_remove("TMUX")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        while !line.contains("\"ready\": true") {
            line.clear();
            assert_ne!(out.read_line(&mut line).unwrap(), 0, "no ready line");
        }
        let ask = json!({"id": 1, "op": "observe", "request": req, "deadline_secs": 3600});
        writeln!(stdin, "{ask}").unwrap();
        stdin.flush().unwrap();
        // Polled with a generous safety net: these are events, not measurements.
        let poll = |what: &str, mut done: Box<dyn FnMut() -> bool + '_>| {
            let net = std::time::Instant::now() + Duration::from_secs(90);
            while !done() {
                assert!(std::time::Instant::now() < net, "{what}");
                std::thread::sleep(Duration::from_millis(50));
            }
        };
        let hangs = ws.join(".megaplan/standin-hangs.jsonl");
        poll(
            "the request never reached the hanging status",
            Box::new(|| std::fs::metadata(&hangs).is_ok_and(|m| m.len() > 0)),
        );
        drop(stdin);
        let mut exited = None;
        let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            poll(
                "the observer outlived the end of its input",
                Box::new(|| {
                    exited = child.try_wait().unwrap();
                    exited.is_some()
                }),
            )
        }));
        if waited.is_err() {
            let _ = child.kill();
            let _ = child.wait();
        }
        assert!(waited.is_ok(), "the observer outlived the end of its input");
        assert_eq!(exited.and_then(|s| s.code()), Some(0));
    }

    #[test]
    fn observe_py_without_a_spec_lists_sessions_only() {
        let root = tempfile::tempdir().unwrap();
        let markers = root.path().join("markers");
        std::fs::create_dir_all(&markers).unwrap();
        for name in [
            "megaplan-chain-a.json",
            "megaplan-chain-a.progress.json",
            "agent.json",
        ] {
            std::fs::write(markers.join(name), "{}").unwrap();
        }
        let req = ObserveRequest {
            spec: String::new(),
            session: String::new(),
            workspace: root.path().to_str().unwrap().to_string(),
            launcher: "python3 -m nothing".into(),
            log_path: DEFAULT_CHAIN_LOG.into(),
            sync_refresh: false,
            pr_probe: false,
        };
        let tmux_dir = root.path().join("tmux");
        std::fs::create_dir_all(&tmux_dir).unwrap();
        let out = run_sh(
            &observe_script_in(&req, markers.to_str().unwrap()),
            &tmux_dir,
        );
        let obs = parse_observation(&String::from_utf8_lossy(&out.stdout)).unwrap();
        assert!(obs.spec.is_none() && obs.spec_error.is_none() && obs.state.is_none());
        assert_eq!(jv(&obs.plan_status)["status"], "missing");
        let names: Vec<&str> = obs.sessions.iter().map(|s| s.session.as_str()).collect();
        assert_eq!(names, vec!["megaplan-chain-a"]);
    }
}
