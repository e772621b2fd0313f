//! Log lines rate-limited per kind, so that a flood (refused requests, a registration whose
//! ticks fail every second) writes the first line in full and then one count a minute, never a
//! line per event. Used by the HTTP layer's refusal log and the tick log.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often each kind may be written.
pub const EVERY: Duration = Duration::from_secs(60);

/// Kinds remembered at once; more (a client inventing methods) share one `other` kind.
pub const MAX_KINDS: usize = 64;

/// What to write for one event of a kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Write the event in full (the first of its kind in a while).
    Line,
    /// Write one line saying this many more of the kind happened in the last period.
    Summary(u64),
    /// Only counted.
    Quiet,
}

/// Log lines rate-limited per kind: the first event of a kind is written, the rest of its
/// period only counted; the first event after the period writes the count (this one included)
/// and starts a new period. A kind with nothing held back starts over with a full line.
pub struct KindLog {
    every: Duration,
    kinds: Mutex<HashMap<String, (Instant, u64)>>,
}

impl KindLog {
    pub fn new(every: Duration) -> KindLog {
        KindLog {
            every,
            kinds: Mutex::new(HashMap::new()),
        }
    }

    pub fn admit(&self, kind: &str, now: Instant) -> Admit {
        let mut kinds = self.kinds.lock().unwrap_or_else(|p| p.into_inner());
        let kind = if kinds.contains_key(kind) || kinds.len() < MAX_KINDS {
            kind
        } else {
            "other"
        };
        match kinds.get_mut(kind) {
            None => {
                kinds.insert(kind.to_string(), (now, 0));
                Admit::Line
            }
            Some((start, held)) if now.duration_since(*start) < self.every => {
                *held += 1;
                Admit::Quiet
            }
            Some((start, held)) => {
                let n = *held;
                *start = now;
                *held = 0;
                if n == 0 {
                    Admit::Line
                } else {
                    Admit::Summary(n + 1)
                }
            }
        }
    }
}

/// At most `max` bytes of `text`, cut at a character boundary, `…` when cut.
pub fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_log_writes_the_first_then_one_count_a_period() {
        let log = KindLog::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(log.admit("a", t0), Admit::Line);
        assert_eq!(log.admit("b", t0), Admit::Line);
        let written = (1..1000u64)
            .filter(|i| log.admit("a", t0 + Duration::from_millis(*i)) != Admit::Quiet)
            .count();
        assert_eq!(written, 0);
        // The first after the period carries the count, itself included.
        assert_eq!(
            log.admit("a", t0 + Duration::from_secs(61)),
            Admit::Summary(1000)
        );
        // Nothing held back in the last period: the next one is a full line again.
        assert_eq!(log.admit("a", t0 + Duration::from_secs(200)), Admit::Line);
        assert_eq!(log.admit("b", t0 + Duration::from_secs(200)), Admit::Line);
    }

    #[test]
    fn kind_log_remembers_a_bounded_number_of_kinds() {
        let log = KindLog::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let lines = (0..10_000)
            .filter(|i| log.admit(&format!("kind {i}"), t0) == Admit::Line)
            .count();
        assert_eq!(lines, MAX_KINDS + 1, "the rest share one `other` kind");
        assert!(log.kinds.lock().unwrap().len() <= MAX_KINDS + 1);
    }

    #[test]
    fn clip_cuts_at_a_character_boundary() {
        assert_eq!(clip("abc", 5), "abc");
        assert_eq!(clip("ééé", 3), "é…");
    }
}
