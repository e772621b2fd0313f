//! Last-chain markers. SQLite is the source of truth; the legacy file
//! `<state root>/markers/<key>/last_chain.json` is written after every `chain` (so the original
//! tool and its scripts keep working) and imported when the database has no marker for a key.

use crate::daemon::AppState;
use megaplan_cloud_api::{ErrorBody, ErrorCode, paths};
use serde_json::Value;
use std::io::Write;

/// The marker of `key`: from the database, else imported from a legacy file.
pub async fn load(state: &AppState, key: &str) -> Result<Option<Value>, ErrorBody> {
    if let Some(m) = state.store.get_marker(key).await? {
        return Ok(Some(m));
    }
    let file = paths::legacy_marker_file(&state.settings.cloud_home, key);
    let bytes = match crate::cloud_yaml::read_bounded(&file, crate::cloud_yaml::MAX_INPUT_BYTES) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(ErrorBody::new(
                ErrorCode::InvalidSpec,
                format!("cannot read legacy marker {}: {e}", file.display()),
            ));
        }
    };
    let marker: Value = serde_json::from_slice(&bytes).map_err(|e| {
        ErrorBody::new(
            ErrorCode::InvalidSpec,
            format!(
                "legacy marker {} is not valid JSON ({e}); fix or delete it, or pass --remote-spec",
                file.display()
            ),
        )
    })?;
    if !marker.is_object() || marker.get("remote_spec").and_then(Value::as_str).is_none() {
        return Err(ErrorBody::new(
            ErrorCode::InvalidSpec,
            format!(
                "legacy marker {} has no remote_spec string; fix or delete it, or pass --remote-spec",
                file.display()
            ),
        ));
    }
    state
        .store
        .put_marker(key, "", &marker)
        .await
        .map_err(ErrorBody::from)?;
    tracing::info!(key, file = %file.display(), "imported legacy marker");
    Ok(Some(marker))
}

/// Store the marker in SQLite, then write the legacy file atomically.
pub async fn save(
    state: &AppState,
    key: &str,
    cloud_yaml: &str,
    marker: &Value,
) -> Result<(), ErrorBody> {
    state
        .store
        .put_marker(key, cloud_yaml, marker)
        .await
        .map_err(ErrorBody::from)?;
    write_legacy(
        &paths::legacy_marker_file(&state.settings.cloud_home, key),
        marker,
    )
}

fn write_legacy(file: &std::path::Path, marker: &Value) -> Result<(), ErrorBody> {
    let fail = |e: std::io::Error| {
        ErrorBody::new(
            ErrorCode::StorageFailed,
            format!("cannot write legacy marker {}: {e}", file.display()),
        )
    };
    let dir = file.parent().unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir).map_err(fail)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(fail)?;
    let text = serde_json::to_string_pretty(marker).unwrap_or_else(|_| "{}".to_string());
    tmp.write_all(text.as_bytes()).map_err(fail)?;
    tmp.write_all(b"\n").map_err(fail)?;
    tmp.as_file().sync_all().map_err(fail)?;
    tmp.persist(file).map_err(|e| fail(e.error))?;
    Ok(())
}
