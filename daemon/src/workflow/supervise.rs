//! The supervise tick.
use crate::daemon::AppState;
use serde_json::Value;
use std::sync::Arc;

pub async fn tick(state: &Arc<AppState>, cloud_yaml: &str, remote_spec: Option<&str>) -> Value {
    let _ = (state, remote_spec);
    match crate::cloud_yaml::load(std::path::Path::new(cloud_yaml)) {
        Ok(_) => crate::tick::error_report("not wired yet"),
        Err(e) => crate::tick::error_report(&e.message),
    }
}
