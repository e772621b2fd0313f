//! Running one supervise tick for a registration: overlap guard, back-off, tick slots (in all,
//! per host, and a small share for registrations backing off), deadline, redacted report stored
//! in SQLite and published to watchers.

use super::supervise;
use crate::cloud_yaml;
use crate::state::AppState;
use chrono::{DateTime, Utc};
use megaplan_cloud_api::report::{TickEvent, TickReport};
use megaplan_cloud_api::wire::TickRecord;
use megaplan_cloud_api::{ErrorBody, ErrorCode};
use std::path::Path;
use std::sync::Arc;

pub enum TickOutcome {
    Ran(Box<TickRecord>),
    /// The previous tick of this registration was still running.
    Skipped,
    Failed(ErrorBody),
}

/// What started a tick; stored as the record's `trigger`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The scheduler, for the occurrence due at this time.
    Schedule(DateTime<Utc>),
    /// `POST /v1/clouds/{key}/tick`.
    Manual,
    /// A change the runner watch saw (supervisor/events.rs).
    Event,
}

impl Trigger {
    fn name(self) -> &'static str {
        match self {
            Trigger::Schedule(_) => "schedule",
            Trigger::Manual => "manual",
            Trigger::Event => "event",
        }
    }

    fn due(self) -> Option<DateTime<Utc>> {
        match self {
            Trigger::Schedule(due) => Some(due),
            Trigger::Manual | Trigger::Event => None,
        }
    }
}

/// The supervisor's end of the scheduler: every due key received starts its tick (the
/// scheduler's driver never waits for a tick). Holds the state weakly (the state owns the
/// scheduler, whose driver holds the sender); ends on shutdown or when the driver is gone.
pub async fn run_scheduled(
    state: std::sync::Weak<AppState>,
    mut due: tokio::sync::mpsc::Receiver<crate::scheduler::Due>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        let next = tokio::select! {
            d = due.recv() => d,
            _ = shutdown.cancelled() => None,
        };
        let Some(d) = next else { return };
        let Some(state) = state.upgrade() else { return };
        scheduled(state, d.key, d.at);
    }
}

/// Start a scheduled tick on the daemon's own tasks and return at once.
pub fn scheduled(state: Arc<AppState>, key: String, due: DateTime<Utc>) {
    if state.shutdown().is_cancelled() {
        return;
    }
    let st = state.clone();
    state.tasks().spawn(async move {
        run_registered(st, key, Trigger::Schedule(due)).await;
    });
}

/// A manual tick, run on the daemon's own tasks: the caller only waits for the outcome. A
/// caller that goes away (client disconnected) does not cancel it; its report is still stored.
pub fn spawn_manual(state: &Arc<AppState>, key: String) -> tokio::task::JoinHandle<TickOutcome> {
    let st = state.clone();
    state
        .tasks()
        .spawn(async move { run_registered(st, key, Trigger::Manual).await })
}

/// Tick a registered cloud.yaml now.
pub async fn run_registered(state: Arc<AppState>, key: String, trigger: Trigger) -> TickOutcome {
    let reg = match state.store().get_registration(&key).await {
        Ok(Some(r)) => r,
        Ok(None) => {
            return TickOutcome::Failed(ErrorBody::new(
                ErrorCode::NotRegistered,
                format!("no registration with key {key}"),
            ));
        }
        Err(e) => return TickOutcome::Failed(e.into()),
    };
    // A registration whose ticks keep hitting their deadline is held back: its occurrences
    // until the back-off ends are skipped and counted, never run late in a burst.
    if let Some(due) = trigger.due()
        && let Some(b) = state.scheduler().backoff.hold(&key, due)
    {
        tracing::info!(
            key = %key,
            strikes = b.strikes,
            until = %b.until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "tick skipped: the registration is backing off after ticks that hit their deadline"
        );
        state.scheduler().record_backed_off();
        if let Err(e) = state.store().record_skip(&key).await {
            tracing::error!(key = %key, "cannot record skipped tick: {e}");
        }
        return TickOutcome::Skipped;
    }
    let lock = state.tick_lock(&key);
    // An event must be looked at even when a tick of this registration runs right now (it
    // may have observed the runner before the change), and a person who asked for a tick gets
    // one: both wait for that tick to end. Only a scheduled occurrence is skipped.
    let waited = if matches!(trigger, Trigger::Event | Trigger::Manual) {
        Some(lock.lock().await)
    } else {
        None
    };
    let Some(_guard) = waited.or_else(|| lock.try_lock().ok()) else {
        tracing::info!(
            key = %key,
            "tick skipped: the previous tick of this registration is still running or waiting for a tick slot"
        );
        if trigger.due().is_some() {
            state.scheduler().record_skipped();
        }
        if let Err(e) = state.store().record_skip(&key).await {
            tracing::error!(key = %key, "cannot record skipped tick: {e}");
        }
        return TickOutcome::Skipped;
    };
    // A registered cloud.yaml that others may write would let them choose what the daemon
    // runs unattended: refuse the tick (and say so in its report) until it is private again.
    let report = match cloud_yaml::check_registered_file(Path::new(&reg.cloud_yaml)) {
        Err(e) => supervise::error_report(&e.to_string()),
        Ok(()) => {
            guarded_tick(
                &state,
                &key,
                &reg.cloud_yaml,
                reg.remote_spec.as_deref(),
                trigger.due(),
            )
            .await
        }
    };
    store_report(&state, &key, &reg.cloud_yaml, trigger, report).await
}

/// A tick asked for by `supervise --chain`: same guard (it waits for a running tick instead of
/// skipping), same storage.
pub async fn run_for_cli(
    state: &Arc<AppState>,
    key: &str,
    cloud_yaml: &str,
    remote_spec: Option<&str>,
) -> Result<TickRecord, ErrorBody> {
    let lock = state.tick_lock(key);
    let _guard = lock.lock().await;
    let report = guarded_tick(state, key, cloud_yaml, remote_spec, None).await;
    match store_report_as(state, key, cloud_yaml, "cli", None, report).await {
        TickOutcome::Ran(rec) => Ok(*rec),
        TickOutcome::Failed(e) => Err(e),
        TickOutcome::Skipped => Err(ErrorBody::new(ErrorCode::Internal, "tick skipped")),
    }
}

/// What a tick's slot is counted against: the host its runner lives on (one ssh target, the
/// local Docker, one Railway project). A cloud.yaml that does not load fails its tick at once.
async fn host_of(cloud_yaml: &str) -> String {
    match cloud_yaml::load_async(Path::new(cloud_yaml)).await {
        Ok(spec) => match (spec.provider, &spec.ssh) {
            (cloud_yaml::ProviderKind::Ssh, Some(ssh)) => format!(
                "ssh:{}@{}:{}",
                ssh.user.as_deref().unwrap_or(""),
                ssh.host,
                ssh.port
            ),
            (cloud_yaml::ProviderKind::Kubernetes, _) => match &spec.kubernetes {
                Some(k) => format!(
                    "kubernetes:{}:{}",
                    k.context.as_deref().unwrap_or("-"),
                    k.namespace
                ),
                None => "kubernetes".to_string(),
            },
            (cloud_yaml::ProviderKind::Railway, _) => {
                format!("railway:{}", spec.railway.project.as_deref().unwrap_or("-"))
            }
            _ => "local".to_string(),
        },
        Err(_) => "unknown".to_string(),
    }
}

/// Bounded concurrency + deadline + hard stop around the supervise tick itself, and the
/// back-off it leads to. `due`: the scheduled occurrence this tick fires for (ticks waiting for
/// a slot start oldest due first); the scheduler's account counts it as fired once it holds a
/// tick slot.
async fn guarded_tick(
    state: &Arc<AppState>,
    key: &str,
    cloud_yaml: &str,
    remote_spec: Option<&str>,
    due: Option<DateTime<Utc>>,
) -> TickReport {
    let started = std::time::Instant::now();
    let host = host_of(cloud_yaml).await;
    // A registration backing off may only use a small share of the slots (in all and on its
    // host), so the healthy ones always find one.
    let suspect = state.scheduler().backoff.is_suspect(key);
    let order = due.unwrap_or_else(Utc::now);
    let _permit = tokio::select! {
        p = state.tick_slots().acquire(&host, suspect, order) => p,
        _ = state.hard_stop().cancelled() => return supervise::error_report("the daemon is shutting down"),
    };
    if let Some(due) = due {
        state.scheduler().record_fired(due, Utc::now());
    }
    // Time spent waiting for one of the --max-concurrent-ticks slots, reported so a saturated
    // daemon shows up in the history rather than hiding in tick durations.
    let queued_ms = started.elapsed().as_millis() as u64;
    let deadline = state.settings().tick_timeout;
    let mut deadline_hit = false;
    let mut report = tokio::select! {
        r = tokio::time::timeout(deadline, supervise::tick(state, cloud_yaml, remote_spec)) => match r {
            Ok(report) => report,
            Err(_) => {
                deadline_hit = true;
                supervise::error_report(&format!(
                    "tick exceeded its deadline of {}s after {}s; its remote commands were killed",
                    deadline.as_secs(),
                    started.elapsed().as_secs()
                ))
            }
        },
        _ = state.hard_stop().cancelled() => {
            let mut r = supervise::error_report("the daemon shut down during this tick; its remote commands were killed");
            r.queued_ms = Some(queued_ms);
            return r;
        }
    };
    report.queued_ms = Some(queued_ms);
    // The observation's own deadline (--observe-timeout) ends the tick with `deadline_exceeded`.
    deadline_hit |= report.error.as_deref() == Some(ErrorCode::DeadlineExceeded.as_str());
    note_deadline(state, key, deadline_hit, &report);
    report
}

/// A tick that hit its deadline backs its registration off (one more strike); one that finished
/// in time ends the back-off.
fn note_deadline(state: &AppState, key: &str, hit: bool, report: &TickReport) {
    let now = Utc::now();
    if !hit {
        if let Some(b) = state.scheduler().backoff.clear(key) {
            tracing::info!(
                key,
                strikes = b.strikes,
                skipped = b.skipped,
                "back-off ended: a tick finished in time"
            );
        }
        return;
    }
    // Only registrations back off (a `supervise --chain` of an unregistered cloud.yaml leaves
    // nothing behind); the base is the registration's interval.
    let Some(base) = state.scheduler().interval(key, now) else {
        return;
    };
    let reason = report
        .refused_reason
        .as_deref()
        .unwrap_or("the tick hit its deadline");
    let b = state
        .scheduler()
        .backoff
        .strike(key, reason, now, base, rand::random::<f64>());
    tracing::warn!(
        key,
        strikes = b.strikes,
        until = %b.until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        reason = %b.reason,
        "tick hit its deadline: the registration backs off"
    );
}

async fn store_report(
    state: &Arc<AppState>,
    key: &str,
    cloud_yaml: &str,
    trigger: Trigger,
    report: TickReport,
) -> TickOutcome {
    store_report_as(
        state,
        key,
        cloud_yaml,
        trigger.name(),
        trigger.due(),
        report,
    )
    .await
}

async fn store_report_as(
    state: &Arc<AppState>,
    key: &str,
    cloud_yaml: &str,
    trigger: &str,
    due_at: Option<DateTime<Utc>>,
    report: TickReport,
) -> TickOutcome {
    let started_at = report
        .started_at
        .as_deref()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map(|d| d.with_timezone(&Utc))
        .unwrap_or_else(Utc::now);
    let new = crate::store::NewTick {
        key: key.to_string(),
        cloud_yaml: cloud_yaml.to_string(),
        trigger: trigger.to_string(),
        started_at,
        finished_at: Utc::now(),
        success: report.success,
        event: report.event.clone(),
        next_action: report.next_action.clone(),
        acted: report.acted,
        refused_reason: report.refused_reason.clone(),
        report,
        due_at,
    };
    match state.store().insert_tick(&new).await {
        Ok(rec) => {
            report_stored(state, &rec).await;
            TickOutcome::Ran(Box::new(rec))
        }
        Err(e) => {
            tracing::error!(key = %key, "cannot store tick report: {e}");
            TickOutcome::Failed(e.into())
        }
    }
}

/// Failed-tick log lines, rate-limited per registration and reason.
static FAILED_TICKS: std::sync::LazyLock<crate::ratelog::KindLog> =
    std::sync::LazyLock::new(|| crate::ratelog::KindLog::new(crate::ratelog::EVERY));

/// The one place a tick report becomes final: it is committed to SQLite (every trigger,
/// scheduled, manual or cli, passes here exactly once per stored report). Whatever must follow
/// a stored report (the log line, watchers, notifications) hangs off this function.
async fn report_stored(state: &Arc<AppState>, rec: &TickRecord) {
    // A failed tick is what an operator reading the journal looks for: WARN, so
    // `journalctl -p warning` shows it; the routine ones stay at INFO.
    // The same failure over and over (a broken cloud.yaml ticked every second, or a client
    // asking for ticks in a loop) is one line, then one count a minute: never a line per tick.
    if rec.report.event == TickEvent::Error {
        let reason = rec.refused_reason.as_deref().unwrap_or("");
        let kind = format!("{} {}", rec.key, crate::ratelog::clip(reason, 200));
        match FAILED_TICKS.admit(&kind, std::time::Instant::now()) {
            crate::ratelog::Admit::Quiet => {}
            crate::ratelog::Admit::Line => tracing::warn!(
                key = %rec.key,
                event = %rec.event,
                reason,
                "tick failed (the same failure again is counted, one line a minute)"
            ),
            crate::ratelog::Admit::Summary(n) => tracing::warn!(
                key = %rec.key,
                event = %rec.event,
                reason,
                "tick failed: {n} more ticks failed like this in the last minute"
            ),
        }
    } else {
        tracing::info!(
            key = %rec.key,
            event = %rec.event,
            next_action = %rec.next_action,
            acted = rec.acted,
            "tick stored"
        );
    }
    state.publish_tick(rec.clone());
    // Watching reads the stored report in the background; the tick never waits for it.
    crate::notify::after_tick(state);
}
