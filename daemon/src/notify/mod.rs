//! Unattended watching that tells a human (docs/notifications.md).
//!
//! A stored tick only rings a bell ([`after_tick`]); it never waits for watching. The watcher
//! ([`spawn_worker`] starts it) reads the stored ticks in id order behind a cursor kept in
//! SQLite, compares each report with what it last saw of the registration ([`transitions`],
//! pure), and writes the changed watch states, one outbox row per (notification, sink) and the
//! moved cursor in one transaction ([`watch_pass`]): a restart or a crash neither loses a
//! transition nor sends one twice, and ticks stored while the daemon was stopping are watched
//! by the next start. A background worker delivers the outbox with retries and backoff.
//! Notifications are built from the stored (already redacted) report and redacted again with
//! the registration's secrets before they are queued.

pub mod config;
pub mod deliver;
pub mod digest;
pub mod explain;
pub mod fleet;
pub mod message;
pub mod notifier;
pub mod sink_test;
pub mod sinks;
pub mod store;
pub mod transitions;

use crate::redact::{Redact, Redactor};
use crate::state::AppState;
use chrono::Utc;
use config::{NotifyConfig, Sink};
use megaplan_cloud_api::wire::TickRecord;
pub use notifier::Notifier;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use transitions::WatchState;

/// What the watcher needs of a tick's registration besides the tick: its secrets (for
/// redaction) and its repository's web address (for PR links).
pub struct TickContext {
    pub redactor: Redactor,
    pub repo_web: Option<String>,
}

/// Ticks read by one watcher pass at most (one transaction each).
const WATCH_BATCH: u32 = 256;

/// The hook run once a tick report is final and stored: wake the watcher. The tick answers
/// at once; the watcher finds the report in SQLite (nothing is handed over in memory that a
/// restart could lose).
pub fn after_tick(state: &Arc<AppState>) {
    state.notifier().watch.notify_one();
}

/// What one watcher pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WatchPass {
    /// Stored ticks read (the cursor moved past them).
    pub ticks: usize,
    /// Outbox rows queued.
    pub queued: usize,
}

/// Read up to `limit` ticks after the watch cursor, decide their transitions in order and
/// commit states, notifications and the cursor together. `context` gives the secrets and the
/// repository of a tick's registration. Ticks of unregistered cloud.yaml files (a plain `supervise --chain`)
/// are passed over: watching is per registration.
pub async fn watch_pass(
    store: &crate::store::Store,
    notifier: &Notifier,
    context: &(dyn Fn(&TickRecord) -> TickContext + Sync),
    limit: u32,
) -> Result<WatchPass, crate::store::StoreError> {
    let cursor = store::watch_cursor(store).await?;
    let ticks = store::unwatched_ticks(store, cursor, limit).await?;
    let Some(last) = ticks.last().map(|t| t.id) else {
        return Ok(WatchPass::default());
    };
    // Per key: its sinks (None: not registered) and the state as this pass has moved it.
    let mut sinks_of: HashMap<String, Option<Vec<Sink>>> = HashMap::new();
    let mut states: HashMap<String, WatchState> = HashMap::new();
    let mut changed: Vec<String> = Vec::new();
    let mut rows = Vec::new();
    let rules = notifier.rules();
    for rec in &ticks {
        if !sinks_of.contains_key(&rec.key) {
            let sinks = match store.get_registration(&rec.key).await? {
                None => None,
                Some(_) => {
                    let mut all = notifier.config.sinks.clone();
                    all.extend(store::registration_sinks(store, &rec.key).await?);
                    Some(all)
                }
            };
            sinks_of.insert(rec.key.clone(), sinks);
        }
        let Some(Some(sinks)) = sinks_of.get(&rec.key) else {
            continue;
        };
        let prev = match states.get(&rec.key) {
            Some(s) => s.clone(),
            None => store::watch_state(store, &rec.key).await?,
        };
        let at = transitions::Occurrence {
            registration: &rec.key,
            tick_id: rec.id,
        };
        let (next, events) = transitions::transitions(&prev, &rec.report, Utc::now(), rules, at);
        if next == prev && events.is_empty() {
            states.entry(rec.key.clone()).or_insert(prev);
            continue;
        }
        // With a digest, what needs nobody waits for the digest (docs/notifications.md).
        let events: Vec<_> = events
            .into_iter()
            .filter(|e| notifier.config.digest.is_none() || e.event.needs_person())
            .collect();
        if !events.is_empty() && !sinks.is_empty() {
            rows.extend(outbox_rows(rec, &events, sinks, &context(rec)));
        }
        for ev in &events {
            tracing::info!(key = %rec.key, event = ev.event.as_str(), idempotency_key = %ev.idempotency_key, sinks = sinks.len(), tick = rec.id, "notification");
        }
        if !changed.contains(&rec.key) {
            changed.push(rec.key.clone());
        }
        states.insert(rec.key.clone(), next);
    }
    let changed: Vec<(String, WatchState)> = changed
        .into_iter()
        .filter_map(|k| states.remove(&k).map(|s| (k, s)))
        .collect();
    let queued = store::commit_watch(store, &changed, &rows, last).await?;
    Ok(WatchPass {
        ticks: ticks.len(),
        queued,
    })
}

/// The watcher: a pass whenever a tick was stored (and once at start, for ticks stored while
/// the daemon was not watching). At shutdown it keeps watching until the ticks still running
/// have stored their reports, then exits; anything later is read by the next start.
fn spawn_watcher(state: Arc<AppState>) {
    let tasks = state.tasks().clone();
    tasks.spawn(async move {
        let context = |rec: &TickRecord| context_for(&state, rec);
        let mut failures: u32 = 0;
        loop {
            let pass = watch_pass(state.store(), state.notifier(), &context, WATCH_BATCH).await;
            match pass {
                Ok(p) => {
                    failures = 0;
                    if p.queued > 0 {
                        state.notifier().wake.notify_one();
                    }
                    if p.ticks == WATCH_BATCH as usize {
                        continue;
                    }
                }
                Err(e) => {
                    // The same ticks are read again on the next pass: nothing is lost.
                    failures = failures.saturating_add(1);
                    if failures == 1 || failures.is_power_of_two() {
                        tracing::error!("cannot record the watch state of stored ticks: {e}");
                    }
                }
            }
            let retry = Duration::from_millis(if failures > 0 { 1000 } else { 200 });
            if state.shutdown().is_cancelled() {
                // Only this task and the ticks still running are left in the tracker.
                if state.tasks().len() <= 1 || state.hard_stop().is_cancelled() {
                    let _ =
                        watch_pass(state.store(), state.notifier(), &context, WATCH_BATCH).await;
                    break;
                }
                tokio::select! {
                    _ = state.notifier().watch.notified() => {}
                    _ = tokio::time::sleep(retry) => {}
                    _ = state.hard_stop().cancelled() => {}
                }
                continue;
            }
            if failures > 0 {
                tokio::select! {
                    _ = tokio::time::sleep(retry) => {}
                    _ = state.shutdown().cancelled() => {}
                }
                continue;
            }
            tokio::select! {
                _ = state.notifier().watch.notified() => {}
                _ = state.shutdown().cancelled() => {}
            }
        }
    });
}

/// One outbox row per (event, sink), each body redacted on its own (the report was redacted
/// by the tick already; this holds even for a report that was not).
pub fn outbox_rows(
    rec: &TickRecord,
    events: &[transitions::Event],
    sinks: &[Sink],
    context: &TickContext,
) -> Vec<store::NewOutbox> {
    let mut rows = Vec::new();
    let created_at = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    for ev in events {
        let n = message::of_event(rec, ev, context.repo_web.as_deref(), &created_at);
        let text = redacted_text(&n, &context.redactor);
        for s in sinks {
            rows.push(store::NewOutbox {
                key: rec.key.clone(),
                event: ev.event.to_string(),
                idempotency_key: ev.idempotency_key.clone(),
                sink: s.clone(),
                body: text.clone(),
            });
        }
    }
    rows
}

/// The notification's JSON with every secret the redactor knows masked in its texts (closed
/// words such as the event hold none).
pub fn redacted_text(n: &megaplan_cloud_api::notification::Notification, r: &Redactor) -> String {
    let mut masked = n.clone();
    masked.redact_with(r);
    serde_json::to_string(&masked).unwrap_or_default()
}

/// The registration's secrets (names from its cloud.yaml, values the daemon knows) and its
/// repository's web address.
fn context_for(state: &Arc<AppState>, rec: &TickRecord) -> TickContext {
    let spec = crate::cloud_yaml::load(std::path::Path::new(&rec.cloud_yaml)).ok();
    let names = spec.as_ref().map(|s| s.secrets.clone()).unwrap_or_default();
    let values = state.secret_values(&rec.key, &names);
    TickContext {
        redactor: Redactor::new(&names, &values),
        repo_web: spec.and_then(|s| message::github_web(&s.repo.url)),
    }
}

/// Send a test notification to every sink now (`notifications test`): the daemon's own and
/// `registration`'s, or every registration's when `None`. Each sink's answer comes back.
pub async fn send_test(
    state: &Arc<AppState>,
    registration: Option<(&str, &str)>,
) -> Result<megaplan_cloud_api::notification::TestResults, crate::store::StoreError> {
    let mut given = Vec::new();
    match registration {
        Some((key, _)) => given.push((
            key.to_string(),
            store::registration_sinks(state.store(), key).await?,
        )),
        None => {
            for r in state.store().list_registrations().await? {
                let sinks = store::registration_sinks(state.store(), &r.key).await?;
                given.push((r.key, sinks));
            }
        }
    }
    let sinks = sink_test::sinks_to_test(&state.notifier().config, &given);
    let now = Utc::now();
    let idempotency_key = format!("test-{}", now.timestamp_nanos_opt().unwrap_or_default());
    let (key, cloud_yaml) = registration.unwrap_or_default();
    let n = message::test(
        key,
        cloud_yaml,
        &idempotency_key,
        &now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    );
    Ok(sink_test::send_all(&sinks, &n, state.notifier().config.retry.timeout).await)
}

/// Sinks given to `register --notify-url/--notify-command`, checked.
pub fn registration_sinks(
    cfg: &NotifyConfig,
    urls: &[String],
    command: Option<&str>,
    preset: Option<&str>,
) -> Result<Vec<Sink>, (String, &'static str)> {
    let preset = preset
        .map(config::Preset::parse)
        .transpose()
        .map_err(|e| (e, "notify_preset"))?
        .unwrap_or_default();
    if urls.len() > config::MAX_SINKS {
        return Err((
            format!(
                "{} notify urls, over the limit of {} per registration",
                urls.len(),
                config::MAX_SINKS
            ),
            "notify_urls",
        ));
    }
    let mut out = Vec::new();
    for u in urls {
        let s = Sink::Webhook {
            url: u.clone(),
            preset,
            secret_env: Some(cfg.registration_secret_env.clone()),
        };
        s.validate().map_err(|e| (e, "notify_url"))?;
        out.push(s);
    }
    if let Some(c) = command {
        let s = Sink::Command {
            command: c.to_string(),
        };
        s.validate().map_err(|e| (e, "notify_command"))?;
        out.push(s);
    }
    Ok(out)
}

/// The delivery worker: keeps up to `max_in_flight_per_sink` deliveries running per sink (and
/// [`notifier::MAX_IN_FLIGHT`] in all), starting due rows round-robin across sinks
/// ([`sinks::Picker`]) and refilling a slot as soon as its delivery ends: a receiver that
/// accepts and never answers ties up only its own sink's slots. Each sink has a breaker
/// ([`sinks::Breaker`]); the rows of an open one are deferred, not failed. Between events it
/// sleeps until the next row comes due, a tick queues more, a delivery ends or the daemon shuts
/// down. Deliveries still running at shutdown are dropped; their rows stay pending and are
/// delivered by the next start.
pub fn spawn_worker(state: Arc<AppState>) {
    spawn_watcher(state.clone());
    if let Some(period) = state.notifier().config.digest {
        spawn_digest(state.clone(), period);
    }
    let shutdown = state.shutdown().clone();
    let tasks = state.tasks().clone();
    tasks.spawn(async move {
        let limits = state.notifier().limits();
        let mut running: tokio::task::JoinSet<bool> = tokio::task::JoinSet::new();
        // Per delivery task: its outbox row and sink key.
        let mut flying: HashMap<tokio::task::Id, (i64, String)> = HashMap::new();
        let mut picker = sinks::Picker::default();
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            let now = Utc::now();
            let ok = fill(&state, &limits, &mut picker, &mut running, &mut flying, now).await;
            let sleep = if !ok {
                Duration::from_secs(5)
            } else {
                match store::next_due(state.store(), now).await {
                    Ok(Some(at)) => (at - Utc::now()).to_std().unwrap_or(Duration::ZERO),
                    Ok(None) => Duration::from_secs(3600),
                    Err(_) => Duration::from_secs(5),
                }
            };
            tokio::select! {
                Some(done) = running.join_next_with_id(), if !running.is_empty() => {
                    finished(&state, &limits, &mut flying, done);
                    while let Some(done) = running.try_join_next_with_id() {
                        finished(&state, &limits, &mut flying, done);
                    }
                }
                _ = tokio::time::sleep(sleep) => {}
                _ = state.notifier().wake.notified() => {}
                _ = shutdown.cancelled() => break,
            }
        }
        // The deliveries still running end here; their rows stay pending.
        running.abort_all();
        let mut map = state
            .notifier()
            .breakers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for b in map.values_mut() {
            b.in_flight = 0;
        }
    });
}

/// The digest task: one digest per `period`, due a period after the last one (kept in SQLite,
/// so a restart neither repeats nor skips one); a digest with nothing to tell is not sent.
fn spawn_digest(state: Arc<AppState>, period: Duration) {
    let tasks = state.tasks().clone();
    tasks.spawn(async move {
        let period_c = chrono::Duration::from_std(period).unwrap_or(chrono::Duration::hours(1));
        loop {
            let last = match store::last_digest(state.store()).await {
                Ok(Some(t)) => t,
                Ok(None) => {
                    // The first start with a digest: marks now, the first digest a period on.
                    if let Err(e) = digest_pass(&state, Utc::now()).await {
                        tracing::error!("notification digest: {e}");
                    }
                    Utc::now()
                }
                Err(e) => {
                    tracing::error!("notification digest: {e}");
                    Utc::now()
                }
            };
            let due = last + period_c;
            let wait = (due - Utc::now()).to_std().unwrap_or(Duration::ZERO);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = state.shutdown().cancelled() => break,
            }
            match digest_pass(&state, Utc::now()).await {
                Ok(n) if n > 0 => state.notifier().wake.notify_one(),
                Ok(_) => {}
                Err(e) => {
                    tracing::error!("notification digest: {e}");
                    // Not again at once: a failing database is retried a period later.
                    tokio::select! {
                        _ = tokio::time::sleep(period.min(Duration::from_secs(60))) => {}
                        _ = state.shutdown().cancelled() => break,
                    }
                }
            }
        }
    });
}

/// Make one digest at `at`: plan it from the registrations' last ticks and the last digest's
/// marks, queue one row per sink that has chains to tell of, and save the marks and the time.
pub async fn digest_pass(
    state: &Arc<AppState>,
    at: chrono::DateTime<Utc>,
) -> Result<usize, crate::store::StoreError> {
    let regs = state.store().list_registrations().await?;
    let last = store::last_tick_per_key(state.store()).await?;
    let marks = store::digest_marks(state.store()).await?;
    let mut sinks_of = HashMap::new();
    for r in &regs {
        let mut all = state.notifier().config.sinks.clone();
        all.extend(store::registration_sinks(state.store(), &r.key).await?);
        sinks_of.insert(r.key.clone(), all);
    }
    let plan = digest::plan(&regs, &last, &marks, &sinks_of);
    let created_at = at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let mut rows = Vec::new();
    for (sink, chains) in plan.per_sink {
        let keys: Vec<String> = chains.iter().map(|c| c.key.clone()).collect();
        // One digest of one period about one set of chains.
        let idempotency_key = transitions::idempotency_key(
            transitions::Occurrence {
                registration: &keys.join(","),
                tick_id: at.timestamp_millis(),
            },
            "",
            megaplan_cloud_api::notification::NotificationEvent::Digest,
            "",
        );
        let n = message::digest(chains, &idempotency_key, &created_at);
        tracing::info!(chains = keys.len(), sink = %sink.label(), "notification digest");
        rows.push(store::NewOutbox {
            key: keys.first().cloned().unwrap_or_default(),
            event: n.event.to_string(),
            idempotency_key,
            body: serde_json::to_string(&n).unwrap_or_default(),
            sink,
        });
    }
    store::commit_digest(state.store(), &rows, &plan.marks, at).await
}

/// Rows read per pass at most (every sink's oldest first).
const FETCH_LIMIT: u32 = 1024;

/// Start what may start now; defer the rows of open sinks. False when the outbox could not be
/// read or written (the worker then waits a little before trying again).
async fn fill(
    state: &Arc<AppState>,
    limits: &sinks::Limits,
    picker: &mut sinks::Picker,
    running: &mut tokio::task::JoinSet<bool>,
    flying: &mut HashMap<tokio::task::Id, (i64, String)>,
    now: chrono::DateTime<Utc>,
) -> bool {
    let ids: Vec<i64> = flying.values().map(|(id, _)| *id).collect();
    let per_sink = u32::try_from(limits.per_sink).unwrap_or(1);
    let due = match store::due(state.store(), now, &ids, per_sink, FETCH_LIMIT).await {
        Ok(d) => d,
        Err(e) => {
            tracing::error!("notification outbox: {e}");
            return false;
        }
    };
    if due.is_empty() {
        return true;
    }
    let keys: Vec<String> = due.iter().map(|d| sinks::sink_key(&d.sink)).collect();
    let plan = {
        let map = state
            .notifier()
            .breakers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        picker.plan(&keys, &map, flying.len(), limits, now)
    };
    let mut ok = true;
    for (key, until) in &plan.defer {
        let mut texts: Vec<&str> = due
            .iter()
            .zip(&keys)
            .filter(|(_, k)| *k == key)
            .map(|(d, _)| d.sink_text.as_str())
            .collect();
        texts.sort_unstable();
        texts.dedup();
        if let Err(e) = store::defer(state.store(), &texts, *until, &ids).await {
            tracing::error!(sink = %key, "notification outbox: {e}");
            ok = false;
        }
    }
    let mut map = state
        .notifier()
        .breakers
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    for i in plan.start {
        let (Some(item), Some(key)) = (due.get(i), keys.get(i)) else {
            continue;
        };
        map.entry(key.clone())
            .or_insert_with(|| sinks::Breaker::new(now))
            .started(now);
        let handle = running.spawn(attempt(state.clone(), item.clone()));
        flying.insert(handle.id(), (item.id, key.clone()));
    }
    ok
}

/// A delivery ended (or its task did: a panic counts as a failed delivery): free its slot and
/// tell its sink's breaker.
fn finished(
    state: &Arc<AppState>,
    limits: &sinks::Limits,
    flying: &mut HashMap<tokio::task::Id, (i64, String)>,
    done: Result<(tokio::task::Id, bool), tokio::task::JoinError>,
) {
    let (task, delivered) = match done {
        Ok((task, delivered)) => (task, delivered),
        Err(e) => (e.id(), false),
    };
    let Some((_, key)) = flying.remove(&task) else {
        return;
    };
    let now = Utc::now();
    let mut map = state
        .notifier()
        .breakers
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let breaker = map
        .entry(key.clone())
        .or_insert_with(|| sinks::Breaker::new(now));
    let was_open = breaker.state != sinks::State::Closed;
    if breaker.finished(delivered, now, limits) {
        tracing::warn!(
            sink = %key,
            failures = breaker.consecutive_failures,
            "notification sink failing: breaker open, its deliveries wait {}s for one probe",
            limits.cooldown.num_seconds()
        );
    } else if was_open && delivered {
        tracing::info!(sink = %key, "notification sink delivering again: breaker closed");
    }
    // Forget sinks with nothing to remember for an hour: the map stays bounded.
    let keep = chrono::Duration::hours(1).max(limits.cooldown);
    map.retain(|_, b| b.worth_keeping(now, keep));
}

async fn attempt(state: Arc<AppState>, item: store::Due) -> bool {
    let cfg = &state.notifier().config;
    let attempts = item.attempts + 1;
    let result = deliver::deliver(&item.sink, &item.body, item.id, cfg.retry.timeout).await;
    let (error, retry_at) = match &result {
        Ok(()) => {
            tracing::info!(key = %item.key, event = %item.event, sink = %item.sink.label(), attempts, "notification delivered");
            (None, None)
        }
        Err(e) if attempts < cfg.retry.max_attempts => {
            let delay = cfg.retry.delay_after(attempts);
            tracing::warn!(key = %item.key, event = %item.event, sink = %item.sink.label(), attempts, "notification not delivered, retrying in {}ms: {e}", delay.as_millis());
            (
                Some(e.clone()),
                Some(Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default()),
            )
        }
        Err(e) => {
            tracing::error!(key = %item.key, event = %item.event, sink = %item.sink.label(), attempts, "notification given up after {attempts} attempts: {e}");
            (
                Some(format!("gave up after {attempts} attempts: {e}")),
                None,
            )
        }
    };
    if let Err(e) = store::record_attempt(
        state.store(),
        item.id,
        attempts,
        error.as_deref(),
        retry_at,
        cfg.keep_outbox,
    )
    .await
    {
        tracing::error!(key = %item.key, "cannot record a notification attempt: {e}");
    }
    result.is_ok()
}

/// The registrations list with what watching knows: `paused` (or null), `stalled`, and the
/// watcher's last status and failure count.
pub fn annotate_registrations(
    regs: Vec<megaplan_cloud_api::wire::Registration>,
    watch: &std::collections::HashMap<String, transitions::WatchState>,
    pauses: &std::collections::HashMap<String, store::Pause>,
) -> Vec<megaplan_cloud_api::wire::RegistrationListed> {
    regs.into_iter()
        .map(|r| {
            let w = watch.get(&r.key).cloned().unwrap_or_default();
            megaplan_cloud_api::wire::RegistrationListed {
                paused: pauses.get(&r.key).cloned(),
                stalled: w.stalled,
                watched_status: w.status,
                consecutive_failures: w.consecutive_failures,
                registration: r,
            }
        })
        .collect()
}

/// `--since`: an age (`90s`, `30m`, `2h`, `1d`: that long ago), a date (`2026-06-01`, UTC
/// midnight) or an RFC 3339 time; returned as RFC 3339 UTC.
pub fn since_time(text: &str) -> Result<String, String> {
    let t = text.trim();
    if let Ok(d) = chrono::DateTime::parse_from_rfc3339(t) {
        return Ok(d.with_timezone(&Utc).to_rfc3339());
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        return Ok(d
            .and_hms_opt(0, 0, 0)
            .unwrap_or_default()
            .and_utc()
            .to_rfc3339());
    }
    // Checked all the way: an age reaching before the year -262143 is a refusal, not a panic.
    let too_far = || format!("since {t:?} is too far back; give a shorter age or a date");
    let age = match megaplan_cloud_api::duration::parse_positive(t, true) {
        Ok(age) => age,
        Err(megaplan_cloud_api::duration::DurationError::TooLarge(_)) => return Err(too_far()),
        Err(_) => {
            return Err(format!(
                "since {t:?}: use an age (30m, 2h, 1d), a date (2026-06-01) or an RFC 3339 time"
            ));
        }
    };
    let age = chrono::Duration::from_std(age).map_err(|_| too_far())?;
    let then = Utc::now().checked_sub_signed(age).ok_or_else(too_far)?;
    Ok(then.to_rfc3339())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::explain::tests::blocked_record;
    use serde_json::json;

    #[test]
    fn every_notification_is_redacted_even_from_an_unredacted_report() {
        let secret = "tok-4f9c2a7e1b5d";
        let rec = blocked_record(
            9,
            &format!("awaiting PR merge (PR #7 state={secret})"),
            serde_json::from_value(
                json!({"success": true, "effective_status": "awaiting_pr_merge",
                           "refused_reason": format!("awaiting PR merge (PR #7 state={secret})"),
                           "pr": {"merge_probe": secret, "pr_number": 7}, "acted": false,
                           "event": "supervisor_blocked", "next_action": "blocked"}),
            )
            .unwrap(),
        );
        let (_, events) = transitions::transitions(
            &transitions::WatchState::default(),
            &rec.report,
            Utc::now(),
            Notifier::new(NotifyConfig::default()).rules(),
            transitions::Occurrence {
                registration: "k",
                tick_id: 9,
            },
        );
        assert_eq!(events.len(), 1);
        let names = vec!["GH_TOKEN".to_string()];
        let values = [("GH_TOKEN".to_string(), secret.to_string())].into();
        let sinks = [
            Sink::Command {
                command: "cat".into(),
            },
            Sink::Webhook {
                url: "http://127.0.0.1:1/h".into(),
                preset: config::Preset::Json,
                secret_env: None,
            },
        ];
        let context = TickContext {
            redactor: Redactor::new(&names, &values),
            repo_web: Some("https://github.com/o/r".into()),
        };
        let rows = outbox_rows(&rec, &events, &sinks, &context);
        assert_eq!(rows.len(), 2);
        for r in rows {
            assert!(!r.body.contains(secret), "{}", r.body);
            assert!(
                r.body.starts_with(
                    r#"{"schema":"megaplan-cloudd/notification/v1","event":"awaiting_pr_merge""#
                ),
                "typed field order: {}",
                r.body
            );
            let n: megaplan_cloud_api::notification::Notification =
                serde_json::from_str(&r.body).unwrap();
            assert_eq!(n.id, "k:9:awaiting_pr_merge");
            assert_eq!(n.idempotency_key, events[0].idempotency_key);
            assert_eq!(r.idempotency_key, n.idempotency_key);
            assert!(n.needs_person);
            let pr = n.pr.unwrap();
            assert_eq!(pr.number, 7);
            assert_eq!(pr.url.as_deref(), Some("https://github.com/o/r/pull/7"));
            assert!(n.fix.unwrap().starts_with("merge PR #7"));
            assert!(n.message.ends_with("/p/cloud.yaml"), "{}", n.message);
        }
    }

    fn failed_tick(key: &str, n: i64) -> crate::store::NewTick {
        let at = Utc::now() + chrono::Duration::seconds(n);
        crate::store::NewTick {
            key: key.into(),
            cloud_yaml: format!("/w/{key}/cloud.yaml"),
            trigger: "schedule".into(),
            started_at: at,
            finished_at: at,
            success: false,
            event: megaplan_cloud_api::report::TickEvent::Error,
            next_action: megaplan_cloud_api::report::NextAction::None,
            acted: false,
            refused_reason: Some("cloud.yaml is gone".into()),
            report: megaplan_cloud_api::report::TickReport::error("cloud.yaml is gone"),
            due_at: None,
        }
    }

    /// The watcher reads stored ticks behind a cursor committed with what they caused: a
    /// restart (a new Store on the same file) neither repeats a notification nor misses the
    /// ticks stored while nobody was watching; unregistered keys are passed over.
    #[tokio::test]
    async fn the_watcher_sends_each_transition_once_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state/cloudd.db");
        let cfg = NotifyConfig {
            sinks: vec![Sink::Command {
                command: "cat".into(),
            }],
            ..NotifyConfig::default()
        };
        let notifier = Notifier::new(cfg);
        let redactor = |_: &TickRecord| TickContext {
            redactor: Redactor::new(&[], &Default::default()),
            repo_web: None,
        };
        let store = crate::store::Store::open(&db, 100).await.unwrap();
        for key in ["a", "b"] {
            store
                .upsert_registration(&crate::store::NewRegistration {
                    key: key.into(),
                    cloud_yaml: format!("/w/{key}/cloud.yaml"),
                    schedule: "every:60".into(),
                    remote_spec: None,
                })
                .await
                .unwrap();
        }
        for n in 0..2 {
            store.insert_tick(&failed_tick("a", n)).await.unwrap();
            store.insert_tick(&failed_tick("gone", n)).await.unwrap();
        }
        let p = watch_pass(&store, &notifier, &redactor, 256).await.unwrap();
        assert_eq!(
            p,
            WatchPass {
                ticks: 4,
                queued: 0
            }
        );
        assert_eq!(
            store::watch_state(&store, "a")
                .await
                .unwrap()
                .consecutive_failures,
            2
        );
        // The third failure in a row of `a` is a transition; `b`'s first is not yet.
        store.insert_tick(&failed_tick("a", 2)).await.unwrap();
        store.insert_tick(&failed_tick("b", 2)).await.unwrap();
        store.close().await;

        // "Restart": nobody watched the last two ticks before the stop.
        let store = crate::store::Store::open(&db, 100).await.unwrap();
        let p = watch_pass(&store, &notifier, &redactor, 1).await.unwrap();
        assert_eq!(
            p,
            WatchPass {
                ticks: 1,
                queued: 1
            },
            "a batch is bounded by its limit"
        );
        let p = watch_pass(&store, &notifier, &redactor, 256).await.unwrap();
        assert_eq!(
            p,
            WatchPass {
                ticks: 1,
                queued: 0
            }
        );
        assert_eq!(
            watch_pass(&store, &notifier, &redactor, 256).await.unwrap(),
            WatchPass::default()
        );
        store.close().await;
        let store = crate::store::Store::open(&db, 100).await.unwrap();
        assert_eq!(
            watch_pass(&store, &notifier, &redactor, 256).await.unwrap(),
            WatchPass::default()
        );
        let outbox = store::list_outbox(&store, None, 100, &HashMap::new())
            .await
            .unwrap();
        let events: Vec<_> = outbox
            .iter()
            .map(|o| (o.key.as_str(), o.event.as_str()))
            .collect();
        assert_eq!(events, [("a", "ticks_failing")]);
        assert!(store::watch_state(&store, "gone").await.unwrap() == WatchState::default());
        store.close().await;
    }

    /// The outbox query behind the worker: 200 due rows of one sink queued before 1 of
    /// another still give the other its row (every sink's oldest first, at most `per_sink`
    /// each), rows in flight are left out, and an open sink's rows are deferred, not failed.
    #[tokio::test]
    async fn due_rows_are_read_fairly_per_sink_and_an_open_sink_is_deferred() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(&dir.path().join("cloudd.db"), 100)
            .await
            .unwrap();
        let hook = |port: u16| Sink::Webhook {
            url: format!("http://127.0.0.1:{port}/h"),
            preset: config::Preset::Json,
            secret_env: None,
        };
        let row = |sink: Sink| store::NewOutbox {
            key: "k".into(),
            event: "complete".into(),
            idempotency_key: String::new(),
            sink,
            body: "{}".into(),
        };
        let mut rows: Vec<_> = (0..200).map(|_| row(hook(1))).collect();
        rows.push(row(hook(2)));
        store::commit_watch(&store, &[], &rows, 1).await.unwrap();
        let now = Utc::now() + chrono::Duration::seconds(1);
        let due = store::due(&store, now, &[], 4, 1024).await.unwrap();
        let ports: Vec<String> = due.iter().map(|d| sinks::sink_key(&d.sink)).collect();
        assert_eq!(due.len(), 5);
        assert_eq!(ports[0], "http://127.0.0.1:1");
        assert_eq!(
            ports[1], "http://127.0.0.1:2",
            "every sink's oldest row first"
        );
        // The first sink's 4 rows in flight: its next 4 are read, and the other's row.
        let running: Vec<i64> = due
            .iter()
            .zip(&ports)
            .filter(|(_, p)| p.ends_with(":1"))
            .map(|(d, _)| d.id)
            .collect();
        assert_eq!(running.len(), 4);
        let due = store::due(&store, now, &running, 4, 1024).await.unwrap();
        assert_eq!(due.len(), 5);
        assert!(due.iter().all(|d| !running.contains(&d.id)));

        let until = now + chrono::Duration::hours(1);
        let text = due[0].sink_text.clone();
        let n = store::defer(&store, &[text.as_str()], until, &running)
            .await
            .unwrap();
        assert_eq!(n, 196, "all but the 4 in flight");
        let due = store::due(&store, now, &running, 4, 1024).await.unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(sinks::sink_key(&due[0].sink), "http://127.0.0.1:2");
        let listed = store::list_outbox(&store, None, 1000, &HashMap::new())
            .await
            .unwrap();
        assert!(
            listed
                .iter()
                .all(|o| o.status == "pending" && o.attempts == 0)
        );
        let next = store::next_due(&store, now).await.unwrap().unwrap();
        assert_eq!(next.timestamp_millis(), until.timestamp_millis());
        store.close().await;
    }

    #[test]
    fn since_accepts_ages_dates_and_times() {
        assert_eq!(
            since_time("2026-06-01").unwrap(),
            "2026-06-01T00:00:00+00:00"
        );
        assert_eq!(
            since_time("2026-06-01T10:00:00+02:00").unwrap(),
            "2026-06-01T08:00:00+00:00"
        );
        let hour_ago = chrono::DateTime::parse_from_rfc3339(&since_time("1h").unwrap()).unwrap();
        let secs = (Utc::now() - hour_ago.with_timezone(&Utc)).num_seconds();
        assert!((3600..3700).contains(&secs), "{secs}");
        assert!(since_time("yesterday").unwrap_err().contains("since"));
        // Ages beyond what a date can hold are refused naming the field, never a panic.
        for huge in [
            "9999999999d",
            "18446744073709551615d",
            "18446744073709551615s",
        ] {
            let e = since_time(huge).unwrap_err();
            assert!(e.contains("since") && e.contains("too far back"), "{e}");
        }
    }

    /// Redaction through the typed fields masks what the JSON walk it replaced masked, byte
    /// for byte: every text of the body, a digest's and the details' included.
    #[test]
    fn typed_redaction_masks_every_text_as_the_json_walk_did() {
        let secret = "s3cr3t-value-123";
        let names = vec!["GH_TOKEN".to_string()];
        let values = [("GH_TOKEN".to_string(), secret.to_string())].into();
        let r = Redactor::new(&names, &values);
        let with = |s: &str| format!("{s} {secret}");
        let mut n = message::test(&with("k"), &with("/c/cloud.yaml"), &with("i"), &with("t"));
        n.title = with("title");
        n.fix = Some(with("fix"));
        n.effective_status = Some(with("status"));
        n.spec = with("spec");
        n.milestone = Some(megaplan_cloud_api::report::ChainPosition {
            number: 1,
            count: 2,
            label: Some(with("m1")),
        });
        n.pr = Some(megaplan_cloud_api::notification::PrLink {
            number: 7,
            url: Some(with("https://x/pull/7")),
        });
        n.details = serde_json::json!({"reason": with("r"), "checks": [{"fix": with("f")}]});
        n.digest = Some(vec![megaplan_cloud_api::notification::DigestChain {
            key: with("k"),
            chain: with("c"),
            milestone: None,
            milestones_done: 1,
            state: with("running"),
            cloud_yaml: with("/c"),
        }]);
        let walked = r.redact_json(&serde_json::to_value(&n).unwrap());
        let walked: megaplan_cloud_api::notification::Notification =
            serde_json::from_value(walked).unwrap();
        let text = redacted_text(&n, &r);
        assert!(!text.contains(secret), "{text}");
        assert_eq!(text, serde_json::to_string(&walked).unwrap());
    }
}
