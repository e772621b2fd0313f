//! The daemon's notification settings and the bells of the watcher and the delivery worker,
//! held in the shared state.

use super::config::NotifyConfig;
use super::transitions;

/// The daemon's notification settings plus the watcher's and the delivery worker's bells.
pub struct Notifier {
    pub config: NotifyConfig,
    /// Rung when the outbox has new rows.
    pub(super) wake: tokio::sync::Notify,
    /// Rung when a tick was stored. A single watcher task reads the ticks in order, so two
    /// ticks of one registration can never both send the same transition.
    pub(super) watch: tokio::sync::Notify,
}

impl Notifier {
    pub fn new(config: NotifyConfig) -> Notifier {
        Notifier {
            config,
            wake: tokio::sync::Notify::new(),
            watch: tokio::sync::Notify::new(),
        }
    }

    pub fn rules(&self) -> transitions::Rules {
        transitions::Rules {
            still_waiting_after: chrono::Duration::from_std(self.config.still_waiting_after)
                .unwrap_or(chrono::Duration::days(1)),
            failed_ticks: self.config.failed_ticks,
        }
    }
}
