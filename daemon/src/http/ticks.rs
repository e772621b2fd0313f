//! Tick history: `GET /v1/ticks`, `GET /v1/ticks/watch` (a stream), `GET
//! /v1/clouds/{key}/explain`, and `GET /v1/notifications` (the outbox).

use super::error::ApiError;
use super::extract::key_of;
use super::stream::ndjson_body;
use crate::notify::explain::Explained;
use crate::notify::store::{OutboxEntry, TickFilter};
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path as AxPath, Query, State};
use axum::response::Response;
use megaplan_cloud_api::ErrorCode;
use megaplan_cloud_api::sorted::Sorted;
use megaplan_cloud_api::wire::{Frame, TickRecord, TicksQuery};
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc};

fn query_key(q: &TicksQuery) -> Result<Option<String>, ApiError> {
    q.cloud_yaml.as_deref().map(key_of).transpose()
}

fn tick_filter(q: &TicksQuery) -> Result<TickFilter, ApiError> {
    let since = q
        .since
        .as_deref()
        .map(crate::notify::since_time)
        .transpose()
        .map_err(|e| ApiError::new(ErrorCode::InvalidArgs, e).field("since"))?;
    Ok(TickFilter {
        key: query_key(q)?,
        since,
        event: q.event.clone(),
        failed_only: q.failed == Some(true),
    })
}

pub async fn list_ticks(
    State(state): State<Arc<AppState>>,
    Query(q): Query<TicksQuery>,
) -> Result<Json<Vec<TickRecord>>, ApiError> {
    let filter = tick_filter(&q)?;
    let limit = q.limit.unwrap_or(20).clamp(1, 10_000);
    Ok(Json(
        crate::notify::store::list_ticks(state.store(), &filter, limit).await?,
    ))
}

pub async fn watch_ticks(
    State(state): State<Arc<AppState>>,
    Query(q): Query<TicksQuery>,
) -> Result<Response, ApiError> {
    let filter = tick_filter(&q)?;
    // Subscribe before reading the backlog so no report falls between the two.
    let mut feed = state.subscribe_ticks();
    let backlog_n = q.backlog.unwrap_or(5).min(1000);
    let mut backlog = if backlog_n > 0 {
        crate::notify::store::list_ticks(state.store(), &filter, backlog_n).await?
    } else {
        Vec::new()
    };
    backlog.reverse();
    let (tx, rx) = mpsc::channel::<Frame>(64);
    let shutdown = state.shutdown().clone();
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
    Ok(ndjson_body(rx, state.shutdown().clone(), gone))
}

pub async fn explain(
    State(state): State<Arc<AppState>>,
    AxPath(k): AxPath<String>,
) -> Result<Json<Sorted<Explained>>, ApiError> {
    let key = key_of(&k)?;
    let filter = TickFilter {
        key: Some(key.clone()),
        ..Default::default()
    };
    let ticks = crate::notify::store::list_ticks(state.store(), &filter, 1).await?;
    match ticks.first() {
        Some(rec) => {
            let mut e = crate::notify::explain::explain(rec);
            if let Some(b) = state.scheduler().backoff.get(&key) {
                crate::notify::explain::with_backoff(&mut e, &b.to_wire());
            }
            // Keys sorted, as the reply was when it was built by hand.
            Ok(Json(Sorted(e)))
        }
        None => Err(ApiError::new(
            ErrorCode::NotRegistered,
            format!(
                "no stored tick for key {key}; run `megaplan-cloudctl supervise --chain` or `tick` first"
            ),
        )),
    }
}

pub async fn list_notifications(
    State(state): State<Arc<AppState>>,
    Query(q): Query<TicksQuery>,
) -> Result<Json<Vec<OutboxEntry>>, ApiError> {
    let key = query_key(&q)?;
    let limit = q.limit.unwrap_or(50).clamp(1, 10_000);
    let breakers = state.notifier().sink_breakers();
    Ok(Json(
        crate::notify::store::list_outbox(state.store(), key.as_deref(), limit, &breakers).await?,
    ))
}
