//! Pauses (`megaplan-cloudctl pause`/`unpause`), stored in SQLite: one separate input to the
//! supervise decision (`decide::hold`), read by every tick.

use crate::notify::store::ts;
use crate::store::{Store, StoreError};
use chrono::Utc;
use megaplan_cloud_api::report::Pause;
use sqlx::Row;

pub async fn set_pause(
    store: &Store,
    key: &str,
    by: &str,
    reason: Option<&str>,
) -> Result<Pause, StoreError> {
    let what = "saving the pause";
    let now = ts(Utc::now());
    // Pausing a paused registration keeps the first pause's time and author.
    sqlx::query(
        "INSERT INTO pauses (key, paused_by, since, reason) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (key) DO UPDATE SET reason = COALESCE(excluded.reason, pauses.reason)",
    )
    .bind(key)
    .bind(by)
    .bind(&now)
    .bind(reason)
    .execute(store.pool())
    .await
    .map_err(|e| store.failed(what, e))?;
    get_pause(store, key)
        .await?
        .ok_or_else(|| store.failed(what, "the pause was not stored"))
}

/// Returns the pause that was lifted, if any.
pub async fn clear_pause(store: &Store, key: &str) -> Result<Option<Pause>, StoreError> {
    let p = get_pause(store, key).await?;
    sqlx::query("DELETE FROM pauses WHERE key = ?1")
        .bind(key)
        .execute(store.pool())
        .await
        .map_err(|e| store.failed("lifting the pause", e))?;
    Ok(p)
}

pub async fn get_pause(store: &Store, key: &str) -> Result<Option<Pause>, StoreError> {
    let what = "reading the pause";
    let row = sqlx::query("SELECT key, paused_by, since, reason FROM pauses WHERE key = ?1")
        .bind(key)
        .fetch_optional(store.pool())
        .await
        .map_err(|e| store.failed(what, e))?;
    row.map(|r| -> Result<Pause, sqlx::Error> {
        Ok(Pause {
            key: r.try_get(0)?,
            paused_by: r.try_get(1)?,
            since: r.try_get(2)?,
            reason: r.try_get(3)?,
        })
    })
    .transpose()
    .map_err(|e| store.failed(what, e))
}
