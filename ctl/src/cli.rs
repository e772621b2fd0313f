//! Command-line surface of `megaplan-cloudctl`: the seed's cloud commands plus the daemon's own.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "megaplan-cloudctl",
    version,
    about = "Drive megaplan cloud runners through the megaplan-cloudd daemon",
    long_about = "Every cloud command asks megaplan-cloudd over its Unix socket and renders the answer: \
                  structured JSON on stdout, the human summary on stderr, exit 0 on success."
)]
pub struct Cli {
    /// Path of cloud.yaml (resolved to an absolute path before use).
    #[arg(long, global = true, default_value = "cloud.yaml")]
    pub cloud_yaml: PathBuf,
    /// Daemon socket [env: MEGAPLAN_CLOUDD_SOCKET].
    #[arg(long, global = true)]
    pub socket: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Debug, Args, Clone, Default)]
pub struct RepoOverrideArgs {
    /// Override repo.url for this run (in memory only).
    #[arg(long)]
    pub repo_url: Option<String>,
    /// Override repo.branch for this run.
    #[arg(long)]
    pub repo_branch: Option<String>,
    /// Override repo.workspace for this run.
    #[arg(long)]
    pub repo_workspace: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Write a commented cloud.yaml scaffold (works without the daemon).
    Init {
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Render the deploy dir and build the runner image.
    Build,
    /// Deploy the runner with the secrets named in cloud.yaml (read from this environment).
    Deploy,
    /// Upload an idea file and start `megaplan init --auto-start` on the runner.
    Bootstrap {
        idea: PathBuf,
        #[arg(long)]
        plan_name: Option<String>,
        #[arg(long)]
        robustness: Option<String>,
        #[command(flatten)]
        overrides: RepoOverrideArgs,
    },
    /// Upload a chain spec and its idea files, then start the chain in tmux session megaplan-chain.
    Chain {
        spec: PathBuf,
        /// Folder holding the idea files (default: the spec's folder).
        #[arg(long)]
        idea_dir: Option<PathBuf>,
        /// Delete the remote chain state first.
        #[arg(long)]
        fresh: bool,
        #[arg(long)]
        no_git_refresh: bool,
        #[command(flatten)]
        overrides: RepoOverrideArgs,
    },
    /// Remote `megaplan status`, or the chain status with --chain.
    Status {
        #[arg(long)]
        chain: bool,
        /// List every megaplan-chain* session with its marker.
        #[arg(long)]
        all: bool,
        #[arg(long)]
        remote_spec: Option<String>,
        #[arg(long)]
        plan: Option<String>,
    },
    /// Runner logs (redacted); follows by default.
    Logs {
        #[arg(long)]
        no_follow: bool,
    },
    /// Attach to the runner's tmux session on this terminal (raw, not redacted).
    Attach {
        /// Railway SSH session name (railway only).
        #[arg(long)]
        session: Option<String>,
    },
    /// Run a shell command in the runner; exits with its exit code.
    Exec {
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        cmd: Vec<String>,
    },
    /// Run the next step the remote status names.
    Resume {
        #[arg(long)]
        plan: Option<String>,
    },
    /// Stop the runner.
    Down,
    /// Remove the runner, its volume (when set) and the persistent deploy dir.
    Destroy {
        #[arg(long)]
        yes: bool,
    },
    /// One supervise tick against the remote chain.
    Supervise {
        /// Required: the chain supervisor is the only one there is.
        #[arg(long)]
        chain: bool,
        #[arg(long)]
        remote_spec: Option<String>,
        /// Run the whole tick but mutate nothing: `acted: false`, `next_action` what it would
        /// have done, `dry_run: true`. Not stored, notifies nobody.
        #[arg(long)]
        dry_run: bool,
    },
    /// List megaplan-chain* sessions on the runner with their session markers.
    Chains,
    /// Register this cloud.yaml for unattended ticks.
    Register {
        /// Interval such as 30s, 5m, 1h (default 5m).
        #[arg(long, conflicts_with = "cron")]
        every: Option<String>,
        /// 6-field cron expression with seconds first, e.g. "0 */5 * * * *".
        #[arg(long)]
        cron: Option<String>,
        #[arg(long)]
        remote_spec: Option<String>,
        #[command(flatten)]
        notify: NotifyArgs,
    },
    /// Stop ticking this cloud.yaml.
    Unregister,
    /// List registrations.
    Registrations {
        #[arg(long)]
        json: bool,
    },
    /// Stored tick reports, newest first.
    Ticks {
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// All registrations, not only --cloud-yaml.
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        filter: TickFilterArgs,
    },
    /// Tick a registered cloud.yaml now.
    Tick,
    /// Show the last few stored tick reports, then follow new ones as they are stored.
    Watch {
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
        /// Stored reports shown first (0 for none).
        #[arg(long, default_value_t = 5)]
        backlog: u32,
        #[command(flatten)]
        filter: TickFilterArgs,
    },
    /// Pause this registration: ticks keep observing and storing reports but never mutate.
    Pause {
        /// Why (shown in every refused tick and in `registrations`).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Lift the pause of this registration.
    Unpause,
    /// Explain the last stored tick: facts observed, the rule that matched, action, refusal.
    Explain {
        #[arg(long)]
        json: bool,
    },
    /// The notification outbox: what was sent, is pending, or was given up.
    Notifications {
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// All registrations, not only --cloud-yaml.
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// The daemon itself.
    Daemon {
        #[command(subcommand)]
        what: DaemonCmd,
    },
}

/// `register` notification sinks (docs/notifications.md).
#[derive(Debug, Args, Clone, Default)]
pub struct NotifyArgs {
    /// Webhook told of this registration's transitions (http://...); repeatable.
    #[arg(long = "notify-url")]
    pub notify_urls: Vec<String>,
    /// Command run with the notification JSON on stdin (`sh -c CMD`).
    #[arg(long)]
    pub notify_command: Option<String>,
    /// Body shape of the --notify-url webhooks: json (default), ntfy or slack.
    #[arg(long)]
    pub notify_preset: Option<String>,
    /// Drop this registration's own sinks (the daemon config's sinks still apply).
    #[arg(long, conflicts_with_all = ["notify_urls", "notify_command"])]
    pub no_notify: bool,
}

/// `--since`, `--event`, `--failed` of `ticks` and `watch`.
#[derive(Debug, Args, Clone, Default)]
pub struct TickFilterArgs {
    /// Only ticks since an age (30m, 2h, 1d), a date (2026-06-01) or an RFC 3339 time.
    #[arg(long)]
    pub since: Option<String>,
    /// Only ticks with this event (supervisor_error, supervisor_restarted, ...).
    #[arg(long)]
    pub event: Option<String>,
    /// Only failed ticks.
    #[arg(long)]
    pub failed: bool,
}

impl TickFilterArgs {
    /// The query-string tail (`&since=...`) for the daemon.
    pub fn query(&self, enc: impl Fn(&str) -> String) -> String {
        let mut q = String::new();
        if let Some(s) = &self.since {
            q.push_str(&format!("&since={}", enc(s)));
        }
        if let Some(e) = &self.event {
            q.push_str(&format!("&event={}", enc(e)));
        }
        if self.failed {
            q.push_str("&failed=true");
        }
        q
    }
}

#[derive(Debug, Subcommand)]
pub enum DaemonCmd {
    /// Version, pid, uptime, socket, database, registrations, tick counters.
    Status {
        #[arg(long)]
        json: bool,
    },
}

/// `5m` → 300. Kept here (not in the api crate) because only the client parses it.
pub fn parse_every(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("--every {text:?}: use e.g. 30s, 5m, 1h"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("--every {text:?}: unknown unit; use s, m, h or d")),
    };
    Ok(n * mult)
}
