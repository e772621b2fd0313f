//! Last-chain markers. SQLite is the source of truth; the legacy file
//! `<state root>/markers/<key>/last_chain.json` is written after every `chain` (so the original
//! tool and its scripts keep working) and read back: it is imported when the database has no
//! marker for a key, and it wins over the database when the Python tool wrote it later (a
//! later `started_at`). Markers are read in either shape and written in the original's (see
//! `megaplan_cloud_api::legacy`). An unusable legacy file is a warning naming it, never a
//! failure; with `--remote-spec` it is not read at all.

use crate::cloud_yaml::{CloudSpec, ProviderKind};
use crate::state::AppState;
use chrono::{DateTime, FixedOffset, Utc};
use megaplan_cloud_api::marker::{LastChainMarker, Slot};
use megaplan_cloud_api::report::NextAction;
use megaplan_cloud_api::sorted::Sorted;
use megaplan_cloud_api::{ErrorBody, ErrorCode, legacy, paths};
use serde_json::json;
use std::io::Write;
use std::path::Path;

/// A marker as loaded, and what was wrong on the way.
#[derive(Debug, Default)]
pub struct Loaded {
    pub marker: Option<LastChainMarker>,
    /// Named problems with legacy files that were skipped (for the command's stderr).
    pub warnings: Vec<String>,
}

/// What [`read_legacy`] found.
#[derive(Debug)]
enum LegacyFile {
    Missing,
    Unusable(String),
    Marker(Box<LastChainMarker>),
}

fn read_legacy(file: &Path) -> LegacyFile {
    let bytes = match crate::cloud_yaml::read_bounded(file, crate::cloud_yaml::MAX_INPUT_BYTES) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return LegacyFile::Missing,
        Err(e) => {
            return LegacyFile::Unusable(format!(
                "cannot read the legacy marker {} ({e}); ignoring it",
                file.display()
            ));
        }
    };
    match legacy::parse_marker(&bytes) {
        Ok(n) => LegacyFile::Marker(Box::new(LastChainMarker::read(n.marker))),
        Err(why) => LegacyFile::Unusable(format!(
            "ignoring the legacy marker {}: it is {why}; fix or delete it, or pass --remote-spec",
            file.display()
        )),
    }
}

fn started_at(m: &LastChainMarker) -> Option<DateTime<FixedOffset>> {
    m.started_at
        .as_deref()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
}

/// Does the legacy file describe a later launch than the stored marker? The Python tool
/// writes `started_at` as `datetime.now(timezone.utc).isoformat()`, RFC 3339 as this daemon's.
pub fn file_is_newer(file: &LastChainMarker, stored: &LastChainMarker) -> bool {
    match (started_at(file), started_at(stored)) {
        (Some(f), Some(s)) => f > s,
        (Some(_), None) => true,
        _ => false,
    }
}

/// Which marker counts, given the stored one and what the legacy file held.
#[derive(Debug, PartialEq)]
struct Choice {
    marker: Option<LastChainMarker>,
    /// The chosen marker came from the file and must be stored.
    import: bool,
    warning: Option<String>,
}

fn choose(stored: Option<LastChainMarker>, file: LegacyFile) -> Choice {
    let (from_file, warning) = match file {
        LegacyFile::Missing => (None, None),
        LegacyFile::Unusable(w) => (None, Some(w)),
        LegacyFile::Marker(m) => (Some(*m), None),
    };
    match (stored, from_file) {
        (Some(s), Some(f)) if file_is_newer(&f, &s) => Choice {
            marker: Some(f),
            import: true,
            warning,
        },
        (Some(s), _) => Choice {
            marker: Some(s),
            import: false,
            warning,
        },
        (None, Some(f)) => Choice {
            marker: Some(f),
            import: true,
            warning,
        },
        (None, None) => Choice {
            marker: None,
            import: false,
            warning,
        },
    }
}

/// The marker of `key`. `read_legacy_file` is false when the command names `--remote-spec`:
/// then only the database is consulted.
pub async fn load(
    state: &AppState,
    key: &str,
    cloud_yaml: &str,
    read_legacy_file: bool,
) -> Result<Loaded, ErrorBody> {
    let stored = state.store().get_marker(key).await?;
    let file = paths::legacy_marker_file(&state.settings().cloud_home, key);
    let found = if read_legacy_file {
        read_legacy(&file)
    } else {
        LegacyFile::Missing
    };
    let choice = choose(stored, found);
    let mut out = Loaded {
        marker: choice.marker,
        warnings: Vec::new(),
    };
    if let Some(w) = choice.warning {
        tracing::warn!(key, "{w}");
        out.warnings.push(w);
    }
    if choice.import
        && let Some(m) = &out.marker
    {
        state
            .store()
            .put_marker(key, cloud_yaml, m)
            .await
            .map_err(ErrorBody::from)?;
        tracing::info!(key, file = %file.display(), "imported the legacy marker (absent from the database, or written later)");
    }
    Ok(out)
}

/// When `key` has no marker (stored or legacy file), take the first one found under one of
/// `aliases` (the keys of the same cloud.yaml's lexical paths, as an older client keyed them)
/// and save it under `key`, legacy file included. Returns warnings about unusable files.
pub async fn adopt(
    state: &AppState,
    key: &str,
    cloud_yaml: &str,
    aliases: &[String],
) -> Result<Vec<String>, ErrorBody> {
    let mut warnings = Vec::new();
    let root = &state.settings().cloud_home;
    if aliases.iter().all(|a| a == key)
        || state.store().get_marker(key).await?.is_some()
        || paths::legacy_marker_file(root, key).exists()
    {
        return Ok(warnings);
    }
    for alias in aliases.iter().filter(|a| *a != key) {
        let found = match state.store().get_marker(alias).await? {
            Some(m) => Some(m),
            None => match read_legacy(&paths::legacy_marker_file(root, alias)) {
                LegacyFile::Marker(m) => Some(*m),
                LegacyFile::Unusable(w) => {
                    warnings.push(w);
                    None
                }
                LegacyFile::Missing => None,
            },
        };
        if let Some(m) = found {
            tracing::info!(key, from = %alias, "marker found under the unresolved path's key; imported");
            save(state, key, cloud_yaml, &m).await?;
            break;
        }
    }
    Ok(warnings)
}

/// Store the marker in SQLite, then write the legacy file atomically; always in the
/// original's shape.
pub async fn save(
    state: &AppState,
    key: &str,
    cloud_yaml: &str,
    marker: &LastChainMarker,
) -> Result<(), ErrorBody> {
    state
        .store()
        .put_marker(key, cloud_yaml, marker)
        .await
        .map_err(ErrorBody::from)?;
    write_legacy(
        &paths::legacy_marker_file(&state.settings().cloud_home, key),
        marker,
    )
}

/// The original's provider identity: the railway service, the compose project or the ssh host
/// (none when the spec names none), as the consistency check compares it.
pub fn provider_identity(spec: &CloudSpec) -> Option<String> {
    match spec.provider {
        ProviderKind::Railway => Some(spec.railway.service.clone()),
        ProviderKind::Local => Some(spec.local.compose_project.clone()),
        ProviderKind::Ssh => spec.ssh.as_ref().map(|s| s.host.clone()),
        ProviderKind::Kubernetes => spec.kubernetes.as_ref().map(|k| {
            let n = crate::provider::kubernetes_manifest::names(spec, k);
            format!("{}/{}", n.namespace, n.pod)
        }),
    }
}

/// Who launched a chain, and what only that launcher records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LaunchedBy {
    /// `megaplan-cloudctl chain`: a fresh marker.
    Chain {
        base_branch: String,
        identity_digest: String,
    },
    /// The supervisor restarted or advanced the runner: the previous marker's fields are
    /// carried over when it describes the same spec.
    Supervisor(NextAction),
}

/// A launch of the chain `remote_spec`: where it runs and who started it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch<'a> {
    pub remote_spec: &'a str,
    pub workspace: &'a str,
    pub session: &'a str,
    pub log: &'a str,
    pub by: LaunchedBy,
}

/// The last-chain marker after a launch: the one place a marker is built. Every marker written
/// now carries `provider`, `provider_identity` and `extra_repos` in the original's shapes and
/// (ours, beside them) `provider_target` with the railway project and environment.
pub fn launched(
    previous: Option<&LastChainMarker>,
    launch: Launch<'_>,
    spec: &CloudSpec,
    now: DateTime<Utc>,
) -> LastChainMarker {
    let set = |s: &str| Slot::Set(s.to_string());
    let mut m = match &launch.by {
        LaunchedBy::Chain { .. } => LastChainMarker::default(),
        LaunchedBy::Supervisor(_) => previous
            .filter(|p| p.describes(launch.remote_spec))
            .cloned()
            .unwrap_or_default(),
    };
    m.remote_spec = set(launch.remote_spec);
    m.started_at = Slot::Set(now.to_rfc3339());
    m.workspace = set(launch.workspace);
    m.chain_session = set(launch.session);
    m.chain_log = set(launch.log);
    match launch.by {
        LaunchedBy::Chain {
            base_branch,
            identity_digest,
        } => {
            m.base_branch = Slot::Set(base_branch);
            m.identity_digest = Slot::Set(identity_digest);
        }
        LaunchedBy::Supervisor(action) => {
            m.last_supervisor_action = Slot::Set(action.to_string());
            if m.base_branch.is_absent() {
                m.base_branch = set(&spec.repo.branch);
            }
        }
    }
    m.provider = set(spec.provider.as_str());
    m.provider_identity = match provider_identity(spec) {
        Some(s) => Slot::Set(s),
        None => Slot::Null,
    };
    if spec.provider == ProviderKind::Railway {
        m.provider_target = Slot::Set(json!({
            "service": spec.railway.service,
            "project": spec.railway.project,
            "environment": spec.railway.environment,
        }));
    }
    // A relaunch keeps the repos the chain was launched with.
    if m.extra_repos.is_absent() {
        m.extra_repos = Slot::Set(legacy::extra_repos_field(
            spec.extra_repos
                .iter()
                .map(|r| (r.url.as_str(), r.branch.as_str(), r.path.as_str())),
        ));
    }
    m
}

fn write_legacy(file: &std::path::Path, marker: &LastChainMarker) -> Result<(), ErrorBody> {
    let fail = |e: std::io::Error| {
        ErrorBody::new(
            ErrorCode::StorageFailed,
            format!("cannot write legacy marker {}: {e}", file.display()),
        )
    };
    let dir = file.parent().unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir).map_err(fail)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(fail)?;
    let text = serde_json::to_string_pretty(&Sorted(marker)).unwrap_or_else(|_| "{}".to_string());
    tmp.write_all(text.as_bytes()).map_err(fail)?;
    tmp.write_all(b"\n").map_err(fail)?;
    tmp.as_file().sync_all().map_err(fail)?;
    tmp.persist(file).map_err(|e| fail(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::summary::provider_consistency;
    use serde_json::Value;

    /// The marker a `chain` launch of `s` writes, as stored.
    fn launch_fields(s: &CloudSpec) -> Value {
        launched(
            None,
            Launch {
                remote_spec: "/w/chain.yaml",
                workspace: "/w",
                session: "megaplan-chain",
                log: "/w/.megaplan/cloud-chain.log",
                by: LaunchedBy::Chain {
                    base_branch: "main".into(),
                    identity_digest: "d".into(),
                },
            },
            s,
            Utc::now(),
        )
        .to_value()
    }

    fn m(v: Value) -> LastChainMarker {
        LastChainMarker::read(v)
    }

    fn spec(text: &str) -> CloudSpec {
        crate::cloud_yaml::parse_bytes(text.as_bytes(), Path::new("/p/cloud.yaml")).unwrap()
    }

    #[test]
    fn a_python_railway_marker_is_consistent_with_the_same_service() {
        // What the original writes for `provider: railway`, `railway.service: agent`.
        let python = legacy::normalize_marker(json!({
            "remote_spec": "/workspace/app/chain.yaml",
            "provider": "railway",
            "provider_identity": "agent",
        }))
        .marker;
        let s = spec(
            "provider: railway\nrepo: {url: https://x/a.git}\nrailway: {service: agent, project: p1}\n",
        );
        let python = LastChainMarker::read(python);
        let c = provider_consistency("railway", provider_identity(&s).as_deref(), Some(&python));
        assert_eq!(c.as_str(), "consistent", "{c:?}");
        // Our older object form reads the same way.
        let ours = legacy::normalize_marker(json!({
            "remote_spec": "/workspace/app/chain.yaml",
            "provider": "railway",
            "provider_identity": {"service": "agent", "project": "p1", "environment": null},
        }))
        .marker;
        let c = provider_consistency(
            "railway",
            provider_identity(&s).as_deref(),
            Some(&LastChainMarker::read(ours)),
        );
        assert_eq!(c.as_str(), "consistent", "{c:?}");
        // Another service is still a mismatch.
        let other =
            spec("provider: railway\nrepo: {url: https://x/a.git}\nrailway: {service: other}\n");
        let c = provider_consistency(
            "railway",
            provider_identity(&other).as_deref(),
            Some(&python),
        );
        assert_eq!(c.as_str(), "mismatch", "{c:?}");
    }

    #[test]
    fn written_fields_are_the_originals_shapes() {
        let s = spec(
            "provider: ssh\nrepo: {url: https://x/a.git, workspace: /workspace/app}\nssh: {host: box.example}\nextra_repos:\n  - {url: https://x/lib.git, branch: dev, workspace: /workspace/lib}\n",
        );
        let f = launch_fields(&s);
        assert_eq!(f["provider_identity"], "box.example");
        assert_eq!(
            f["extra_repos"],
            json!([{"url": "https://x/lib.git", "branch": "dev", "workspace": "/workspace/lib"}])
        );
        let l =
            spec("provider: local\nrepo: {url: https://x/a.git}\nlocal: {compose_project: proj}\n");
        assert_eq!(launch_fields(&l)["provider_identity"], "proj");
    }

    #[test]
    fn the_later_started_at_wins() {
        let ours = m(json!({"started_at": "2026-12-01T10:00:00+00:00"}));
        let python_later = m(json!({"started_at": "2026-12-01T10:00:00.500000+00:00"}));
        let python_earlier = m(json!({"started_at": "2026-12-01T09:59:59.999999+00:00"}));
        assert!(file_is_newer(&python_later, &ours));
        assert!(!file_is_newer(&python_earlier, &ours));
        assert!(
            !file_is_newer(&ours, &ours),
            "our own copy of the file is not newer"
        );
        assert!(!file_is_newer(&m(json!({})), &ours));
        assert!(file_is_newer(&python_later, &m(json!({}))));
    }

    #[test]
    fn the_file_is_imported_when_absent_or_later_and_never_fails() {
        let ours = m(json!({"remote_spec": "/a", "started_at": "2026-12-01T10:00:00+00:00"}));
        let later = m(json!({"remote_spec": "/b", "started_at": "2026-12-01T11:00:00.1+00:00"}));
        let earlier = m(json!({"remote_spec": "/c", "started_at": "2026-12-01T09:00:00+00:00"}));
        let c = choose(
            Some(ours.clone()),
            LegacyFile::Marker(Box::new(later.clone())),
        );
        assert_eq!((c.marker, c.import), (Some(later.clone()), true));
        let c = choose(Some(ours.clone()), LegacyFile::Marker(Box::new(earlier)));
        assert_eq!((c.marker, c.import), (Some(ours.clone()), false));
        let c = choose(None, LegacyFile::Marker(Box::new(later.clone())));
        assert_eq!((c.marker, c.import), (Some(later), true));
        // A corrupt file: the stored marker stands (or none), with the warning.
        let c = choose(Some(ours.clone()), LegacyFile::Unusable("bad /f".into()));
        assert_eq!(c.marker, Some(ours));
        assert_eq!(c.warning.as_deref(), Some("bad /f"));
        let c = choose(None, LegacyFile::Unusable("bad /f".into()));
        assert_eq!((c.marker, c.import), (None, false));
    }

    #[test]
    fn unusable_legacy_files_are_named_warnings() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("last_chain.json");
        assert!(matches!(read_legacy(&f), LegacyFile::Missing));
        std::fs::write(&f, "{\"remote_spec\": ").unwrap();
        match read_legacy(&f) {
            LegacyFile::Unusable(w) => {
                assert!(w.contains(&f.display().to_string()), "{w}");
                assert!(w.contains("--remote-spec"), "{w}");
            }
            other => panic!("{other:?}"),
        }
    }
}
