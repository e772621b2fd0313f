//! `GET /v1/fleet`: every registration's state in one answer, what needs a person first. Built
//! from what the daemon holds (registrations, the last stored tick of each, watch states,
//! pauses, the scheduler's queue and back-offs, the local cloud.yaml files); no runner is asked.

use super::clouds::with_schedule;
use super::error::ApiError;
use crate::cloud_yaml;
use crate::notify::fleet::{Facts, Place, row};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use megaplan_cloud_api::fleet::{Fleet, sort_rows};
use std::path::Path;
use std::sync::Arc;

pub async fn fleet(State(state): State<Arc<AppState>>) -> Result<Json<Fleet>, ApiError> {
    Ok(Json(build(&state).await?))
}

/// The fleet view as it stands now.
pub async fn build(state: &Arc<AppState>) -> Result<Fleet, ApiError> {
    let mut regs = state.store().list_registrations().await?;
    let (watch, pauses) = crate::notify::store::all_watch(state.store()).await?;
    let last = crate::notify::store::last_tick_per_key(state.store()).await?;
    let failed_ticks = state.notifier().config.failed_ticks;
    let quarantines = crate::supervisor::quarantine::all(state.store()).await?;
    let mut rows = Vec::with_capacity(regs.len());
    for reg in &mut regs {
        with_schedule(state, reg);
        let path = Path::new(&reg.cloud_yaml);
        let place: Place = match cloud_yaml::load_async(path).await {
            Ok(spec) => Ok((
                spec.provider.as_str().to_string(),
                spec.ssh.as_ref().map(|s| s.host.clone()),
            )),
            // The loader's advice (`init` a new one) is for a command; here the file was there.
            Err(_) if !tokio::fs::try_exists(path).await.unwrap_or(true) => {
                Err(format!("{} no longer exists", reg.cloud_yaml))
            }
            Err(e) => Err(e.to_string()),
        };
        let watch_state = watch.get(&reg.key).cloned().unwrap_or_default();
        rows.push(row(Facts {
            registration: reg,
            last_tick: last.get(&reg.key),
            watch: &watch_state,
            pause: pauses.get(&reg.key),
            place,
            failed_ticks,
            quarantine: quarantines.iter().find(|q| q.key == reg.key),
        }));
    }
    sort_rows(&mut rows);
    Ok(Fleet {
        generated_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        registrations: rows,
    })
}
