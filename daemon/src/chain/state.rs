//! The chain state the runner's core writes (`.megaplan/plans/.chains/<stem>-<digest>.json`)
//! and the runtime policy overrides kept beside it.
//!
//! The state file belongs to the core, which adds fields over time, so parsing is lenient: a
//! known field of the wrong type counts as absent, and the whole object is kept in `raw` so
//! nothing is lost when it is shown back to the operator.

use crate::chain::error::ChainError;
use crate::chain::spec::ChainSpec;
use megaplan_cloud_api::status::ChainPolicy;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The chain state as the core's `ChainState.from_dict` loads it. Every field reads leniently
/// ([`lenient`]): absent or of the wrong type, it takes the core's default. Serialized, it is
/// the core's `to_dict`: every known field normalised, unknown fields kept as read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ChainState {
    /// Written as 0 when absent, as the core does.
    #[serde(
        deserialize_with = "lenient::integer",
        serialize_with = "schema_version_or_zero"
    )]
    pub schema_version: Option<i64>,
    /// -1 before the chain starts; equals the milestone count once every milestone is done.
    #[serde(deserialize_with = "lenient::milestone_index")]
    pub current_milestone_index: i64,
    #[serde(deserialize_with = "lenient::text")]
    pub current_plan_name: Option<String>,
    #[serde(deserialize_with = "lenient::text")]
    pub last_state: Option<String>,
    #[serde(deserialize_with = "lenient::integer")]
    pub pr_number: Option<i64>,
    #[serde(deserialize_with = "lenient::text")]
    pub pr_state: Option<String>,
    /// The core's entries (`{"label": "m1", "plan": "p1", "status": "done"}`), kept as written;
    /// entries that are not objects are dropped.
    #[serde(deserialize_with = "lenient::objects")]
    pub completed: Vec<Map<String, Value>>,
    #[serde(deserialize_with = "lenient::text")]
    pub branch_head: Option<String>,
    #[serde(deserialize_with = "lenient::text")]
    pub pr_head: Option<String>,
    #[serde(deserialize_with = "lenient::text")]
    pub last_pushed_commit: Option<String>,
    #[serde(deserialize_with = "lenient::flag")]
    pub dirty_flag: bool,
    #[serde(deserialize_with = "lenient::text")]
    pub sync_state: Option<String>,
    /// The core drops the whole list when any item is not a non-blank string.
    #[serde(deserialize_with = "lenient::text_list")]
    pub extra_repos: Vec<String>,
    #[serde(deserialize_with = "lenient::text")]
    pub chain_session: Option<String>,
    #[serde(deserialize_with = "lenient::text")]
    pub resolved_workspace: Option<String>,
    /// The core's per-repository sync entries, kept as written (any list; else empty).
    #[serde(deserialize_with = "lenient::list")]
    pub extra_repo_sync: Vec<Value>,
    /// Fields this version does not name (`retry_counts`, a newer core's), kept as read.
    #[serde(flatten)]
    pub rest: Map<String, Value>,
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
            rest: Map::new(),
        }
    }
}

fn schema_version_or_zero<S: serde::Serializer>(v: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_i64(v.unwrap_or(0))
}

/// Reading the core's files the way the core reads them: a known field of the wrong type is
/// absent (its default), never an error. Each reader accepts any JSON value.
pub mod lenient {
    use serde::de::IgnoredAny;
    use serde::{Deserialize, Deserializer};

    /// Any JSON value, sorted into what the readers below keep.
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Loose {
        Text(String),
        Int(i64),
        Flag(bool),
        Other(IgnoredAny),
    }

    /// A list, or any other value.
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOr<T> {
        List(Vec<T>),
        Other(IgnoredAny),
    }

    /// A JSON object read as `T`, or any other value. `T` must read only from an object (a
    /// struct with a `#[serde(flatten)]` field, or a map): a plain derived struct would also
    /// read an array, by position.
    #[derive(Deserialize)]
    #[serde(untagged)]
    pub enum ObjectOr<T> {
        Object(T),
        Other(IgnoredAny),
    }

    impl<T> ObjectOr<T> {
        pub fn object(self) -> Option<T> {
            match self {
                ObjectOr::Object(t) => Some(t),
                ObjectOr::Other(_) => None,
            }
        }
    }

    /// A non-blank string, trimmed.
    pub fn text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        Ok(match Loose::deserialize(d)? {
            Loose::Text(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
            _ => None,
        })
    }

    /// Any string, as written (blank included).
    pub fn string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        Ok(match Loose::deserialize(d)? {
            Loose::Text(s) => Some(s),
            _ => None,
        })
    }

    /// For a field whose presence matters: `Some(None)` when it is there but not a string.
    pub fn present_string<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Option<String>>, D::Error> {
        string(d).map(Some)
    }

    /// An integer; the core loads numbers with `int()`, so digit strings count too.
    pub fn integer<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        Ok(match Loose::deserialize(d)? {
            Loose::Int(n) => Some(n),
            Loose::Text(s) => s.trim().parse().ok(),
            _ => None,
        })
    }

    /// The milestone cursor: an integer number, else -1 (not started).
    pub fn milestone_index<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        Ok(match Loose::deserialize(d)? {
            Loose::Int(n) => n,
            _ => -1,
        })
    }

    /// A boolean, else false.
    pub fn flag<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
        Ok(matches!(Loose::deserialize(d)?, Loose::Flag(true)))
    }

    /// A boolean, else absent.
    pub fn maybe_flag<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
        Ok(match Loose::deserialize(d)? {
            Loose::Flag(b) => Some(b),
            _ => None,
        })
    }

    /// A list of non-blank strings (kept as written); any other item, or no list, is empty.
    pub fn text_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        let ListOr::List(items) = ListOr::<Loose>::deserialize(d)? else {
            return Ok(Vec::new());
        };
        Ok(items
            .into_iter()
            .map(|i| match i {
                Loose::Text(s) if !s.trim().is_empty() => Some(s),
                _ => None,
            })
            .collect::<Option<Vec<String>>>()
            .unwrap_or_default())
    }

    /// A list's items as written; no list is empty.
    pub fn list<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de>,
    {
        Ok(match ListOr::<T>::deserialize(d)? {
            ListOr::List(items) => items,
            ListOr::Other(_) => Vec::new(),
        })
    }

    /// A list's object items (see [`ObjectOr`]); other items are dropped, no list is empty.
    pub fn objects<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de>,
    {
        Ok(list::<D, ObjectOr<T>>(d)?
            .into_iter()
            .filter_map(ObjectOr::object)
            .collect())
    }

    /// An object read as `T` (see [`ObjectOr`]); anything else is absent.
    pub fn object<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de>,
    {
        Ok(ObjectOr::<T>::deserialize(d)?.object())
    }
}

impl ChainState {
    /// Labels of the completed entries that have a text label, in file order.
    pub fn completed_labels(&self) -> Vec<&str> {
        self.completed
            .iter()
            .filter_map(|e| e.get("label").and_then(|l| l.as_str()))
            .collect()
    }

    /// The full state as the core's `to_dict` would show it: every known field with its
    /// normalised value, and the unknown fields as read.
    pub fn to_map(&self) -> Map<String, Value> {
        // Every field serializes to JSON and the struct to an object: the default is not reached.
        serde_json::to_value(self)
            .and_then(Map::deserialize)
            .unwrap_or_default()
    }
}

/// Parse the chain state file read from the runner. Only "not JSON" and "not an object" fail
/// (`provider_failed`, naming the remote file); wrong-typed fields are treated as absent.
pub fn parse_chain_state(text_in: &str, remote_file: &str) -> Result<ChainState, ChainError> {
    let invalid = |e: &dyn std::fmt::Display| ChainError::StateNotJson {
        file: remote_file.to_string(),
        why: e.to_string(),
    };
    // Read as an object first (a repeated key keeps its last value, as in the core), then
    // typed from it: the typed read refuses nothing.
    let object = serde_json::from_str::<Map<String, Value>>(text_in).map_err(|e| {
        if e.is_data() {
            ChainError::StateNotAnObject {
                file: remote_file.to_string(),
            }
        } else {
            invalid(&e)
        }
    })?;
    ChainState::deserialize(object).map_err(|e| invalid(&e))
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
    let file = match serde_json::from_str::<Map<String, Value>>(text_in) {
        Ok(object) => PolicyFile::deserialize(object),
        Err(e) => Err(e),
    };
    match file {
        Ok(f) => (
            PolicyOverrides {
                prerequisite_policy: f.prerequisite_policy,
                validation_policy: f.validation_policy,
                clean_milestone_pr: f.review_policy.and_then(|r| r.clean_milestone_pr),
            },
            None,
        ),
        Err(e) if e.is_data() => (
            PolicyOverrides::default(),
            Some(format!(
                "runtime policy {remote_file} is not a JSON object; ignoring it and using the chain.yaml policies"
            )),
        ),
        Err(e) => (
            PolicyOverrides::default(),
            Some(format!(
                "runtime policy {remote_file} is invalid JSON ({e}); ignoring it and using the chain.yaml policies"
            )),
        ),
    }
}

/// The runtime policy file as the core writes it; every field lenient.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PolicyFile {
    #[serde(deserialize_with = "lenient::text")]
    prerequisite_policy: Option<String>,
    #[serde(deserialize_with = "lenient::text")]
    validation_policy: Option<String>,
    #[serde(deserialize_with = "lenient::object")]
    review_policy: Option<ReviewOverride>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ReviewOverride {
    #[serde(deserialize_with = "lenient::text")]
    clean_milestone_pr: Option<String>,
    /// Reads the other keys, and makes this read only from an object (see `lenient::ObjectOr`).
    #[serde(flatten)]
    _other: std::collections::BTreeMap<String, serde::de::IgnoredAny>,
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
    use megaplan_cloud_api::{ErrorBody, ErrorCode};

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
        let e = ErrorBody::from(parse_chain_state("{not json", REMOTE).unwrap_err());
        assert_eq!(e.error, ErrorCode::ProviderFailed);
        assert!(e.message.contains(REMOTE), "{e}");
        assert!(e.message.contains("invalid JSON"), "{e}");
        assert_eq!(e.extra["file"], REMOTE);
        let e = ErrorBody::from(parse_chain_state("[1, 2]", REMOTE).unwrap_err());
        assert!(e.message.contains("must be a JSON object"), "{e}");
        assert!(e.message.contains(REMOTE), "{e}");
    }

    #[test]
    fn hostile_state_reads_like_the_core_or_fails_naming_the_file() {
        // Numbers out of i64, floats, a repeated key, labels of the wrong type, a non-list
        // where a list belongs: all read as the core reads them, never an error.
        let s = parse_chain_state(
            r#"{"pr_number": 18446744073709551615, "current_milestone_index": 2.0,
                "schema_version": "  3 ", "last_state": "a", "last_state": "b",
                "completed": [{"label": 5, "plan": "p"}, {"label": "m1"}, [1], null],
                "extra_repo_sync": "x", "extra_repos": ["  "], "dirty_flag": true,
                "review_policy": {"x": 1}}"#,
            REMOTE,
        )
        .unwrap();
        assert_eq!(s.pr_number, None);
        assert_eq!(s.current_milestone_index, -1);
        assert_eq!(s.schema_version, Some(3));
        assert_eq!(
            s.last_state.as_deref(),
            Some("b"),
            "the last of a repeated key"
        );
        assert_eq!(s.completed_labels(), vec!["m1"]);
        assert_eq!(s.completed.len(), 2);
        assert!(s.extra_repo_sync.is_empty());
        assert!(s.extra_repos.is_empty());
        assert!(s.dirty_flag);
        let v = s.to_map();
        // The core's entries stay as written, the unknown field too.
        assert_eq!(v["completed"][0]["label"], 5);
        assert_eq!(v["review_policy"]["x"], 1);
        assert_eq!(v["schema_version"], 3);
        assert_eq!(v["extra_repo_sync"], serde_json::json!([]));
        // Not an object, not JSON, too deep: the clear error naming the file.
        for (text_in, says) in [
            ("\"state\"", "must be a JSON object"),
            ("null", "must be a JSON object"),
            ("42", "must be a JSON object"),
            ("", "invalid JSON"),
            ("{} trailing", "invalid JSON"),
            ("{\"pr_number\": 1e999}", "invalid JSON"),
        ] {
            let e = ErrorBody::from(parse_chain_state(text_in, REMOTE).unwrap_err());
            assert_eq!(e.error, ErrorCode::ProviderFailed, "{text_in}");
            assert!(e.message.contains(says), "{text_in}: {e}");
            assert!(e.message.contains(REMOTE), "{e}");
            assert_eq!(e.extra["file"], REMOTE);
        }
        let deep = format!("{{\"x\": {}1{}}}", "[".repeat(500), "]".repeat(500));
        let e = ErrorBody::from(parse_chain_state(&deep, REMOTE).unwrap_err());
        assert!(e.message.contains("invalid JSON"), "{e}");
    }

    #[test]
    fn state_round_trips_through_its_map() {
        let text_in = r#"{"schema_version": 0, "current_milestone_index": 2, "pr_number": 7, "completed": [{"label": "m1"}],
            "extra_repo_sync": [1, {"path": "/l"}], "retry_counts": {"m1": 2}}"#;
        let s = parse_chain_state(text_in, REMOTE).unwrap();
        let again = ChainState::deserialize(s.to_map()).unwrap();
        assert_eq!(again, s);
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
        // A review policy that is not an object (an array would read by position) is absent;
        // wrong types are absent; the file stays usable.
        let (o, w) = parse_runtime_policy(
            Some(
                r#"{"review_policy": ["manual"], "validation_policy": 3, "prerequisite_policy": " required "}"#,
            ),
            f,
        );
        assert_eq!(w, None);
        assert_eq!(o.clean_milestone_pr, None);
        assert_eq!(o.validation_policy, None);
        assert_eq!(o.prerequisite_policy.as_deref(), Some("required"));
        let (o, _) =
            parse_runtime_policy(Some(r#"{"review_policy": {"clean_milestone_pr": 1}}"#), f);
        assert!(o.is_empty());
        for not_object in ["\"x\"", "null", "1"] {
            let (o, w) = parse_runtime_policy(Some(not_object), f);
            assert!(o.is_empty());
            assert!(w.unwrap().contains("not a JSON object"), "{not_object}");
        }
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
