//! `megaplan-cloudd`: parse flags, set up logging, run the daemon.

use clap::Parser;
use megaplan_cloudd::settings::{Args, Settings};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// True when stderr is the journal: systemd sets `JOURNAL_STREAM=<device>:<inode>` of the stream
/// it connected, and that is still our stderr only when the two match.
fn under_journald() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    // fstat(2) on fd 2 itself (the journal's stream is a socket, which cannot be re-opened by
    // path). ManuallyDrop: the File must not close stderr.
    use std::os::fd::FromRawFd;
    // SAFETY: fd 2 is open for the life of the process; the File is never dropped.
    let stderr = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(2) });
    match stderr.metadata() {
        Ok(m) => m.dev() == dev && m.ino() == ino,
        Err(_) => false,
    }
}

fn main() {
    let args = Args::parse();
    if args.man {
        let code = match megaplan_cloudd::settings::man_page(&mut std::io::stdout()) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("megaplan-cloudd: cannot write the man page: {e}");
                1
            }
        };
        std::process::exit(code);
    }
    let settings = Settings::from_args(args);

    // stderr always (journald/launchd capture it); plus a daily rolling file under the state
    // root, keeping 14 files so logs cannot grow without bound.
    // Libraries (sqlx, hyper) log at WARN unless RUST_LOG says otherwise.
    let filter = || {
        EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| EnvFilter::new("warn,megaplan_cloudd=info"))
    };
    // Colours only on a terminal: the journal and launchd's log file get plain text.
    let stderr_fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    // Under systemd (JOURNAL_STREAM names the journal's stream) the journal stamps every line
    // itself: a second timestamp from us would only be noise.
    let stderr_layer = if under_journald() {
        stderr_fmt.without_time().with_filter(filter()).boxed()
    } else {
        stderr_fmt.with_filter(filter()).boxed()
    };
    // The state root is private from its first mkdir (the log folder below is created inside
    // it). An existing one must be ours, a real folder, closed to writes by others (refused
    // otherwise, never changed); one others can only read is reported.
    if let Err(e) = megaplan_cloudd::http::server::ensure_owned_dir(
        &settings.cloud_home,
        megaplan_cloudd::http::server::Owned::StateRoot,
    ) {
        eprintln!("megaplan-cloudd: state root: {e}");
        std::process::exit(1);
    }
    if let Ok(meta) = std::fs::metadata(&settings.cloud_home) {
        use std::os::unix::fs::MetadataExt;
        let mode = meta.mode() & 0o7777;
        if mode & 0o077 != 0 {
            eprintln!(
                "megaplan-cloudd: warning: state root {} is mode {mode:04o}: group or others can read the daemon's files there; run `chmod 700 {}` if it is yours alone",
                settings.cloud_home.display(),
                settings.cloud_home.display()
            );
        }
    }
    let mut _guard = None;
    let file_layer = if settings.log_file {
        match megaplan_cloudd::http::server::ensure_private_dir(&settings.log_dir)
            .map_err(|e| e.to_string())
            .and_then(|_| {
                tracing_appender::rolling::RollingFileAppender::builder()
                    .rotation(tracing_appender::rolling::Rotation::DAILY)
                    .filename_prefix("cloudd")
                    .filename_suffix("log")
                    .max_log_files(14)
                    .build(&settings.log_dir)
                    .map_err(|e| e.to_string())
            }) {
            Ok(appender) => {
                let (writer, guard) = tracing_appender::non_blocking(appender);
                _guard = Some(guard);
                Some(
                    tracing_subscriber::fmt::layer()
                        .with_ansi(false)
                        .with_writer(writer)
                        .with_filter(filter()),
                )
            }
            Err(e) => {
                eprintln!("megaplan-cloudd: file logging disabled: {e}");
                None
            }
        }
    } else {
        None
    };
    tracing_subscriber::registry()
        .with(stderr_layer)
        .with(file_layer)
        .init();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("megaplan-cloudd: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(megaplan_cloudd::daemon::run(settings));
    drop(_guard);
    std::process::exit(code);
}
