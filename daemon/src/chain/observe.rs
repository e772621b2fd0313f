//! The chain observation, parsed: the one `MEGAPLAN_OBSERVATION <json>` object the runner's
//! observation script (built in `crate::runner::observe`) prints, or the resident observer
//! answers, becomes an [`Observation`].
//!
//! The state file name is derived on the runner from the spec path as the runner resolves it,
//! never on the operator's machine.

use crate::chain::classify::Liveness;
use crate::chain::spec::{ChainSpec, parse_chain_spec};
use crate::chain::state::{
    ChainState, EffectivePolicy, PolicyOverrides, effective_policy, parse_chain_state,
    parse_runtime_policy,
};
pub use crate::runner::layout::OBSERVATION_PREFIX;
use megaplan_cloud_api::{ErrorBody, ErrorCode};
use serde_json::{Map, Value, json};

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
    /// The tri-state verdict with its evidence (`chain::liveness`); `liveness` is its word.
    pub verdict: megaplan_cloud_api::liveness::Liveness,
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
    /// Imports of the megaplan core this observation caused on the runner (0 when a resident
    /// observer answered with the core already imported).
    pub core_starts: u32,
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
    let verdict = crate::chain::liveness::verdict(&runner);
    let liveness = crate::chain::liveness::probe_word(&verdict);
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
        verdict,
        logs,
        sync_refresh,
        pr_probe,
        session_marker,
        sessions,
        core_launcher,
        core_error,
        warnings,
        core_starts: obj
            .get("core_starts")
            .and_then(Value::as_u64)
            .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX)),
        raw,
    })
}
#[cfg(test)]
mod tests {
    use super::*;

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
}
