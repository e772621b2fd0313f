//! Fair, bounded delivery per sink (pure): which due outbox rows start now.
//!
//! A sink is keyed by where deliveries go ([`sink_key`]: a webhook's origin, or the command).
//! Each sink has at most `max_in_flight_per_sink` deliveries running and its own circuit
//! [`Breaker`]: after `breaker_after` failed deliveries in a row it opens, its rows are deferred
//! (never failed) until `breaker_cooldown` has passed, then one probe delivery runs alone
//! (half-open): delivered closes the breaker, failed opens it again. The [`Picker`] hands free
//! slots out round-robin across sinks, one row per sink per round, so a receiver that accepts
//! and never answers only ever ties up its own sink's slots.

use super::config::Sink;
use chrono::{DateTime, SecondsFormat, Utc};
use megaplan_cloud_api::wire::{BreakerState, SinkBreaker};
use std::collections::{BTreeMap, HashMap, VecDeque};

/// The sink deliveries are capped and broken by: `scheme://host:port` of a webhook (every path
/// on one server shares it: a dead server is dead for all of them), `command <cmd>` otherwise.
pub fn sink_key(sink: &Sink) -> String {
    match sink {
        Sink::Webhook { url, .. } => match url.parse::<hyper::Uri>() {
            Ok(uri) => match (uri.scheme_str(), uri.authority()) {
                (Some(scheme), Some(authority)) => {
                    format!(
                        "{}://{}",
                        scheme.to_ascii_lowercase(),
                        authority.as_str().to_ascii_lowercase()
                    )
                }
                _ => url.clone(),
            },
            Err(_) => url.clone(),
        },
        Sink::Command { command } => format!("command {command}"),
    }
}

/// The caps and the breaker settings (notify.yaml: `max_in_flight_per_sink`, `breaker_after`,
/// `breaker_cooldown`; the total is the daemon's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub per_sink: usize,
    pub total: usize,
    pub breaker_after: u32,
    pub cooldown: chrono::Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    /// Deferred until then; then one probe.
    Open {
        until: DateTime<Utc>,
    },
    /// The probe is running.
    HalfOpen,
}

/// How many more deliveries a sink may start now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Room {
    Take(usize),
    /// Open: its due rows wait until then.
    Deferred(DateTime<Utc>),
}

/// One sink's breaker and its deliveries in flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Breaker {
    pub state: State,
    pub consecutive_failures: u32,
    pub in_flight: usize,
    /// Last start or finish (idle breakers are forgotten after a while).
    pub touched: DateTime<Utc>,
}

impl Breaker {
    pub fn new(now: DateTime<Utc>) -> Breaker {
        Breaker {
            state: State::Closed,
            consecutive_failures: 0,
            in_flight: 0,
            touched: now,
        }
    }

    pub fn room(&self, now: DateTime<Utc>, per_sink: usize) -> Room {
        match self.state {
            State::Closed => Room::Take(per_sink.saturating_sub(self.in_flight)),
            State::Open { until } if now < until => Room::Deferred(until),
            // The cooldown is over: one probe, once the deliveries started before it opened
            // have ended.
            State::Open { .. } => Room::Take(usize::from(self.in_flight == 0)),
            State::HalfOpen => Room::Take(0),
        }
    }

    /// A delivery to this sink starts.
    pub fn started(&mut self, now: DateTime<Utc>) {
        self.in_flight = self.in_flight.saturating_add(1);
        self.touched = now;
        if let State::Open { until } = self.state
            && now >= until
        {
            self.state = State::HalfOpen;
        }
    }

    /// A delivery to this sink ended. Returns true when this opened the breaker.
    pub fn finished(&mut self, delivered: bool, now: DateTime<Utc>, limits: &Limits) -> bool {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.touched = now;
        if delivered {
            self.consecutive_failures = 0;
            self.state = State::Closed;
            return false;
        }
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        let open = match self.state {
            State::HalfOpen => true,
            State::Closed => self.consecutive_failures >= limits.breaker_after,
            State::Open { .. } => false,
        };
        if open {
            self.state = State::Open {
                until: now + limits.cooldown,
            };
        }
        open
    }

    /// Nothing to remember: closed, nothing running, no failure.
    pub fn is_blank(&self) -> bool {
        self.state == State::Closed && self.in_flight == 0 && self.consecutive_failures == 0
    }

    /// Worth keeping: something runs, it is open, or it was used within `keep`.
    pub fn worth_keeping(&self, now: DateTime<Utc>, keep: chrono::Duration) -> bool {
        !self.is_blank()
            && (self.in_flight > 0
                || matches!(self.state, State::Open { until } if now < until)
                || now - self.touched < keep)
    }

    pub fn view(&self, sink: &str) -> SinkBreaker {
        let (state, open_until) = match self.state {
            State::Closed => (BreakerState::Closed, None),
            State::Open { until } => (
                BreakerState::Open,
                Some(until.to_rfc3339_opts(SecondsFormat::Millis, true)),
            ),
            State::HalfOpen => (BreakerState::HalfOpen, None),
        };
        SinkBreaker {
            sink: sink.to_string(),
            state,
            open_until,
            consecutive_failures: self.consecutive_failures,
            in_flight: u32::try_from(self.in_flight).unwrap_or(u32::MAX),
        }
    }
}

/// What to do with the due rows seen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Indices into the due rows: start these now (round-robin across sinks).
    pub start: Vec<usize>,
    /// Sinks whose breaker is open, with when their rows come due again.
    pub defer: Vec<(String, DateTime<Utc>)>,
}

/// Round-robin across sinks, remembered between passes (the sink served last goes last next).
#[derive(Debug, Clone, Default)]
pub struct Picker {
    last: Option<String>,
}

impl Picker {
    /// `due`: the sink key of each due row not already in flight, oldest first per sink.
    /// `running`: deliveries in flight in total.
    pub fn plan(
        &mut self,
        due: &[String],
        breakers: &HashMap<String, Breaker>,
        running: usize,
        limits: &Limits,
        now: DateTime<Utc>,
    ) -> Plan {
        let mut queues: BTreeMap<&str, VecDeque<usize>> = BTreeMap::new();
        for (i, k) in due.iter().enumerate() {
            queues.entry(k.as_str()).or_default().push_back(i);
        }
        let mut plan = Plan::default();
        // Sinks in key order, starting after the one served last.
        let mut order: Vec<(&str, usize)> = Vec::with_capacity(queues.len());
        for &k in queues.keys() {
            let room = match breakers.get(k) {
                Some(b) => b.room(now, limits.per_sink),
                None => Room::Take(limits.per_sink),
            };
            match room {
                Room::Take(n) => order.push((k, n)),
                Room::Deferred(until) => plan.defer.push((k.to_string(), until)),
            }
        }
        if let Some(last) = self.last.as_deref() {
            let split = order.partition_point(|(k, _)| *k <= last);
            order.rotate_left(split);
        }
        let mut free = limits.total.saturating_sub(running);
        let mut progress = true;
        while free > 0 && progress {
            progress = false;
            for (k, quota) in order.iter_mut() {
                if free == 0 {
                    break;
                }
                if *quota == 0 {
                    continue;
                }
                let Some(i) = queues.get_mut(*k).and_then(VecDeque::pop_front) else {
                    continue;
                };
                plan.start.push(i);
                *quota -= 1;
                free -= 1;
                progress = true;
                self.last = Some(k.to_string());
            }
        }
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            per_sink: 4,
            total: 64,
            breaker_after: 3,
            cooldown: chrono::Duration::seconds(60),
        }
    }

    fn keys(spec: &[(&str, usize)]) -> Vec<String> {
        spec.iter()
            .flat_map(|(k, n)| std::iter::repeat_n(k.to_string(), *n))
            .collect()
    }

    fn started(due: &[String], plan: &Plan, key: &str) -> usize {
        plan.start.iter().filter(|i| due[**i] == key).count()
    }

    #[test]
    fn sink_keys_are_origins_or_commands() {
        let hook = |url: &str| Sink::Webhook {
            url: url.into(),
            preset: Default::default(),
            secret_env: None,
        };
        assert_eq!(
            sink_key(&hook("http://127.0.0.1:8080/a")),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            sink_key(&hook("HTTPS://Hooks.Example.com/b?x=1")),
            "https://hooks.example.com"
        );
        assert_eq!(
            sink_key(&Sink::Command {
                command: "cat".into()
            }),
            "command cat"
        );
    }

    /// 200 rows of a dead sink queued before 1 of a healthy one: the dead sink gets its cap,
    /// the healthy one starts in the same pass; with the dead sink's slots all taken, only the
    /// healthy one starts.
    #[test]
    fn a_saturated_sink_never_holds_back_another() {
        let now = Utc::now();
        let due = keys(&[("dead", 200), ("healthy", 1)]);
        let mut picker = Picker::default();
        let plan = picker.plan(&due, &HashMap::new(), 0, &limits(), now);
        assert_eq!(started(&due, &plan, "dead"), 4);
        assert_eq!(started(&due, &plan, "healthy"), 1);
        assert_eq!(plan.start.len(), 5);
        assert!(plan.defer.is_empty());

        let mut dead = Breaker::new(now);
        for _ in 0..4 {
            dead.started(now);
        }
        let breakers = HashMap::from([("dead".to_string(), dead)]);
        let due = keys(&[("dead", 196), ("healthy", 1)]);
        let plan = picker.plan(&due, &breakers, 4, &limits(), now);
        assert_eq!(plan.start.len(), 1);
        assert_eq!(due[plan.start[0]], "healthy");
    }

    /// With fewer free slots than sinks, the slots go round-robin: one row per sink per round,
    /// and the next pass starts after the sink served last.
    #[test]
    fn free_slots_go_round_robin_across_sinks() {
        let now = Utc::now();
        let l = Limits {
            total: 3,
            ..limits()
        };
        let due = keys(&[("a", 5), ("b", 5), ("c", 5), ("d", 5)]);
        let mut picker = Picker::default();
        let plan = picker.plan(&due, &HashMap::new(), 0, &l, now);
        let served: Vec<&str> = plan.start.iter().map(|i| due[*i].as_str()).collect();
        assert_eq!(served, ["a", "b", "c"]);
        // One slot frees: d, then a again.
        let plan = picker.plan(&due, &HashMap::new(), 2, &l, now);
        assert_eq!(due[plan.start[0]], "d");
        let plan = picker.plan(&due, &HashMap::new(), 2, &l, now);
        assert_eq!(due[plan.start[0]], "a");
        // Oldest row of a sink first.
        let plan = picker.plan(&due, &HashMap::new(), 0, &Limits { total: 64, ..l }, now);
        assert_eq!(plan.start.len(), 16, "4 sinks x 4 each");
        assert_eq!(plan.start[0], 5, "b's oldest row, b being next after a");
        assert!(plan.start.contains(&0));
        assert!(!plan.start.contains(&4), "a's fifth row waits");
    }

    #[test]
    fn the_breaker_opens_after_n_failures_defers_then_lets_one_probe_through() {
        let l = limits();
        let t0 = Utc::now();
        let mut b = Breaker::new(t0);
        for _ in 0..4 {
            b.started(t0);
        }
        assert_eq!(b.room(t0, l.per_sink), Room::Take(0));
        assert!(!b.finished(false, t0, &l));
        // A delivered one resets the count.
        assert!(!b.finished(true, t0, &l));
        assert_eq!(b.consecutive_failures, 0);
        b.started(t0);
        b.started(t0);
        assert!(!b.finished(false, t0, &l));
        assert!(!b.finished(false, t0, &l));
        assert_eq!(b.state, State::Closed);
        assert!(
            b.finished(false, t0, &l),
            "the third failure in a row opens it"
        );
        let until = t0 + l.cooldown;
        assert_eq!(b.state, State::Open { until });
        assert_eq!(b.room(t0, l.per_sink), Room::Deferred(until));
        // The last one started before it opened fails too: still open, same cooldown.
        assert_eq!(b.in_flight, 1);
        assert!(!b.finished(false, t0, &l));
        assert_eq!(b.state, State::Open { until });
        let view = b.view("http://x:1");
        assert_eq!(view.state, BreakerState::Open);
        assert_eq!(view.consecutive_failures, 4);
        assert_eq!(view.in_flight, 0);
        assert!(view.open_until.is_some());

        // The cooldown over: one probe, alone.
        assert_eq!(b.room(until, l.per_sink), Room::Take(1));
        b.started(until);
        assert_eq!(b.state, State::HalfOpen);
        assert_eq!(b.room(until, l.per_sink), Room::Take(0));
        // It fails: open again for another cooldown.
        assert!(b.finished(false, until, &l));
        assert_eq!(
            b.state,
            State::Open {
                until: until + l.cooldown
            }
        );
        // The next probe is delivered: closed, full room.
        let later = until + l.cooldown;
        b.started(later);
        assert!(!b.finished(true, later, &l));
        assert_eq!(b.state, State::Closed);
        assert_eq!(b.room(later, l.per_sink), Room::Take(4));
        assert!(b.is_blank());
    }

    #[test]
    fn an_open_sink_is_deferred_and_the_others_still_start() {
        let l = limits();
        let now = Utc::now();
        let mut dead = Breaker::new(now);
        for _ in 0..3 {
            dead.started(now);
            dead.finished(false, now, &l);
        }
        let breakers = HashMap::from([("dead".to_string(), dead)]);
        let due = keys(&[("dead", 10), ("healthy", 2)]);
        let plan = Picker::default().plan(&due, &breakers, 0, &l, now);
        assert_eq!(plan.defer, [("dead".to_string(), now + l.cooldown)]);
        assert_eq!(started(&due, &plan, "healthy"), 2);
        assert_eq!(started(&due, &plan, "dead"), 0);
    }

    /// A breaker that opened while older deliveries still ran probes only once they ended.
    #[test]
    fn the_probe_waits_for_deliveries_started_before_the_breaker_opened() {
        let l = limits();
        let now = Utc::now();
        let mut b = Breaker::new(now);
        for _ in 0..4 {
            b.started(now);
        }
        for _ in 0..3 {
            b.finished(false, now, &l);
        }
        let after = now + l.cooldown;
        assert_eq!(b.room(after, l.per_sink), Room::Take(0));
        b.finished(false, after, &l);
        assert_eq!(b.room(after, l.per_sink), Room::Take(1));
        assert!(b.worth_keeping(now, chrono::Duration::hours(1)));
        assert!(!b.worth_keeping(
            after + chrono::Duration::hours(2),
            chrono::Duration::hours(1)
        ));
    }
}
