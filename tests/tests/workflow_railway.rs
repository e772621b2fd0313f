//! The chain workflow and the supervisor through the railway provider, driven via the railway
//! CLI STAND-IN (tests/bench/railway), which runs `railway ssh … -- CMD` in a bench container.

use megaplan_cloud_e2e::rig::{Run, write_chain};
use megaplan_cloud_e2e::{Daemon, bench, path_with_railway_standin, repo_in_container, wait_until};
use serde_json::Value;
use std::time::Duration;

#[test]
fn chain_status_and_supervise_over_railway() {
    let Some(b) = bench() else { return };
    let c = b.container("mp-rw");
    let repo = repo_in_container(&c);
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("railway-argv.jsonl");
    let path = path_with_railway_standin();
    let log_s = log.display().to_string();
    let d = Daemon::start(
        &[
            ("PATH", &path),
            ("RAILWAY_STANDIN_CONTAINER", &c.name),
            ("RAILWAY_STANDIN_LOG", &log_s),
        ],
        &[],
    );
    let project = d.dir.join("project");
    std::fs::create_dir_all(&project).unwrap();
    let cy = project.join("cloud.yaml");
    std::fs::write(
        &cy,
        format!("provider: railway\nrepo: {{url: {repo}, workspace: /workspace/app}}\nrailway: {{service: agent, environment: staging}}\n"),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let mut full = vec!["--cloud-yaml", cy.to_str().unwrap()];
        full.extend_from_slice(args);
        Run::from_output(&d.ctl(&project, &[], &full))
    };
    c.exec_ok("git clone -q /srv/repo.git /workspace/app && mkdir -p /workspace/app/.megaplan");
    c.write_file(
        "/workspace/app/.megaplan/standin-control.json",
        br#"{"step_seconds": 0.2, "stall": ["m2"]}"#,
    );
    let spec = write_chain(&project.join("epic"), "chain.yaml", &["m1", "m2"]);
    let launched = run(&["chain", spec.to_str().unwrap()]).ok();
    assert_eq!(launched.json["marker"]["provider"], "railway");
    // The original's shape: the service name as a string; ours (with the environment) beside.
    assert_eq!(launched.json["marker"]["provider_identity"], "agent");
    assert_eq!(
        launched.json["marker"]["provider_target"]["environment"],
        "staging"
    );

    assert!(wait_until(Duration::from_secs(30), || {
        run(&["status", "--chain"]).json["summary"]["current_milestone"]["label"] == "m2"
    }));
    let s = run(&["status", "--chain"]).ok();
    assert_eq!(s.json["effective_status"], "running");
    assert_eq!(
        s.json["provider_consistency"]["status"], "consistent",
        "{}",
        s.stdout
    );

    // Every remote call went through `railway ssh --environment staging --service agent -- …`.
    let calls: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!calls.is_empty());
    for call in &calls {
        let argv: Vec<&str> = call
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(
            &argv[..6],
            [
                "ssh",
                "--environment",
                "staging",
                "--service",
                "agent",
                "--"
            ],
            "{argv:?}"
        );
    }

    // A marker written for another Railway service is a consistency mismatch: the tick refuses first.
    std::fs::write(
        &cy,
        format!("provider: railway\nrepo: {{url: {repo}, workspace: /workspace/app}}\nrailway: {{service: other, environment: staging}}\n"),
    )
    .unwrap();
    let t = run(&["supervise", "--chain"]);
    assert_eq!(t.json["event"], "supervisor_blocked", "{}", t.stdout);
    assert!(
        t.json["refused_reason"]
            .as_str()
            .unwrap()
            .contains("provider consistency mismatch"),
        "{}",
        t.stdout
    );
    assert_eq!(t.json["acted"], false);
}
