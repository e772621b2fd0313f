//! The daemon's shared state: one `AppState` behind an `Arc`, handed to the HTTP handlers, the
//! commands and the supervisor. It only holds things; what they do lives in the layers above.

use crate::notify::notifier::Notifier;
use crate::provider::ssh_master::SshSessions;
use crate::scheduler::{Scheduler, TickSlots};
use crate::settings::Settings;
use crate::store::Store;
use chrono::{DateTime, Utc};
use megaplan_cloud_api::wire::TickRecord;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{Mutex, broadcast};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub struct AppState {
    pub settings: Settings,
    pub store: Store,
    pub started_at: DateTime<Utc>,
    pub started: Instant,
    pub ssh: SshSessions,
    pub scheduler: Scheduler,
    /// One lock per registration key: two ticks of one cloud.yaml never overlap.
    pub tick_locks: std::sync::Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Bounded concurrency of ticks: in all, per host, and for registrations backing off.
    pub tick_slots: Arc<TickSlots>,
    pub tick_feed: broadcast::Sender<TickRecord>,
    /// The key of a registration that changed between ticks (registered, paused, unpaused,
    /// unregistered), so open views (the dashboard) show it at once.
    pub registration_changed: broadcast::Sender<String>,
    /// Secret values last handed over by a client, per marker key: memory only, so unattended
    /// ticks can redact literal values too. Never written anywhere.
    pub secrets: std::sync::Mutex<HashMap<String, BTreeMap<String, String>>>,
    /// Core launchers probed on runners, per marker key (`megaplan.launcher` unset).
    pub launchers: crate::chain::launcher::LauncherCache,
    /// Resident observers, one per runner key (provider/resident.rs).
    pub residents: crate::provider::resident::Residents,
    /// Where the observers' runner watches send their events (supervisor/events.rs ticks on
    /// them).
    pub runner_events: crate::provider::resident::EventSender,
    pub shutdown: CancellationToken,
    /// Fired one grace period after `shutdown`: whatever still runs is cancelled.
    pub hard_stop: CancellationToken,
    /// Ticks and commands in flight, awaited (up to the grace period) on shutdown.
    pub tasks: TaskTracker,
    /// Notification settings and the outbox worker's bell (notify/).
    pub notifier: Notifier,
}

impl AppState {
    pub fn tick_lock(&self, key: &str) -> Arc<Mutex<()>> {
        let mut locks = self.tick_locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(key.to_string()).or_default().clone()
    }

    pub fn remember_secrets(&self, key: &str, values: &BTreeMap<String, String>) {
        if values.is_empty() {
            return;
        }
        let mut s = self.secrets.lock().unwrap_or_else(|p| p.into_inner());
        s.entry(key.to_string()).or_default().extend(values.clone());
    }

    /// Secret values known for a key: the last client's, then the daemon's own environment.
    pub fn secret_values(&self, key: &str, names: &[String]) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for n in names {
            // Multi-line values cannot be redacted reliably line by line: the client refuses
            // them, and the daemon's own environment is held to the same rule.
            if let Ok(v) = std::env::var(n)
                && !v.is_empty()
                && !v.contains(['\n', '\r'])
            {
                out.insert(n.clone(), v);
            }
        }
        let s = self.secrets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(known) = s.get(key) {
            out.extend(known.clone());
        }
        out
    }
}
