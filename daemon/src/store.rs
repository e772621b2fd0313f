//! The daemon's SQLite store: registrations, tick reports, chain markers and lifetime counters.
//!
//! One database file (`--db`), WAL mode, schema from the root `migrations/` directory embedded
//! at build time. Timestamps are stored as RFC 3339 UTC text. Secrets are never stored: tick
//! reports arrive already redacted.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use megaplan_cloud_api::marker::LastChainMarker;
use megaplan_cloud_api::report::{NextAction, TickEvent, TickReport, read_stored, to_sorted_value};
use megaplan_cloud_api::sorted::Sorted;
use megaplan_cloud_api::wire::{Registration, StorageHealth, TickCounters, TickRecord};
use megaplan_cloud_api::{ErrorBody, ErrorCode};
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{Connection, Row};

static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// The first 16 bytes of every SQLite 3 database file.
const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

const POOL_CONNECTIONS: u32 = 4;
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A storage failure; the message names the database file and what to do.
#[derive(Debug)]
pub struct StoreError {
    pub message: String,
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StoreError {}

impl From<StoreError> for ErrorBody {
    fn from(e: StoreError) -> Self {
        ErrorBody::new(ErrorCode::StorageFailed, e.message)
    }
}

/// A registration to create or replace.
#[derive(Debug, Clone)]
pub struct NewRegistration {
    pub key: String,
    pub cloud_yaml: String,
    pub schedule: String,
    pub remote_spec: Option<String>,
}

/// A finished tick to store (its report already redacted).
#[derive(Debug, Clone)]
pub struct NewTick {
    pub key: String,
    pub cloud_yaml: String,
    pub trigger: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub success: bool,
    pub event: TickEvent,
    pub next_action: NextAction,
    pub acted: bool,
    pub refused_reason: Option<String>,
    pub report: TickReport,
    /// The due time of a scheduled tick.
    pub due_at: Option<DateTime<Utc>>,
}

/// Handle to the database; cheap to clone (a connection pool inside).
#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
    path: PathBuf,
    keep_ticks_per_key: u32,
    cap: Arc<Cap>,
}

/// The size cap (`--max-db-size`) and the state of pruning to it.
#[derive(Debug)]
struct Cap {
    max_bytes: u64,
    /// One pruning pass at a time; a tick finding one running leaves the work to it.
    pruning: tokio::sync::Mutex<()>,
    /// Set while everything prunable is gone and the database is still over the cap, so that
    /// is logged once, not after every tick.
    stuck_warned: AtomicBool,
}

/// Rows deleted per pruning transaction (ticks, then as many outbox rows).
const PRUNE_BATCH: i64 = 64;

/// Pruning stops at this share of the cap (in tenths), so it runs seldom, not after every tick.
const PRUNE_TO_TENTHS: u64 = 9;

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .field("keep_ticks_per_key", &self.keep_ticks_per_key)
            .field("max_bytes", &self.cap.max_bytes)
            .finish()
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn now() -> String {
    rfc3339(Utc::now())
}

fn non_negative(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl Store {
    /// Open (creating if missing) the database at `path` and bring its schema up to date.
    ///
    /// Refuses, without modifying the file, a database written by a newer daemon (it records a
    /// migration this binary does not know) and a file that is not a SQLite database.
    /// `keep_ticks_per_key` (at least 1) bounds the stored ticks of each registration.
    pub async fn open(path: &Path, keep_ticks_per_key: u32) -> Result<Store, StoreError> {
        Store::open_capped(path, keep_ticks_per_key, u64::MAX).await
    }

    /// [`Store::open`] with a cap on the database's size (`--max-db-size`): a database over it
    /// is pruned before this returns, and after every stored tick that takes it over
    /// ([`Store::enforce_cap`]).
    pub async fn open_capped(
        path: &Path,
        keep_ticks_per_key: u32,
        max_bytes: u64,
    ) -> Result<Store, StoreError> {
        let shown = path.display();
        prepare_file(path)?;
        check_not_newer(path).await?;

        let options = connect_options(path, max_bytes);
        let pool = SqlitePoolOptions::new()
            .max_connections(POOL_CONNECTIONS)
            .after_release(|conn, _| {
                Box::pin(async move {
                    // A COMMIT that fails on a full disk or a read-only file system is rolled
                    // back by SQLite itself; sqlx's own ROLLBACK then fails and its transaction
                    // depth stays above zero, so every later BEGIN on that connection would
                    // fail too. The ping runs after the queued rollback; a connection still "in
                    // a transaction" then is closed, and the pool opens a fresh one.
                    conn.ping().await?;
                    Ok(!conn.is_in_transaction())
                })
            })
            .connect_with(options)
            .await
            .map_err(|e| StoreError {
                message: format!(
                    "cannot open database {shown}: {e}; check that the file and its directory are readable and writable, or use another --db"
                ),
            })?;
        if let Err(e) = MIGRATOR.run(&pool).await {
            pool.close().await;
            return Err(StoreError {
                message: format!(
                    "cannot bring database {shown} up to date: {e}; restore a backup or use another --db"
                ),
            });
        }
        let store = Store {
            pool,
            path: path.to_path_buf(),
            keep_ticks_per_key: keep_ticks_per_key.max(1),
            cap: Arc::new(Cap {
                max_bytes,
                pruning: tokio::sync::Mutex::new(()),
                stuck_warned: AtomicBool::new(false),
            }),
        };
        store.convert_to_incremental_vacuum().await;
        if let Err(e) = store.enforce_cap().await {
            store.close().await;
            return Err(e);
        }
        Ok(store)
    }

    /// A database created before the size cap has `auto_vacuum = NONE`: one VACUUM turns on
    /// incremental vacuum (it rewrites the file once). Best effort: without it pruning still
    /// keeps the pages in use under the cap, the file just does not shrink.
    async fn convert_to_incremental_vacuum(&self) {
        let mode: Result<i64, sqlx::Error> = sqlx::query("PRAGMA auto_vacuum")
            .fetch_one(&self.pool)
            .await
            .and_then(|r| r.try_get(0));
        if matches!(mode, Ok(2)) {
            return;
        }
        // The mode and the VACUUM that applies it must run on one connection; the mode is
        // stored in the file, so later connections need not set it.
        let converted = async {
            let mut conn = self.pool.acquire().await?;
            sqlx::query("PRAGMA auto_vacuum = INCREMENTAL")
                .execute(&mut *conn)
                .await?;
            sqlx::query("VACUUM").execute(&mut *conn).await
        };
        if let Err(e) = converted.await {
            tracing::warn!(
                db = %self.path.display(),
                "cannot turn on incremental vacuum ({e}); pruning keeps the database's pages under --max-db-size but the file will not shrink"
            );
        }
    }

    /// The cap in bytes (`--max-db-size`).
    pub fn max_bytes(&self) -> u64 {
        self.cap.max_bytes
    }

    /// Pages in use (all pages minus the free list), in bytes.
    async fn used_bytes(&self) -> Result<u64, StoreError> {
        let used: i64 = sqlx::query(
            "SELECT (p.page_count - f.freelist_count) * s.page_size
             FROM pragma_page_count() p, pragma_freelist_count() f, pragma_page_size() s",
        )
        .fetch_one(&self.pool)
        .await
        .and_then(|r| r.try_get(0))
        .map_err(|e| self.failed("measuring the database", e))?;
        Ok(non_negative(used))
    }

    /// Keep the database under its cap: when the pages in use exceed it, delete the oldest
    /// prunable rows in small transactions until they are under nine tenths of it, then give
    /// the freed pages back and checkpoint the WAL. Prunable: tick reports the watcher has read
    /// that are not the newest of their registration, and delivered or failed outbox rows
    /// (never a pending one). Returns how many rows were deleted.
    pub async fn enforce_cap(&self) -> Result<u64, StoreError> {
        let Ok(_pass) = self.cap.pruning.try_lock() else {
            return Ok(0);
        };
        let max = self.cap.max_bytes;
        let used = self.used_bytes().await?;
        if used <= max {
            self.cap.stuck_warned.store(false, Ordering::Relaxed);
            return Ok(0);
        }
        let target = max / 10 * PRUNE_TO_TENTHS;
        let mut pruned = 0u64;
        let mut now_used = used;
        while now_used > target {
            let n = self.prune_batch().await?;
            if n == 0 {
                break;
            }
            pruned += n;
            now_used = self.used_bytes().await?;
        }
        if pruned > 0 {
            // Both best effort: pruning is already committed.
            let _ = sqlx::query("PRAGMA incremental_vacuum")
                .execute(&self.pool)
                .await;
            let _ = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(&self.pool)
                .await;
            tracing::info!(
                db = %self.path.display(),
                pruned,
                used_before = used,
                used_after = now_used,
                max_bytes = max,
                "pruned the oldest rows to keep the database under --max-db-size"
            );
        }
        if now_used > max {
            if !self.cap.stuck_warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    db = %self.path.display(),
                    used_bytes = now_used,
                    max_bytes = max,
                    "the database is over --max-db-size with nothing left to prune (registrations, newest ticks and undelivered notifications are kept); raise --max-db-size"
                );
            }
        } else {
            self.cap.stuck_warned.store(false, Ordering::Relaxed);
        }
        Ok(pruned)
    }

    /// One pruning transaction: the oldest [`PRUNE_BATCH`] prunable ticks, then the finished
    /// outbox rows created up to the newest of them (or, with no tick left to prune, the oldest
    /// [`PRUNE_BATCH`] finished ones), so both go oldest first. Counted in `counters`.
    async fn prune_batch(&self) -> Result<u64, StoreError> {
        let what = "pruning the database to its size cap";
        let mut tx = self.begin_write(what).await?;
        let finished: Vec<String> = sqlx::query(
            "DELETE FROM ticks WHERE id IN (
                 SELECT id FROM ticks
                 WHERE id <= COALESCE((SELECT last_tick_id FROM watch_cursor WHERE id = 1), 0)
                   AND id NOT IN (SELECT MAX(id) FROM ticks GROUP BY key)
                 ORDER BY id LIMIT ?1)
             RETURNING finished_at",
        )
        .bind(PRUNE_BATCH)
        .fetch_all(&mut *tx)
        .await
        .and_then(|rows| rows.iter().map(|r| r.try_get(0)).collect())
        .map_err(|e| self.failed(what, e))?;
        let up_to = finished.iter().max();
        let outbox = sqlx::query(
            "DELETE FROM outbox WHERE id IN (
                 SELECT id FROM outbox
                 WHERE status IN ('delivered', 'failed') AND (?1 IS NULL OR created_at <= ?1)
                 ORDER BY id LIMIT ?2)",
        )
        .bind(up_to.cloned())
        .bind(PRUNE_BATCH)
        .execute(&mut *tx)
        .await
        .map_err(|e| self.failed(what, e))?
        .rows_affected();
        let ticks = finished.len() as u64;
        for (name, n) in [("pruned_ticks", ticks), ("pruned_notifications", outbox)] {
            sqlx::query(
                "INSERT INTO counters (name, value) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
            )
            .bind(name)
            .bind(i64::try_from(n).unwrap_or(i64::MAX))
            .execute(&mut *tx)
            .await
            .map_err(|e| self.failed(what, e))?;
        }
        tx.commit().await.map_err(|e| self.failed(what, e))?;
        Ok(ticks + outbox)
    }

    /// The database against its cap, for `daemon status`.
    pub async fn storage(&self) -> Result<StorageHealth, StoreError> {
        let used_bytes = self.used_bytes().await?;
        let what = "reading the pruning counters";
        let rows = sqlx::query(
            "SELECT name, value FROM counters WHERE name IN ('pruned_ticks', 'pruned_notifications')",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.failed(what, e))?;
        let mut h = StorageHealth {
            used_bytes,
            max_bytes: self.cap.max_bytes,
            ..StorageHealth::default()
        };
        for row in rows {
            let name: String = row.try_get(0).map_err(|e| self.failed(what, e))?;
            let value = non_negative(row.try_get(1).map_err(|e| self.failed(what, e))?);
            match name.as_str() {
                "pruned_ticks" => h.pruned_ticks = value,
                "pruned_notifications" => h.pruned_notifications = value,
                _ => {}
            }
        }
        let mut wal = self.path.as_os_str().to_os_string();
        wal.push("-wal");
        h.size_bytes = [self.path.as_os_str(), wal.as_os_str()]
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum();
        Ok(h)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A write transaction (`BEGIN IMMEDIATE`: it takes the write lock at its start, so its
    /// reads and writes see one state); `what` names the work in the error.
    pub(crate) async fn begin_write(
        &self,
        what: &str,
    ) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, StoreError> {
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| self.failed(what, e))
    }

    /// The error of a statement `what` that failed with `e`, naming the database file (every
    /// module with tables of its own says it this way).
    pub(crate) fn failed(&self, what: &str, e: impl std::fmt::Display) -> StoreError {
        StoreError {
            message: format!(
                "database {}: {what} failed: {e}; check free disk space and that the file is writable",
                self.path.display()
            ),
        }
    }

    /// SQLite's `PRAGMA integrity_check`: `"ok"` when the file is sound, else the problems found.
    pub async fn integrity_check(&self) -> Result<String, StoreError> {
        let rows = sqlx::query("PRAGMA integrity_check")
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.failed("integrity check", e))?;
        let lines: Vec<String> = rows
            .iter()
            .map(|r| r.try_get::<String, _>(0))
            .collect::<Result<_, _>>()
            .map_err(|e| self.failed("integrity check", e))?;
        Ok(lines.join("\n"))
    }

    /// Create or replace a registration. Re-registering keeps `created_at`, the counters and
    /// the last-tick fields; only the path, schedule and remote spec change.
    pub async fn upsert_registration(
        &self,
        r: &NewRegistration,
    ) -> Result<Registration, StoreError> {
        let what = "saving the registration";
        let now = now();
        // An explicit transaction: in autocommit mode the commit of an `INSERT ... RETURNING`
        // happens when the statement is reset after its row was read, and a failed commit
        // (disk full, read-only file system) would be lost there, reporting a registration
        // that was never stored.
        let mut tx = self.begin_write(what).await?;
        let row = sqlx::query(
            "INSERT INTO registrations (key, cloud_yaml, schedule, remote_spec, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?5)
             ON CONFLICT (key) DO UPDATE SET
                 cloud_yaml = excluded.cloud_yaml,
                 schedule = excluded.schedule,
                 remote_spec = excluded.remote_spec,
                 updated_at = excluded.updated_at
             RETURNING *",
        )
        .bind(&r.key)
        .bind(&r.cloud_yaml)
        .bind(&r.schedule)
        .bind(&r.remote_spec)
        .bind(&now)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| self.failed(what, e))?;
        let reg =
            registration_from_row(&row).map_err(|e| self.failed("reading the registration", e))?;
        tx.commit().await.map_err(|e| self.failed(what, e))?;
        Ok(reg)
    }

    /// Remove a registration and its stored ticks (they describe a schedule that no longer
    /// exists). Its chain marker is kept: it describes the remote chain, not the schedule.
    /// Lifetime counters are not lowered. Returns whether the registration existed.
    pub async fn delete_registration(&self, key: &str) -> Result<bool, StoreError> {
        let what = "removing the registration";
        let mut tx = self.begin_write(what).await?;
        let deleted = sqlx::query("DELETE FROM registrations WHERE key = ?1")
            .bind(key)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.failed(what, e))?
            .rows_affected();
        sqlx::query("DELETE FROM ticks WHERE key = ?1")
            .bind(key)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.failed(what, e))?;
        tx.commit().await.map_err(|e| self.failed(what, e))?;
        Ok(deleted > 0)
    }

    pub async fn get_registration(&self, key: &str) -> Result<Option<Registration>, StoreError> {
        let what = "reading the registration";
        let row = sqlx::query("SELECT * FROM registrations WHERE key = ?1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.failed(what, e))?;
        row.as_ref()
            .map(registration_from_row)
            .transpose()
            .map_err(|e| self.failed(what, e))
    }

    pub async fn count_registrations(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query("SELECT count(*) FROM registrations")
            .fetch_one(&self.pool)
            .await
            .and_then(|r| r.try_get(0))
            .map_err(|e| self.failed("counting registrations", e))?;
        Ok(non_negative(n))
    }

    /// All registrations, oldest first.
    pub async fn list_registrations(&self) -> Result<Vec<Registration>, StoreError> {
        let what = "listing registrations";
        let rows = sqlx::query("SELECT * FROM registrations ORDER BY created_at, key")
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.failed(what, e))?;
        rows.iter()
            .map(registration_from_row)
            .collect::<Result<_, _>>()
            .map_err(|e| self.failed(what, e))
    }

    /// Store a tick. In one transaction: insert it, update its registration's last-tick fields
    /// and counter (when registered), bump the lifetime counters, and drop the key's oldest
    /// ticks beyond the retention limit.
    pub async fn insert_tick(&self, t: &NewTick) -> Result<TickRecord, StoreError> {
        let what = "saving the tick report";
        let started_at = rfc3339(t.started_at);
        let finished_at = rfc3339(t.finished_at);
        let due_at = t.due_at.map(rfc3339);
        let duration_ms = non_negative((t.finished_at - t.started_at).num_milliseconds());
        let report = to_sorted_value(&t.report)
            .and_then(|v| serde_json::to_string(&v))
            .map_err(|e| self.failed("encoding the tick report", e))?;
        let mut tx = self.begin_write(what).await?;
        let id: i64 = sqlx::query(
            "INSERT INTO ticks (key, cloud_yaml, tick_trigger, started_at, finished_at, duration_ms,
                                success, event, next_action, acted, refused_reason, report, due_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
             RETURNING id",
        )
        .bind(&t.key)
        .bind(&t.cloud_yaml)
        .bind(&t.trigger)
        .bind(&started_at)
        .bind(&finished_at)
        .bind(i64::try_from(duration_ms).unwrap_or(i64::MAX))
        .bind(t.success)
        .bind(t.event.as_str())
        .bind(t.next_action.as_str())
        .bind(t.acted)
        .bind(&t.refused_reason)
        .bind(&report)
        .bind(&due_at)
        .fetch_one(&mut *tx)
        .await
        .and_then(|row| row.try_get(0))
        .map_err(|e| self.failed(what, e))?;
        sqlx::query(
            "UPDATE registrations
             SET last_tick_at = ?2, last_event = ?3, last_success = ?4, ticks_run = ticks_run + 1
             WHERE key = ?1",
        )
        .bind(&t.key)
        .bind(&finished_at)
        .bind(t.event.as_str())
        .bind(t.success)
        .execute(&mut *tx)
        .await
        .map_err(|e| self.failed(what, e))?;
        sqlx::query(
            "UPDATE counters SET value = value + 1
             WHERE name = 'ticks_run' OR (name = 'ticks_failed' AND ?1 = 0)",
        )
        .bind(t.success)
        .execute(&mut *tx)
        .await
        .map_err(|e| self.failed(what, e))?;
        sqlx::query(
            "DELETE FROM ticks WHERE key = ?1 AND id NOT IN
                 (SELECT id FROM ticks WHERE key = ?1 ORDER BY id DESC LIMIT ?2)",
        )
        .bind(&t.key)
        .bind(i64::from(self.keep_ticks_per_key))
        .execute(&mut *tx)
        .await
        .map_err(|e| self.failed("applying tick retention", e))?;
        tx.commit().await.map_err(|e| self.failed(what, e))?;
        // The tick is stored whatever pruning then finds: a failure there is only logged.
        if let Err(e) = self.enforce_cap().await {
            tracing::warn!("{e}");
        }
        Ok(TickRecord {
            id,
            key: t.key.clone(),
            cloud_yaml: t.cloud_yaml.clone(),
            trigger: t.trigger.clone(),
            started_at,
            finished_at,
            duration_ms,
            success: t.success,
            event: t.event.clone(),
            next_action: t.next_action.clone(),
            acted: t.acted,
            refused_reason: t.refused_reason.clone(),
            report: t.report.clone(),
            due_at,
        })
    }

    /// Count a tick that was skipped because the previous one for `key` was still running.
    pub async fn record_skip(&self, key: &str) -> Result<(), StoreError> {
        let what = "counting a skipped tick";
        let mut tx = self.begin_write(what).await?;
        sqlx::query("UPDATE registrations SET ticks_skipped = ticks_skipped + 1 WHERE key = ?1")
            .bind(key)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.failed(what, e))?;
        sqlx::query("UPDATE counters SET value = value + 1 WHERE name = 'ticks_skipped'")
            .execute(&mut *tx)
            .await
            .map_err(|e| self.failed(what, e))?;
        tx.commit().await.map_err(|e| self.failed(what, e))
    }

    /// The newest `limit` ticks (of `key`, or of every key), newest first.
    pub async fn list_ticks(
        &self,
        key: Option<&str>,
        limit: u32,
    ) -> Result<Vec<TickRecord>, StoreError> {
        let what = "listing ticks";
        let query = match key {
            Some(key) => {
                sqlx::query("SELECT * FROM ticks WHERE key = ?1 ORDER BY id DESC LIMIT ?2")
                    .bind(key)
            }
            None => sqlx::query("SELECT * FROM ticks ORDER BY id DESC LIMIT ?1"),
        };
        let rows = query
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.failed(what, e))?;
        rows.iter()
            .map(tick_from_row)
            .collect::<Result<_, _>>()
            .map_err(|e| self.failed(what, e))
    }

    /// Ticks with an id above `after_id` (of `key`, or of every key), oldest first.
    pub async fn ticks_after(
        &self,
        after_id: i64,
        key: Option<&str>,
    ) -> Result<Vec<TickRecord>, StoreError> {
        let what = "reading new ticks";
        let rows = sqlx::query(
            "SELECT * FROM ticks WHERE id > ?1 AND (?2 IS NULL OR key = ?2) ORDER BY id",
        )
        .bind(after_id)
        .bind(key)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.failed(what, e))?;
        rows.iter()
            .map(tick_from_row)
            .collect::<Result<_, _>>()
            .map_err(|e| self.failed(what, e))
    }

    /// Lifetime counters: every tick ever stored, the failed ones, and the skipped ones.
    pub async fn tick_counters(&self) -> Result<TickCounters, StoreError> {
        let what = "reading tick counters";
        let rows = sqlx::query("SELECT name, value FROM counters")
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.failed(what, e))?;
        let mut counters = TickCounters::default();
        for row in rows {
            let name: String = row.try_get(0).map_err(|e| self.failed(what, e))?;
            let value = non_negative(row.try_get(1).map_err(|e| self.failed(what, e))?);
            match name.as_str() {
                "ticks_run" => counters.run = value,
                "ticks_failed" => counters.failed = value,
                "ticks_skipped" => counters.skipped = value,
                _ => {}
            }
        }
        Ok(counters)
    }

    /// Save the chain marker of a cloud.yaml (replacing the previous one).
    pub async fn put_marker(
        &self,
        key: &str,
        cloud_yaml: &str,
        marker: &LastChainMarker,
    ) -> Result<(), StoreError> {
        let what = "saving the chain marker";
        // Keys sorted: the one form stored (and written to the legacy file).
        let text = serde_json::to_string(&Sorted(marker)).map_err(|e| self.failed(what, e))?;
        sqlx::query(
            "INSERT INTO markers (key, cloud_yaml, marker, updated_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (key) DO UPDATE SET
                 cloud_yaml = excluded.cloud_yaml,
                 marker = excluded.marker,
                 updated_at = excluded.updated_at",
        )
        .bind(key)
        .bind(cloud_yaml)
        .bind(&text)
        .bind(now())
        .execute(&self.pool)
        .await
        .map_err(|e| self.failed(what, e))?;
        Ok(())
    }

    /// The stored chain marker, read in either shape (see [`LastChainMarker::read`]).
    pub async fn get_marker(&self, key: &str) -> Result<Option<LastChainMarker>, StoreError> {
        let what = "reading the chain marker";
        let text: Option<String> = sqlx::query("SELECT marker FROM markers WHERE key = ?1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .and_then(|row| row.map(|r| r.try_get(0)).transpose())
            .map_err(|e| self.failed(what, e))?;
        text.map(|t| serde_json::from_str(&t).map(LastChainMarker::read))
            .transpose()
            .map_err(|e| self.failed(what, format!("stored marker is not JSON: {e}")))
    }

    /// Close every connection (checkpointing the WAL). Further calls fail.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

// Access for the watch and notification tables of migrations/0002_watch.sql, whose queries
// live in notify/store.rs.
impl Store {
    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

/// A launch the runner's gate refused, or a preflight stopped (migrations/0005_fencing.sql).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GateRefusal {
    pub id: i64,
    pub key: String,
    pub at: String,
    /// Who tried: `tick` or `chain`.
    pub source: String,
    /// `stale_token`, `live_driver`, `preflight_failed`, ...
    pub reason: String,
    pub offered: Option<u64>,
    pub held: Option<u64>,
    pub holder: Option<String>,
    pub message: String,
}

/// What to record of one refused launch.
#[derive(Debug, Clone, Default)]
pub struct NewGateRefusal<'a> {
    pub source: &'a str,
    pub reason: &'a str,
    pub offered: Option<u64>,
    pub held: Option<u64>,
    pub holder: Option<&'a str>,
    pub message: &'a str,
}

fn token_i64(t: u64) -> i64 {
    i64::try_from(t).unwrap_or(i64::MAX)
}

// Fencing tokens and refused launches (docs/operations.md "Fencing").
impl Store {
    /// The fencing token this daemon last knew for `key` (0 when none).
    pub async fn fence_token(&self, key: &str) -> Result<u64, StoreError> {
        let what = "reading the fencing token";
        let token: Option<i64> = sqlx::query("SELECT token FROM fencing WHERE key = ?1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .and_then(|row| row.map(|r| r.try_get(0)).transpose())
            .map_err(|e| self.failed(what, e))?;
        Ok(token.map(non_negative).unwrap_or(0))
    }

    /// Remember that the runner holds at least `token` for `key` (held by `holder`). The stored
    /// token never goes down: a lower one changes nothing.
    pub async fn raise_fence_token(
        &self,
        key: &str,
        token: u64,
        holder: Option<&str>,
    ) -> Result<(), StoreError> {
        let what = "saving the fencing token";
        sqlx::query(
            "INSERT INTO fencing (key, token, holder, updated_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (key) DO UPDATE SET
                 holder = CASE WHEN excluded.token > fencing.token THEN excluded.holder ELSE fencing.holder END,
                 updated_at = CASE WHEN excluded.token > fencing.token THEN excluded.updated_at ELSE fencing.updated_at END,
                 token = MAX(fencing.token, excluded.token)",
        )
        .bind(key)
        .bind(token_i64(token))
        .bind(holder)
        .bind(now())
        .execute(&self.pool)
        .await
        .map_err(|e| self.failed(what, e))?;
        Ok(())
    }

    /// Record a refused launch of `key`, keeping the newest `keep_ticks_per_key` of them.
    pub async fn record_gate_refusal(
        &self,
        key: &str,
        r: &NewGateRefusal<'_>,
    ) -> Result<(), StoreError> {
        let what = "recording a refused launch";
        let mut tx = self.pool.begin().await.map_err(|e| self.failed(what, e))?;
        sqlx::query(
            "INSERT INTO gate_refusals (key, at, source, reason, offered, held, holder, message)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )
        .bind(key)
        .bind(now())
        .bind(r.source)
        .bind(r.reason)
        .bind(r.offered.map(token_i64))
        .bind(r.held.map(token_i64))
        .bind(r.holder)
        .bind(r.message)
        .execute(&mut *tx)
        .await
        .map_err(|e| self.failed(what, e))?;
        sqlx::query(
            "DELETE FROM gate_refusals WHERE key = ?1 AND id NOT IN
                 (SELECT id FROM gate_refusals WHERE key = ?1 ORDER BY id DESC LIMIT ?2)",
        )
        .bind(key)
        .bind(i64::from(self.keep_ticks_per_key))
        .execute(&mut *tx)
        .await
        .map_err(|e| self.failed(what, e))?;
        tx.commit().await.map_err(|e| self.failed(what, e))?;
        Ok(())
    }

    /// The newest `limit` refused launches of `key`, newest first.
    pub async fn gate_refusals(
        &self,
        key: &str,
        limit: u32,
    ) -> Result<Vec<GateRefusal>, StoreError> {
        let what = "reading refused launches";
        let rows = sqlx::query(
            "SELECT id, key, at, source, reason, offered, held, holder, message
             FROM gate_refusals WHERE key = ?1 ORDER BY id DESC LIMIT ?2",
        )
        .bind(key)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.failed(what, e))?;
        rows.iter()
            .map(|row| {
                Ok(GateRefusal {
                    id: row.try_get("id")?,
                    key: row.try_get("key")?,
                    at: row.try_get("at")?,
                    source: row.try_get("source")?,
                    reason: row.try_get("reason")?,
                    offered: row.try_get::<Option<i64>, _>("offered")?.map(non_negative),
                    held: row.try_get::<Option<i64>, _>("held")?.map(non_negative),
                    holder: row.try_get("holder")?,
                    message: row.try_get("message")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(|e| self.failed(what, e))
    }
}

fn registration_from_row(row: &SqliteRow) -> Result<Registration, sqlx::Error> {
    Ok(Registration {
        key: row.try_get("key")?,
        cloud_yaml: row.try_get("cloud_yaml")?,
        schedule: row.try_get("schedule")?,
        remote_spec: row.try_get("remote_spec")?,
        created_at: row.try_get("created_at")?,
        last_tick_at: row.try_get("last_tick_at")?,
        last_event: row.try_get("last_event")?,
        last_success: row.try_get("last_success")?,
        ticks_run: non_negative(row.try_get("ticks_run")?),
        ticks_skipped: non_negative(row.try_get("ticks_skipped")?),
        cron: None,
        next_due_at: None,
        backoff: None,
    })
}

pub(crate) fn tick_from_row(row: &SqliteRow) -> Result<TickRecord, sqlx::Error> {
    let text: String = row.try_get("report")?;
    // A report no version of the type reads still loads (kept whole), described by its columns.
    if serde_json::from_str::<serde::de::IgnoredAny>(&text).is_err() {
        return Err(sqlx::Error::ColumnDecode {
            index: "report".into(),
            source: "the stored tick report is not JSON".into(),
        });
    }
    let event: String = row.try_get("event")?;
    let next_action: String = row.try_get("next_action")?;
    let refused: Option<String> = row.try_get("refused_reason")?;
    let report = read_stored(&text, || {
        let mut r = TickReport::error(refused.as_deref().unwrap_or(""));
        r.refused_reason = refused.clone();
        r.event = event.parse().unwrap_or_else(|e| match e {});
        r.next_action = next_action.parse().unwrap_or_else(|e| match e {});
        r
    });
    Ok(TickRecord {
        id: row.try_get("id")?,
        key: row.try_get("key")?,
        cloud_yaml: row.try_get("cloud_yaml")?,
        trigger: row.try_get("tick_trigger")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        duration_ms: non_negative(row.try_get("duration_ms")?),
        success: row.try_get("success")?,
        event: event.parse().unwrap_or_else(|e| match e {}),
        next_action: next_action.parse().unwrap_or_else(|e| match e {}),
        acted: row.try_get("acted")?,
        refused_reason: row.try_get("refused_reason")?,
        report,
        due_at: row.try_get("due_at")?,
    })
}

/// How every pool connection is opened. Nothing here may write: the pool opens connections
/// lazily and again after a failed COMMIT, which is exactly when the disk may be full or read-only.
fn connect_options(path: &Path, max_bytes: u64) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(BUSY_TIMEOUT)
        .foreign_keys(true)
        // No `auto_vacuum` here: setting it is a write transaction on every new connection,
        // so a pool connection opened after the disk filled up or turned read-only would
        // fail and take plain reads down with it. The mode is set once, at open
        // (`Store::convert_to_incremental_vacuum`).
        // The WAL counts against the cap too: checkpoint it at about a quarter of the cap
        // (SQLite's default of 1000 pages at most) and truncate it back to that size.
        .pragma(
            "wal_autocheckpoint",
            (max_bytes / 4 / 4096).clamp(16, 1000).to_string(),
        )
        .pragma(
            "journal_size_limit",
            i64::try_from(max_bytes / 4).unwrap_or(-1).to_string(),
        )
}

/// Create the parent directory (0700) and the database file (0600) when missing, so SQLite's
/// own files (and their WAL companions, which copy the mode) are private from the start. An
/// existing non-empty file must carry the SQLite header.
fn prepare_file(path: &Path) -> Result<(), StoreError> {
    use std::io::Read;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};

    let shown = path.display();
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && !parent.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(|e| StoreError {
                message: format!(
                    "cannot create the directory {} for database {shown}: {e}; create it or use another --db",
                    parent.display()
                ),
            })?;
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(StoreError {
                message: format!(
                    "cannot create database {shown}: {e}; check the directory's permissions or use another --db"
                ),
            });
        }
    }
    let mut header = Vec::with_capacity(SQLITE_HEADER.len());
    std::fs::File::open(path)
        .and_then(|f| f.take(SQLITE_HEADER.len() as u64).read_to_end(&mut header))
        .map_err(|e| StoreError {
            message: format!(
                "cannot read database {shown}: {e}; check its permissions or use another --db"
            ),
        })?;
    if !header.is_empty() && header.as_slice() != SQLITE_HEADER.as_slice() {
        return Err(StoreError {
            message: format!(
                "{shown} is not a SQLite database; move it aside or point --db at another file"
            ),
        });
    }
    Ok(())
}

/// Refuse a database whose schema is newer than this binary, or that another program created,
/// before anything writes to it: the check runs on a read-only connection.
async fn check_not_newer(path: &Path) -> Result<(), StoreError> {
    let shown = path.display();
    let cannot_read = |e: sqlx::Error| StoreError {
        message: match not_writable(path) {
            // SQLite cannot open a WAL database without writing beside it: say so rather than
            // suspect the file.
            Some(why) => format!(
                "cannot open database {shown}: {e}; {why}: make it writable (remount the file system read-write, fix its permissions) or use another --db"
            ),
            None => format!(
                "cannot read database {shown}: {e}; it may be corrupt or not a SQLite database; move it aside or use another --db"
            ),
        },
    };
    let options = SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .busy_timeout(BUSY_TIMEOUT);
    let mut conn = SqliteConnection::connect_with(&options)
        .await
        .map_err(cannot_read)?;
    let result = schema_problem(&mut conn).await;
    // A damaged file must not be served: it would answer with a partial (or empty) list of
    // registrations and schedule nothing. quick_check reads every page (O(file size)).
    let damage = match &result {
        Ok(None) => quick_check(&mut conn).await,
        _ => Ok(None),
    };
    // Closing is best effort: nothing was written on this connection.
    let _ = conn.close().await;
    if let Some(found) = damage.map_err(|e| StoreError {
        message: format!(
            "database {shown} is damaged: PRAGMA quick_check could not complete ({e}); restore it from a backup, or move it aside (registrations and tick history are then lost) and start again; see docs/operations.md"
        ),
    })? {
        return Err(StoreError {
            message: format!(
                "database {shown} is damaged: PRAGMA quick_check found: {found}; restore it from a backup, or move it aside (registrations and tick history are then lost) and start again; see docs/operations.md"
            ),
        });
    }
    match result.map_err(cannot_read)? {
        Some(SchemaProblem::Newer(version)) => Err(StoreError {
            message: format!(
                "database {shown} was written by a newer megaplan-cloudd (migration {version}); upgrade megaplan-cloudd or use another --db"
            ),
        }),
        Some(SchemaProblem::Foreign) => Err(StoreError {
            message: format!(
                "{shown} is a SQLite database that megaplan-cloudd did not create (it has tables but no migration history); point --db at another file"
            ),
        }),
        None => Ok(()),
    }
}

/// Why the database file or its folder cannot be written, if so. access(2) reports a read-only
/// file system (EROFS) even to root, which permission bits would not show.
fn not_writable(path: &Path) -> Option<String> {
    use std::os::unix::ffi::OsStrExt;
    let folder = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    [folder, path].into_iter().find_map(|p| {
        let c = std::ffi::CString::new(p.as_os_str().as_bytes()).ok()?;
        // SAFETY: access(2) only reads the NUL-terminated path it is given.
        let rc = unsafe { libc::access(c.as_ptr(), libc::W_OK) };
        (rc != 0).then(|| {
            format!(
                "{} is not writable ({})",
                p.display(),
                std::io::Error::last_os_error()
            )
        })
    })
}

/// `PRAGMA quick_check`: `None` when the file is sound, else the first problems it reports.
async fn quick_check(conn: &mut SqliteConnection) -> Result<Option<String>, sqlx::Error> {
    const SHOWN: usize = 3;
    let rows = sqlx::query("PRAGMA quick_check(10)")
        .fetch_all(&mut *conn)
        .await?;
    let lines: Vec<String> = rows
        .iter()
        .map(|r| r.try_get::<String, _>(0))
        .collect::<Result<_, _>>()?;
    if lines.len() == 1 && lines[0] == "ok" {
        return Ok(None);
    }
    let mut found: Vec<&str> = lines.iter().take(SHOWN).map(String::as_str).collect();
    if lines.len() > SHOWN {
        found.push("…");
    }
    Ok(Some(found.join("; ")))
}

enum SchemaProblem {
    /// A recorded migration this binary does not know (the newest such version).
    Newer(i64),
    /// Tables, but no migration history: someone else's database.
    Foreign,
}

async fn schema_problem(conn: &mut SqliteConnection) -> Result<Option<SchemaProblem>, sqlx::Error> {
    let has_history: i64 = sqlx::query(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
    )
    .fetch_one(&mut *conn)
    .await?
    .try_get(0)?;
    if has_history == 0 {
        let tables: i64 = sqlx::query(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
        )
        .fetch_one(&mut *conn)
        .await?
        .try_get(0)?;
        return Ok((tables > 0).then_some(SchemaProblem::Foreign));
    }
    let rows = sqlx::query("SELECT version FROM _sqlx_migrations ORDER BY version DESC")
        .fetch_all(&mut *conn)
        .await?;
    for row in rows {
        let version: i64 = row.try_get(0)?;
        if !MIGRATOR.version_exists(version) {
            return Ok(Some(SchemaProblem::Newer(version)));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    #[test]
    fn not_writable_names_the_place_and_the_cause() {
        let tmp = tempfile::tempdir().unwrap();
        let db = tmp.path().join("cloudd.db");
        std::fs::write(&db, b"").unwrap();
        assert_eq!(not_writable(&db), None);
        let gone = tmp.path().join("missing").join("cloudd.db");
        let why = not_writable(&gone).unwrap();
        assert!(why.contains("missing is not writable"), "{why}");
        assert!(why.contains("No such file or directory"), "{why}");
    }

    fn reg(key: &str, schedule: &str) -> NewRegistration {
        NewRegistration {
            key: key.to_string(),
            cloud_yaml: format!("/work/{key}/cloud.yaml"),
            schedule: schedule.to_string(),
            remote_spec: None,
        }
    }

    fn tick(key: &str, n: i64, success: bool) -> NewTick {
        let started_at =
            Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap() + chrono::Duration::seconds(n * 60);
        NewTick {
            key: key.to_string(),
            cloud_yaml: format!("/work/{key}/cloud.yaml"),
            trigger: "schedule".to_string(),
            started_at,
            finished_at: started_at + chrono::Duration::milliseconds(1500),
            success,
            event: TickEvent::Other(format!("event-{n}")),
            next_action: NextAction::None,
            acted: n % 2 == 0,
            refused_reason: (!success).then(|| "provider mismatch".to_string()),
            report: TickReport {
                extra: json!({"n": n, "nested": {"list": [1, "two", null]}})
                    .as_object()
                    .cloned()
                    .unwrap(),
                ..TickReport::error("")
            },
            due_at: (n % 2 == 0).then_some(started_at),
        }
    }

    /// Regression: a pool connection is opened lazily, and again after a failed COMMIT, i.e.
    /// exactly when the disk may be full or read-only. Opening one must not write (setting
    /// `auto_vacuum` per connection did, and plain reads then failed with "attempt to write a
    /// readonly database").
    #[tokio::test]
    async fn opening_a_connection_writes_nothing_and_the_vacuum_mode_is_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cloudd.db");
        let store = Store::open_capped(&path, 10, 1 << 20).await.unwrap();
        store.close().await;
        let mut conn =
            SqliteConnection::connect_with(&connect_options(&path, 1 << 20).read_only(true))
                .await
                .unwrap();
        let mode: i64 = sqlx::query("PRAGMA auto_vacuum")
            .fetch_one(&mut conn)
            .await
            .unwrap()
            .try_get(0)
            .unwrap();
        assert_eq!(mode, 2, "incremental vacuum is stored in the file");
        let regs: i64 = sqlx::query("SELECT count(*) FROM registrations")
            .fetch_one(&mut conn)
            .await
            .unwrap()
            .try_get(0)
            .unwrap();
        assert_eq!(regs, 0);
    }

    fn padded_tick(key: &str, n: i64) -> NewTick {
        let mut t = tick(key, n, true);
        t.report.extra = json!({"n": n, "pad": "x".repeat(2000)})
            .as_object()
            .cloned()
            .unwrap();
        t
    }

    async fn count(store: &Store, sql: &str) -> i64 {
        sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
            .fetch_one(store.pool())
            .await
            .unwrap()
            .try_get(0)
            .unwrap()
    }

    #[tokio::test]
    async fn over_the_cap_the_oldest_rows_go_and_pending_newest_and_unwatched_stay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cloudd.db");
        // Room for the schema (every migration's tables take pages of their own) and the rows
        // that are never pruned; the 120 padded ticks below still take twice as much.
        let cap = 256 * 1024;
        let store = Store::open_capped(&path, 10_000, cap).await.unwrap();
        // Unwatched ticks are never pruned: all of these stay while the cursor is at 0.
        for n in 0..60 {
            store.insert_tick(&padded_tick("a", n)).await.unwrap();
        }
        for n in 60..120 {
            store.insert_tick(&padded_tick("b", n)).await.unwrap();
        }
        assert_eq!(count(&store, "SELECT count(*) FROM ticks").await, 120);
        assert!(store.used_bytes().await.unwrap() > cap);
        for (status, n) in [("delivered", 40), ("failed", 10), ("pending", 3)] {
            for _ in 0..n {
                sqlx::query(
                    "INSERT INTO outbox (key, event, sink, body, created_at, status, next_attempt_at)
                     VALUES ('a', 'e', '{}', ?1, '2020-01-01T00:00:00.000Z', ?2, '2999-01-01T00:00:00.000Z')",
                )
                .bind("y".repeat(1000))
                .bind(status)
                .execute(store.pool())
                .await
                .unwrap();
            }
        }
        let newest_a = count(&store, "SELECT MAX(id) FROM ticks WHERE key = 'a'").await;
        let last = count(&store, "SELECT MAX(id) FROM ticks").await;
        // The watcher has read all but the last 5 ticks.
        sqlx::query("UPDATE watch_cursor SET last_tick_id = ?1")
            .bind(last - 5)
            .execute(store.pool())
            .await
            .unwrap();

        let pruned = store.enforce_cap().await.unwrap();
        assert!(pruned > 0);
        assert!(store.used_bytes().await.unwrap() <= cap);
        assert_eq!(
            count(
                &store,
                "SELECT count(*) FROM outbox WHERE status = 'pending'"
            )
            .await,
            3
        );
        assert_eq!(
            count(
                &store,
                &format!("SELECT count(*) FROM ticks WHERE id > {}", last - 5)
            )
            .await,
            5
        );
        assert_eq!(
            count(
                &store,
                &format!("SELECT count(*) FROM ticks WHERE id = {newest_a}")
            )
            .await,
            1
        );
        // Oldest first: what is left of the ticks is a suffix by id (plus a's newest).
        let left = count(&store, "SELECT count(*) FROM ticks").await;
        let min_other = count(
            &store,
            &format!("SELECT MIN(id) FROM ticks WHERE id != {newest_a}"),
        )
        .await;
        assert!(newest_a < min_other);
        assert_eq!(left - 1, last - min_other + 1);
        let h = store.storage().await.unwrap();
        let finished_left = count(
            &store,
            "SELECT count(*) FROM outbox WHERE status != 'pending'",
        )
        .await;
        assert_eq!(h.pruned_ticks, 120 - u64::try_from(left).unwrap());
        assert_eq!(
            h.pruned_notifications,
            50 - u64::try_from(finished_left).unwrap()
        );
        assert_eq!(h.pruned_ticks + h.pruned_notifications, pruned);
        assert_eq!(h.max_bytes, cap);
        // The freed pages went back to the file system.
        assert!(h.size_bytes <= cap + cap / 2, "{h:?}");
        // Under the cap now: nothing more to do.
        assert_eq!(store.enforce_cap().await.unwrap(), 0);
        store.close().await;
    }

    async fn open(dir: &tempfile::TempDir, keep: u32) -> Store {
        Store::open(&dir.path().join("state/cloudd.db"), keep)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn open_creates_private_dir_and_file_and_is_sound() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir, 5).await;
        assert_eq!(store.integrity_check().await.unwrap(), "ok");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.path().join("state")), 0o700);
        assert_eq!(mode(store.path()), 0o600);
        assert_eq!(store.path(), dir.path().join("state/cloudd.db"));
        store.close().await;
    }

    #[tokio::test]
    async fn registrations_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir, 5).await;
        let mut new = reg("aaaa", "every:300");
        new.remote_spec = Some("/workspace/chain.yaml".to_string());
        let r = store.upsert_registration(&new).await.unwrap();
        assert_eq!(r.key, "aaaa");
        assert_eq!(r.cloud_yaml, "/work/aaaa/cloud.yaml");
        assert_eq!(r.schedule, "every:300");
        assert_eq!(r.remote_spec.as_deref(), Some("/workspace/chain.yaml"));
        assert_eq!((r.ticks_run, r.ticks_skipped), (0, 0));
        assert_eq!(r.last_tick_at, None);
        assert!(DateTime::parse_from_rfc3339(&r.created_at).is_ok());
        assert_eq!(
            store.get_registration("aaaa").await.unwrap(),
            Some(r.clone())
        );
        assert_eq!(store.get_registration("nope").await.unwrap(), None);

        store
            .upsert_registration(&reg("bbbb", "cron:0 * * * * *"))
            .await
            .unwrap();
        let keys: Vec<String> = store
            .list_registrations()
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.key)
            .collect();
        assert_eq!(keys, ["aaaa", "bbbb"]);

        assert!(store.delete_registration("aaaa").await.unwrap());
        assert!(!store.delete_registration("aaaa").await.unwrap());
        assert_eq!(store.get_registration("aaaa").await.unwrap(), None);
        assert_eq!(store.list_registrations().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn reregistering_keeps_counters_and_created_at() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir, 5).await;
        let first = store
            .upsert_registration(&reg("k", "every:60"))
            .await
            .unwrap();
        store.insert_tick(&tick("k", 1, false)).await.unwrap();
        store.record_skip("k").await.unwrap();
        let again = store
            .upsert_registration(&reg("k", "every:120"))
            .await
            .unwrap();
        assert_eq!(again.schedule, "every:120");
        assert_eq!(again.created_at, first.created_at);
        assert_eq!((again.ticks_run, again.ticks_skipped), (1, 1));
        assert_eq!(again.last_event.as_deref(), Some("event-1"));
        assert_eq!(again.last_success, Some(false));
        assert_eq!(
            again.last_tick_at.as_deref(),
            Some("2026-01-02T03:05:06.500Z")
        );
    }

    #[tokio::test]
    async fn ticks_round_trip_and_list_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir, 10).await;
        store
            .upsert_registration(&reg("k", "every:60"))
            .await
            .unwrap();
        let rec = store.insert_tick(&tick("k", 1, true)).await.unwrap();
        assert_eq!(rec.duration_ms, 1500);
        assert_eq!(rec.started_at, "2026-01-02T03:05:05.000Z");
        assert_eq!(rec.finished_at, "2026-01-02T03:05:06.500Z");
        let other = store.insert_tick(&tick("other", 2, false)).await.unwrap();
        let third = store.insert_tick(&tick("k", 3, true)).await.unwrap();
        assert!(rec.id < other.id && other.id < third.id);

        let all = store.list_ticks(None, 10).await.unwrap();
        assert_eq!(all, vec![third.clone(), other.clone(), rec.clone()]);
        assert_eq!(
            store.list_ticks(Some("k"), 10).await.unwrap(),
            vec![third.clone(), rec.clone()]
        );
        assert_eq!(
            store.list_ticks(None, 1).await.unwrap(),
            vec![third.clone()]
        );

        assert_eq!(
            store.ticks_after(rec.id, None).await.unwrap(),
            vec![other.clone(), third.clone()]
        );
        assert_eq!(
            store.ticks_after(rec.id, Some("k")).await.unwrap(),
            vec![third.clone()]
        );
        assert!(store.ticks_after(third.id, None).await.unwrap().is_empty());

        // An unregistered key's ticks are stored but touch no registration.
        let k = store.get_registration("k").await.unwrap().unwrap();
        assert_eq!(k.ticks_run, 2);
        assert_eq!(k.last_event.as_deref(), Some("event-3"));
        assert_eq!(k.last_success, Some(true));
    }

    #[tokio::test]
    async fn retention_keeps_the_newest_per_key_and_counters_survive() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir, 3).await;
        let mut ids = Vec::new();
        for n in 0..7 {
            ids.push(
                store
                    .insert_tick(&tick("k", n, n % 3 != 0))
                    .await
                    .unwrap()
                    .id,
            );
        }
        store.insert_tick(&tick("other", 100, true)).await.unwrap();
        store.record_skip("k").await.unwrap();
        store.record_skip("unregistered").await.unwrap();

        let kept: Vec<i64> = store
            .list_ticks(Some("k"), 100)
            .await
            .unwrap()
            .iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(kept, vec![ids[6], ids[5], ids[4]]);
        assert_eq!(store.list_ticks(Some("other"), 100).await.unwrap().len(), 1);
        // 8 ticks stored ever, 3 failed (n = 0, 3, 6), 2 skips.
        assert_eq!(
            store.tick_counters().await.unwrap(),
            TickCounters {
                run: 8,
                failed: 3,
                skipped: 2
            }
        );

        // Deleting a registration drops its ticks but not the lifetime counters.
        store
            .upsert_registration(&reg("k", "every:60"))
            .await
            .unwrap();
        store.delete_registration("k").await.unwrap();
        assert!(store.list_ticks(Some("k"), 100).await.unwrap().is_empty());
        assert_eq!(store.tick_counters().await.unwrap().run, 8);
    }

    #[tokio::test]
    async fn tick_ids_are_not_reused_after_retention() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir, 1).await;
        let a = store.insert_tick(&tick("k", 1, true)).await.unwrap();
        store.delete_registration("k").await.unwrap();
        let b = store.insert_tick(&tick("k", 2, true)).await.unwrap();
        assert!(b.id > a.id);
    }

    #[tokio::test]
    async fn markers_round_trip_and_replace() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir, 3).await;
        assert_eq!(store.get_marker("k").await.unwrap(), None);
        let m1 = LastChainMarker::read(
            json!({"remote_spec": "/w/chain.yaml", "extra_repos": [], "provider_identity": null}),
        );
        store.put_marker("k", "/w/cloud.yaml", &m1).await.unwrap();
        assert_eq!(store.get_marker("k").await.unwrap(), Some(m1));
        // Stored with its keys sorted, unknown ones among them (the legacy file's form).
        let m2 = LastChainMarker::read(json!({"zz": 1, "remote_spec": "/w/other.yaml", "a": 2}));
        store.put_marker("k", "/w/cloud.yaml", &m2).await.unwrap();
        assert_eq!(store.get_marker("k").await.unwrap(), Some(m2));
        let text: String = sqlx::query_scalar("SELECT marker FROM markers WHERE key = 'k'")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(
            text,
            r#"{"a":2,"provider_identity":null,"remote_spec":"/w/other.yaml","zz":1}"#
        );
    }

    #[tokio::test]
    async fn reopening_keeps_everything() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir, 5).await;
        let r = store
            .upsert_registration(&reg("k", "every:60"))
            .await
            .unwrap();
        let t = store.insert_tick(&tick("k", 1, false)).await.unwrap();
        store
            .put_marker(
                "k",
                "/w/cloud.yaml",
                &LastChainMarker::read(json!({"a": 1})),
            )
            .await
            .unwrap();
        store.close().await;

        let store = open(&dir, 5).await;
        let again = store.get_registration("k").await.unwrap().unwrap();
        assert_eq!(again.created_at, r.created_at);
        assert_eq!(again.ticks_run, 1);
        assert_eq!(store.list_ticks(None, 10).await.unwrap(), vec![t]);
        assert_eq!(
            store.get_marker("k").await.unwrap(),
            Some(LastChainMarker::read(json!({"a": 1})))
        );
        assert_eq!(store.tick_counters().await.unwrap().failed, 1);
        assert_eq!(store.integrity_check().await.unwrap(), "ok");
    }

    #[tokio::test]
    async fn a_database_from_a_newer_daemon_is_refused_and_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/cloudd.db");
        let store = open(&dir, 5).await;
        store
            .upsert_registration(&reg("k", "every:60"))
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
             VALUES (999999, 'from the future', 1, x'00', 0)",
        )
        .execute(&store.pool)
        .await
        .unwrap();
        store.close().await;
        let before = std::fs::read(&path).unwrap();

        let err = Store::open(&path, 5).await.unwrap_err();
        assert_eq!(
            err.message,
            format!(
                "database {} was written by a newer megaplan-cloudd (migration 999999); upgrade megaplan-cloudd or use another --db",
                path.display()
            )
        );
        assert_eq!(std::fs::read(&path).unwrap(), before);
        let body: ErrorBody = err.into();
        assert_eq!(body.error, ErrorCode::StorageFailed);
    }

    #[tokio::test]
    async fn a_file_that_is_not_sqlite_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notes.txt");
        std::fs::write(&path, "just some text, definitely not a database\n").unwrap();
        let err = Store::open(&path, 5).await.unwrap_err();
        assert!(err.message.contains(&path.display().to_string()), "{err}");
        assert!(err.message.contains("not a SQLite database"), "{err}");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "just some text, definitely not a database\n"
        );
    }

    #[tokio::test]
    async fn a_corrupt_sqlite_file_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broken.db");
        let mut bytes = SQLITE_HEADER.to_vec();
        bytes.extend(std::iter::repeat_n(0xAB, 4096));
        std::fs::write(&path, &bytes).unwrap();
        let err = Store::open(&path, 5).await.unwrap_err();
        assert!(err.message.contains(&path.display().to_string()), "{err}");
        assert!(err.message.contains("corrupt"), "{err}");
    }

    #[tokio::test]
    async fn a_database_with_damaged_pages_is_refused_by_quick_check_and_left_untouched() {
        use std::io::{Seek, SeekFrom, Write};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/cloudd.db");
        let store = open(&dir, 5).await;
        for i in 0..300 {
            store
                .upsert_registration(&reg(&format!("{i:016x}"), "every:60"))
                .await
                .unwrap();
        }
        let roots: Vec<i64> = sqlx::query(
            "SELECT rootpage FROM sqlite_master WHERE tbl_name = 'registrations' AND rootpage > 1",
        )
        .fetch_all(&store.pool)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
        let page_size: i64 = sqlx::query("PRAGMA page_size")
            .fetch_one(&store.pool)
            .await
            .unwrap()
            .get(0);
        store.close().await;
        assert!(!roots.is_empty());
        let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        for root in roots {
            f.seek(SeekFrom::Start(((root - 1) * page_size) as u64))
                .unwrap();
            f.write_all(&vec![0x5a; page_size as usize]).unwrap();
        }
        drop(f);
        let before = std::fs::read(&path).unwrap();

        let err = Store::open(&path, 5).await.unwrap_err();
        assert!(err.message.contains(&path.display().to_string()), "{err}");
        assert!(
            err.message.contains("is damaged") && err.message.contains("quick_check"),
            "{err}"
        );
        assert!(err.message.contains("backup"), "{err}");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            before,
            "the file was modified"
        );
    }

    #[tokio::test]
    async fn another_programs_sqlite_database_is_refused_and_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("other.db");
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true);
        let mut conn = SqliteConnection::connect_with(&options).await.unwrap();
        sqlx::query("CREATE TABLE registrations (x TEXT)")
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        let before = std::fs::read(&path).unwrap();
        let err = Store::open(&path, 5).await.unwrap_err();
        assert!(err.message.contains("did not create"), "{err}");
        assert!(err.message.contains(&path.display().to_string()), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }

    #[tokio::test]
    async fn an_empty_existing_file_becomes_a_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.db");
        std::fs::write(&path, b"").unwrap();
        let store = Store::open(&path, 5).await.unwrap();
        assert_eq!(store.integrity_check().await.unwrap(), "ok");
        assert_eq!(
            store.tick_counters().await.unwrap(),
            TickCounters::default()
        );
    }

    #[tokio::test]
    async fn fence_tokens_only_grow_and_refusals_are_kept_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir, 2).await;
        assert_eq!(store.fence_token("k").await.unwrap(), 0);
        store
            .raise_fence_token("k", 5, Some("daemon A"))
            .await
            .unwrap();
        store
            .raise_fence_token("k", 3, Some("daemon B"))
            .await
            .unwrap();
        assert_eq!(store.fence_token("k").await.unwrap(), 5);
        store.raise_fence_token("k", 6, None).await.unwrap();
        assert_eq!(store.fence_token("k").await.unwrap(), 6);
        for i in 0..3u64 {
            let msg = format!("refused {i}");
            store
                .record_gate_refusal(
                    "k",
                    &NewGateRefusal {
                        source: "tick",
                        reason: "stale_token",
                        offered: Some(i),
                        held: Some(6),
                        holder: Some("daemon A"),
                        message: &msg,
                    },
                )
                .await
                .unwrap();
        }
        let r = store.gate_refusals("k", 10).await.unwrap();
        assert_eq!(r.len(), 2, "kept to the retention");
        assert_eq!(r[0].message, "refused 2");
        assert_eq!((r[0].offered, r[0].held), (Some(2), Some(6)));
        assert!(store.gate_refusals("other", 10).await.unwrap().is_empty());
        store.close().await;
    }
}
