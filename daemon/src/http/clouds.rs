//! Registrations: `POST /v1/clouds` (register), `GET /v1/clouds`, `DELETE /v1/clouds/{key}`,
//! `POST /v1/clouds/{key}/tick`.

use super::error::ApiError;
use super::extract::{JsonBody, abs_cloud_yaml, key_of, refuse_if_shutting_down};
use crate::state::AppState;
use crate::supervisor::{markers, tick};
use crate::{cloud_yaml, scheduler};
use axum::Json;
use axum::extract::{Path as AxPath, State};
use megaplan_cloud_api::ErrorCode;
use megaplan_cloud_api::schedule::{DEFAULT_EVERY_SECS, Schedule};
use megaplan_cloud_api::wire::{
    RegisterRequest, RegisterResponse, Registration, TickNowResponse, TickSkipped,
    UnregisterResponse,
};
use std::sync::Arc;

/// Longest `--remote-spec` path (PATH_MAX).
const MAX_REMOTE_SPEC_BYTES: usize = 4096;

pub async fn register(
    State(state): State<Arc<AppState>>,
    JsonBody(req): JsonBody<RegisterRequest>,
) -> Result<Json<RegisterResponse>, ApiError> {
    let path = abs_cloud_yaml(&req.cloud_yaml)?;
    // The remote spec path is stored and named in every tick report: a path, not a document.
    if let Some(spec) = &req.remote_spec
        && spec.len() > MAX_REMOTE_SPEC_BYTES
    {
        return Err(ApiError::new(
            ErrorCode::InvalidArgs,
            format!(
                "remote_spec is {} bytes, over the limit of {MAX_REMOTE_SPEC_BYTES}; give the path of the chain spec on the runner",
                spec.len()
            ),
        )
        .field("remote_spec"));
    }
    // Refuse a bad cloud.yaml with the loader's own error.
    let spec = cloud_yaml::load_async(&path).await?;
    let key = spec.key();
    let schedule = match (req.every_secs, req.cron.as_deref()) {
        (Some(_), Some(_)) => {
            return Err(ApiError::new(
                ErrorCode::InvalidArgs,
                "give --every or --cron, not both",
            ));
        }
        (_, Some(expr)) => {
            scheduler::validate_cron(expr)
                .map_err(|e| ApiError::new(ErrorCode::InvalidArgs, e.to_string()).field("cron"))?;
            Schedule::Cron(expr.to_string())
        }
        (every, None) => Schedule::every_secs(every.unwrap_or(DEFAULT_EVERY_SECS))
            .map_err(|e| ApiError::new(ErrorCode::InvalidArgs, e.message).field(e.field))?,
    };
    let cron = schedule
        .to_cron(&key)
        .map_err(|e| ApiError::new(ErrorCode::InvalidArgs, e.message).field(e.field))?;
    // What the daemon runs unattended must not be writable by anyone but its owner.
    cloud_yaml::check_registered_file(&path)?;
    let notify_given = !req.notify_urls.is_empty()
        || req.notify_command.is_some()
        || req.notify_preset.is_some()
        || req.no_notify;
    let sinks = crate::notify::registration_sinks(
        &state.notifier().config,
        &req.notify_urls,
        req.notify_command.as_deref(),
        req.notify_preset.as_deref(),
    )
    .map_err(|(msg, field)| ApiError::new(ErrorCode::InvalidArgs, msg).field(field))?;
    let new = crate::store::NewRegistration {
        key: key.clone(),
        cloud_yaml: path.display().to_string(),
        schedule: schedule.to_string(),
        remote_spec: req.remote_spec.clone(),
    };
    let mut reg = state.store().upsert_registration(&new).await?;
    if notify_given {
        crate::notify::store::set_registration_sinks(state.store(), &key, &sinks).await?;
    }
    let sinks = crate::notify::store::registration_sinks(state.store(), &key).await?;
    state
        .scheduler()
        .schedule(&key, &cron)
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
    with_schedule(&state, &mut reg);
    tracing::info!(key = %key, cloud_yaml = %path.display(), cron = %cron, "registered");
    let mut warnings = spec.warnings.clone();
    // A tick supervises the chain its spec names: without --remote-spec and without a
    // last-chain marker every tick would fail. Say so now rather than in the tick history.
    if req.remote_spec.is_none() {
        let cy = path.display().to_string();
        let has_marker = matches!(
            markers::load(&state, &key, &cy, true).await,
            Ok(l) if l.marker.is_some()
        );
        if !has_marker {
            warnings.push(format!(
                "no remote chain spec to supervise yet: {cy} has no last-chain marker and no --remote-spec was given, so ticks fail until you run `megaplan-cloudctl chain SPEC` or register again with --remote-spec PATH"
            ));
        }
    }
    let notify = sinks.iter().map(|s| s.label()).collect();
    let next_runs = scheduler::upcoming(&cron, chrono::Utc::now(), 3)
        .unwrap_or_default()
        .into_iter()
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .collect();
    let mut answer = RegisterResponse::new(reg, cron, notify, warnings);
    answer.next_runs = next_runs;
    state.announce_change(answer.key.clone());
    Ok(Json(answer))
}

pub async fn unregister(
    State(state): State<Arc<AppState>>,
    AxPath(k): AxPath<String>,
) -> Result<Json<UnregisterResponse>, ApiError> {
    let key = key_of(&k)?;
    state.scheduler().unschedule(&key);
    if !state.store().delete_registration(&key).await? {
        return Err(ApiError::new(
            ErrorCode::NotRegistered,
            format!("no registration with key {key}; see `megaplan-cloudctl registrations`"),
        ));
    }
    if let Err(e) = crate::notify::store::forget(state.store(), &key).await {
        tracing::warn!(key = %key, "unregistered, but its watch state stays: {e}");
    }
    end_unused_observers(&state, &key).await;
    state.announce_change(key.clone());
    tracing::info!(key = %key, "unregistered");
    Ok(Json(UnregisterResponse {
        key,
        success: true,
        unregistered: true,
    }))
}

/// The resident observers of the runners `key` observed that no other registration uses end
/// (after the request they may be answering, on the daemon's own tasks). A store error keeps
/// the observer; the idle reaper ends it later.
async fn end_unused_observers(state: &Arc<AppState>, key: &str) {
    // Its runner watch ends first (on the daemon's own tasks: a stuck observer must not hold
    // the unregister), so no event ticks a registration that is gone.
    let (st, k) = (state.clone(), key.to_string());
    state
        .tasks()
        .spawn(async move { st.residents().unwatch(&k).await });
    for (runner, others) in state.residents().forget_user(key) {
        let mut needed = false;
        for other in &others {
            if !matches!(state.store().get_registration(other).await, Ok(None)) {
                needed = true;
                break;
            }
        }
        if !needed {
            let st = state.clone();
            state.tasks().spawn(async move {
                st.residents().drop_runner(&runner).await;
            });
        }
    }
}

/// Fill a registration's `cron` and `next_due_at` from the scheduler's queue, and its back-off.
pub(super) fn with_schedule(state: &AppState, reg: &mut Registration) {
    reg.backoff = state.scheduler().backoff.get(&reg.key).map(|b| b.to_wire());
    if let Some((cron, due)) = state.scheduler().entry(&reg.key) {
        reg.cron = Some(cron);
        reg.next_due_at = Some(due.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    }
}

pub async fn list_clouds(
    State(state): State<Arc<AppState>>,
) -> Result<Json<Vec<megaplan_cloud_api::wire::RegistrationListed>>, ApiError> {
    let mut regs: Vec<Registration> = state.store().list_registrations().await?;
    for r in &mut regs {
        with_schedule(&state, r);
    }
    let (watch, pauses) = crate::notify::store::all_watch(state.store()).await?;
    Ok(Json(crate::notify::annotate_registrations(
        regs, &watch, &pauses,
    )))
}

pub async fn tick_now(
    State(state): State<Arc<AppState>>,
    AxPath(k): AxPath<String>,
) -> Result<Json<TickNowResponse>, ApiError> {
    let key = key_of(&k)?;
    if state.store().get_registration(&key).await?.is_none() {
        return Err(ApiError::new(
            ErrorCode::NotRegistered,
            format!("no registration with key {key}; register it first"),
        ));
    }
    refuse_if_shutting_down(&state)?;
    // The tick runs on the daemon's own tasks; this request only waits for it. A client that
    // disconnects drops this future, not the tick: its report is stored all the same.
    let outcome = tick::spawn_manual(&state, key).await.map_err(|e| {
        ApiError::new(
            ErrorCode::Internal,
            format!("the tick task ended abnormally: {e}"),
        )
    })?;
    match outcome {
        tick::TickOutcome::Ran(rec) => Ok(Json(TickNowResponse::Ran(rec))),
        tick::TickOutcome::Skipped => Ok(Json(TickNowResponse::Skipped(TickSkipped::new()))),
        tick::TickOutcome::Failed(e) => Err(e.into()),
    }
}
