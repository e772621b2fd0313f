//! The chain observation, parsed: the one `MEGAPLAN_OBSERVATION <json>` object the runner's
//! observation script (built in `crate::runner::observe`) prints, or the resident observer
//! answers, becomes an [`Observation`].
//!
//! The state file name is derived on the runner from the spec path as the runner resolves it,
//! never on the operator's machine.

use crate::chain::classify::Liveness;
use crate::chain::error::ChainError;
use crate::chain::spec::{ChainSpec, parse_chain_spec};
use crate::chain::state::{
    ChainState, EffectivePolicy, PolicyOverrides, effective_policy, lenient, parse_chain_state,
    parse_runtime_policy,
};
pub use crate::runner::layout::OBSERVATION_PREFIX;
use megaplan_cloud_api::report::{LogsInfo, RunnerInfo, SyncRefresh};
use megaplan_cloud_api::status::PlanStatus;
use serde::Deserialize;
use std::collections::BTreeMap;

/// The observation object exactly as `observe()` in `runner/observe.py` documents and prints
/// it (one-shot after the `MEGAPLAN_OBSERVATION ` prefix, or in the resident observer's
/// answer). Every field may be absent or `null`; a field of the wrong type makes the whole
/// observation malformed, naming the field.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Printed {
    version: Option<i64>,
    /// The observer itself failed (bad input, an exception); nothing else is set.
    fatal: Option<String>,
    spec_path: Option<String>,
    resolved_spec: Option<String>,
    state_path: Option<String>,
    policy_path: Option<String>,
    spec_text: Option<String>,
    spec_error: Option<String>,
    state_text: Option<String>,
    state_error: Option<String>,
    policy_text: Option<String>,
    policy_error: Option<String>,
    sync_refresh: Option<SyncRefresh>,
    plan_status: Option<PlanStatus>,
    runner: Option<RunnerInfo>,
    logs: Option<LogsInfo>,
    session_marker: Option<SessionMarker>,
    session_marker_error: Option<String>,
    sessions: Option<Vec<ObservedSession>>,
    sessions_error: Option<String>,
    pr_probe: Option<String>,
    pr_probe_error: Option<String>,
    /// Only when the request named no launcher: the core the runner found.
    core: Option<CoreFound>,
    /// Findings of the observer; entries that are not text are skipped.
    errors: Option<Vec<TextOrOther>>,
    core_starts: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum TextOrOther {
    Text(String),
    Other(serde::de::IgnoredAny),
}

/// `find_core` in observe.py: the first importable core module, or why none was found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct CoreFound {
    pub module: Option<String>,
    pub launcher: Option<String>,
    pub error: Option<String>,
}

/// One `megaplan-chain*` session on the runner (`list_sessions` in observe.py): live in tmux,
/// or only its session marker left.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ObservedSession {
    pub session: String,
    #[serde(default)]
    pub alive: bool,
    #[serde(default)]
    pub marker: Option<SessionMarker>,
    #[serde(default)]
    pub marker_error: Option<String>,
}

/// A launch's session marker on the runner (`session_marker_command` in runner/mutation.rs
/// writes it). It is a file a person may edit, so a field of the wrong type reads as absent;
/// one that is not an object makes the observation malformed, naming the field.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct SessionMarker {
    #[serde(deserialize_with = "lenient::string")]
    pub session: Option<String>,
    #[serde(deserialize_with = "lenient::string")]
    pub workspace: Option<String>,
    #[serde(deserialize_with = "lenient::string")]
    pub remote_spec: Option<String>,
    #[serde(deserialize_with = "lenient::string")]
    pub identity_digest: Option<String>,
    /// `chain` (a person's launch) or `supervise`.
    #[serde(deserialize_with = "lenient::string")]
    pub run_kind: Option<String>,
    /// `launch`, or the supervisor's mutation (`restart`, `advance`).
    #[serde(deserialize_with = "lenient::string")]
    pub trigger: Option<String>,
    #[serde(deserialize_with = "lenient::string")]
    pub started_at: Option<String>,
    /// Reads the fields this version does not name, and makes the marker read only from an
    /// object (see `lenient::ObjectOr`).
    #[serde(flatten)]
    _other: BTreeMap<String, serde::de::IgnoredAny>,
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
    pub spec_error: Option<ChainError>,
    /// `None` when the state file does not exist yet (chain not started) or is unreadable.
    pub state: Option<ChainState>,
    pub state_error: Option<ChainError>,
    pub policy_overrides: PolicyOverrides,
    pub policy: EffectivePolicy,
    pub plan_status: PlanStatus,
    pub runner: RunnerInfo,
    pub liveness: Liveness,
    /// The tri-state verdict with its evidence (`chain::liveness`); `liveness` is its word.
    pub verdict: megaplan_cloud_api::liveness::Liveness,
    /// The chain log as stat'ed (`path`, `exists`, `mtime`, `size`, `error`).
    pub logs: LogsInfo,
    /// `None` when not asked.
    pub sync_refresh: Option<SyncRefresh>,
    /// Lowercased `gh pr view` state (`merged`, `open`, ..., `unknown`); `None` when not probed.
    pub pr_probe: Option<String>,
    pub session_marker: Option<SessionMarker>,
    pub sessions: Vec<ObservedSession>,
    /// The launcher the runner found for the core (only when the request had none).
    pub core_launcher: Option<String>,
    /// Why no core was found (only when the request had no launcher).
    pub core_error: Option<String>,
    /// Non-fatal findings (unreadable marker, bad policy file, probe errors).
    pub warnings: Vec<String>,
    /// Imports of the megaplan core this observation caused on the runner (0 when a resident
    /// observer answered with the core already imported).
    pub core_starts: u32,
}

impl Observation {
    /// The state to classify and display: the observed one, or the core's default before the
    /// chain has written any.
    pub fn state_or_default(&self) -> ChainState {
        self.state.clone().unwrap_or_default()
    }
}

fn malformed(what: impl std::fmt::Display) -> ChainError {
    ChainError::MalformedObservation {
        what: what.to_string(),
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

/// The observation line read into its documented shape; a wrong-typed field is named.
fn read_printed(line: &str) -> Result<Printed, ChainError> {
    let not_json = |e: &dyn std::fmt::Display| {
        malformed(format!(
            "the {} line is not valid JSON ({e})",
            OBSERVATION_PREFIX.trim_end()
        ))
    };
    // A derived struct also reads a JSON array (its fields by position): refuse it first.
    if line.trim_start().starts_with('[') {
        return Err(malformed("the observation is not a JSON object"));
    }
    let mut de = serde_json::Deserializer::from_str(line);
    let printed = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            not_json(&inner)
        } else if path == "." {
            malformed("the observation is not a JSON object")
        } else {
            malformed(format!("field `{path}` has the wrong type ({inner})"))
        }
    })?;
    de.end().map_err(|e| not_json(&e))?;
    Ok(printed)
}

/// Parse the observation command's stdout (already redacted by the caller). Login-shell noise
/// before the marker line is skipped. A malformed observation is `provider_failed`; an invalid
/// state or spec file is reported in `state_error`/`spec_error` naming the remote file.
pub fn parse_observation(stdout: &str) -> Result<Observation, ChainError> {
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
        return Err(ChainError::NoObservation { said });
    };
    let p = read_printed(line.trim_end())?;
    if let Some(fatal) = p.fatal {
        return Err(ChainError::ObservationFailed { why: fatal });
    }
    if p.version != Some(1) {
        return Err(malformed(format!(
            "unsupported observation version {}",
            p.version
                .map(|v| v.to_string())
                .unwrap_or_else(|| "(missing)".into())
        )));
    }
    let spec_path = p.spec_path.unwrap_or_default();
    let resolved_spec = p.resolved_spec.unwrap_or_default();
    let state_path = p.state_path.unwrap_or_default();
    let policy_path = p.policy_path.unwrap_or_default();
    let spec_text = p.spec_text;
    let mut warnings: Vec<String> = Vec::new();

    let (spec, spec_error) = match (&spec_text, p.spec_error) {
        _ if spec_path.is_empty() => (None, None),
        (Some(text), _) => match parse_chain_spec(text, &resolved_spec) {
            Ok(spec) => (Some(spec), None),
            Err(e) => (None, Some(e)),
        },
        (None, Some(read_error)) => (
            None,
            Some(ChainError::RemoteSpecUnreadable {
                file: resolved_spec.clone(),
                why: read_error,
            }),
        ),
        (None, None) => (
            None,
            Some(ChainError::RemoteSpecMissing {
                file: resolved_spec.clone(),
            }),
        ),
    };

    let (state, state_error) = match (&p.state_text, p.state_error) {
        (Some(text), _) => match parse_chain_state(text, &state_path) {
            Ok(state) => (Some(state), None),
            Err(e) => (None, Some(e)),
        },
        (None, Some(read_error)) => (
            None,
            Some(ChainError::StateUnreadable {
                file: state_path.clone(),
                why: read_error,
            }),
        ),
        (None, None) => (None, None),
    };

    let (policy_overrides, policy_warning) =
        parse_runtime_policy(p.policy_text.as_deref(), &policy_path);
    warnings.extend(policy_warning);
    let policy = effective_policy(spec.as_ref(), &policy_overrides);

    let runner = p.runner.unwrap_or_default();
    let verdict = crate::chain::liveness::verdict(&runner);
    let liveness = crate::chain::liveness::probe_word(&verdict);
    let core = p.core.unwrap_or_default();
    warnings.extend(
        [
            p.policy_error,
            p.session_marker_error,
            p.sessions_error,
            p.pr_probe_error,
        ]
        .into_iter()
        .flatten(),
    );
    warnings.extend(p.errors.into_iter().flatten().filter_map(|e| match e {
        TextOrOther::Text(t) => Some(t),
        TextOrOther::Other(_) => None,
    }));
    let logs = p.logs.unwrap_or_default();
    warnings.extend(logs.error.clone());

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
        plan_status: p.plan_status.unwrap_or_default(),
        runner,
        liveness,
        verdict,
        logs,
        sync_refresh: p.sync_refresh,
        pr_probe: p.pr_probe,
        session_marker: p.session_marker,
        sessions: p.sessions.unwrap_or_default(),
        core_launcher: core.launcher.filter(|l| !l.trim().is_empty()),
        core_error: core.error,
        warnings,
        core_starts: p.core_starts.unwrap_or(0),
    })
}
#[cfg(test)]
mod tests {
    use super::*;
    use megaplan_cloud_api::ErrorCode;
    use serde_json::Value;
    use serde_json::json;

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
        assert_eq!(
            obs.sync_refresh.as_ref().map(|r| r.status.as_str()),
            Some("ok")
        );
        assert_eq!(obs.plan_status.status.as_deref(), Some("running"));
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
        assert_eq!(se.code(), ErrorCode::ProviderFailed);
        assert!(se.to_string().contains("chain-880bd6e04632.json"), "{se}");
        let pe = obs.spec_error.unwrap();
        assert_eq!(pe.code(), ErrorCode::InvalidSpec);
        assert!(
            pe.to_string()
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
        assert_eq!(e.code(), ErrorCode::MissingRemoteSpec);
        assert!(e.to_string().contains("/workspace/app/chain.yaml"), "{e}");

        let mut v = good();
        v["spec_text"] = Value::Null;
        v["spec_error"] = json!("cannot read /workspace/app/chain.yaml: Permission denied");
        let e = parse_observation(&sample(v)).unwrap().spec_error.unwrap();
        assert_eq!(e.code(), ErrorCode::ProviderFailed);
        assert!(e.to_string().contains("Permission denied"), "{e}");
    }

    #[test]
    fn malformed_observations_are_provider_failed() {
        let e = parse_observation("bash: python: command not found\n").unwrap_err();
        assert_eq!(e.code(), ErrorCode::ProviderFailed);
        assert!(
            e.to_string().contains("no MEGAPLAN_OBSERVATION line"),
            "{e}"
        );
        assert!(e.to_string().contains("command not found"), "{e}");
        let e = parse_observation("").unwrap_err();
        assert!(e.to_string().contains("(no output)"), "{e}");

        let e = parse_observation(&format!("{OBSERVATION_PREFIX}{{not json\n")).unwrap_err();
        assert!(e.to_string().contains("not valid JSON"), "{e}");
        let e = parse_observation(&format!("{OBSERVATION_PREFIX}[1]\n")).unwrap_err();
        assert!(e.to_string().contains("not a JSON object"), "{e}");
        let e = parse_observation(&format!(
            "{OBSERVATION_PREFIX}{}\n",
            json!({"version": 1, "fatal": "bad input"})
        ))
        .unwrap_err();
        assert!(
            e.to_string().contains("failed on the runner: bad input"),
            "{e}"
        );
        let e = parse_observation(&format!("{OBSERVATION_PREFIX}{}\n", json!({"version": 9})))
            .unwrap_err();
        assert!(
            e.to_string().contains("unsupported observation version 9"),
            "{e}"
        );

        let mut v = good();
        v["state_text"] = json!(5);
        let e = parse_observation(&sample(v)).unwrap_err();
        assert!(e.to_string().contains("`state_text`"), "{e}");
        let mut v = good();
        v["runner"] = json!("alive");
        let e = parse_observation(&sample(v)).unwrap_err();
        assert!(e.to_string().contains("`runner`"), "{e}");
    }

    #[test]
    fn session_markers_read_typed_and_leniently() {
        let mut v = good();
        v["session_marker"] = json!({"session": "megaplan-chain", "remote_spec": 5,
            "identity_digest": "d1", "run_kind": "supervise", "trigger": "restart",
            "started_at": "2026-06-01T10:00:00Z", "future": {"x": [1]}});
        v["sessions"] = json!([{"session": "megaplan-chain-b", "alive": true,
            "marker": {"workspace": "/w/b", "started_at": null}, "marker_error": null}]);
        let obs = parse_observation(&sample(v)).unwrap();
        let m = obs.session_marker.unwrap();
        // A field of the wrong type is absent, an unknown one ignored; the rest are read.
        assert_eq!(m.remote_spec, None);
        assert_eq!(m.identity_digest.as_deref(), Some("d1"));
        assert_eq!(m.run_kind.as_deref(), Some("supervise"));
        assert_eq!(m.trigger.as_deref(), Some("restart"));
        assert_eq!(obs.sessions[0].session, "megaplan-chain-b");
        let b = obs.sessions[0].marker.as_ref().unwrap();
        assert_eq!(b.workspace.as_deref(), Some("/w/b"));
        assert_eq!(b.started_at, None);

        // A marker that is not an object (an array would otherwise read by position) is a
        // malformed observation naming the field.
        for bad in [json!(["megaplan-chain", "/w"]), json!("m"), json!(3)] {
            let mut v = good();
            v["session_marker"] = bad.clone();
            let e = parse_observation(&sample(v)).unwrap_err();
            assert_eq!(e.code(), ErrorCode::ProviderFailed);
            assert!(e.to_string().contains("`session_marker`"), "{bad}: {e}");
            let mut v = good();
            v["sessions"] = json!([{"session": "megaplan-chain", "marker": bad}]);
            let e = parse_observation(&sample(v)).unwrap_err();
            assert!(e.to_string().contains("`sessions[0].marker`"), "{e}");
        }
    }
}
