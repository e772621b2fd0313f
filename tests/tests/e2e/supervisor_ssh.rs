//! The supervisor on the bench over ssh (issue 6): a killed runner is restarted by scheduled
//! ticks until the chain completes; an open PR blocks and a merged one advances; a tick while
//! sshd is down stores a supervisor_error and other registrations keep ticking; at most 3 remote
//! round trips per tick; `watch` follows new reports. Many registrations on one host (issue 21
//! item 3): one resident observer per runner, within the host's ssh session budget and one TCP
//! connection; an unregister ends the observer of a runner no registration uses any more.

use megaplan_cloud_api::report::{EffectiveStatus, NextAction, ReportedStatus, TickEvent};
use megaplan_cloud_api::wire::{Health, TickRecord};
use megaplan_cloud_e2e::rig::{Run, SshRig, ctl_for, resident_observers};
use megaplan_cloud_e2e::{Container, bench, wait_until};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::time::Duration;

fn tick(rig: &SshRig) -> Run {
    rig.ctl(&["supervise", "--chain"])
}

#[test]
fn killed_runner_is_restarted_by_scheduled_ticks_until_complete() {
    let Some(rig) = SshRig::start("", &[]) else {
        return;
    };
    rig.precreate_workspace();
    rig.control(r#"{"step_seconds": 0.2, "stall": ["m2"]}"#);
    rig.launch(&["m1", "m2", "m3"]);
    assert!(wait_until(Duration::from_secs(30), || {
        rig.ctl(&["status", "--chain"])
            .current_milestone()
            .as_deref()
            == Some("m2")
    }));
    // A live runner is never restarted.
    let t = tick(&rig);
    assert_eq!(t.code, Some(0), "{}", t.stderr);
    assert!(!t.report().acted, "{}", t.stdout);
    assert_eq!(
        t.report().effective_status,
        ReportedStatus::Classified(EffectiveStatus::Running)
    );
    assert!(
        t.stderr
            .contains("supervisor tick: supervisor_tick | acted=false | next_action=noop"),
        "{}",
        t.stderr
    );

    // Kill the runner mid-chain, then let the schedule take over.
    rig.container
        .exec_ok("tmux kill-session -t =megaplan-chain");
    rig.control(r#"{"step_seconds": 0.2}"#);
    rig.ctl(&["register", "--every", "2s"]).ok();
    let completed = wait_until(Duration::from_secs(60), || {
        rig.ctl(&["status", "--chain"]).chain_complete()
    });
    let history = rig.ticks(50);
    assert!(
        completed,
        "chain did not complete under supervision; ticks: {history:#?}"
    );
    let events: Vec<&TickEvent> = history.iter().map(|t| &t.event).collect();
    assert!(events.contains(&&TickEvent::Restarted), "{events:?}");
    // Every restart wrote the session marker (so later restarts are not refused as collisions).
    // The session marker on the runner is the runner's own file (no api type): read as JSON.
    let marker: Value = rig
        .container
        .read_json("/workspace/.megaplan/cloud-sessions/megaplan-chain.json")
        .unwrap();
    assert_eq!(marker["remote_spec"], "/workspace/app/chain.yaml");
    // Once complete, ticks say done and act no more.
    let t = tick(&rig).ok();
    assert_eq!(t.report().next_action, NextAction::Done);
    assert!(!t.report().acted);
    // The stand-in recorded `--one` starts from the supervisor.
    let runs = String::from_utf8(
        rig.container
            .read_file("/workspace/app/.megaplan/standin-chain-runs.jsonl")
            .unwrap(),
    )
    .unwrap();
    assert!(runs.lines().any(|l| l.contains("\"one\": true")), "{runs}");
}

#[test]
fn open_pr_blocks_and_merged_pr_advances_within_three_round_trips() {
    let Some(rig) = SshRig::start("", &[]) else {
        return;
    };
    rig.launch_awaiting_pr(&["m1", "m2"], 7);
    rig.wait_effective_status(30, EffectiveStatus::AwaitingPrMerge);
    let before = rig.sshd.exec_requests();
    let t = tick(&rig);
    let trips = rig.sshd.exec_requests() - before;
    assert_eq!(t.code, Some(0));
    assert_eq!(t.report().event, TickEvent::Blocked, "{}", t.stdout);
    assert!(!t.report().acted);
    let reason = t.report().refused_reason.unwrap();
    assert!(
        reason.contains("PR #7") && reason.contains("open"),
        "{reason}"
    );
    assert!(trips <= 3, "a blocked tick made {trips} remote round trips");
    assert_eq!(t.report().remote_round_trips, Some(1));

    rig.container.set_pr(7, "MERGED");
    let before = rig.sshd.exec_requests();
    let t = tick(&rig).ok();
    let trips = rig.sshd.exec_requests() - before;
    assert_eq!(t.report().event, TickEvent::Advanced, "{}", t.stdout);
    assert_eq!(t.report().next_action, NextAction::Advance);
    assert!(t.report().acted);
    assert!(trips <= 3, "an acting tick made {trips} remote round trips");
    assert_eq!(t.report().remote_round_trips, Some(2));
    // The advance is a launch: the last-chain marker says so.
    let marker = rig.ctl(&["status", "--chain"]);
    assert_eq!(marker.code, Some(0));
    let key = megaplan_cloud_api::paths::marker_key(&rig.cloud_yaml);
    // The legacy marker file keeps the original tool's shape (the point of this check).
    let legacy: Value = serde_json::from_slice(
        &std::fs::read(
            rig.daemon
                .home
                .join("markers")
                .join(&key)
                .join("last_chain.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(legacy["last_supervisor_action"], "advance", "{legacy}");
    assert_eq!(legacy["remote_spec"], "/workspace/app/chain.yaml");
    assert!(
        wait_until(Duration::from_secs(30), || {
            rig.ctl(&["status", "--chain"])
                .chain_status()
                .is_some_and(|s| {
                    // The core's own chain state, kept whole by the api type.
                    s.chain_state
                        .get("completed")
                        .and_then(Value::as_array)
                        .is_some_and(|c| !c.is_empty())
                })
        }),
        "the merged milestone was not completed"
    );
}

/// Issue 24 item 1: a merge on GitHub is no runner event, so the runner watch asks `gh pr view`
/// every `supervise.pr_poll` while (and only while) the chain waits on a pull request; the merge
/// is an event that ticks the registration at once, with no scheduled tick (the schedule is
/// once a year).
#[test]
fn a_merged_pr_is_seen_by_the_watch_and_advanced_without_a_scheduled_tick() {
    let Some(rig) = SshRig::start("supervise:\n  pr_poll: 10s\n", &[]) else {
        return;
    };
    rig.launch_awaiting_pr(&["m1", "m2"], 7);
    rig.wait_effective_status(30, EffectiveStatus::AwaitingPrMerge);
    rig.ctl(&["register", "--cron", "0 0 1 1 *"]).ok();
    // The registration's first tick: blocked on the open PR; it starts the runner watch.
    let t = rig.ctl(&["tick"]).ok();
    assert_eq!(t.tick().event, TickEvent::Blocked, "{}", t.stdout);

    rig.container.set_pr(7, "MERGED");
    let advanced = || {
        rig.ticks(500)
            .into_iter()
            .any(|t| t.trigger == "event" && t.event == TickEvent::Advanced)
    };
    assert!(
        wait_until(Duration::from_secs(120), advanced),
        "no event tick advanced the merged chain; ticks: {:#?}\n{}",
        rig.ticks(500),
        rig.daemon.log_text()
    );
    // The event was the watch's poll, not another look (a lease follow-up also ticks as an event).
    assert!(
        rig.daemon.log_text().contains("pull request #7 was merged"),
        "{}",
        rig.daemon.log_text()
    );
    let all = rig.ticks(500);
    assert!(
        all.iter().all(|t| t.trigger != "schedule"),
        "a scheduled tick ran: {all:#?}"
    );
}

#[test]
fn sshd_down_stores_an_error_and_other_registrations_keep_ticking() {
    let Some(mut rig) = SshRig::start("", &[]) else {
        return;
    };
    rig.precreate_workspace();
    rig.launch(&["m1"]);
    // A second registration that needs no runner at all.
    let other_dir = rig.project.join("other");
    std::fs::create_dir_all(&other_dir).unwrap();
    let other = other_dir.join("cloud.yaml");
    std::fs::write(&other, "provider: local\nrepo: {url: /srv/r.git}\n").unwrap();
    rig.ctl(&["register", "--every", "2s"]).ok();
    let other_s = other.to_str().unwrap();
    megaplan_cloud_e2e::rig::Run::from_output(&rig.daemon.ctl(
        &rig.project,
        &[],
        &["--cloud-yaml", other_s, "register", "--every", "2s"],
    ))
    .ok();

    rig.sshd.stop();
    let t = tick(&rig);
    assert_eq!(t.code, Some(1), "{}", t.stdout);
    assert_eq!(t.report().event, TickEvent::Error);
    assert!(!t.report().success);
    assert!(
        t.report()
            .refused_reason
            .unwrap_or_default()
            .contains("chain status read failed"),
        "{}",
        t.stdout
    );
    let ticks_other = |rig: &SshRig| {
        megaplan_cloud_e2e::rig::Run::from_output(&rig.daemon.ctl(
            &rig.project,
            &[],
            &["--cloud-yaml", other_s, "ticks", "--json", "--limit", "100"],
        ))
        .try_decode::<Vec<TickRecord>>()
        .map_or(0, |t| t.len())
    };
    let n0 = ticks_other(&rig);
    assert!(
        wait_until(Duration::from_secs(15), || ticks_other(&rig) >= n0 + 2),
        "the other registration stopped ticking"
    );
    let stored = rig.ticks(100);
    assert!(
        stored
            .iter()
            .any(|t| t.event == TickEvent::Error && t.trigger == "schedule"),
        "{stored:#?}"
    );
    let health = rig.ctl(&["daemon", "status", "--json"]).ok();
    assert!(health.decode::<Health>().ticks.failed >= 1);

    // sshd back: the held session is re-established transparently.
    rig.sshd.restart();
    assert!(
        wait_until(Duration::from_secs(20), || tick(&rig).report().success),
        "ticks did not recover after sshd came back"
    );
}

#[test]
fn watch_follows_new_reports() {
    let Some(rig) = SshRig::start("", &[]) else {
        return;
    };
    rig.precreate_workspace();
    rig.launch(&["m1"]);
    rig.ctl(&["register", "--every", "1h"]).ok();
    let mut child = rig.spawn_ctl(&["watch", "--json"]);
    // `watch` may subscribe after a tick that was sent too early (nothing says when it has
    // subscribed), so tick until a line arrives instead of racing a sleep.
    let stdout = child.stdout.take().unwrap();
    let (line_tx, line_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = line_tx.send(line);
    });
    // Bounded by work, not time: up to 200 ticks, checking after each whether watch printed;
    // then the usual safety net for a line still on its way.
    let mut line = None;
    for _ in 0..200 {
        rig.ctl(&["tick"]);
        if let Ok(l) = line_rx.try_recv() {
            line = Some(l);
            break;
        }
    }
    if line.is_none() {
        wait_until(Duration::from_secs(30), || {
            line = line_rx.try_recv().ok();
            line.is_some()
        });
    }
    let line = line.expect("watch printed no report after 200 ticks");
    let _ = child.kill();
    let _ = child.wait();
    let rec: TickRecord = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(rec.trigger, "manual");
    assert_eq!(rec.key.len(), 16);
}

/// `(pid, parent pid, argv)` of every live, non-zombie process.
fn processes() -> Vec<(u32, u32, String)> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let (Ok(stat), Ok(cmdline)) = (
            std::fs::read_to_string(e.path().join("stat")),
            std::fs::read(e.path().join("cmdline")),
        ) else {
            continue;
        };
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().unwrap_or("");
        let ppid = fields.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        if state != "Z" {
            let argv = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            v.push((pid, ppid, argv));
        }
    }
    v
}

/// ssh clients in the daemon's process tree, and ssh masters on its control folder.
fn ssh_processes(rig: &SshRig) -> (usize, usize) {
    let all = processes();
    let mut tree = vec![rig.daemon.pid()];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(all.iter().filter(|p| p.1 == parent).map(|p| p.0));
        i += 1;
    }
    let control = rig.daemon.socket.parent().unwrap().join("ssh");
    let control = control.to_str().unwrap();
    let is_ssh = |argv: &str| argv.starts_with("ssh ");
    let clients = all
        .iter()
        .filter(|p| tree[1..].contains(&p.0) && is_ssh(&p.2) && !p.2.contains(" -M "))
        .count();
    let masters = all
        .iter()
        .filter(|p| is_ssh(&p.2) && p.2.contains(" -M ") && p.2.contains(control))
        .count();
    (clients, masters)
}

/// A cloud.yaml beside the rig's, for `container`, that watches the chain the rig launched.
fn fleet_yaml(rig: &SshRig, name: &str, container: &str) -> PathBuf {
    let text = std::fs::read_to_string(&rig.cloud_yaml)
        .unwrap()
        .replace(&rig.container.name, container);
    let dir = rig.project.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("cloud.yaml");
    std::fs::write(
        &path,
        format!("{text}mode: chain\nchain:\n  spec: /workspace/app/chain.yaml\n"),
    )
    .unwrap();
    path
}

fn running_chain(labels: &[&str]) -> Option<SshRig> {
    let rig = SshRig::start("", &[])?;
    rig.precreate_workspace();
    rig.control(r#"{"step_seconds": 0.1, "stall": ["m1"]}"#);
    rig.launch(labels);
    rig.wait_running_at(60, "m1");
    Some(rig)
}

/// Issue 21 item 3: 12 registrations on one host whose sshd has the default `MaxSessions` (10),
/// ticked at once: 4 watch the rig's running chain (one runner), 8 more are runners of their
/// own. One observer per runner, at most the budget's share of them; everything over the one
/// held TCP connection; sshd never refuses a session; the rig's ticks, `exec` and `status`
/// all succeed.
#[test]
fn twelve_registrations_on_one_host_stay_within_its_sessions_on_one_connection() {
    let Some(rig) = running_chain(&["m1", "m2"]) else {
        return;
    };
    let b = bench().unwrap();
    let others: Vec<Container> = (0..8).map(|_| b.container("mp-fleet")).collect();
    let mut yamls: Vec<PathBuf> = (0..4)
        .map(|i| fleet_yaml(&rig, &format!("same-{i}"), &rig.container.name))
        .collect();
    for (i, c) in others.iter().enumerate() {
        yamls.push(fleet_yaml(&rig, &format!("other-{i}"), &c.name));
    }
    for y in &yamls {
        ctl_for(&rig.daemon, y, &["register", "--every", "1h"]).ok();
    }
    let connections = rig.sshd.accepted_connections();
    assert_eq!(
        connections, 1,
        "the rig's commands used one held connection"
    );

    let ticks: Vec<Run> = std::thread::scope(|s| {
        let handles: Vec<_> = yamls
            .iter()
            .map(|y| s.spawn(|| ctl_for(&rig.daemon, y, &["tick"])))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // The 4 cloud.yaml files of the running chain: healthy ticks.
    for t in &ticks[..4] {
        assert_eq!(t.code, Some(0), "{}\n{}", t.stdout, t.stderr);
        assert_eq!(t.tick().event, TickEvent::Tick, "{}", t.stdout);
    }
    // The other runners hold no chain: their ticks say so (not that a session was refused).
    for t in &ticks[4..] {
        assert_eq!(
            t.tick().report.error.as_deref(),
            Some("missing_remote_spec"),
            "{}\n{}",
            t.stdout,
            t.stderr
        );
    }
    let observers: usize = std::iter::once(&rig.container)
        .chain(&others)
        .map(|c| resident_observers(c).len())
        .sum();
    assert!(
        (1..=6).contains(&observers),
        "9 runners, at most 6 observers (10 sessions - 2 kept free - 2 kept for commands): {observers}"
    );

    // The client still gets its sessions, over the same connection.
    let e = rig.ctl(&["exec", "echo still-here"]);
    assert_eq!(e.code, Some(0), "{}\n{}", e.stdout, e.stderr);
    assert!(e.stdout.contains("still-here"), "{}", e.stdout);
    let s = rig.ctl(&["status", "--chain"]);
    assert_eq!(s.code, Some(0), "{}\n{}", s.stdout, s.stderr);
    assert_eq!(
        s.chain().effective_status,
        ReportedStatus::Classified(EffectiveStatus::Running),
        "{}",
        s.stdout
    );
    assert_eq!(
        rig.sshd.accepted_connections(),
        connections,
        "no second TCP connection to the host"
    );
    assert_eq!(rig.sshd.refused_sessions(), 0, "sshd refused a session");
}

/// Issue 21 item 3: 5 x (register -> tick -> unregister) of cloud.yaml files watching one
/// runner leaves no observer on the runner and no ssh client in the daemon beyond its master.
#[test]
fn register_tick_unregister_five_times_leaves_no_observer_and_no_ssh_client() {
    let Some(rig) = running_chain(&["m1", "m2"]) else {
        return;
    };
    for i in 0..5 {
        let y = fleet_yaml(&rig, &format!("round-{i}"), &rig.container.name);
        ctl_for(&rig.daemon, &y, &["register", "--every", "1h"]).ok();
        let t = ctl_for(&rig.daemon, &y, &["tick"]);
        assert_eq!(t.code, Some(0), "{}\n{}", t.stdout, t.stderr);
        assert_eq!(t.tick().event, TickEvent::Tick, "{}", t.stdout);
        assert_eq!(
            resident_observers(&rig.container).len(),
            1,
            "round {i}: one observer for the runner"
        );
        ctl_for(&rig.daemon, &y, &["unregister"]).ok();
        assert!(
            wait_until(Duration::from_secs(30), || resident_observers(
                &rig.container
            )
            .is_empty()),
            "round {i}: observers left on the runner: {:?}",
            resident_observers(&rig.container)
        );
        let mut seen = (usize::MAX, usize::MAX);
        assert!(
            wait_until(Duration::from_secs(30), || {
                seen = ssh_processes(&rig);
                seen == (0, 1)
            }),
            "round {i}: (ssh clients in the daemon, masters) = {seen:?}, wanted (0, 1)"
        );
    }
    assert_eq!(rig.sshd.accepted_connections(), 1);
}
