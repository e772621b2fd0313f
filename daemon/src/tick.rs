//! Running one supervise tick for a registration: overlap guard, bounded concurrency,
//! deadline, redacted report stored in SQLite and published to watchers.

use crate::daemon::AppState;
use crate::workflow;
use chrono::Utc;
use megaplan_cloud_api::wire::TickRecord;
use megaplan_cloud_api::{ErrorBody, ErrorCode};
use serde_json::{Value, json};
use std::sync::Arc;

pub enum TickOutcome {
    Ran(Box<TickRecord>),
    /// The previous tick of this registration was still running.
    Skipped,
    Failed(ErrorBody),
}

/// Entry point of the scheduler's jobs.
pub async fn scheduled(state: Arc<AppState>, key: String) {
    if state.shutdown.is_cancelled() {
        return;
    }
    let tracked = state
        .tasks
        .track_future(run_registered(state.clone(), key, "schedule"));
    let _ = tracked.await;
}

/// Tick a registered cloud.yaml now.
pub async fn run_registered(state: Arc<AppState>, key: String, trigger: &str) -> TickOutcome {
    let reg = match state.store.get_registration(&key).await {
        Ok(Some(r)) => r,
        Ok(None) => {
            return TickOutcome::Failed(ErrorBody::new(
                ErrorCode::NotRegistered,
                format!("no registration with key {key}"),
            ));
        }
        Err(e) => return TickOutcome::Failed(e.into()),
    };
    let lock = state.tick_lock(&key);
    let Ok(_guard) = lock.try_lock() else {
        tracing::info!(
            key = %key,
            "tick skipped: the previous tick of this registration is still running or waiting for a tick slot"
        );
        if let Err(e) = state.store.record_skip(&key).await {
            tracing::error!(key = %key, "cannot record skipped tick: {e}");
        }
        return TickOutcome::Skipped;
    };
    let report = guarded_tick(&state, &reg.cloud_yaml, reg.remote_spec.as_deref()).await;
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
    let report = guarded_tick(state, cloud_yaml, remote_spec).await;
    match store_report(state, key, cloud_yaml, "cli", report).await {
        TickOutcome::Ran(rec) => Ok(*rec),
        TickOutcome::Failed(e) => Err(e),
        TickOutcome::Skipped => Err(ErrorBody::new(ErrorCode::Internal, "tick skipped")),
    }
}

/// Bounded concurrency + deadline + hard stop around the supervise tick itself.
async fn guarded_tick(state: &Arc<AppState>, cloud_yaml: &str, remote_spec: Option<&str>) -> Value {
    let started = std::time::Instant::now();
    let _permit = match state.tick_permits.clone().acquire_owned().await {
        Ok(p) => p,
        Err(_) => return error_report("the daemon is shutting down"),
    };
    // Time spent waiting for one of the --max-concurrent-ticks slots, reported so a saturated
    // daemon shows up in the history rather than hiding in tick durations.
    let queued_ms = started.elapsed().as_millis() as u64;
    let deadline = state.settings.tick_timeout;
    let mut report = tokio::select! {
        r = tokio::time::timeout(deadline, workflow::supervise::tick(state, cloud_yaml, remote_spec)) => match r {
            Ok(report) => report,
            Err(_) => error_report(&format!(
                "tick exceeded its deadline of {}s after {}s; its remote commands were killed",
                deadline.as_secs(),
                started.elapsed().as_secs()
            )),
        },
        _ = state.hard_stop.cancelled() => error_report("the daemon shut down during this tick; its remote commands were killed"),
    };
    if let Some(o) = report.as_object_mut() {
        o.insert("queued_ms".into(), queued_ms.into());
    }
    report
}

/// A `supervisor_error` report (same shape as every tick report).
pub fn error_report(reason: &str) -> Value {
    json!({
        "success": false,
        "event": "supervisor_error",
        "spec": "",
        "effective_status": "unknown",
        "next_action": "none",
        "acted": false,
        "refused_reason": reason,
        "runner": {},
        "sync": {},
        "pr": {},
        "logs": {},
    })
}

async fn store_report(
    state: &Arc<AppState>,
    key: &str,
    cloud_yaml: &str,
    trigger: &str,
    report: Value,
) -> TickOutcome {
    let started_at = report
        .get("started_at")
        .and_then(Value::as_str)
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map(|d| d.with_timezone(&Utc))
        .unwrap_or_else(Utc::now);
    let s = |k: &str| {
        report
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let new = crate::store::NewTick {
        key: key.to_string(),
        cloud_yaml: cloud_yaml.to_string(),
        trigger: trigger.to_string(),
        started_at,
        finished_at: Utc::now(),
        success: report
            .get("success")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        event: s("event"),
        next_action: s("next_action"),
        acted: report
            .get("acted")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        refused_reason: report
            .get("refused_reason")
            .and_then(Value::as_str)
            .map(str::to_string),
        report,
    };
    match state.store.insert_tick(&new).await {
        Ok(rec) => {
            // A failed tick is what an operator reading the journal looks for: WARN, so
            // `journalctl -p warning` shows it; the routine ones stay at INFO.
            if rec.event == "supervisor_error" {
                tracing::warn!(
                    key = %key,
                    event = %rec.event,
                    reason = rec.refused_reason.as_deref().unwrap_or(""),
                    "tick failed"
                );
            } else {
                tracing::info!(
                    key = %key,
                    event = %rec.event,
                    next_action = %rec.next_action,
                    acted = rec.acted,
                    "tick stored"
                );
            }
            let _ = state.tick_feed.send(rec.clone());
            // Watching: transitions → outbox (delivered in the background, never awaited here).
            crate::notify::after_tick(state, &rec).await;
            TickOutcome::Ran(Box::new(rec))
        }
        Err(e) => {
            tracing::error!(key = %key, "cannot store tick report: {e}");
            TickOutcome::Failed(e.into())
        }
    }
}
