//! Fault suite (issue 7) against the real daemon.

use megaplan_cloud_e2e::rig::{Run, SshRig, write_chain};
use megaplan_cloud_e2e::wait_until;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn sqlite(db: &Path, sql: &str) -> String {
    let out = Command::new("sqlite3")
        .arg(db)
        .arg(sql)
        .output()
        .expect("sqlite3 must be installed (.ci/run installs it)");
    assert!(out.status.success(), "sqlite3 {sql} failed: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn pgrep(pattern: &str) -> Vec<String> {
    let out = Command::new("pgrep")
        .args(["-a", "-f", pattern])
        .output()
        .expect("pgrep (procps) must be installed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn launch(rig: &SshRig, labels: &[&str]) {
    let spec = write_chain(&rig.project.join("epic"), "chain.yaml", labels);
    rig.ctl(&["chain", spec.to_str().unwrap()]).ok();
}

#[test]
fn hanging_remote_command_is_killed_at_the_tick_deadline() {
    let Some(rig) = SshRig::start("", &["--tick-timeout", "5s"]) else {
        return;
    };
    rig.precreate_workspace();
    rig.control(r#"{"step_seconds": 0.1, "stall": ["m1"]}"#);
    launch(&rig, &["m1", "m2"]);
    assert!(wait_until(Duration::from_secs(30), || {
        rig.ctl(&["status", "--chain"]).json["summary"]["current_milestone"]["label"] == "m1"
    }));
    rig.control(r#"{"step_seconds": 0.1, "stall": ["m1"], "hang_status": true}"#);
    let started = Instant::now();
    let t = rig.ctl(&["supervise", "--chain"]);
    let took = started.elapsed();
    eprintln!("took {took:?}\n{}\n{}", t.stdout, t.stderr);
    std::thread::sleep(Duration::from_millis(500));
    eprintln!("{:#?}", pgrep(&rig.container.name));
    eprintln!("{:#?}", pgrep("ssh -S"));
}
