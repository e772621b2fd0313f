//! Command-line surface of `megaplan-cloudctl`: the seed's cloud commands plus the daemon's own.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// EXIT STATUS, ENVIRONMENT, FILES and EXAMPLES of `--help` and the man page.
const MAN_SECTIONS: &str = "\
EXIT STATUS:
  0   the command succeeded
  1   it failed: the error names the cause and the fix (also a failed tick)
  2   usage: a bad flag, a bad --every/--cron value, a bad --jq filter
  3   watch / ls --watch: the daemon closed the stream (it stopped or restarted)
  69  megaplan-cloudd cannot be reached (EX_UNAVAILABLE)
  exec: the remote command's own exit status

ENVIRONMENT:
  MEGAPLAN_CLOUDD_SOCKET  the daemon's socket (also --socket)
  NO_COLOR                no colour on a terminal
  COMPLETE                set by the shell completion code (see `completions`)
  the secret variables a cloud.yaml names are read from this environment and handed over

FILES:
  ./cloud.yaml (or the project root's)              the cloud.yaml of a command
  $XDG_RUNTIME_DIR/megaplan-cloudd/cloudd.sock       the daemon's socket, else
  ~/.megaplan/cloud/cloudd.sock

EXAMPLES:
  megaplan-cloudctl ls                       how are my chains? what needs me?
  megaplan-cloudctl status --chain           where this chain is and what happens next
  megaplan-cloudctl register --every 90m     tick this cloud.yaml every 90 minutes
  megaplan-cloudctl pause 3f2a --reason fix  pause the registration whose key starts 3f2a
  megaplan-cloudctl ls --jq '.registrations[] | select(.state == \"needs_person\") | .key'";

#[derive(Debug, Parser)]
#[command(
    name = "megaplan-cloudctl",
    version,
    about = "Drive megaplan cloud runners through the megaplan-cloudd daemon",
    long_about = "Every cloud command asks megaplan-cloudd over its Unix socket and renders the answer: \
                  for a person on a terminal (`ls` for the whole fleet), the JSON document through a \
                  pipe or with --json (--jq to filter it), exit 0 on success.",
    after_long_help = MAN_SECTIONS
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
    /// Filter the JSON answer with a jq expression (implies --json); strings print raw.
    #[arg(long, global = true, value_name = "EXPR")]
    pub jq: Option<String>,
    /// No confirmations on a terminal (results and errors are still printed).
    #[arg(short = 'q', long, global = true)]
    pub quiet: bool,
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
        /// The provider the scaffold is for: railway (default), local, ssh or kubernetes
        /// (which adds a commented `kubernetes:` section).
        #[arg(long, value_parser = megaplan_cloud_api::SCAFFOLD_PROVIDERS)]
        provider: Option<String>,
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
        /// List every megaplan-chain* session on this runner with its marker (`--all` is the
        /// older name, kept for scripts; elsewhere `--all` means every registration).
        #[arg(long = "sessions", alias = "all")]
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
        /// Interval with a unit: 30s, 5m, 45m, 1h30m, 90m, 5h, 1d (default 5m). Any interval of a
        /// minute or more works; cron is used where it can say it.
        #[arg(long, conflicts_with = "cron")]
        every: Option<String>,
        /// Cron expression: 5 fields ("*/5 * * * *", fires at second 0), 6 with seconds
        /// first, or @hourly, @daily, @weekly, @monthly, @yearly; in --tz.
        #[arg(long)]
        cron: Option<String>,
        /// The time zone of --cron, an IANA name (Europe/Berlin, America/New_York, UTC);
        /// default: this machine's zone. Wall-clock times hold across daylight saving.
        #[arg(long, requires = "cron")]
        tz: Option<String>,
        /// Chain spec path on the runner to supervise (default: the last chain's).
        #[arg(long)]
        remote_spec: Option<String>,
        #[command(flatten)]
        notify: NotifyArgs,
    },
    /// Stop ticking this cloud.yaml.
    Unregister {
        /// A registration key or a unique prefix of one (as `ls` shows), or a cloud.yaml path,
        /// instead of --cloud-yaml.
        #[arg(add = clap_complete::ArgValueCompleter::new(crate::complete::registration_keys))]
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
    /// List registrations: schedule, last and next tick, what the watcher knows.
    Registrations {
        /// Show every column and every cell whole instead of fitting the terminal.
        #[arg(long)]
        wide: bool,
        /// Show at most this many (0 for none).
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
    /// Stored tick reports, newest first.
    Ticks {
        /// A registration key or a unique prefix of one (as `ls` shows), or a cloud.yaml path,
        /// instead of --cloud-yaml.
        #[arg(add = clap_complete::ArgValueCompleter::new(crate::complete::registration_keys))]
        target: Option<String>,
        /// How many reports to show (0 for none).
        #[arg(short = 'n', long, default_value_t = 20)]
        limit: u32,
        /// All registrations, not only --cloud-yaml.
        #[arg(long)]
        all: bool,
        /// Show every cell whole instead of fitting the terminal.
        #[arg(long)]
        wide: bool,
        #[command(flatten)]
        filter: TickFilterArgs,
    },
    /// Tick a registered cloud.yaml now.
    Tick {
        /// A registration key or a unique prefix of one (as `ls` shows), or a cloud.yaml path,
        /// instead of --cloud-yaml.
        #[arg(add = clap_complete::ArgValueCompleter::new(crate::complete::registration_keys))]
        target: Option<String>,
    },
    /// Show the last few stored tick reports, then follow new ones as they are stored.
    Watch {
        /// A registration key or a unique prefix of one (as `ls` shows), or a cloud.yaml path,
        /// instead of --cloud-yaml.
        #[arg(add = clap_complete::ArgValueCompleter::new(crate::complete::registration_keys))]
        target: Option<String>,
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
        /// A registration key or a unique prefix of one (as `ls` shows), or a cloud.yaml path,
        /// instead of --cloud-yaml.
        #[arg(add = clap_complete::ArgValueCompleter::new(crate::complete::registration_keys))]
        target: Option<String>,
        /// Why (shown in every refused tick and in `registrations`).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Lift the pause of this registration.
    Unpause {
        /// A registration key or a unique prefix of one (as `ls` shows), or a cloud.yaml path,
        /// instead of --cloud-yaml.
        #[arg(add = clap_complete::ArgValueCompleter::new(crate::complete::registration_keys))]
        target: Option<String>,
    },
    /// Clear the crash-loop quarantine of this registration (its driver died right after each
    /// of its last restarts): the supervisor may restart it again.
    Unquarantine {
        /// A registration key or a unique prefix of one (as `ls` shows), or a cloud.yaml path,
        /// instead of --cloud-yaml.
        #[arg(add = clap_complete::ArgValueCompleter::new(crate::complete::registration_keys))]
        target: Option<String>,
    },
    /// Explain the last stored tick: facts observed, the rule that matched, action, refusal.
    Explain {
        /// A registration key or a unique prefix of one (as `ls` shows), or a cloud.yaml path,
        /// instead of --cloud-yaml.
        #[arg(add = clap_complete::ArgValueCompleter::new(crate::complete::registration_keys))]
        target: Option<String>,
    },
    /// The notification outbox: what was sent, is pending, or was given up;
    /// `notifications test` sends a test to every sink and prints each result.
    Notifications {
        #[command(subcommand)]
        action: Option<NotificationsCmd>,
        /// A registration key or a unique prefix of one (as `ls` shows), or a cloud.yaml path,
        /// instead of --cloud-yaml.
        #[arg(add = clap_complete::ArgValueCompleter::new(crate::complete::registration_keys))]
        target: Option<String>,
        /// How many to show.
        #[arg(short = 'n', long, default_value_t = 20)]
        limit: u32,
        /// All registrations, not only --cloud-yaml.
        #[arg(long)]
        all: bool,
    },
    /// Shell completion for bash, zsh, fish, elvish or powershell, on stdout: load it with
    /// `source <(megaplan-cloudctl completions bash)`. It asks this program on every TAB, so
    /// flags complete anywhere and registration arguments complete to the daemon's keys.
    Completions {
        /// Shell to complete in.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// The man page (roff) on stdout: `megaplan-cloudctl man | man -l -`; with --dir, one page
    /// per subcommand (megaplan-cloudctl-pause.1, ...) written into DIR.
    Man {
        /// Write megaplan-cloudctl.1 and one megaplan-cloudctl-<command>.1 per subcommand here.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Client and daemon versions and API versions.
    Version,
    /// Check this machine for what the Python `cloud` CLI left behind: its last-chain markers
    /// and the cloud.yaml files they belong to, which are importable, which fields do not map.
    Doctor {
        /// Also send a test notification to every sink and check each answers.
        #[arg(long)]
        send_test: bool,
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

/// `notifications test`.
#[derive(Debug, Subcommand)]
pub enum NotificationsCmd {
    /// Send a test notification to every sink (the daemon's notify.yaml sinks and this
    /// registration's, or every registration's outside a project) and print each result:
    /// sink, ok or the error, HTTP or exit status, time taken. Exit 1 when any sink failed.
    Test {
        /// A registration key or a unique prefix of one, or a cloud.yaml path, instead of
        /// --cloud-yaml.
        #[arg(add = clap_complete::ArgValueCompleter::new(crate::complete::registration_keys))]
        target: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum DaemonCmd {
    /// Version, pid, uptime, socket, database, registrations, tick counters.
    Status,
}

/// `5m` → 300, `1h30m` → 5400, `90m`, `5h`, `1d`: a duration with units, read by the tree's
/// one duration parser (`megaplan_cloud_api::duration`). A bare number is refused (is `5` five seconds or five
/// minutes?), and so is anything under a second.
pub fn parse_every(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let hint = "use a number with a unit, e.g. 30s, 5m, 45m, 1h30m, 90m, 5h or 1d";
    if !t.is_empty() && t.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "--every {text:?}: a bare number has no unit; write {t}s for seconds or {t}m for minutes"
        ));
    }
    use megaplan_cloud_api::duration::{DurationError, parse};
    let d = parse(t, false).map_err(|e| match e {
        DurationError::NotADuration { reason, .. } => format!("--every {text:?}: {reason}; {hint}"),
        zero => format!("--every {zero}; {hint}"),
    })?;
    match d.as_secs() {
        0 => Err(format!(
            "--every {text:?}: the interval must be at least a second; {hint}"
        )),
        n => Ok(n),
    }
}

/// Does `logs --since` read as something the runner's `docker logs --since` takes: a duration
/// in hours, minutes and seconds (10m, 2h, 1h30m), an RFC 3339 time, a date, or Unix seconds?
pub fn is_since(text: &str) -> bool {
    let t = text.trim();
    !t.is_empty()
        // Durations in the units docker's `--since` reads (Go's: h, m, s): no days.
        && ((megaplan_cloud_api::duration::parse(t, false).is_ok()
            && t.chars().all(|c| c.is_ascii_digit() || "hms.".contains(c)))
            || chrono::DateTime::parse_from_rfc3339(t).is_ok()
            || chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d").is_ok()
            || t.chars().all(|c| c.is_ascii_digit()))
}

/// The zone a `--cron` runs in: `--tz` as given, else this machine's zone (its IANA name; UTC
/// when the machine names none).
pub fn cron_zone(tz: Option<&str>) -> Result<String, String> {
    match tz.map(str::trim) {
        Some(name) => jiff::tz::TimeZone::get(name)
            .map(|_| name.to_string())
            .map_err(|e| {
                format!("--tz {name:?}: not a time zone ({e}); use an IANA name such as Europe/Berlin or UTC")
            }),
        None => Ok(jiff::tz::TimeZone::system()
            .iana_name()
            .unwrap_or("UTC")
            .to_string()),
    }
}

/// The cron expression sent to the daemon for `zone`: as is in UTC (what stored rows always
/// meant), else with cronie's `CRON_TZ=<zone>` in front.
pub fn cron_in_zone(expr: &str, zone: &str) -> String {
    match zone {
        "UTC" | "Etc/UTC" | "Etc/UCT" | "UCT" | "Zulu" | "Etc/Zulu" => expr.to_string(),
        _ => format!("CRON_TZ={zone} {expr}"),
    }
}

/// The cron expression the daemon stores: 6 fields, seconds first. A 5-field expression (the
/// form crontab(5) and everyone else writes) fires at second 0 of the minutes it names.
pub fn normalise_cron(text: &str) -> Result<String, String> {
    // crontab(5)'s nicknames, at second 0 of the first minute (UTC).
    match text.trim() {
        "@hourly" => return Ok("0 0 * * * *".into()),
        "@daily" | "@midnight" => return Ok("0 0 0 * * *".into()),
        "@weekly" => return Ok("0 0 0 * * SUN".into()),
        "@monthly" => return Ok("0 0 0 1 * *".into()),
        "@yearly" | "@annually" => return Ok("0 0 0 1 1 *".into()),
        t if t.starts_with('@') => {
            return Err(format!(
                "--cron {text:?}: unknown nickname; use @hourly, @daily, @weekly, @monthly or @yearly, or 5 fields"
            ));
        }
        _ => {}
    }
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
    fn a_cron_carries_its_zone_unless_it_is_utc() {
        assert_eq!(cron_zone(Some("Europe/Berlin")).unwrap(), "Europe/Berlin");
        assert!(
            cron_zone(Some("Mars/Olympus"))
                .unwrap_err()
                .starts_with("--tz \"Mars/Olympus\"")
        );
        assert_eq!(
            cron_in_zone("0 0 9 * * *", "Europe/Berlin"),
            "CRON_TZ=Europe/Berlin 0 0 9 * * *"
        );
        assert_eq!(cron_in_zone("0 0 9 * * *", "UTC"), "0 0 9 * * *");
    }

    #[test]
    fn every_takes_units_and_refuses_bare_numbers() {
        assert_eq!(parse_every("30s").unwrap(), 30);
        assert_eq!(parse_every("5m").unwrap(), 300);
        assert_eq!(parse_every("5min").unwrap(), 300);
        assert_eq!(parse_every("1h30m").unwrap(), 5400);
        assert_eq!(parse_every("1d").unwrap(), 86400);
        assert_eq!(parse_every("90m").unwrap(), 5400);
        assert_eq!(parse_every("45m").unwrap(), 2700);
        assert_eq!(parse_every("7m").unwrap(), 420);
        assert_eq!(parse_every("5h").unwrap(), 18_000);
        assert_eq!(parse_every("1h 30m").unwrap(), 5400);
        let bare = parse_every("5").unwrap_err();
        assert!(bare.contains("5s") && bare.contains("5m"), "{bare}");
        assert!(parse_every("5x").is_err());
        assert!(parse_every("0s").is_err());
        assert!(parse_every("").is_err());
    }

    #[test]
    fn since_takes_durations_times_and_dates_only() {
        for ok in [
            "10m",
            "2h",
            "1h30m",
            "2026-12-01T10:00:00Z",
            "2026-12-01",
            "1764583200",
        ] {
            assert!(is_since(ok), "{ok}");
        }
        for bad in ["banana", "", "10 parsecs", "2026-13-45", "1d"] {
            assert!(!is_since(bad), "{bad}");
        }
    }

    #[test]
    fn five_field_cron_fires_at_second_zero() {
        assert_eq!(normalise_cron("*/5 * * * *").unwrap(), "0 */5 * * * *");
        assert_eq!(normalise_cron("0 */5 * * * *").unwrap(), "0 */5 * * * *");
        assert!(normalise_cron("* *").unwrap_err().contains("5"));
        assert_eq!(normalise_cron("@hourly").unwrap(), "0 0 * * * *");
        assert_eq!(normalise_cron("@daily").unwrap(), "0 0 0 * * *");
        assert_eq!(normalise_cron("@weekly").unwrap(), "0 0 0 * * SUN");
        assert!(normalise_cron("@often").unwrap_err().contains("@hourly"));
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
