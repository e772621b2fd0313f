//! The one-round-trip chain observation: a tick reads the runner once. A single remote
//! execution of `observe.py` under the launcher's interpreter gathers the spec, the chain
//! state, the runtime policy, the optional sync refresh, the current plan's status, runner
//! liveness, the log's mtime/size, session markers and the PR merge probe, and prints one
//! `MEGAPLAN_OBSERVATION <json>` line. This module builds that command and parses its output.
//!
//! The state file name is derived on the runner from the spec path as the runner resolves it,
//! never on the operator's machine.

use crate::chain::classify::Liveness;
use crate::chain::spec::{ChainSpec, parse_chain_spec};
use crate::chain::state::{
    ChainState, EffectivePolicy, PolicyOverrides, effective_policy, parse_chain_state,
    parse_runtime_policy,
};
use crate::shell;
use megaplan_cloud_api::{ErrorBody, ErrorCode};
use serde_json::{Map, Value, json};
use std::time::Duration;

/// The remote observation script, shipped inside the daemon binary: the driver finder
/// (`drivers.py`) and the observation itself (`observe.py`), as one script.
pub const OBSERVE_PY: &str = concat!(include_str!("drivers.py"), include_str!("observe.py"));

/// The supervisor's last check before it starts a runner: exits 18 when a process drives the
/// chain of argv `spec workspace launcher` (see `drivers.py`).
pub const DRIVER_CHECK_PY: &str = concat!(
    include_str!("drivers.py"),
    "\nsys.exit(check_main(sys.argv[1:]))\n"
);

/// After a start: returns once the new runner's driver is visible or its session is gone
/// (argv `spec workspace launcher session`; polls, no fixed sleep; see `drivers.py`).
pub const DRIVER_WAIT_PY: &str = concat!(
    include_str!("drivers.py"),
    "\nsys.exit(wait_main(sys.argv[1:]))\n"
);

/// Where launches write session markers on the runner.
pub const SESSION_MARKER_DIR: &str = "/workspace/.megaplan/cloud-sessions";

/// The default chain log, relative to the workspace.
pub const DEFAULT_CHAIN_LOG: &str = ".megaplan/cloud-chain.log";

/// Prefix of the one stdout line that carries the observation.
pub const OBSERVATION_PREFIX: &str = "MEGAPLAN_OBSERVATION ";

/// Upper bound for one observation: sync refresh (180 s) + plan status (60 s) + PR probe
/// (60 s) + tmux probes, with slack for the transport.
pub const OBSERVE_DEADLINE: Duration = Duration::from_secs(360);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObserveRequest {
    /// The remote spec path as the operator/marker names it.
    pub spec: String,
    pub session: String,
    pub workspace: String,
    /// The launcher, e.g. `python -m arnold_pipelines.megaplan`; empty: the observation finds
    /// the core itself and reports it in [`Observation::core_launcher`].
    pub launcher: String,
    pub log_path: String,
    /// Run the core's `_capture_sync_state` before reading the state (supervise ticks).
    pub sync_refresh: bool,
    /// Ask `gh` whether the awaited PR is merged (supervise ticks).
    pub pr_probe: bool,
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
/// that name is not on the runner's PATH. Shared by the observation and mutation scripts.
pub(crate) fn python_prelude(launcher: &str) -> String {
    format!(
        "py={}; command -v \"$py\" >/dev/null 2>&1 || py=python3",
        shell::quote(&launcher_interpreter(launcher))
    )
}

/// The complete remote shell command for one observation; pass it to the provider's exec as
/// one script.
pub fn observe_script(req: &ObserveRequest) -> String {
    observe_script_in(req, SESSION_MARKER_DIR)
}

pub(crate) fn observe_script_in(req: &ObserveRequest, marker_dir: &str) -> String {
    let input = json!({
        "spec": req.spec,
        "session": req.session,
        "workspace": req.workspace,
        "launcher": req.launcher,
        "log_path": req.log_path,
        "sync_refresh": req.sync_refresh,
        "pr_probe": req.pr_probe,
        "marker_dir": marker_dir,
    });
    format!(
        "{}; \"$py\" -c {} {} \"$py\"",
        python_prelude(&req.launcher),
        shell::quote(OBSERVE_PY),
        shell::quote(&input.to_string())
    )
}

/// Everything one observation saw, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// The spec path as requested.
    pub spec_path: String,
    /// The spec path as the runner resolves it (symlinks followed on the runner).
    pub resolved_spec: String,
    /// The chain state file the runner derived (the legacy `chain_state.json` if only that exists).
    pub state_path: String,
    pub policy_path: String,
    pub spec_text: Option<String>,
    /// The remote spec, parsed; `None` with `spec_error` set when missing or invalid.
    pub spec: Option<ChainSpec>,
    pub spec_error: Option<ErrorBody>,
    /// `None` when the state file does not exist yet (chain not started) or is unreadable.
    pub state: Option<ChainState>,
    pub state_error: Option<ErrorBody>,
    pub policy_overrides: PolicyOverrides,
    pub policy: EffectivePolicy,
    pub plan_status: Value,
    /// `{"status": "alive"|"dead"|"unknown", "session": ..., "reason"?: ...}`
    pub runner: Value,
    pub liveness: Liveness,
    /// `{"path", "exists", "mtime", "size"}`
    pub logs: Value,
    /// `{"status": "ok"}` / `{"status": "failed", "reason"}` / skipped; `None` when not asked.
    pub sync_refresh: Option<Value>,
    /// Lowercased `gh pr view` state (`merged`, `open`, ..., `unknown`); `None` when not probed.
    pub pr_probe: Option<String>,
    pub session_marker: Option<Value>,
    /// `megaplan-chain*` sessions: `{"session", "alive", "marker"}`.
    pub sessions: Vec<Value>,
    /// The launcher the runner found for the core (only when the request had none).
    pub core_launcher: Option<String>,
    /// Why no core was found (only when the request had no launcher).
    pub core_error: Option<String>,
    /// Non-fatal findings (unreadable marker, bad policy file, probe errors).
    pub warnings: Vec<String>,
    /// The observation object as printed by the runner.
    pub raw: Value,
}

impl Observation {
    /// The state to classify and display: the observed one, or the core's default before the
    /// chain has written any.
    pub fn state_or_default(&self) -> ChainState {
        self.state.clone().unwrap_or_default()
    }
}

fn malformed(what: impl std::fmt::Display) -> ErrorBody {
    ErrorBody::new(
        ErrorCode::ProviderFailed,
        format!(
            "the runner's chain observation is malformed: {what}; check the launcher setting and that python 3 is installed in the runner"
        ),
    )
}

fn opt_string(obj: &Map<String, Value>, key: &str) -> Result<Option<String>, ErrorBody> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(malformed(format!("field `{key}` is not a string"))),
    }
}

fn object_or_empty(obj: &Map<String, Value>, key: &str) -> Result<Value, ErrorBody> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(json!({})),
        Some(v @ Value::Object(_)) => Ok(v.clone()),
        Some(_) => Err(malformed(format!("field `{key}` is not an object"))),
    }
}

/// The last few non-empty lines of output, for errors (the caller passes redacted output).
fn output_tail(stdout: &str) -> String {
    let lines: Vec<&str> = stdout
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let tail = lines[lines.len().saturating_sub(3)..].join(" | ");
    if tail.chars().count() > 300 {
        let skip = tail.chars().count() - 300;
        format!("...{}", tail.chars().skip(skip).collect::<String>())
    } else {
        tail
    }
}

/// Parse the observation command's stdout (already redacted by the caller). Login-shell noise
/// before the marker line is skipped. A malformed observation is `provider_failed`; an invalid
/// state or spec file is reported in `state_error`/`spec_error` naming the remote file.
pub fn parse_observation(stdout: &str) -> Result<Observation, ErrorBody> {
    let Some(line) = stdout
        .lines()
        .rev()
        .map(str::trim_start)
        .find_map(|l| l.strip_prefix(OBSERVATION_PREFIX))
    else {
        let tail = output_tail(stdout);
        let said = if tail.is_empty() {
            "no output".to_string()
        } else {
            format!("output ended with: {tail}")
        };
        return Err(ErrorBody::new(
            ErrorCode::ProviderFailed,
            format!(
                "the runner printed no {} line ({said}); check the launcher setting and that python 3 is installed in the runner",
                OBSERVATION_PREFIX.trim_end()
            ),
        ));
    };
    let raw: Value = serde_json::from_str(line.trim_end()).map_err(|e| {
        malformed(format!(
            "the {} line is not valid JSON ({e})",
            OBSERVATION_PREFIX.trim_end()
        ))
    })?;
    let Value::Object(obj) = &raw else {
        return Err(malformed("the observation is not a JSON object"));
    };
    if let Some(fatal) = obj.get("fatal") {
        let text = fatal
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| fatal.to_string());
        return Err(ErrorBody::new(
            ErrorCode::ProviderFailed,
            format!("the chain observation failed on the runner: {text}"),
        ));
    }
    match obj.get("version").and_then(Value::as_i64) {
        Some(1) => {}
        other => {
            return Err(malformed(format!(
                "unsupported observation version {}",
                other
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "(missing)".into())
            )));
        }
    }
    let spec_path = opt_string(obj, "spec_path")?.unwrap_or_default();
    let resolved_spec = opt_string(obj, "resolved_spec")?.unwrap_or_default();
    let state_path = opt_string(obj, "state_path")?.unwrap_or_default();
    let policy_path = opt_string(obj, "policy_path")?.unwrap_or_default();
    let spec_text = opt_string(obj, "spec_text")?;
    let state_text = opt_string(obj, "state_text")?;
    let policy_text = opt_string(obj, "policy_text")?;
    let mut warnings: Vec<String> = Vec::new();

    let (spec, spec_error) = match (&spec_text, opt_string(obj, "spec_error")?) {
        _ if spec_path.is_empty() => (None, None),
        (Some(text), _) => match parse_chain_spec(text, &resolved_spec) {
            Ok(spec) => (Some(spec), None),
            Err(e) => (None, Some(e)),
        },
        (None, Some(read_error)) => (
            None,
            Some(
                ErrorBody::new(
                    ErrorCode::ProviderFailed,
                    format!("cannot read the remote chain spec: {read_error}"),
                )
                .with("file", resolved_spec.as_str()),
            ),
        ),
        (None, None) => (
            None,
            Some(
                ErrorBody::new(
                    ErrorCode::MissingRemoteSpec,
                    format!(
                        "remote chain spec {resolved_spec} does not exist on the runner; run `megaplan-cloudctl chain <spec>` first, or pass --remote-spec with the spec's path on the runner"
                    ),
                )
                .with("file", resolved_spec.as_str()),
            ),
        ),
    };

    let (state, state_error) = match (&state_text, opt_string(obj, "state_error")?) {
        (Some(text), _) => match parse_chain_state(text, &state_path) {
            Ok(state) => (Some(state), None),
            Err(e) => (None, Some(e)),
        },
        (None, Some(read_error)) => (
            None,
            Some(
                ErrorBody::new(
                    ErrorCode::ProviderFailed,
                    format!("cannot read the chain state on the runner: {read_error}"),
                )
                .with("file", state_path.as_str()),
            ),
        ),
        (None, None) => (None, None),
    };

    let (policy_overrides, policy_warning) =
        parse_runtime_policy(policy_text.as_deref(), &policy_path);
    warnings.extend(policy_warning);
    let policy = effective_policy(spec.as_ref(), &policy_overrides);

    let runner = object_or_empty(obj, "runner")?;
    let liveness =
        Liveness::from_status(runner.get("status").and_then(Value::as_str).unwrap_or(""));
    let sessions = match obj.get("sessions") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items.clone(),
        Some(_) => return Err(malformed("field `sessions` is not a list")),
    };
    let session_marker = match obj.get("session_marker") {
        None | Some(Value::Null) => None,
        Some(v @ Value::Object(_)) => Some(v.clone()),
        Some(_) => return Err(malformed("field `session_marker` is not an object")),
    };
    let sync_refresh = match obj.get("sync_refresh") {
        None | Some(Value::Null) => None,
        Some(v @ Value::Object(_)) => Some(v.clone()),
        Some(_) => return Err(malformed("field `sync_refresh` is not an object")),
    };
    let pr_probe = opt_string(obj, "pr_probe")?;
    let core = object_or_empty(obj, "core")?;
    let core_launcher = core
        .get("launcher")
        .and_then(Value::as_str)
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string);
    let core_error = core
        .get("error")
        .and_then(Value::as_str)
        .map(str::to_string);

    for key in [
        "policy_error",
        "session_marker_error",
        "sessions_error",
        "pr_probe_error",
    ] {
        if let Some(w) = opt_string(obj, key)? {
            warnings.push(w);
        }
    }
    if let Some(Value::Array(errors)) = obj.get("errors") {
        warnings.extend(errors.iter().filter_map(Value::as_str).map(str::to_string));
    }
    let logs = object_or_empty(obj, "logs")?;
    if let Some(e) = logs.get("error").and_then(Value::as_str) {
        warnings.push(e.to_string());
    }

    Ok(Observation {
        spec_path,
        resolved_spec,
        state_path,
        policy_path,
        spec_text,
        spec,
        spec_error,
        state,
        state_error,
        policy_overrides,
        policy,
        plan_status: object_or_empty(obj, "plan_status")?,
        runner,
        liveness,
        logs,
        sync_refresh,
        pr_probe,
        session_marker,
        sessions,
        core_launcher,
        core_error,
        warnings,
        raw,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::process::Command;

    fn sample(obj: Value) -> String {
        format!(
            "Welcome to the runner!\nlast login: yesterday\n{OBSERVATION_PREFIX}{}\n",
            obj
        )
    }

    fn good() -> Value {
        json!({
            "version": 1,
            "errors": [],
            "spec_path": "/workspace/app/chain.yaml",
            "resolved_spec": "/workspace/app/chain.yaml",
            "state_path": "/workspace/app/.megaplan/plans/.chains/chain-880bd6e04632.json",
            "policy_path": "/workspace/app/.megaplan/plans/.chains/chain-880bd6e04632.runtime_policy.json",
            "spec_text": "prerequisite_policy: required\nmilestones:\n  - {label: m1, idea: a.md}\n  - {label: m2, idea: b.md}\n",
            "spec_error": null,
            "state_text": "{\"current_milestone_index\": 1, \"current_plan_name\": \"plan-m2\", \"pr_number\": 42}",
            "state_error": null,
            "policy_text": "{\"validation_policy\": \"required\"}",
            "sync_refresh": {"status": "ok"},
            "plan_status": {"status": "running", "plan": "plan-m2", "source": "megaplan status"},
            "runner": {"status": "dead", "session": "megaplan-chain"},
            "logs": {"path": "/workspace/app/.megaplan/cloud-chain.log", "exists": true, "mtime": "2026-06-01T10:00:00Z", "size": 12},
            "session_marker": {"session": "megaplan-chain", "remote_spec": "/workspace/app/chain.yaml"},
            "session_marker_error": null,
            "sessions": [{"session": "megaplan-chain", "alive": false, "marker": null}],
            "sessions_error": null,
            "pr_probe": "merged",
        })
    }

    #[test]
    fn observe_py_compiles() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("observe.py");
        std::fs::write(&file, OBSERVE_PY).unwrap();
        let out = Command::new("python3")
            .args(["-m", "py_compile"])
            .arg(&file)
            .output()
            .expect("python3 must be installed to test the runner-side script");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn parses_a_good_observation_after_noise() {
        let obs = parse_observation(&sample(good())).unwrap();
        assert_eq!(obs.spec_path, "/workspace/app/chain.yaml");
        assert_eq!(obs.spec.as_ref().unwrap().milestones.len(), 2);
        let state = obs.state.as_ref().unwrap();
        assert_eq!(state.current_milestone_index, 1);
        assert_eq!(state.pr_number, Some(42));
        assert_eq!(obs.liveness, Liveness::Dead);
        assert_eq!(obs.policy.prerequisite_policy, "required");
        assert_eq!(obs.policy.validation_policy, "required");
        assert_eq!(obs.policy.source, "runtime_override");
        assert_eq!(obs.pr_probe.as_deref(), Some("merged"));
        assert_eq!(obs.sync_refresh, Some(json!({"status": "ok"})));
        assert_eq!(obs.plan_status["status"], "running");
        assert_eq!(obs.sessions.len(), 1);
        assert!(obs.warnings.is_empty(), "{:?}", obs.warnings);
    }

    #[test]
    fn the_last_marker_line_wins_and_crlf_is_tolerated() {
        let mut first = good();
        first["pr_probe"] = json!("open");
        let text = format!(
            "{OBSERVATION_PREFIX}{first}\r\n  {OBSERVATION_PREFIX}{}\r\nbye\r\n",
            good()
        );
        assert_eq!(
            parse_observation(&text).unwrap().pr_probe.as_deref(),
            Some("merged")
        );
    }

    #[test]
    fn missing_state_and_bad_policy_are_not_errors() {
        let mut v = good();
        v["state_text"] = Value::Null;
        v["policy_text"] = json!("{oops");
        let obs = parse_observation(&sample(v)).unwrap();
        assert!(obs.state.is_none() && obs.state_error.is_none());
        assert_eq!(obs.state_or_default().current_milestone_index, -1);
        assert_eq!(obs.policy.source, "chain_yaml");
        assert!(
            obs.warnings
                .iter()
                .any(|w| w.contains("runtime_policy.json")),
            "{:?}",
            obs.warnings
        );
    }

    #[test]
    fn invalid_state_and_spec_name_the_remote_file() {
        let mut v = good();
        v["state_text"] = json!("{truncated");
        v["spec_text"] = json!("milestones:\n  - {label: m1}\n");
        let obs = parse_observation(&sample(v)).unwrap();
        let se = obs.state_error.unwrap();
        assert_eq!(se.error, ErrorCode::ProviderFailed);
        assert!(se.message.contains("chain-880bd6e04632.json"), "{se}");
        let pe = obs.spec_error.unwrap();
        assert_eq!(pe.error, ErrorCode::InvalidSpec);
        assert!(
            pe.message
                .contains("/workspace/app/chain.yaml: milestones[0].idea is required"),
            "{pe}"
        );
        assert_eq!(
            obs.policy.prerequisite_policy, "none",
            "no spec: core defaults"
        );

        let mut v = good();
        v["spec_text"] = Value::Null;
        let e = parse_observation(&sample(v)).unwrap().spec_error.unwrap();
        assert_eq!(e.error, ErrorCode::MissingRemoteSpec);
        assert!(e.message.contains("/workspace/app/chain.yaml"), "{e}");

        let mut v = good();
        v["spec_text"] = Value::Null;
        v["spec_error"] = json!("cannot read /workspace/app/chain.yaml: Permission denied");
        let e = parse_observation(&sample(v)).unwrap().spec_error.unwrap();
        assert_eq!(e.error, ErrorCode::ProviderFailed);
        assert!(e.message.contains("Permission denied"), "{e}");
    }

    #[test]
    fn malformed_observations_are_provider_failed() {
        let e = parse_observation("bash: python: command not found\n").unwrap_err();
        assert_eq!(e.error, ErrorCode::ProviderFailed);
        assert!(e.message.contains("no MEGAPLAN_OBSERVATION line"), "{e}");
        assert!(e.message.contains("command not found"), "{e}");
        let e = parse_observation("").unwrap_err();
        assert!(e.message.contains("(no output)"), "{e}");

        let e = parse_observation(&format!("{OBSERVATION_PREFIX}{{not json\n")).unwrap_err();
        assert!(e.message.contains("not valid JSON"), "{e}");
        let e = parse_observation(&format!("{OBSERVATION_PREFIX}[1]\n")).unwrap_err();
        assert!(e.message.contains("not a JSON object"), "{e}");
        let e = parse_observation(&format!(
            "{OBSERVATION_PREFIX}{}\n",
            json!({"version": 1, "fatal": "bad input"})
        ))
        .unwrap_err();
        assert!(e.message.contains("failed on the runner: bad input"), "{e}");
        let e = parse_observation(&format!("{OBSERVATION_PREFIX}{}\n", json!({"version": 9})))
            .unwrap_err();
        assert!(
            e.message.contains("unsupported observation version 9"),
            "{e}"
        );

        let mut v = good();
        v["state_text"] = json!(5);
        let e = parse_observation(&sample(v)).unwrap_err();
        assert!(e.message.contains("`state_text`"), "{e}");
        let mut v = good();
        v["runner"] = json!("alive");
        let e = parse_observation(&sample(v)).unwrap_err();
        assert!(e.message.contains("`runner`"), "{e}");
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
        let input = json!({
            "spec": req.spec, "session": req.session, "workspace": req.workspace,
            "launcher": req.launcher, "log_path": req.log_path, "sync_refresh": true,
            "pr_probe": false, "marker_dir": SESSION_MARKER_DIR,
        });
        assert!(script.ends_with(&format!(" {} \"$py\"", shell::quote(&input.to_string()))));
    }

    /// Run a script under `sh -c` with a private tmux socket dir.
    fn run_sh(script: &str, tmux_dir: &Path) -> std::process::Output {
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
        assert_eq!(sync["status"], "failed", "{sync}");
        assert!(
            sync["reason"]
                .as_str()
                .unwrap()
                .contains("megaplan_core_that_is_not_installed"),
            "{sync}"
        );
        assert_eq!(obs.plan_status["status"], "running", "{}", obs.plan_status);
        assert_eq!(obs.plan_status["source"], "state_file");
        let expected = if tmux_installed() {
            Liveness::Dead
        } else {
            Liveness::Unknown
        };
        assert_eq!(obs.liveness, expected, "{}", obs.runner);
        assert_eq!(obs.runner["session"], session.as_str());
        assert_eq!(obs.logs["exists"], true);
        assert_eq!(obs.logs["size"], 6);
        assert!(obs.logs["mtime"].as_str().unwrap().ends_with('Z'));
        assert_eq!(
            obs.session_marker.as_ref().unwrap()["remote_spec"],
            "/x/chain.yaml"
        );
        assert_eq!(obs.sessions.len(), 1);
        assert_eq!(obs.sessions[0]["alive"], false);
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
        let ws = root.path().join("ws");
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
        let state = crate::chain::observe::tests::state_file_for(&ws.join("chain.yaml"));
        std::fs::create_dir_all(state.parent().unwrap()).unwrap();
        std::fs::write(
            &state,
            r#"{"current_milestone_index": 0, "current_plan_name": "plan-m1"}"#,
        )
        .unwrap();
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
            obs.plan_status["source"], "megaplan status",
            "{}",
            obs.plan_status
        );
        assert_eq!(obs.plan_status["status"], "finalized");
        assert_eq!(obs.plan_status["next_step"], "execute");

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
        assert_eq!(obs.plan_status["source"], "state_file");
        assert!(
            obs.plan_status["reason"]
                .as_str()
                .unwrap()
                .contains("megaplan.launcher")
        );

        // A launcher given is used as written: nothing is probed.
        req.launcher = "python3 -m arnold_pipelines.megaplan".into();
        let obs = run(&req, &standin);
        assert!(obs.core_launcher.is_none() && obs.core_error.is_none());
        assert_eq!(obs.plan_status["source"], "megaplan status");
    }

    pub(super) fn state_file_for(spec: &Path) -> std::path::PathBuf {
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
        assert_eq!(obs.plan_status["status"], "missing");
        let names: Vec<&str> = obs
            .sessions
            .iter()
            .filter_map(|s| s["session"].as_str())
            .collect();
        assert_eq!(names, vec!["megaplan-chain-a"]);
    }
}
