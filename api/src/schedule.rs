//! The schedule of a registration: `--every <interval>` or `--cron "<6-field expression>"`.
//!
//! Stored (SQLite `registrations.schedule`) and listed (`Registration::schedule`) as text,
//! `every:<secs>` or `cron:<expr>`; [`Schedule`]'s `FromStr` and `Display` read and write
//! exactly that text, so rows written by earlier versions load unchanged.
//!
//! An `every` schedule becomes a cron expression offset by a per-registration amount derived
//! from its key ([`jitter_seed`]), so a thousand registrations with the same interval do not all
//! fire in the same second. [`Schedule::to_cron`] is the one place that offset is computed:
//! registration and daemon start-up both call it.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    /// A fixed interval that divides a minute, an hour or a day evenly.
    Every(Duration),
    /// A 6-field cron expression, seconds first (`0 */5 * * * *`), in UTC, or in a named zone
    /// with cronie's prefix (`CRON_TZ=Europe/Berlin 0 0 9 * * *`, `register --tz`).
    Cron(String),
}

/// Why a schedule was refused; `field` is the request field to fix (`every`, `cron`, or
/// `schedule` for stored text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleError {
    pub field: &'static str,
    pub message: String,
}

impl fmt::Display for ScheduleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ScheduleError {}

/// Interval used when a registration gives neither `--every` nor `--cron`.
pub const DEFAULT_EVERY_SECS: u64 = 300;

impl Schedule {
    /// `--every <secs>`: any interval of a minute or more; below a minute, one that divides a
    /// minute (see [`every_to_cron`]).
    pub fn every_secs(secs: u64) -> Result<Schedule, ScheduleError> {
        every_expression(secs, 0)?;
        Ok(Schedule::Every(Duration::from_secs(secs)))
    }

    /// The expression the scheduler runs for the registration `key`: a cron expression when
    /// cron can say it, else `@every <secs> <offset>` (see [`every_expression`]).
    pub fn to_cron(&self, key: &str) -> Result<String, ScheduleError> {
        match self {
            Schedule::Every(d) => every_expression(d.as_secs(), jitter_seed(key)),
            Schedule::Cron(expr) => Ok(expr.clone()),
        }
    }

    /// The fixed interval of an `every` schedule.
    pub fn interval(&self) -> Option<Duration> {
        match self {
            Schedule::Every(d) => Some(*d),
            Schedule::Cron(_) => None,
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Every(d) => write!(f, "every:{}", d.as_secs()),
            Schedule::Cron(expr) => write!(f, "cron:{expr}"),
        }
    }
}

impl FromStr for Schedule {
    type Err = ScheduleError;

    /// Stored text: `every:<secs>` or `cron:<expr>`. Anything else is an error, never a
    /// silent default.
    fn from_str(text: &str) -> Result<Schedule, ScheduleError> {
        let refuse = |why: &str| ScheduleError {
            field: "schedule",
            message: format!(
                "stored schedule {text:?} {why}; expected `every:<seconds>` or `cron:<expression>`: register the cloud.yaml again with --every or --cron"
            ),
        };
        match text.split_once(':') {
            Some(("every", secs)) => {
                let secs: u64 = secs
                    .parse()
                    .map_err(|_| refuse("has an interval that is not a whole number of seconds"))?;
                Schedule::every_secs(secs).map_err(|e| refuse(&format!("is not usable: {e}")))
            }
            Some(("cron", expr)) if !expr.trim().is_empty() => Ok(Schedule::Cron(expr.to_string())),
            Some(("cron", _)) => Err(refuse("has an empty cron expression")),
            _ => Err(refuse("is not a schedule")),
        }
    }
}

/// The prefix of an interval the scheduler steps itself: `@every <secs> <offset>` fires at
/// every `offset + k·secs` seconds after the Unix epoch (UTC), the offset being the
/// registration's jitter, so the times are the same after a restart.
pub const EVERY_PREFIX: &str = "@every ";

/// `--every <secs>` as the scheduler runs it: the cron expression of [`every_to_cron`] when the
/// interval divides a minute, hour or day, else (a minute or more: 90m, 7m, 5h) an
/// `@every <secs> <offset>` interval.
pub fn every_expression(secs: u64, seed: u64) -> Result<String, ScheduleError> {
    match every_to_cron(secs, seed) {
        Ok(cron) => Ok(cron),
        Err(_) if secs >= 60 => Ok(format!("{EVERY_PREFIX}{secs} {}", seed % secs)),
        Err(_) => Err(ScheduleError {
            field: "every",
            message: format!(
                "--every {secs}s: below a minute the interval must divide a minute (10s, 15s, 20s, 30s); any interval of a minute or more works"
            ),
        }),
    }
}

/// `(secs, offset)` of an `@every <secs> <offset>` expression.
pub fn parse_every_expression(expr: &str) -> Option<(u64, u64)> {
    let rest = expr.strip_prefix(EVERY_PREFIX)?;
    let (secs, offset) = rest.trim().split_once(' ')?;
    let secs: u64 = secs.parse().ok().filter(|s| *s > 0)?;
    let offset: u64 = offset.trim().parse().ok()?;
    Some((secs, offset % secs))
}

/// Turn `--every <secs>` into a 6-field cron expression offset by `seed` (jitter).
/// Intervals must divide a minute, an hour or a day evenly so every period is the same length.
pub fn every_to_cron(secs: u64, seed: u64) -> Result<String, ScheduleError> {
    let refuse = || ScheduleError {
        field: "every",
        message: format!(
            "--every {secs}s does not divide a minute, hour or day evenly; use e.g. 10s, 30s, 1m, 5m, 15m, 1h, 6h, 1d, or --cron"
        ),
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

/// The per-registration offset seed: the first 12 hex digits of its key (a SHA-256 prefix, so
/// offsets spread evenly).
pub fn jitter_seed(key: &str) -> u64 {
    u64::from_str_radix(&key[..key.len().min(12)], 16).unwrap_or(0)
}

/// Offset in seconds of an `every <secs>` registration within its period: the seconds after a
/// period boundary (minute, hour or day, whichever the interval divides) at which it fires.
pub fn every_offset_secs(secs: u64, key: &str) -> u64 {
    let seed = jitter_seed(key);
    if secs < 60 {
        seed % secs.max(1)
    } else if secs < 3600 {
        (seed / 60) % (secs / 60) * 60 + seed % 60
    } else if secs < 86400 {
        (seed / 3600) % (secs / 3600) * 3600 + (seed / 60) % 60 * 60 + seed % 60
    } else {
        (seed / 3600) % 24 * 3600 + (seed / 60) % 60 * 60 + seed % 60
    }
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
    }

    #[test]
    fn intervals_cron_cannot_say_become_every_expressions() {
        // 90m, 7m, 5h, 1h30m: stepped by the scheduler from the epoch plus the jitter offset.
        for secs in [5400u64, 420, 18_000, 2700] {
            let e = every_expression(secs, 1_000_003).unwrap();
            assert_eq!(e, format!("@every {secs} {}", 1_000_003 % secs));
            assert_eq!(parse_every_expression(&e), Some((secs, 1_000_003 % secs)));
            assert!(Schedule::every_secs(secs).is_ok());
        }
        // What cron can say stays cron.
        assert_eq!(every_expression(300, 0).unwrap(), "0 0/5 * * * *");
        let e = Schedule::every_secs(7).unwrap_err();
        assert!(e.message.contains("divide a minute"), "{e}");
        assert_eq!(parse_every_expression("0 0/5 * * * *"), None);
    }

    #[test]
    fn stored_text_round_trips_byte_for_byte() {
        for text in ["every:300", "every:10", "every:86400", "cron:0 */5 * * * *"] {
            let s: Schedule = text.parse().unwrap();
            assert_eq!(s.to_string(), text);
        }
        assert_eq!(
            "every:3600".parse::<Schedule>().unwrap(),
            Schedule::Every(Duration::from_secs(3600))
        );
    }

    #[test]
    fn bad_stored_text_is_an_error_not_a_default() {
        for text in [
            "every:7", "every:0", "every:x", "every:", "cron:", "cron:  ", "hourly", "",
        ] {
            let e = text.parse::<Schedule>().unwrap_err();
            assert_eq!(e.field, "schedule", "{text}");
            assert!(e.message.contains("register the cloud.yaml again"), "{e}");
        }
    }

    #[test]
    fn to_cron_uses_the_per_key_offset() {
        let key = "0123456789abcdef";
        let seed = jitter_seed(key);
        assert_eq!(seed, 0x0123_4567_89ab);
        let every = Schedule::Every(Duration::from_secs(300));
        assert_eq!(
            every.to_cron(key).unwrap(),
            every_to_cron(300, seed).unwrap()
        );
        assert_ne!(every.to_cron(key).unwrap(), every_to_cron(300, 0).unwrap());
        let cron = Schedule::Cron("0 0 * * * *".into());
        assert_eq!(cron.to_cron(key).unwrap(), "0 0 * * * *");
    }

    #[test]
    fn offset_matches_the_cron_expression() {
        // The offset seconds agree with the fields every_to_cron writes.
        for key in [
            "0123456789abcdef",
            "ffffffffffff0000",
            "000000000000ffff",
            "a1b2c3d4e5f60718",
        ] {
            let seed = jitter_seed(key);
            assert_eq!(every_offset_secs(10, key), seed % 10);
            let c = every_to_cron(300, seed).unwrap();
            let f: Vec<&str> = c.split(' ').collect();
            let min: u64 = f[1].split('/').next().unwrap().parse().unwrap();
            assert_eq!(
                every_offset_secs(300, key),
                min * 60 + f[0].parse::<u64>().unwrap()
            );
        }
    }
}
