//! One registration's life: `register`, `unregister`, `registrations`, `tick`, `pause`,
//! `unpause` and `explain`. Each sends its typed request and renders the typed answer for the
//! question asked ("is it registered, and when does it tick?", "what did this tick do?").

use super::chain::Style;
use crate::cli::Cmd;
use crate::failure::{fail, fail_for, usage_error};
use crate::target::Target;
use crate::{cli, columns, output, render};
use hyper::Method;
use megaplan_cloud_api::routes;
use megaplan_cloud_api::wire::{
    Explanation, PauseRequest, PauseResponse, RegisterRequest, RegisterResponse,
    RegistrationListed, TickNowResponse, UnpauseResponse,
};
use megaplan_cloudctl::client::{self, DaemonClient};
use serde_json::Value;
use std::io::Write;

/// Run one of this family's commands.
pub async fn run(client: &DaemonClient, target: &Target, cmd: Cmd) -> i32 {
    match cmd {
        Cmd::Register {
            every,
            cron,
            tz,
            remote_spec,
            notify,
        } => {
            let schedule = Asked { every, cron, tz };
            register(client, &target.shown(), schedule, remote_spec, notify).await
        }
        Cmd::Unregister { .. } => unregister(client, target).await,
        Cmd::Registrations { wide, limit } => registrations(client, table_view(wide, limit)).await,
        Cmd::Tick { .. } => tick(client, target).await,
        Cmd::Pause { reason, .. } => pause(client, target, reason).await,
        Cmd::Unpause { .. } => unpause(client, target).await,
        Cmd::Explain { .. } => explain(client, target).await,
        other => super::runner::not_mine(&other),
    }
}

/// `register`: the schedule checked here (a usage error before the daemon is asked), the
/// registration echoed with its key, schedule and next ticks.
pub async fn register(
    client: &DaemonClient,
    cloud_yaml: &str,
    asked: Asked,
    remote_spec: Option<String>,
    notify: cli::NotifyArgs,
) -> i32 {
    // A value the client can tell is wrong is a usage error (exit 2, like clap's), said before
    // the daemon is asked.
    let every_secs = match asked.every.as_deref().map(cli::parse_every).transpose() {
        Ok(v) => v,
        Err(e) => return usage_error(e),
    };
    let cron = match asked.cron.as_deref().map(cli::normalise_cron).transpose() {
        Ok(v) => v,
        Err(e) => return usage_error(e),
    };
    let cron = match cron {
        Some(expr) => match cli::cron_zone(asked.tz.as_deref()) {
            Ok(zone) => Some(cli::cron_in_zone(&expr, &zone)),
            Err(e) => return usage_error(e),
        },
        None => None,
    };
    let req = RegisterRequest {
        cloud_yaml: cloud_yaml.to_string(),
        every_secs,
        cron,
        remote_spec,
        notify_urls: notify.notify_urls,
        notify_command: notify.notify_command,
        notify_preset: notify.notify_preset,
        no_notify: notify.no_notify,
    };
    let body = serde_json::to_value(&req).unwrap_or(Value::Null);
    match client.json(Method::POST, routes::CLOUDS, Some(&body)).await {
        Ok(v) => {
            if output::json_mode() {
                output::print_json_doc(&v);
                return 0;
            }
            match serde_json::from_value::<RegisterResponse>(v) {
                Ok(r) => {
                    let width = columns::terminal_width();
                    let (warned, echo) = register_text(&r, cloud_yaml, chrono::Utc::now(), width);
                    // The warnings are part of the answer, even with --quiet.
                    print!("{warned}");
                    output::say(echo.trim_end());
                }
                Err(e) => output::say(&format!(
                    "registered {cloud_yaml} (the daemon's answer does not read as a registration: {e})"
                )),
            }
            0
        }
        Err(e) => fail(e),
    }
}

/// What `register` was asked to schedule.
pub struct Asked {
    pub every: Option<String>,
    pub cron: Option<String>,
    pub tz: Option<String>,
}

/// The register echo: the warnings (once, with the answer; the first string), then the key, the schedule with its zone,
/// and the next three ticks as `systemd-analyze calendar` shows them, in the schedule's zone
/// (this machine's for an interval) and how far away.
pub fn register_text(
    r: &RegisterResponse,
    cloud_yaml: &str,
    now: chrono::DateTime<chrono::Utc>,
    width: usize,
) -> (String, String) {
    let mut warned = String::new();
    for w in &r.warnings {
        let lines = columns::wrap(&format!("warning: {w}"), Some(width), "", "  ");
        for (i, l) in lines.iter().enumerate() {
            match l.strip_prefix("warning:").filter(|_| i == 0) {
                Some(rest) => {
                    warned.push_str(&format!("{}{rest}\n", output::paint("warning:", "33")))
                }
                None => warned.push_str(&format!("{l}\n")),
            }
        }
    }
    let zone = match r.schedule.strip_prefix("cron:") {
        Some(expr) => jiff::tz::TimeZone::get(render::cron_zone_of(expr).0).ok(),
        None => Some(jiff::tz::TimeZone::system()),
    };
    let mut text = format!(
        "registered {cloud_yaml}\n  key        {}\n  schedule   {}\n",
        r.key,
        render::schedule_text(&r.schedule)
    );
    let runs = r.next_runs.iter().filter_map(|at| {
        let t: jiff::Timestamp = at.parse().ok()?;
        let shown = match &zone {
            Some(z) => t
                .to_zoned(z.clone())
                .strftime("%a %Y-%m-%d %H:%M:%S %Z")
                .to_string(),
            None => at.clone(),
        };
        Some(format!("{shown} ({})", render::relative(at, now)))
    });
    for (i, run) in runs.enumerate() {
        let label = if i == 0 { "next ticks" } else { "" };
        text.push_str(&format!("  {label:<10} {run}\n"));
    }
    (warned, text)
}

pub fn table_view(wide: bool, limit: Option<usize>) -> render::TableView {
    render::TableView {
        width: (!wide).then(columns::terminal_width),
        color: output::get().color,
        limit,
    }
}

/// `registrations`: the table of every registration.
pub async fn registrations(client: &DaemonClient, view: render::TableView) -> i32 {
    match client.json(Method::GET, routes::CLOUDS, None).await {
        Ok(v) if output::json_mode() => {
            output::print_json_doc(&v);
            0
        }
        Ok(v) => match client::parse_answer::<Vec<RegistrationListed>>(routes::CLOUDS, v) {
            Ok(rows) => {
                render::registrations_table(&rows, view);
                0
            }
            Err(e) => fail(e),
        },
        Err(e) => fail(e),
    }
}

/// `unregister`: no more ticks for it.
pub async fn unregister(client: &DaemonClient, target: &Target) -> i32 {
    let cy = target.shown();
    match client
        .json(Method::DELETE, &routes::cloud(&target.key()), None)
        .await
    {
        Ok(v) => {
            if output::json_mode() {
                output::print_json_doc(&v);
            }
            output::say(&format!("unregistered {cy}: it is no longer ticked"));
            0
        }
        Err(e) => fail_for(e, &cy),
    }
}

/// `tick`: one tick now, and what it saw and did.
pub async fn tick(client: &DaemonClient, target: &Target) -> i32 {
    let cy = target.shown();
    let v = match client
        .json(Method::POST, &routes::cloud_tick(&target.key()), None)
        .await
    {
        Ok(v) => v,
        Err(e) => return fail_for(e, &cy),
    };
    let json = output::json_mode();
    if json {
        output::print_json_doc(&v);
    }
    match serde_json::from_value::<TickNowResponse>(v) {
        Ok(TickNowResponse::Ran(rec)) => {
            if !json {
                let now = chrono::Utc::now();
                print!(
                    "{}",
                    super::chain::tick_text(Some(&rec), &rec.report, now, Style::of_terminal())
                );
            } else if !rec.success {
                // Through a pipe stderr carries only a failure: its one line.
                eprintln!("{}", rec.report);
            }
            i32::from(!rec.success)
        }
        Ok(TickNowResponse::Skipped(s)) => {
            eprintln!("{}", s.message);
            1
        }
        Err(e) => {
            eprintln!("megaplan-cloudctl: the daemon's tick answer is not a tick record ({e})");
            1
        }
    }
}

/// `pause`: ticks observe but never act.
pub async fn pause(client: &DaemonClient, target: &Target, reason: Option<String>) -> i32 {
    let cy = target.shown();
    let by = format!("{}@{}", user_name(), hostname());
    let body = serde_json::to_value(PauseRequest { by, reason }).unwrap_or(Value::Null);
    let path = routes::cloud_pause(&target.key());
    match client.json(Method::POST, &path, Some(&body)).await {
        Ok(v) => {
            if output::json_mode() {
                output::print_json_doc(&v);
            }
            let by = serde_json::from_value::<PauseResponse>(v)
                .map(|r| r.paused.paused_by)
                .unwrap_or_else(|_| "?".into());
            output::say(&format!(
                "paused {cy} (by {by}): ticks observe but never act until `megaplan-cloudctl unpause`"
            ));
            0
        }
        Err(e) => fail_for(e, &cy),
    }
}

/// `unpause`: ticks may act again.
pub async fn unpause(client: &DaemonClient, target: &Target) -> i32 {
    let cy = target.shown();
    let path = routes::cloud_pause(&target.key());
    match client.json(Method::DELETE, &path, None).await {
        Ok(v) => {
            if output::json_mode() {
                output::print_json_doc(&v);
            }
            let was = serde_json::from_value::<UnpauseResponse>(v)
                .map(|r| r.was_paused.is_some())
                .unwrap_or(true);
            output::say(&if was {
                format!("unpaused {cy}: ticks may act again")
            } else {
                format!("{cy} was not paused")
            });
            0
        }
        Err(e) => fail_for(e, &cy),
    }
}

/// `explain`: why the supervisor did what it did, in its own lines.
pub async fn explain(client: &DaemonClient, target: &Target) -> i32 {
    let cy = target.shown();
    let path = routes::cloud_explain(&target.key());
    match client.json(Method::GET, &path, None).await {
        Ok(v) if output::json_mode() => {
            output::print_json_doc(&v);
            0
        }
        Ok(v) => match client::parse_answer::<Explanation>(&path, v) {
            Ok(e) => {
                let mut o = std::io::stdout().lock();
                for line in &e.lines {
                    let _ = writeln!(o, "{line}");
                }
                0
            }
            Err(e) => fail(e),
        },
        Err(e) => fail_for(e, &cy),
    }
}

/// Who pauses: `$USER` or `$LOGNAME`, else the password database's name of this uid (a
/// service or `sudo -i` shell may set neither), else `uid<n>`; never "unknown".
fn user_name() -> String {
    for var in ["USER", "LOGNAME"] {
        if let Ok(name) = std::env::var(var)
            && !name.is_empty()
        {
            return name;
        }
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    // SAFETY: `passwd` is plain data (integers and pointers); all-zero is a valid value that
    // getpwuid_r overwrites.
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: getpwuid_r writes only into `entry` and `buf` (whose length it is given) and
    // points `found` at `entry` or leaves it null; both outlive the call and the read below.
    let rc = unsafe { libc::getpwuid_r(uid, &mut entry, buf.as_mut_ptr(), buf.len(), &mut found) };
    if rc == 0 && !found.is_null() && !entry.pw_name.is_null() {
        // SAFETY: pw_name points at a NUL-terminated string inside `buf`, alive here.
        let name = unsafe { std::ffi::CStr::from_ptr(entry.pw_name) };
        let name = name.to_string_lossy().into_owned();
        if !name.is_empty() {
            return name;
        }
    }
    format!("uid{uid}")
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_register_echo_names_the_zone_and_the_next_three_ticks_in_it() {
        let r: RegisterResponse = serde_json::from_value(serde_json::json!({
            "cloud_yaml": "/home/me/app/cloud.yaml", "created_at": "2026-12-04T12:00:00Z",
            "cron": "CRON_TZ=Europe/Berlin 0 0 9 * * *", "key": "3f2a9c0d11aa22bb",
            "last_event": null, "last_success": null, "last_tick_at": null,
            "next_runs": ["2026-12-05T08:00:00Z", "2026-12-06T08:00:00Z", "2026-12-07T08:00:00Z"],
            "notify": [], "remote_spec": "/w/chain.yaml",
            "schedule": "cron:CRON_TZ=Europe/Berlin 0 0 9 * * *", "success": true,
            "ticks_run": 0, "ticks_skipped": 0, "warnings": []
        }))
        .unwrap();
        let now = chrono::DateTime::parse_from_rfc3339("2026-12-04T12:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let (warned, text) = register_text(&r, "/home/me/app/cloud.yaml", now, 80);
        assert_eq!(warned, "");
        assert_eq!(
            text,
            "registered /home/me/app/cloud.yaml\n  key        3f2a9c0d11aa22bb\n  schedule   cron 0 0 9 * * * (Europe/Berlin)\n  next ticks Sat 2026-12-05 09:00:00 CET (in 20h00m)\n             Sun 2026-12-06 09:00:00 CET (in 1d)\n             Mon 2026-12-07 09:00:00 CET (in 2d)\n"
        );
        for line in text.lines() {
            assert!(line.chars().count() <= 80, "{line:?}");
        }
    }
}
