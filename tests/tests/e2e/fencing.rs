//! Fenced launches (issue 24 item 3) and the preflight (item 5) on the bench over ssh.
//!
//! Two daemons, each with its own database, and manual `chain` commands race to relaunch one
//! stale chain, round after round: at the end of every round exactly one driver runs on the
//! runner, and the launches the runner's gate refused are recorded, naming who holds the chain.
//! A preflight floor above the free space (1 PiB) stops a restart: no launch, a blocker naming
//! the cloud.yaml field.

use megaplan_cloud_api::report::{TickEvent, TickReport};
use megaplan_cloud_api::wire::TickRecord;
use megaplan_cloud_e2e::rig::{Run, SshRig, write_chain};
use megaplan_cloud_e2e::util::sqlite;
use megaplan_cloud_e2e::{Daemon, wait_until};
use serde_json::Value;
use std::time::Duration;

/// The pids of the processes driving a chain on the runner (`chain start --spec`), a driver's
/// own children (same command line) left out.
fn chain_drivers(rig: &SshRig) -> Vec<String> {
    let out = rig.container.exec(
        "python3 -c 'import os\nfound = {}\nfor p in os.listdir(\"/proc\"):\n    try:\n        c = open(\"/proc/%s/cmdline\" % p, \"rb\").read().split(b\"\\0\")\n        ppid = open(\"/proc/%s/stat\" % p).read().rsplit(\")\", 1)[1].split()[1]\n    except Exception:\n        continue\n    if b\"chain\" in c and b\"start\" in c and b\"--spec\" in c:\n        found[p] = ppid\nfor p, pp in found.items():\n    if pp not in found:\n        print(p)'",
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn ctl(d: &Daemon, rig: &SshRig, args: &[&str]) -> Run {
    let mut full = vec!["--cloud-yaml", rig.cloud_yaml.to_str().unwrap_or_default()];
    full.extend_from_slice(args);
    Run::from_output(&d.ctl(&rig.project, &[], &full))
}

/// The stored tick reports of a daemon for the rig's cloud.yaml, newest first.
fn ticks(d: &Daemon, rig: &SshRig) -> Vec<TickRecord> {
    ctl(d, rig, &["ticks", "--json", "--limit", "200"])
        .try_decode()
        .unwrap_or_default()
}

fn fenced(t: &TickRecord) -> bool {
    t.refused_reason
        .as_deref()
        .is_some_and(|r| r.starts_with("fenced:"))
}

/// A section of a tick report that the api type keeps whole (`TickReport::extra`: the
/// fencing gate's and the preflight's own documents), as JSON.
fn report_section(report: &TickReport, name: &str) -> Value {
    report.extra.get(name).cloned().unwrap_or(Value::Null)
}

#[test]
fn two_daemons_and_manual_chains_racing_a_stale_chain_leave_exactly_one_driver() {
    let Some(rig) = SshRig::start("", &[]) else {
        return;
    };
    rig.precreate_workspace();
    // The chain stalls in m1 for ever: a started driver stays alive until the test kills it.
    rig.control(r#"{"step_seconds": 0.1, "stall": ["m1"]}"#);
    let spec = write_chain(&rig.project.join("epic"), "chain.yaml", &["m1", "m2"]);
    let spec = spec.display().to_string();
    ctl(&rig.daemon, &rig, &["chain", &spec]).ok();
    assert!(wait_until(Duration::from_secs(60), || chain_drivers(&rig)
        .len()
        == 1));
    // A second daemon: its own state dir and database, the same runner.
    let ssh_config = rig.sshd.ssh_config.display().to_string();
    let other = Daemon::start(&[("MEGAPLAN_CLOUDD_SSH_CONFIG", ssh_config.as_str())], &[]);
    let daemons = [&rig.daemon, &other];

    let mut manual_refusals = Vec::new();
    for round in 0..20 {
        // Make the chain stale: its driver dies, the state still says running.
        rig.container.exec("tmux kill-server 2>/dev/null; true");
        assert!(
            wait_until(Duration::from_secs(30), || chain_drivers(&rig).is_empty()),
            "round {round}: the killed driver did not go away"
        );
        // Both daemons tick and both run a manual `chain`, all at once.
        let runs: Vec<Run> = std::thread::scope(|s| {
            let mut handles = Vec::new();
            let (rig, spec) = (&rig, spec.as_str());
            for d in daemons {
                handles.push(s.spawn(move || ctl(d, rig, &["supervise", "--chain"])));
                handles.push(s.spawn(move || ctl(d, rig, &["chain", spec])));
            }
            handles
                .into_iter()
                .map(|h| h.join().expect("a racing client panicked"))
                .collect()
        });
        for r in runs.iter().skip(1).step_by(2) {
            if r.code != Some(0) {
                manual_refusals.push(r.stdout.clone() + &r.stderr);
            }
        }
        // Exactly one driver: once one is visible, it is the only one.
        assert!(
            wait_until(Duration::from_secs(60), || !chain_drivers(&rig).is_empty()),
            "round {round}: nobody relaunched the stale chain: {runs:#?}"
        );
        let drivers = chain_drivers(&rig);
        assert_eq!(
            drivers.len(),
            1,
            "round {round}: {} drivers run the chain: {drivers:?}\n{runs:#?}",
            drivers.len()
        );
    }

    // The refused launches are recorded: in each daemon's database (the gate's refusals, with
    // the token held and its holder), in the stored tick reports of fenced ticks (the holder
    // named, the gate's verdict under `fencing`) and in the error a manual `chain` printed.
    let mut recorded = 0;
    for d in daemons {
        let db = d.home.join("cloudd.db");
        let rows = sqlite(
            &db,
            "SELECT reason || '|' || ifnull(held, '') || '|' || ifnull(holder, '') FROM gate_refusals;",
        );
        for row in rows.lines() {
            let cols: Vec<&str> = row.split('|').collect();
            assert!(["stale_token", "live_driver"].contains(&cols[0]), "{row}");
            assert!(!cols[1].is_empty() && !cols[2].is_empty(), "{row}");
            recorded += 1;
        }
    }
    assert!(
        recorded > 0,
        "no refused launch was recorded in 20 racing rounds"
    );
    for d in daemons {
        for t in ticks(d, &rig).into_iter().filter(fenced) {
            let reason = t.refused_reason.as_deref().unwrap_or_default();
            assert!(reason.contains("held by "), "{reason}");
            let gate = report_section(&t.report, "fencing");
            assert_eq!(gate["verdict"], "refused", "{t:#?}");
            assert!(gate["held"].as_u64().is_some(), "{t:#?}");
            assert!(gate["holder"].as_str().is_some(), "{t:#?}");
        }
    }
    for said in manual_refusals.iter().filter(|m| m.contains("fenced:")) {
        assert!(said.contains("held by "), "{said}");
    }
    // The runner names the holder of the chain and its token.
    let fence_dir = "/workspace/app/.megaplan/cloud-fence";
    let listing = rig.container.exec_ok(&format!("cat {fence_dir}/*.json"));
    // The token file on the runner is the fence's own (no api type): read as JSON.
    let fence: Value = serde_json::from_str(listing.trim()).expect("one token file");
    let holder = fence["holder"].as_str().unwrap_or_default();
    assert!(
        holder.starts_with("daemon ") || holder.starts_with("manual chain by "),
        "{fence}"
    );
    assert!(fence["token"].as_u64().unwrap_or(0) >= 2, "{fence}");
}

#[test]
fn a_disk_floor_above_the_free_space_blocks_the_restart_naming_the_field() {
    let Some(rig) = SshRig::start("preflight:\n  min_free_disk: 1PiB\n", &[]) else {
        return;
    };
    rig.precreate_workspace();
    rig.control(r#"{"step_seconds": 0.1, "stall": ["m1"]}"#);
    let spec = write_chain(&rig.project.join("epic"), "chain.yaml", &["m1", "m2"]);
    // A manual chain is stopped by the preflight too, naming the field and the fix.
    let refused = rig.ctl(&["chain", &spec.display().to_string()]);
    assert_ne!(refused.code, Some(0), "{}", refused.stdout);
    let said = refused.stdout.clone() + &refused.stderr;
    assert!(said.contains("preflight.min_free_disk"), "{said}");
    assert!(chain_drivers(&rig).is_empty());

    // Launched under a sane floor, then the floor is raised and the driver dies: the restart
    // is stopped by the preflight, a blocker naming the field, and nothing runs.
    let text = std::fs::read_to_string(&rig.cloud_yaml).unwrap();
    std::fs::write(
        &rig.cloud_yaml,
        text.replace("min_free_disk: 1PiB", "min_free_disk: 1MiB"),
    )
    .unwrap();
    rig.ctl(&["chain", &spec.display().to_string()]).ok();
    assert!(wait_until(Duration::from_secs(60), || chain_drivers(&rig)
        .len()
        == 1));
    std::fs::write(&rig.cloud_yaml, text).unwrap();
    rig.container.exec("tmux kill-server 2>/dev/null; true");
    assert!(wait_until(Duration::from_secs(30), || chain_drivers(&rig).is_empty()));
    let t = rig.ctl(&["supervise", "--chain"]);
    let report = t.report();
    assert!(!report.acted, "{}", t.stdout);
    assert_eq!(report.event, TickEvent::Blocked, "{}", t.stdout);
    let reason = report.refused_reason.as_deref().unwrap_or_default();
    assert!(reason.contains("preflight.min_free_disk"), "{reason}");
    let preflight = report_section(&report, "preflight");
    assert_eq!(preflight["passed"], false, "{}", t.stdout);
    assert_eq!(preflight["checks"][0]["field"], "preflight.min_free_disk");
    assert!(
        chain_drivers(&rig).is_empty(),
        "the preflight let a launch through"
    );
    // The stored report says the same (what `ticks` and `explain` read).
    let stored: Vec<TickRecord> =
        ctl(&rig.daemon, &rig, &["ticks", "--json", "--limit", "1"]).decode();
    assert_eq!(
        report_section(&stored[0].report, "preflight")["passed"],
        false,
        "{stored:#?}"
    );
}
