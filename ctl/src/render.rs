//! Human renderings (tables and one-liners). JSON output never goes through here.

use megaplan_cloud_api::wire::{Health, Registration, RegistrationListed, TickRecord};
use serde_json::Value;

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("-")
}

pub fn health(h: &Health) {
    let t = &h.ticks;
    println!("megaplan-cloudd {} (API v{})", h.version, h.api_version);
    println!("  pid:           {}", h.pid);
    let since = chrono::DateTime::parse_from_rfc3339(&h.started_at)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|_| h.started_at.clone());
    println!(
        "  uptime:        {} (since {since})",
        duration_text(h.uptime_secs)
    );
    println!("  socket:        {}", h.socket);
    println!("  database:      {}", h.database);
    let st = &h.storage;
    println!(
        "  database size: {} on disk ({} in use) of a {} cap; pruned {} ticks, {} notifications",
        bytes_text(st.size_bytes),
        bytes_text(st.used_bytes),
        bytes_text(st.max_bytes),
        st.pruned_ticks,
        st.pruned_notifications
    );
    println!("  state root:    {}", h.cloud_home);
    println!("  registrations: {}", h.registrations);
    println!(
        "  ticks:         {} run, {} failed, {} skipped",
        t.run, t.failed, t.skipped
    );
    let sc = &h.schedule;
    println!(
        "  schedule:      {} queued; since start {} due, {} fired ({} on time), {} skipped, {} missed; worst lateness {} ms",
        sc.scheduled, sc.due, sc.fired, sc.on_time, sc.skipped, sc.missed, sc.worst_lateness_ms
    );
    println!("  ssh sessions:  {}", h.ssh_sessions);
    let seen: Vec<String> = h
        .tools
        .iter()
        .map(|(k, p)| format!("{k}={}", p.as_deref().unwrap_or("missing")))
        .collect();
    println!("  tools:         {}", seen.join(" "));
}

/// 512 → "512 B", 1536 → "1.5 KiB", 268435456 → "256.0 MiB".
pub fn bytes_text(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = UNITS[0];
    for u in UNITS.iter().skip(1) {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

/// 109 → "1m49s", 7384 → "2h03m": the tree's one duration formatter.
pub use megaplan_cloud_api::duration::text as duration_text;

/// "3m ago", "in 2h", from an RFC 3339 time and now. Pure (now is passed in).
pub fn relative(at: &str, now: chrono::DateTime<chrono::Utc>) -> String {
    let Ok(t) = chrono::DateTime::parse_from_rfc3339(at) else {
        return at.to_string();
    };
    let secs = (t.with_timezone(&chrono::Utc) - now).num_seconds();
    let span = secs.unsigned_abs();
    let text = match span {
        0..=59 => format!("{span}s"),
        60..=3599 => format!("{}m", span / 60),
        3600..=86_399 => format!("{}h{:02}m", span / 3600, (span % 3600) / 60),
        _ => format!("{}d", span / 86_400),
    };
    if secs < -1 {
        format!("{text} ago")
    } else if secs > 1 {
        format!("in {text}")
    } else {
        "now".to_string()
    }
}

/// `every:300` → "every 5m"; `cron:…` → "cron … (UTC)"; `cron:CRON_TZ=Europe/Berlin …` →
/// "cron … (Europe/Berlin)": a cron schedule always says its zone.
pub fn schedule_text(stored: &str) -> String {
    match stored.split_once(':') {
        Some(("every", secs)) => match secs.parse::<u64>() {
            Ok(n) if n % 86_400 == 0 => format!("every {}d", n / 86_400),
            Ok(n) if n % 3600 == 0 => format!("every {}h", n / 3600),
            Ok(n) if n % 60 == 0 => format!("every {}m", n / 60),
            Ok(n) => format!("every {n}s"),
            Err(_) => stored.to_string(),
        },
        Some(("cron", expr)) => {
            let (zone, expr) = cron_zone_of(expr);
            format!("cron {expr} ({zone})")
        }
        _ => stored.to_string(),
    }
}

/// The zone of a stored cron expression and the expression without it (`UTC` when unnamed).
pub fn cron_zone_of(expr: &str) -> (&str, &str) {
    match expr.trim_start().strip_prefix("CRON_TZ=") {
        Some(rest) => rest
            .split_once(char::is_whitespace)
            .map(|(z, e)| (z, e.trim_start()))
            .unwrap_or((rest, "")),
        None => ("UTC", expr),
    }
}

/// When the next tick is due: the daemon's own figure when it reports one, else one interval
/// after the last tick for `every` schedules; "-" when it cannot be known here.
fn next_tick(r: &Registration, now: chrono::DateTime<chrono::Utc>) -> String {
    if let Some(at) = &r.next_due_at {
        return relative(at, now);
    }
    let every = r
        .schedule
        .strip_prefix("every:")
        .and_then(|n| n.parse::<i64>().ok());
    match (every, r.last_tick_at.as_deref()) {
        (Some(n), Some(last)) => match chrono::DateTime::parse_from_rfc3339(last) {
            Ok(t) => relative(&(t + chrono::Duration::seconds(n)).to_rfc3339(), now),
            Err(_) => "-".into(),
        },
        (Some(_), None) => "soon".into(),
        _ => "-".into(),
    }
}

/// How a table is laid out: the terminal's width (`None`: `--wide`), colour, and how many rows
/// at most (`-n`; `None` for all).
#[derive(Debug, Clone, Copy)]
pub struct TableView {
    pub width: Option<usize>,
    pub color: bool,
    pub limit: Option<usize>,
}

pub fn registrations_table(rows: &[RegistrationListed], view: TableView) {
    if rows.is_empty() {
        eprintln!("no registrations; add one with `megaplan-cloudctl register --cloud-yaml PATH`");
        return;
    }
    print!("{}", registrations_text(rows, chrono::Utc::now(), view));
}

/// The registrations table as text (pure: `now` is passed in, so it can be tested). The key
/// and the counts are never cut; schedule, status and the path are shortened to fit.
pub fn registrations_text(
    rows: &[RegistrationListed],
    now: chrono::DateTime<chrono::Utc>,
    view: TableView,
) -> String {
    use crate::columns::{Cell, Column, Fit};
    let wide = view.width.is_none();
    let mut columns = vec![
        Column {
            header: "KEY",
            fit: Fit::Keep,
        },
        Column {
            header: "SCHEDULE",
            fit: Fit::Cut { min: 8 },
        },
        Column {
            header: "LAST TICK",
            fit: Fit::Keep,
        },
        Column {
            header: "STATUS",
            fit: Fit::Cut { min: 7 },
        },
        Column {
            header: "NEXT",
            fit: Fit::Keep,
        },
    ];
    if wide {
        columns.push(Column {
            header: "TICKS",
            fit: Fit::Keep,
        });
        columns.push(Column {
            header: "SKIPPED",
            fit: Fit::Keep,
        });
        columns.push(Column {
            header: "LAST EVENT",
            fit: Fit::Keep,
        });
    }
    columns.push(Column {
        header: "CLOUD.YAML",
        fit: Fit::CutStart { min: 10 },
    });
    let total = rows.len();
    let shown = &rows[..view.limit.unwrap_or(total).min(total)];
    let mut notes = Vec::new();
    let cells: Vec<Vec<Cell>> = shown
        .iter()
        .map(|row| {
            let r = &row.registration;
            // What the watcher knows first (paused, stalled, backing off, failing), else the
            // status the last successful tick saw.
            let mut status = Vec::new();
            if row.paused.is_some() {
                status.push("paused".to_string());
            }
            if row.stalled {
                status.push("stalled".to_string());
            }
            if r.backoff.is_some() {
                status.push("backoff".to_string());
            }
            if row.consecutive_failures > 0 {
                status.push(format!("{} failed", row.consecutive_failures));
            }
            if status.is_empty() {
                status.push(match row.watched_status.as_deref() {
                    Some("awaiting_pr_merge") => "awaiting PR".to_string(),
                    Some("human_prerequisite") => "prerequisite".to_string(),
                    Some("stale_bookkeeping") => "stale".to_string(),
                    Some(other) => other.replace('_', " "),
                    None => "-".to_string(),
                });
            }
            if let Some(b) = &r.backoff {
                notes.push(format!(
                    "{} backing off until {} after {} tick(s) in a row hit their deadline ({} skipped): {}",
                    r.key, b.until, b.strikes, b.skipped, b.reason
                ));
            }
            if let Some(p) = &row.paused {
                let reason = p
                    .reason
                    .as_deref()
                    .map(|x| format!(": {x}"))
                    .unwrap_or_default();
                notes.push(format!(
                    "{} paused by {} since {}{reason}",
                    r.key, p.paused_by, p.since
                ));
            }
            let mut c = vec![
                Cell::plain(r.key.clone()),
                Cell::plain(schedule_text(&r.schedule)),
                Cell::plain(
                    r.last_tick_at
                        .as_deref()
                        .map_or("never".into(), |at| relative(at, now)),
                ),
                Cell::plain(status.join(",")),
                Cell::plain(next_tick(r, now)),
            ];
            if wide {
                c.push(Cell::plain(r.ticks_run.to_string()));
                c.push(Cell::plain(r.ticks_skipped.to_string()));
                c.push(Cell::plain(
                    r.last_event.clone().unwrap_or_else(|| "-".into()),
                ));
            }
            c.push(Cell::plain(r.cloud_yaml.clone()));
            c
        })
        .collect();
    let mut out = if cells.is_empty() {
        Vec::new()
    } else {
        crate::columns::render(&columns, &cells, view.width, view.color)
    };
    for n in notes {
        out.extend(crate::columns::wrap(&n, view.width, "", "  "));
    }
    if let Some(f) = crate::columns::footer(shown.len(), total) {
        out.push(f);
    }
    let mut text = out.join("\n");
    text.push('\n');
    text
}

pub fn ticks_table(rows: &[TickRecord], more: bool, view: TableView) {
    if rows.is_empty() && !more {
        eprintln!("no tick reports stored");
        return;
    }
    print!("{}", ticks_text(rows, more, chrono::Utc::now(), view));
}

/// The tick history as a table (pure, like [`registrations_text`]). `more`: the daemon holds
/// older reports than these.
pub fn ticks_text(
    rows: &[TickRecord],
    more: bool,
    now: chrono::DateTime<chrono::Utc>,
    view: TableView,
) -> String {
    use crate::columns::{Cell, Column, Fit};
    let columns = [
        Column {
            header: "WHEN",
            fit: Fit::Keep,
        },
        Column {
            header: "KEY",
            fit: Fit::Keep,
        },
        Column {
            header: "TRIGGER",
            fit: Fit::Keep,
        },
        Column {
            header: "EVENT",
            fit: Fit::Cut { min: 7 },
        },
        Column {
            header: "TOOK",
            fit: Fit::Keep,
        },
        Column {
            header: "REASON",
            fit: Fit::Cut { min: 6 },
        },
    ];
    let cells: Vec<Vec<Cell>> = rows
        .iter()
        .map(|rec| {
            let event = rec.event.as_str();
            vec![
                Cell::plain(relative(&rec.finished_at, now)),
                Cell::plain(rec.key.clone()),
                Cell::plain(rec.trigger.clone()),
                Cell::plain(
                    event
                        .strip_prefix("supervisor_")
                        .unwrap_or(event)
                        .to_string(),
                ),
                Cell::plain(format!("{:.1}s", rec.duration_ms as f64 / 1000.0)),
                Cell::plain(
                    rec.refused_reason
                        .as_deref()
                        .map(|r| crate::output::strip_controls(r).replace('\n', " "))
                        .unwrap_or_else(|| "-".into()),
                ),
            ]
        })
        .collect();
    let mut out = if cells.is_empty() {
        Vec::new()
    } else {
        crate::columns::render(&columns, &cells, view.width, view.color)
    };
    if more {
        out.push(format!(
            "showing the newest {}; -n N shows more",
            rows.len()
        ));
    }
    let mut text = out.join("\n");
    text.push('\n');
    text
}

pub fn tick_record_line(t: &TickRecord) -> String {
    let mut line = format!(
        "{}  {}  {:<9} {} | acted={} | next_action={}",
        t.finished_at, t.key, t.trigger, t.event, t.acted, t.next_action
    );
    if let Some(r) = &t.refused_reason {
        line.push_str(&format!(" | refused_reason={r}"));
    }
    line
}

/// The checklist: one line per check, `verdict  subject: what was found`, and under a check
/// that needs something done, the fix, indented so the verdicts stay a column to scan.
pub fn doctor_checks(v: &Value) -> Vec<String> {
    let mut lines = Vec::new();
    for c in v["checks"].as_array().into_iter().flatten() {
        let verdict = match s(c, "verdict") {
            "ok" => "ok  ",
            "warn" => "WARN",
            "fail" => "FAIL",
            _ => "skip",
        };
        let head = format!("{verdict}  {}: {}", s(c, "name"), s(c, "detail"));
        lines.extend(wrap_words("", &head, DOCTOR_WIDTH, "      "));
        if let Some(fix) = c["fix"].as_str() {
            lines.extend(wrap_words("      fix: ", fix, DOCTOR_WIDTH, "           "));
        }
    }
    lines
}

/// The terminal width the checklist is written for.
const DOCTOR_WIDTH: usize = 80;

/// `first` then `text` broken at spaces into lines of at most `width` characters (a single
/// longer word, such as a path, keeps its own line), continuation lines starting with `indent`.
fn wrap_words(first: &str, text: &str, width: usize, indent: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = first.to_string();
    let mut fresh = true;
    for word in text.split(' ') {
        let fits = line.chars().count() + 1 + word.chars().count() <= width;
        if fresh {
            line.push_str(word);
            fresh = false;
        } else if fits {
            line.push(' ');
            line.push_str(word);
        } else {
            lines.push(std::mem::replace(&mut line, format!("{indent}{word}")));
        }
    }
    lines.push(line);
    lines
}

/// `doctor`, for a person on a terminal (scripts get the JSON document instead).
pub fn doctor(v: &Value) {
    for line in doctor_checks(v) {
        println!("{line}");
    }
    let markers = v["markers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    println!(
        "state root {}: {} last-chain marker(s)",
        s(v, "cloud_home"),
        markers.len()
    );
    for m in markers {
        let cy = m["cloud_yaml"]
            .as_str()
            .unwrap_or("no cloud.yaml found for this key");
        if m["importable"] == true {
            println!(
                "  [importable] {}  {}  spec={}",
                s(m, "key"),
                cy,
                s(m, "remote_spec")
            );
        } else {
            println!(
                "  [not importable] {}  {}: {}",
                s(m, "key"),
                s(m, "file"),
                s(m, "problem")
            );
        }
        for u in m["unmapped"].as_array().into_iter().flatten() {
            println!("      not mapped: {}", u.as_str().unwrap_or_default());
        }
    }
    let yamls = v["cloud_yamls"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    println!("{} cloud.yaml file(s) found", yamls.len());
    for y in yamls {
        let marker = if y["has_marker"] == true {
            "marker"
        } else {
            "no marker"
        };
        println!("  {} ({marker})", s(y, "path"));
        match y["warnings"].as_array() {
            Some(ws) => {
                for w in ws {
                    println!("      warning: {}", w.as_str().unwrap_or_default());
                }
            }
            None => println!("      keys not checked: start megaplan-cloudd and run doctor again"),
        }
    }
    if v["searched"]["truncated"] == true {
        println!("the home walk stopped at its budget; pass --cloud-yaml PATH for files it missed");
    }
}

pub fn notifications_table(v: &Value) {
    let rows = v.as_array().cloned().unwrap_or_default();
    if rows.is_empty() {
        eprintln!(
            "no notifications; sinks are set with `register --notify-url/--notify-command` or the daemon's notify.yaml"
        );
        return;
    }
    for r in rows {
        let mut line = format!(
            "{}  {}  {:<18} {:<9} attempts={}  {}",
            s(&r, "created_at"),
            s(&r, "key"),
            s(&r, "event"),
            s(&r, "status"),
            r["attempts"],
            s(&r, "sink")
        );
        if let Some(e) = r["last_error"].as_str() {
            line.push_str(&format!(" | {e}"));
        }
        println!("{line}");
    }
    for line in sink_breaker_lines(v) {
        println!("{line}");
    }
}

/// One line per sink of the listed rows: its breaker (`closed`, `open until T`, `half-open`),
/// failures in a row and deliveries in flight.
pub fn sink_breaker_lines(v: &Value) -> Vec<String> {
    let mut seen = std::collections::BTreeMap::new();
    for r in v.as_array().into_iter().flatten() {
        let b = &r["breaker"];
        if let Some(sink) = b["sink"].as_str() {
            seen.entry(sink.to_string()).or_insert_with(|| b.clone());
        }
    }
    let mut out = Vec::new();
    if !seen.is_empty() {
        out.push("sinks:".to_string());
    }
    for (sink, b) in seen {
        let state = match b["state"].as_str() {
            Some("open") => format!("open until {}", s(&b, "open_until")),
            Some("half_open") => "half-open (one probe running)".to_string(),
            Some(other) => other.to_string(),
            None => "-".to_string(),
        };
        out.push(format!(
            "  {sink}  {state}  failures in a row={}  in flight={}",
            b["consecutive_failures"], b["in_flight"]
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::parse_from_rfc3339("2026-12-01T12:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc)
    }

    fn listed(rows: Vec<serde_json::Value>) -> Vec<RegistrationListed> {
        rows.into_iter()
            .map(|mut r| {
                if let Some(o) = r.as_object_mut() {
                    o.entry("created_at")
                        .or_insert(json!("2026-12-01T00:00:00Z"));
                }
                serde_json::from_value(r).unwrap()
            })
            .collect()
    }

    const WIDE: TableView = TableView {
        width: None,
        color: false,
        limit: None,
    };

    #[test]
    fn byte_counts_read_in_binary_units() {
        assert_eq!(bytes_text(512), "512 B");
        assert_eq!(bytes_text(1536), "1.5 KiB");
        assert_eq!(bytes_text(256 << 20), "256.0 MiB");
        assert_eq!(bytes_text(3 << 30), "3.0 GiB");
    }

    #[test]
    fn paused_and_stalled_registrations_say_so() {
        let rows = vec![
            json!({"key": "0123456789abcdef", "cloud_yaml": "/p/cloud.yaml",
            "schedule": "every:60", "ticks_run": 1, "ticks_skipped": 0, "stalled": true,
            "paused": {"paused_by": "op@host", "since": "2026-12-01T11:00:00Z",
                       "reason": "manual repair"}}),
        ];
        let text = registrations_text(&listed(rows), now(), WIDE);
        assert!(text.contains("paused,stalled"), "{text}");
        assert!(
            text.contains("paused by op@host since 2026-12-01T11:00:00Z: manual repair"),
            "{text}"
        );
    }

    #[test]
    fn a_registration_backing_off_says_why_and_until_when() {
        let rows = vec![
            json!({"key": "0123456789abcdef", "cloud_yaml": "/p/cloud.yaml",
            "schedule": "every:10", "ticks_run": 3, "ticks_skipped": 2,
            "backoff": {"strikes": 3, "since": "2026-12-01T11:58:00Z",
                        "until": "2026-12-01T12:01:00Z", "skipped": 2,
                        "reason": "chain status read failed: the resident observer did not answer within 3s; it was ended"}}),
            json!({"key": "fedcba9876543210", "cloud_yaml": "/p/b/cloud.yaml",
                   "schedule": "every:10", "ticks_run": 9, "ticks_skipped": 0}),
        ];
        let text = registrations_text(&listed(rows), now(), WIDE);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[1].contains("backoff"), "{text}");
        assert!(!lines[2].contains("backoff"), "{text}");
        assert!(
            text.contains("0123456789abcdef backing off until 2026-12-01T12:01:00Z after 3 tick(s) in a row hit their deadline (2 skipped): chain status read failed"),
            "{text}"
        );
    }

    #[test]
    fn each_sink_shows_its_breaker_once() {
        let open = json!({"sink": "http://127.0.0.1:9", "state": "open",
            "open_until": "2026-12-01T13:00:00.000Z", "consecutive_failures": 5, "in_flight": 0});
        let rows = json!([
            {"key": "k", "event": "complete", "status": "pending", "attempts": 1, "breaker": open},
            {"key": "k", "event": "complete", "status": "pending", "attempts": 1, "breaker": open},
            {"key": "k", "event": "complete", "status": "delivered", "attempts": 1,
             "breaker": {"sink": "command cat", "state": "closed", "open_until": null,
                         "consecutive_failures": 0, "in_flight": 0}},
        ]);
        assert_eq!(
            sink_breaker_lines(&rows),
            [
                "sinks:",
                "  command cat  closed  failures in a row=0  in flight=0",
                "  http://127.0.0.1:9  open until 2026-12-01T13:00:00.000Z  failures in a row=5  in flight=0",
            ]
        );
    }

    #[test]
    fn relative_times() {
        assert_eq!(relative("2026-12-01T11:57:00Z", now()), "3m ago");
        assert_eq!(relative("2026-12-01T14:30:00+00:00", now()), "in 2h30m");
        assert_eq!(relative("2026-11-28T12:00:00Z", now()), "3d ago");
        assert_eq!(relative("2026-12-01T12:00:00Z", now()), "now");
    }

    #[test]
    fn registrations_columns_line_up_and_show_next() {
        let rows = vec![
            json!({"key": "0123456789abcdef", "cloud_yaml": "/p/a/cloud.yaml",
                   "schedule": "every:300", "last_tick_at": "2026-12-01T11:58:00Z",
                   "last_event": "supervisor_error", "last_success": false,
                   "ticks_run": 11, "ticks_skipped": 0}),
            json!({"key": "fedcba9876543210", "cloud_yaml": "/p/b/cloud.yaml",
                   "schedule": "cron:0 */5 * * * *", "last_event": null,
                   "ticks_run": 1234, "ticks_skipped": 7}),
        ];
        let text = registrations_text(&listed(rows.clone()), now(), WIDE);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].contains("NEXT") && lines[0].contains("STATUS"),
            "{text}"
        );
        assert!(
            lines[1].contains("every 5m") && lines[1].contains("in 3m"),
            "{text}"
        );
        assert!(lines[2].contains("never"), "{text}");
        // At 80 columns nothing wraps and the key stays whole; -n cuts with a footer.
        let mut many = rows;
        for i in 0..5 {
            many.push(json!({"key": format!("00000000000000a{i}"),
                "cloud_yaml": format!("/home/someone/a/very/long/path/to/project-{i}/cloud.yaml"),
                "schedule": "cron:0 */5 * * * *", "ticks_run": 3, "ticks_skipped": 0}));
        }
        let narrow = TableView {
            width: Some(80),
            color: false,
            limit: Some(4),
        };
        let text = registrations_text(&listed(many), now(), narrow);
        for l in text.lines() {
            assert!(crate::columns::chars(l) <= 80, "{l}");
        }
        assert!(text.contains("00000000000000a1"), "{text}");
        assert!(text.contains('…'), "{text}");
        assert!(text.ends_with("showing 4 of 7\n"), "{text}");
        let none = TableView {
            limit: Some(0),
            ..narrow
        };
        assert_eq!(registrations_text(&listed(vec![]), now(), none), "\n");
    }

    #[test]
    fn the_tick_table_fits_80_columns_and_says_when_cut() {
        let rec = |id: i64, reason: Option<&str>| -> TickRecord {
            serde_json::from_value(json!({
                "id": id, "key": "0123456789abcdef", "cloud_yaml": "/p/cloud.yaml",
                "trigger": "schedule", "started_at": "2026-12-01T11:58:00Z",
                "finished_at": "2026-12-01T11:58:01Z", "duration_ms": 812, "success": true,
                "event": "supervisor_blocked", "next_action": "blocked", "acted": false,
                "refused_reason": reason,
                "report": {"acted": false, "effective_status": "running", "event": "supervisor_blocked",
                           "next_action": "blocked", "success": true}
            }))
            .unwrap()
        };
        let long = "chain status read failed: missing_remote_spec: no remote chain spec for /tmp/cap/p1/cloud.yaml: pass --remote-spec";
        let rows = vec![rec(2, Some(long)), rec(1, None)];
        let view = TableView {
            width: Some(80),
            color: false,
            limit: None,
        };
        let text = ticks_text(&rows, true, now(), view);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines.len(),
            4,
            "one line per report, nothing wraps:\n{text}"
        );
        for l in &lines {
            assert!(crate::columns::chars(l) <= 80, "{l}");
        }
        assert!(
            lines[1].contains("0123456789abcdef") && lines[1].ends_with('…'),
            "{text}"
        );
        assert!(lines[3].starts_with("showing the newest 2"), "{text}");
        let wide = ticks_text(
            &rows,
            false,
            now(),
            TableView {
                width: None,
                ..view
            },
        );
        assert!(wide.contains(long), "{wide}");
    }
}
