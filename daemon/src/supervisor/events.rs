//! Event-driven ticks. Each registration's resident observer also runs a watch of its chain on
//! the runner (`provider/resident.rs`, `runner/resident.py`): it looks every half second on the
//! runner itself and speaks only when something changed (the driver process gone or started,
//! the chain state file written). This task turns those events into a tick of that
//! registration at once, so a person hears of a dead runner in seconds, not at the next
//! scheduled tick; the schedule stays as the backstop.
//!
//! Several events of one registration within [`COALESCE`] make one tick; an event tick never
//! runs beside another tick of the same registration (it waits for it: `Trigger::Event`); two
//! event ticks of one registration are at least [`MIN_GAP`] apart. A watch that ended with its
//! observer (the session broke, the runner went away) is an event too, so the runner is looked
//! at; repeated losses back off ([`lost_delay`]) so a runner whose observer cannot live does not
//! become a tick loop.

use super::tick::{TickOutcome, Trigger, run_registered};
use crate::provider::resident::RunnerEvent;
use crate::state::AppState;
use megaplan_cloud_api::ErrorCode;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::mpsc::Receiver;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Runner events queued at most (a full queue drops events: one tick answers any number).
pub const QUEUE: usize = 1024;

/// Events of one registration within this window make one tick.
pub const COALESCE: Duration = Duration::from_millis(200);

/// The least time between two event ticks of one registration.
pub const MIN_GAP: Duration = Duration::from_secs(2);

/// Delay of the tick after the `streak`-th watch loss in a row: 5 s doubling, at most 5 min.
pub fn lost_delay(streak: u32) -> Duration {
    let secs = 5u64.saturating_mul(1u64 << streak.saturating_sub(1).min(6));
    Duration::from_secs(secs.min(300))
}

/// Turn runner events into ticks until the daemon shuts down.
pub async fn run(
    state: Weak<AppState>,
    mut events: Receiver<RunnerEvent>,
    shutdown: CancellationToken,
) {
    let coming: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut next_allowed: HashMap<String, Instant> = HashMap::new();
    let mut lost_streak: HashMap<String, u32> = HashMap::new();
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            e = events.recv() => match e {
                Some(e) => e,
                None => return,
            },
        };
        let Some(st) = state.upgrade() else {
            return;
        };
        let streak = lost_streak.entry(event.key.clone()).or_default();
        *streak = if event.lost { *streak + 1 } else { 0 };
        let lost = *streak;
        let fresh = coming
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(event.key.clone());
        if !fresh {
            // A tick of this registration is already coming; it looks at everything.
            continue;
        }
        let now = Instant::now();
        let mut at = now + COALESCE;
        if lost > 0 {
            at = at.max(now + lost_delay(lost));
        }
        if let Some(allowed) = next_allowed.get(&event.key) {
            at = at.max(*allowed);
        }
        next_allowed.insert(event.key.clone(), at + MIN_GAP);
        if next_allowed.len() > 4 * QUEUE {
            next_allowed.retain(|_, t| *t > now);
            lost_streak.retain(|k, _| next_allowed.contains_key(k));
        }
        let coming = coming.clone();
        let stop = st.shutdown().clone();
        let tasks = st.tasks().clone();
        tasks.spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep_until(at) => {}
            }
            coming
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&event.key);
            tracing::info!(key = %event.key, what = %event.what, "runner event: ticking now");
            if let TickOutcome::Failed(e) =
                run_registered(st.clone(), event.key.clone(), Trigger::Event).await
                && e.error == ErrorCode::NotRegistered
            {
                st.residents().unwatch(&event.key).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_watches_back_off_from_five_seconds_to_five_minutes() {
        let secs: Vec<u64> = (1..=9).map(|n| lost_delay(n).as_secs()).collect();
        assert_eq!(secs, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(lost_delay(u32::MAX).as_secs(), 300);
    }
}
