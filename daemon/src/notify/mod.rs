//! Unattended watching that tells a human (docs/notifications.md).
//!
//! After each stored tick report, [`after_tick`] compares it with what the watcher last saw of
//! the registration ([`transitions`], pure) and writes the new watch state together with one
//! outbox row per (notification, sink) in one SQLite transaction. A background worker
//! ([`spawn_worker`]) delivers the outbox with retries and backoff; a tick never waits for a
//! delivery. Notifications are built from the stored (already redacted) report and redacted
//! again with the registration's secrets before they are queued.

pub mod config;
pub mod deliver;
pub mod explain;
pub mod notifier;
pub mod stall;
pub mod store;
pub mod transitions;

use crate::redact::Redactor;
use crate::state::AppState;
use chrono::Utc;
use config::{NotifyConfig, Sink};
use megaplan_cloud_api::wire::TickRecord;
pub use notifier::Notifier;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

/// The notification body's schema name (docs/notifications.md).
pub const SCHEMA: &str = "megaplan-cloudd/notification/v1";

/// At most this many deliveries run at once.
const PARALLEL_DELIVERIES: usize = 8;

/// The hook run once a tick report is final and stored. Never fails the tick: problems are
/// logged (the next tick sees the same transition again, so nothing is lost for good).
pub async fn after_tick(state: &Arc<AppState>, rec: &TickRecord) {
    if let Err(e) = record(state, rec).await {
        tracing::error!(key = %rec.key, "cannot record the watch state of this tick: {e}");
    }
}

async fn record(state: &Arc<AppState>, rec: &TickRecord) -> Result<(), crate::store::StoreError> {
    let n = &state.notifier;
    let _one_at_a_time = n.recording.lock().await;
    // Watching is per registration: a `supervise --chain` of an unregistered cloud.yaml is
    // stored but tells nobody.
    if state.store.get_registration(&rec.key).await?.is_none() {
        return Ok(());
    }
    let prev = store::watch_state(&state.store, &rec.key).await?;
    let (next, events) = transitions::transitions(&prev, &rec.report, Utc::now(), n.rules());
    if next == prev && events.is_empty() {
        return Ok(());
    }
    let mut rows = Vec::new();
    if !events.is_empty() {
        let mut sinks = n.config.sinks.clone();
        sinks.extend(store::registration_sinks(&state.store, &rec.key).await?);
        if !sinks.is_empty() {
            rows = outbox_rows(rec, &events, &sinks, &redactor_for(state, rec));
        }
        for ev in &events {
            tracing::info!(key = %rec.key, event = ev.event, sinks = rows.len() / events.len().max(1), "notification");
        }
    }
    store::commit_watch(&state.store, &rec.key, &next, &rows).await?;
    if !rows.is_empty() {
        n.wake.notify_one();
    }
    Ok(())
}

/// One outbox row per (event, sink), each body redacted on its own (the report was redacted
/// by the tick already; this holds even for a report that was not).
pub fn outbox_rows(
    rec: &TickRecord,
    events: &[transitions::Event],
    sinks: &[Sink],
    redactor: &Redactor,
) -> Vec<store::NewOutbox> {
    let mut rows = Vec::new();
    for ev in events {
        let body = redactor.redact_json(&notification(rec, ev));
        let text = serde_json::to_string(&body).unwrap_or_default();
        for s in sinks {
            rows.push(store::NewOutbox {
                event: ev.event.to_string(),
                sink: s.clone(),
                body: text.clone(),
            });
        }
    }
    rows
}

/// The registration's secrets (names from its cloud.yaml, values the daemon knows).
fn redactor_for(state: &Arc<AppState>, rec: &TickRecord) -> Redactor {
    let names = crate::cloud_yaml::load(std::path::Path::new(&rec.cloud_yaml))
        .map(|s| s.secrets)
        .unwrap_or_default();
    let values = state.secret_values(&rec.key, &names);
    Redactor::new(&names, &values)
}

/// The documented notification JSON for one event of one tick.
pub fn notification(rec: &TickRecord, ev: &transitions::Event) -> Value {
    let r = &rec.report;
    let reason = ev
        .details
        .get("reason")
        .and_then(Value::as_str)
        .map(|s| format!(": {s}"))
        .unwrap_or_default();
    json!({
        "schema": SCHEMA,
        "id": format!("{}:{}:{}", rec.key, rec.id, ev.event),
        "event": ev.event,
        "title": ev.title,
        "message": format!("{}: {}{}", rec.cloud_yaml, ev.title, reason),
        "key": rec.key,
        "cloud_yaml": rec.cloud_yaml,
        "spec": r.get("spec").cloned().unwrap_or(Value::Null),
        "effective_status": r.get("effective_status").cloned().unwrap_or(Value::Null),
        "tick": {
            "id": rec.id,
            "trigger": rec.trigger,
            "finished_at": rec.finished_at,
            "success": rec.success,
            "event": rec.event,
            "next_action": rec.next_action,
            "acted": rec.acted,
            "refused_reason": rec.refused_reason,
        },
        "details": ev.details,
        "created_at": Utc::now().to_rfc3339(),
    })
}

/// Sinks given to `register --notify-url/--notify-command`, checked.
pub fn registration_sinks(
    cfg: &NotifyConfig,
    urls: &[String],
    command: Option<&str>,
    preset: Option<&str>,
) -> Result<Vec<Sink>, (String, &'static str)> {
    let preset = preset
        .map(config::Preset::parse)
        .transpose()
        .map_err(|e| (e, "notify_preset"))?
        .unwrap_or_default();
    let mut out = Vec::new();
    for u in urls {
        let s = Sink::Webhook {
            url: u.clone(),
            preset,
            secret_env: Some(cfg.registration_secret_env.clone()),
        };
        s.validate().map_err(|e| (e, "notify_url"))?;
        out.push(s);
    }
    if let Some(c) = command {
        let s = Sink::Command {
            command: c.to_string(),
        };
        s.validate().map_err(|e| (e, "notify_command"))?;
        out.push(s);
    }
    Ok(out)
}

/// The delivery worker: delivers due outbox rows (a few at a time), then sleeps until the next
/// one comes due, a tick queues more, or the daemon shuts down. Rows left pending at shutdown
/// are delivered by the next start.
pub fn spawn_worker(state: Arc<AppState>) {
    let shutdown = state.shutdown.clone();
    let tasks = state.tasks.clone();
    tasks.spawn(async move {
        let permits = Arc::new(tokio::sync::Semaphore::new(PARALLEL_DELIVERIES));
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            let due = match store::due(&state.store, Utc::now(), 64).await {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!("notification outbox: {e}");
                    Vec::new()
                }
            };
            let mut set = tokio::task::JoinSet::new();
            for item in due {
                let st = state.clone();
                let permits = permits.clone();
                set.spawn(async move {
                    let _p = permits.acquire_owned().await;
                    attempt(&st, item).await;
                });
            }
            tokio::select! {
                _ = async { while set.join_next().await.is_some() {} } => {}
                _ = shutdown.cancelled() => break,
            }
            let sleep = match store::next_due(&state.store).await {
                Ok(Some(at)) => (at - Utc::now()).to_std().unwrap_or(Duration::ZERO),
                Ok(None) => Duration::from_secs(3600),
                Err(_) => Duration::from_secs(5),
            };
            if sleep.is_zero() {
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                _ = state.notifier.wake.notified() => {}
                _ = shutdown.cancelled() => break,
            }
        }
    });
}

async fn attempt(state: &Arc<AppState>, item: store::Due) {
    let cfg = &state.notifier.config;
    let attempts = item.attempts + 1;
    let result = deliver::deliver(&item.sink, &item.body, item.id, cfg.retry.timeout).await;
    let (error, retry_at) = match &result {
        Ok(()) => {
            tracing::info!(key = %item.key, event = %item.event, sink = %item.sink.label(), attempts, "notification delivered");
            (None, None)
        }
        Err(e) if attempts < cfg.retry.max_attempts => {
            let delay = cfg.retry.delay_after(attempts);
            tracing::warn!(key = %item.key, event = %item.event, sink = %item.sink.label(), attempts, "notification not delivered, retrying in {}ms: {e}", delay.as_millis());
            (
                Some(e.clone()),
                Some(Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default()),
            )
        }
        Err(e) => {
            tracing::error!(key = %item.key, event = %item.event, sink = %item.sink.label(), attempts, "notification given up after {attempts} attempts: {e}");
            (
                Some(format!("gave up after {attempts} attempts: {e}")),
                None,
            )
        }
    };
    if let Err(e) = store::record_attempt(
        &state.store,
        item.id,
        attempts,
        error.as_deref(),
        retry_at,
        cfg.keep_outbox,
    )
    .await
    {
        tracing::error!(key = %item.key, "cannot record a notification attempt: {e}");
    }
}

/// The registrations list with what watching knows: `paused` (or null), `stalled`, and the
/// watcher's last status and failure count.
pub fn annotate_registrations(
    regs: Vec<megaplan_cloud_api::wire::Registration>,
    watch: &std::collections::HashMap<String, transitions::WatchState>,
    pauses: &std::collections::HashMap<String, store::Pause>,
) -> Vec<Value> {
    regs.into_iter()
        .map(|r| {
            let key = r.key.clone();
            let mut v = serde_json::to_value(&r).unwrap_or_default();
            let w = watch.get(&key).cloned().unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                o.insert("paused".into(), json!(pauses.get(&key)));
                o.insert("stalled".into(), w.stalled.into());
                o.insert("watched_status".into(), json!(w.status));
                o.insert("consecutive_failures".into(), w.consecutive_failures.into());
            }
            v
        })
        .collect()
}

/// `--since`: an age (`90s`, `30m`, `2h`, `1d`: that long ago), a date (`2026-06-01`, UTC
/// midnight) or an RFC 3339 time; returned as RFC 3339 UTC.
pub fn since_time(text: &str) -> Result<String, String> {
    let t = text.trim();
    if let Ok(d) = chrono::DateTime::parse_from_rfc3339(t) {
        return Ok(d.with_timezone(&Utc).to_rfc3339());
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        return Ok(d
            .and_hms_opt(0, 0, 0)
            .unwrap_or_default()
            .and_utc()
            .to_rfc3339());
    }
    let age = config::parse_duration("since", t).map_err(|_| {
        format!("since {t:?}: use an age (30m, 2h, 1d), a date (2026-06-01) or an RFC 3339 time")
    })?;
    let age =
        chrono::Duration::from_std(age).map_err(|_| format!("since {t:?} is too far back"))?;
    Ok((Utc::now() - age).to_rfc3339())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_notification_is_redacted_even_from_an_unredacted_report() {
        let secret = "tok-4f9c2a7e1b5d";
        let rec = TickRecord {
            id: 9,
            key: "k".into(),
            cloud_yaml: "/p/cloud.yaml".into(),
            trigger: "schedule".into(),
            started_at: "2026-01-01T00:00:00Z".into(),
            finished_at: "2026-01-01T00:00:01Z".into(),
            duration_ms: 1000,
            success: true,
            event: "supervisor_blocked".into(),
            next_action: "blocked".into(),
            acted: false,
            refused_reason: Some(format!("awaiting PR merge (PR #7 state={secret})")),
            report: json!({"success": true, "effective_status": "awaiting_pr_merge",
                           "refused_reason": format!("awaiting PR merge (PR #7 state={secret})"),
                           "pr": {"merge_probe": secret}}),
            due_at: None,
        };
        let (_, events) = transitions::transitions(
            &transitions::WatchState::default(),
            &rec.report,
            Utc::now(),
            Notifier::new(NotifyConfig::default()).rules(),
        );
        assert_eq!(events.len(), 1);
        let names = vec!["GH_TOKEN".to_string()];
        let values = [("GH_TOKEN".to_string(), secret.to_string())].into();
        let sinks = [
            Sink::Command {
                command: "cat".into(),
            },
            Sink::Webhook {
                url: "http://127.0.0.1:1/h".into(),
                preset: config::Preset::Json,
                secret_env: None,
            },
        ];
        let rows = outbox_rows(&rec, &events, &sinks, &Redactor::new(&names, &values));
        assert_eq!(rows.len(), 2);
        for r in rows {
            assert!(!r.body.contains(secret), "{}", r.body);
            let v: Value = serde_json::from_str(&r.body).unwrap();
            assert_eq!(v["schema"], SCHEMA);
            assert_eq!(v["event"], "awaiting_pr_merge");
            assert_eq!(v["id"], "k:9:awaiting_pr_merge");
        }
    }

    #[test]
    fn since_accepts_ages_dates_and_times() {
        assert_eq!(
            since_time("2026-06-01").unwrap(),
            "2026-06-01T00:00:00+00:00"
        );
        assert_eq!(
            since_time("2026-06-01T10:00:00+02:00").unwrap(),
            "2026-06-01T08:00:00+00:00"
        );
        let hour_ago = chrono::DateTime::parse_from_rfc3339(&since_time("1h").unwrap()).unwrap();
        let secs = (Utc::now() - hour_ago.with_timezone(&Utc)).num_seconds();
        assert!((3600..3700).contains(&secs), "{secs}");
        assert!(since_time("yesterday").unwrap_err().contains("since"));
    }
}
