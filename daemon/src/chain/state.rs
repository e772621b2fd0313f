//! The chain state the runner's core writes (`.megaplan/plans/.chains/<stem>-<digest>.json`)
//! and the runtime policy overrides kept beside it.
//!
//! The state file belongs to the core, which adds fields over time, so parsing is lenient: a
//! known field of the wrong type counts as absent, and the whole object is kept in `raw` so
//! nothing is lost when it is shown back to the operator.

use crate::chain::spec::ChainSpec;
use megaplan_cloud_api::status::ChainPolicy;
use megaplan_cloud_api::{ErrorBody, ErrorCode};
use serde::Serialize;
use serde_json::{Map, Value, json};

#[derive(Debug, Clone, PartialEq)]
pub struct ChainState {
    pub schema_version: Option<i64>,
    /// -1 before the chain starts; equals the milestone count once every milestone is done.
    pub current_milestone_index: i64,
    pub current_plan_name: Option<String>,
    pub last_state: Option<String>,
    pub pr_number: Option<i64>,
    pub pr_state: Option<String>,
    /// Entries like `{"label": "m1", "plan": "p1", "status": "done"}`; non-objects dropped.
    pub completed: Vec<Map<String, Value>>,
    pub branch_head: Option<String>,
    pub pr_head: Option<String>,
    pub last_pushed_commit: Option<String>,
    pub dirty_flag: bool,
    pub sync_state: Option<String>,
    pub extra_repos: Vec<String>,
    pub chain_session: Option<String>,
    pub resolved_workspace: Option<String>,
    pub extra_repo_sync: Vec<Value>,
    /// The object exactly as read (an empty object for a default state).
    pub raw: Value,
}

impl Default for ChainState {
    fn default() -> Self {
        ChainState {
            schema_version: None,
            current_milestone_index: -1,
            current_plan_name: None,
            last_state: None,
            pr_number: None,
            pr_state: None,
            completed: Vec::new(),
            branch_head: None,
            pr_head: None,
            last_pushed_commit: None,
            dirty_flag: false,
            sync_state: None,
            extra_repos: Vec::new(),
            chain_session: None,
            resolved_workspace: None,
            extra_repo_sync: Vec::new(),
            raw: Value::Object(Map::new()),
        }
    }
}

/// A non-blank string, trimmed; anything else is absent.
fn text(obj: &Map<String, Value>, key: &str) -> Option<String> {
    match obj.get(key) {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_string()),
        _ => None,
    }
}

/// An integer; the core loads `pr_number` with `int()`, so digit strings count too.
fn integer(obj: &Map<String, Value>, key: &str) -> Option<i64> {
    match obj.get(key) {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    }
}

impl ChainState {
    /// Labels of the completed entries, in file order.
    pub fn completed_labels(&self) -> Vec<&str> {
        self.completed
            .iter()
            .filter_map(|e| e.get("label").and_then(Value::as_str))
            .collect()
    }

    /// The full state as the core's `to_dict` would show it: unknown fields from `raw`, then
    /// every known field with its normalised value.
    pub fn to_map(&self) -> Map<String, Value> {
        let mut out = match &self.raw {
            Value::Object(m) => m.clone(),
            _ => Map::new(),
        };
        let known = json!({
            "schema_version": self.schema_version.unwrap_or(0),
            "current_milestone_index": self.current_milestone_index,
            "current_plan_name": self.current_plan_name,
            "last_state": self.last_state,
            "pr_number": self.pr_number,
            "pr_state": self.pr_state,
            "completed": self.completed,
            "branch_head": self.branch_head,
            "pr_head": self.pr_head,
            "last_pushed_commit": self.last_pushed_commit,
            "dirty_flag": self.dirty_flag,
            "sync_state": self.sync_state,
            "extra_repos": self.extra_repos,
            "chain_session": self.chain_session,
            "resolved_workspace": self.resolved_workspace,
            "extra_repo_sync": self.extra_repo_sync,
        });
        if let Value::Object(known) = known {
            out.extend(known);
        }
        out
    }
}

/// Parse the chain state file read from the runner. Only "not JSON" and "not an object" fail
/// (`provider_failed`, naming the remote file); wrong-typed fields are treated as absent.
pub fn parse_chain_state(text_in: &str, remote_file: &str) -> Result<ChainState, ErrorBody> {
    let doc: Value = serde_json::from_str(text_in).map_err(|e| {
        ErrorBody::new(
            ErrorCode::ProviderFailed,
            format!(
                "chain state {remote_file} on the runner is invalid JSON: {e}; inspect it with `megaplan-cloudctl exec 'cat {remote_file}'` (the core rewrites it on its next step)"
            ),
        )
        .with("file", remote_file)
    })?;
    let Value::Object(obj) = &doc else {
        return Err(ErrorBody::new(
            ErrorCode::ProviderFailed,
            format!(
                "chain state {remote_file} on the runner must be a JSON object; inspect it with `megaplan-cloudctl exec 'cat {remote_file}'`"
            ),
        )
        .with("file", remote_file));
    };
    let extra_repos = match obj.get("extra_repos") {
        // The core drops the whole list when any item is not a non-empty string.
        Some(Value::Array(items))
            if items
                .iter()
                .all(|i| matches!(i, Value::String(s) if !s.trim().is_empty())) =>
        {
            items
                .iter()
                .filter_map(|i| i.as_str().map(str::to_string))
                .collect()
        }
        _ => Vec::new(),
    };
    Ok(ChainState {
        schema_version: integer(obj, "schema_version"),
        current_milestone_index: match obj.get("current_milestone_index") {
            Some(Value::Number(n)) => n.as_i64().unwrap_or(-1),
            _ => -1,
        },
        current_plan_name: text(obj, "current_plan_name"),
        last_state: text(obj, "last_state"),
        pr_number: integer(obj, "pr_number"),
        pr_state: text(obj, "pr_state"),
        completed: match obj.get("completed") {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|i| i.as_object().cloned())
                .collect(),
            _ => Vec::new(),
        },
        branch_head: text(obj, "branch_head"),
        pr_head: text(obj, "pr_head"),
        last_pushed_commit: text(obj, "last_pushed_commit"),
        dirty_flag: obj
            .get("dirty_flag")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        sync_state: text(obj, "sync_state"),
        extra_repos,
        chain_session: text(obj, "chain_session"),
        resolved_workspace: text(obj, "resolved_workspace"),
        extra_repo_sync: match obj.get("extra_repo_sync") {
            Some(Value::Array(items)) => items.clone(),
            _ => Vec::new(),
        },
        raw: doc.clone(),
    })
}

/// Runtime policy overrides (`<stem>-<digest>.runtime_policy.json`). Each field is `Some` only
/// when the file sets it to a string.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PolicyOverrides {
    pub prerequisite_policy: Option<String>,
    pub validation_policy: Option<String>,
    pub clean_milestone_pr: Option<String>,
}

impl PolicyOverrides {
    pub fn is_empty(&self) -> bool {
        self.prerequisite_policy.is_none()
            && self.validation_policy.is_none()
            && self.clean_milestone_pr.is_none()
    }
}

/// Parse the overrides file. No file is the normal case (empty overrides, no warning); a file
/// that is not a JSON object gives empty overrides plus a warning, never an error, because the
/// core treats it the same way.
pub fn parse_runtime_policy(
    text_in: Option<&str>,
    remote_file: &str,
) -> (PolicyOverrides, Option<String>) {
    let Some(text_in) = text_in else {
        return (PolicyOverrides::default(), None);
    };
    let obj = match serde_json::from_str::<Value>(text_in) {
        Ok(Value::Object(obj)) => obj,
        Ok(_) => {
            return (
                PolicyOverrides::default(),
                Some(format!(
                    "runtime policy {remote_file} is not a JSON object; ignoring it and using the chain.yaml policies"
                )),
            );
        }
        Err(e) => {
            return (
                PolicyOverrides::default(),
                Some(format!(
                    "runtime policy {remote_file} is invalid JSON ({e}); ignoring it and using the chain.yaml policies"
                )),
            );
        }
    };
    let clean_milestone_pr = obj
        .get("review_policy")
        .and_then(Value::as_object)
        .and_then(|r| text(r, "clean_milestone_pr"));
    (
        PolicyOverrides {
            prerequisite_policy: text(&obj, "prerequisite_policy"),
            validation_policy: text(&obj, "validation_policy"),
            clean_milestone_pr,
        },
        None,
    )
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReviewPolicy {
    pub clean_milestone_pr: String,
}

/// The policies in force: the override when set, else the spec, else the core's default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EffectivePolicy {
    pub prerequisite_policy: String,
    pub validation_policy: String,
    pub review_policy: ReviewPolicy,
    /// `chain_yaml`, or `runtime_override` when at least one override applied.
    pub source: String,
}

impl EffectivePolicy {
    /// The policies as `status --chain` shows them, with their source.
    pub fn to_api(&self) -> ChainPolicy {
        ChainPolicy {
            prerequisite_policy: self.prerequisite_policy.clone(),
            review_policy: megaplan_cloud_api::status::ReviewPolicy {
                clean_milestone_pr: self.review_policy.clean_milestone_pr.clone(),
            },
            source: Some(self.source.clone()),
            validation_policy: self.validation_policy.clone(),
        }
    }
}

impl Default for EffectivePolicy {
    fn default() -> Self {
        effective_policy(None, &PolicyOverrides::default())
    }
}

/// Combine the (remote) spec's policies with the overrides. `spec` is `None` when the remote
/// spec could not be read; the core's defaults (`none`, `none`, `auto`) apply then.
pub fn effective_policy(spec: Option<&ChainSpec>, overrides: &PolicyOverrides) -> EffectivePolicy {
    let pick = |over: &Option<String>, from_spec: Option<&String>, default: &str| {
        over.clone()
            .or_else(|| from_spec.cloned())
            .unwrap_or_else(|| default.to_string())
    };
    EffectivePolicy {
        prerequisite_policy: pick(
            &overrides.prerequisite_policy,
            spec.map(|s| &s.prerequisite_policy),
            "none",
        ),
        validation_policy: pick(
            &overrides.validation_policy,
            spec.map(|s| &s.validation_policy),
            "none",
        ),
        review_policy: ReviewPolicy {
            clean_milestone_pr: pick(
                &overrides.clean_milestone_pr,
                spec.map(|s| &s.review_clean_milestone_pr),
                "auto",
            ),
        },
        source: if overrides.is_empty() {
            "chain_yaml"
        } else {
            "runtime_override"
        }
        .to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::spec::parse_chain_spec;

    const REMOTE: &str = "/workspace/app/.megaplan/plans/.chains/chain-880bd6e04632.json";

    #[test]
    fn full_state_parses_and_keeps_unknown_fields() {
        let text_in = r#"{
          "schema_version": 0, "current_milestone_index": 1, "current_plan_name": "plan-m2",
          "last_state": "awaiting_pr_merge", "pr_number": 42, "pr_state": "open",
          "completed": [{"label": "m1", "plan": "p1", "status": "done"}, "junk"],
          "branch_head": "abc123", "pr_head": "def456", "last_pushed_commit": "abc123",
          "dirty_flag": false, "sync_state": "stale", "extra_repos": ["/workspace/lib"],
          "chain_session": "megaplan-chain", "resolved_workspace": "/workspace/app",
          "extra_repo_sync": [{"path": "/workspace/lib", "sync_state": "synced"}],
          "retry_counts": {"m1": 1}, "future_field": [1, 2]
        }"#;
        let s = parse_chain_state(text_in, REMOTE).unwrap();
        assert_eq!(s.current_milestone_index, 1);
        assert_eq!(s.current_plan_name.as_deref(), Some("plan-m2"));
        assert_eq!(s.last_state.as_deref(), Some("awaiting_pr_merge"));
        assert_eq!(s.pr_number, Some(42));
        assert_eq!(s.completed_labels(), vec!["m1"]);
        assert_eq!(s.sync_state.as_deref(), Some("stale"));
        assert_eq!(s.extra_repos, vec!["/workspace/lib".to_string()]);
        assert_eq!(s.chain_session.as_deref(), Some("megaplan-chain"));
        assert_eq!(s.extra_repo_sync.len(), 1);
        let v = s.to_map();
        assert_eq!(v["retry_counts"]["m1"], 1);
        assert_eq!(v["future_field"][1], 2);
        assert_eq!(v["pr_number"], 42);
        assert_eq!(v["completed"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn wrong_types_are_absent_not_errors() {
        let s = parse_chain_state(
            r#"{"current_milestone_index": "two", "current_plan_name": 5, "pr_number": "17",
                "dirty_flag": "yes", "extra_repos": ["/a", 3], "chain_session": "  ",
                "completed": {"label": "m1"}, "sync_state": null}"#,
            REMOTE,
        )
        .unwrap();
        assert_eq!(s.current_milestone_index, -1);
        assert_eq!(s.current_plan_name, None);
        assert_eq!(s.pr_number, Some(17), "digit strings load like int()");
        assert!(!s.dirty_flag);
        assert!(s.extra_repos.is_empty());
        assert_eq!(s.chain_session, None);
        assert!(s.completed.is_empty());
        assert_eq!(s.sync_state, None);
    }

    #[test]
    fn default_state_matches_the_core() {
        let s = ChainState::default();
        assert_eq!(s.current_milestone_index, -1);
        let v = s.to_map();
        assert_eq!(v["current_milestone_index"], -1);
        assert_eq!(v["schema_version"], 0);
        assert_eq!(v["dirty_flag"], false);
        assert_eq!(v["current_plan_name"], Value::Null);
        assert_eq!(parse_chain_state("{}", REMOTE).unwrap().to_map(), v);
    }

    #[test]
    fn invalid_state_names_the_remote_file() {
        let e = parse_chain_state("{not json", REMOTE).unwrap_err();
        assert_eq!(e.error, ErrorCode::ProviderFailed);
        assert!(e.message.contains(REMOTE), "{e}");
        assert!(e.message.contains("invalid JSON"), "{e}");
        assert_eq!(e.extra["file"], REMOTE);
        let e = parse_chain_state("[1, 2]", REMOTE).unwrap_err();
        assert!(e.message.contains("must be a JSON object"), "{e}");
        assert!(e.message.contains(REMOTE), "{e}");
    }

    #[test]
    fn runtime_policy_parsing() {
        let f = "/w/.megaplan/plans/.chains/chain-x.runtime_policy.json";
        assert_eq!(
            parse_runtime_policy(None, f),
            (PolicyOverrides::default(), None)
        );
        let (o, w) = parse_runtime_policy(
            Some(
                r#"{"prerequisite_policy": "required", "review_policy": {"clean_milestone_pr": "manual"}, "x": 1}"#,
            ),
            f,
        );
        assert_eq!(w, None);
        assert_eq!(o.prerequisite_policy.as_deref(), Some("required"));
        assert_eq!(o.validation_policy, None);
        assert_eq!(o.clean_milestone_pr.as_deref(), Some("manual"));
        let (o, w) = parse_runtime_policy(Some("{broken"), f);
        assert!(o.is_empty());
        assert!(w.unwrap().contains(f));
        let (o, w) = parse_runtime_policy(Some("[]"), f);
        assert!(o.is_empty());
        assert!(w.unwrap().contains("not a JSON object"));
    }

    #[test]
    fn effective_policy_prefers_overrides() {
        let spec = parse_chain_spec(
            "prerequisite_policy: required\nvalidation_policy: required\n",
            "chain.yaml",
        )
        .unwrap();
        let p = effective_policy(Some(&spec), &PolicyOverrides::default());
        assert_eq!(p.prerequisite_policy, "required");
        assert_eq!(p.validation_policy, "required");
        assert_eq!(p.review_policy.clean_milestone_pr, "auto");
        assert_eq!(p.source, "chain_yaml");

        let o = PolicyOverrides {
            prerequisite_policy: Some("none".into()),
            validation_policy: None,
            clean_milestone_pr: Some("manual".into()),
        };
        let p = effective_policy(Some(&spec), &o);
        assert_eq!(p.prerequisite_policy, "none");
        assert_eq!(p.validation_policy, "required");
        assert_eq!(p.review_policy.clean_milestone_pr, "manual");
        assert_eq!(p.source, "runtime_override");
        let v = p.to_api();
        assert_eq!(v.review_policy.clean_milestone_pr, "manual");
        assert_eq!(v.source.as_deref(), Some("runtime_override"));

        let p = EffectivePolicy::default();
        assert_eq!(
            (p.prerequisite_policy.as_str(), p.validation_policy.as_str()),
            ("none", "none")
        );
    }
}
