//! `megaplan-cloudctl doctor`: what the Python `cloud` CLI left on this machine and how much of
//! it carries over. It reads the last-chain markers under the state root (the original's
//! `~/.megaplan/cloud/markers/<key>/last_chain.json`), finds cloud.yaml files (the one of this
//! folder, `--cloud-yaml`, the daemon's registrations, and a bounded walk of the home folder),
//! pairs each marker with the cloud.yaml whose resolved path hashes to its key, and says which
//! markers are importable and which fields do not map. When the daemon is up it also asks the
//! daemon's loader for each cloud.yaml's warnings (keys the original reads that are handled
//! differently here). It changes nothing.

use crate::client::{DaemonClient, enc};
use crate::discover;
use crate::render;
use hyper::Method;
use megaplan_cloud_api::marker::LastChainMarker;
use megaplan_cloud_api::wire::{Registration, SecretNamesResponse};
use megaplan_cloud_api::{legacy, paths, routes};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Folders the home walk visits at most, and how deep it goes.
const WALK_BUDGET: usize = 20_000;
const WALK_DEPTH: usize = 5;
const SKIP_DIRS: &[&str] = &["node_modules", "target", "venv", "__pycache__"];

/// cloud.yaml files under `root`: breadth first, hidden folders and build output skipped,
/// at most [`WALK_BUDGET`] folders and [`WALK_DEPTH`] levels.
fn walk_for_cloud_yamls(root: &Path) -> (Vec<PathBuf>, bool) {
    let mut found = Vec::new();
    let mut queue = std::collections::VecDeque::from([(root.to_path_buf(), 0usize)]);
    let mut visited = 0usize;
    while let Some((dir, depth)) = queue.pop_front() {
        visited += 1;
        if visited > WALK_BUDGET {
            return (found, true);
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_file() && name == "cloud.yaml" {
                found.push(e.path());
            } else if ft.is_dir()
                && depth < WALK_DEPTH
                && !name.starts_with('.')
                && !SKIP_DIRS.contains(&name.as_str())
            {
                queue.push_back((e.path(), depth + 1));
            }
        }
    }
    (found, false)
}

struct MarkerFile {
    key: String,
    file: PathBuf,
    parsed: Result<legacy::Normalized, String>,
}

fn read_markers(root: &Path) -> Vec<MarkerFile> {
    let Ok(entries) = std::fs::read_dir(root.join("markers")) else {
        return Vec::new();
    };
    let mut out: Vec<MarkerFile> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| {
            let key = e.file_name().to_string_lossy().into_owned();
            let file = paths::legacy_marker_file(root, &key);
            let bytes = std::fs::read(&file).ok()?;
            Some(MarkerFile {
                parsed: legacy::parse_marker(&bytes),
                key,
                file,
            })
        })
        .collect();
    out.sort_by(|a, b| a.key.cmp(&b.key));
    out
}

/// The pure part: pair markers with cloud.yaml files and describe both.
fn report(
    root: &Path,
    markers: &[MarkerFile],
    cloud_yamls: &[PathBuf],
    warnings: &BTreeMap<PathBuf, Value>,
) -> Value {
    let by_key: BTreeMap<String, &PathBuf> = cloud_yamls
        .iter()
        .map(|p| (paths::marker_key(p), p))
        .collect();
    let marker_rows: Vec<Value> = markers
        .iter()
        .map(|m| {
            let cy = by_key.get(&m.key).map(|p| p.display().to_string());
            match &m.parsed {
                Ok(n) => {
                    let marker = LastChainMarker::read(n.marker.clone());
                    json!({
                        "key": m.key,
                        "file": m.file.display().to_string(),
                        "importable": true,
                        "cloud_yaml": cy,
                        "remote_spec": marker.remote_spec,
                        "started_at": marker.started_at,
                        "provider": marker.provider,
                        "provider_identity": marker.provider_identity,
                        "unmapped": n.unmapped,
                    })
                }
                Err(why) => json!({
                    "key": m.key,
                    "file": m.file.display().to_string(),
                    "importable": false,
                    "problem": why,
                    "cloud_yaml": cy,
                    "unmapped": [],
                }),
            }
        })
        .collect();
    let keys: Vec<&str> = markers.iter().map(|m| m.key.as_str()).collect();
    let yaml_rows: Vec<Value> = cloud_yamls
        .iter()
        .map(|p| {
            let key = paths::marker_key(p);
            json!({
                "path": p.display().to_string(),
                "key": key,
                "has_marker": keys.contains(&key.as_str()),
                "warnings": warnings.get(p).cloned().unwrap_or(Value::Null),
            })
        })
        .collect();
    json!({
        "success": true,
        "cloud_home": root.display().to_string(),
        "markers": marker_rows,
        "cloud_yamls": yaml_rows,
    })
}

pub async fn run(client: &DaemonClient, flag: Option<&Path>) -> i32 {
    let root = paths::cloud_home();
    let markers = read_markers(&root);
    let cwd = paths::current_dir();
    let mut found: Vec<PathBuf> = Vec::new();
    let mut add = |p: PathBuf| {
        if p.is_file() {
            let r = paths::resolve(&p, Path::new("/"));
            if !found.contains(&r) {
                found.push(r);
            }
        }
    };
    if let Ok(l) = discover::locate(flag, &cwd) {
        add(l.path);
    }
    let registrations: Result<Vec<Registration>, _> =
        client.typed(Method::GET, routes::CLOUDS, None).await;
    let daemon_up = registrations.is_ok();
    for r in registrations.iter().flatten() {
        add(PathBuf::from(&r.cloud_yaml));
    }
    let home = paths::home_dir();
    let (walked, truncated) = walk_for_cloud_yamls(&home);
    for p in walked {
        add(p);
    }
    let mut warnings = BTreeMap::new();
    if daemon_up {
        for p in &found {
            let q = format!(
                "{}?cloud_yaml={}",
                routes::SECRET_NAMES,
                enc(&p.display().to_string())
            );
            let w = match client.json(Method::GET, &q, None).await {
                Ok(v) => serde_json::from_value::<SecretNamesResponse>(v)
                    .map(|r| json!(r.warnings))
                    .unwrap_or_else(|_| json!([])),
                Err(
                    crate::client::ClientError::Api(b) | crate::client::ClientError::Unreachable(b),
                ) => {
                    json!([b.message])
                }
            };
            warnings.insert(p.clone(), w);
        }
    }
    let mut v = report(&root, &markers, &found, &warnings);
    if let Some(o) = v.as_object_mut() {
        o.insert("daemon_reachable".into(), daemon_up.into());
        o.insert(
            "searched".into(),
            json!({"home": home.display().to_string(), "depth": WALK_DEPTH, "truncated": truncated}),
        );
    }
    // Said once: the document for scripts, the rendering for a person.
    if crate::output::json_mode() {
        crate::output::print_json_doc(&v);
    } else {
        render::doctor(&v);
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_markers_with_cloud_yamls_by_resolved_key() {
        let tmp = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(tmp.path()).unwrap();
        let cy = root.join("proj/cloud.yaml");
        let good = paths::marker_key(&cy);
        for (key, text) in [
            (
                good.as_str(),
                r#"{"remote_spec": "/w/c.yaml", "provider_identity": "h", "odd": 1}"#,
            ),
            ("00000000deadbeef", "{broken"),
        ] {
            let f = paths::legacy_marker_file(&root, key);
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(&f, text).unwrap();
        }
        let markers = read_markers(&root);
        let v = report(&root, &markers, std::slice::from_ref(&cy), &BTreeMap::new());
        let rows = v["markers"].as_array().unwrap();
        assert_eq!(rows.len(), 2);
        let broken = &rows[0];
        assert_eq!(broken["key"], "00000000deadbeef");
        assert_eq!(broken["importable"], false);
        assert!(
            broken["problem"]
                .as_str()
                .unwrap()
                .contains("not valid JSON")
        );
        assert_eq!(broken["cloud_yaml"], Value::Null);
        let ok = &rows[1];
        assert_eq!(ok["importable"], true);
        assert_eq!(ok["cloud_yaml"], cy.display().to_string());
        assert!(ok["unmapped"][0].as_str().unwrap().starts_with("odd"));
        assert_eq!(v["cloud_yamls"][0]["has_marker"], true);
    }

    #[test]
    fn the_home_walk_is_bounded_and_skips_hidden_folders() {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path();
        std::fs::create_dir_all(home.join("a/b")).unwrap();
        std::fs::create_dir_all(home.join(".hidden")).unwrap();
        std::fs::create_dir_all(home.join("node_modules/x")).unwrap();
        std::fs::write(home.join("a/b/cloud.yaml"), "").unwrap();
        std::fs::write(home.join(".hidden/cloud.yaml"), "").unwrap();
        std::fs::write(home.join("node_modules/x/cloud.yaml"), "").unwrap();
        let (found, truncated) = walk_for_cloud_yamls(home);
        assert_eq!(found, vec![home.join("a/b/cloud.yaml")]);
        assert!(!truncated);
    }
}
