//! The daemon's log as an operator reads it in the journal: no second timestamp under systemd,
//! failed ticks at WARN, libraries quiet by default. Real daemon processes; the "journal" is the
//! file the daemon's stderr points at, named in `JOURNAL_STREAM` exactly as systemd names its
//! stream (`<device>:<inode>`).

use megaplan_cloud_api::report::TickEvent;
use megaplan_cloud_api::wire::TickRecord;
use megaplan_cloud_e2e::rig::local_cloud_yaml;
use megaplan_cloud_e2e::{Daemon, wait_until};
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

/// A daemon whose stderr is `dir/daemon.log`, with `JOURNAL_STREAM` naming that file when
/// `journal` is set.
fn daemon(journal: bool) -> Daemon {
    let dir = tempfile::Builder::new()
        .prefix("megaplan-logs")
        .tempdir()
        .unwrap()
        .keep();
    let log = dir.join("daemon.log");
    std::fs::write(&log, "").unwrap();
    let meta = std::fs::metadata(&log).unwrap();
    let stream = format!("{}:{}", meta.dev(), meta.ino());
    let env: Vec<(&str, &str)> = if journal {
        vec![("JOURNAL_STREAM", stream.as_str())]
    } else {
        vec![]
    };
    Daemon::start_in(dir, &env, &[])
}

fn failed_tick(d: &Daemon) {
    let work = d.dir.join("work");
    let cy = local_cloud_yaml(&work);
    let cys = cy.to_str().unwrap();
    let reg = d.ctl(
        &work,
        &[],
        &["--cloud-yaml", cys, "register", "--every", "1h"],
    );
    assert!(reg.status.success(), "{reg:?}");
    let tick = d.ctl(&work, &[], &["--cloud-yaml", cys, "tick"]);
    let v: TickRecord = serde_json::from_slice(&tick.stdout).unwrap();
    assert_eq!(v.event, TickEvent::Error, "{v:?}");
}

fn starts_with_timestamp(line: &str) -> bool {
    let b = line.as_bytes();
    b.len() > 20 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b'-' && b[10] == b'T'
}

#[test]
fn under_the_journal_lines_carry_no_timestamp_and_failed_ticks_are_warnings() {
    let d = daemon(true);
    failed_tick(&d);
    let log = d.log_text();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 2, "{log}");
    assert!(
        lines.iter().all(|l| !starts_with_timestamp(l)),
        "a line carries our own timestamp under the journal:\n{log}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.trim_start().starts_with("WARN") && l.contains("tick failed")),
        "the failed tick is not a WARN line:\n{log}"
    );
    assert!(
        !log.contains("tokio_cron_scheduler"),
        "a library logs at INFO by default:\n{log}"
    );
}

#[test]
fn outside_the_journal_lines_are_timestamped() {
    let d = daemon(false);
    failed_tick(&d);
    let log = d.log_text();
    let first = log.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    assert!(starts_with_timestamp(first), "{log}");
}

#[test]
fn a_journal_stream_that_is_not_our_stderr_is_ignored() {
    // systemd's variable is inherited by children whose stderr points elsewhere: only a match
    // of device and inode means the journal.
    let dir = tempfile::Builder::new()
        .prefix("megaplan-logs")
        .tempdir()
        .unwrap()
        .keep();
    let d = Daemon::start_in(dir, &[("JOURNAL_STREAM", "1:1")], &[]);
    // The "ready" line follows the socket by a moment.
    wait_until(Duration::from_secs(20), || d.log_text().contains("ready"));
    let log = d.log_text();
    let first = log.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    assert!(starts_with_timestamp(first), "{log}");
}
