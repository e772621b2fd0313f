//! Human renderings (tables and one-liners). JSON output never goes through here.

use megaplan_cloud_api::wire::TickRecord;
use serde_json::Value;

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("-")
}

pub fn health(v: &Value) {
    let t = &v["ticks"];
    println!(
        "megaplan-cloudd {} (API v{})",
        s(v, "version"),
        v["api_version"]
    );
    println!("  pid:           {}", v["pid"]);
    println!(
        "  uptime:        {}s (since {})",
        v["uptime_secs"],
        s(v, "started_at")
    );
    println!("  socket:        {}", s(v, "socket"));
    println!("  database:      {}", s(v, "database"));
    println!("  state root:    {}", s(v, "cloud_home"));
    println!("  registrations: {}", v["registrations"]);
    println!(
        "  ticks:         {} run, {} failed, {} skipped",
        t["run"], t["failed"], t["skipped"]
    );
    println!("  ssh sessions:  {}", v["ssh_sessions"]);
    if let Some(tools) = v["tools"].as_object() {
        let seen: Vec<String> = tools
            .iter()
            .map(|(k, p)| format!("{k}={}", p.as_str().unwrap_or("missing")))
            .collect();
        println!("  tools:         {}", seen.join(" "));
    }
}

pub fn registrations_table(v: &Value) {
    let rows = v.as_array().cloned().unwrap_or_default();
    if rows.is_empty() {
        eprintln!("no registrations; add one with `megaplan-cloudctl register --cloud-yaml PATH`");
        return;
    }
    println!(
        "{:<16}  {:<18}  {:<20}  {:>5}  {:>7}  {:<8}  CLOUD.YAML",
        "KEY", "SCHEDULE", "LAST EVENT", "TICKS", "SKIPPED", "WATCH"
    );
    for r in rows {
        let mut watch = Vec::new();
        if r["paused"].is_object() {
            watch.push("paused");
        }
        if r["stalled"].as_bool() == Some(true) {
            watch.push("stalled");
        }
        let watch = if watch.is_empty() {
            "-".to_string()
        } else {
            watch.join(",")
        };
        println!(
            "{:<16}  {:<18}  {:<20}  {:>5}  {:>7}  {:<8}  {}",
            s(&r, "key"),
            s(&r, "schedule"),
            s(&r, "last_event"),
            r["ticks_run"],
            r["ticks_skipped"],
            watch,
            s(&r, "cloud_yaml")
        );
        if let Some(p) = r["paused"].as_object() {
            let reason = p
                .get("reason")
                .and_then(Value::as_str)
                .map(|r| format!(": {r}"))
                .unwrap_or_default();
            println!(
                "  paused by {} since {}{reason}",
                p.get("paused_by").and_then(Value::as_str).unwrap_or("?"),
                p.get("since").and_then(Value::as_str).unwrap_or("?")
            );
        }
    }
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
    for r in rows {
        if let Ok(rec) = serde_json::from_value::<TickRecord>(r) {
            println!("{}", tick_record_line(&rec));
        }
    }
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

/// The seed's one-line summary of a tick report.
pub fn tick_line(report: &Value) -> String {
    let mut line = format!(
        "supervisor tick: {} | acted={} | next_action={}",
        s(report, "event"),
        report["acted"].as_bool().unwrap_or(false),
        s(report, "next_action")
    );
    if let Some(r) = report["refused_reason"].as_str() {
        line.push_str(&format!(" | refused_reason={r}"));
    }
    line
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
}
