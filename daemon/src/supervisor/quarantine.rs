//! The crash-loop quarantine (issue 24 item 4), a gate of the supervisor around the pure
//! decision: before a restart or an advance is applied, the restarts this registration had
//! within `supervise.quarantine_window` decide whether it goes ahead, waits (exponential
//! back-off with jitter after each restart), or — after `supervise.quarantine_after` of them,
//! each followed by the driver dying again — quarantines the chain: no more launches, one
//! notification with the end of the driver log, until a person clears it. The state lives in
//! SQLite (migrations/0006_quarantine.sql).

use crate::cloud_yaml::Supervise;
use crate::store::{Store, StoreError};
use chrono::{DateTime, SecondsFormat, Utc};
use megaplan_cloud_api::liveness::Quarantine;
use sqlx::Row;
use std::time::Duration;

/// Restarts in the window that quarantine when neither cloud.yaml nor notify.yaml says.
pub const DEFAULT_QUARANTINE_AFTER: u32 = 3;
/// The window when neither cloud.yaml nor notify.yaml says.
pub const DEFAULT_QUARANTINE_WINDOW: Duration = Duration::from_secs(15 * 60);

/// The quarantine rules of one registration: its cloud.yaml `supervise:` section, else
/// notify.yaml (the daemon-wide default), else the built-in defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub after: u32,
    pub window: Duration,
    pub backoff: Duration,
}

impl Policy {
    pub fn of(s: &Supervise, notify_after: Option<u32>, notify_window: Option<Duration>) -> Policy {
        Policy {
            after: s
                .quarantine_after
                .or(notify_after)
                .unwrap_or(DEFAULT_QUARANTINE_AFTER),
            window: s
                .quarantine_window
                .or(notify_window)
                .unwrap_or(DEFAULT_QUARANTINE_WINDOW),
            backoff: s.restart_backoff,
        }
    }
}

/// What the gate says of a launch the decision wants.
#[derive(Debug, Clone, PartialEq)]
pub enum Gate {
    Go,
    /// Back off: the next restart may run at `until`.
    Wait {
        until: DateTime<Utc>,
        restarts: u32,
    },
    /// Too many restarts in the window: quarantine instead.
    Quarantine {
        restarts: u32,
    },
}

/// The back-off before the restart that follows `restarts` restarts in the window: the base,
/// doubling with each, at most 32 times the base, plus up to a quarter more of jitter
/// (`jitter` in [0, 1)) so several chains of one runner do not restart in step.
pub fn backoff(base: Duration, restarts: u32, jitter: f64) -> Duration {
    if restarts == 0 {
        return Duration::ZERO;
    }
    let doubled = base.saturating_mul(1u32 << (restarts - 1).min(5));
    doubled + doubled.mul_f64(0.25 * jitter.clamp(0.0, 1.0))
}

/// The gate, pure: `recent` are the restarts within the window, oldest first.
pub fn gate(now: DateTime<Utc>, recent: &[DateTime<Utc>], cfg: &Policy, jitter: f64) -> Gate {
    let n = u32::try_from(recent.len()).unwrap_or(u32::MAX);
    if n >= cfg.after {
        return Gate::Quarantine { restarts: n };
    }
    let Some(last) = recent.last() else {
        return Gate::Go;
    };
    let wait = backoff(cfg.backoff, n, jitter);
    let until = *last + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX);
    if now < until {
        Gate::Wait { until, restarts: n }
    } else {
        Gate::Go
    }
}

/// A jitter in [0, 1) from the clock's sub-second part (no random source needed for spread).
pub fn jitter(now: DateTime<Utc>) -> f64 {
    f64::from(now.timestamp_subsec_nanos() % 1_000_000) / 1_000_000.0
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The restarts of `key` since `since`, oldest first.
pub async fn recent_restarts(
    store: &Store,
    key: &str,
    since: DateTime<Utc>,
) -> Result<Vec<DateTime<Utc>>, StoreError> {
    let what = "reading the restarts";
    let rows = sqlx::query("SELECT at FROM restarts WHERE key = ?1 AND at >= ?2 ORDER BY at")
        .bind(key)
        .bind(ts(since))
        .fetch_all(store.pool())
        .await
        .map_err(|e| store.failed(what, e))?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let at: String = r.try_get(0).map_err(|e| store.failed(what, e))?;
        if let Ok(t) = DateTime::parse_from_rfc3339(&at) {
            out.push(t.with_timezone(&Utc));
        }
    }
    Ok(out)
}

/// Record a restart at `at`, dropping this key's rows older than `keep_since` (bounded).
pub async fn record_restart(
    store: &Store,
    key: &str,
    at: DateTime<Utc>,
    keep_since: DateTime<Utc>,
) -> Result<(), StoreError> {
    let what = "recording a restart";
    let mut tx = store.begin_write(what).await?;
    sqlx::query("DELETE FROM restarts WHERE key = ?1 AND at < ?2")
        .bind(key)
        .bind(ts(keep_since))
        .execute(&mut *tx)
        .await
        .map_err(|e| store.failed(what, e))?;
    sqlx::query("INSERT OR IGNORE INTO restarts (key, at) VALUES (?1, ?2)")
        .bind(key)
        .bind(ts(at))
        .execute(&mut *tx)
        .await
        .map_err(|e| store.failed(what, e))?;
    tx.commit().await.map_err(|e| store.failed(what, e))
}

/// The quarantine of `key`, when there is one.
pub async fn get(store: &Store, key: &str) -> Result<Option<Quarantine>, StoreError> {
    let what = "reading the quarantine";
    let row = sqlx::query(
        "SELECT key, since, restarts, reason, log_tail FROM quarantines WHERE key = ?1",
    )
    .bind(key)
    .fetch_optional(store.pool())
    .await
    .map_err(|e| store.failed(what, e))?;
    let Some(r) = row else {
        return Ok(None);
    };
    let tail: String = r.try_get(4).map_err(|e| store.failed(what, e))?;
    let restarts: i64 = r.try_get(2).map_err(|e| store.failed(what, e))?;
    Ok(Some(Quarantine {
        key: r.try_get(0).map_err(|e| store.failed(what, e))?,
        since: r.try_get(1).map_err(|e| store.failed(what, e))?,
        restarts: u32::try_from(restarts).unwrap_or(u32::MAX),
        reason: r.try_get(3).map_err(|e| store.failed(what, e))?,
        log_tail: serde_json::from_str(&tail).unwrap_or_default(),
    }))
}

/// Every quarantine (for the fleet view).
pub async fn all(store: &Store) -> Result<Vec<Quarantine>, StoreError> {
    let what = "reading the quarantines";
    let rows = sqlx::query("SELECT key FROM quarantines ORDER BY key")
        .fetch_all(store.pool())
        .await
        .map_err(|e| store.failed(what, e))?;
    let mut out = Vec::new();
    for r in rows {
        let key: String = r.try_get(0).map_err(|e| store.failed(what, e))?;
        if let Some(q) = get(store, &key).await? {
            out.push(q);
        }
    }
    Ok(out)
}

/// Quarantine `q.key` (kept as first written when it already is).
pub async fn put(store: &Store, q: &Quarantine) -> Result<(), StoreError> {
    let what = "writing the quarantine";
    let tail = serde_json::to_string(&q.log_tail).unwrap_or_else(|_| "[]".into());
    sqlx::query(
        "INSERT INTO quarantines (key, since, restarts, reason, log_tail) VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT(key) DO NOTHING",
    )
    .bind(&q.key)
    .bind(&q.since)
    .bind(i64::from(q.restarts))
    .bind(&q.reason)
    .bind(tail)
    .execute(store.pool())
    .await
    .map_err(|e| store.failed(what, e))?;
    Ok(())
}

/// Clear the quarantine of `key` and its restart history (a person looked: the count starts
/// over). True when a quarantine was in force.
pub async fn clear(store: &Store, key: &str) -> Result<bool, StoreError> {
    let what = "clearing the quarantine";
    let mut tx = store.begin_write(what).await?;
    let gone = sqlx::query("DELETE FROM quarantines WHERE key = ?1")
        .bind(key)
        .execute(&mut *tx)
        .await
        .map_err(|e| store.failed(what, e))?
        .rows_affected();
    sqlx::query("DELETE FROM restarts WHERE key = ?1")
        .bind(key)
        .execute(&mut *tx)
        .await
        .map_err(|e| store.failed(what, e))?;
    tx.commit().await.map_err(|e| store.failed(what, e))?;
    Ok(gone > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Policy {
        Policy::of(&Supervise::default(), None, None)
    }

    #[test]
    fn cloud_yaml_then_notify_yaml_then_the_defaults() {
        let d = Supervise::default();
        assert_eq!(cfg().after, 3);
        assert_eq!(cfg().window, Duration::from_secs(900));
        assert_eq!(Policy::of(&d, Some(5), None).after, 5);
        let own = Supervise {
            quarantine_after: Some(2),
            ..d
        };
        assert_eq!(
            Policy::of(&own, Some(5), Some(Duration::from_secs(60))).after,
            2
        );
        assert_eq!(
            Policy::of(&own, Some(5), Some(Duration::from_secs(60))).window,
            Duration::from_secs(60)
        );
    }

    #[test]
    fn restarts_back_off_doubling_then_quarantine() {
        let t0 = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let s = chrono::Duration::seconds;
        assert_eq!(gate(t0, &[], &cfg(), 0.0), Gate::Go);
        // One restart 5 s ago: 10 s back-off.
        assert_eq!(
            gate(t0, &[t0 - s(5)], &cfg(), 0.0),
            Gate::Wait {
                until: t0 + s(5),
                restarts: 1
            }
        );
        assert_eq!(gate(t0, &[t0 - s(11)], &cfg(), 0.0), Gate::Go);
        // Two: 20 s (plus jitter up to a quarter).
        assert!(matches!(
            gate(t0, &[t0 - s(30), t0 - s(15)], &cfg(), 0.99),
            Gate::Wait { restarts: 2, .. }
        ));
        assert_eq!(
            gate(t0, &[t0 - s(60), t0 - s(40), t0 - s(20)], &cfg(), 0.0),
            Gate::Quarantine { restarts: 3 }
        );
        assert_eq!(
            backoff(Duration::from_secs(10), 40, 0.0),
            Duration::from_secs(320)
        );
        assert_eq!(
            backoff(Duration::from_secs(10), 1, 1.0),
            Duration::from_millis(12_500)
        );
    }
}
