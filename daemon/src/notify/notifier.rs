//! The daemon's notification settings and the outbox worker's bell, held in the shared state.

use super::config::NotifyConfig;
use super::transitions;

/// The daemon's notification settings plus the worker's wake-up bell.
pub struct Notifier {
    pub config: NotifyConfig,
    pub(super) wake: tokio::sync::Notify,
    /// Serialises the read-decide-write of the watch state: a tick's hook may still run when
    /// the next tick of the same registration (no longer holding the tick lock) finishes, and
    /// two hooks reading the same state would both send the same transition.
    pub(super) recording: tokio::sync::Mutex<()>,
}

impl Notifier {
    pub fn new(config: NotifyConfig) -> Notifier {
        Notifier {
            config,
            wake: tokio::sync::Notify::new(),
            recording: tokio::sync::Mutex::new(()),
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
