//! The daemon's shared state: one `AppState` behind an `Arc`, handed to the HTTP handlers, the
//! commands and the supervisor. It only holds things; what they do lives in the layers above.
//! The fields are private: the holders are reached through accessors, and the two broadcast
//! feeds (finished ticks, changed registrations) through intent methods, so a sender is never
//! handed out.

use crate::chain::launcher::LauncherCache;
use crate::notify::notifier::Notifier;
use crate::provider::resident::{EventSender, Residents};
use crate::provider::ssh_master::SshSessions;
use crate::scheduler::{Scheduler, TickSlots};
use crate::settings::Settings;
use crate::store::Store;
use chrono::{DateTime, Utc};
use megaplan_cloud_api::wire::TickRecord;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, broadcast};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How many finished ticks a slow feed subscriber (`watch`, the dashboard) may lag behind
/// before it is told it missed some.
const TICK_FEED_CAPACITY: usize = 1024;
/// The same for changed registrations.
const CHANGE_FEED_CAPACITY: usize = 256;

pub struct AppState {
    settings: Settings,
    store: Store,
    started_at: DateTime<Utc>,
    started: Instant,
    ssh: SshSessions,
    scheduler: Scheduler,
    /// One lock per registration key: two ticks of one cloud.yaml never overlap.
    tick_locks: std::sync::Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Bounded concurrency of ticks: in all, per host, and for registrations backing off.
    tick_slots: Arc<TickSlots>,
    tick_feed: broadcast::Sender<TickRecord>,
    /// The key of a registration that changed between ticks (registered, paused, unpaused,
    /// unregistered), so open views (the dashboard) show it at once.
    registration_changed: broadcast::Sender<String>,
    /// Secret values last handed over by a client, per marker key: memory only, so unattended
    /// ticks can redact literal values too. Never written anywhere.
    secrets: std::sync::Mutex<HashMap<String, BTreeMap<String, String>>>,
    /// Core launchers probed on runners, per marker key (`megaplan.launcher` unset).
    launchers: LauncherCache,
    /// Resident observers, one per runner key (provider/resident.rs).
    residents: Residents,
    /// Where the observers' runner watches send their events (supervisor/events.rs ticks on
    /// them).
    runner_events: EventSender,
    shutdown: CancellationToken,
    /// Fired one grace period after `shutdown`: whatever still runs is cancelled.
    hard_stop: CancellationToken,
    /// Ticks and commands in flight, awaited (up to the grace period) on shutdown.
    tasks: TaskTracker,
    /// Notification settings and the outbox worker's bell (notify/).
    notifier: Notifier,
}

/// What the daemon opened before the state exists (daemon.rs); the rest starts empty.
pub struct Opened {
    pub settings: Settings,
    pub store: Store,
    pub ssh: SshSessions,
    pub scheduler: Scheduler,
    pub runner_events: EventSender,
    pub notifier: Notifier,
}

impl AppState {
    pub fn new(opened: Opened) -> Self {
        let Opened {
            settings,
            store,
            ssh,
            scheduler,
            runner_events,
            notifier,
        } = opened;
        AppState {
            tick_slots: Arc::new(TickSlots::new(crate::scheduler::SlotLimits::new(
                settings.max_concurrent_ticks,
                settings.max_ticks_per_host,
            ))),
            settings,
            store,
            started_at: Utc::now(),
            started: Instant::now(),
            ssh,
            scheduler,
            tick_locks: Default::default(),
            tick_feed: broadcast::channel(TICK_FEED_CAPACITY).0,
            registration_changed: broadcast::channel(CHANGE_FEED_CAPACITY).0,
            secrets: Default::default(),
            launchers: Default::default(),
            residents: Default::default(),
            runner_events,
            shutdown: CancellationToken::new(),
            hard_stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
            notifier,
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn ssh(&self) -> &SshSessions {
        &self.ssh
    }

    pub fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }

    pub fn tick_slots(&self) -> &Arc<TickSlots> {
        &self.tick_slots
    }

    pub fn launchers(&self) -> &LauncherCache {
        &self.launchers
    }

    pub fn residents(&self) -> &Residents {
        &self.residents
    }

    pub fn runner_events(&self) -> &EventSender {
        &self.runner_events
    }

    pub fn notifier(&self) -> &Notifier {
        &self.notifier
    }

    /// Cancelled when the daemon is asked to stop: stop taking work.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Cancelled one grace period after `shutdown`: whatever still runs ends now.
    pub fn hard_stop(&self) -> &CancellationToken {
        &self.hard_stop
    }

    /// Work the daemon waits for (up to the grace period) before it exits.
    pub fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }

    pub fn started_at(&self) -> DateTime<Utc> {
        self.started_at
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Tell open views (`watch`, the dashboard) that a tick finished. Nobody listening is fine.
    pub fn publish_tick(&self, record: TickRecord) {
        let _ = self.tick_feed.send(record);
    }

    pub fn subscribe_ticks(&self) -> broadcast::Receiver<TickRecord> {
        self.tick_feed.subscribe()
    }

    /// Tell open views that a registration changed between ticks (registered, paused,
    /// unpaused, quarantine lifted, unregistered).
    pub fn announce_change(&self, key: String) {
        let _ = self.registration_changed.send(key);
    }

    pub fn subscribe_changes(&self) -> broadcast::Receiver<String> {
        self.registration_changed.subscribe()
    }

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
