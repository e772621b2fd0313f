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
    /// Path of cloud.yaml, resolved like the original (`~` expanded, symlinks followed).
    /// Default: `<project root>/cloud.yaml` (the git root holding `.megaplan/`, else the nearest
    /// folder holding `.megaplan/`), then the git root's, then `./cloud.yaml`.
    #[arg(long, global = true)]
    pub cloud_yaml: Option<PathBuf>,
    /// Daemon socket [env: MEGAPLAN_CLOUDD_SOCKET].
    #[arg(long, global = true)]
    pub socket: Option<PathBuf>,
    /// JSON on stdout even on a terminal (the default when stdout is not a terminal).
    #[arg(long, global = true)]
    pub json: bool,
    /// Colour in human output: auto (a terminal, and NO_COLOR unset), always or never.
    #[arg(long, global = true, value_enum, default_value_t = crate::output::ColorChoice::Auto)]
    pub color: crate::output::ColorChoice,
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
        /// Idea file (markdown) to upload and plan from.
        idea: PathBuf,
        /// Plan name (default: derived by megaplan from the idea).
        #[arg(long)]
        plan_name: Option<String>,
        /// megaplan robustness level (default: megaplan.robustness from cloud.yaml).
        #[arg(long)]
        robustness: Option<String>,
        #[command(flatten)]
        overrides: RepoOverrideArgs,
    },
    /// Upload a chain spec and its idea files, then start the chain in tmux session megaplan-chain.
    Chain {
        /// Chain spec (chain.yaml) naming the milestones and their idea files.
        spec: PathBuf,
        /// Folder holding the idea files (default: the spec's folder).
        #[arg(long)]
        idea_dir: Option<PathBuf>,
        /// Delete the remote chain state first (`--reset` as in the original).
        #[arg(long, alias = "reset")]
        fresh: bool,
        /// Pass --no-git-refresh to `chain start` (skip fetching the repo before each milestone).
        #[arg(long)]
        no_git_refresh: bool,
        #[command(flatten)]
        overrides: RepoOverrideArgs,
    },
    /// Remote `megaplan status`, or the chain status with --chain.
    Status {
        /// Chain status: milestone, plan state, runner, sync, PR and what the supervisor would do.
        #[arg(long)]
        chain: bool,
        /// List every megaplan-chain* session with its marker.
        #[arg(long)]
        all: bool,
        /// Chain spec path on the runner (default: the last chain's, from its marker).
        #[arg(long)]
        remote_spec: Option<String>,
        /// Plan name for `megaplan status --plan` (default: the most recent plan).
        #[arg(long)]
        plan: Option<String>,
    },
    /// Runner logs (redacted): the recent lines, or followed with -f.
    Logs {
        /// Keep streaming new lines until interrupted (like `docker logs -f`).
        #[arg(short = 'f', long)]
        follow: bool,
        /// Print the recent lines and exit (the default; kept for scripts written against the
        /// Python tool, which followed by default).
        #[arg(long, conflicts_with = "follow")]
        no_follow: bool,
        /// How many recent lines to show (default 200; with -f, the whole history first).
        #[arg(short = 'n', long)]
        tail: Option<u32>,
        /// Only lines since a duration ago (10m, 2h) or a time (2026-12-01T10:00:00Z).
        #[arg(long)]
        since: Option<String>,
    },
    /// Attach to the runner's tmux session on this terminal (raw, not redacted).
    Attach {
        /// Railway SSH session name (railway only).
        #[arg(long)]
        session: Option<String>,
    },
    /// Run a shell command in the runner; exits with its exit code.
    ///
    /// `exec "ls -la"` runs one command string through the runner's shell (as the original);
    /// `exec -- git log --oneline` runs a word list, each word quoted so its boundaries hold.
    Exec {
        /// The command string, run by the runner's shell.
        #[arg(required_unless_present = "argv", conflicts_with = "argv")]
        command: Option<String>,
        /// Words after `--`, quoted one by one on the daemon side.
        #[arg(last = true, num_args = 1..)]
        argv: Vec<String>,
    },
    /// Run the next step the remote status names.
    Resume {
        /// Plan whose next step to run (default: the most recent plan).
        #[arg(long)]
        plan: Option<String>,
    },
    /// Stop the runner.
    Down,
    /// Remove the runner, its volume (when set) and the persistent deploy dir.
    Destroy {
        /// Do not ask for confirmation.
        #[arg(short = 'y', long)]
        yes: bool,
    },
    /// One supervise tick against the remote chain.
    Supervise {
        /// Required: the chain supervisor is the only one there is.
        #[arg(long)]
        chain: bool,
        /// Chain spec path on the runner (default: the last chain's, from its marker).
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
        /// Interval with a unit: 30s, 5m, 1h, 1h30m, 1d (default 5m).
        #[arg(long, conflicts_with = "cron")]
        every: Option<String>,
        /// Cron expression: 5 fields ("*/5 * * * *", fires at second 0) or 6 with seconds first.
        #[arg(long)]
        cron: Option<String>,
        /// Chain spec path on the runner to supervise (default: the last chain's).
        #[arg(long)]
        remote_spec: Option<String>,
        #[command(flatten)]
        notify: NotifyArgs,
    },
    /// Stop ticking this cloud.yaml.
    Unregister {
        /// A registration key (16 hex, as `registrations` shows) or a cloud.yaml path, instead of
        /// --cloud-yaml.
        target: Option<String>,
    },
    /// How are my chains? Every registration's state, what needs a person first, and what to do.
    #[command(visible_alias = "fleet")]
    Ls {
        /// Redraw after every tick the daemon stores (Ctrl-C to stop).
        #[arg(long)]
        watch: bool,
        /// Show every cell whole instead of fitting the terminal.
        #[arg(long)]
        wide: bool,
        /// Show at most this many registrations (0 for none: only the counts).
        #[arg(short = 'n', long)]
        limit: Option<usize>,
    },
    /// Serve a live web page of the fleet on 127.0.0.1 until Ctrl-C; prints its URL first.
    Dashboard {
        /// Local port (0: any free one). The daemon binds 127.0.0.1 only.
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Print the URL without opening a browser.
        #[arg(long)]
        no_open: bool,
    },
    /// List registrations.
    Registrations,
    /// Stored tick reports, newest first.
    Ticks {
        /// A registration key (16 hex, as `registrations` shows) or a cloud.yaml path, instead of
        /// --cloud-yaml.
        target: Option<String>,
        /// How many reports to show.
        #[arg(short = 'n', long, default_value_t = 20)]
        limit: u32,
        /// All registrations, not only --cloud-yaml.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        filter: TickFilterArgs,
    },
    /// Tick a registered cloud.yaml now.
    Tick {
        /// A registration key (16 hex, as `registrations` shows) or a cloud.yaml path, instead of
        /// --cloud-yaml.
        target: Option<String>,
    },
    /// Show the last few stored tick reports, then follow new ones as they are stored.
    Watch {
        /// All registrations, not only --cloud-yaml.
        #[arg(long)]
        all: bool,
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
    Explain,
    /// The notification outbox: what was sent, is pending, or was given up.
    Notifications {
        /// How many to show.
        #[arg(short = 'n', long, default_value_t = 20)]
        limit: u32,
        /// All registrations, not only --cloud-yaml.
        #[arg(long)]
        all: bool,
    },
    /// Shell completion script for bash, zsh, fish, elvish or powershell, on stdout.
    Completions {
        /// Shell to complete in.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// The man page (roff) on stdout: `megaplan-cloudctl man | man -l -`.
    Man,
    /// Client and daemon versions and API versions.
    Version,
    /// Check this machine for what the Python `cloud` CLI left behind: its last-chain markers
    /// and the cloud.yaml files they belong to, which are importable, which fields do not map.
    Doctor,
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
    Status,
}

/// `5m` → 300, `1h30m` → 5400: one or more `<number><unit>` parts, units s, m, h, d. A bare
/// number is refused (is `5` five seconds or five minutes?). Kept here (not in the api crate)
/// because only the client parses it.
pub fn parse_every(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let hint = "use a number with a unit, e.g. 30s, 5m, 1h or 1h30m";
    if t.is_empty() {
        return Err(format!("--every {text:?}: {hint}"));
    }
    if t.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "--every {text:?}: a bare number has no unit; write {t}s for seconds or {t}m for minutes"
        ));
    }
    let mut total: u64 = 0;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (num, after) = rest.split_at(digits);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("--every {text:?}: {hint}"))?;
        let mult = match unit {
            "s" | "sec" | "secs" => 1,
            "m" | "min" | "mins" => 60,
            "h" | "hr" | "hour" | "hours" => 3600,
            "d" | "day" | "days" => 86400,
            _ => return Err(format!("--every {text:?}: unknown unit {unit:?}; {hint}")),
        };
        total = n
            .checked_mul(mult)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("--every {text:?}: too long"))?;
        rest = next;
    }
    if total == 0 {
        return Err(format!(
            "--every {text:?}: the interval must be longer than 0s"
        ));
    }
    Ok(total)
}

/// The cron expression the daemon stores: 6 fields, seconds first. A 5-field expression (the
/// form crontab(5) and everyone else writes) fires at second 0 of the minutes it names.
pub fn normalise_cron(text: &str) -> Result<String, String> {
    let fields: Vec<&str> = text.split_whitespace().collect();
    match fields.len() {
        5 => Ok(format!("0 {}", fields.join(" "))),
        6 => Ok(fields.join(" ")),
        n => Err(format!(
            "--cron {text:?}: {n} fields; write 5 (\"*/5 * * * *\": minute hour day month weekday) or 6 with seconds first (\"0 */5 * * * *\")"
        )),
    }
}

#[cfg(test)]
mod schedule_and_help_tests {
    use super::*;

    #[test]
    fn every_takes_units_and_refuses_bare_numbers() {
        assert_eq!(parse_every("30s").unwrap(), 30);
        assert_eq!(parse_every("5m").unwrap(), 300);
        assert_eq!(parse_every("5min").unwrap(), 300);
        assert_eq!(parse_every("1h30m").unwrap(), 5400);
        assert_eq!(parse_every("1d").unwrap(), 86400);
        let bare = parse_every("5").unwrap_err();
        assert!(bare.contains("5s") && bare.contains("5m"), "{bare}");
        assert!(parse_every("5x").is_err());
        assert!(parse_every("0s").is_err());
        assert!(parse_every("").is_err());
    }

    #[test]
    fn five_field_cron_fires_at_second_zero() {
        assert_eq!(normalise_cron("*/5 * * * *").unwrap(), "0 */5 * * * *");
        assert_eq!(normalise_cron("0 */5 * * * *").unwrap(), "0 */5 * * * *");
        assert!(normalise_cron("* *").unwrap_err().contains("5"));
    }

    #[test]
    fn every_flag_and_argument_has_help() {
        use clap::CommandFactory;
        fn check(cmd: &clap::Command, path: &str) {
            for arg in cmd.get_arguments() {
                if ["help", "version"].contains(&arg.get_id().as_str()) {
                    continue;
                }
                assert!(
                    arg.get_help().is_some(),
                    "{path} {} has no help text",
                    arg.get_id()
                );
            }
            for sub in cmd.get_subcommands() {
                assert!(
                    sub.get_about().is_some(),
                    "{path} {} has no about",
                    sub.get_name()
                );
                check(sub, &format!("{path} {}", sub.get_name()));
            }
        }
        check(&Cli::command(), "megaplan-cloudctl");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("megaplan-cloudctl").chain(args.iter().copied()))
    }

    /// Every subcommand with its own arguments; the global flags go before, between and after.
    const SUBCOMMANDS: &[&[&str]] = &[
        &["init", "--force"],
        &["build"],
        &["deploy"],
        &[
            "bootstrap",
            "idea.md",
            "--plan-name",
            "p",
            "--repo-branch",
            "b",
        ],
        &["chain", "epic/chain.yaml", "--idea-dir", "ideas", "--fresh"],
        &["status", "--chain", "--remote-spec", "/w/chain.yaml"],
        &["logs", "--no-follow"],
        &["attach", "--session", "s"],
        &["exec", "ls -la"],
        &["resume", "--plan", "p"],
        &["down"],
        &["destroy", "--yes"],
        &["supervise", "--chain", "--dry-run"],
        &["chains"],
        &["register", "--every", "5m"],
        &["unregister"],
        &["registrations", "--json"],
        &["ticks", "--limit", "3"],
        &["tick"],
        &["watch", "--json"],
        &["pause", "--reason", "r"],
        &["unpause"],
        &["explain", "--json"],
        &["notifications", "--limit", "2"],
        &["doctor"],
        &["daemon", "status", "--json"],
    ];

    #[test]
    fn global_flags_work_before_and_after_every_subcommand() {
        let globals = ["--cloud-yaml", "/p/cloud.yaml", "--socket", "/s.sock"];
        for sub in SUBCOMMANDS {
            let after: Vec<&str> = sub.iter().chain(globals.iter()).copied().collect();
            let before: Vec<&str> = globals.iter().chain(sub.iter()).copied().collect();
            // The original's habit: the flag right after the subcommand name.
            let mut between: Vec<&str> = vec![sub[0]];
            if sub[0] == "daemon" {
                between.push(sub[1]);
            }
            between.extend_from_slice(&globals);
            between.extend(sub.iter().skip(between.len() - globals.len()));
            for argv in [after, before, between] {
                let cli = parse(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
                assert_eq!(
                    cli.cloud_yaml.as_deref(),
                    Some(std::path::Path::new("/p/cloud.yaml")),
                    "{argv:?}"
                );
                assert_eq!(
                    cli.socket.as_deref(),
                    Some(std::path::Path::new("/s.sock")),
                    "{argv:?}"
                );
            }
        }
    }

    #[test]
    fn exec_takes_one_command_string_and_leaves_trailing_flags_alone() {
        let cli = parse(&["exec", "ls -la", "--cloud-yaml", "/p/cloud.yaml"]).unwrap();
        assert_eq!(
            cli.cloud_yaml.as_deref(),
            Some(std::path::Path::new("/p/cloud.yaml"))
        );
        match cli.command {
            Cmd::Exec { command, argv } => {
                assert_eq!(command.as_deref(), Some("ls -la"));
                assert!(argv.is_empty());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn exec_argv_form_keeps_word_boundaries_after_double_dash() {
        let cli = parse(&[
            "exec",
            "--cloud-yaml",
            "/p/cloud.yaml",
            "--",
            "printf",
            "%s\\n",
            "a b",
            "--cloud-yaml",
        ])
        .unwrap();
        assert_eq!(
            cli.cloud_yaml.as_deref(),
            Some(std::path::Path::new("/p/cloud.yaml"))
        );
        match cli.command {
            Cmd::Exec { command, argv } => {
                assert_eq!(command, None);
                assert_eq!(argv, ["printf", "%s\\n", "a b", "--cloud-yaml"]);
            }
            other => panic!("{other:?}"),
        }
        // Neither form, or both, is an argument error.
        assert!(parse(&["exec"]).is_err());
        assert!(parse(&["exec", "ls", "--", "ls"]).is_err());
        // Several loose words are refused (the original takes one command string).
        assert!(parse(&["exec", "ls", "-la"]).is_err());
    }

    #[test]
    fn chain_accepts_the_originals_reset_alias() {
        match parse(&["chain", "c.yaml", "--reset"]).unwrap().command {
            Cmd::Chain { fresh, .. } => assert!(fresh),
            other => panic!("{other:?}"),
        }
    }
}
