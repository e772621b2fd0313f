//! Scheduled ticks on tokio-cron-scheduler, plus the guards it lacks.
//!
//! The scheduler fires jobs with no overlap check (tokio-cron-scheduler #50, #83), so the tick
//! runner holds a per-registration `try_lock`: a tick that comes due while the previous one
//! still runs is skipped and counted. Concurrency across registrations is bounded by a
//! semaphore in the tick runner. Schedules are 6-field cron (seconds first); `--every` is
//! turned into cron with a per-registration offset (jitter) so a thousand registrations with
//! the same interval do not all fire in the same second.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::Mutex;
use tokio_cron_scheduler::{Job, JobScheduler};
use uuid::Uuid;

pub type TickFn = Arc<dyn Fn(String) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

pub struct Scheduler {
    inner: JobScheduler,
    jobs: Mutex<HashMap<String, Uuid>>,
    on_tick: TickFn,
}

impl Scheduler {
    pub async fn new(on_tick: TickFn) -> Result<Scheduler, String> {
        let inner = JobScheduler::new()
            .await
            .map_err(|e| format!("cannot create the scheduler: {e}"))?;
        inner
            .start()
            .await
            .map_err(|e| format!("cannot start the scheduler: {e}"))?;
        Ok(Scheduler {
            inner,
            jobs: Mutex::new(HashMap::new()),
            on_tick,
        })
    }

    /// Add or replace the job of `key`.
    pub async fn schedule(&self, key: &str, cron: &str) -> Result<(), String> {
        let on_tick = self.on_tick.clone();
        let job_key = key.to_string();
        let job = Job::new_async(cron, move |_uuid, _sched| {
            let on_tick = on_tick.clone();
            let key = job_key.clone();
            Box::pin(async move { on_tick(key).await })
        })
        .map_err(|e| format!("invalid schedule {cron:?}: {e}"))?;
        let mut jobs = self.jobs.lock().await;
        if let Some(old) = jobs.remove(key) {
            let _ = self.inner.remove(&old).await;
        }
        let id = self
            .inner
            .add(job)
            .await
            .map_err(|e| format!("cannot add schedule {cron:?}: {e}"))?;
        jobs.insert(key.to_string(), id);
        Ok(())
    }

    pub async fn unschedule(&self, key: &str) {
        if let Some(id) = self.jobs.lock().await.remove(key) {
            let _ = self.inner.remove(&id).await;
        }
    }

    pub async fn shutdown(&self) {
        let ids: Vec<Uuid> = self.jobs.lock().await.drain().map(|(_, id)| id).collect();
        for id in ids {
            let _ = self.inner.remove(&id).await;
        }
        let mut inner = self.inner.clone();
        let _ = inner.shutdown().await;
    }
}

/// Check a cron expression without scheduling it.
pub fn validate_cron(expr: &str) -> Result<(), String> {
    Job::new_async(expr, |_, _| Box::pin(async {}))
        .map(|_| ())
        .map_err(|e| {
            format!("invalid cron expression {expr:?}: {e}; use 6 fields with seconds first, e.g. \"0 */5 * * * *\"")
        })
}

/// Turn `--every <secs>` into a 6-field cron expression offset by `seed` (jitter).
/// Intervals must divide a minute, an hour or a day evenly so every period is the same length.
pub fn every_to_cron(secs: u64, seed: u64) -> Result<String, String> {
    let refuse = || {
        format!(
            "--every {secs}s does not divide a minute, hour or day evenly; use e.g. 10s, 30s, 1m, 5m, 15m, 1h, 6h, 1d, or --cron"
        )
    };
    if secs == 0 {
        return Err(refuse());
    }
    if secs < 60 {
        if !60u64.is_multiple_of(secs) {
            return Err(refuse());
        }
        return Ok(format!("{}/{secs} * * * * *", seed % secs));
    }
    let sec_off = seed % 60;
    if secs < 3600 {
        let m = secs / 60;
        if !secs.is_multiple_of(60) || !60u64.is_multiple_of(m) {
            return Err(refuse());
        }
        return Ok(format!("{sec_off} {}/{m} * * * *", (seed / 60) % m));
    }
    let min_off = (seed / 60) % 60;
    if secs < 86400 {
        let h = secs / 3600;
        if !secs.is_multiple_of(3600) || !24u64.is_multiple_of(h) {
            return Err(refuse());
        }
        return Ok(format!(
            "{sec_off} {min_off} {}/{h} * * *",
            (seed / 3600) % h
        ));
    }
    if secs == 86400 {
        return Ok(format!("{sec_off} {min_off} {} * * *", (seed / 3600) % 24));
    }
    Err(refuse())
}

/// A stable jitter seed from a registration key (hex).
pub fn jitter_seed(key: &str) -> u64 {
    u64::from_str_radix(&key[..key.len().min(12)], 16).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_maps_to_offset_cron() {
        assert_eq!(every_to_cron(10, 23).unwrap(), "3/10 * * * * *");
        assert_eq!(every_to_cron(300, 0).unwrap(), "0 0/5 * * * *");
        assert_eq!(every_to_cron(300, 61).unwrap(), "1 1/5 * * * *");
        assert_eq!(every_to_cron(3600, 0).unwrap(), "0 0 0/1 * * *");
        assert_eq!(every_to_cron(86400, 0).unwrap(), "0 0 0 * * *");
        assert!(every_to_cron(7, 0).is_err());
        assert!(every_to_cron(7 * 60, 0).is_err());
        assert!(every_to_cron(0, 0).is_err());
        for secs in [1, 2, 5, 10, 30, 60, 120, 300, 900, 3600, 7200, 21600, 86400] {
            for seed in [0, 1, 59, 3599, 99991, u64::MAX / 3] {
                let c = every_to_cron(secs, seed).unwrap();
                validate_cron(&c).unwrap_or_else(|e| panic!("{secs} {seed}: {e}"));
            }
        }
    }

    #[test]
    fn bad_cron_is_refused() {
        assert!(validate_cron("not cron").is_err());
        assert!(validate_cron("0 */5 * * * *").is_ok());
    }

    #[tokio::test]
    async fn jobs_fire_and_can_be_removed() {
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let h = hits.clone();
        let s = Scheduler::new(Arc::new(move |_k| {
            let h = h.clone();
            Box::pin(async move {
                h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            })
        }))
        .await
        .unwrap();
        s.schedule("k1", "* * * * * *").await.unwrap();
        // Wait for the first fire (the bound is a safety net, not a measurement).
        let mut waited = 0;
        while hits.load(std::sync::atomic::Ordering::SeqCst) == 0 && waited < 900 {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            waited += 1;
        }
        assert!(
            hits.load(std::sync::atomic::Ordering::SeqCst) >= 1,
            "job never fired"
        );
        s.unschedule("k1").await;
        // A fire already dispatched when the job was removed may still land: let it, then
        // count; nothing may fire after that.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let seen = hits.load(std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
        assert_eq!(
            hits.load(std::sync::atomic::Ordering::SeqCst),
            seen,
            "fired after removal"
        );
        s.shutdown().await;
    }
}
