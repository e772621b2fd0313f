//! The daemon's notification settings and the bells of the watcher and the delivery worker,
//! held in the shared state.

use super::config::NotifyConfig;
use super::sinks::{Breaker, Limits};
use super::transitions;
use megaplan_cloud_api::wire::SinkBreaker;
use std::collections::HashMap;

/// Deliveries running at once across all sinks (each sink also has its own cap).
pub const MAX_IN_FLIGHT: usize = 64;

/// The daemon's notification settings plus the watcher's and the delivery worker's bells.
pub struct Notifier {
    pub config: NotifyConfig,
    /// Rung when the outbox has new rows.
    pub(super) wake: tokio::sync::Notify,
    /// Rung when a tick was stored. A single watcher task reads the ticks in order, so two
    /// ticks of one registration can never both send the same transition.
    pub(super) watch: tokio::sync::Notify,
    /// Per sink key: its breaker and deliveries in flight. Written by the delivery worker only;
    /// read by `GET /v1/notifications`. Sinks with nothing to remember are dropped.
    pub(super) breakers: std::sync::Mutex<HashMap<String, Breaker>>,
}

impl Notifier {
    pub fn new(config: NotifyConfig) -> Notifier {
        Notifier {
            config,
            wake: tokio::sync::Notify::new(),
            watch: tokio::sync::Notify::new(),
            breakers: std::sync::Mutex::new(HashMap::new()),
        }
    }

    pub fn rules(&self) -> transitions::Rules {
        transitions::Rules {
            still_waiting_after: chrono::Duration::from_std(self.config.still_waiting_after)
                .unwrap_or(chrono::Duration::days(1)),
            failed_ticks: self.config.failed_ticks,
            unknown_after: chrono::Duration::from_std(self.config.unknown_after)
                .unwrap_or(chrono::Duration::minutes(10)),
        }
    }

    /// The per-sink caps and breaker settings of the delivery worker.
    pub fn limits(&self) -> Limits {
        Limits {
            per_sink: usize::try_from(self.config.max_in_flight_per_sink).unwrap_or(1),
            total: MAX_IN_FLIGHT,
            breaker_after: self.config.breaker_after,
            cooldown: chrono::Duration::from_std(self.config.breaker_cooldown)
                .unwrap_or(chrono::Duration::minutes(1)),
        }
    }

    /// Every remembered sink's breaker, by sink key (a sink not in it is closed, idle).
    pub fn sink_breakers(&self) -> HashMap<String, SinkBreaker> {
        let map = self.breakers.lock().unwrap_or_else(|p| p.into_inner());
        map.iter().map(|(k, b)| (k.clone(), b.view(k))).collect()
    }
}
