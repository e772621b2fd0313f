//! The chain workflow, the supervisor and `logs` through the daemon with the railway provider,
//! driving the REAL Railway CLI 5.71.0 against the STAND-IN for Railway's service and the
//! loopback relay sshd into a bench runner container (`megaplan_cloud_e2e::railway`), in a
//! network namespace with only loopback.

use megaplan_cloud_api::marker::LastChainMarker;
use megaplan_cloud_api::report::{EffectiveStatus, ProviderConsistency, ReportedStatus, TickEvent};
use megaplan_cloud_api::status::ChainLaunched;
use megaplan_cloud_e2e::railway::{RailwayWorld, in_private_namespace, real_cli};
use megaplan_cloud_e2e::rig::{Run, write_chain};
use megaplan_cloud_e2e::{Daemon, bench, repo_in_container, wait_until};
use std::io::Read;
use std::process::Stdio;
use std::time::Duration;

#[test]
fn chain_status_supervise_and_logs_over_the_real_railway_cli() {
    if !in_private_namespace(
        "workflow_railway::chain_status_supervise_and_logs_over_the_real_railway_cli",
    ) {
        return;
    }
    let Some(b) = bench() else { return };
    let Some(cli) = real_cli() else { return };
    let world = RailwayWorld::start(b, cli);
    let c = &world.container;
    let repo = repo_in_container(c);
    // `railway` on the daemon's PATH is the real CLI (behind the bench's env wrapper).
    let path = format!(
        "{}:{}",
        world.dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let d = Daemon::start(&[("PATH", &path)], &[]);
    let project = d.dir.join("project");
    std::fs::create_dir_all(&project).unwrap();
    let cy = project.join("cloud.yaml");
    std::fs::write(
        &cy,
        format!("provider: railway\nrepo: {{url: {repo}, workspace: /workspace/app}}\nrailway: {{service: agent, environment: staging}}\n"),
    )
    .unwrap();
    // The operator's own link of the cloud.yaml folder.
    world.link_as_operator(&project);
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
    // The launch carries the marker it wrote (kept whole by `ChainLaunched::rest`), read as
    // the api's marker type.
    let marker: LastChainMarker =
        serde_json::from_value(launched.decode::<ChainLaunched>().rest["marker"].clone())
            .unwrap_or_else(|e| panic!("the launch's marker: {e}\n{}", launched.stdout));
    assert_eq!(marker.provider.as_deref(), Some("railway"));
    // The original's shape: the service name as a string; ours (with the environment) beside.
    assert_eq!(marker.provider_identity.as_deref(), Some("agent"));
    assert_eq!(
        marker
            .provider_target
            .get()
            .map(|t| t["environment"].clone()),
        Some("staging".into())
    );

    assert!(wait_until(Duration::from_secs(60), || {
        run(&["status", "--chain"]).current_milestone().as_deref() == Some("m2")
    }));
    let s = run(&["status", "--chain"]).ok();
    assert_eq!(
        s.chain().effective_status,
        ReportedStatus::Classified(EffectiveStatus::Running)
    );
    assert_eq!(
        s.chain().provider_consistency,
        Some(ProviderConsistency::Consistent),
        "{}",
        s.stdout
    );
    // Every remote call went through the real CLI to the relay: it looked the instance up.
    assert!(world.relay.exec_requests() > 0);
    // The stand-in's own request log (Railway's GraphQL and websocket shapes): read as JSON.
    let reqs = world.take_requests();
    assert!(
        reqs.iter().any(|r| r["op"] == "ServiceInstance"
            && r["variables"]["serviceId"] == "svc-agent"
            && r["variables"]["environmentId"] == "env-staging"),
        "{reqs:?}"
    );

    // `logs` follows through the daemon until the client leaves.
    let mut client = d
        .ctl_command(
            &project,
            &["--cloud-yaml", cy.to_str().unwrap(), "logs", "-f"],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("ctl logs");
    let mut stdout = client.stdout.take().expect("stdout");
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while seen.matches("heartbeat").count() < 5 {
        let n = stdout.read(&mut buf).expect("read");
        assert!(n > 0, "logs ended while following: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(!seen.contains('\x1b'), "{seen:?}");
    let _ = client.kill();
    let _ = client.wait();
    drop(stdout);
    assert!(
        wait_until(Duration::from_secs(60), || world
            .requests()
            .iter()
            .any(|r| r["op"] == "ws closed")),
        "the CLI's log subscription closed after the client left: {:?}",
        world.requests()
    );

    // A marker written for another Railway service of the project is a consistency mismatch:
    // the tick observes (through `railway ssh --service other`), then refuses to act.
    world.control(&serde_json::json!({"services": ["agent", "other"]}));
    std::fs::write(
        &cy,
        format!("provider: railway\nrepo: {{url: {repo}, workspace: /workspace/app}}\nrailway: {{service: other, environment: staging}}\n"),
    )
    .unwrap();
    let t = run(&["supervise", "--chain"]);
    assert_eq!(t.report().event, TickEvent::Blocked, "{}", t.stdout);
    assert!(
        t.report()
            .refused_reason
            .unwrap_or_default()
            .contains("provider consistency mismatch"),
        "{}",
        t.stdout
    );
    assert!(!t.report().acted);
}
