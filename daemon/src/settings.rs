//! Daemon settings: command-line flags and environment, resolved once at start-up.
//! Paths come from `megaplan_cloud_api::paths` so the daemon and the client agree on them.

use clap::Parser;
use megaplan_cloud_api::paths::{self, SocketSource};
use std::path::PathBuf;
use std::time::Duration;

/// EXIT STATUS, ENVIRONMENT, FILES and EXAMPLES of `--help` and megaplan-cloudd(8).
const MAN_SECTIONS: &str = "\
EXIT STATUS:
  0  stopped cleanly on SIGTERM or SIGINT (running ticks finished or were cancelled
     after --shutdown-grace)
  1  could not start or serve: the socket is held by another megaplan-cloudd, the state
     root or database is unusable (the cause and the fix are said on stderr)
  2  usage: an unknown flag or a bad value (a duration such as 90s, 10m, 1h30m; a size
     such as 256MiB)

ENVIRONMENT:
  MEGAPLAN_CLOUDD_SOCKET       the socket (also --socket)
  MEGAPLAN_CLOUD_HOME          the state root (default ~/.megaplan/cloud)
  MEGAPLAN_CLOUDD_DB, MEGAPLAN_CLOUDD_MAX_TICKS, MEGAPLAN_CLOUDD_TICK_TIMEOUT, ...
                               each flag's variable, as --help lists them
  RUST_LOG                     log filter (default warn,megaplan_cloudd=info)
  XDG_RUNTIME_DIR              where the default socket lives
  JOURNAL_STREAM               set by systemd: log lines carry no second timestamp

FILES:
  $XDG_RUNTIME_DIR/megaplan-cloudd/cloudd.sock  the socket, else
  ~/.megaplan/cloud/cloudd.sock
  ~/.megaplan/cloud/cloudd.db                    registrations, tick reports, outbox
  ~/.megaplan/cloud/logs/cloudd.*.log            daily logs, 14 kept
  ~/.megaplan/cloud/notify.yaml                  notification sinks (optional)
  systemd/megaplan-cloudd.service                the user unit (docs/operations.md)

EXAMPLES:
  megaplan-cloudd                                serve on the default socket
  systemctl --user enable --now megaplan-cloudd  run it as a user service
  megaplan-cloudd --tick-timeout 5m --max-db-size 64MiB
  megaplan-cloudd --man | man -l -               read this page
  megaplan-cloudctl daemon status                ask the running daemon how it is";

#[derive(Debug, Clone, Parser)]
#[command(
    name = "megaplan-cloudd",
    version,
    about = "Resident daemon for megaplan cloud runners: registry, held ssh sessions, scheduled supervise ticks",
    after_long_help = MAN_SECTIONS
)]
pub struct Args {
    /// Print the manual page megaplan-cloudd(8) (roff) on stdout and exit.
    #[arg(long)]
    pub man: bool,
    /// Unix socket to serve on [env: MEGAPLAN_CLOUDD_SOCKET; default $XDG_RUNTIME_DIR/megaplan-cloudd/cloudd.sock,
    /// else ~/.megaplan/cloud/cloudd.sock].
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// SQLite database [default: <state root>/cloudd.db].
    #[arg(long, env = "MEGAPLAN_CLOUDD_DB")]
    pub db: Option<PathBuf>,
    /// At most this many ticks run at once across all registrations.
    #[arg(long, env = "MEGAPLAN_CLOUDD_MAX_TICKS", default_value_t = 8)]
    pub max_concurrent_ticks: usize,
    /// Deadline of one tick (remote commands still running then are killed), e.g. 90s, 10m.
    #[arg(long, env = "MEGAPLAN_CLOUDD_TICK_TIMEOUT", default_value = "10m", value_parser = parse_duration)]
    pub tick_timeout: Duration,
    /// Deadline of one tick's observation of its runner (a healthy one takes well under a
    /// second on a warm session); an observation past it ends the tick and backs the
    /// registration off. Capped by --tick-timeout.
    #[arg(long, env = "MEGAPLAN_CLOUDD_OBSERVE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub observe_timeout: Duration,
    /// At most this many ticks run at once on one host (an ssh target, the local Docker, a
    /// Railway project); capped by --max-concurrent-ticks.
    #[arg(long, env = "MEGAPLAN_CLOUDD_MAX_TICKS_PER_HOST", default_value_t = 8)]
    pub max_ticks_per_host: usize,
    /// Deadline of one remote command run on behalf of a client command (not logs --follow / build).
    #[arg(long, env = "MEGAPLAN_CLOUDD_COMMAND_TIMEOUT", default_value = "30m", value_parser = parse_duration)]
    pub command_timeout: Duration,
    /// Tick reports kept per registration (older ones are deleted).
    #[arg(long, env = "MEGAPLAN_CLOUDD_KEEP_TICKS", default_value_t = 500)]
    pub keep_ticks: u32,
    /// Cap on the database's size (e.g. 256MiB, 64KiB, 1GiB; at least 64KiB). Above it the oldest
    /// tick reports and delivered/failed notifications are pruned, oldest first (never the
    /// newest tick of a registration, an unwatched tick or an undelivered notification).
    #[arg(long, env = "MEGAPLAN_CLOUDD_MAX_DB_SIZE", default_value = "256MiB", value_parser = parse_size)]
    pub max_db_size: u64,
    /// ssh client config passed as `ssh -F` (default: the user's ~/.ssh/config).
    #[arg(long, env = "MEGAPLAN_CLOUDD_SSH_CONFIG")]
    pub ssh_config: Option<PathBuf>,
    /// How long running ticks may take to finish after SIGTERM before they are cancelled.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// Do not write the daily log file under <state root>/logs (stderr only).
    #[arg(long)]
    pub no_log_file: bool,
    /// At most this many client connections are served at once; more are closed at accept.
    #[arg(long, env = "MEGAPLAN_CLOUDD_MAX_CONNECTIONS", default_value_t = 256)]
    pub max_connections: usize,
    /// A request's head must arrive within this (idle keep-alive connections are closed then).
    #[arg(long, env = "MEGAPLAN_CLOUDD_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,
    /// A request's body must arrive within this.
    #[arg(long, env = "MEGAPLAN_CLOUDD_BODY_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub body_timeout: Duration,
    /// Notification config file: sinks, stall_after, retry policy (docs/notifications.md)
    /// [default: <state root>/notify.yaml; missing means defaults and no global sinks].
    #[arg(long, env = "MEGAPLAN_CLOUDD_NOTIFY_CONFIG")]
    pub notify_config: Option<PathBuf>,
}

/// megaplan-cloudd(8): the flags, then EXIT STATUS, ENVIRONMENT, FILES and EXAMPLES as
/// sections of their own (not clap's one "extra" block), as a roff page.
pub fn man_page(out: &mut dyn std::io::Write) -> std::io::Result<()> {
    let cmd = <Args as clap::CommandFactory>::command().after_long_help(None::<&str>);
    let man = clap_mangen::Man::new(cmd).section("8");
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    out.write_all(man_sections_roff(MAN_SECTIONS).as_bytes())?;
    man.render_version_section(out)
}

/// `HEADING:` blocks of `--help` text as roff sections, their lines kept as written.
fn man_sections_roff(text: &str) -> String {
    let mut roff = String::new();
    for block in text.split("\n\n") {
        let mut lines = block.lines();
        let Some(heading) = lines.next() else {
            continue;
        };
        roff.push_str(&format!(".SH \"{}\"\n.nf\n", heading.trim_end_matches(':')));
        for line in lines {
            let escaped = line.replace('\\', "\\e").replace('-', "\\-");
            // A line starting with `.` or `'` would be read as a request.
            if escaped.starts_with(['.', '\'']) {
                roff.push_str("\\&");
            }
            roff.push_str(&escaped);
            roff.push('\n');
        }
        roff.push_str(".fi\n");
    }
    roff
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub socket: PathBuf,
    pub socket_source: SocketSource,
    pub cloud_home: PathBuf,
    pub db: PathBuf,
    pub log_dir: PathBuf,
    /// Private folder for ssh ControlMaster sockets (short path: sockaddr_un is 108 bytes).
    pub ssh_control_dir: PathBuf,
    pub ssh_config: Option<PathBuf>,
    pub max_concurrent_ticks: usize,
    pub tick_timeout: Duration,
    pub observe_timeout: Duration,
    pub max_ticks_per_host: usize,
    pub command_timeout: Duration,
    pub keep_ticks: u32,
    /// `--max-db-size` in bytes.
    pub max_db_bytes: u64,
    pub shutdown_grace: Duration,
    pub log_file: bool,
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub notify_config: PathBuf,
}

impl Settings {
    pub fn from_args(args: Args) -> Settings {
        let (socket, socket_source) = paths::resolve_socket(args.socket.as_deref());
        let cloud_home = paths::cloud_home();
        let cwd = paths::current_dir();
        let db = args
            .db
            .map(|p| paths::absolutize(&p, &cwd))
            .unwrap_or_else(|| cloud_home.join("cloudd.db"));
        let socket_dir = socket
            .parent()
            .map(PathBuf::from)
            .unwrap_or_else(|| cloud_home.clone());
        let notify_config = args
            .notify_config
            .map(|p| paths::absolutize(&p, &cwd))
            .unwrap_or_else(|| cloud_home.join("notify.yaml"));
        Settings {
            ssh_control_dir: socket_dir.join("ssh"),
            log_dir: cloud_home.join("logs"),
            socket,
            socket_source,
            cloud_home,
            db,
            ssh_config: args.ssh_config.map(|p| paths::absolutize(&p, &cwd)),
            max_concurrent_ticks: args.max_concurrent_ticks.max(1),
            tick_timeout: args.tick_timeout,
            observe_timeout: args.observe_timeout,
            max_ticks_per_host: args.max_ticks_per_host.max(1),
            command_timeout: args.command_timeout,
            keep_ticks: args.keep_ticks.max(1),
            max_db_bytes: args.max_db_size,
            shutdown_grace: args.shutdown_grace,
            log_file: !args.no_log_file,
            max_connections: args.max_connections.max(1),
            header_timeout: args.header_timeout,
            body_timeout: args.body_timeout,
            notify_config,
        }
    }
}

pub use megaplan_cloud_api::duration::DurationError;

/// A duration flag: `90s`, `5m`, `1h30m`, `2d`, or plain seconds; longer than zero. The tree's
/// one parser (`megaplan_cloud_api::duration`).
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    megaplan_cloud_api::duration::parse_positive(text, true)
}

/// The smallest `--max-db-size`: below it the empty schema alone would be over the cap.
pub const MIN_DB_SIZE: u64 = 64 * 1024;

/// Why a size flag was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("{0:?} is not a size; use e.g. 256MiB, 64KiB, 1GiB or a number of bytes")]
    NotASize(String),
    #[error("{0:?} is below the smallest database cap of 64KiB; use e.g. 256MiB")]
    TooSmall(String),
}

/// `256MiB`, `64KiB`, `1GiB`, `512K`, `2M`, `1G` (binary units, case-insensitive, optional
/// `B`/`iB`), or plain bytes; at least [`MIN_DB_SIZE`].
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let t = text.trim();
    let (num, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| SizeError::NotASize(text.to_string()))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(SizeError::NotASize(text.to_string())),
    };
    let bytes = n
        .checked_mul(1u64 << shift)
        .ok_or_else(|| SizeError::NotASize(text.to_string()))?;
    if bytes < MIN_DB_SIZE {
        return Err(SizeError::TooSmall(text.to_string()));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256MiB").unwrap(), 256 << 20);
        assert_eq!(parse_size("64KiB").unwrap(), 64 << 10);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert_eq!(parse_size("100000").unwrap(), 100_000);
        assert_eq!(
            parse_size("1KiB").unwrap_err().to_string(),
            "\"1KiB\" is below the smallest database cap of 64KiB; use e.g. 256MiB"
        );
        assert!(matches!(parse_size("12xb"), Err(SizeError::NotASize(_))));
        assert!(matches!(parse_size("MiB"), Err(SizeError::NotASize(_))));
        assert!(matches!(
            parse_size("99999999999999G"),
            Err(SizeError::NotASize(_))
        ));
    }

    #[test]
    fn the_man_page_has_its_own_sections() {
        let mut page = Vec::new();
        man_page(&mut page).unwrap();
        let page = String::from_utf8(page).unwrap();
        assert!(page.starts_with(".ie"), "{page}");
        assert!(page.contains(".TH megaplan-cloudd 8"), "{page}");
        for section in ["EXIT STATUS", "ENVIRONMENT", "FILES", "EXAMPLES"] {
            assert!(
                page.contains(&format!(".SH \"{section}\"")),
                "no {section}: {page}"
            );
        }
        assert!(page.contains("\\-\\-tick\\-timeout"), "{page}");
        assert!(!page.contains(".SH EXTRA"), "{page}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert_eq!(parse_duration("0s"), Err(DurationError::Zero("0s".into())));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert!(parse_duration("5x").is_err());
        assert!(
            parse_duration("m")
                .unwrap_err()
                .to_string()
                .starts_with("\"m\" is not a duration")
        );
    }
}
