//! Tri-state liveness and the crash-loop quarantine (issue 24 items 2 and 4) on the bench over
//! a real sshd, with a STAND-IN webhook receiver on 127.0.0.1 (`megaplan_cloud_e2e::receiver`):
//! a killed driver is `unknown` (the person hears at once) until its lease expires, then `dead`
//! and restarted; an unreachable host is `unknown` and never restarted; a driver that dies
//! right after each launch is quarantined after N restarts (one notification, no launch) until
//! `unquarantine`.

use megaplan_cloud_api::liveness::{LiveState, UnquarantineResult};
use megaplan_cloud_api::report::{TickEvent, TickReport};
use megaplan_cloud_api::wire::TickRecord;
use megaplan_cloud_e2e::receiver::Receiver;
use megaplan_cloud_e2e::rig::SshRig;
use megaplan_cloud_e2e::wait_until;
use serde_json::Value;
use std::time::Duration;

const LEASE: &str = "/workspace/.megaplan/cloud-sessions/megaplan-chain.lease.json";
const RUNS: &str = "/workspace/app/.megaplan/standin-chain-runs.jsonl";

/// A rig whose daemon tells a receiver after two failed ticks and retries quickly.
fn rig(extra_yaml: &str) -> Option<(SshRig, tempfile::TempDir)> {
    SshRig::start_notifying(
        extra_yaml,
        "failed_ticks: 2\nretry: {initial_delay: 200ms, max_delay: 1s}\n",
        &[],
    )
}

/// The stored tick reports, oldest first.
fn ticks(rig: &SshRig) -> Vec<TickRecord> {
    let mut t = rig.ticks(500);
    t.reverse();
    t
}

/// Driver launches the stand-in core recorded on the runner.
fn launches(rig: &SshRig) -> usize {
    rig.container
        .read_file(RUNS)
        .map(|b| String::from_utf8_lossy(&b).lines().count())
        .unwrap_or(0)
}

/// A tick now (`megaplan-cloudctl tick`): its stored report.
fn tick(rig: &SshRig) -> TickReport {
    rig.ctl(&["tick"]).tick().report
}

/// The liveness state a tick report says, `None` when it says none.
fn live_state(report: &TickReport) -> Option<LiveState> {
    report.liveness.as_ref().map(|l| l.state)
}

#[test]
fn a_killed_driver_is_dead_only_after_its_lease_expires_and_an_unreachable_host_is_unknown() {
    let receiver = Receiver::start();
    let Some((mut rig, _cfg)) = rig("supervise:\n  lease_ttl: 4s\n  restart_backoff: 1s\n") else {
        return;
    };
    rig.launch_stalled(&["m1", "m2"]);
    let url = receiver.url("/hook");
    rig.ctl(&["register", "--every", "1h", "--notify-url", &url])
        .ok();
    // A tick sets up the runner's watch, which keeps the driver's lease.
    assert!(wait_until(Duration::from_secs(60), || {
        live_state(&tick(&rig)) == Some(LiveState::Live) && rig.container.read_json(LEASE).is_some()
    }));
    // The lease file on the runner is the driver's own (no api type): read as JSON.
    let lease: Value = rig.container.read_json(LEASE).unwrap();
    assert_eq!(lease["session"], "megaplan-chain");
    assert_eq!(lease["spec"], "/workspace/app/chain.yaml");
    let pid = lease["pids"][0]
        .as_i64()
        .expect("the lease names the driver pid");
    let before = launches(&rig);

    rig.container.exec_ok(&format!("kill -9 {pid}"));
    // The person hears at once; the restart waits for the lease.
    assert!(
        wait_until(Duration::from_secs(60), || receiver.count("driver_gone")
            == 1),
        "no driver_gone notification: {:?}",
        receiver.events()
    );
    let gone = receiver
        .accepted()
        .into_iter()
        .find(|n| n.event() == "driver_gone")
        .unwrap()
        .json();
    // The whole body, as sent: the restart's countdown is somewhere in it.
    assert!(gone.to_string().contains("restart in"), "{gone:#}");
    assert!(
        wait_until(Duration::from_secs(60), || ticks(&rig)
            .iter()
            .any(|t| t.event == TickEvent::Restarted)),
        "no restart after the lease expired: {:#?}",
        ticks(&rig)
    );
    let all = ticks(&rig);
    let restart = all
        .iter()
        .position(|t| t.event == TickEvent::Restarted)
        .unwrap();
    // Before the restart, a tick saw the driver gone with its lease still holding: unknown,
    // nothing done.
    assert!(
        all[..restart].iter().any(|t| {
            let r = &t.report;
            r.liveness.as_ref().is_some_and(|l| {
                l.state == LiveState::Unknown && l.evidence.process_seen == Some(false)
            }) && !r.acted
        }),
        "{all:#?}"
    );
    assert_eq!(
        live_state(&all[restart].report),
        Some(LiveState::Dead),
        "{:#?}",
        all[restart]
    );
    assert_eq!(all[restart].trigger, "event");
    assert!(wait_until(Duration::from_secs(30), || launches(&rig) == before + 1));

    // The host unreachable: unknown, reported, never a restart.
    rig.sshd.stop();
    let t = tick(&rig);
    assert_eq!(live_state(&t), Some(LiveState::Unknown), "{t:#?}");
    assert_eq!(
        t.liveness.as_ref().and_then(|l| l.evidence.reachable),
        Some(false),
        "{t:#?}"
    );
    assert!(!t.acted);
    assert_eq!(t.event, TickEvent::Error);
    assert_eq!(launches(&rig), before + 1);
    rig.sshd.restart();
}

#[test]
fn a_driver_dying_after_each_restart_is_quarantined_until_unquarantine() {
    let receiver = Receiver::start();
    let Some((rig, _cfg)) = rig(
        "supervise:\n  lease_ttl: 2s\n  restart_backoff: 1s\n  quarantine_after: 2\n  quarantine_window: 15m\n",
    ) else {
        return;
    };
    rig.precreate_workspace();
    rig.control(r#"{"step_seconds": 0.1, "crash": ["m1"]}"#);
    rig.launch(&["m1"]);
    assert!(wait_until(Duration::from_secs(30), || launches(&rig) == 1));
    let url = receiver.url("/hook");
    rig.ctl(&["register", "--every", "1h", "--notify-url", &url])
        .ok();
    // Ticks restart the crashing driver (backing off between restarts) until it is
    // quarantined; bounded by the safety net, not by a count of ticks.
    assert!(
        wait_until(Duration::from_secs(120), || tick(&rig).quarantine.is_some()),
        "never quarantined: {:#?}",
        ticks(&rig)
    );
    assert_eq!(launches(&rig), 3, "1 launch + 2 restarts");
    for _ in 0..3 {
        let t = tick(&rig);
        assert!(!t.acted, "{t:#?}");
        assert!(
            t.refused_reason
                .as_deref()
                .unwrap_or_default()
                .contains("quarantined"),
            "{t:#?}"
        );
    }
    assert_eq!(launches(&rig), 3, "a quarantined chain was launched");
    assert!(wait_until(Duration::from_secs(60), || receiver
        .count("quarantined")
        == 1));
    let q = receiver
        .accepted()
        .into_iter()
        .find(|n| n.event() == "quarantined")
        .unwrap()
        .json();
    // The whole body, as sent: the crash's reason is somewhere in it (title, message, details).
    assert!(q.to_string().contains("crashing (control file)"), "{q:#}");
    let fleet = rig.ctl(&["ls", "--json"]).json;
    assert!(fleet.to_string().contains("\"quarantined\""), "{fleet:#}");
    let explain = rig.ctl(&["explain", "--json"]).json;
    assert!(explain.to_string().contains("unquarantine"), "{explain:#}");

    let u = rig.ctl(&["unquarantine", "--json"]).ok();
    assert!(u.decode::<UnquarantineResult>().cleared, "{}", u.stdout);
    assert!(
        wait_until(Duration::from_secs(60), || launches(&rig) >= 4),
        "no launch after unquarantine: {:#?}",
        ticks(&rig)
    );
    assert_eq!(receiver.count("quarantined"), 1);
}
