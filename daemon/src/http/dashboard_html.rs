//! The dashboard's HTML (server-rendered with maud) and its two embedded assets. The pages
//! are whole without JavaScript; `app.js` only swaps in the re-rendered live part that the
//! event stream sends, and asks before an action.

use crate::notify::explain::Explained;
use crate::notify::store::OutboxEntry;
use maud::{DOCTYPE, Markup, html};
use megaplan_cloud_api::fleet::{Fleet, FleetRow, FleetState};
use megaplan_cloud_api::wire::TickRecord;

/// The runner's liveness (`alive`, `dead`, `unknown`) per registration key, from its last tick.
pub type Runners = std::collections::HashMap<String, &'static str>;

pub const APP_JS: &str = include_str!("dashboard_assets/app.js");
pub const STYLE_CSS: &str = include_str!("dashboard_assets/style.css");

/// A whole page: `live` is the part the event stream at `events` replaces.
pub fn layout(title: &str, events: &str, live: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "megaplan-cloudd — " (title) }
                link rel="stylesheet" href="/assets/style.css";
                script src="/assets/app.js" defer {}
            }
            body {
                header {
                    a href="/" { "megaplan-cloudd" }
                    span.live-note id="live-note" { "live" }
                }
                main id="live" data-events=(events) { (live) }
            }
        }
    }
}

pub fn error(message: &str) -> Markup {
    html! { p.error { (message) } }
}

fn state_word(s: FleetState) -> &'static str {
    match s {
        FleetState::Quarantined => "quarantined",
        FleetState::NeedsPerson => "needs a person",
        FleetState::Stalled => "stalled",
        FleetState::BackingOff => "backing off",
        FleetState::AwaitingPr => "awaiting PR",
        FleetState::Paused => "paused",
        FleetState::Running => "running",
        FleetState::Unknown => "unknown",
        FleetState::Complete => "complete",
    }
}

fn state_badge(s: FleetState) -> Markup {
    html! { span class={ "state state-" (s.as_str()) } data-state=(s.as_str()) { (state_word(s)) } }
}

/// "3m ago" / "in 2m" from two RFC 3339 times; the time itself when either does not parse.
fn relative(at: Option<&str>, now: &str) -> String {
    let Some(at) = at else {
        return "-".into();
    };
    let (Ok(t), Ok(n)) = (
        chrono::DateTime::parse_from_rfc3339(at),
        chrono::DateTime::parse_from_rfc3339(now),
    ) else {
        return at.to_string();
    };
    let secs = (t - n).num_seconds();
    let span = |s: i64| match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    };
    if secs >= 0 {
        format!("in {}", span(secs))
    } else {
        format!("{} ago", span(-secs))
    }
}

fn milestone(r: &FleetRow) -> Markup {
    html! {
        @if let Some(m) = &r.milestone {
            span.milestone { (m.number) "/" (m.count) }
            progress value=(m.number) max=(m.count.max(1)) {}
            @if let Some(l) = &m.label { " " span.label { (l) } }
        } @else { "-" }
    }
}

fn liveness(status: Option<&str>) -> Markup {
    let word = status.unwrap_or("-");
    html! { span class={ "runner runner-" (word) } { (word) } }
}

fn place(r: &FleetRow) -> String {
    match (&r.provider, &r.host) {
        (Some(p), Some(h)) => format!("{p} · {h}"),
        (Some(p), None) => p.clone(),
        _ => "-".into(),
    }
}

/// Page 1: one row per registration, what needs a person first.
pub fn fleet(f: &Fleet, runners: &Runners) -> Markup {
    let attention = f
        .registrations
        .iter()
        .filter(|r| r.state.needs_attention())
        .count();
    html! {
        h1 { "Fleet" }
        p.summary {
            (f.registrations.len()) " chain(s), "
            strong { (attention) } " need attention · as of " (f.generated_at)
        }
        @if f.registrations.is_empty() {
            p { "No registrations yet: run " code { "megaplan-cloudctl register" } " in a project." }
        } @else {
            table.fleet id="fleet" {
                thead { tr {
                    th { "chain" } th { "provider / host" } th { "milestone" } th { "state" }
                    th { "runner" } th { "PR" } th { "last progress" } th { "next tick" }
                } }
                tbody {
                    @for r in &f.registrations {
                        tr data-key=(r.key) data-state=(r.state.as_str()) {
                            td { a href={ "/chain/" (r.key) } { (r.name) } }
                            td { (place(r)) }
                            td { (milestone(r)) }
                            td {
                                (state_badge(r.state))
                                @if let Some(a) = &r.attention {
                                    div.attention { (a.reason) " — " (a.fix) }
                                }
                            }
                            td title=(r.liveness.as_ref().map_or("", |l| l.evidence.detail.as_str())) { (liveness(r.liveness.as_ref().map(|l| l.state.as_str()).or(runners.get(&r.key).copied()))) }
                            td { @if let Some(n) = r.pr_number { "#" (n) } @else { "-" } }
                            td { (relative(r.last_progress_at.as_deref(), &f.generated_at)) }
                            td {
                                @if r.paused.is_some() { "paused" }
                                @else { (relative(r.next_tick_at.as_deref(), &f.generated_at)) }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// What the chain page shows.
pub struct Chain<'a> {
    pub key: &'a str,
    pub row: Option<&'a FleetRow>,
    /// Oldest first.
    pub ticks: &'a [TickRecord],
    pub notifications: &'a [OutboxEntry],
    pub explain: Option<&'a Explained>,
    /// Carried by the action forms: an action needs it besides the cookie.
    pub token: &'a str,
}

/// The chain log's last lines from the newest tick that read them (the observation reads them
/// in its one round trip: the page costs the runner nothing), with that tick's time.
fn last_log_lines(ticks: &[TickRecord]) -> Option<(&str, &[String])> {
    ticks.iter().rev().find_map(|t| {
        t.report
            .logs
            .tail
            .as_deref()
            .filter(|l| !l.is_empty())
            .map(|l| (t.finished_at.as_str(), l))
    })
}

/// The rows of the state chart, top to bottom (the fleet's order of urgency).
const LANES: [&str; 6] = [
    "needs_person",
    "blocked",
    "paused",
    "acted",
    "observed",
    "failed",
];

/// Which lane of the chart a tick falls in.
fn lane(t: &TickRecord) -> usize {
    let event = t.event.to_string();
    if !t.success {
        5
    } else if event.contains("human") || event.contains("gate") || event.contains("quality") {
        0
    } else if t.report.pause().is_some() {
        2
    } else if t.acted {
        3
    } else if event.contains("blocked") {
        1
    } else {
        4
    }
}

/// The timeline: state over time (one dot per tick in its lane) above the tick durations (one
/// bar per tick), oldest on the left. Inline SVG, no script.
fn timeline(ticks: &[TickRecord]) -> Markup {
    const W: usize = 720;
    const LANE_H: usize = 18;
    const LEFT: usize = 100;
    const BARS_H: usize = 60;
    let n = ticks.len().max(1);
    let step = (W - LEFT) as f64 / n as f64;
    // Bars no wider than a finger's width, however few ticks there are.
    let bar_w = (step * 0.7).clamp(1.0, 14.0);
    let lanes_h = LANES.len() * LANE_H;
    let h = lanes_h + BARS_H + 24;
    let longest = ticks
        .iter()
        .map(|t| t.duration_ms)
        .max()
        .unwrap_or(1)
        .max(1);
    html! {
        svg.timeline xmlns="http://www.w3.org/2000/svg" width=(W) height=(h) viewBox={ "0 0 " (W) " " (h) } role="img" aria-label="tick timeline" {
            @for (i, name) in LANES.iter().enumerate() {
                text x="4" y=(i * LANE_H + 13) class="lane" { (name) }
                line x1=(LEFT) x2=(W) y1=(i * LANE_H + 9) y2=(i * LANE_H + 9) class="grid" {}
            }
            @for (i, t) in ticks.iter().enumerate() {
                @let x = LEFT as f64 + step * (i as f64 + 0.5);
                @let l = lane(t);
                circle cx=(format!("{x:.1}")) cy=(l * LANE_H + 9) r="4" class={ "dot lane-" (l) } {
                    title { "#" (t.id) " " (t.finished_at) ": " (t.event) " (" (t.trigger) ")" }
                }
                @let bh = (t.duration_ms as f64 / longest as f64 * BARS_H as f64).max(1.0);
                rect x=(format!("{:.1}", x - bar_w / 2.0)) y=(format!("{:.1}", (lanes_h + BARS_H) as f64 - bh + 6.0)) width=(format!("{bar_w:.1}")) height=(format!("{bh:.1}")) class="bar" {
                    title { "#" (t.id) ": " (t.duration_ms) " ms" }
                }
            }
            text x="4" y=(lanes_h + 30) class="lane" { "duration" }
            text x="4" y=(lanes_h + 44) class="lane" { "max " (longest) " ms" }
        }
    }
}

fn action(key: &str, token: &str, what: &str, label: &str, confirm: &str, reason: bool) -> Markup {
    html! {
        form.action method="post" action={ "/chain/" (key) "/" (what) } data-confirm=(confirm) {
            input type="hidden" name="token" value=(token);
            @if reason { input type="text" name="reason" placeholder="reason (optional)" maxlength="1024"; }
            button type="submit" id={ "action-" (what) } { (label) }
        }
    }
}

/// Page 2: one chain.
pub fn chain(c: Chain<'_>) -> Markup {
    let name = c.row.map_or(c.key, |r| r.name.as_str());
    html! {
        p { a href="/" { "← fleet" } }
        h1 { (name) }
        @if let Some(r) = c.row {
            dl.facts id="chain" data-key=(r.key) data-state=(r.state.as_str()) {
                dt { "state" } dd { (state_badge(r.state)) }
                @if let Some(a) = &r.attention { dt { "attention" } dd { (a.reason) " — " (a.fix) } }
                dt { "provider / host" } dd { (place(r)) }
                dt { "runner" } dd {
                    @if let Some(l) = &r.liveness { (liveness(Some(l.state.as_str()))) " — " (l.evidence.detail) }
                    @else { (liveness(c.ticks.last().and_then(|t| t.report.runner.status).map(|s| s.as_str()))) }
                }
                dt { "milestone" } dd { (milestone(r)) }
                dt { "PR" } dd { @if let Some(n) = r.pr_number { "#" (n) } @else { "-" } }
                dt { "last tick" } dd { (relative(r.last_tick_at.as_deref(), &chrono::Utc::now().to_rfc3339())) }
                dt { "next tick" } dd { (relative(r.next_tick_at.as_deref(), &chrono::Utc::now().to_rfc3339())) " (" (r.schedule) ")" }
                @if let Some(p) = &r.paused {
                    dt { "paused" } dd { "by " (p.paused_by) " since " (p.since) @if let Some(why) = &p.reason { ": " (why) } }
                }
                dt { "cloud.yaml" } dd { code { (r.cloud_yaml) } }
            }
            div.actions {
                @if r.state == FleetState::Quarantined {
                    (action(c.key, c.token, "unquarantine", "Unquarantine", "Clear the quarantine? The supervisor may restart the driver again.", false))
                }
                @if r.paused.is_some() {
                    (action(c.key, c.token, "unpause", "Unpause", "Unpause this chain? Scheduled ticks may act again.", false))
                } @else {
                    (action(c.key, c.token, "pause", "Pause", "Pause this chain? Ticks will observe but never act.", true))
                }
                (action(c.key, c.token, "tick", "Tick now", "Run one tick of this chain now?", false))
            }
        }
        h2 { "Ticks" }
        @if c.ticks.is_empty() { p { "No tick stored yet." } } @else { (timeline(c.ticks)) }
        h2 { "Last tick explained" }
        @match c.explain.map(|e| &e.lines) {
            Some(lines) => pre.explain { @for l in lines { (l) "\n" } },
            None => p { "No tick to explain yet." },
        }
        h2 { "Chain log" }
        @match last_log_lines(c.ticks) {
            Some((at, lines)) => {
                p.note { "Its last lines as the tick of " (at) " read them (redacted)." }
                pre.log { @for l in lines { (l) "\n" } }
            }
            None => p { "No tick has read the chain log yet." },
        }
        h2 { "Notifications" }
        @if c.notifications.is_empty() { p { "None sent for this chain." } } @else {
            table.notes {
                thead { tr { th { "created" } th { "event" } th { "sink" } th { "delivery" } th { "attempts" } th { "last error" } } }
                tbody {
                    @for n in c.notifications {
                        tr {
                            td { (n.created_at) } td { (n.event) } td { (n.sink) }
                            td { span class={ "delivery delivery-" (n.status) } { (n.status) } }
                            td { (n.attempts) } td { (n.last_error.as_deref().unwrap_or("-")) }
                        }
                    }
                }
            }
        }
        h2 { "Recent ticks" }
        table.ticks {
            thead { tr { th { "#" } th { "finished" } th { "trigger" } th { "event" } th { "action" } th { "ms" } } }
            tbody {
                @for t in c.ticks.iter().rev().take(15) {
                    tr { td { (t.id) } td { (t.finished_at) } td { (t.trigger) } td { (t.event) } td { (t.next_action) @if t.acted { " (acted)" } } td { (t.duration_ms) } }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_times_read_both_ways() {
        let now = "2026-12-01T12:00:00Z";
        assert_eq!(relative(Some("2026-12-01T12:03:00Z"), now), "in 3m");
        assert_eq!(relative(Some("2026-12-01T10:00:00Z"), now), "2h ago");
        assert_eq!(relative(None, now), "-");
        assert_eq!(relative(Some("soon"), now), "soon");
    }

    #[test]
    fn text_from_the_fleet_is_escaped() {
        let f = Fleet {
            generated_at: "2026-12-01T12:00:00Z".into(),
            registrations: vec![FleetRow {
                key: "0123456789abcdef".into(),
                cloud_yaml: "/p/x/cloud.yaml".into(),
                name: "<script>alert(1)</script>".into(),
                provider: Some("ssh".into()),
                host: Some("h".into()),
                milestone: None,
                state: FleetState::NeedsPerson,
                pr_number: None,
                stalled_for_secs: None,
                consecutive_failures: 0,
                last_tick_at: None,
                last_progress_at: None,
                next_tick_at: None,
                schedule: "every:300".into(),
                paused: None,
                backoff: None,
                attention: None,
                liveness: None,
            }],
        };
        let page = fleet(&f, &Runners::new()).into_string();
        assert!(!page.contains("<script>"), "{page}");
        assert!(page.contains("&lt;script&gt;"), "{page}");
        assert!(page.contains("state-needs_person"), "{page}");
    }
}
