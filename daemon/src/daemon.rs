//! The daemon process: start-up (socket, database, stored schedules), serving, graceful
//! shutdown. The shared state is `state::AppState`; the HTTP API is `http`.

use crate::http::{self, server};
use crate::provider::ssh_master::SshSessions;
use crate::scheduler::{self, Scheduler};
use crate::settings::Settings;
use crate::state::{AppState, Opened};
use crate::store::Store;
use crate::supervisor::tick;
use megaplan_cloud_api::schedule::Schedule;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Start the daemon and serve until SIGTERM/SIGINT. Returns the process exit code.
pub async fn run(settings: Settings) -> i32 {
    // Signal handlers are installed before the socket exists: a client (or a service manager)
    // that sees the socket may send SIGTERM at once, and without a handler that would kill the
    // process with no graceful stop.
    let signals = match Signals::install() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot install signal handlers: {e}");
            return 1;
        }
    };
    let (listener, _lock) = match server::bind(&settings.socket) {
        Ok(v) => v,
        Err(msg) => {
            tracing::error!("{msg}");
            return 1;
        }
    };
    let _db_lock = match server::lock_database(&settings.db) {
        Ok(l) => l,
        Err(msg) => {
            tracing::error!("{msg}");
            let _ = std::fs::remove_file(&settings.socket);
            return 1;
        }
    };
    let notify_config = match crate::notify::config::NotifyConfig::load(&settings.notify_config) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e}; fix the file or point --notify-config elsewhere");
            let _ = std::fs::remove_file(&settings.socket);
            return 1;
        }
    };
    let opened = Store::open_capped(&settings.db, settings.keep_ticks, settings.max_db_bytes).await;
    let store = match opened {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{e}");
            let _ = std::fs::remove_file(&settings.socket);
            return 1;
        }
    };
    if let Err(msg) = server::ensure_private_dir(&settings.ssh_control_dir) {
        tracing::error!("{msg}");
        return 1;
    }
    let ssh = SshSessions::new(
        settings.ssh_control_dir.clone(),
        settings.ssh_config.clone(),
    );

    // The scheduler hands due keys over a channel to the supervisor's task (started below,
    // once the state exists).
    let (due_tx, due_rx) = scheduler::due_channel();
    let sched = Scheduler::new(due_tx);
    let (runner_events, runner_events_rx) =
        tokio::sync::mpsc::channel(crate::supervisor::events::QUEUE);
    let state = Arc::new(AppState::new(Opened {
        settings,
        store,
        ssh,
        scheduler: sched,
        runner_events,
        notifier: crate::notify::Notifier::new(notify_config),
    }));
    tokio::spawn(tick::run_scheduled(
        Arc::downgrade(&state),
        due_rx,
        state.shutdown().clone(),
    ));
    crate::notify::spawn_worker(state.clone());
    tokio::spawn(reap_idle_observers(state.clone()));
    tokio::spawn(crate::supervisor::events::run(
        Arc::downgrade(&state),
        runner_events_rx,
        state.shutdown().clone(),
    ));

    if let Err(e) = schedule_stored(&state).await {
        tracing::error!("{e}");
        state.scheduler().shutdown().await;
        state.store().close().await;
        let _ = std::fs::remove_file(&state.settings().socket);
        return 1;
    }

    let app = http::router(state.clone());
    let shutdown = state.shutdown().clone();
    tokio::spawn(wait_for_signal(
        signals,
        shutdown.clone(),
        state.hard_stop().clone(),
        state.settings().shutdown_grace,
    ));
    tracing::info!(
        socket = %state.settings().socket.display(),
        db = %state.settings().db.display(),
        version = megaplan_cloud_api::VERSION,
        "megaplan-cloudd ready"
    );
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);

    let limits = server::Limits {
        max_connections: state.settings().max_connections,
        header_timeout: state.settings().header_timeout,
        body_timeout: state.settings().body_timeout,
        max_body_bytes: http::MAX_BODY_BYTES,
    };
    let served = server::serve(listener, app, limits, shutdown.clone()).await;

    // Stop accepting work, let running ticks finish up to the grace period, then cancel.
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    state.scheduler().shutdown().await;
    state.tasks().close();
    tokio::select! {
        _ = state.tasks().wait() => {}
        _ = state.hard_stop().cancelled() => {
            tracing::warn!("work still running after the grace period; cancelling it");
        }
    }
    state.residents().close_all().await;
    state.ssh().close_all().await;
    state.store().close().await;
    let _ = std::fs::remove_file(&state.settings().socket);
    match served {
        Ok(()) => {
            tracing::info!("megaplan-cloudd stopped");
            0
        }
        Err(e) => {
            tracing::error!("server error: {e}");
            1
        }
    }
}

/// End resident observers unused for `IDLE_AFTER`, every `REAP_EVERY`, until shutdown.
async fn reap_idle_observers(state: Arc<AppState>) {
    use crate::provider::resident::{IDLE_AFTER, REAP_EVERY};
    loop {
        tokio::select! {
            _ = state.shutdown().cancelled() => return,
            _ = tokio::time::sleep(REAP_EVERY) => {}
        }
        state.residents().reap_idle(IDLE_AFTER);
    }
}

/// SIGTERM and SIGINT streams, registered with the runtime as soon as they are created.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }
}

async fn wait_for_signal(
    mut signals: Signals,
    token: CancellationToken,
    hard_stop: CancellationToken,
    grace: std::time::Duration,
) {
    tokio::select! {
        _ = signals.term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = signals.int.recv() => tracing::info!("SIGINT: shutting down"),
    }
    token.cancel();
    tokio::time::sleep(grace).await;
    hard_stop.cancel();
}

/// Queue every stored registration with the same cron expression `register` gave it (its
/// per-key offset included). A row whose schedule cannot be used is logged and counted in
/// health; it does not stop the others.
async fn schedule_stored(state: &AppState) -> Result<(), crate::store::StoreError> {
    let regs = state.store().list_registrations().await?;
    let mut queued = 0usize;
    for r in &regs {
        let cron = r
            .schedule
            .parse::<Schedule>()
            .and_then(|s| s.to_cron(&r.key))
            .map_err(|e| e.message)
            .and_then(|c| {
                state
                    .scheduler()
                    .schedule(&r.key, &c)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            });
        match cron {
            Ok(()) => queued += 1,
            Err(e) => {
                state.scheduler().note_unschedulable();
                tracing::error!(key = %r.key, cloud_yaml = %r.cloud_yaml, "cannot schedule stored registration: {e}");
            }
        }
    }
    tracing::info!(
        registrations = regs.len(),
        scheduled = queued,
        "schedules restored"
    );
    Ok(())
}
