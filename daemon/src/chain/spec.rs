//! The chain spec (`chain.yaml`): parsing, validation, the normalised copy uploaded to the
//! runner, and the identity digest of that copy.
//!
//! Only the keys the cloud side needs are modelled (milestones, seed plan, base branch, the
//! policies). Everything else — per-milestone knobs, `driver`, `on_failure`, keys added by newer
//! core versions — is type-checked where the core's rules are known and otherwise carried
//! untouched in `raw`, so the remote core sees exactly what the operator wrote.

use crate::chain::error::ChainError;
use crate::yaml;
use crate::yaml::type_name;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::collections::HashSet;

pub const MERGE_POLICIES: [&str; 3] = ["auto", "review", "manual"];
pub const GATE_POLICIES: [&str; 2] = ["none", "required"];
pub const REVIEW_POLICIES: [&str; 2] = ["auto", "manual"];

/// Per-milestone string knobs. Their allowed values differ between core versions, so only the
/// type is checked here; the runner's core validates the value.
const MILESTONE_STRING_KEYS: [&str; 7] = [
    "profile",
    "robustness",
    "notes",
    "vendor",
    "depth",
    "critic",
    "deepseek_provider",
];
const MILESTONE_BOOL_KEYS: [&str; 3] = ["with_prep", "with_feedback", "prep_clarify"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Milestone {
    pub index: usize,
    pub label: String,
    /// Path of the idea file on the runner (usually relative to the workspace).
    pub idea: String,
    pub branch: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChainSpec {
    /// The whole top-level mapping as written, unknown keys included.
    pub raw: Map<String, Value>,
    pub milestones: Vec<Milestone>,
    pub seed_plan: Option<String>,
    /// `None` when the spec names none; the uploaded copy then gets `repo.branch`.
    pub base_branch: Option<String>,
    pub merge_policy: String,
    pub prerequisite_policy: String,
    pub validation_policy: String,
    pub review_clean_milestone_pr: String,
}

struct Checker<'a> {
    file: &'a str,
}

impl Checker<'_> {
    fn err(&self, field: &str, message: impl std::fmt::Display) -> ChainError {
        ChainError::spec_field(self.file, field, message)
    }

    fn milestone_err(
        &self,
        index: usize,
        field: &str,
        message: impl std::fmt::Display,
    ) -> ChainError {
        ChainError::milestone_field(self.file, index, field, message)
    }

    /// A top-level policy string restricted to `allowed`; absent or null means `default`.
    fn choice(
        &self,
        map: &Map<String, Value>,
        key: &str,
        field: &str,
        default: &str,
        allowed: &[&str],
    ) -> Result<String, ChainError> {
        match map.get(key) {
            None | Some(Value::Null) => Ok(default.to_string()),
            Some(Value::String(s)) if allowed.contains(&s.as_str()) => Ok(s.clone()),
            Some(Value::String(s)) => Err(self.err(
                field,
                format!("{field} must be one of {}; got {s:?}", allowed.join(", ")),
            )),
            Some(other) => Err(self.err(
                field,
                format!(
                    "{field} must be one of {}; got {}",
                    allowed.join(", "),
                    type_name(other)
                ),
            )),
        }
    }

    fn optional_mapping<'m>(
        &self,
        map: &'m Map<String, Value>,
        key: &str,
        hint: &str,
    ) -> Result<Option<&'m Map<String, Value>>, ChainError> {
        match map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(m)) => Ok(Some(m)),
            Some(other) => Err(self.err(
                key,
                format!(
                    "`{key}` must be a mapping, found {}; {hint}",
                    type_name(other)
                ),
            )),
        }
    }

    fn milestone(
        &self,
        index: usize,
        item: &Value,
    ) -> Result<(Milestone, Vec<String>), ChainError> {
        let at = format!("milestones[{index}]");
        let Value::Object(m) = item else {
            return Err(self.milestone_err(
                index,
                &at,
                format!(
                    "{at} must be a mapping with at least `label` and `idea`, found {}",
                    type_name(item)
                ),
            ));
        };
        let required = |key: &str, hint: &str| -> Result<String, ChainError> {
            let field = format!("{at}.{key}");
            match m.get(key) {
                Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.trim().to_string()),
                None | Some(Value::Null) | Some(Value::String(_)) => {
                    Err(self.milestone_err(index, &field, format!("{field} is required; {hint}")))
                }
                Some(other) => Err(self.milestone_err(
                    index,
                    &field,
                    format!(
                        "{field} must be a string, found {}; {hint}",
                        type_name(other)
                    ),
                )),
            }
        };
        let label = required(
            "label",
            "give every milestone a short unique name such as m1",
        )?;
        let idea = required(
            "idea",
            "set it to the idea file's path as the runner sees it (relative to the workspace)",
        )?;
        let branch = match m.get("branch") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.trim().is_empty() => None,
            Some(Value::String(s)) => Some(s.trim().to_string()),
            Some(other) => {
                return Err(self.milestone_err(
                    index,
                    &format!("{at}.branch"),
                    format!("{at}.branch must be a string, found {}", type_name(other)),
                ));
            }
        };
        for key in MILESTONE_STRING_KEYS {
            match m.get(key) {
                None | Some(Value::Null) | Some(Value::String(_)) => {}
                Some(other) => {
                    return Err(self.milestone_err(
                        index,
                        &format!("{at}.{key}"),
                        format!("{at}.{key} must be a string, found {}", type_name(other)),
                    ));
                }
            }
        }
        for key in MILESTONE_BOOL_KEYS {
            match m.get(key) {
                None | Some(Value::Null) | Some(Value::Bool(_)) => {}
                Some(other) => {
                    return Err(self.milestone_err(
                        index,
                        &format!("{at}.{key}"),
                        format!(
                            "{at}.{key} must be a boolean (true or false), found {}",
                            type_name(other)
                        ),
                    ));
                }
            }
        }
        let depends_on = match m.get("depends_on") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) if !s.trim().is_empty() => vec![s.trim().to_string()],
            Some(Value::Array(items))
                if items
                    .iter()
                    .all(|d| matches!(d, Value::String(s) if !s.trim().is_empty())) =>
            {
                items
                    .iter()
                    .filter_map(|d| d.as_str().map(|s| s.trim().to_string()))
                    .collect()
            }
            Some(_) => {
                return Err(self.milestone_err(
                    index,
                    &format!("{at}.depends_on"),
                    format!("{at}.depends_on must be a label or list of non-empty labels"),
                ));
            }
        };
        Ok((
            Milestone {
                index,
                label,
                idea,
                branch,
            },
            depends_on,
        ))
    }
}

/// Parse and validate a chain spec. `file` names the spec in every error message.
pub fn parse_chain_spec(text: &str, file: &str) -> Result<ChainSpec, ChainError> {
    let ck = Checker { file };
    let doc = yaml::parse(text).map_err(|e| ChainError::SpecNotYaml {
        file: file.to_string(),
        why: e.to_string(),
    })?;
    let raw = match doc {
        Value::Null => Map::new(),
        Value::Object(m) => m,
        other => {
            return Err(ChainError::SpecNotAMapping {
                file: file.to_string(),
                found: type_name(&other),
            });
        }
    };

    let items: &[Value] = match raw.get("milestones") {
        None | Some(Value::Null) => &[],
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(ck.err(
                "milestones",
                format!(
                    "`milestones` must be a list of milestone mappings, found {}",
                    type_name(other)
                ),
            ));
        }
    };
    let mut milestones: Vec<Milestone> = Vec::with_capacity(items.len());
    let mut seen: HashSet<String> = HashSet::new();
    for (index, item) in items.iter().enumerate() {
        let (milestone, depends_on) = ck.milestone(index, item)?;
        if seen.contains(&milestone.label) {
            let first = milestones
                .iter()
                .position(|m| m.label == milestone.label)
                .unwrap_or(0);
            return Err(ck.milestone_err(
                index,
                &format!("milestones[{index}].label"),
                format!(
                    "milestones[{index}].label {:?} is already used by milestones[{first}]; labels must be unique",
                    milestone.label
                ),
            ));
        }
        for dep in &depends_on {
            if *dep == milestone.label {
                return Err(ck.milestone_err(
                    index,
                    &format!("milestones[{index}].depends_on"),
                    format!(
                        "milestones[{index}] ({:?}) cannot depend on itself",
                        milestone.label
                    ),
                ));
            }
            if !seen.contains(dep) {
                let listed_later = items.iter().skip(index + 1).any(|later| {
                    later.get("label").and_then(Value::as_str).map(str::trim) == Some(dep.as_str())
                });
                let message = if listed_later {
                    format!(
                        "milestones[{index}] ({:?}) depends_on {dep:?} which is not listed before it; the chain runs serial-in-listed-order, so a dependency must appear earlier in `milestones`",
                        milestone.label
                    )
                } else {
                    format!(
                        "milestones[{index}] ({:?}) depends_on unknown milestone {dep:?}",
                        milestone.label
                    )
                };
                return Err(ck.milestone_err(
                    index,
                    &format!("milestones[{index}].depends_on"),
                    message,
                ));
            }
        }
        seen.insert(milestone.label.clone());
        milestones.push(milestone);
    }

    let seed_plan =
        match ck.optional_mapping(&raw, "seed", "write it as `seed: {plan: <plan-name>}`")? {
            None => None,
            Some(seed) => match seed.get("plan") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) if s.trim().is_empty() => None,
                Some(Value::String(s)) => Some(s.trim().to_string()),
                Some(other) => {
                    return Err(ck.err(
                        "seed.plan",
                        format!("`seed.plan` must be a string, found {}", type_name(other)),
                    ));
                }
            },
        };

    let base_branch = match raw.get("base_branch") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Some(_) => {
            return Err(ck.err(
                "base_branch",
                "`base_branch` must be a non-empty string; remove it to use repo.branch",
            ));
        }
    };

    let merge_policy = ck.choice(
        &raw,
        "merge_policy",
        "merge_policy",
        "auto",
        &MERGE_POLICIES,
    )?;
    let prerequisite_policy = ck.choice(
        &raw,
        "prerequisite_policy",
        "prerequisite_policy",
        "none",
        &GATE_POLICIES,
    )?;
    let validation_policy = ck.choice(
        &raw,
        "validation_policy",
        "validation_policy",
        "none",
        &GATE_POLICIES,
    )?;
    let review_clean_milestone_pr = match ck.optional_mapping(
        &raw,
        "review_policy",
        "write it as `review_policy: {clean_milestone_pr: auto}`",
    )? {
        None => "auto".to_string(),
        Some(review) => ck.choice(
            review,
            "clean_milestone_pr",
            "review_policy.clean_milestone_pr",
            "auto",
            &REVIEW_POLICIES,
        )?,
    };
    ck.optional_mapping(
        &raw,
        "driver",
        "write driver settings as `driver: {key: value}`",
    )?;
    for section in ["on_failure", "on_escalate"] {
        match raw.get(section) {
            None | Some(Value::Null) | Some(Value::String(_)) | Some(Value::Object(_)) => {}
            Some(other) => {
                return Err(ck.err(
                    section,
                    format!(
                        "`{section}` must be a string or a mapping of retry/escalate/abort, found {}",
                        type_name(other)
                    ),
                ));
            }
        }
    }

    Ok(ChainSpec {
        raw,
        milestones,
        seed_plan,
        base_branch,
        merge_policy,
        prerequisite_policy,
        validation_policy,
        review_clean_milestone_pr,
    })
}

/// The YAML uploaded to `<workspace>/chain.yaml`: `raw` with `base_branch: <default>` added
/// when the spec names none, so the runner's core uses the branch cloud.yaml checked out.
pub fn normalised_yaml(spec: &ChainSpec, default_base_branch: &str) -> Result<String, ChainError> {
    let mut doc = spec.raw.clone();
    if spec.base_branch.is_none() {
        doc.insert(
            "base_branch".to_string(),
            Value::String(default_base_branch.to_string()),
        );
    }
    yaml::to_string(&Value::Object(doc))
        .map_err(|e| ChainError::SpecNotWritable { why: e.to_string() })
}

/// The text uploaded to `<workspace>/chain.yaml`: the operator's file byte for byte when it
/// names `base_branch`; otherwise the same bytes plus one line `base_branch: "<default>"`, so the
/// runner's core uses the branch cloud.yaml checked out (the original uploaded the file as is
/// when it had `base_branch`, and re-dumped it otherwise). `text` must be the file `spec` was
/// parsed from. A file the line cannot be appended to (a flow mapping, a document end marker,
/// a `base_branch: null`) is checked by parsing the result back, and falls back to
/// [`normalised_yaml`].
pub fn upload_text(
    text: &str,
    spec: &ChainSpec,
    default_base_branch: &str,
) -> Result<String, ChainError> {
    if spec.base_branch.is_some() {
        return Ok(text.to_string());
    }
    let mut base = text.to_string();
    if !base.is_empty() && !base.ends_with('\n') {
        base.push('\n');
    }
    let wanted = Value::String(default_base_branch.to_string());
    // The branch as a plain scalar when it reads back as the same string (`main`), else as a
    // JSON string, which is a valid YAML double-quoted scalar (`"1.0"`, `"feat: x"`).
    let plain = default_base_branch
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
    let mut forms = Vec::new();
    if plain {
        forms.push(default_base_branch.to_string());
    }
    forms.push(wanted.to_string());
    for form in forms {
        let out = format!("{base}base_branch: {form}\n");
        let same = parse_chain_spec(&out, "chain.yaml").is_ok_and(|again| {
            let mut raw = again.raw.clone();
            raw.remove("base_branch") == Some(wanted.clone()) && raw == spec.raw
        });
        if same {
            return Ok(out);
        }
    }
    normalised_yaml(spec, default_base_branch)
}

/// Digest identifying "which chain" in session markers and collision checks: sha256 hex of the
/// uploaded text (the exact bytes the runner holds, so the runner-side copy can be re-hashed to
/// the same value).
pub fn identity_digest(normalised_yaml: &str) -> String {
    hex::encode(Sha256::digest(normalised_yaml.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use megaplan_cloud_api::{ErrorBody, ErrorCode};

    const FILE: &str = "/home/op/briefs/chain.yaml";

    fn parse(text: &str) -> Result<ChainSpec, ChainError> {
        parse_chain_spec(text, FILE)
    }

    fn err(text: &str) -> ErrorBody {
        match parse(text) {
            Ok(spec) => panic!("expected an error, parsed {spec:?}"),
            Err(e) => ErrorBody::from(e),
        }
    }

    #[test]
    fn full_spec_parses_with_defaults_and_unknown_keys_kept() {
        let spec = parse(
            "seed:\n  plan: seed-plan\nmilestones:\n  - label: m1\n    idea: briefs/m1.md\n    branch: megaplan/m1\n    vendor: claude\n    with_prep: true\n  - label: m2\n    idea: briefs/m2.md\n    depends_on: m1\ndriver:\n  max_iterations: 3\nfuture_key: {x: 1}\n",
        )
        .unwrap();
        assert_eq!(spec.milestones.len(), 2);
        assert_eq!(
            spec.milestones[0],
            Milestone {
                index: 0,
                label: "m1".into(),
                idea: "briefs/m1.md".into(),
                branch: Some("megaplan/m1".into()),
            }
        );
        assert_eq!(spec.milestones[1].branch, None);
        assert_eq!(spec.seed_plan.as_deref(), Some("seed-plan"));
        assert_eq!(spec.base_branch, None);
        assert_eq!(spec.merge_policy, "auto");
        assert_eq!(spec.prerequisite_policy, "none");
        assert_eq!(spec.validation_policy, "none");
        assert_eq!(spec.review_clean_milestone_pr, "auto");
        assert_eq!(spec.raw["future_key"]["x"], 1);
        assert_eq!(spec.raw["milestones"][0]["vendor"], "claude");
    }

    #[test]
    fn empty_file_is_an_empty_chain() {
        let spec = parse("").unwrap();
        assert!(spec.milestones.is_empty());
        assert!(spec.raw.is_empty());
    }

    #[test]
    fn policies_are_validated() {
        let spec = parse(
            "merge_policy: manual\nprerequisite_policy: required\nvalidation_policy: required\nreview_policy:\n  clean_milestone_pr: manual\n",
        )
        .unwrap();
        assert_eq!(spec.merge_policy, "manual");
        assert_eq!(spec.prerequisite_policy, "required");
        assert_eq!(spec.validation_policy, "required");
        assert_eq!(spec.review_clean_milestone_pr, "manual");

        let e = err("merge_policy: yolo\n");
        assert_eq!(e.error, ErrorCode::InvalidSpec);
        assert!(e.message.starts_with(FILE), "{e}");
        assert!(
            e.message
                .contains("merge_policy must be one of auto, review, manual; got \"yolo\""),
            "{e}"
        );
        assert_eq!(e.extra["field"], "merge_policy");

        let e = err("prerequisite_policy: maybe\n");
        assert!(
            e.message
                .contains("prerequisite_policy must be one of none, required"),
            "{e}"
        );
        let e = err("validation_policy: 3\n");
        assert!(
            e.message
                .contains("validation_policy must be one of none, required; got a number"),
            "{e}"
        );
        let e = err("review_policy:\n  clean_milestone_pr: never\n");
        assert_eq!(e.extra["field"], "review_policy.clean_milestone_pr");
        let e = err("review_policy: manual\n");
        assert!(
            e.message.contains("`review_policy` must be a mapping"),
            "{e}"
        );
    }

    #[test]
    fn milestone_errors_name_file_index_and_field() {
        let e = err("milestones:\n  - label: m1\n    idea: a.md\n  - label: m2\n");
        assert_eq!(
            e.message,
            format!(
                "{FILE}: milestones[1].idea is required; set it to the idea file's path as the runner sees it (relative to the workspace)"
            )
        );
        assert_eq!(e.extra["field"], "milestones[1].idea");
        assert_eq!(e.extra["milestone_index"], 1);
        assert_eq!(e.extra["file"], FILE);

        let e = err("milestones:\n  - idea: a.md\n");
        assert!(e.message.contains("milestones[0].label is required"), "{e}");
        let e = err("milestones:\n  - label: '  '\n    idea: a.md\n");
        assert!(e.message.contains("milestones[0].label is required"), "{e}");
        let e = err("milestones:\n  - just-a-string\n");
        assert!(e.message.contains("milestones[0] must be a mapping"), "{e}");
        let e = err("milestones:\n  - label: m1\n    idea: a.md\n    branch: 3\n");
        assert!(
            e.message.contains("milestones[0].branch must be a string"),
            "{e}"
        );
        let e = err("milestones:\n  - label: m1\n    idea: a.md\n    with_prep: 'yes'\n");
        assert!(
            e.message
                .contains("milestones[0].with_prep must be a boolean"),
            "{e}"
        );
        let e = err("milestones:\n  - label: m1\n    idea: a.md\n    vendor: [x]\n");
        assert!(
            e.message.contains("milestones[0].vendor must be a string"),
            "{e}"
        );
        let e = err("milestones: {m1: a}\n");
        assert!(e.message.contains("`milestones` must be a list"), "{e}");
    }

    #[test]
    fn labels_must_be_unique() {
        let e = err(
            "milestones:\n  - {label: m1, idea: a}\n  - {label: m2, idea: b}\n  - {label: m1, idea: c}\n",
        );
        assert!(
            e.message
                .contains("milestones[2].label \"m1\" is already used by milestones[0]"),
            "{e}"
        );
        assert_eq!(e.extra["milestone_index"], 2);
    }

    #[test]
    fn depends_on_rules() {
        let ok = parse(
            "milestones:\n  - {label: a, idea: x}\n  - {label: b, idea: y.md, depends_on: [a]}\n  - {label: c, idea: z.md, depends_on: [a, b]}\n",
        );
        assert!(ok.is_ok(), "{ok:?}");
        let e = err("milestones:\n  - {label: a, idea: x, depends_on: a}\n");
        assert!(
            e.message
                .contains("milestones[0] (\"a\") cannot depend on itself"),
            "{e}"
        );
        let e = err(
            "milestones:\n  - {label: a, idea: x, depends_on: b}\n  - {label: b, idea: y.md}\n",
        );
        assert!(e.message.contains("which is not listed before it"), "{e}");
        let e = err("milestones:\n  - {label: a, idea: x, depends_on: ghost}\n");
        assert!(
            e.message.contains("depends_on unknown milestone \"ghost\""),
            "{e}"
        );
        let e = err("milestones:\n  - {label: a, idea: x, depends_on: [1]}\n");
        assert!(
            e.message
                .contains("must be a label or list of non-empty labels"),
            "{e}"
        );
    }

    #[test]
    fn top_level_shape_errors() {
        let e = err("- a\n- b\n");
        assert!(
            e.message.contains("chain spec must be a YAML mapping"),
            "{e}"
        );
        let e = err("a: [\n");
        assert!(e.message.contains("YAML parse error"), "{e}");
        let e = err("base_branch: ''\n");
        assert_eq!(e.extra["field"], "base_branch");
        let e = err("seed: plan-x\n");
        assert!(e.message.contains("`seed` must be a mapping"), "{e}");
        let e = err("seed:\n  plan: 4\n");
        assert!(e.message.contains("`seed.plan` must be a string"), "{e}");
        let e = err("driver: fast\n");
        assert!(e.message.contains("`driver` must be a mapping"), "{e}");
        let e = err("on_failure: [stop_chain]\n");
        assert!(
            e.message
                .contains("`on_failure` must be a string or a mapping"),
            "{e}"
        );
        assert_eq!(parse("seed:\n  plan: '  '\n").unwrap().seed_plan, None);
    }

    #[test]
    fn normalised_yaml_adds_base_branch_only_when_absent() {
        let spec = parse("milestones:\n  - {label: m1, idea: a.md, custom: 1}\n").unwrap();
        let text = normalised_yaml(&spec, "develop").unwrap();
        let back = yaml::parse(&text).unwrap();
        assert_eq!(back["base_branch"], "develop");
        assert_eq!(back["milestones"][0]["custom"], 1);
        let reparsed = parse_chain_spec(&text, "chain.yaml").unwrap();
        assert_eq!(reparsed.base_branch.as_deref(), Some("develop"));

        let spec = parse("base_branch: release\n").unwrap();
        let back = yaml::parse(&normalised_yaml(&spec, "develop").unwrap()).unwrap();
        assert_eq!(back["base_branch"], "release");
    }

    #[test]
    fn upload_text_keeps_the_operators_bytes() {
        // Comments, key order and quoting survive; base_branch present: byte for byte.
        let text = "# my chain\nmilestones:   # the work\n  - label: m1\n    idea: 'a.md'\nbase_branch: release # keep\nmerge_policy: auto\n";
        let spec = parse(text).unwrap();
        assert_eq!(upload_text(text, &spec, "develop").unwrap(), text);

        // base_branch missing: the same bytes plus one line, also without a final newline.
        let text = "# my chain\nz_custom: 1\nmilestones:\n  - {label: m1, idea: a.md}  # first";
        let spec = parse(text).unwrap();
        assert_eq!(
            upload_text(text, &spec, "main").unwrap(),
            format!("{text}\nbase_branch: main\n")
        );
        assert_eq!(
            upload_text(text, &spec, "1.0").unwrap(),
            format!("{text}\nbase_branch: \"1.0\"\n")
        );
        let up = upload_text(text, &spec, "feat/x \"y\"").unwrap();
        assert_eq!(up, format!("{text}\nbase_branch: \"feat/x \\\"y\\\"\"\n"));
        let again = parse_chain_spec(&up, "c.yaml").unwrap();
        assert_eq!(again.base_branch.as_deref(), Some("feat/x \"y\""));
        assert_eq!(again.milestones, spec.milestones);

        // A flow mapping cannot take a line: the normalised copy instead, still correct.
        let text = "{milestones: [{label: m1, idea: a.md}]}\n";
        let spec = parse(text).unwrap();
        let up = upload_text(text, &spec, "main").unwrap();
        assert_eq!(up, normalised_yaml(&spec, "main").unwrap());
        let text = "base_branch: null\nmilestones: []\n";
        let spec = parse(text).unwrap();
        let again = parse_chain_spec(&upload_text(text, &spec, "main").unwrap(), "c").unwrap();
        assert_eq!(again.base_branch.as_deref(), Some("main"));
    }

    #[test]
    fn identity_digest_is_sha256_hex_of_the_text() {
        let d = identity_digest("abc");
        assert_eq!(
            d,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_ne!(
            identity_digest("base_branch: a\n"),
            identity_digest("base_branch: b\n")
        );
    }
}
