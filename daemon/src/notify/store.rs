//! SQLite side of watching (tables of migrations/0002_watch.sql): watch states, the outbox,
//! per-registration sinks, pauses, and filtered tick listing.

use super::config::Sink;
use super::sinks::sink_key;
use super::transitions::WatchState;
use crate::store::{Store, StoreError, tick_from_row};
use chrono::{DateTime, SecondsFormat, Utc};
use megaplan_cloud_api::wire::{BreakerState, SinkBreaker, TickRecord};
use serde::Serialize;
use sqlx::Row;
use std::collections::HashMap;

pub(crate) fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// One notification addressed to one sink, to be written to the outbox.
#[derive(Debug, Clone)]
pub struct NewOutbox {
    /// The registration the notification is about.
    pub key: String,
    pub event: String,
    /// The notification's idempotency key: queued at most once (`notification_keys`).
    pub idempotency_key: String,
    pub sink: Sink,
    /// The notification JSON (redacted).
    pub body: String,
}

/// Idempotency keys kept per registration (the newest); older occurrences are long past.
const KEYS_KEPT: i64 = 1000;

/// An outbox row due for delivery.
#[derive(Debug, Clone)]
pub struct Due {
    pub id: i64,
    pub key: String,
    pub event: String,
    pub sink: Sink,
    /// The sink as stored (what [`defer`] matches).
    pub sink_text: String,
    pub body: String,
    pub attempts: u32,
}

/// An outbox row as listed by the API.
#[derive(Debug, Clone, Serialize)]
pub struct OutboxEntry {
    pub id: i64,
    pub key: String,
    pub event: String,
    pub sink: String,
    pub status: String,
    pub attempts: u32,
    pub created_at: String,
    pub next_attempt_at: String,
    pub last_error: Option<String>,
    pub finished_at: Option<String>,
    /// The breaker of the row's sink (closed and idle when the worker remembers nothing of it).
    pub breaker: SinkBreaker,
}

/// A pause as stored.
pub use megaplan_cloud_api::report::Pause;

/// Filters of `ticks`/`watch` (`--since`, `--event`, `--failed`).
#[derive(Debug, Clone, Default)]
pub struct TickFilter {
    pub key: Option<String>,
    /// RFC 3339; ticks that finished at or after it.
    pub since: Option<String>,
    pub event: Option<String>,
    pub failed_only: bool,
}

impl TickFilter {
    pub fn matches(&self, t: &TickRecord) -> bool {
        self.key.as_deref().is_none_or(|k| k == t.key)
            && self.event.as_deref().is_none_or(|e| e == t.event.as_str())
            && (!self.failed_only || !t.success)
            && self.since.as_deref().is_none_or(|s| {
                match (
                    DateTime::parse_from_rfc3339(s),
                    DateTime::parse_from_rfc3339(&t.finished_at),
                ) {
                    (Ok(s), Ok(f)) => f >= s,
                    _ => true,
                }
            })
    }
}

pub async fn watch_state(store: &Store, key: &str) -> Result<WatchState, StoreError> {
    let what = "reading the watch state";
    let text: Option<String> = sqlx::query("SELECT state FROM watch_state WHERE key = ?1")
        .bind(key)
        .fetch_optional(store.pool())
        .await
        .and_then(|r| r.map(|r| r.try_get(0)).transpose())
        .map_err(|e| store.failed(what, e))?;
    // An unreadable state (written by a future version) starts over rather than wedging.
    Ok(text
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default())
}

/// How far the watcher has read the ticks table (migrations/0004_watch_cursor.sql).
pub async fn watch_cursor(store: &Store) -> Result<i64, StoreError> {
    let what = "reading the watch cursor";
    sqlx::query("SELECT last_tick_id FROM watch_cursor WHERE id = 1")
        .fetch_optional(store.pool())
        .await
        .and_then(|r| r.map(|r| r.try_get(0)).transpose())
        .map(Option::unwrap_or_default)
        .map_err(|e| store.failed(what, e))
}

/// At most `limit` stored ticks after the watch cursor, oldest first.
pub async fn unwatched_ticks(
    store: &Store,
    after_id: i64,
    limit: u32,
) -> Result<Vec<TickRecord>, StoreError> {
    let q = sqlx::query("SELECT * FROM ticks WHERE id > ?1 ORDER BY id LIMIT ?2")
        .bind(after_id)
        .bind(i64::from(limit));
    fetch_ticks(store, "reading ticks for the watcher", q).await
}

/// Run a `SELECT * FROM ticks …` query and read its rows as tick records.
async fn fetch_ticks<'q>(
    store: &Store,
    what: &str,
    query: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>,
) -> Result<Vec<TickRecord>, StoreError> {
    let rows = query
        .fetch_all(store.pool())
        .await
        .map_err(|e| store.failed(what, e))?;
    rows.iter()
        .map(tick_from_row)
        .collect::<Result<_, _>>()
        .map_err(|e| store.failed(what, e))
}

/// Save what one watcher pass concluded in ONE transaction: the changed watch states, their
/// notifications, and the cursor moved to `last_tick_id`. A crash either loses all of it (the
/// next start reads the same ticks again) or keeps all of it (each notification queued once).
pub async fn commit_watch(
    store: &Store,
    states: &[(String, WatchState)],
    rows: &[NewOutbox],
    last_tick_id: i64,
) -> Result<usize, StoreError> {
    commit(store, states, rows, last_tick_id, None).await
}

/// Where each registration stood at a digest (migrations/0007_notification_keys.sql).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestMark {
    pub key: String,
    /// Milestones done.
    pub milestone: u32,
    pub status: String,
}

/// Save one digest in ONE transaction: its outbox rows, the marks it reported from, and when
/// it was made (the next one is due a period later, across restarts). Returns rows queued.
pub async fn commit_digest(
    store: &Store,
    rows: &[NewOutbox],
    marks: &[DigestMark],
    at: DateTime<Utc>,
) -> Result<usize, StoreError> {
    commit(store, &[], rows, 0, Some((marks, at))).await
}

/// When the last digest was made, if one was.
pub async fn last_digest(store: &Store) -> Result<Option<DateTime<Utc>>, StoreError> {
    let t: Option<String> = sqlx::query("SELECT last_at FROM digest_clock WHERE id = 1")
        .fetch_optional(store.pool())
        .await
        .and_then(|r| r.map(|r| r.try_get(0)).transpose())
        .map_err(|e| store.failed("reading the digest clock", e))?;
    Ok(t.and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
        .map(|t| t.with_timezone(&Utc)))
}

/// Every registration's mark at the last digest.
pub async fn digest_marks(store: &Store) -> Result<HashMap<String, DigestMark>, StoreError> {
    let what = "reading the digest marks";
    let rows = sqlx::query("SELECT key, milestone, status FROM digest_marks")
        .fetch_all(store.pool())
        .await
        .map_err(|e| store.failed(what, e))?;
    let mut out = HashMap::new();
    for r in rows {
        let m = DigestMark {
            key: r.try_get(0).map_err(|e| store.failed(what, e))?,
            milestone: u32::try_from(r.try_get::<i64, _>(1).map_err(|e| store.failed(what, e))?)
                .unwrap_or(0),
            status: r.try_get(2).map_err(|e| store.failed(what, e))?,
        };
        out.insert(m.key.clone(), m);
    }
    Ok(out)
}

async fn commit(
    store: &Store,
    states: &[(String, WatchState)],
    rows: &[NewOutbox],
    last_tick_id: i64,
    digest: Option<(&[DigestMark], DateTime<Utc>)>,
) -> Result<usize, StoreError> {
    let what = "saving the watch state";
    let now = ts(Utc::now());
    let mut tx = store.begin_write(what).await?;
    for (key, state) in states {
        let text = serde_json::to_string(state).map_err(|e| store.failed(what, e))?;
        sqlx::query(
            "INSERT INTO watch_state (key, state, updated_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (key) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at",
        )
        .bind(key)
        .bind(&text)
        .bind(&now)
        .execute(&mut *tx)
        .await
        .map_err(|e| store.failed(what, e))?;
    }
    // Each idempotency key is queued once, ever: a key already recorded is not queued again.
    let mut fresh: HashMap<&str, bool> = HashMap::new();
    for r in rows {
        if r.idempotency_key.is_empty() || fresh.contains_key(r.idempotency_key.as_str()) {
            continue;
        }
        let inserted = sqlx::query(
            "INSERT OR IGNORE INTO notification_keys (idempotency_key, key, event, created_at)
             VALUES (?1, ?2, ?3, ?4)",
        )
        .bind(&r.idempotency_key)
        .bind(&r.key)
        .bind(&r.event)
        .bind(&now)
        .execute(&mut *tx)
        .await
        .map_err(|e| store.failed("recording a notification key", e))?
        .rows_affected();
        fresh.insert(r.idempotency_key.as_str(), inserted > 0);
        sqlx::query(
            "DELETE FROM notification_keys WHERE key = ?1 AND idempotency_key NOT IN
                 (SELECT idempotency_key FROM notification_keys WHERE key = ?1
                  ORDER BY created_at DESC LIMIT ?2)",
        )
        .bind(&r.key)
        .bind(KEYS_KEPT)
        .execute(&mut *tx)
        .await
        .map_err(|e| store.failed("applying notification key retention", e))?;
    }
    let mut queued = 0;
    for r in rows {
        if fresh.get(r.idempotency_key.as_str()) == Some(&false) {
            tracing::info!(key = %r.key, event = %r.event, idempotency_key = %r.idempotency_key, "notification already queued once; not again");
            continue;
        }
        queued += 1;
        let sink = serde_json::to_string(&r.sink).map_err(|e| store.failed(what, e))?;
        sqlx::query(
            "INSERT INTO outbox (key, event, sink, body, created_at, status, attempts, next_attempt_at)
             VALUES (?1, ?2, ?3, ?4, ?5, 'pending', 0, ?5)",
        )
        .bind(&r.key)
        .bind(&r.event)
        .bind(&sink)
        .bind(&r.body)
        .bind(&now)
        .execute(&mut *tx)
        .await
        .map_err(|e| store.failed("queueing a notification", e))?;
    }
    if let Some((marks, at)) = digest {
        let what = "saving the digest";
        for m in marks {
            sqlx::query(
                "INSERT INTO digest_marks (key, milestone, status, marked_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (key) DO UPDATE SET milestone = excluded.milestone,
                     status = excluded.status, marked_at = excluded.marked_at",
            )
            .bind(&m.key)
            .bind(i64::from(m.milestone))
            .bind(&m.status)
            .bind(ts(at))
            .execute(&mut *tx)
            .await
            .map_err(|e| store.failed(what, e))?;
        }
        sqlx::query(
            "INSERT INTO digest_clock (id, last_at) VALUES (1, ?1)
             ON CONFLICT (id) DO UPDATE SET last_at = excluded.last_at",
        )
        .bind(ts(at))
        .execute(&mut *tx)
        .await
        .map_err(|e| store.failed(what, e))?;
    } else {
        sqlx::query(
            "INSERT INTO watch_cursor (id, last_tick_id) VALUES (1, ?1)
             ON CONFLICT (id) DO UPDATE SET last_tick_id = MAX(last_tick_id, excluded.last_tick_id)",
        )
        .bind(last_tick_id)
        .execute(&mut *tx)
        .await
        .map_err(|e| store.failed(what, e))?;
    }
    tx.commit().await.map_err(|e| store.failed(what, e))?;
    Ok(queued)
}

/// Pending rows due at `now` and not in `running` (ids of deliveries in flight), fairly across
/// sinks: at most `per_sink` rows of each stored sink, oldest first, every sink's first row
/// before any sink's second (`ORDER BY rank, id`), at most `limit` rows. A row whose sink
/// cannot be read is marked failed (it would otherwise come due for ever).
pub async fn due(
    store: &Store,
    now: DateTime<Utc>,
    running: &[i64],
    per_sink: u32,
    limit: u32,
) -> Result<Vec<Due>, StoreError> {
    let what = "reading the notification outbox";
    let running = serde_json::to_string(running).map_err(|e| store.failed(what, e))?;
    let rows = sqlx::query(
        "WITH ranked AS (
             SELECT id, ROW_NUMBER() OVER (PARTITION BY sink ORDER BY id) AS rank FROM outbox
             WHERE status = 'pending' AND next_attempt_at <= ?1
               AND id NOT IN (SELECT value FROM json_each(?2)))
         SELECT o.id, o.key, o.event, o.sink, o.body, o.attempts FROM ranked r
         JOIN outbox o ON o.id = r.id WHERE r.rank <= ?3 ORDER BY r.rank, r.id LIMIT ?4",
    )
    .bind(ts(now))
    .bind(running)
    .bind(i64::from(per_sink))
    .bind(i64::from(limit))
    .fetch_all(store.pool())
    .await
    .map_err(|e| store.failed(what, e))?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let id: i64 = r.try_get("id").map_err(|e| store.failed(what, e))?;
        let attempts = u32::try_from(
            r.try_get::<i64, _>("attempts")
                .map_err(|e| store.failed(what, e))?,
        )
        .unwrap_or(0);
        let sink_text: String = r.try_get("sink").map_err(|e| store.failed(what, e))?;
        let sink = match serde_json::from_str::<Sink>(&sink_text) {
            Ok(s) => s,
            Err(e) => {
                let why = format!("the stored sink cannot be read: {e}");
                record_attempt(store, id, attempts, Some(&why), None, u32::MAX).await?;
                continue;
            }
        };
        out.push(Due {
            id,
            key: r.try_get("key").map_err(|e| store.failed(what, e))?,
            event: r.try_get("event").map_err(|e| store.failed(what, e))?,
            sink,
            sink_text,
            body: r.try_get("body").map_err(|e| store.failed(what, e))?,
            attempts,
        });
    }
    Ok(out)
}

/// When the next pending row comes due after `now`, if any.
pub async fn next_due(
    store: &Store,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    let what = "reading the notification outbox";
    let t: Option<String> = sqlx::query(
        "SELECT MIN(next_attempt_at) FROM outbox WHERE status = 'pending' AND next_attempt_at > ?1",
    )
    .bind(ts(now))
    .fetch_one(store.pool())
    .await
    .and_then(|r| r.try_get(0))
    .map_err(|e| store.failed(what, e))?;
    Ok(t.and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
        .map(|t| t.with_timezone(&Utc)))
}

/// Defer the pending rows of these stored sinks (an open breaker) to `until`, except those in
/// `running`. Attempts are not counted: a deferred row was not tried.
pub async fn defer(
    store: &Store,
    sinks: &[&str],
    until: DateTime<Utc>,
    running: &[i64],
) -> Result<u64, StoreError> {
    let what = "deferring notifications of an open sink";
    let sinks = serde_json::to_string(sinks).map_err(|e| store.failed(what, e))?;
    let running = serde_json::to_string(running).map_err(|e| store.failed(what, e))?;
    sqlx::query(
        "UPDATE outbox SET next_attempt_at = ?1
         WHERE status = 'pending' AND next_attempt_at < ?1
           AND sink IN (SELECT value FROM json_each(?2))
           AND id NOT IN (SELECT value FROM json_each(?3))",
    )
    .bind(ts(until))
    .bind(sinks)
    .bind(running)
    .execute(store.pool())
    .await
    .map(|r| r.rows_affected())
    .map_err(|e| store.failed(what, e))
}

/// Record the outcome of one attempt. `retry_at` None with an error means: gave up.
pub async fn record_attempt(
    store: &Store,
    id: i64,
    attempts: u32,
    error: Option<&str>,
    retry_at: Option<DateTime<Utc>>,
    keep_per_key: u32,
) -> Result<(), StoreError> {
    let what = "recording a notification attempt";
    let now = ts(Utc::now());
    let (status, next, finished) = match (error, retry_at) {
        (None, _) => ("delivered", now.clone(), Some(now.clone())),
        (Some(_), Some(at)) => ("pending", ts(at), None),
        (Some(_), None) => ("failed", now.clone(), Some(now.clone())),
    };
    let mut tx = store.begin_write(what).await?;
    let key: Option<String> = sqlx::query(
        "UPDATE outbox SET status = ?2, attempts = ?3, next_attempt_at = ?4, last_error = ?5, finished_at = ?6
         WHERE id = ?1 RETURNING key",
    )
    .bind(id)
    .bind(status)
    .bind(i64::from(attempts))
    .bind(&next)
    .bind(error)
    .bind(&finished)
    .fetch_optional(&mut *tx)
    .await
    .and_then(|r| r.map(|r| r.try_get(0)).transpose())
    .map_err(|e| store.failed(what, e))?;
    if let Some(key) = key
        && finished.is_some()
    {
        sqlx::query(
            "DELETE FROM outbox WHERE key = ?1 AND status != 'pending' AND id NOT IN
                 (SELECT id FROM outbox WHERE key = ?1 AND status != 'pending' ORDER BY id DESC LIMIT ?2)",
        )
        .bind(&key)
        .bind(i64::from(keep_per_key))
        .execute(&mut *tx)
        .await
        .map_err(|e| store.failed("applying outbox retention", e))?;
    }
    tx.commit().await.map_err(|e| store.failed(what, e))
}

/// The newest outbox rows (of `key`, or all), newest first, each with its sink's breaker from
/// `breakers` (by sink key).
pub async fn list_outbox(
    store: &Store,
    key: Option<&str>,
    limit: u32,
    breakers: &HashMap<String, SinkBreaker>,
) -> Result<Vec<OutboxEntry>, StoreError> {
    let what = "listing notifications";
    let rows = sqlx::query(
        "SELECT * FROM outbox WHERE (?1 IS NULL OR key = ?1) ORDER BY id DESC LIMIT ?2",
    )
    .bind(key)
    .bind(i64::from(limit))
    .fetch_all(store.pool())
    .await
    .map_err(|e| store.failed(what, e))?;
    rows.iter()
        .map(|r| -> Result<OutboxEntry, sqlx::Error> {
            let text: String = r.try_get("sink")?;
            let (sink, sink_key) = match serde_json::from_str::<Sink>(&text) {
                Ok(s) => (s.label(), sink_key(&s)),
                Err(_) => (text.clone(), text),
            };
            let breaker = breakers.get(&sink_key).cloned().unwrap_or(SinkBreaker {
                sink: sink_key,
                state: BreakerState::Closed,
                open_until: None,
                consecutive_failures: 0,
                in_flight: 0,
            });
            Ok(OutboxEntry {
                id: r.try_get("id")?,
                key: r.try_get("key")?,
                event: r.try_get("event")?,
                sink,
                status: r.try_get("status")?,
                attempts: u32::try_from(r.try_get::<i64, _>("attempts")?).unwrap_or(0),
                created_at: r.try_get("created_at")?,
                next_attempt_at: r.try_get("next_attempt_at")?,
                last_error: r.try_get("last_error")?,
                finished_at: r.try_get("finished_at")?,
                breaker,
            })
        })
        .collect::<Result<_, _>>()
        .map_err(|e| store.failed(what, e))
}

pub async fn registration_sinks(store: &Store, key: &str) -> Result<Vec<Sink>, StoreError> {
    let what = "reading notification sinks";
    let rows = sqlx::query("SELECT sink FROM notify_sinks WHERE key = ?1 ORDER BY position")
        .bind(key)
        .fetch_all(store.pool())
        .await
        .map_err(|e| store.failed(what, e))?;
    Ok(rows
        .iter()
        .filter_map(|r| r.try_get::<String, _>(0).ok())
        .filter_map(|t| serde_json::from_str(&t).ok())
        .collect())
}

/// Replace the sinks of a registration.
pub async fn set_registration_sinks(
    store: &Store,
    key: &str,
    sinks: &[Sink],
) -> Result<(), StoreError> {
    let what = "saving notification sinks";
    let mut tx = store.begin_write(what).await?;
    sqlx::query("DELETE FROM notify_sinks WHERE key = ?1")
        .bind(key)
        .execute(&mut *tx)
        .await
        .map_err(|e| store.failed(what, e))?;
    for (i, s) in sinks.iter().enumerate() {
        let text = serde_json::to_string(s).map_err(|e| store.failed(what, e))?;
        sqlx::query("INSERT INTO notify_sinks (key, position, sink) VALUES (?1, ?2, ?3)")
            .bind(key)
            .bind(i as i64)
            .bind(text)
            .execute(&mut *tx)
            .await
            .map_err(|e| store.failed(what, e))?;
    }
    tx.commit().await.map_err(|e| store.failed(what, e))
}

/// Drop what watching kept for a registration (on unregister). Outbox rows still pending are
/// kept: a notification already decided is still delivered.
pub async fn forget(store: &Store, key: &str) -> Result<(), StoreError> {
    let what = "removing the watch state";
    let mut tx = store.begin_write(what).await?;
    for q in [
        "DELETE FROM notify_sinks WHERE key = ?1",
        "DELETE FROM watch_state WHERE key = ?1",
        "DELETE FROM pauses WHERE key = ?1",
        // The crash-loop quarantine and its restart history (supervisor/quarantine.rs).
        "DELETE FROM quarantines WHERE key = ?1",
        "DELETE FROM restarts WHERE key = ?1",
    ] {
        sqlx::query(q)
            .bind(key)
            .execute(&mut *tx)
            .await
            .map_err(|e| store.failed(what, e))?;
    }
    tx.commit().await.map_err(|e| store.failed(what, e))
}

/// The watch state and pause of every registration (for the registrations list).
pub async fn all_watch(
    store: &Store,
) -> Result<
    (
        std::collections::HashMap<String, WatchState>,
        std::collections::HashMap<String, Pause>,
    ),
    StoreError,
> {
    let what = "listing watch states";
    let mut states = std::collections::HashMap::new();
    for r in sqlx::query("SELECT key, state FROM watch_state")
        .fetch_all(store.pool())
        .await
        .map_err(|e| store.failed(what, e))?
    {
        let (Ok(k), Ok(s)) = (r.try_get::<String, _>(0), r.try_get::<String, _>(1)) else {
            continue;
        };
        states.insert(k, serde_json::from_str(&s).unwrap_or_default());
    }
    let mut pauses = std::collections::HashMap::new();
    for r in sqlx::query("SELECT key, paused_by, since, reason FROM pauses")
        .fetch_all(store.pool())
        .await
        .map_err(|e| store.failed(what, e))?
    {
        let p = Pause {
            key: r.try_get(0).unwrap_or_default(),
            paused_by: r.try_get(1).unwrap_or_default(),
            since: r.try_get(2).unwrap_or_default(),
            reason: r.try_get(3).unwrap_or_default(),
        };
        pauses.insert(p.key.clone(), p);
    }
    Ok((states, pauses))
}

/// The newest stored tick of every registration that has one (the fleet view), one query over
/// the `(key, id)` index.
pub async fn last_tick_per_key(
    store: &Store,
) -> Result<std::collections::HashMap<String, TickRecord>, StoreError> {
    let q = sqlx::query("SELECT * FROM ticks WHERE id IN (SELECT MAX(id) FROM ticks GROUP BY key)");
    let ticks = fetch_ticks(store, "reading the last tick of each registration", q).await?;
    Ok(ticks.into_iter().map(|t| (t.key.clone(), t)).collect())
}

/// The newest `limit` ticks matching `f`, newest first.
pub async fn list_ticks(
    store: &Store,
    f: &TickFilter,
    limit: u32,
) -> Result<Vec<TickRecord>, StoreError> {
    let q = sqlx::query(
        "SELECT * FROM ticks WHERE (?1 IS NULL OR key = ?1) AND (?2 IS NULL OR event = ?2)
             AND (?3 = 0 OR success = 0) AND (?4 IS NULL OR finished_at >= ?4)
         ORDER BY id DESC LIMIT ?5",
    )
    .bind(&f.key)
    .bind(&f.event)
    .bind(f.failed_only)
    .bind(
        f.since
            .as_deref()
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|d| ts(d.with_timezone(&Utc))),
    )
    .bind(i64::from(limit));
    fetch_ticks(store, "listing ticks", q).await
}
