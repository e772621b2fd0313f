//! The typed command protocol as a person and a script meet it: `version` names both sides or
//! says why the daemon is not reachable (exit 69), in a real pty and through a pipe, and
//! `megaplan-cloudd --man` is a man page with its own EXIT STATUS, ENVIRONMENT, FILES and
//! EXAMPLES sections that man(1) formats.

use megaplan_cloud_api::ErrorBody;
use megaplan_cloud_api::wire::RegisterResponse;
use megaplan_cloud_e2e::rig::local_cloud_yaml;
use megaplan_cloud_e2e::{Daemon, bin};
use serde_json::Value;
use std::process::{Command, Stdio};

/// `megaplan-cloudctl <args>` in a real pseudo-terminal 80 columns wide (script(1)), its exit
/// code printed after it; returns everything the terminal showed.
fn in_a_pty(socket: &std::path::Path, args: &str) -> String {
    let line = format!(
        "stty cols 80 rows 50; {} {args}; echo \"exit=$?\"",
        bin("megaplan-cloudctl").display()
    );
    let out = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .env("MEGAPLAN_CLOUDD_SOCKET", socket)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .expect("script(1) runs");
    String::from_utf8_lossy(&out.stdout).replace('\r', "")
}

#[test]
fn version_with_the_daemon_down_names_the_client_says_why_and_exits_69() {
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("no-daemon.sock");
    // A person: two lines, the second saying why, and the documented exit code.
    let shown = in_a_pty(&socket, "version");
    let lines: Vec<&str> = shown.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.first().copied(),
        Some(format!("megaplan-cloudctl {} (API v1)", megaplan_cloud_api::VERSION).as_str()),
        "{shown}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("megaplan-cloudd   not reachable (")
                && l.contains("no-daemon.sock")),
        "{shown}"
    );
    assert!(lines.contains(&"exit=69"), "{shown}");
    // A script: the document on stdout (client known, daemon null, the reason), one error line.
    let out = Command::new(bin("megaplan-cloudctl"))
        .arg("version")
        .env("MEGAPLAN_CLOUDD_SOCKET", &socket)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(69));
    // `version`'s document is the client's own (no api type carries it): read as JSON.
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["client"]["version"], megaplan_cloud_api::VERSION);
    assert!(v["daemon"].is_null(), "{v}");
    assert_eq!(v["daemon_error"]["error"], "daemon_unreachable");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: daemon_unreachable"), "{err}");
}

#[test]
fn version_with_the_daemon_up_names_both_and_exits_0() {
    let daemon = Daemon::start(&[], &[]);
    let shown = in_a_pty(&daemon.socket, "version");
    assert!(
        shown
            .lines()
            .any(|l| l == format!("megaplan-cloudd   {} (API v1)", megaplan_cloud_api::VERSION)),
        "{shown}"
    );
    let socket_line = format!("  socket          {}", daemon.socket.display());
    assert!(shown.lines().any(|l| l == socket_line), "{shown}");
    assert!(shown.lines().any(|l| l == "exit=0"), "{shown}");
    for line in shown.lines() {
        assert!(line.chars().count() <= 80, "{line:?}");
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = daemon.ctl(tmp.path(), &[], &["version"]);
    assert!(out.status.success(), "{out:?}");
    assert!(out.stderr.is_empty(), "{out:?}");
    // The client's own document (see above): read as JSON.
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["daemon"]["version"], megaplan_cloud_api::VERSION);
    assert!(v.get("daemon_error").is_none(), "{v}");
}

#[test]
fn the_daemon_has_a_man_page_with_its_own_sections() {
    let out = Command::new(bin("megaplan-cloudd"))
        .arg("--man")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let roff = String::from_utf8_lossy(&out.stdout);
    assert!(roff.contains(".TH megaplan-cloudd 8"), "{roff}");
    // man(1) formats it; each section is a heading of its own.
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("megaplan-cloudd.8");
    std::fs::write(&page, roff.as_bytes()).unwrap();
    let man = Command::new("man")
        .arg("-l")
        .arg(&page)
        .env("MANWIDTH", "80")
        .env("MANPAGER", "cat")
        .env("PAGER", "cat")
        .output()
        .expect("man(1) runs");
    assert!(man.status.success(), "{man:?}");
    let text = String::from_utf8_lossy(&man.stdout);
    // Headings are bold (overstruck) when man writes to a pipe: compare without it.
    let plain: String = {
        let mut s = String::new();
        for c in text.chars() {
            if c == '\u{8}' {
                s.pop();
            } else {
                s.push(c);
            }
        }
        s
    };
    for section in ["EXIT STATUS", "ENVIRONMENT", "FILES", "EXAMPLES", "OPTIONS"] {
        assert!(
            plain.lines().any(|l| l == section),
            "no {section} heading:\n{plain}"
        );
    }
    assert!(plain.contains("--tick-timeout"), "{plain}");
    assert!(plain.contains("MEGAPLAN_CLOUDD_SOCKET"), "{plain}");
}

/// The hour and minute of an RFC 3339 time on Berlin's wall clock, as date(1) reads the zone
/// database (not this program's zone code).
fn berlin_wall_clock(at: &str) -> String {
    let out = Command::new("date")
        .args(["-d", at, "+%H:%M"])
        .env("TZ", "Europe/Berlin")
        .output()
        .expect("date(1) runs");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn register_tz_runs_cron_in_the_named_zone_and_the_echo_shows_three_ticks_there() {
    let d = Daemon::start(&[], &[]);
    let work = d.dir.join("proj");
    let cy = local_cloud_yaml(&work);
    let cys = cy.to_str().unwrap();
    // A script: the schedule is stored with its zone and every next tick is 09:00 in Berlin.
    let out = d.ctl(
        &work,
        &[],
        &[
            "--cloud-yaml",
            cys,
            "register",
            "--cron",
            "0 9 * * *",
            "--tz",
            "Europe/Berlin",
            "--remote-spec",
            "/w/chain.yaml",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let v: RegisterResponse = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v.schedule, "cron:CRON_TZ=Europe/Berlin 0 0 9 * * *",
        "{v:?}"
    );
    let runs: Vec<&str> = v.next_runs.iter().map(String::as_str).collect();
    assert_eq!(runs.len(), 3, "{v:?}");
    for at in &runs {
        assert_eq!(berlin_wall_clock(at), "09:00", "{at}");
    }
    // A person at an 80-column terminal: the zone is said, and the three ticks in it.
    let shown = in_a_pty(
        &d.socket,
        &format!(
            "--cloud-yaml {cys} register --cron '0 9 * * *' --tz Europe/Berlin --remote-spec /w/chain.yaml"
        ),
    );
    assert!(
        shown
            .lines()
            .any(|l| l == "  schedule   cron 0 0 9 * * * (Europe/Berlin)"),
        "{shown}"
    );
    let ticks: Vec<&str> = shown
        .lines()
        .filter(|l| l.contains(" 09:00:00 CET (") || l.contains(" 09:00:00 CEST ("))
        .collect();
    assert_eq!(ticks.len(), 3, "{shown}");
    assert!(shown.lines().any(|l| l == "exit=0"), "{shown}");
    for line in shown.lines() {
        assert!(line.chars().count() <= 80, "{line:?}");
    }
    // An unknown zone is a usage error naming the flag, before the daemon is asked.
    let out = d.ctl(
        &work,
        &[],
        &[
            "--cloud-yaml",
            cys,
            "register",
            "--cron",
            "0 9 * * *",
            "--tz",
            "Mars/Olympus",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let v: ErrorBody = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v.message.starts_with("--tz \"Mars/Olympus\""), "{v:?}");
}
