//! Human renderings (tables and one-liners). JSON output never goes through here.

use megaplan_cloud_api::wire::{Health, TickRecord};
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

/// 109 → "1m49s", 7384 → "2h03m", 200000 → "2d07h".
pub fn duration_text(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m{:02}s", secs / 60, secs % 60),
        3600..=86_399 => format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60),
        _ => format!("{}d{:02}h", secs / 86_400, (secs % 86_400) / 3600),
    }
}

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

/// `every:300` → "every 5m"; `cron:…` → "cron …".
pub fn schedule_text(stored: &str) -> String {
    match stored.split_once(':') {
        Some(("every", secs)) => match secs.parse::<u64>() {
            Ok(n) if n % 86_400 == 0 => format!("every {}d", n / 86_400),
            Ok(n) if n % 3600 == 0 => format!("every {}h", n / 3600),
            Ok(n) if n % 60 == 0 => format!("every {}m", n / 60),
            Ok(n) => format!("every {n}s"),
            Err(_) => stored.to_string(),
        },
        Some(("cron", expr)) => format!("cron {expr}"),
        _ => stored.to_string(),
    }
}

/// When the next tick is due: the daemon's own figure when it reports one, else one interval
/// after the last tick for `every` schedules; "-" when it cannot be known here.
fn next_tick(r: &Value, now: chrono::DateTime<chrono::Utc>) -> String {
    for k in ["next_due_at", "next_tick_at"] {
        if let Some(at) = r.get(k).and_then(Value::as_str) {
            return relative(at, now);
        }
    }
    let every = s(r, "schedule")
        .strip_prefix("every:")
        .and_then(|n| n.parse::<i64>().ok());
    match (every, r.get("last_tick_at").and_then(Value::as_str)) {
        (Some(n), Some(last)) => match chrono::DateTime::parse_from_rfc3339(last) {
            Ok(t) => relative(&(t + chrono::Duration::seconds(n)).to_rfc3339(), now),
            Err(_) => "-".into(),
        },
        (Some(_), None) => "soon".into(),
        _ => "-".into(),
    }
}

fn table(header: &[&str]) -> comfy_table::Table {
    let mut t = comfy_table::Table::new();
    t.load_style(comfy_table::presets::NOTHING)
        .set_content_arrangement(comfy_table::ContentArrangement::Dynamic)
        .set_header(header.iter().map(|h| {
            let cell = comfy_table::Cell::new(h);
            if crate::output::get().color {
                cell.add_attribute(comfy_table::Attribute::Bold)
            } else {
                cell
            }
        }));
    t
}

fn right(t: &mut comfy_table::Table, columns: &[usize]) {
    for &i in columns {
        if let Some(c) = t.column_mut(i) {
            c.set_cell_alignment(comfy_table::CellAlignment::Right);
        }
    }
}

pub fn registrations_table(v: &Value) {
    let rows = v.as_array().cloned().unwrap_or_default();
    if rows.is_empty() {
        eprintln!("no registrations; add one with `megaplan-cloudctl register --cloud-yaml PATH`");
        return;
    }
    println!("{}", registrations_text(&rows, chrono::Utc::now()));
}

/// The registrations table as text (pure: `now` is passed in, so it can be tested).
pub fn registrations_text(rows: &[Value], now: chrono::DateTime<chrono::Utc>) -> String {
    let mut t = table(&[
        "KEY",
        "SCHEDULE",
        "LAST TICK",
        "LAST EVENT",
        "LAST OK",
        "NEXT",
        "TICKS",
        "SKIPPED",
        "WATCH",
        "CLOUD.YAML",
    ]);
    let mut notes = Vec::new();
    for r in rows {
        let mut watch = Vec::new();
        if r["paused"].is_object() {
            watch.push("paused");
        }
        if r["stalled"].as_bool() == Some(true) {
            watch.push("stalled");
        }
        if let Some(b) = r["backoff"].as_object() {
            watch.push("backoff");
            let field = |k: &str| {
                b.get(k)
                    .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                    .unwrap_or_else(|| "?".into())
            };
            notes.push(format!(
                "{} backing off until {} after {} tick(s) in a row hit their deadline ({} skipped): {}",
                s(r, "key"),
                field("until"),
                field("strikes"),
                field("skipped"),
                field("reason")
            ));
        }
        let watch = if watch.is_empty() {
            "-".to_string()
        } else {
            watch.join(",")
        };
        if let Some(p) = r["paused"].as_object() {
            let reason = p
                .get("reason")
                .and_then(Value::as_str)
                .map(|r| format!(": {r}"))
                .unwrap_or_default();
            notes.push(format!(
                "{} paused by {} since {}{reason}",
                s(r, "key"),
                p.get("paused_by").and_then(Value::as_str).unwrap_or("?"),
                p.get("since").and_then(Value::as_str).unwrap_or("?")
            ));
        }
        let last_ok = match r.get("last_success").and_then(Value::as_bool) {
            Some(true) => "yes",
            Some(false) => "no",
            None => "-",
        };
        t.add_row(vec![
            s(r, "key").to_string(),
            schedule_text(s(r, "schedule")),
            r.get("last_tick_at")
                .and_then(Value::as_str)
                .map_or("never".into(), |at| relative(at, now)),
            s(r, "last_event").to_string(),
            last_ok.to_string(),
            next_tick(r, now),
            r.get("ticks_run")
                .and_then(Value::as_u64)
                .unwrap_or(0)
                .to_string(),
            r.get("ticks_skipped")
                .and_then(Value::as_u64)
                .unwrap_or(0)
                .to_string(),
            watch,
            s(r, "cloud_yaml").to_string(),
        ]);
    }
    right(&mut t, &[6, 7]);
    let mut text = t.to_string();
    for n in notes {
        text.push('\n');
        text.push_str(&n);
    }
    text
}

/// Print a JSON list of strings, one per line.
pub fn lines(v: &Value) {
    for l in v.as_array().into_iter().flatten() {
        println!("{}", l.as_str().unwrap_or_default());
    }
}

pub fn ticks_table(v: &Value) {
    let rows = v.as_array().cloned().unwrap_or_default();
    if rows.is_empty() {
        eprintln!("no tick reports stored");
        return;
    }
    println!("{}", ticks_text(&rows, chrono::Utc::now()));
}

/// The tick history as a table (pure, like [`registrations_text`]).
pub fn ticks_text(rows: &[Value], now: chrono::DateTime<chrono::Utc>) -> String {
    let mut t = table(&[
        "WHEN",
        "KEY",
        "TRIGGER",
        "EVENT",
        "ACTED",
        "NEXT ACTION",
        "TOOK",
        "REASON",
    ]);
    for r in rows {
        let Ok(rec) = serde_json::from_value::<TickRecord>(r.clone()) else {
            continue;
        };
        t.add_row(vec![
            relative(&rec.finished_at, now),
            rec.key.clone(),
            rec.trigger.clone(),
            rec.event.to_string(),
            if rec.acted { "yes" } else { "no" }.to_string(),
            rec.next_action.to_string(),
            format!("{:.1}s", rec.duration_ms as f64 / 1000.0),
            rec.refused_reason
                .as_deref()
                .map(crate::output::strip_controls)
                .unwrap_or_default(),
        ]);
    }
    right(&mut t, &[6]);
    t.to_string()
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

/// `doctor`, for people (stderr; the JSON went to stdout).
pub fn doctor(v: &Value) {
    let markers = v["markers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    eprintln!(
        "state root {}: {} last-chain marker(s)",
        s(v, "cloud_home"),
        markers.len()
    );
    for m in markers {
        let cy = m["cloud_yaml"]
            .as_str()
            .unwrap_or("no cloud.yaml found for this key");
        if m["importable"] == true {
            eprintln!(
                "  [importable] {}  {}  spec={}",
                s(m, "key"),
                cy,
                s(m, "remote_spec")
            );
        } else {
            eprintln!(
                "  [not importable] {}  {}: {}",
                s(m, "key"),
                s(m, "file"),
                s(m, "problem")
            );
        }
        for u in m["unmapped"].as_array().into_iter().flatten() {
            eprintln!("      not mapped: {}", u.as_str().unwrap_or_default());
        }
    }
    let yamls = v["cloud_yamls"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    eprintln!("{} cloud.yaml file(s) found", yamls.len());
    for y in yamls {
        let marker = if y["has_marker"] == true {
            "marker"
        } else {
            "no marker"
        };
        eprintln!("  {} ({marker})", s(y, "path"));
        match y["warnings"].as_array() {
            Some(ws) => {
                for w in ws {
                    eprintln!("      warning: {}", w.as_str().unwrap_or_default());
                }
            }
            None => eprintln!("      keys not checked: start megaplan-cloudd and run doctor again"),
        }
    }
    if v["searched"]["truncated"] == true {
        eprintln!(
            "the home walk stopped at its budget; pass --cloud-yaml PATH for files it missed"
        );
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
        let text = registrations_text(&rows, now());
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
        let text = registrations_text(&rows, now());
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
        let text = registrations_text(&rows, now());
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].contains("NEXT") && lines[0].contains("LAST OK"),
            "{text}"
        );
        assert!(
            lines[1].contains("every 5m") && lines[1].contains("in 3m"),
            "{text}"
        );
        assert!(lines[2].contains("never"), "{text}");
        // Right-aligned counts: the numbers end in the same column.
        let end = |l: &str, n: &str| l.find(n).map(|i| i + n.len());
        assert_eq!(end(lines[1], " 11 "), end(lines[2], " 1234 "), "{text}");
    }
}
