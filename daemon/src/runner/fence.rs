//! The launch gate: fencing tokens and the preflight, checked on the runner in ONE step with
//! the launch itself (`fence.py`, under an flock in the chain's workspace state dir).
//!
//! Every launch of a chain driver (a tick's restart or advance, a manual `chain`) is wrapped in
//! [`gate_script`]. The runner keeps the last accepted token and who holds it; a launch offers
//! the token it last knew:
//!
//! - a tick ([`FenceMode::CompareAndSwap`]) is accepted only when the runner still holds the
//!   token it expects, so a second daemon (its own database), a tick acting on an old
//!   observation, or a tick racing a manual `chain` is refused, naming the holder;
//! - a manual `chain` ([`FenceMode::Take`]) is a person's explicit intent: it takes
//!   `max(its token, the runner's) + 1`, but still only when no driver of the chain is alive.
//!
//! Either way the driver check, the preflight, the token swap and the start all happen under
//! the same lock, so two launchers can never both start a driver: one driver per chain by
//! construction. docs/operations.md ("Fencing", "Preflight") shows what a person sees.

use super::lenient::or_default;
use super::observe::python_prelude;
use super::python::py_library;
use crate::shell::quote;
use serde::{Deserialize, Serialize};
use std::sync::LazyLock;

/// Prefix of the gate's one verdict line on stdout.
pub const GATE_PREFIX: &str = "MEGAPLAN_GATE ";

/// How a launch takes the chain's token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceMode {
    /// Accepted only when the runner holds exactly the expected token (ticks).
    CompareAndSwap,
    /// Takes `max(expected, runner's) + 1` when no driver is alive (a manual `chain`).
    Take,
}

/// The preflight's floors (cloud.yaml `preflight:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Floors {
    pub disk_bytes: u64,
    pub inodes: u64,
}

/// Everything the gate needs, sent as one JSON argument.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GateRequest {
    pub workspace: String,
    /// The remote chain spec (relative paths are under the workspace).
    pub spec: String,
    pub launcher: String,
    pub mode: &'static str,
    /// The token this launcher last knew (0 when none).
    pub expected: u64,
    /// Who is launching, as the holder is named to the next one.
    pub holder: String,
    pub floors: Floors,
    /// The agents' login files, relative to the runner user's `$HOME` or absolute.
    pub auth_files: Vec<String>,
    /// The session marker to check against the spec first (ticks), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub marker_file: Option<String>,
}

impl GateRequest {
    pub fn new(
        mode: FenceMode,
        expected: u64,
        holder: String,
        workspace: &str,
        spec: &str,
        launcher: &str,
        floors: Floors,
    ) -> GateRequest {
        GateRequest {
            workspace: workspace.to_string(),
            spec: spec.to_string(),
            launcher: launcher.to_string(),
            mode: match mode {
                FenceMode::CompareAndSwap => "cas",
                FenceMode::Take => "take",
            },
            expected,
            holder,
            floors,
            auth_files: AUTH_FILES.iter().map(|s| s.to_string()).collect(),
            marker_file: None,
        }
    }
}

/// The agents' login files the preflight looks at, under the runner user's `$HOME` (the
/// places `workflow/agent_auth.rs` seeds, and Claude Code's own). A file that is absent is not
/// a failure (`codex_auth: apikey` seeds none); one that is present must not have expired.
pub const AUTH_FILES: [&str; 3] = [
    ".codex/auth.json",
    ".hermes/auth.json",
    ".claude/.credentials.json",
];

/// The runner-side gate program (`python -c`): the layout, `files.py`, `drivers.py`,
/// `fence.py` and the entry call.
pub fn gate_py() -> &'static str {
    static TEXT: LazyLock<String> = LazyLock::new(|| {
        format!(
            "{}{}\nsys.exit(gate_main(sys.argv[1:]))\n",
            py_library(),
            include_str!("fence.py")
        )
    });
    &TEXT
}

/// The shell command running `launch` behind the gate: `launch` runs only when the gate
/// accepted, while the gate still holds the lock, and its status is the command's.
pub fn gate_script(req: &GateRequest, launch: &str) -> String {
    let json = serde_json::to_string(req).unwrap_or_else(|_| "{}".to_string());
    format!(
        "{}; \"$py\" -c {} {} {}",
        python_prelude(&req.launcher),
        quote(gate_py()),
        quote(&json),
        quote(launch)
    )
}

/// One failed preflight check, as the gate reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreflightCheck {
    pub check: String,
    /// The cloud.yaml field that sets the floor (or names the input).
    pub field: String,
    pub detail: String,
    pub fix: String,
}

/// The gate's verdict line as written by `fence.py`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub verdict: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<u64>,
    /// The token the runner held when the gate looked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<u64>,
    /// Who holds it (whoever stored `held`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offered: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offered_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drivers: Option<Vec<LiveDriver>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checks: Option<Vec<PreflightCheck>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<String>,
}

/// A live driver of the chain as the gate found it (`find_drivers` in drivers.py): its pid and
/// the tmux session it descends from (`None`: none). An entry of another shape reads as pid 0 in
/// no session, so one odd entry never hides the verdict.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "DriverEntry")]
pub struct LiveDriver {
    pub pid: u64,
    pub session: Option<String>,
}

/// One entry of the verdict's `drivers`, as printed.
#[derive(Deserialize)]
#[serde(untagged)]
enum DriverEntry {
    Found {
        #[serde(default, deserialize_with = "or_default")]
        pid: u64,
        #[serde(default, deserialize_with = "or_default")]
        session: Option<String>,
    },
    Other(serde::de::IgnoredAny),
}

impl From<DriverEntry> for LiveDriver {
    fn from(e: DriverEntry) -> LiveDriver {
        match e {
            DriverEntry::Found { pid, session } => LiveDriver { pid, session },
            DriverEntry::Other(_) => LiveDriver::default(),
        }
    }
}

/// What the gate decided.
#[derive(Debug, Clone, PartialEq)]
pub enum GateOutcome {
    /// The launch ran under `token`.
    Accepted { token: u64 },
    /// Fenced off: a stale token, a live driver, another chain's session, an unreadable token.
    Refused(Box<Verdict>),
    /// A preflight check failed; nothing was launched.
    PreflightFailed(Vec<PreflightCheck>),
}

impl Verdict {
    /// The last verdict line of a gate's stdout, if it printed one (an older runner script or
    /// a gate that could not start prints none).
    pub fn parse(stdout: &str) -> Option<Verdict> {
        stdout
            .lines()
            .rev()
            .find_map(|l| l.trim().strip_prefix(GATE_PREFIX))
            .and_then(|j| serde_json::from_str(j).ok())
    }

    pub fn outcome(&self) -> GateOutcome {
        match self.verdict.as_str() {
            "accepted" => GateOutcome::Accepted {
                token: self.token.unwrap_or_default(),
            },
            "preflight_failed" => {
                GateOutcome::PreflightFailed(self.checks.clone().unwrap_or_default())
            }
            _ => GateOutcome::Refused(Box::new(self.clone())),
        }
    }

    /// The highest token this verdict shows the runner holds (to keep the local one current).
    pub fn known_token(&self) -> u64 {
        self.token.unwrap_or(0).max(self.held.unwrap_or(0))
    }

    fn holder_text(&self) -> String {
        match (&self.holder, self.held) {
            (Some(h), Some(t)) => format!("{h} (token {t})"),
            (None, Some(t)) if t > 0 => format!("an unnamed launcher (token {t})"),
            _ => "nobody yet (token 0)".to_string(),
        }
    }

    /// One line for a person: what was refused, who holds the chain, what happens next.
    pub fn refusal_message(&self) -> String {
        let since = self
            .since
            .as_deref()
            .map(|s| format!(" since {s}"))
            .unwrap_or_default();
        match self.reason.as_deref() {
            Some("stale_token") => format!(
                "fenced: the chain is held by {}{since}; this launch offered token {} (it expected {}) and was refused, nothing was launched; the next launch from here expects token {}",
                self.holder_text(),
                self.offered.unwrap_or(0),
                self.expected.unwrap_or(0),
                self.held.unwrap_or(0),
            ),
            Some("live_driver") => {
                let drivers: Vec<String> = self
                    .drivers
                    .iter()
                    .flatten()
                    .map(|d| {
                        format!(
                            "pid {} in tmux session {}",
                            d.pid,
                            d.session.as_deref().unwrap_or("none")
                        )
                    })
                    .collect();
                format!(
                    "fenced: a driver of this chain is alive ({}), held by {}{since}; refusing to start a second one",
                    drivers.join(", "),
                    self.holder_text()
                )
            }
            Some("other_chain") => "the session marker on the runner names a different chain; supervisor will not touch another chain's session".to_string(),
            Some("unreadable_token") => format!(
                "fenced: the fencing token file {} on the runner cannot be read ({}); nothing was launched; remove it once no driver runs",
                self.token_file.as_deref().unwrap_or("?"),
                self.detail.as_deref().unwrap_or("")
            ),
            other => format!(
                "fenced: the launch gate refused ({}), held by {}",
                other.unwrap_or("no reason"),
                self.holder_text()
            ),
        }
    }
}

/// One line for a person naming every failed check and its fix.
pub fn preflight_message(checks: &[PreflightCheck]) -> String {
    let parts: Vec<String> = checks
        .iter()
        .map(|c| format!("{} ({}): {}; fix: {}", c.check, c.field, c.detail, c.fix))
        .collect();
    format!(
        "preflight failed, nothing was launched: {}",
        parts.join("; ")
    )
}

/// `user@host` of this process (the daemon's user on the daemon's machine).
pub fn user_at_host() -> String {
    use std::os::unix::fs::MetadataExt;
    // A service manager's daemon may have no USER: then the uid (the owner of /proc/self).
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(|| {
            std::fs::metadata("/proc/self")
                .ok()
                .map(|m| format!("uid{}", m.uid()))
        })
        .unwrap_or_else(|| "unknown-user".to_string());
    format!("{user}@{}", host_name())
}

/// This machine's host name (the kernel's), `localhost` when it cannot be read.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// The holder name of a daemon's ticks: host, pid and database, so a person can tell two
/// daemons apart.
pub fn daemon_holder(db: &std::path::Path) -> String {
    format!(
        "daemon {} pid {} db {}",
        user_at_host(),
        std::process::id(),
        db.display()
    )
}

/// The holder name of a manual `chain`.
pub fn manual_holder() -> String {
    format!("manual chain by {}", user_at_host())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::process::{Command, Output};

    fn floors() -> Floors {
        Floors {
            disk_bytes: 0,
            inodes: 0,
        }
    }

    /// A live-driver refusal names each driver; one odd entry reads as pid 0 in no session
    /// and never hides the verdict; the verdict as a person's error `fencing` keeps the
    /// drivers as the gate printed them.
    #[test]
    fn live_drivers_are_read_typed_and_an_odd_entry_never_hides_the_verdict() {
        let line = r#"MEGAPLAN_GATE {"verdict": "refused", "reason": "live_driver", "held": 2, "holder": "d@h", "drivers": [{"pid": 12, "session": "megaplan-chain"}, {"pid": 13, "session": null}]}"#;
        let v = Verdict::parse(&format!("noise\n{line}\n")).unwrap();
        assert_eq!(
            v.drivers.as_deref(),
            Some(
                &[
                    LiveDriver {
                        pid: 12,
                        session: Some("megaplan-chain".into())
                    },
                    LiveDriver {
                        pid: 13,
                        session: None
                    }
                ][..]
            )
        );
        assert_eq!(
            v.refusal_message(),
            "fenced: a driver of this chain is alive (pid 12 in tmux session megaplan-chain, pid 13 in tmux session none), held by d@h (token 2); refusing to start a second one"
        );
        let printed: serde_json::Value =
            serde_json::from_str(line.trim_start_matches(GATE_PREFIX)).unwrap();
        assert_eq!(serde_json::to_value(&v).unwrap(), printed);

        let odd = r#"MEGAPLAN_GATE {"verdict": "refused", "reason": "live_driver", "drivers": ["12", {"pid": "13", "session": 5}, {"session": "s"}, null]}"#;
        let v = Verdict::parse(odd).unwrap();
        assert_eq!(
            v.refusal_message(),
            "fenced: a driver of this chain is alive (pid 0 in tmux session none, pid 0 in tmux session none, pid 0 in tmux session s, pid 0 in tmux session none), held by nobody yet (token 0); refusing to start a second one"
        );
    }

    fn request(ws: &Path, mode: FenceMode, expected: u64, holder: &str) -> GateRequest {
        GateRequest::new(
            mode,
            expected,
            holder.to_string(),
            &ws.display().to_string(),
            "chain.yaml",
            "python3 -m no_such_core",
            floors(),
        )
    }

    /// Runs the gate locally with python3, `launch` as the launch script.
    fn run_gate(req: &GateRequest, launch: &str, home: &Path) -> (Output, Option<Verdict>) {
        let out = Command::new("bash")
            .arg("-c")
            .arg(gate_script(req, launch))
            .env("HOME", home)
            .output()
            .expect("bash");
        let v = Verdict::parse(&String::from_utf8_lossy(&out.stdout));
        (out, v)
    }

    fn workspace() -> tempfile::TempDir {
        let ws = tempfile::tempdir().unwrap();
        std::fs::write(ws.path().join("chain.yaml"), "milestones: []\n").unwrap();
        ws
    }

    #[test]
    fn an_older_token_is_refused_and_a_current_one_accepted() {
        let ws = workspace();
        let home = tempfile::tempdir().unwrap();
        let (out, v) = run_gate(
            &request(ws.path(), FenceMode::CompareAndSwap, 0, "daemon A"),
            "echo launched",
            home.path(),
        );
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        assert_eq!(v.unwrap().outcome(), GateOutcome::Accepted { token: 1 });
        assert!(String::from_utf8_lossy(&out.stdout).contains("launched"));
        // B last knew nothing: the runner holds 1 now, so B's CAS from 0 is stale.
        let (out, v) = run_gate(
            &request(ws.path(), FenceMode::CompareAndSwap, 0, "daemon B"),
            "echo launched",
            home.path(),
        );
        assert_eq!(
            out.status.code(),
            Some(crate::runner::layout::EXIT_FENCED),
            "{out:?}"
        );
        assert!(!String::from_utf8_lossy(&out.stdout).contains("launched"));
        let v = v.unwrap();
        assert_eq!(v.reason.as_deref(), Some("stale_token"));
        assert_eq!((v.held, v.holder.as_deref()), (Some(1), Some("daemon A")));
        let msg = v.refusal_message();
        assert!(msg.contains("held by daemon A (token 1)"), "{msg}");
        // Having learned token 1, B's CAS is accepted and takes 2.
        let (_, v) = run_gate(
            &request(ws.path(), FenceMode::CompareAndSwap, 1, "daemon B"),
            "true",
            home.path(),
        );
        assert_eq!(v.unwrap().outcome(), GateOutcome::Accepted { token: 2 });
        // A manual chain takes max(own, runner's) + 1.
        let (_, v) = run_gate(
            &request(ws.path(), FenceMode::Take, 0, "manual chain by op@box"),
            "true",
            home.path(),
        );
        assert_eq!(v.unwrap().outcome(), GateOutcome::Accepted { token: 3 });
        // A newer token than the runner's (a CAS expecting what it holds) is accepted; a CAS
        // expecting a token the runner never held (newer than its own) is refused too.
        let (_, v) = run_gate(
            &request(ws.path(), FenceMode::CompareAndSwap, 9, "daemon C"),
            "true",
            home.path(),
        );
        assert_eq!(v.unwrap().reason.as_deref(), Some("stale_token"));
    }

    #[test]
    fn concurrent_attempts_have_exactly_one_winner() {
        let ws = workspace();
        let home = tempfile::tempdir().unwrap();
        let wins = ws.path().join("wins");
        // Each accepted launch appends a line while holding the lock (and lingers a little, so
        // the others really wait on the flock rather than run one after another by chance).
        let launch = format!(
            "echo x >> {}; sleep 0.2",
            quote(&wins.display().to_string())
        );
        let children: Vec<_> = (0..8)
            .map(|i| {
                let req = request(
                    ws.path(),
                    FenceMode::CompareAndSwap,
                    0,
                    &format!("launcher {i}"),
                );
                Command::new("bash")
                    .arg("-c")
                    .arg(gate_script(&req, &launch))
                    .env("HOME", home.path())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let mut accepted = 0;
        let mut refused = 0;
        for c in children {
            let out = c.wait_with_output().unwrap();
            match Verdict::parse(&String::from_utf8_lossy(&out.stdout)).map(|v| v.outcome()) {
                Some(GateOutcome::Accepted { token }) => {
                    assert_eq!(token, 1);
                    accepted += 1
                }
                Some(GateOutcome::Refused(v)) => {
                    assert_eq!(v.reason.as_deref(), Some("stale_token"));
                    assert_eq!(v.held, Some(1));
                    refused += 1
                }
                other => panic!("{other:?}: {out:?}"),
            }
        }
        assert_eq!((accepted, refused), (1, 7));
        assert_eq!(std::fs::read_to_string(&wins).unwrap().lines().count(), 1);
    }

    #[test]
    fn a_floor_above_the_free_space_fails_the_preflight_naming_the_field() {
        let ws = workspace();
        let home = tempfile::tempdir().unwrap();
        let mut req = request(ws.path(), FenceMode::CompareAndSwap, 0, "daemon A");
        req.floors.disk_bytes = 1 << 50; // 1 PiB
        let (out, v) = run_gate(&req, "echo launched", home.path());
        assert_eq!(
            out.status.code(),
            Some(crate::runner::layout::EXIT_PREFLIGHT),
            "{out:?}"
        );
        assert!(!String::from_utf8_lossy(&out.stdout).contains("launched"));
        let GateOutcome::PreflightFailed(checks) = v.unwrap().outcome() else {
            panic!("not a preflight failure")
        };
        assert_eq!(checks.len(), 1, "{checks:?}");
        assert_eq!(checks[0].field, "preflight.min_free_disk");
        assert!(preflight_message(&checks).contains("preflight.min_free_disk"));
        // Nothing was taken: the next gate still expects token 0.
        let (_, v) = run_gate(
            &request(ws.path(), FenceMode::CompareAndSwap, 0, "daemon A"),
            "true",
            home.path(),
        );
        assert_eq!(v.unwrap().outcome(), GateOutcome::Accepted { token: 1 });
    }

    fn jwt(exp: i64) -> String {
        use base64::Engine;
        let b = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.sig",
            b.encode(br#"{"alg":"none"}"#),
            b.encode(format!(r#"{{"exp":{exp}}}"#))
        )
    }

    #[test]
    fn an_expired_agent_login_fails_the_preflight_and_a_valid_one_passes() {
        let ws = workspace();
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(home.path().join(".codex")).unwrap();
        let now = chrono::Utc::now().timestamp();
        let auth = home.path().join(".codex/auth.json");
        std::fs::write(
            &auth,
            format!(r#"{{"tokens":{{"id_token":"{}"}}}}"#, jwt(now + 3600)),
        )
        .unwrap();
        let req = request(ws.path(), FenceMode::Take, 0, "op");
        let (_, v) = run_gate(&req, "true", home.path());
        assert_eq!(v.unwrap().outcome(), GateOutcome::Accepted { token: 1 });
        let expired = jwt(now - 60);
        std::fs::write(&auth, format!(r#"{{"tokens":{{"id_token":"{expired}"}}}}"#)).unwrap();
        let (out, v) = run_gate(&req, "echo launched", home.path());
        assert!(!String::from_utf8_lossy(&out.stdout).contains("launched"));
        let GateOutcome::PreflightFailed(checks) = v.unwrap().outcome() else {
            panic!("not a preflight failure: {out:?}")
        };
        assert_eq!(checks[0].check, "agent_auth");
        assert!(
            checks[0].detail.contains("tokens.id_token expired"),
            "{checks:?}"
        );
        // The token itself is never printed.
        assert!(!String::from_utf8_lossy(&out.stdout).contains(&expired));
        // Beside a refresh token, a token just past its `exp` is refreshed by the agent: no
        // blocker; one nobody refreshed for nine days is.
        let refreshable = |exp: i64| {
            format!(
                r#"{{"tokens":{{"access_token":"{}","refresh_token":"r"}}}}"#,
                jwt(exp)
            )
        };
        std::fs::write(&auth, refreshable(now - 60)).unwrap();
        let (_, v) = run_gate(&req, "true", home.path());
        assert!(matches!(v.unwrap().outcome(), GateOutcome::Accepted { .. }));
        std::fs::write(&auth, refreshable(now - 9 * 24 * 3600)).unwrap();
        let (_, v) = run_gate(&req, "true", home.path());
        assert!(matches!(
            v.unwrap().outcome(),
            GateOutcome::PreflightFailed(_)
        ));
    }

    #[test]
    fn a_missing_chain_spec_fails_the_preflight() {
        let ws = tempfile::tempdir().unwrap();
        let home = tempfile::tempdir().unwrap();
        let (_, v) = run_gate(
            &request(ws.path(), FenceMode::Take, 0, "op"),
            "true",
            home.path(),
        );
        let GateOutcome::PreflightFailed(checks) = v.unwrap().outcome() else {
            panic!("not a preflight failure")
        };
        assert_eq!(checks[0].check, "chain_spec");
    }
}
