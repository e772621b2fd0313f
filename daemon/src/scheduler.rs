//! Scheduled ticks: one due-time queue of next fire instants per registration, driven by one
//! task (docs/design.md, "Scheduling", says why this replaced tokio-cron-scheduler).
//!
//! Schedules are 6-field cron expressions (seconds first, UTC), parsed and stepped with croner
//! using the same parser settings tokio-cron-scheduler used, so every expression users
//! registered before still means the same. `--every` becomes cron with a per-registration
//! offset (`Schedule::to_cron` in the api crate).
//!
//! The driver pops every entry whose due time has passed, hands each to the tick runner
//! (`TickFn`, which spawns it) and re-queues it at its next occurrence after that due time.
//! Nothing is ever dropped: an occurrence is fired, or, if its successor is also already in the
//! past when it is re-queued (the daemon was suspended or starved), counted as missed and
//! folded into the next one, so a registration never ticks twice for one interval. The tick
//! runner's per-registration lock and tick slots (supervisor/tick.rs) bound what runs at once.

use chrono::{DateTime, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds};
use megaplan_cloud_api::wire::{ON_TIME_SLACK_SECS, ScheduleHealth};
use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Called with the registration key and the due time it fires for. Must return quickly: the
/// driver awaits it before looking at the next entry (the daemon's callback spawns the tick).
pub type TickFn =
    Arc<dyn Fn(String, DateTime<Utc>) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// The driver re-reads the wall clock at least this often, so a clock step is noticed.
const MAX_SLEEP: Duration = Duration::from_secs(30);
/// Missed occurrences counted one by one before the next one is found from "now".
const MAX_MISSED_STEPS: u64 = 1000;

struct Entry {
    cron: Cron,
    expr: String,
    due: DateTime<Utc>,
    seq: u64,
}

#[derive(Default)]
struct Queue {
    /// (due, seq) → key, earliest first; `seq` breaks ties and identifies the entry.
    by_due: BTreeSet<(DateTime<Utc>, u64, String)>,
    entries: HashMap<String, Entry>,
    seq: u64,
    unschedulable: u64,
}

#[derive(Default)]
struct Counters {
    due: AtomicU64,
    fired: AtomicU64,
    skipped: AtomicU64,
    missed: AtomicU64,
    on_time: AtomicU64,
    worst_lateness_ms: AtomicU64,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Notify,
    stop: CancellationToken,
    counters: Counters,
}

pub struct Scheduler {
    shared: Arc<Shared>,
    driver: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Why a cron expression cannot be scheduled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error(
        "invalid cron expression {expr:?}: {reason}; use 6 fields with seconds first, e.g. \"0 */5 * * * *\""
    )]
    Invalid { expr: String, reason: String },
    #[error("cron expression {expr:?} never fires; check its day and month fields")]
    NeverFires { expr: String },
}

/// Parse a 6-field cron expression the way registrations are scheduled.
pub fn parse_cron(expr: &str) -> Result<Cron, ScheduleError> {
    CronParser::builder()
        .seconds(Seconds::Required)
        .dom_and_dow(true)
        .build()
        .parse(expr)
        .map_err(|e| ScheduleError::Invalid {
            expr: expr.to_string(),
            reason: e.to_string(),
        })
}

/// `expr` parsed, with its first occurrence after `now`.
fn first_due(expr: &str, now: DateTime<Utc>) -> Result<(Cron, DateTime<Utc>), ScheduleError> {
    let cron = parse_cron(expr)?;
    let due = next_after(&cron, now).ok_or_else(|| ScheduleError::NeverFires {
        expr: expr.to_string(),
    })?;
    Ok((cron, due))
}

/// Check a cron expression without scheduling it: it must parse and have a next occurrence.
pub fn validate_cron(expr: &str) -> Result<(), ScheduleError> {
    first_due(expr, Utc::now()).map(|_| ())
}

fn next_after(cron: &Cron, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
    cron.find_next_occurrence(&t, false).ok()
}

impl Scheduler {
    /// Start the driver task.
    pub fn new(on_tick: TickFn) -> Scheduler {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
            stop: CancellationToken::new(),
            counters: Counters::default(),
        });
        let driver = tokio::spawn(drive(shared.clone(), on_tick));
        Scheduler {
            shared,
            driver: Mutex::new(Some(driver)),
        }
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.shared.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Add or replace the schedule of `key`; it first comes due at the next occurrence after now.
    pub fn schedule(&self, key: &str, expr: &str) -> Result<DateTime<Utc>, ScheduleError> {
        let (cron, due) = first_due(expr, Utc::now())?;
        let mut q = self.queue();
        q.seq += 1;
        let seq = q.seq;
        if let Some(old) = q.entries.remove(key) {
            q.by_due.remove(&(old.due, old.seq, key.to_string()));
        }
        q.by_due.insert((due, seq, key.to_string()));
        q.entries.insert(
            key.to_string(),
            Entry {
                cron,
                expr: expr.to_string(),
                due,
                seq,
            },
        );
        drop(q);
        self.shared.wake.notify_one();
        Ok(due)
    }

    pub fn unschedule(&self, key: &str) {
        let mut q = self.queue();
        if let Some(old) = q.entries.remove(key) {
            q.by_due.remove(&(old.due, old.seq, key.to_string()));
        }
    }

    /// Count a stored registration whose schedule could not be queued (health shows it).
    pub fn note_unschedulable(&self) {
        self.queue().unschedulable += 1;
    }

    /// The cron expression and next due time of `key`, if scheduled.
    pub fn entry(&self, key: &str) -> Option<(String, DateTime<Utc>)> {
        self.queue()
            .entries
            .get(key)
            .map(|e| (e.expr.clone(), e.due))
    }

    /// A scheduled tick started `lateness` after its due time.
    pub fn record_fired(&self, due: DateTime<Utc>, started: DateTime<Utc>) {
        let c = &self.shared.counters;
        let late_ms = u64::try_from((started - due).num_milliseconds()).unwrap_or(0);
        c.fired.fetch_add(1, Ordering::Relaxed);
        if late_ms <= ON_TIME_SLACK_SECS * 1000 {
            c.on_time.fetch_add(1, Ordering::Relaxed);
        }
        c.worst_lateness_ms.fetch_max(late_ms, Ordering::Relaxed);
    }

    /// A scheduled tick found the previous tick of its registration still running.
    pub fn record_skipped(&self) {
        self.shared.counters.skipped.fetch_add(1, Ordering::Relaxed);
    }

    pub fn health(&self) -> ScheduleHealth {
        let (scheduled, unschedulable, next) = {
            let q = self.queue();
            (
                q.entries.len() as u64,
                q.unschedulable,
                q.by_due.first().map(|(d, _, _)| *d),
            )
        };
        let c = &self.shared.counters;
        ScheduleHealth {
            scheduled,
            unschedulable,
            due: c.due.load(Ordering::Relaxed),
            fired: c.fired.load(Ordering::Relaxed),
            skipped: c.skipped.load(Ordering::Relaxed),
            missed: c.missed.load(Ordering::Relaxed),
            on_time: c.on_time.load(Ordering::Relaxed),
            worst_lateness_ms: c.worst_lateness_ms.load(Ordering::Relaxed),
            next_due_at: next.map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        }
    }

    /// Stop the driver; nothing fires after this returns.
    pub async fn shutdown(&self) {
        self.shared.stop.cancel();
        let handle = self.driver.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.await;
        }
    }
}

/// A registration key and the due time it fires for.
type Due = (String, DateTime<Utc>);

/// Take every entry due at `now`, re-queue each at its next occurrence, and return what fires.
fn take_due(shared: &Shared, now: DateTime<Utc>) -> (Vec<Due>, Option<DateTime<Utc>>) {
    let mut q = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
    let mut fire = Vec::new();
    let mut missed = 0u64;
    while let Some((due, seq, key)) = q.by_due.first().cloned() {
        if due > now {
            break;
        }
        q.by_due.pop_first();
        q.seq += 1;
        let new_seq = q.seq;
        let Some(entry) = q.entries.get_mut(&key) else {
            continue;
        };
        debug_assert_eq!(entry.seq, seq);
        let mut next = next_after(&entry.cron, due);
        let mut steps = 0;
        while let Some(n) = next.filter(|n| *n <= now) {
            // This occurrence passed too before the driver got here: fold it into the next.
            missed += 1;
            steps += 1;
            next = if steps < MAX_MISSED_STEPS {
                next_after(&entry.cron, n)
            } else {
                next_after(&entry.cron, now)
            };
        }
        fire.push((key.clone(), due));
        match next {
            Some(n) => {
                entry.due = n;
                entry.seq = new_seq;
                q.by_due.insert((n, new_seq, key));
            }
            None => {
                q.entries.remove(&key);
            }
        }
    }
    let c = &shared.counters;
    c.due
        .fetch_add(fire.len() as u64 + missed, Ordering::Relaxed);
    c.missed.fetch_add(missed, Ordering::Relaxed);
    let next = q.by_due.first().map(|(d, _, _)| *d);
    (fire, next)
}

async fn drive(shared: Arc<Shared>, on_tick: TickFn) {
    loop {
        if shared.stop.is_cancelled() {
            return;
        }
        let now = Utc::now();
        let (fire, next) = take_due(&shared, now);
        for (key, due) in fire {
            on_tick(key, due).await;
        }
        let wait = next
            .map(|n| (n - Utc::now()).to_std().unwrap_or(Duration::ZERO))
            .unwrap_or(MAX_SLEEP)
            .min(MAX_SLEEP);
        if wait.is_zero() {
            tokio::task::yield_now().await;
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shared.wake.notified() => {}
            _ = shared.stop.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use megaplan_cloud_api::schedule::every_to_cron;

    fn shared() -> Shared {
        Shared {
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
            stop: CancellationToken::new(),
            counters: Counters::default(),
        }
    }

    fn t(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 4, h, m, s).unwrap()
    }

    fn put(sh: &Shared, key: &str, expr: &str, due: DateTime<Utc>) {
        let mut q = sh.queue.lock().unwrap();
        q.seq += 1;
        let seq = q.seq;
        q.by_due.insert((due, seq, key.to_string()));
        q.entries.insert(
            key.to_string(),
            Entry {
                cron: parse_cron(expr).unwrap(),
                expr: expr.to_string(),
                due,
                seq,
            },
        );
    }

    #[test]
    fn every_expression_parses_like_before() {
        for secs in [1, 2, 5, 10, 30, 60, 120, 300, 900, 3600, 7200, 21600, 86400] {
            for seed in [0, 1, 59, 3599, 99991, u64::MAX / 3] {
                let c = every_to_cron(secs, seed).unwrap();
                validate_cron(&c).unwrap_or_else(|e| panic!("{secs} {seed}: {e}"));
            }
        }
        assert!(validate_cron("not cron").is_err());
        assert!(
            validate_cron("0 */5 * * *").is_err(),
            "5 fields: seconds are required"
        );
        assert!(validate_cron("0 */5 * * * *").is_ok());
        assert!(
            validate_cron("0 0 0 30 2 *").is_err(),
            "February 30th never comes"
        );
    }

    #[test]
    fn due_entries_fire_once_and_requeue_at_their_next_occurrence() {
        let sh = shared();
        put(&sh, "a", "3/10 * * * * *", t(1, 0, 3));
        put(&sh, "b", "7/10 * * * * *", t(1, 0, 7));
        let (fire, next) = take_due(&sh, t(1, 0, 5));
        assert_eq!(fire, vec![("a".to_string(), t(1, 0, 3))]);
        assert_eq!(next, Some(t(1, 0, 7)));
        let (fire, next) = take_due(&sh, t(1, 0, 9));
        assert_eq!(fire, vec![("b".to_string(), t(1, 0, 7))]);
        assert_eq!(next, Some(t(1, 0, 13)));
        assert!(take_due(&sh, t(1, 0, 12)).0.is_empty());
        let c = &sh.counters;
        assert_eq!(
            (
                c.due.load(Ordering::Relaxed),
                c.missed.load(Ordering::Relaxed)
            ),
            (2, 0)
        );
    }

    #[test]
    fn a_late_driver_fires_once_and_counts_the_occurrences_it_folded() {
        let sh = shared();
        put(&sh, "a", "0/10 * * * * *", t(1, 0, 0));
        // Woken 35 s late: 00, 10, 20, 30 all passed; one tick, three missed, next at 40.
        let (fire, next) = take_due(&sh, t(1, 0, 35));
        assert_eq!(fire, vec![("a".to_string(), t(1, 0, 0))]);
        assert_eq!(next, Some(t(1, 0, 40)));
        let c = &sh.counters;
        assert_eq!(c.due.load(Ordering::Relaxed), 4);
        assert_eq!(c.missed.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn ten_thousand_due_at_once_all_fire_in_one_pass() {
        let sh = shared();
        for i in 0..10_000 {
            put(&sh, &format!("k{i}"), "0 */5 * * * *", t(2, 0, 0));
        }
        let (fire, next) = take_due(&sh, t(2, 0, 1));
        assert_eq!(fire.len(), 10_000);
        assert_eq!(next, Some(t(2, 5, 0)));
        let q = sh.queue.lock().unwrap();
        assert_eq!(q.by_due.len(), 10_000);
        assert_eq!(q.entries.len(), 10_000);
    }

    #[tokio::test]
    async fn rescheduling_replaces_and_unscheduling_removes() {
        let s = Scheduler::new(Arc::new(|_k, _d| Box::pin(async {})));
        let first = s.schedule("k", "0 0 * * * *").unwrap();
        assert_eq!(s.entry("k").unwrap().0, "0 0 * * * *");
        let second = s.schedule("k", "0 30 * * * *").unwrap();
        assert_ne!(first, second);
        assert_eq!(s.entry("k"), Some(("0 30 * * * *".to_string(), second)));
        assert_eq!(s.health().scheduled, 1);
        s.unschedule("k");
        assert_eq!(s.entry("k"), None);
        assert_eq!(s.health().scheduled, 0);
        assert!(s.schedule("k", "nonsense").is_err());
        s.shutdown().await;
    }

    #[tokio::test]
    async fn the_driver_fires_a_due_entry_with_its_due_time() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let s = Scheduler::new(Arc::new(move |k, d| {
            let _ = tx.send((k, d));
            Box::pin(async {})
        }));
        s.schedule("k", "* * * * * *").unwrap();
        // The bound is a safety net against a hang, not a measurement.
        let bound = Duration::from_secs(90);
        let (key, due) = tokio::time::timeout(bound, rx.recv())
            .await
            .expect("never fired")
            .unwrap();
        assert_eq!(key, "k");
        let (key2, due2) = tokio::time::timeout(bound, rx.recv())
            .await
            .expect("fired only once")
            .unwrap();
        assert_eq!(key2, "k");
        assert!(due2 > due, "one tick per occurrence: {due} then {due2}");
        s.shutdown().await;
        let h = s.health();
        assert!(h.due >= 2 && h.missed == 0, "{h:?}");
    }
}
