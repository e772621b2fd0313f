//! Output fields in the original Python tool's shapes, next to ours, so scripts written against
//! `cloud status --chain` and `cloud chains` keep working. Facts from the original's
//! `arnold_pipelines/megaplan/cloud/cli.py` (`cloud_chain_status_payload`, `_cloud_chains_command`).

use megaplan_cloud_api::report::{ChainLogCompat, LogsInfo};
use serde_json::{Map, Value, json};

/// The `logs` object of `status --chain`: the original's `{workspace, plan_log, agent_log,
/// chain_log: {path, mtime (epoch seconds), size}}` (`chain_log.status: "unavailable"` when the
/// log cannot be stat'ed), with ours (`path`, `exists`, `mtime` as RFC 3339, `size`) beside.
pub fn status_logs(observed: LogsInfo, workspace: &str, current_plan: Option<&str>) -> LogsInfo {
    let ws = workspace.trim_end_matches('/');
    let path = observed
        .path
        .clone()
        .unwrap_or_else(|| format!("{ws}/.megaplan/cloud-chain.log"));
    let epoch = observed
        .mtime()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.timestamp());
    let chain_log = match (epoch, observed.size()) {
        (Some(mtime), Some(size)) => ChainLogCompat {
            path,
            mtime: Some(mtime),
            size: Some(size),
            status: None,
        },
        _ => ChainLogCompat {
            path,
            status: Some("unavailable".into()),
            ..ChainLogCompat::default()
        },
    };
    LogsInfo {
        workspace: Some(workspace.to_string()),
        plan_log: Some(current_plan.map(|_| format!("{ws}/.megaplan/logs/latest.log"))),
        agent_log: Some(format!("{ws}/agent.log")),
        chain_log: Some(chain_log),
        ..observed
    }
}

/// One `chains` / `status --all` entry: the original's `{session, status, marker (the marker
/// file's path), marker_status: present|invalid|missing, marker_error?}` plus the session
/// marker's own fields at the top level (as the original merges them), and ours beside:
/// `alive` and `session_marker` (the marker object).
pub fn chains_entry(
    session: &str,
    alive: bool,
    marker_path: &str,
    marker: Option<Result<Value, String>>,
) -> Value {
    let mut out = Map::new();
    let (status, object, error) = match marker {
        None => ("missing", Value::Null, None),
        Some(Ok(m)) => ("present", m, None),
        Some(Err(e)) => ("invalid", Value::Null, Some(e)),
    };
    if let Value::Object(fields) = &object {
        for (k, v) in fields {
            out.insert(k.clone(), v.clone());
        }
    }
    out.insert("session".into(), json!(session));
    out.insert(
        "status".into(),
        json!(if alive { "running" } else { "dead" }),
    );
    out.insert("marker".into(), json!(marker_path));
    out.insert("marker_status".into(), json!(status));
    if let Some(e) = error {
        out.insert("marker_error".into(), json!(e));
    }
    out.insert("alive".into(), json!(alive));
    out.insert("session_marker".into(), object);
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_carry_the_originals_fields_beside_ours() {
        let logs = |v: Value| -> LogsInfo { serde_json::from_value(v).unwrap() };
        let observed = logs(
            json!({"path": "/w/app/.megaplan/cloud-chain.log", "exists": true,
                              "mtime": "2026-06-01T10:00:00Z", "size": 12}),
        );
        let v = serde_json::to_value(status_logs(observed, "/w/app", Some("plan-1"))).unwrap();
        assert_eq!(v["workspace"], "/w/app");
        assert_eq!(v["plan_log"], "/w/app/.megaplan/logs/latest.log");
        assert_eq!(v["agent_log"], "/w/app/agent.log");
        assert_eq!(
            v["chain_log"],
            json!({"path": "/w/app/.megaplan/cloud-chain.log", "mtime": 1_780_308_000, "size": 12})
        );
        // Ours stay.
        assert_eq!(v["mtime"], "2026-06-01T10:00:00Z");
        assert_eq!(v["exists"], true);
        let missing = serde_json::to_value(status_logs(
            logs(json!({"path": "/w/l.log", "exists": false, "mtime": null, "size": null})),
            "/w/app/",
            None,
        ))
        .unwrap();
        assert_eq!(missing["plan_log"], Value::Null);
        assert_eq!(
            missing["chain_log"],
            json!({"path": "/w/l.log", "status": "unavailable"})
        );
    }

    #[test]
    fn chains_entries_have_the_originals_fields() {
        let m = json!({"session": "megaplan-chain", "remote_spec": "/w/c.yaml", "started_at": "t"});
        let v = chains_entry(
            "megaplan-chain",
            true,
            "/d/megaplan-chain.json",
            Some(Ok(m.clone())),
        );
        assert_eq!(v["status"], "running");
        assert_eq!(v["marker"], "/d/megaplan-chain.json");
        assert_eq!(v["marker_status"], "present");
        assert_eq!(v["remote_spec"], "/w/c.yaml");
        assert_eq!(v["session_marker"], m);
        assert_eq!(v["alive"], true);
        let bad = chains_entry(
            "megaplan-chain-x",
            false,
            "/d/x.json",
            Some(Err("bad".into())),
        );
        assert_eq!(bad["marker_status"], "invalid");
        assert_eq!(bad["marker_error"], "bad");
        assert_eq!(bad["status"], "dead");
        let none = chains_entry("megaplan-chain-y", true, "/d/y.json", None);
        assert_eq!(none["marker_status"], "missing");
        assert_eq!(none["session_marker"], Value::Null);
    }
}
