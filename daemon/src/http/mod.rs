//! The HTTP API on the Unix socket: the accept loop and its limits (`server`), the routes and
//! their handlers.

pub mod server;

use crate::scheduler;
use crate::state::AppState;
use crate::supervisor::{markers, tick};
use crate::{cloud_yaml, workflow};
use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path as AxPath, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use megaplan_cloud_api::schedule::{DEFAULT_EVERY_SECS, Schedule};
use megaplan_cloud_api::wire::{
    Frame, Health, RegisterRequest, Registration, RunRequest, TicksQuery,
};
use megaplan_cloud_api::{ErrorBody, ErrorCode, paths, routes};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

/// Largest request body accepted (a RunRequest with paths and secret values is tiny).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(routes::HEALTH, get(health))
        .route(routes::CLOUDS, get(list_clouds).post(register))
        .route(routes::CLOUD, axum::routing::delete(unregister))
        .route(routes::CLOUD_TICK, post(tick_now))
        .route(routes::TICKS, get(list_ticks))
        .route(routes::TICKS_WATCH, get(watch_ticks))
        .route(routes::MARKERS, get(get_marker))
        .route(routes::RUN, post(run_command))
        .route(routes::SECRET_NAMES, get(secret_names))
        .route(routes::CLOUD_PAUSE, post(pause).delete(unpause))
        .route(routes::CLOUD_EXPLAIN, get(explain))
        .route(routes::NOTIFICATIONS, get(list_notifications))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

pub fn error_response(status: StatusCode, body: ErrorBody) -> Response {
    (status, axum::Json(body.to_value())).into_response()
}

fn status_for(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::NotRegistered => StatusCode::NOT_FOUND,
        ErrorCode::StorageFailed | ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_REQUEST,
    }
}

fn err(body: ErrorBody) -> Response {
    error_response(status_for(body.error), body)
}

async fn not_found() -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        ErrorBody::new(
            ErrorCode::InvalidArgs,
            "no such endpoint; see docs/api.md for the /v1 routes",
        ),
    )
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    // A store that cannot be read is reported as such (503), never as "0 registrations".
    let (registrations, ticks) = match (
        state.store.count_registrations().await,
        state.store.tick_counters().await,
    ) {
        (Ok(r), Ok(t)) => (r, t),
        (Err(e), _) | (_, Err(e)) => {
            return error_response(StatusCode::SERVICE_UNAVAILABLE, e.into());
        }
    };
    let tools = ["ssh", "docker", "docker-compose", "rsync", "scp", "railway"]
        .iter()
        .map(|t| {
            (
                t.to_string(),
                crate::process::which(t).map(|p| p.display().to_string()),
            )
        })
        .collect();
    let h = Health {
        version: megaplan_cloud_api::VERSION.to_string(),
        api_version: megaplan_cloud_api::API_VERSION,
        pid: std::process::id(),
        started_at: state.started_at.to_rfc3339(),
        uptime_secs: state.started.elapsed().as_secs(),
        socket: state.settings.socket.display().to_string(),
        database: state.settings.db.display().to_string(),
        cloud_home: state.settings.cloud_home.display().to_string(),
        registrations,
        ticks,
        tools,
        ssh_sessions: state.ssh.count() as u64,
        shutting_down: state.shutdown.is_cancelled(),
        schedule: state.scheduler.health(),
    };
    axum::Json(h).into_response()
}

/// Resolve a client-given cloud.yaml path: absolute, normalised.
fn abs_cloud_yaml(p: &str) -> Result<PathBuf, ErrorBody> {
    let path = Path::new(p);
    if !path.is_absolute() {
        return Err(ErrorBody::new(
            ErrorCode::InvalidArgs,
            format!("cloud_yaml must be an absolute path, got {p:?}"),
        ));
    }
    Ok(paths::absolutize(path, Path::new("/")))
}

async fn register(State(state): State<Arc<AppState>>, body: axum::body::Bytes) -> Response {
    let req: RegisterRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return err(bad_json(e)),
    };
    let path = match abs_cloud_yaml(&req.cloud_yaml) {
        Ok(p) => p,
        Err(e) => return err(e),
    };
    // Refuse a bad cloud.yaml with the loader's own error.
    let spec = match cloud_yaml::load_async(&path).await {
        Ok(s) => s,
        Err(e) => return err(e),
    };
    let key = spec.key();
    let schedule = match (req.every_secs, req.cron.as_deref()) {
        (Some(_), Some(_)) => {
            return err(ErrorBody::new(
                ErrorCode::InvalidArgs,
                "give --every or --cron, not both",
            ));
        }
        (_, Some(expr)) => {
            if let Err(e) = scheduler::validate_cron(expr) {
                return err(ErrorBody::new(ErrorCode::InvalidArgs, e).with("field", "cron"));
            }
            Schedule::Cron(expr.to_string())
        }
        (every, None) => match Schedule::every_secs(every.unwrap_or(DEFAULT_EVERY_SECS)) {
            Ok(s) => s,
            Err(e) => {
                return err(
                    ErrorBody::new(ErrorCode::InvalidArgs, e.message).with("field", e.field)
                );
            }
        },
    };
    let cron = match schedule.to_cron(&key) {
        Ok(c) => c,
        Err(e) => {
            return err(ErrorBody::new(ErrorCode::InvalidArgs, e.message).with("field", e.field));
        }
    };
    // What the daemon runs unattended must not be writable by anyone but its owner.
    if let Err(e) = cloud_yaml::check_registered_file(&path) {
        return err(e);
    }
    let notify_given = !req.notify_urls.is_empty()
        || req.notify_command.is_some()
        || req.notify_preset.is_some()
        || req.no_notify;
    let sinks = match crate::notify::registration_sinks(
        &state.notifier.config,
        &req.notify_urls,
        req.notify_command.as_deref(),
        req.notify_preset.as_deref(),
    ) {
        Ok(s) => s,
        Err((msg, field)) => {
            return err(ErrorBody::new(ErrorCode::InvalidArgs, msg).with("field", field));
        }
    };
    let new = crate::store::NewRegistration {
        key: key.clone(),
        cloud_yaml: path.display().to_string(),
        schedule: schedule.to_string(),
        remote_spec: req.remote_spec.clone(),
    };
    let mut reg = match state.store.upsert_registration(&new).await {
        Ok(r) => r,
        Err(e) => return err(e.into()),
    };
    if notify_given
        && let Err(e) =
            crate::notify::store::set_registration_sinks(&state.store, &key, &sinks).await
    {
        return err(e.into());
    }
    let sinks = match crate::notify::store::registration_sinks(&state.store, &key).await {
        Ok(s) => s,
        Err(e) => return err(e.into()),
    };
    if let Err(e) = state.scheduler.schedule(&key, &cron) {
        return err(ErrorBody::new(ErrorCode::Internal, e));
    }
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
    let mut v = serde_json::to_value(&reg).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("success".into(), true.into());
        o.insert("cron".into(), cron.into());
        o.insert(
            "notify".into(),
            sinks.iter().map(|s| s.label()).collect::<Vec<_>>().into(),
        );
        o.insert(
            "warnings".into(),
            serde_json::to_value(&warnings).unwrap_or_default(),
        );
    }
    axum::Json(v).into_response()
}

fn bad_json(e: serde_json::Error) -> ErrorBody {
    ErrorBody::new(
        ErrorCode::InvalidArgs,
        format!("request body is not valid JSON for this endpoint: {e}"),
    )
}

/// `{key}` may be the marker key itself (exactly 16 hex characters), or an absolute cloud.yaml
/// path percent-encoded; anything else is a 400 naming the parameter.
fn key_of(k: &str) -> Result<String, ErrorBody> {
    paths::key_param(k).map_err(|e| ErrorBody::new(ErrorCode::InvalidArgs, e).with("field", "key"))
}

async fn unregister(State(state): State<Arc<AppState>>, AxPath(k): AxPath<String>) -> Response {
    let key = match key_of(&k) {
        Ok(k) => k,
        Err(e) => return err(e),
    };
    state.scheduler.unschedule(&key);
    match state.store.delete_registration(&key).await {
        Ok(true) => {
            if let Err(e) = crate::notify::store::forget(&state.store, &key).await {
                tracing::warn!(key = %key, "unregistered, but its watch state stays: {e}");
            }
            tracing::info!(key = %key, "unregistered");
            axum::Json(serde_json::json!({"success": true, "key": key, "unregistered": true}))
                .into_response()
        }
        Ok(false) => err(ErrorBody::new(
            ErrorCode::NotRegistered,
            format!("no registration with key {key}; see `megaplan-cloudctl registrations`"),
        )),
        Err(e) => err(e.into()),
    }
}

/// Fill a registration's `cron` and `next_due_at` from the scheduler's queue.
fn with_schedule(state: &AppState, reg: &mut Registration) {
    if let Some((cron, due)) = state.scheduler.entry(&reg.key) {
        reg.cron = Some(cron);
        reg.next_due_at = Some(due.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    }
}

async fn list_clouds(State(state): State<Arc<AppState>>) -> Response {
    let mut regs: Vec<Registration> = match state.store.list_registrations().await {
        Ok(regs) => regs,
        Err(e) => return err(e.into()),
    };
    for r in &mut regs {
        with_schedule(&state, r);
    }
    match crate::notify::store::all_watch(&state.store).await {
        Ok((watch, pauses)) => {
            axum::Json(crate::notify::annotate_registrations(regs, &watch, &pauses)).into_response()
        }
        Err(e) => err(e.into()),
    }
}

async fn tick_now(State(state): State<Arc<AppState>>, AxPath(k): AxPath<String>) -> Response {
    let key = match key_of(&k) {
        Ok(k) => k,
        Err(e) => return err(e),
    };
    match state.store.get_registration(&key).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            return err(ErrorBody::new(
                ErrorCode::NotRegistered,
                format!("no registration with key {key}; register it first"),
            ));
        }
        Err(e) => return err(e.into()),
    }
    if state.shutdown.is_cancelled() {
        return err(ErrorBody::new(
            ErrorCode::ShuttingDown,
            "megaplan-cloudd is shutting down; retry once it is back",
        ));
    }
    // The tick runs on the daemon's own tasks; this request only waits for it. A client that
    // disconnects drops this future, not the tick: its report is stored all the same.
    let outcome = match tick::spawn_manual(&state, key).await {
        Ok(o) => o,
        Err(e) => {
            return err(ErrorBody::new(
                ErrorCode::Internal,
                format!("the tick task ended abnormally: {e}"),
            ));
        }
    };
    match outcome {
        tick::TickOutcome::Ran(rec) => axum::Json(*rec).into_response(),
        tick::TickOutcome::Skipped => axum::Json(serde_json::json!({
            "success": false, "skipped": true,
            "message": "a tick for this registration is already running; this one was skipped"
        }))
        .into_response(),
        tick::TickOutcome::Failed(e) => err(e),
    }
}

fn query_key(q: &TicksQuery) -> Result<Option<String>, ErrorBody> {
    q.cloud_yaml.as_deref().map(key_of).transpose()
}

fn tick_filter(q: &TicksQuery) -> Result<crate::notify::store::TickFilter, ErrorBody> {
    let since = match q
        .since
        .as_deref()
        .map(crate::notify::since_time)
        .transpose()
    {
        Ok(s) => s,
        Err(e) => return Err(ErrorBody::new(ErrorCode::InvalidArgs, e).with("field", "since")),
    };
    Ok(crate::notify::store::TickFilter {
        key: query_key(q)?,
        since,
        event: q.event.clone(),
        failed_only: q.failed == Some(true),
    })
}

async fn list_ticks(State(state): State<Arc<AppState>>, Query(q): Query<TicksQuery>) -> Response {
    let filter = match tick_filter(&q) {
        Ok(f) => f,
        Err(e) => return err(e),
    };
    let limit = q.limit.unwrap_or(20).clamp(1, 10_000);
    match crate::notify::store::list_ticks(&state.store, &filter, limit).await {
        Ok(t) => axum::Json(t).into_response(),
        Err(e) => err(e.into()),
    }
}

#[derive(serde::Deserialize)]
struct CloudYamlQuery {
    cloud_yaml: String,
}

async fn secret_names(Query(q): Query<CloudYamlQuery>) -> Response {
    let path = match abs_cloud_yaml(&q.cloud_yaml) {
        Ok(p) => p,
        Err(e) => return err(e),
    };
    match cloud_yaml::load_async(&path).await {
        Ok(spec) => {
            // `warnings` (the loader's, e.g. keys of the original handled differently here) is
            // what `megaplan-cloudctl doctor` shows for each cloud.yaml it finds; `codex_auth`
            // tells the client whether `deploy`/`chain` hand over the agents' login files.
            axum::Json(serde_json::json!({
                "success": true,
                "names": spec.secrets,
                "warnings": spec.warnings,
                "codex_auth": spec.megaplan.codex_auth,
            }))
            .into_response()
        }
        Err(e) => err(e),
    }
}

#[derive(serde::Deserialize)]
struct MarkerQuery {
    cloud_yaml: String,
}

async fn get_marker(State(state): State<Arc<AppState>>, Query(q): Query<MarkerQuery>) -> Response {
    let key = match key_of(&q.cloud_yaml) {
        Ok(k) => k,
        Err(e) => return err(e),
    };
    let cy = if q.cloud_yaml.starts_with('/') {
        q.cloud_yaml.as_str()
    } else {
        ""
    };
    match markers::load(&state, &key, cy, true).await {
        Ok(markers::Loaded {
            marker: Some(m), ..
        }) => axum::Json(m.to_value()).into_response(),
        Ok(_) => err(ErrorBody::new(
            ErrorCode::MissingRemoteSpec,
            format!(
                "no last-chain marker for key {key}; run `megaplan-cloudctl chain <spec>` first"
            ),
        )),
        Err(e) => err(e),
    }
}

/// NDJSON response body fed by a channel; ends when the sender is dropped or `stop` fires.
/// Frames already queued are still sent. When `stop` ends a stream that has not carried a
/// `result` frame yet, the `on_stop` frames are sent last, so a client cut off by shutdown
/// learns why instead of seeing the stream just end.
fn ndjson_body(
    rx: mpsc::Receiver<Frame>,
    stop: CancellationToken,
    on_stop: Vec<Frame>,
) -> Response {
    struct Feed {
        rx: mpsc::Receiver<Frame>,
        stop: CancellationToken,
        on_stop: std::collections::VecDeque<Frame>,
        stopped: bool,
    }
    let feed = Feed {
        rx,
        stop,
        on_stop: on_stop.into(),
        stopped: false,
    };
    let stream = futures_util::stream::unfold(feed, |mut feed| async move {
        let frame = if feed.stopped {
            feed.on_stop.pop_front()
        } else {
            tokio::select! {
                biased;
                f = feed.rx.recv() => f,
                _ = feed.stop.cancelled() => {
                    feed.stopped = true;
                    feed.on_stop.pop_front()
                }
            }
        };
        if matches!(frame, Some(Frame::Result { .. })) {
            // The command's own result is out: nothing may follow it.
            feed.on_stop.clear();
        }
        frame.map(|f| {
            let line = bytes::Bytes::from(f.to_line());
            (Ok::<_, std::io::Error>(line), feed)
        })
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

async fn watch_ticks(State(state): State<Arc<AppState>>, Query(q): Query<TicksQuery>) -> Response {
    let filter = match tick_filter(&q) {
        Ok(f) => f,
        Err(e) => return err(e),
    };
    // Subscribe before reading the backlog so no report falls between the two.
    let mut feed = state.tick_feed.subscribe();
    let backlog_n = q.backlog.unwrap_or(5).min(1000);
    let mut backlog = if backlog_n > 0 {
        match crate::notify::store::list_ticks(&state.store, &filter, backlog_n).await {
            Ok(t) => t,
            Err(e) => return err(e.into()),
        }
    } else {
        Vec::new()
    };
    backlog.reverse();
    let (tx, rx) = mpsc::channel::<Frame>(64);
    let shutdown = state.shutdown.clone();
    tokio::spawn(async move {
        let backlog_last = backlog.last().map_or(0, |t| t.id);
        let shown = backlog.len();
        let _ = tx
            .send(Frame::Stderr {
                data: format!("watch: the last {shown} stored tick report(s) first, then new ones as they are stored\n"),
            })
            .await;
        for rec in backlog {
            if tx
                .send(Frame::Tick {
                    tick: Box::new(rec),
                })
                .await
                .is_err()
            {
                return;
            }
        }
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tx.closed() => break,
                r = feed.recv() => match r {
                    Ok(rec) => {
                        if !filter.matches(&rec) || rec.id <= backlog_last {
                            continue;
                        }
                        if tx.send(Frame::Tick { tick: Box::new(rec) }).await.is_err() {
                            break;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        let note = Frame::Stderr { data: format!("watch: {n} tick reports were dropped (slow reader)\n") };
                        if tx.send(note).await.is_err() { break; }
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        }
    });
    let gone = vec![Frame::Stderr {
        data: "watch: megaplan-cloudd is shutting down; the watch ends here\n".to_string(),
    }];
    ndjson_body(rx, state.shutdown.clone(), gone)
}

async fn run_command(State(state): State<Arc<AppState>>, body: axum::body::Bytes) -> Response {
    if state.shutdown.is_cancelled() {
        return err(ErrorBody::new(
            ErrorCode::ShuttingDown,
            "megaplan-cloudd is shutting down; retry once it is back",
        ));
    }
    let req: RunRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return err(bad_json(e)),
    };
    let name = req.command.name();
    let (tx, rx) = mpsc::channel::<Frame>(256);
    let st = state.clone();
    state.tasks.spawn(async move {
        workflow::run(st, req, tx).await;
    });
    let cut_off = ErrorBody::new(
        ErrorCode::ShuttingDown,
        format!(
            "megaplan-cloudd shut down while `{name}` was running and stopped it after its {}s grace period; it may or may not have completed on the runner: check the runner, then run `{name}` again once the daemon is back",
            state.settings.shutdown_grace.as_secs()
        ),
    );
    let on_stop = vec![
        Frame::Stderr {
            data: format!("error: {}: {}\n", cut_off.error, cut_off.message),
        },
        Frame::Result {
            payload: cut_off.to_value(),
            exit_code: 1,
        },
    ];
    ndjson_body(rx, state.hard_stop.clone(), on_stop)
}

/// The key of a registered cloud.yaml, or the not-registered answer.
async fn registered_key(state: &AppState, k: &str) -> Result<String, Response> {
    let key = key_of(k).map_err(err)?;
    match state.store.get_registration(&key).await {
        Ok(Some(_)) => Ok(key),
        Ok(None) => Err(err(ErrorBody::new(
            ErrorCode::NotRegistered,
            format!(
                "no registration with key {key}; register it first (`megaplan-cloudctl register`)"
            ),
        ))),
        Err(e) => Err(err(e.into())),
    }
}

async fn pause(
    State(state): State<Arc<AppState>>,
    AxPath(k): AxPath<String>,
    body: axum::body::Bytes,
) -> Response {
    let req: megaplan_cloud_api::wire::PauseRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return err(bad_json(e)),
    };
    if req.by.trim().is_empty() || req.by.len() > 200 {
        return err(ErrorBody::new(
            ErrorCode::InvalidArgs,
            "pause needs `by` (1 to 200 characters)",
        )
        .with("field", "by"));
    }
    let key = match registered_key(&state, &k).await {
        Ok(k) => k,
        Err(r) => return r,
    };
    match crate::notify::store::set_pause(&state.store, &key, &req.by, req.reason.as_deref()).await
    {
        Ok(p) => {
            tracing::info!(key = %key, by = %p.paused_by, "paused");
            axum::Json(serde_json::json!({"success": true, "key": key, "paused": p}))
                .into_response()
        }
        Err(e) => err(e.into()),
    }
}

async fn unpause(State(state): State<Arc<AppState>>, AxPath(k): AxPath<String>) -> Response {
    let key = match registered_key(&state, &k).await {
        Ok(k) => k,
        Err(r) => return r,
    };
    match crate::notify::store::clear_pause(&state.store, &key).await {
        Ok(was) => {
            tracing::info!(key = %key, "unpaused");
            axum::Json(
                serde_json::json!({"success": true, "key": key, "paused": null, "was_paused": was}),
            )
            .into_response()
        }
        Err(e) => err(e.into()),
    }
}

async fn explain(State(state): State<Arc<AppState>>, AxPath(k): AxPath<String>) -> Response {
    let key = match key_of(&k) {
        Ok(k) => k,
        Err(e) => return err(e),
    };
    let filter = crate::notify::store::TickFilter {
        key: Some(key.clone()),
        ..Default::default()
    };
    match crate::notify::store::list_ticks(&state.store, &filter, 1).await {
        Ok(t) => match t.first() {
            Some(rec) => axum::Json(crate::notify::explain::explain(rec)).into_response(),
            None => err(ErrorBody::new(
                ErrorCode::NotRegistered,
                format!(
                    "no stored tick for key {key}; run `megaplan-cloudctl supervise --chain` or `tick` first"
                ),
            )),
        },
        Err(e) => err(e.into()),
    }
}

async fn list_notifications(
    State(state): State<Arc<AppState>>,
    Query(q): Query<TicksQuery>,
) -> Response {
    let key = match query_key(&q) {
        Ok(k) => k,
        Err(e) => return err(e),
    };
    let limit = q.limit.unwrap_or(50).clamp(1, 10_000);
    match crate::notify::store::list_outbox(&state.store, key.as_deref(), limit).await {
        Ok(rows) => axum::Json(rows).into_response(),
        Err(e) => err(e.into()),
    }
}
