//! `megaplan-cloudd`: parse flags, set up logging, run the daemon.

use clap::Parser;
use megaplan_cloudd::settings::{Args, Settings};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

fn main() {
    let args = Args::parse();
    let settings = Settings::from_args(args);

    // stderr always (journald/launchd capture it); plus a daily rolling file under the state
    // root, keeping 14 files so logs cannot grow without bound.
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: the journal and launchd's log file get plain text.
    let stderr_layer = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .with_filter(filter());
    // The state root is private from its first mkdir (the log folder below is created inside
    // it); an existing looser one is reported, never changed.
    if let Err(e) = megaplan_cloudd::server::ensure_private_dir(&settings.cloud_home) {
        eprintln!("megaplan-cloudd: warning: state root: {e}");
    }
    let mut _guard = None;
    let file_layer = if settings.log_file {
        match megaplan_cloudd::server::ensure_private_dir(&settings.log_dir)
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
