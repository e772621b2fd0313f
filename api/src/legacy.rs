//! The last-chain marker as the original Python `cloud` CLI writes it, and the one reader of
//! both its shape and the older shape of this project.
//!
//! The original (`arnold_pipelines/megaplan/cloud/cli.py`, after `cloud chain`) writes
//! `~/.megaplan/cloud/markers/<key>/last_chain.json` with `remote_spec`, `started_at`
//! (`datetime.now(timezone.utc).isoformat()`), `base_branch`, `provenance`, `workspace`,
//! `chain_session`, `chain_log`, `extra_repos` (a list of `{url, branch, workspace}`),
//! `provider` and `provider_identity` (a string: the railway service, the compose project or
//! the ssh host; null when the section is absent). This project once wrote `provider_identity`
//! as an object `{service, project, environment}` and `extra_repos` as a list of paths; both are
//! read and turned into the original's shape, and only the original's shape is written.
//! Used by the daemon (markers) and by `megaplan-cloudctl doctor`, so both agree.

use crate::type_name;
use serde_json::{Value, json};

/// Fields the original writes, plus the ones this project adds beside them.
pub const MARKER_FIELDS: &[&str] = &[
    "remote_spec",
    "started_at",
    "base_branch",
    "provenance",
    "workspace",
    "chain_session",
    "chain_log",
    "extra_repos",
    "provider",
    "provider_identity",
    // Ours, beside the original's:
    "provider_target",
    "identity_digest",
    "last_supervisor_action",
];

/// A marker read into the original's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalized {
    pub marker: Value,
    /// What could not be mapped: unknown fields (kept as they are) and values of the wrong
    /// type (dropped), each named.
    pub unmapped: Vec<String>,
}

/// Parse a `last_chain.json`. An error says what is wrong with it (the caller names the file).
pub fn parse_marker(bytes: &[u8]) -> Result<Normalized, String> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| format!("not valid JSON ({e})"))?;
    if !v.is_object() {
        return Err(format!("not a JSON object (found {})", type_name(&v)));
    }
    let n = normalize_marker(v);
    match n.marker.get("remote_spec").and_then(Value::as_str) {
        Some(s) if !s.trim().is_empty() => Ok(n),
        _ => Err("has no remote_spec string".to_string()),
    }
}

/// One extra repo in the original's `{url, branch, workspace}` shape.
pub fn extra_repo(url: &str, branch: &str, workspace: &str) -> Value {
    json!({"url": url, "branch": branch, "workspace": workspace})
}

/// Read either shape of a marker object into the original's.
pub fn normalize_marker(v: Value) -> Normalized {
    let Value::Object(mut m) = v else {
        return Normalized {
            unmapped: vec![format!("the marker itself ({})", type_name(&v))],
            marker: v,
        };
    };
    let mut unmapped = Vec::new();
    for k in m.keys() {
        if !MARKER_FIELDS.contains(&k.as_str()) {
            unmapped.push(format!("{k} (unknown field, kept as is)"));
        }
    }
    match m.remove("provider_identity") {
        None | Some(Value::Null) => {
            m.insert("provider_identity".into(), Value::Null);
        }
        Some(s @ Value::String(_)) => {
            m.insert("provider_identity".into(), s);
        }
        Some(Value::Object(obj)) => {
            // This project's older form: the service is the original's identity.
            let service = obj.get("service").cloned().filter(Value::is_string);
            if service.is_none() {
                unmapped.push(
                    "provider_identity (a mapping without a service string; read as null)".into(),
                );
            }
            m.insert("provider_identity".into(), service.unwrap_or(Value::Null));
            m.entry("provider_target").or_insert(Value::Object(obj));
        }
        Some(other) => {
            unmapped.push(format!(
                "provider_identity ({}; read as null)",
                type_name(&other)
            ));
            m.insert("provider_identity".into(), Value::Null);
        }
    }
    match m.remove("extra_repos") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            let mut out = Vec::new();
            for (i, item) in items.into_iter().enumerate() {
                match item {
                    Value::String(path) if !path.trim().is_empty() => {
                        out.push(json!({"url": null, "branch": null, "workspace": path}));
                    }
                    Value::Object(mut r) => {
                        if !r.get("workspace").is_some_and(Value::is_string)
                            && let Some(p) = r.remove("path").filter(Value::is_string)
                        {
                            r.insert("workspace".into(), p);
                        }
                        if r.get("workspace").is_some_and(Value::is_string) {
                            out.push(Value::Object(r));
                        } else {
                            unmapped.push(format!(
                                "extra_repos[{i}] (a mapping without a workspace string; dropped)"
                            ));
                        }
                    }
                    other => {
                        unmapped.push(format!("extra_repos[{i}] ({}; dropped)", type_name(&other)))
                    }
                }
            }
            m.insert("extra_repos".into(), Value::Array(out));
        }
        Some(other) => {
            unmapped.push(format!("extra_repos ({}; dropped)", type_name(&other)));
            m.insert("extra_repos".into(), Value::Array(Vec::new()));
        }
    }
    for k in [
        "remote_spec",
        "started_at",
        "base_branch",
        "workspace",
        "chain_session",
        "chain_log",
        "provider",
    ] {
        if let Some(v) = m.get(k)
            && !v.is_string()
            && !v.is_null()
        {
            unmapped.push(format!("{k} ({}; ignored)", type_name(v)));
            m.insert(k.to_string(), Value::Null);
        }
    }
    Normalized {
        marker: Value::Object(m),
        unmapped,
    }
}

/// The `extra_repos` field of a marker written now: the original's `{url, branch, workspace}`.
pub fn extra_repos_field<'a>(
    repos: impl IntoIterator<Item = (&'a str, &'a str, &'a str)>,
) -> Value {
    Value::Array(
        repos
            .into_iter()
            .map(|(u, b, w)| extra_repo(u, b, w))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_originals_shape_reads_unchanged() {
        let original = json!({
            "remote_spec": "/workspace/app/chain.yaml",
            "started_at": "2026-11-30T10:00:00.123456+00:00",
            "base_branch": "main",
            "provenance": {"success": true},
            "workspace": "/workspace/app",
            "chain_session": "megaplan-chain",
            "chain_log": "/workspace/app/.megaplan/cloud-chain.log",
            "extra_repos": [{"url": "https://x/lib.git", "branch": "main", "workspace": "/workspace/lib"}],
            "provider": "railway",
            "provider_identity": "agent",
        });
        let n = parse_marker(original.to_string().as_bytes()).unwrap();
        assert_eq!(n.marker, original);
        assert!(n.unmapped.is_empty(), "{:?}", n.unmapped);
    }

    #[test]
    fn our_older_shape_is_read_into_the_originals() {
        let ours = json!({
            "remote_spec": "/w/chain.yaml",
            "extra_repos": ["/workspace/lib"],
            "provider": "railway",
            "provider_identity": {"service": "agent", "project": "p1", "environment": null},
        });
        let n = normalize_marker(ours);
        assert_eq!(n.marker["provider_identity"], "agent");
        assert_eq!(n.marker["provider_target"]["project"], "p1");
        assert_eq!(
            n.marker["extra_repos"],
            json!([{"url": null, "branch": null, "workspace": "/workspace/lib"}])
        );
        assert!(n.unmapped.is_empty(), "{:?}", n.unmapped);
    }

    #[test]
    fn what_cannot_be_mapped_is_named() {
        let n = normalize_marker(json!({
            "remote_spec": "/w/c.yaml",
            "provider_identity": 7,
            "extra_repos": [3, {"url": "u"}, {"url": "u", "path": "/w/p"}],
            "started_at": 12,
            "mystery": true,
        }));
        let text = n.unmapped.join("; ");
        for needle in [
            "provider_identity (a number",
            "extra_repos[0] (a number",
            "extra_repos[1] (a mapping without a workspace",
            "started_at (a number",
            "mystery (unknown field",
        ] {
            assert!(text.contains(needle), "{needle} not in {text}");
        }
        assert_eq!(
            n.marker["extra_repos"],
            json!([{"url": "u", "workspace": "/w/p"}])
        );
        assert_eq!(n.marker["mystery"], true);
        assert_eq!(n.marker["provider_identity"], Value::Null);
    }

    #[test]
    fn unusable_files_say_why() {
        assert!(
            parse_marker(b"{not json")
                .unwrap_err()
                .contains("not valid JSON")
        );
        assert!(
            parse_marker(b"[1]")
                .unwrap_err()
                .contains("not a JSON object")
        );
        assert!(
            parse_marker(b"{\"remote_spec\": \"\"}")
                .unwrap_err()
                .contains("remote_spec")
        );
    }
}
