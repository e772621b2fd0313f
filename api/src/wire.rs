//! Request and response bodies of the `/v1` API.
//!
//! Long operations answer `POST /v1/run` with a stream of newline-delimited JSON [`Frame`]s:
//! zero or more `stdout`/`stderr` frames as output arrives (already redacted), then exactly one
//! `result` frame carrying the JSON payload and the exit code (or a `terminal` frame for
//! `attach`, which the client executes on the user's terminal).

use crate::report::{NextAction, TickEvent, TickReport};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// `GET /v1/health`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Health {
    pub version: String,
    pub api_version: u32,
    pub pid: u32,
    pub started_at: String,
    pub uptime_secs: u64,
    pub socket: String,
    pub database: String,
    pub cloud_home: String,
    pub registrations: u64,
    pub ticks: TickCounters,
    /// Which external CLIs the daemon can see on its PATH (name → resolved path or null).
    pub tools: BTreeMap<String, Option<String>>,
    /// Held ssh master connections (one per target).
    pub ssh_sessions: u64,
    pub shutting_down: bool,
    /// Scheduled ticks since this daemon started: due vs fired, and how late.
    #[serde(default)]
    pub schedule: ScheduleHealth,
    /// The database's size against its cap, and what pruning removed to stay under it.
    #[serde(default)]
    pub storage: StorageHealth,
}

/// The database against `--max-db-size`. Above the cap the oldest tick reports and
/// delivered/failed notifications are pruned (never the newest tick of a registration, a tick
/// the watcher has not read, or an undelivered notification).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StorageHealth {
    /// The database file and its write-ahead log on disk, in bytes.
    pub size_bytes: u64,
    /// The database's pages in use, in bytes: what the cap is measured against.
    pub used_bytes: u64,
    /// `--max-db-size`, in bytes.
    pub max_bytes: u64,
    /// Tick reports pruned to stay under the cap, over the database's life.
    pub pruned_ticks: u64,
    /// Delivered or failed notifications (outbox rows) pruned to stay under the cap.
    pub pruned_notifications: u64,
}

/// The scheduler's account since start-up. Every occurrence that came due ends as exactly one
/// of: fired (a tick started), skipped (the previous tick of that registration still ran),
/// missed (it passed while the daemon could not fire it, e.g. suspended; folded into the next),
/// or still waiting for a tick slot: `due = fired + skipped + missed + waiting`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ScheduleHealth {
    /// Registrations in the due-time queue.
    pub scheduled: u64,
    /// Registrations whose stored schedule could not be scheduled (see the daemon log).
    pub unschedulable: u64,
    pub due: u64,
    pub fired: u64,
    pub skipped: u64,
    /// Of `skipped`: occurrences skipped because their registration was backing off after
    /// ticks that hit their deadline.
    #[serde(default)]
    pub backed_off: u64,
    pub missed: u64,
    /// Fired within [`ON_TIME_SLACK_SECS`] of their due time.
    pub on_time: u64,
    /// Largest delay from due time to tick start seen since start-up, in milliseconds.
    pub worst_lateness_ms: u64,
    /// The earliest due time in the queue (RFC 3339), if any.
    pub next_due_at: Option<String>,
}

/// A scheduled tick that starts within this many seconds of its due time is on time.
pub const ON_TIME_SLACK_SECS: u64 = 2;

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TickCounters {
    pub run: u64,
    pub failed: u64,
    pub skipped: u64,
}

/// `POST /v1/clouds`: register a cloud.yaml for unattended ticks.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RegisterRequest {
    /// Absolute path of the cloud.yaml.
    pub cloud_yaml: String,
    /// Interval in seconds (`--every 5m`). Exclusive with `cron`.
    #[serde(default)]
    pub every_secs: Option<u64>,
    /// 6-field cron expression with seconds (`--cron "0 */5 * * * *"`).
    #[serde(default)]
    pub cron: Option<String>,
    /// Optional `--remote-spec` used by every tick of this registration.
    #[serde(default)]
    pub remote_spec: Option<String>,
    /// `--notify-url` (repeatable): webhooks told of this registration's transitions. When any
    /// notify field is given, they replace the registration's sinks; else the sinks are kept.
    #[serde(default)]
    pub notify_urls: Vec<String>,
    /// `--notify-command`: run with the notification JSON on stdin.
    #[serde(default)]
    pub notify_command: Option<String>,
    /// `--notify-preset json|ntfy|slack` for the `notify_urls`.
    #[serde(default)]
    pub notify_preset: Option<String>,
    /// `--no-notify`: drop the registration's own sinks.
    #[serde(default)]
    pub no_notify: bool,
}

/// `POST /v1/clouds/{key}/pause`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PauseRequest {
    /// Who paused (the client sends `$USER@host`).
    pub by: String,
    #[serde(default)]
    pub reason: Option<String>,
}

/// One registration as listed by `GET /v1/clouds`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Registration {
    pub key: String,
    pub cloud_yaml: String,
    /// `every:<secs>` or `cron:<expr>`.
    pub schedule: String,
    pub remote_spec: Option<String>,
    pub created_at: String,
    pub last_tick_at: Option<String>,
    pub last_event: Option<String>,
    pub last_success: Option<bool>,
    pub ticks_run: u64,
    pub ticks_skipped: u64,
    /// The cron expression the scheduler runs (an `every` schedule with its per-registration
    /// offset); filled by the daemon from its queue, absent when not scheduled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// The next due time in the scheduler's queue (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_due_at: Option<String>,
    /// Present while the registration backs off after ticks that hit their deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<TickBackoff>,
}

/// One row of `GET /v1/clouds`: the registration and what the watcher knows of it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RegistrationListed {
    #[serde(flatten)]
    pub registration: Registration,
    /// The pause in force, `null` when none.
    #[serde(default)]
    pub paused: Option<crate::report::Pause>,
    /// As of the last tick.
    #[serde(default)]
    pub stalled: bool,
    /// The last successful tick's effective status.
    #[serde(default)]
    pub watched_status: Option<String>,
    #[serde(default)]
    pub consecutive_failures: u32,
}

/// Why a registration's scheduled ticks are held back: its last ticks hit their deadline
/// (observation or tick). Occurrences due before `until` are skipped and counted in `skipped`;
/// a tick that finishes in time (a manual `tick` runs regardless) ends the back-off.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TickBackoff {
    /// Ticks in a row that hit their deadline.
    pub strikes: u32,
    /// When the first of them ended (RFC 3339).
    pub since: String,
    /// Scheduled ticks start again from this time (RFC 3339).
    pub until: String,
    /// The last deadline hit, as its report says.
    pub reason: String,
    /// Scheduled occurrences skipped by this back-off.
    pub skipped: u64,
}

/// `POST /v1/clouds` answer: the registration as stored, with the cron expression the
/// scheduler runs, the labels of its notification sinks and warnings. Keys sorted, as before
/// this answer was typed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RegisterResponse {
    pub cloud_yaml: String,
    pub created_at: String,
    pub cron: String,
    pub key: String,
    pub last_event: Option<String>,
    pub last_success: Option<bool>,
    pub last_tick_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_due_at: Option<String>,
    /// The next three scheduled ticks (RFC 3339, UTC), like `systemd-analyze calendar`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub next_runs: Vec<String>,
    pub notify: Vec<String>,
    pub remote_spec: Option<String>,
    /// `every:<secs>` or `cron:<expr>`.
    pub schedule: String,
    pub success: bool,
    pub ticks_run: u64,
    pub ticks_skipped: u64,
    pub warnings: Vec<String>,
}

impl RegisterResponse {
    /// The answer for a stored registration; `cron` is the expression it was scheduled with.
    pub fn new(
        reg: Registration,
        cron: String,
        notify: Vec<String>,
        warnings: Vec<String>,
    ) -> Self {
        RegisterResponse {
            cloud_yaml: reg.cloud_yaml,
            created_at: reg.created_at,
            cron,
            key: reg.key,
            last_event: reg.last_event,
            last_success: reg.last_success,
            last_tick_at: reg.last_tick_at,
            next_due_at: reg.next_due_at,
            next_runs: Vec::new(),
            notify,
            remote_spec: reg.remote_spec,
            schedule: reg.schedule,
            success: true,
            ticks_run: reg.ticks_run,
            ticks_skipped: reg.ticks_skipped,
            warnings,
        }
    }
}

/// `DELETE /v1/clouds/{key}` answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UnregisterResponse {
    pub key: String,
    pub success: bool,
    pub unregistered: bool,
}

/// `POST /v1/clouds/{key}/tick` answer: the stored record of the tick, or (the previous tick
/// of this registration still running) that it was skipped.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum TickNowResponse {
    Ran(Box<TickRecord>),
    Skipped(TickSkipped),
}

/// The skipped form of [`TickNowResponse`]: `{"message", "skipped": true, "success": false}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TickSkipped {
    pub message: String,
    pub skipped: bool,
    pub success: bool,
}

impl TickSkipped {
    pub fn new() -> Self {
        TickSkipped {
            message: "a tick for this registration is already running; this one was skipped"
                .to_string(),
            skipped: true,
            success: false,
        }
    }
}

impl Default for TickSkipped {
    fn default() -> Self {
        Self::new()
    }
}

/// `POST /v1/clouds/{key}/pause` answer: the pause as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PauseResponse {
    pub key: String,
    pub paused: crate::report::Pause,
    pub success: bool,
}

/// `DELETE /v1/clouds/{key}/pause` answer: `paused` is always null; `was_paused` is the pause
/// it lifted, null when there was none.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UnpauseResponse {
    pub key: String,
    pub paused: Option<crate::report::Pause>,
    pub success: bool,
    pub was_paused: Option<crate::report::Pause>,
}

/// `GET /v1/secret-names` answer: the secret env var names of a cloud.yaml and the loader's
/// warnings about it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SecretNamesResponse {
    /// The cloud.yaml's `megaplan.codex_auth`: with `chatgpt`, `deploy` and `chain` hand over
    /// the agents' login files ([`AgentAuth`]). Absent from older daemons. (Fields in key
    /// order, as the answer was before it was typed.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub codex_auth: Option<String>,
    pub names: Vec<String>,
    pub success: bool,
    pub warnings: Vec<String>,
}

/// Query of `GET /v1/ticks` and `GET /v1/ticks/watch`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TicksQuery {
    /// Absolute cloud.yaml path; all registrations when absent.
    pub cloud_yaml: Option<String>,
    pub limit: Option<u32>,
    /// Only ticks that finished at or after this RFC 3339 time.
    #[serde(default)]
    pub since: Option<String>,
    /// Only ticks with this event (`supervisor_error`, ...).
    #[serde(default)]
    pub event: Option<String>,
    /// Only failed ticks.
    #[serde(default)]
    pub failed: Option<bool>,
    /// `watch`: how many stored reports to show first (default 5, 0 for none).
    #[serde(default)]
    pub backlog: Option<u32>,
}

/// A stored tick report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TickRecord {
    pub id: i64,
    pub key: String,
    pub cloud_yaml: String,
    /// `schedule`, `manual` (API tick-now) or `cli` (`supervise --chain`).
    pub trigger: String,
    pub started_at: String,
    pub finished_at: String,
    pub duration_ms: u64,
    pub success: bool,
    pub event: TickEvent,
    pub next_action: NextAction,
    pub acted: bool,
    pub refused_reason: Option<String>,
    /// The full tick report as printed by `supervise --chain` (redacted), keys sorted.
    #[serde(serialize_with = "crate::report::serialize_sorted")]
    pub report: TickReport,
    /// For a scheduled tick: the due time it was fired for (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_at: Option<String>,
}

/// `POST /v1/run`: one cloud command.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunRequest {
    /// Absolute path of the cloud.yaml (the client resolves it, symlinks followed, as the
    /// original tool does).
    pub cloud_yaml: String,
    /// The path as the operator gave it, made absolute without following symlinks, when that
    /// differs from `cloud_yaml`: a last-chain marker found only under its key is imported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_yaml_as_given: Option<String>,
    /// The client's working directory (for relative paths in arguments).
    pub cwd: String,
    /// Values of the secret env vars named in cloud.yaml, read from the client's environment.
    /// Held in daemon memory only; never written to disk or the database.
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    /// The agents' local login files (`megaplan.codex_auth: chatgpt`, on `deploy` and `chain`):
    /// read by the client, seeded onto the runner, held in daemon memory only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_auth: Option<AgentAuth>,
    pub command: Command,
}

/// The agents' login files the client read (`~/.codex/auth.json`, `~/.hermes/auth.json`).
/// `Debug` prints names only: the contents are credentials.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AgentAuth {
    /// Agent name (`codex`, `hermes`) → the file's content.
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    /// Agent name → the local path that was not there (or could not be read as UTF-8 text).
    #[serde(default)]
    pub missing: BTreeMap<String, String>,
}

impl std::fmt::Debug for AgentAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentAuth")
            .field("files", &self.files.keys().collect::<Vec<_>>())
            .field("missing", &self.missing)
            .finish()
    }
}

/// Repo overrides accepted by `bootstrap` and `chain` (in memory only).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RepoOverrides {
    pub repo_url: Option<String>,
    pub repo_branch: Option<String>,
    pub repo_workspace: Option<String>,
}

/// Every cloud command of the seed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "name", rename_all = "snake_case")]
pub enum Command {
    Build,
    Deploy,
    Bootstrap {
        idea: String,
        plan_name: Option<String>,
        robustness: Option<String>,
        #[serde(default)]
        overrides: RepoOverrides,
    },
    Chain {
        spec: String,
        idea_dir: Option<String>,
        #[serde(default)]
        fresh: bool,
        #[serde(default)]
        no_git_refresh: bool,
        #[serde(default)]
        overrides: RepoOverrides,
    },
    Status {
        #[serde(default)]
        chain: bool,
        #[serde(default)]
        all: bool,
        remote_spec: Option<String>,
        plan: Option<String>,
    },
    Logs {
        #[serde(default)]
        follow: bool,
        /// How many recent lines (default 200 without `follow`, all history with it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tail: Option<u32>,
        /// Only lines since this time: a duration (`10m`, `2h`) or an RFC 3339 time, as
        /// `docker logs --since` and `railway logs --since` take it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<String>,
    },
    Attach {
        session: Option<String>,
    },
    /// `cmd` is one shell command string (the original's form); `argv`, when not empty, is a
    /// word list the daemon quotes word by word instead (`exec -- git log --oneline`).
    Exec {
        #[serde(default)]
        cmd: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        argv: Vec<String>,
    },
    Resume {
        plan: Option<String>,
    },
    Down,
    Destroy {
        #[serde(default)]
        yes: bool,
    },
    Supervise {
        remote_spec: Option<String>,
        /// Run the whole tick but mutate nothing; the report says `dry_run: true`.
        #[serde(default)]
        dry_run: bool,
    },
    Chains,
}

impl Command {
    pub fn name(&self) -> &'static str {
        match self {
            Command::Build => "build",
            Command::Deploy => "deploy",
            Command::Bootstrap { .. } => "bootstrap",
            Command::Chain { .. } => "chain",
            Command::Status { .. } => "status",
            Command::Logs { .. } => "logs",
            Command::Attach { .. } => "attach",
            Command::Exec { .. } => "exec",
            Command::Resume { .. } => "resume",
            Command::Down => "down",
            Command::Destroy { .. } => "destroy",
            Command::Supervise { .. } => "supervise",
            Command::Chains => "chains",
        }
    }
}

/// One line of a streamed `/v1/run` or `/v1/ticks/watch` answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "frame", rename_all = "snake_case")]
pub enum Frame {
    /// Redacted output for the client's stdout.
    Stdout { data: String },
    /// Redacted output (or a progress note) for the client's stderr.
    Stderr { data: String },
    /// `attach`: run this argv on the user's terminal (not redacted, as documented).
    Terminal { argv: Vec<String> },
    /// A stored tick report (watch stream).
    Tick { tick: Box<TickRecord> },
    /// The end: the JSON payload for stdout and the process exit code.
    Result { payload: Value, exit_code: i32 },
}

impl Frame {
    /// One NDJSON line, newline included.
    pub fn to_line(&self) -> String {
        let mut s = serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"frame":"result","payload":{"success":false,"error":"internal","message":"unserializable frame"},"exit_code":1}"#.to_string()
        });
        s.push('\n');
        s
    }
}

/// A notification sink's circuit breaker as each row of `GET /v1/notifications` carries it
/// (docs/notifications.md, "Delivery and retries").
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SinkBreaker {
    /// The sink deliveries are capped and broken by: a webhook's origin
    /// (`http://host:port`), or `command <cmd>`.
    pub sink: String,
    pub state: BreakerState,
    /// RFC 3339: when an `open` breaker lets one probe delivery through.
    pub open_until: Option<String>,
    /// Failed deliveries in a row (reset by a delivered one).
    pub consecutive_failures: u32,
    /// Deliveries to this sink running now.
    pub in_flight: u32,
}

/// `closed`: delivering; `open`: deliveries deferred until `open_until`; `half_open`: one probe
/// delivery is running, the rest wait for its outcome.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_is_tagged_by_name() {
        let c = Command::Exec {
            cmd: "echo hi".into(),
            argv: Vec::new(),
        };
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["name"], "exec");
        assert_eq!(v["cmd"], "echo hi");
        assert!(v.get("argv").is_none(), "an empty argv is not sent: {v}");
        let back: Command = serde_json::from_value(v).unwrap();
        assert_eq!(back.name(), "exec");
        // An argv-only request (no cmd) is accepted too.
        let back: Command =
            serde_json::from_value(serde_json::json!({"name": "exec", "argv": ["git", "log"]}))
                .unwrap();
        assert_eq!(
            back,
            Command::Exec {
                cmd: String::new(),
                argv: vec!["git".into(), "log".into()]
            }
        );
    }

    /// The typed answers serialize exactly as the `json!` objects they replace.
    #[test]
    fn typed_answers_keep_their_bytes() {
        let same = |typed: String, old: Value| assert_eq!(typed, old.to_string());
        same(
            serde_json::to_string(&UnregisterResponse {
                key: "k".into(),
                success: true,
                unregistered: true,
            })
            .unwrap(),
            serde_json::json!({"success": true, "key": "k", "unregistered": true}),
        );
        same(
            serde_json::to_string(&TickNowResponse::Skipped(TickSkipped::new())).unwrap(),
            serde_json::json!({
                "success": false, "skipped": true,
                "message": "a tick for this registration is already running; this one was skipped"
            }),
        );
        same(
            serde_json::to_string(&SecretNamesResponse {
                names: vec!["A".into()],
                success: true,
                warnings: vec![],
                codex_auth: None,
            })
            .unwrap(),
            serde_json::json!({"success": true, "names": ["A"], "warnings": []}),
        );
        let reg = Registration {
            key: "k".into(),
            cloud_yaml: "/c".into(),
            schedule: "every:300".into(),
            remote_spec: None,
            created_at: "t".into(),
            last_tick_at: None,
            last_event: None,
            last_success: None,
            ticks_run: 0,
            ticks_skipped: 0,
            cron: Some("old".into()),
            next_due_at: Some("n".into()),
            backoff: None,
        };
        let mut old = serde_json::to_value(&reg).unwrap();
        let o = old.as_object_mut().unwrap();
        o.insert("success".into(), true.into());
        o.insert("cron".into(), "7 */5 * * * *".into());
        o.insert("notify".into(), serde_json::json!(["json:http://x"]));
        o.insert("warnings".into(), serde_json::json!(["w"]));
        same(
            serde_json::to_string(&RegisterResponse::new(
                reg,
                "7 */5 * * * *".into(),
                vec!["json:http://x".into()],
                vec!["w".into()],
            ))
            .unwrap(),
            old,
        );
    }

    #[test]
    fn frames_round_trip_as_single_lines() {
        let f = Frame::Stdout {
            data: "a\nb\n".into(),
        };
        let line = f.to_line();
        assert_eq!(line.matches('\n').count(), 1);
        let back: Frame = serde_json::from_str(line.trim_end()).unwrap();
        assert_eq!(back, f);
    }
}

/// `GET /v1/clouds/{key}/explain` as the client reads it: the lines a person reads, and the
/// rest of the explanation (facts, rule, action, back-off) kept whole for `--json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Explanation {
    #[serde(default)]
    pub lines: Vec<String>,
    #[serde(flatten)]
    pub rest: serde_json::Map<String, Value>,
}

/// `POST /v1/dashboard`: which local port the dashboard listens on (0: any free one). The
/// daemon binds 127.0.0.1 only, whatever is asked.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DashboardRequest {
    #[serde(default)]
    pub port: u16,
}
