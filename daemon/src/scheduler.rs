//! Scheduled ticks: one due-time queue of next fire instants per registration, driven by one
//! task (docs/design.md, "Scheduling", says why this replaced tokio-cron-scheduler).
//!
//! Schedules are 6-field cron expressions (seconds first, UTC unless `CRON_TZ=<zone>` names one), parsed and stepped with croner
//! using the same parser settings tokio-cron-scheduler used, so every expression users
//! registered before still means the same. `--every` becomes cron with a per-registration
//! offset (`Schedule::to_cron` in the api crate).
//!
//! The driver pops every entry whose due time has passed, hands each key over a channel
//! ([`Due`], received by the supervisor's task, which spawns the tick) and re-queues it at its
//! next occurrence after that due time.
//! Nothing is ever dropped: an occurrence is fired, or, if its successor is also already in the
//! past when it is re-queued (the daemon was suspended or starved), counted as missed and
//! folded into the next one, so a registration never ticks twice for one interval. The tick
//! runner's per-registration lock and tick slots (supervisor/tick.rs) bound what runs at once.

use chrono::{DateTime, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds};
use megaplan_cloud_api::wire::{ON_TIME_SLACK_SECS, ScheduleHealth, TickBackoff};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// A registration come due: its key and the due time it fires for. Sent by the driver to the
/// receiver given to [`Scheduler::new`] (the supervisor's task, supervisor/tick.rs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    pub key: String,
    pub at: DateTime<Utc>,
}

/// How many due keys may wait for the receiver. The receiver only spawns ticks, so the queue
/// stays short; a full queue makes the driver wait (never drops an occurrence, never grows).
pub const DUE_QUEUE: usize = 1024;

/// The channel the driver hands due keys over (bounded: [`DUE_QUEUE`]).
pub fn due_channel() -> (
    tokio::sync::mpsc::Sender<Due>,
    tokio::sync::mpsc::Receiver<Due>,
) {
    tokio::sync::mpsc::channel(DUE_QUEUE)
}

/// The driver re-reads the wall clock at least this often, so a clock step is noticed.
const MAX_SLEEP: Duration = Duration::from_secs(30);
/// Missed occurrences counted one by one before the next one is found from "now".
const MAX_MISSED_STEPS: u64 = 1000;

/// How an entry finds its occurrences: a cron expression, or a fixed interval cron cannot say
/// (`@every <secs> <offset>`, api::schedule) stepped from the Unix epoch plus the offset.
enum Timing {
    /// A cron expression in UTC, or in the named zone (`CRON_TZ=Europe/Berlin <expr>`, cronie's
    /// convention), its wall-clock times followed across daylight-saving changes.
    Cron(Box<Cron>, Option<Box<jiff::tz::TimeZone>>),
    Every {
        secs: i64,
        offset: i64,
    },
}

/// The prefix naming a cron expression's zone, as cronie writes it.
pub const CRON_TZ_PREFIX: &str = "CRON_TZ=";

/// `zone`'s UTC offset at `t`.
fn offset_at(zone: &jiff::tz::TimeZone, t: DateTime<Utc>) -> Option<chrono::FixedOffset> {
    let ts = jiff::Timestamp::from_second(t.timestamp()).ok()?;
    chrono::FixedOffset::east_opt(zone.to_offset(ts).seconds())
}

/// The next occurrence of `cron` after `t` (or at it, `inclusive`) in `zone`'s wall-clock time.
/// Stepped at the offset in force at `t`; when the offset differs at the occurrence found (a
/// daylight-saving change lies between), stepped again at that offset.
fn next_in_zone(
    cron: &Cron,
    zone: &jiff::tz::TimeZone,
    t: DateTime<Utc>,
    inclusive: bool,
) -> Option<DateTime<Utc>> {
    let mut offset = offset_at(zone, t)?;
    let mut found = None;
    for _ in 0..3 {
        let at = cron
            .find_next_occurrence(&t.with_timezone(&offset), inclusive)
            .ok()?
            .with_timezone(&Utc);
        found = Some(at);
        let there = offset_at(zone, at)?;
        if there == offset {
            break;
        }
        offset = there;
    }
    found
}

impl Timing {
    /// The first occurrence strictly after `t`.
    fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Timing::Cron(cron, None) => cron.find_next_occurrence(&t, false).ok(),
            Timing::Cron(cron, Some(zone)) => next_in_zone(cron, zone, t, false),
            Timing::Every { secs, offset } => {
                let n = (t.timestamp() - offset).div_euclid(*secs) + 1;
                let at = n.checked_mul(*secs)?.checked_add(*offset)?;
                DateTime::from_timestamp(at, 0)
            }
        }
    }

    /// The first occurrence at or after `t`.
    fn at_or_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Timing::Cron(cron, None) => cron.find_next_occurrence(&t, true).ok(),
            Timing::Cron(cron, Some(zone)) => next_in_zone(cron, zone, t, true),
            Timing::Every { secs, offset } => {
                let on_one =
                    t.timestamp_subsec_nanos() == 0 && (t.timestamp() - offset) % secs == 0;
                if on_one { Some(t) } else { self.next_after(t) }
            }
        }
    }
}

/// Parse what a registration is scheduled with: an `@every <secs> <offset>` interval or a
/// 6-field cron expression.
fn parse_timing(expr: &str) -> Result<Timing, ScheduleError> {
    if let Some((secs, offset)) = megaplan_cloud_api::schedule::parse_every_expression(expr) {
        let secs = i64::try_from(secs).map_err(|_| ScheduleError::Invalid {
            expr: expr.to_string(),
            reason: "the interval is too long".into(),
        })?;
        let offset = i64::try_from(offset).unwrap_or(0);
        return Ok(Timing::Every { secs, offset });
    }
    if let Some(rest) = expr.trim_start().strip_prefix(CRON_TZ_PREFIX) {
        let (name, cron) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        let zone = jiff::tz::TimeZone::get(name).map_err(|e| ScheduleError::Invalid {
            expr: expr.to_string(),
            reason: format!(
                "unknown time zone {name:?} ({e}); use an IANA name such as Europe/Berlin or UTC"
            ),
        })?;
        return parse_cron(cron.trim()).map(|c| Timing::Cron(Box::new(c), Some(Box::new(zone))));
    }
    parse_cron(expr).map(|c| Timing::Cron(Box::new(c), None))
}

/// The next `n` occurrences of `expr` after `from` (the register echo shows 3).
pub fn upcoming(
    expr: &str,
    from: DateTime<Utc>,
    n: usize,
) -> Result<Vec<DateTime<Utc>>, ScheduleError> {
    let timing = parse_timing(expr)?;
    let mut out = Vec::with_capacity(n);
    let mut at = from;
    while out.len() < n {
        match timing.next_after(at) {
            Some(next) => {
                out.push(next);
                at = next;
            }
            None => break,
        }
    }
    Ok(out)
}

struct Entry {
    timing: Timing,
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
    backed_off: AtomicU64,
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
    /// Registrations held back after ticks that hit their deadline.
    pub backoff: Backoffs,
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
fn first_due(expr: &str, now: DateTime<Utc>) -> Result<(Timing, DateTime<Utc>), ScheduleError> {
    let timing = parse_timing(expr)?;
    let due = timing
        .next_after(now)
        .ok_or_else(|| ScheduleError::NeverFires {
            expr: expr.to_string(),
        })?;
    Ok((timing, due))
}

/// Check a cron expression without scheduling it: it must parse and have a next occurrence.
pub fn validate_cron(expr: &str) -> Result<(), ScheduleError> {
    first_due(expr, Utc::now()).map(|_| ())
}

impl Scheduler {
    /// Start the driver task; due keys go to `due`.
    pub fn new(due: tokio::sync::mpsc::Sender<Due>) -> Scheduler {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
            stop: CancellationToken::new(),
            counters: Counters::default(),
        });
        let driver = tokio::spawn(drive(shared.clone(), due));
        Scheduler {
            shared,
            backoff: Backoffs::default(),
            driver: Mutex::new(Some(driver)),
        }
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.shared.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Add or replace the schedule of `key`; it first comes due at the next occurrence after now.
    pub fn schedule(&self, key: &str, expr: &str) -> Result<DateTime<Utc>, ScheduleError> {
        let (timing, due) = first_due(expr, Utc::now())?;
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
                timing,
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
        drop(q);
        self.backoff.forget(key);
    }

    /// The time between the occurrence of `key` at or after `at` and the one after it: the base
    /// of its back-off. `None` when `key` is not scheduled.
    pub fn interval(&self, key: &str, at: DateTime<Utc>) -> Option<Duration> {
        let q = self.queue();
        let timing = &q.entries.get(key)?.timing;
        let first = timing.at_or_after(at)?;
        let second = timing.next_after(first)?;
        (second - first).to_std().ok()
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

    /// A scheduled occurrence was skipped because its registration is backing off (counted in
    /// `skipped` too).
    pub fn record_backed_off(&self) {
        let c = &self.shared.counters;
        c.skipped.fetch_add(1, Ordering::Relaxed);
        c.backed_off.fetch_add(1, Ordering::Relaxed);
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
            backed_off: c.backed_off.load(Ordering::Relaxed),
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
type Fired = (String, DateTime<Utc>);

/// Take every entry due at `now`, re-queue each at its next occurrence, and return what fires.
fn take_due(shared: &Shared, now: DateTime<Utc>) -> (Vec<Fired>, Option<DateTime<Utc>>) {
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
        let mut next = entry.timing.next_after(due);
        let mut steps = 0;
        while let Some(n) = next.filter(|n| *n <= now) {
            // This occurrence passed too before the driver got here: fold it into the next.
            missed += 1;
            steps += 1;
            next = if steps < MAX_MISSED_STEPS {
                entry.timing.next_after(n)
            } else {
                entry.timing.next_after(now)
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

async fn drive(shared: Arc<Shared>, due: tokio::sync::mpsc::Sender<Due>) {
    loop {
        if shared.stop.is_cancelled() {
            return;
        }
        let now = Utc::now();
        let (fire, next) = take_due(&shared, now);
        for (key, at) in fire {
            // The receiver is gone only when the daemon stops: nothing left to tick.
            if due.send(Due { key, at }).await.is_err() {
                return;
            }
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

// ---------------------------------------------------------------------------------------------
// Back-off: a registration whose ticks keep hitting their deadline (observation or tick) is held
// back, so a hung runner costs a tick slot ever more rarely; a tick that finishes in time ends it.

/// The longest back-off, whatever the registration's interval.
pub const BACKOFF_CAP: Duration = Duration::from_secs(30 * 60);

/// The pause after the `strikes`-th deadline hit in a row (`strikes` ≥ 1): `base·2^(strikes−1)`
/// scaled by 75–125 % (`jitter` in 0..=1 picks where, so registrations that hung together do not
/// come back together), never more than `cap`.
pub fn backoff_delay(strikes: u32, base: Duration, cap: Duration, jitter: f64) -> Duration {
    let exp = strikes.saturating_sub(1).min(40);
    let j = if jitter.is_finite() {
        jitter.clamp(0.0, 1.0)
    } else {
        0.5
    };
    let secs = base.as_secs_f64() * 2f64.powi(exp as i32) * (0.75 + 0.5 * j);
    Duration::try_from_secs_f64(secs.min(cap.as_secs_f64())).unwrap_or(cap)
}

/// Why and until when a registration's scheduled ticks are held back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackoffState {
    /// Ticks in a row that hit their deadline.
    pub strikes: u32,
    /// The first of those.
    pub since: DateTime<Utc>,
    /// Scheduled occurrences due before this are skipped (and counted).
    pub until: DateTime<Utc>,
    /// The last deadline hit, as its report says.
    pub reason: String,
    /// Occurrences skipped by this back-off.
    pub skipped: u64,
}

impl BackoffState {
    /// The wire shape (`registrations`, `explain`).
    pub fn to_wire(&self) -> TickBackoff {
        let t = |d: &DateTime<Utc>| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        TickBackoff {
            strikes: self.strikes,
            since: t(&self.since),
            until: t(&self.until),
            reason: self.reason.clone(),
            skipped: self.skipped,
        }
    }
}

/// The back-off of every registration that has one (at most one entry per registration: it is
/// removed by a tick that finishes in time and by unscheduling).
#[derive(Default)]
pub struct Backoffs {
    map: Mutex<HashMap<String, BackoffState>>,
}

impl Backoffs {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, BackoffState>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A tick of `key` hit its deadline at `now`: one more strike, held back until
    /// `now + backoff_delay(..)`.
    pub fn strike(
        &self,
        key: &str,
        reason: &str,
        now: DateTime<Utc>,
        base: Duration,
        jitter: f64,
    ) -> BackoffState {
        let mut m = self.map();
        let e = m.entry(key.to_string()).or_insert_with(|| BackoffState {
            strikes: 0,
            since: now,
            until: now,
            reason: String::new(),
            skipped: 0,
        });
        e.strikes = e.strikes.saturating_add(1);
        let delay = backoff_delay(e.strikes, base, BACKOFF_CAP, jitter);
        e.until = now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::zero());
        e.reason = reason.to_string();
        e.clone()
    }

    /// A tick of `key` finished in time: its back-off (if any) ends; returned.
    pub fn clear(&self, key: &str) -> Option<BackoffState> {
        self.map().remove(key)
    }

    pub fn get(&self, key: &str) -> Option<BackoffState> {
        self.map().get(key).cloned()
    }

    /// Its last tick hit a deadline: its ticks take only the suspects' share of the slots.
    pub fn is_suspect(&self, key: &str) -> bool {
        self.map().contains_key(key)
    }

    /// Whether the scheduled occurrence of `key` due at `due` is held back; if so it is counted.
    pub fn hold(&self, key: &str, due: DateTime<Utc>) -> Option<BackoffState> {
        let mut m = self.map();
        let e = m.get_mut(key).filter(|e| due < e.until)?;
        e.skipped += 1;
        Some(e.clone())
    }

    fn forget(&self, key: &str) {
        self.map().remove(key);
    }
}

// ---------------------------------------------------------------------------------------------
// Tick slots: at most `--max-concurrent-ticks` ticks at once, at most `--max-ticks-per-host` on one
// host, and ticks of suspect registrations (in back-off) only on a small share of either, so a
// healthy registration always finds a slot. Waiting ticks start oldest due first.

/// The caps of the tick slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotLimits {
    pub total: usize,
    pub per_host: usize,
}

impl SlotLimits {
    pub fn new(total: usize, per_host: usize) -> SlotLimits {
        let total = total.max(1);
        SlotLimits {
            total,
            per_host: per_host.clamp(1, total),
        }
    }
}

/// Of a pool of `n` slots, how many ticks of suspect registrations may hold at once: a quarter,
/// at least one, and never all of them when there are two or more.
pub fn suspect_share(n: usize) -> usize {
    if n <= 1 { 1 } else { (n / 4).clamp(1, n - 1) }
}

/// What the running ticks hold: in all, of suspects, and per host (all, suspects).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Held {
    pub total: usize,
    pub suspect: usize,
    pub hosts: HashMap<String, (usize, usize)>,
}

impl Held {
    /// Whether one more tick on `host` (of a suspect registration or not) fits under `l`.
    pub fn fits(&self, l: &SlotLimits, host: &str, suspect: bool) -> bool {
        let (h_all, h_suspect) = self.hosts.get(host).copied().unwrap_or((0, 0));
        self.total < l.total
            && h_all < l.per_host
            && (!suspect
                || (self.suspect < suspect_share(l.total) && h_suspect < suspect_share(l.per_host)))
    }

    pub fn take(&mut self, host: &str, suspect: bool) {
        self.total += 1;
        let h = self.hosts.entry(host.to_string()).or_default();
        h.0 += 1;
        if suspect {
            self.suspect += 1;
            h.1 += 1;
        }
    }

    pub fn give_back(&mut self, host: &str, suspect: bool) {
        self.total = self.total.saturating_sub(1);
        if suspect {
            self.suspect = self.suspect.saturating_sub(1);
        }
        if let Some(h) = self.hosts.get_mut(host) {
            h.0 = h.0.saturating_sub(1);
            if suspect {
                h.1 = h.1.saturating_sub(1);
            }
            if h.0 == 0 {
                self.hosts.remove(host);
            }
        }
    }
}

/// Which of the waiting ticks start now (their positions), walking them oldest due first and
/// starting each that fits beside what is held (`held` counts them). A waiter that does not fit
/// (its host or the suspects' share is full) does not hold back the ones behind it.
pub fn admit<'a>(
    limits: &SlotLimits,
    held: &mut Held,
    waiting: impl IntoIterator<Item = (&'a str, bool)>,
) -> Vec<usize> {
    let mut start = Vec::new();
    for (i, (host, suspect)) in waiting.into_iter().enumerate() {
        if held.total >= limits.total {
            break;
        }
        if held.fits(limits, host, suspect) {
            held.take(host, suspect);
            start.push(i);
        }
    }
    start
}

struct Waiter {
    host: String,
    suspect: bool,
    granted: bool,
    bell: Arc<Notify>,
}

#[derive(Default)]
struct SlotsInner {
    held: Held,
    /// (due, seq) → waiter, oldest due first.
    waiting: std::collections::BTreeMap<(DateTime<Utc>, u64), Waiter>,
    seq: u64,
}

impl SlotsInner {
    fn grant(&mut self, limits: &SlotLimits) {
        let open: Vec<(DateTime<Utc>, u64)> = self
            .waiting
            .iter()
            .filter(|(_, w)| !w.granted)
            .map(|(id, _)| *id)
            .collect();
        let chosen = {
            let waiting = &self.waiting;
            let candidates = open
                .iter()
                .filter_map(|id| waiting.get(id).map(|w| (w.host.as_str(), w.suspect)));
            admit(limits, &mut self.held, candidates)
        };
        for i in chosen {
            if let Some(w) = open.get(i).and_then(|id| self.waiting.get_mut(id)) {
                w.granted = true;
                w.bell.notify_one();
            }
        }
    }
}

/// The tick slots (see [`SlotLimits`], [`suspect_share`], [`admit`]).
pub struct TickSlots {
    limits: SlotLimits,
    inner: Mutex<SlotsInner>,
}

/// A held tick slot; dropping it frees the slot for the next waiter.
pub struct SlotPermit {
    slots: Arc<TickSlots>,
    host: String,
    suspect: bool,
}

impl Drop for SlotPermit {
    fn drop(&mut self) {
        let mut s = self.slots.lock();
        s.held.give_back(&self.host, self.suspect);
        s.grant(&self.slots.limits);
    }
}

/// An acquire in progress: if it is dropped before it returns (its tick was cancelled), its
/// place in the queue, or the slot it was just granted, is given back.
struct Waiting<'a> {
    slots: &'a TickSlots,
    id: (DateTime<Utc>, u64),
    armed: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut s = self.slots.lock();
        if let Some(w) = s.waiting.remove(&self.id)
            && w.granted
        {
            s.held.give_back(&w.host, w.suspect);
        }
        s.grant(&self.slots.limits);
    }
}

impl TickSlots {
    pub fn new(limits: SlotLimits) -> TickSlots {
        TickSlots {
            limits,
            inner: Mutex::new(SlotsInner::default()),
        }
    }

    pub fn limits(&self) -> SlotLimits {
        self.limits
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SlotsInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wait for a slot for a tick on `host`, due at `due` (earlier due times start first).
    pub async fn acquire(
        self: &Arc<Self>,
        host: &str,
        suspect: bool,
        due: DateTime<Utc>,
    ) -> SlotPermit {
        let bell = Arc::new(Notify::new());
        let id = {
            let mut s = self.lock();
            s.seq += 1;
            let id = (due, s.seq);
            s.waiting.insert(
                id,
                Waiter {
                    host: host.to_string(),
                    suspect,
                    granted: false,
                    bell: bell.clone(),
                },
            );
            s.grant(&self.limits);
            id
        };
        let mut waiting = Waiting {
            slots: self,
            id,
            armed: true,
        };
        loop {
            {
                let mut s = self.lock();
                if s.waiting.get(&id).is_some_and(|w| w.granted) {
                    s.waiting.remove(&id);
                    waiting.armed = false;
                    return SlotPermit {
                        slots: self.clone(),
                        host: host.to_string(),
                        suspect,
                    };
                }
            }
            bell.notified().await;
        }
    }

    /// (ticks holding a slot, of them suspects, ticks waiting for one).
    pub fn usage(&self) -> (usize, usize, usize) {
        let s = self.lock();
        (
            s.held.total,
            s.held.suspect,
            s.waiting.values().filter(|w| !w.granted).count(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cron_in_a_named_zone_keeps_its_wall_clock_across_daylight_saving() {
        let at = |t: &str| DateTime::parse_from_rfc3339(t).unwrap().with_timezone(&Utc);
        let runs = |from: &str| -> Vec<String> {
            upcoming("CRON_TZ=Europe/Berlin 0 0 9 * * *", at(from), 3)
                .unwrap()
                .iter()
                .map(|t| t.to_rfc3339())
                .collect()
        };
        // Winter: 09:00 CET is 08:00 UTC.
        assert_eq!(
            runs("2026-12-04T12:00:00Z"),
            [
                "2026-12-05T08:00:00+00:00",
                "2026-12-06T08:00:00+00:00",
                "2026-12-07T08:00:00+00:00"
            ]
        );
        // Clocks go forward on 2026-03-29: 09:00 is 08:00 UTC, then 07:00 UTC.
        assert_eq!(
            runs("2026-03-28T00:00:00Z"),
            [
                "2026-03-28T08:00:00+00:00",
                "2026-03-29T07:00:00+00:00",
                "2026-03-30T07:00:00+00:00"
            ]
        );
        // Without a zone the expression is UTC, as before.
        assert_eq!(
            upcoming("0 0 9 * * *", at("2026-12-04T12:00:00Z"), 1).unwrap()[0].to_rfc3339(),
            "2026-12-05T09:00:00+00:00"
        );
        let e = validate_cron("CRON_TZ=Mars/Olympus 0 0 9 * * *").unwrap_err();
        assert!(
            e.to_string().contains("unknown time zone \"Mars/Olympus\""),
            "{e}"
        );
    }
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
                timing: parse_timing(expr).unwrap(),
                expr: expr.to_string(),
                due,
                seq,
            },
        );
    }

    #[test]
    fn an_interval_cron_cannot_say_steps_from_the_epoch_plus_its_offset() {
        // 90 minutes, offset 7 s: 00:00:07 on the epoch grid, then every 5400 s.
        let expr = "@every 5400 7";
        let runs = upcoming(expr, t(10, 0, 0), 3).unwrap();
        let gap = |a: DateTime<Utc>, b: DateTime<Utc>| (b - a).num_seconds();
        assert_eq!(gap(runs[0], runs[1]), 5400);
        assert_eq!(gap(runs[1], runs[2]), 5400);
        assert_eq!((runs[0].timestamp() - 7) % 5400, 0);
        assert!(runs[0] > t(10, 0, 0) && gap(t(10, 0, 0), runs[0]) <= 5400);
        // Due items fire once and come back one interval later.
        let sh = shared();
        put(&sh, "k", expr, runs[0]);
        let (fired, next) = take_due(&sh, runs[0]);
        assert_eq!(fired, [("k".to_string(), runs[0])]);
        assert_eq!(next, Some(runs[1]));
        let timing = parse_timing(expr).unwrap();
        assert_eq!(timing.at_or_after(runs[1]), Some(runs[1]));
        assert_eq!(
            upcoming("0 0 * * * *", t(10, 30, 0), 2).unwrap(),
            [t(11, 0, 0), t(12, 0, 0)]
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
        let (tx, _rx) = due_channel();
        let s = Scheduler::new(tx);
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
        let (tx, mut rx) = due_channel();
        let s = Scheduler::new(tx);
        s.schedule("k", "* * * * * *").unwrap();
        // The bound is a safety net against a hang, not a measurement.
        let bound = Duration::from_secs(90);
        let Due { key, at: due } = tokio::time::timeout(bound, rx.recv())
            .await
            .expect("never fired")
            .unwrap();
        assert_eq!(key, "k");
        let Due {
            key: key2,
            at: due2,
        } = tokio::time::timeout(bound, rx.recv())
            .await
            .expect("fired only once")
            .unwrap();
        assert_eq!(key2, "k");
        assert!(due2 > due, "one tick per occurrence: {due} then {due2}");
        s.shutdown().await;
        let h = s.health();
        assert!(h.due >= 2 && h.missed == 0, "{h:?}");
    }

    // -----------------------------------------------------------------------------------------
    // Back-off and tick slots.

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Exponential, jittered within 75–125 %, never over the cap, never shorter for more
        /// strikes at the same jitter.
        #[test]
        fn backoff_grows_exponentially_with_bounded_jitter_and_a_cap(
            strikes in 1u32..100,
            base_secs in 1u64..7200,
            jitter in 0.0f64..=1.0,
        ) {
            let base = Duration::from_secs(base_secs);
            let d = backoff_delay(strikes, base, BACKOFF_CAP, jitter);
            prop_assert!(d <= BACKOFF_CAP);
            let exact = base_secs as f64 * 2f64.powi(strikes.saturating_sub(1).min(40) as i32);
            let lo = (exact * 0.75).min(BACKOFF_CAP.as_secs_f64());
            let hi = (exact * 1.25).min(BACKOFF_CAP.as_secs_f64());
            prop_assert!(d.as_secs_f64() >= lo - 1e-6 && d.as_secs_f64() <= hi + 1e-6, "{d:?} not in {lo}..{hi}");
            let next = backoff_delay(strikes + 1, base, BACKOFF_CAP, jitter);
            prop_assert!(next >= d, "{next:?} < {d:?}");
        }

        /// Whatever runs and waits, admitting never exceeds a cap: in all, per host, and the
        /// suspects' share (in all and per host); and a healthy waiter is refused only when its
        /// host or the whole pool is full — never because of suspects.
        #[test]
        fn admitting_keeps_every_cap_and_never_lets_suspects_fill_a_pool(
            total in 1usize..12,
            per_host in 1usize..12,
            waiting in proptest::collection::vec((0usize..3, any::<bool>()), 0..40),
        ) {
            let l = SlotLimits::new(total, per_host);
            let hosts = ["a", "b", "c"];
            let mut held = Held::default();
            let w: Vec<(&str, bool)> = waiting.iter().map(|(h, s)| (hosts[*h], *s)).collect();
            let started = admit(&l, &mut held, w.iter().copied());
            prop_assert!(held.total <= l.total);
            prop_assert!(held.suspect <= suspect_share(l.total));
            for (all, sus) in held.hosts.values() {
                prop_assert!(*all <= l.per_host);
                prop_assert!(*sus <= suspect_share(l.per_host));
            }
            if l.total >= 2 {
                prop_assert!(held.suspect < l.total);
            }
            for (i, (host, suspect)) in w.iter().enumerate() {
                if !suspect && !started.contains(&i) {
                    let on_host = held.hosts.get(*host).map_or(0, |h| h.0);
                    prop_assert!(held.total == l.total || on_host == l.per_host);
                }
            }
        }
    }

    #[test]
    fn suspects_get_a_quarter_at_least_one_never_all() {
        assert_eq!(
            [1, 2, 3, 4, 8, 9, 16].map(suspect_share),
            [1, 1, 1, 1, 2, 2, 4]
        );
    }

    /// The case: ten hung registrations (backing off) and one healthy one on one host.
    /// However many hung ticks wait, and whenever they came due, they hold at most the
    /// suspects' share and the healthy tick starts.
    #[test]
    fn ten_suspects_on_one_host_leave_a_slot_to_the_healthy_one() {
        let l = SlotLimits::new(8, 4);
        let mut held = Held::default();
        let mut w = vec![("h", true); 10];
        w.push(("h", false));
        let started = admit(&l, &mut held, w.iter().copied());
        assert_eq!(
            started,
            vec![0, 10],
            "one suspect (4/4) and the healthy one"
        );
        assert_eq!((held.total, held.suspect), (2, 1));
        // A second host is not held back by the first host's suspects beyond the global share.
        let started = admit(&l, &mut held, [("g", true), ("g", true), ("g", false)]);
        assert_eq!(started, vec![0, 2]);
        assert_eq!(held.suspect, 2);
    }

    #[tokio::test]
    async fn waiting_ticks_start_oldest_due_first_and_a_cancelled_wait_gives_its_place_back() {
        let slots = Arc::new(TickSlots::new(SlotLimits::new(1, 1)));
        let first = slots.acquire("h", false, t(1, 0, 0)).await;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut tasks = Vec::new();
        // Queued in the order late, early, middle; they must start early, middle, late.
        for (name, due) in [
            ("late", t(1, 0, 30)),
            ("early", t(1, 0, 10)),
            ("middle", t(1, 0, 20)),
        ] {
            let s = slots.clone();
            let tx = tx.clone();
            tasks.push(tokio::spawn(async move {
                let p = s.acquire("h", false, due).await;
                tx.send(name).unwrap();
                drop(p);
            }));
            while slots.usage().2 < tasks.len() {
                tokio::task::yield_now().await;
            }
        }
        // A wait that is dropped (its tick was cancelled) leaves no trace.
        let s = slots.clone();
        let cancelled = tokio::spawn(async move { s.acquire("h", false, t(1, 0, 0)).await });
        while slots.usage().2 < 4 {
            tokio::task::yield_now().await;
        }
        cancelled.abort();
        let _ = cancelled.await;
        assert_eq!(slots.usage(), (1, 0, 3));
        drop(first);
        let mut order = Vec::new();
        for _ in 0..3 {
            order.push(rx.recv().await.unwrap());
        }
        assert_eq!(order, ["early", "middle", "late"]);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(slots.usage(), (0, 0, 0));
    }

    #[test]
    fn backoff_strikes_hold_count_and_clear() {
        let b = Backoffs::default();
        let base = Duration::from_secs(10);
        let s1 = b.strike("k", "observation deadline", t(1, 0, 0), base, 0.5);
        assert_eq!((s1.strikes, s1.until), (1, t(1, 0, 10)));
        assert!(b.is_suspect("k") && !b.is_suspect("other"));
        let s2 = b.strike("k", "again", t(1, 0, 20), base, 0.5);
        assert_eq!(
            (s2.strikes, s2.since, s2.until),
            (2, t(1, 0, 0), t(1, 0, 40))
        );
        assert!(b.hold("k", t(1, 0, 30)).is_some());
        assert!(b.hold("k", t(1, 0, 39)).is_some());
        assert!(b.hold("k", t(1, 0, 40)).is_none(), "due at `until`: runs");
        assert!(b.hold("other", t(1, 0, 30)).is_none());
        assert_eq!(b.get("k").unwrap().skipped, 2);
        assert_eq!(b.clear("k").map(|s| s.strikes), Some(2));
        assert!(!b.is_suspect("k") && b.hold("k", t(1, 0, 30)).is_none());
    }
}
