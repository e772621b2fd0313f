//! `POST /v1/run`: one command, streamed as NDJSON frames ending with its `result` frame.

use super::extract::{JsonBody, refuse_if_shutting_down};
use super::stream::ndjson_body;
use crate::state::AppState;
use crate::workflow;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use megaplan_cloud_api::wire::{Frame, RunRequest};
use megaplan_cloud_api::{ErrorBody, ErrorCode};
use std::sync::Arc;
use tokio::sync::mpsc;

pub async fn run_command(
    State(state): State<Arc<AppState>>,
    body: Result<JsonBody<RunRequest>, Response>,
) -> Response {
    // A daemon that stops says so before it looks at the request.
    if let Err(e) = refuse_if_shutting_down(&state) {
        return e.into_response();
    }
    let req = match body {
        Ok(JsonBody(req)) => req,
        Err(refused) => return refused,
    };
    let name = req.command.name();
    let (tx, rx) = mpsc::channel::<Frame>(256);
    let st = state.clone();
    state.tasks().spawn(async move {
        workflow::run(st, req, tx).await;
    });
    let cut_off = ErrorBody::new(
        ErrorCode::ShuttingDown,
        format!(
            "megaplan-cloudd shut down while `{name}` was running and stopped it after its {}s grace period; it may or may not have completed on the runner: check the runner, then run `{name}` again once the daemon is back",
            state.settings().shutdown_grace.as_secs()
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
    ndjson_body(rx, state.hard_stop().clone(), on_stop)
}
