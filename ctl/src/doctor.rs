//! `megaplan-cloudctl doctor`: what the Python `cloud` CLI left on this machine and how much of
//! it carries over. It reads the last-chain markers under the state root (the original's
//! `~/.megaplan/cloud/markers/<key>/last_chain.json`), finds cloud.yaml files (the one of this
//! folder, `--cloud-yaml`, the daemon's registrations, and a bounded walk of the home folder),
//! pairs each marker with the cloud.yaml whose resolved path hashes to its key, and says which
//! markers are importable and which fields do not map. When the daemon is up it also asks the
//! daemon's loader for each cloud.yaml's warnings (keys the original reads that are handled
//! differently here). It changes nothing.
//!
//! Before that it answers what a person asks first, one [`Check`] each with a verdict and the
//! fix: does the daemon answer and is it the same version as this client, does each
//! registration's cloud.yaml still exist, load and carry no `init` placeholders, is the railway
//! CLI on the daemon's PATH when a registration uses it, is the service unit installed and
//! enabled, and is there disk space for the database.

use crate::client::{DaemonClient, enc};
use crate::discover;
use crate::render;
use hyper::Method;
use megaplan_cloud_api::marker::LastChainMarker;
use megaplan_cloud_api::wire::{Health, Registration, RegistrationListed, SecretNamesResponse};
use megaplan_cloud_api::{legacy, paths, routes};
use serde::Serialize;
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

/// How a check came out. `skip`: this machine cannot answer it (e.g. no user manager).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Ok,
    Warn,
    Fail,
    Skip,
}

/// One line of the doctor's checklist: what was checked, what was found, how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Short subject: `daemon`, `cloud.yaml <key>`, `railway CLI`, `service unit`, `disk`.
    pub name: String,
    pub verdict: Verdict,
    pub detail: String,
    /// The command or edit that fixes it; absent when nothing needs doing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    fn new(name: impl Into<String>, verdict: Verdict, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            verdict,
            detail: detail.into(),
            fix: None,
        }
    }

    fn fix(mut self, fix: impl Into<String>) -> Check {
        self.fix = Some(fix.into());
        self
    }
}

/// What `init` writes and a person must replace before the first deploy.
const INIT_PLACEHOLDERS: &[&str] = &["your-org/your-repo"];

/// Free space under which the database (and its write-ahead log) is at risk.
const DISK_FAIL_BYTES: u64 = 100 * 1024 * 1024;
const DISK_WARN_BYTES: u64 = 1024 * 1024 * 1024;

/// The daemon check: reachable, and the same release and API as this client.
fn daemon_check(health: Result<&Health, &str>, socket: &Path) -> Check {
    let client = env!("CARGO_PKG_VERSION");
    match health {
        Err(why) => Check::new(
            "daemon",
            Verdict::Fail,
            if why.is_empty() {
                format!("no answer at {}", socket.display())
            } else {
                format!("no answer at {}: {why}", socket.display())
            },
        )
        .fix("systemctl --user start megaplan-cloudd (or run megaplan-cloudd)"),
        Ok(h) if h.api_version != megaplan_cloud_api::API_VERSION => Check::new(
            "daemon",
            Verdict::Fail,
            format!(
                "megaplan-cloudd {} speaks API {}, this client {client} speaks API {}",
                h.version,
                h.api_version,
                megaplan_cloud_api::API_VERSION
            ),
        )
        .fix("install both binaries from one checkout, then restart the service"),
        Ok(h) if h.version != client => Check::new(
            "daemon",
            Verdict::Warn,
            format!(
                "megaplan-cloudd {} answers (pid {}), this client is {client}",
                h.version, h.pid
            ),
        )
        .fix("install both binaries from one checkout, then restart the service"),
        Ok(h) => Check::new(
            "daemon",
            Verdict::Ok,
            format!(
                "megaplan-cloudd {} answers (pid {}), same as this client",
                h.version, h.pid
            ),
        ),
    }
}

/// A registration's cloud.yaml: `text` is None when it cannot be read, `load_error` is what
/// the daemon's loader said of it.
fn registration_check(
    key: &str,
    path: &str,
    text: Option<&str>,
    load_error: Option<&str>,
) -> Check {
    let name = format!("cloud.yaml {key}");
    let Some(text) = text else {
        return Check::new(name, Verdict::Fail, format!("{path} is gone or unreadable")).fix(
            format!("megaplan-cloudctl unregister {key}, or put the file back at {path}"),
        );
    };
    if let Some(why) = load_error {
        return Check::new(name, Verdict::Fail, format!("{path}: {why}"))
            .fix(format!("edit {path}, then run doctor again"));
    }
    if let Some(p) = INIT_PLACEHOLDERS.iter().find(|p| text.contains(**p)) {
        return Check::new(
            name,
            Verdict::Warn,
            format!("{path} still has `{p}` from init"),
        )
        .fix(format!("set repo.url in {path} to your repository"));
    }
    Check::new(name, Verdict::Ok, format!("{path} loads"))
}

/// The top-level `provider:` of a cloud.yaml, read leniently: only to know which CLIs matter.
fn provider_of(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let v = l.strip_prefix("provider:")?;
        let v = v.split(" #").next().unwrap_or(v).trim();
        Some(v.trim_matches(|c| c == '"' || c == '\'').to_string())
    })
}

fn uses(users: &[String]) -> &'static str {
    if users.len() == 1 { "uses" } else { "use" }
}

/// The railway CLI as the daemon sees it (its PATH is the service's, not this shell's).
fn railway_check(users: &[String], health: Option<&Health>) -> Option<Check> {
    if users.is_empty() {
        return None;
    }
    let name = "railway CLI";
    let Some(h) = health else {
        return Some(Check::new(
            name,
            Verdict::Skip,
            format!(
                "{} {} railway; the daemon is down to say if it finds the CLI",
                users.join(", "),
                uses(users)
            ),
        ));
    };
    Some(match h.tools.get("railway") {
        Some(Some(path)) => Check::new(name, Verdict::Ok, format!("the daemon runs {path}")),
        _ => Check::new(
            name,
            Verdict::Fail,
            format!(
                "{} {} railway, the daemon finds no `railway` on its PATH",
                users.join(", "),
                uses(users)
            ),
        )
        .fix("install it into ~/.local/bin or /usr/local/bin, then restart the service"),
    })
}

/// `systemctl --user is-enabled megaplan-cloudd`'s answer (None: no systemctl here), and
/// whether the unit file is where the install steps put it.
fn service_check(is_enabled: Option<(bool, String)>, unit_file: &Path) -> Check {
    let name = "service unit";
    let install = "install -Dm644 systemd/megaplan-cloudd.service ~/.config/systemd/user/megaplan-cloudd.service";
    match is_enabled {
        None => Check::new(name, Verdict::Skip, "no systemctl on this machine"),
        Some((_, state))
            if state == "enabled" || state == "enabled-runtime" || state == "linked" =>
        {
            Check::new(
                name,
                Verdict::Ok,
                format!("megaplan-cloudd.service is {state}"),
            )
        }
        Some((_, state)) if state == "disabled" || state == "static" || state == "indirect" => {
            Check::new(
                name,
                Verdict::Warn,
                format!("megaplan-cloudd.service is {state}"),
            )
            .fix("systemctl --user enable --now megaplan-cloudd")
        }
        Some((_, state)) if state == "not-found" || !unit_file.exists() => Check::new(
            name,
            Verdict::Warn,
            format!("{} is not installed", tilde(unit_file)),
        )
        .fix(install),
        Some((_, state)) => Check::new(
            name,
            Verdict::Skip,
            format!(
                "{} is installed; the user manager did not answer ({state})",
                tilde(unit_file)
            ),
        ),
    }
}

/// `path` with the home folder written `~`, as the install steps write it.
fn tilde(path: &Path) -> String {
    match path.strip_prefix(paths::home_dir()) {
        Ok(rest) => format!("~/{}", rest.display()),
        Err(_) => path.display().to_string(),
    }
}

fn systemctl_is_enabled() -> Option<(bool, String)> {
    let out = std::process::Command::new("systemctl")
        .args(["--user", "is-enabled", "megaplan-cloudd"])
        .stdin(std::process::Stdio::null())
        .output()
        .ok()?;
    let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let said = if said.is_empty() {
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .next()
            .unwrap_or("no answer")
            .trim()
            .to_string()
    } else {
        said
    };
    Some((out.status.success(), said))
}

/// Free bytes for unprivileged writers on the file system holding `dir` (or its nearest
/// existing ancestor: the state root may not exist yet).
fn free_bytes(dir: &Path) -> Result<u64, String> {
    let mut at = dir;
    while !at.exists() {
        at = at.parent().unwrap_or(Path::new("/"));
    }
    let c = std::ffi::CString::new(at.as_os_str().as_encoded_bytes())
        .map_err(|_| format!("{}: NUL in path", at.display()))?;
    // SAFETY: statvfs(3) writes into the zeroed struct we own; the path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(format!(
            "{}: {}",
            at.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// notify.yaml in the daemon's state root. The daemon reads it once, at start, and refuses to
/// start on a broken one; so a daemon that answers proves the file it read, and an edit made
/// after its start is untested until the next restart.
fn notify_check(
    file: &Path,
    modified: Option<chrono::DateTime<chrono::Utc>>,
    health: Option<&Health>,
) -> Check {
    let name = "notify.yaml";
    let Some(modified) = modified else {
        return Check::new(
            name,
            Verdict::Ok,
            format!(
                "none at {}: sinks come from `register --notify-*`",
                tilde(file)
            ),
        );
    };
    let Some(h) = health else {
        return Check::new(
            name,
            Verdict::Skip,
            format!("{} is read when the daemon starts; it is down", tilde(file)),
        );
    };
    let started = chrono::DateTime::parse_from_rfc3339(&h.started_at)
        .map(|t| t.with_timezone(&chrono::Utc))
        .ok();
    match started {
        Some(started) if modified > started => Check::new(
            name,
            Verdict::Warn,
            format!(
                "{} changed after the daemon started: not loaded, not checked",
                tilde(file)
            ),
        )
        .fix("systemctl --user restart megaplan-cloudd (a broken file stops it; see its log)"),
        _ => Check::new(
            name,
            Verdict::Ok,
            format!("{} loaded by the running daemon", tilde(file)),
        ),
    }
}

fn disk_check(folder: &Path, free: Result<u64, String>) -> Check {
    let name = "disk";
    let mib = |b: u64| b / (1024 * 1024);
    match free {
        Err(why) => Check::new(name, Verdict::Skip, format!("cannot measure: {why}")),
        Ok(b) if b < DISK_FAIL_BYTES => Check::new(
            name,
            Verdict::Fail,
            format!("{} MiB free for the database in {}", mib(b), tilde(folder)),
        )
        .fix("free space there, or move the state root with MEGAPLAN_CLOUD_HOME"),
        Ok(b) if b < DISK_WARN_BYTES => Check::new(
            name,
            Verdict::Warn,
            format!("{} MiB free for the database in {}", mib(b), tilde(folder)),
        )
        .fix("free space there, or move the state root with MEGAPLAN_CLOUD_HOME"),
        Ok(b) => Check::new(
            name,
            Verdict::Ok,
            format!("{} MiB free for the database in {}", mib(b), tilde(folder)),
        ),
    }
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

/// `doctor --send-test`: one check per sink from the daemon's test of every sink
/// (`POST /v1/notifications/test`, as `notifications test`), or why it could not run.
fn send_test_checks(
    answer: Result<megaplan_cloud_api::notification::TestResults, String>,
) -> Vec<Check> {
    let r = match answer {
        Ok(r) => r,
        Err(e) if e.is_empty() => {
            return vec![Check::new(
                "notification sinks",
                Verdict::Skip,
                "the daemon is not reachable, so no test was sent",
            )];
        }
        Err(e) => {
            return vec![Check::new("notification sinks", Verdict::Fail, e)];
        }
    };
    if r.results.is_empty() {
        return vec![
            Check::new("notification sinks", Verdict::Warn, "no sinks: nobody is told of a chain that needs a person")
                .fix("add sinks to the daemon's notify.yaml or `megaplan-cloudctl register --notify-url URL`"),
        ];
    }
    r.results
        .into_iter()
        .map(|s| {
            let took = format!("{} ms", s.latency_ms);
            let status = s.status.map(|c| format!(" ({c})")).unwrap_or_default();
            if s.ok {
                Check::new(
                    format!("sink {}", s.sink),
                    Verdict::Ok,
                    format!(
                        "the test notification was accepted{status} in {took}; from {}",
                        s.source
                    ),
                )
            } else {
                let fix = if s.source == "notify.yaml" {
                    "fix the sink in the daemon's notify.yaml (then restart the daemon)".to_string()
                } else {
                    format!(
                        "re-register {} with a working --notify-url/--notify-command",
                        s.source
                    )
                };
                Check::new(
                    format!("sink {}", s.sink),
                    Verdict::Fail,
                    format!(
                        "{} after {took}; from {}",
                        s.error.unwrap_or_else(|| "failed".to_string()),
                        s.source
                    ),
                )
                .fix(fix)
            }
        })
        .collect()
}

/// Is each registration's runner reachable? Answered from what the daemon holds (its last tick
/// of each), not a new round trip: `tick KEY` is the way to ask the runner now.
fn runner_check(r: &RegistrationListed) -> Check {
    let key = &r.registration.key;
    let name = format!("runner {key}");
    let Some(at) = &r.registration.last_tick_at else {
        return Check::new(
            name,
            Verdict::Skip,
            "not ticked yet: nothing known of its runner",
        )
        .fix(format!("megaplan-cloudctl tick {key}"));
    };
    match r.registration.last_success {
        Some(true) => Check::new(name, Verdict::Ok, format!("reached by the last tick, {at}")),
        _ => {
            let event = r.registration.last_event.as_deref().unwrap_or("an error");
            let mut detail = match r.consecutive_failures {
                0 | 1 => format!("the last tick ({at}) failed: {event}"),
                n => format!("the last {n} ticks failed, the latest {at}: {event}"),
            };
            if let Some(b) = &r.registration.backoff {
                detail.push_str(&format!("; backing off until {}: {}", b.until, b.reason));
            }
            Check::new(name, Verdict::Fail, detail).fix(format!(
                "megaplan-cloudctl explain {key}, fix what it names, then megaplan-cloudctl tick {key}"
            ))
        }
    }
}

/// [`runner_check`] for every registration; none when the daemon does not answer (the daemon
/// check says so).
async fn runner_checks(client: &DaemonClient) -> Vec<Check> {
    let listed: Result<Vec<RegistrationListed>, _> =
        client.typed(Method::GET, routes::CLOUDS, None).await;
    listed.iter().flatten().map(runner_check).collect()
}

pub async fn run(client: &DaemonClient, flag: Option<&Path>, send_test: bool) -> i32 {
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
    let health: Result<Health, String> = client
        .typed(Method::GET, routes::HEALTH, None)
        .await
        // Unreachable: the check names the socket and the fix; the client's long hint would
        // repeat both.
        .map_err(|e| match e {
            crate::client::ClientError::Unreachable(_) => String::new(),
            crate::client::ClientError::Api(b) => b.message,
        });
    let registrations: Result<Vec<Registration>, _> =
        client.typed(Method::GET, routes::CLOUDS, None).await;
    let daemon_up = registrations.is_ok();
    let mut checks = vec![daemon_check(
        health.as_ref().map_err(String::as_str),
        &client.socket,
    )];
    let mut railway_users = Vec::new();
    for r in registrations.iter().flatten() {
        let text = std::fs::read_to_string(&r.cloud_yaml).ok();
        let load_error = match &text {
            Some(_) => {
                let q = format!("{}?cloud_yaml={}", routes::SECRET_NAMES, enc(&r.cloud_yaml));
                client
                    .json(Method::GET, &q, None)
                    .await
                    .err()
                    .map(|e| e.body().message.clone())
            }
            None => None,
        };
        if text.as_deref().and_then(provider_of).as_deref() == Some("railway") {
            railway_users.push(r.key.clone());
        }
        checks.push(registration_check(
            &r.key,
            &r.cloud_yaml,
            text.as_deref(),
            load_error.as_deref(),
        ));
        add(PathBuf::from(&r.cloud_yaml));
    }
    checks.extend(railway_check(&railway_users, health.as_ref().ok()));
    checks.extend(runner_checks(client).await);
    let notify_file = match &health {
        Ok(h) => Path::new(&h.cloud_home).join("notify.yaml"),
        Err(_) => root.join("notify.yaml"),
    };
    let modified = std::fs::metadata(&notify_file)
        .and_then(|m| m.modified())
        .ok()
        .map(chrono::DateTime::<chrono::Utc>::from);
    checks.push(notify_check(&notify_file, modified, health.as_ref().ok()));
    if send_test {
        let answer = if daemon_up {
            crate::commands::notifications::send(client, None)
                .await
                .map_err(|e| e.body().message.clone())
        } else {
            Err(String::new())
        };
        checks.extend(send_test_checks(answer));
    }
    let unit_file = paths::home_dir().join(".config/systemd/user/megaplan-cloudd.service");
    checks.push(service_check(systemctl_is_enabled(), &unit_file));
    let db_folder = match &health {
        Ok(h) => Path::new(&h.database)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| root.clone()),
        Err(_) => root.clone(),
    };
    checks.push(disk_check(&db_folder, free_bytes(&db_folder)));
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
        o.insert("checks".into(), json!(checks));
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

    fn listed(last_success: Option<bool>, failures: u32) -> RegistrationListed {
        serde_json::from_value(json!({
            "key": "3f2a9c0d11aa22bb", "cloud_yaml": "/p/cloud.yaml", "schedule": "every:300",
            "remote_spec": null, "created_at": "2026-12-04T10:00:00Z",
            "last_tick_at": last_success.map(|_| "2026-12-04T12:00:00Z"),
            "last_event": last_success.map(|ok| if ok { "tick" } else { "supervisor_error" }),
            "last_success": last_success, "ticks_run": 3, "ticks_skipped": 0,
            "consecutive_failures": failures,
        }))
        .unwrap()
    }

    #[test]
    fn each_runner_is_judged_by_the_daemons_last_tick_of_it() {
        let ok = runner_check(&listed(Some(true), 0));
        assert_eq!(ok.verdict, Verdict::Ok);
        assert_eq!(ok.name, "runner 3f2a9c0d11aa22bb");
        let failed = runner_check(&listed(Some(false), 4));
        assert_eq!(failed.verdict, Verdict::Fail);
        assert_eq!(
            failed.detail,
            "the last 4 ticks failed, the latest 2026-12-04T12:00:00Z: supervisor_error"
        );
        assert!(failed.fix.unwrap().contains("explain 3f2a9c0d11aa22bb"));
        let never = runner_check(&listed(None, 0));
        assert_eq!(never.verdict, Verdict::Skip);
        assert_eq!(
            never.fix.as_deref(),
            Some("megaplan-cloudctl tick 3f2a9c0d11aa22bb")
        );
    }
    use super::*;

    #[test]
    fn send_test_checks_name_each_sink_and_the_fix() {
        use megaplan_cloud_api::notification::{SinkTestResult, TestResults};
        let r = TestResults {
            idempotency_key: "t".into(),
            results: vec![
                SinkTestResult {
                    sink: "webhook http://a/h".into(),
                    preset: Some("json".into()),
                    source: "notify.yaml".into(),
                    ok: true,
                    status: Some(200),
                    latency_ms: 3,
                    error: None,
                },
                SinkTestResult {
                    sink: "webhook http://b/h".into(),
                    preset: Some("ntfy".into()),
                    source: "3f1c9a0b7d2e4f51".into(),
                    ok: false,
                    status: Some(500),
                    latency_ms: 4,
                    error: Some("the receiver answered HTTP 500".into()),
                },
            ],
        };
        let c = send_test_checks(Ok(r));
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].verdict, Verdict::Ok);
        assert_eq!(c[1].verdict, Verdict::Fail);
        assert!(c[1].detail.contains("HTTP 500"));
        assert!(c[1].fix.as_deref().unwrap().contains("3f1c9a0b7d2e4f51"));
        assert_eq!(
            send_test_checks(Err(String::new()))[0].verdict,
            Verdict::Skip
        );
    }

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

    fn health(version: &str, api: u32, railway: Option<&str>) -> Health {
        let mut v = serde_json::to_value(Health {
            version: version.into(),
            api_version: api,
            pid: 42,
            started_at: String::new(),
            uptime_secs: 0,
            socket: String::new(),
            database: "/db/cloudd.db".into(),
            cloud_home: String::new(),
            registrations: 0,
            ticks: Default::default(),
            tools: BTreeMap::new(),
            ssh_sessions: 0,
            shutting_down: false,
            schedule: Default::default(),
            storage: Default::default(),
        })
        .unwrap();
        v["tools"] = json!({"railway": railway});
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn the_daemon_check_says_unreachable_skew_and_api_mismatch() {
        let sock = Path::new("/run/user/1/megaplan-cloudd/cloudd.sock");
        let down = daemon_check(Err("connection refused"), sock);
        assert_eq!(down.verdict, Verdict::Fail);
        assert!(down.detail.contains("cloudd.sock") && down.detail.contains("refused"));
        assert!(
            down.fix
                .unwrap()
                .contains("systemctl --user start megaplan-cloudd")
        );
        let same = health(
            env!("CARGO_PKG_VERSION"),
            megaplan_cloud_api::API_VERSION,
            None,
        );
        assert_eq!(daemon_check(Ok(&same), sock).verdict, Verdict::Ok);
        let older = health("0.0.1", megaplan_cloud_api::API_VERSION, None);
        let skew = daemon_check(Ok(&older), sock);
        assert_eq!(skew.verdict, Verdict::Warn);
        assert!(skew.detail.contains("0.0.1") && skew.detail.contains(env!("CARGO_PKG_VERSION")));
        let other_api = health("9.0.0", megaplan_cloud_api::API_VERSION + 1, None);
        assert_eq!(daemon_check(Ok(&other_api), sock).verdict, Verdict::Fail);
    }

    #[test]
    fn a_registration_check_names_a_missing_broken_or_placeholder_cloud_yaml() {
        let gone = registration_check("abc", "/p/cloud.yaml", None, None);
        assert_eq!(gone.verdict, Verdict::Fail);
        assert!(gone.fix.unwrap().contains("unregister abc"));
        let broken =
            registration_check("abc", "/p/cloud.yaml", Some("x"), Some("repo.url: missing"));
        assert_eq!(broken.verdict, Verdict::Fail);
        assert!(broken.detail.contains("repo.url"));
        let scaffold = megaplan_cloud_api::CLOUD_YAML_SCAFFOLD;
        let placeholder = registration_check("abc", "/p/cloud.yaml", Some(scaffold), None);
        assert_eq!(
            placeholder.verdict,
            Verdict::Warn,
            "init's scaffold must be caught"
        );
        assert!(placeholder.detail.contains("your-org/your-repo"));
        let fine = registration_check("abc", "/p/cloud.yaml", Some("provider: local\n"), None);
        assert_eq!(fine.verdict, Verdict::Ok);
        assert_eq!(fine.fix, None);
    }

    #[test]
    fn railway_is_checked_only_when_a_registration_uses_it() {
        assert_eq!(
            provider_of("# c\nprovider: \"railway\"  # hosted\n").as_deref(),
            Some("railway")
        );
        assert_eq!(provider_of("ssh:\n  provider: railway\n"), None);
        assert_eq!(railway_check(&[], None), None);
        let users = vec!["abc".to_string()];
        let missing = railway_check(&users, Some(&health("1", 1, None))).unwrap();
        assert_eq!(missing.verdict, Verdict::Fail);
        let there = railway_check(
            &users,
            Some(&health("1", 1, Some("/usr/local/bin/railway"))),
        )
        .unwrap();
        assert_eq!(there.verdict, Verdict::Ok);
        assert!(there.detail.contains("/usr/local/bin/railway"));
    }

    #[test]
    fn the_service_check_reads_systemctls_answer() {
        let tmp = tempfile::tempdir().unwrap();
        let unit = tmp.path().join("megaplan-cloudd.service");
        assert_eq!(service_check(None, &unit).verdict, Verdict::Skip);
        let on = service_check(Some((true, "enabled".into())), &unit);
        assert_eq!(on.verdict, Verdict::Ok);
        let off = service_check(Some((false, "disabled".into())), &unit);
        assert_eq!(
            off.fix.as_deref(),
            Some("systemctl --user enable --now megaplan-cloudd")
        );
        let absent = service_check(Some((false, "not-found".into())), &unit);
        assert_eq!(absent.verdict, Verdict::Warn);
        assert!(absent.fix.unwrap().starts_with("install -Dm644 systemd/"));
        std::fs::write(&unit, "").unwrap();
        let no_bus = service_check(Some((false, "Failed to connect to bus".into())), &unit);
        assert_eq!(no_bus.verdict, Verdict::Skip);
    }

    #[test]
    fn the_disk_check_measures_the_database_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let free = free_bytes(&tmp.path().join("not/yet/created")).unwrap();
        assert!(free > 0);
        let folder = Path::new("/db");
        assert_eq!(disk_check(folder, Ok(10 << 20)).verdict, Verdict::Fail);
        assert_eq!(disk_check(folder, Ok(500 << 20)).verdict, Verdict::Warn);
        let ok = disk_check(folder, Ok(5 << 30));
        assert_eq!(ok.verdict, Verdict::Ok);
        assert!(ok.detail.contains("5120 MiB") && ok.detail.contains("/db"));
    }

    #[test]
    fn the_checklist_renders_one_line_per_check_and_the_fix_under_it_within_80_columns() {
        let checks = vec![
            daemon_check(
                Err("connection refused"),
                Path::new("/run/user/1000/megaplan-cloudd/cloudd.sock"),
            ),
            registration_check(
                "0123456789abcdef",
                "/home/me/proj/cloud.yaml",
                Some("provider: local\n"),
                None,
            ),
        ];
        let lines = render::doctor_checks(&json!({ "checks": checks }));
        for l in &lines {
            assert!(l.chars().count() <= 80, "{l:?} is wider than 80 columns");
        }
        assert_eq!(
            lines,
            vec![
                "FAIL  daemon: no answer at /run/user/1000/megaplan-cloudd/cloudd.sock:",
                "      connection refused",
                "      fix: systemctl --user start megaplan-cloudd (or run megaplan-cloudd)",
                "ok    cloud.yaml 0123456789abcdef: /home/me/proj/cloud.yaml loads",
            ]
        );
    }

    #[test]
    fn the_notify_check_warns_of_an_edit_the_daemon_has_not_loaded() {
        let file = Path::new("/s/notify.yaml");
        let t = |s: &str| {
            chrono::DateTime::parse_from_rfc3339(s)
                .unwrap()
                .with_timezone(&chrono::Utc)
        };
        assert_eq!(notify_check(file, None, None).verdict, Verdict::Ok);
        let old = Some(t("2026-01-01T00:00:00Z"));
        assert_eq!(notify_check(file, old, None).verdict, Verdict::Skip);
        let mut h = health("1", 1, None);
        h.started_at = "2026-02-01T00:00:00Z".into();
        assert_eq!(notify_check(file, old, Some(&h)).verdict, Verdict::Ok);
        let edited = notify_check(file, Some(t("2026-03-01T00:00:00Z")), Some(&h));
        assert_eq!(edited.verdict, Verdict::Warn);
        assert!(edited.fix.unwrap().contains("restart megaplan-cloudd"));
    }
}
