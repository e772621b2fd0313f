//! Workflows: what each cloud command does, gluing cloud.yaml, providers and the chain domain.
//! `run` is the single entry of `POST /v1/run`; it always ends the stream with one result frame.

pub mod markers;
pub mod supervise;

use crate::daemon::AppState;
use megaplan_cloud_api::wire::{Frame, RunRequest};
use std::sync::Arc;
use tokio::sync::mpsc;

pub async fn run(state: Arc<AppState>, req: RunRequest, tx: mpsc::Sender<Frame>) {
    let _ = (&state, &req);
    let _ = tx
        .send(Frame::Result {
            payload: serde_json::json!({"success": false, "error": "internal", "message": "not wired yet"}),
            exit_code: 1,
        })
        .await;
}
