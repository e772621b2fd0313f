//! railway provider end to end: the REAL Railway CLI 5.71.0 against the STAND-IN for Railway's
//! service (tests/bench/railway-service) and a loopback sshd standing in for Railway's ssh
//! relay into a bench runner container, in a network namespace with only loopback
//! (`megaplan_cloud_e2e::railway`). Each operation is checked by what reached the service.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use megaplan_cloud_api::ErrorCode;
use megaplan_cloud_e2e::conformance::{self, ProviderFixture, SECRET_NAME};
use megaplan_cloud_e2e::railway::{RailwayWorld, all_cmdlines, in_private_namespace, real_cli};
use megaplan_cloud_e2e::{bench, wait_until};
use megaplan_cloudd::process::StreamKind;
use megaplan_cloudd::provider::railway::{RailwayProvider, UPLOAD_CHUNK};
use megaplan_cloudd::provider::ssh_master::SshSessions;
use megaplan_cloudd::provider::{Provider, ProviderCtx};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const SECRET_VALUE: &str = "tok-railway-0123456789abcdef";

/// The deployed service, as the conformance suite takes it.
struct Deployed {
    p: Arc<RailwayProvider>,
}

impl ProviderFixture for Deployed {
    type P = RailwayProvider;
    fn provider(&self) -> Arc<RailwayProvider> {
        self.p.clone()
    }
    fn secret(&self) -> (&str, &str) {
        (SECRET_NAME, SECRET_VALUE)
    }
    fn log_line(&self) -> &str {
        "runner booted"
    }
    fn upload_paths(&self) -> Vec<&str> {
        vec!["/workspace/app/bytes.bin"]
    }
    fn has_sessions(&self) -> bool {
        true
    }
    // Railway's follow is checked by what reached the service
    // (`follow_until_the_client_leaves`).
    fn follow_scenario(&self) -> bool {
        false
    }
}

fn ops(requests: &[Value]) -> Vec<String> {
    requests
        .iter()
        .map(|r| r["op"].as_str().unwrap_or("?").to_string())
        .collect()
}

fn find<'a>(requests: &'a [Value], op: &str) -> Vec<&'a Value> {
    requests.iter().filter(|r| r["op"] == op).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn railway_provider_drives_the_real_cli() {
    if !in_private_namespace("provider_railway::railway_provider_drives_the_real_cli") {
        return;
    }
    let Some(b) = bench() else { return };
    let Some(cli) = real_cli() else { return };
    let world = RailwayWorld::start(b, cli);
    let tmp = tempfile::tempdir().expect("tmp");
    let cloud_dir = tmp.path().join("project");
    let deploy_dir = tmp.path().join("deploy");
    std::fs::create_dir_all(&cloud_dir).expect("mkdir");
    std::fs::write(
        cloud_dir.join("cloud.yaml"),
        format!(
            "provider: railway\nrepo:\n  url: /srv/repo.git\nsecrets: [{SECRET_NAME}]\nresources:\n  volume: vol-1\nrailway:\n  service: agent\n  session: agent-session\n  project: proj-1\n  environment: staging\n"
        ),
    )
    .expect("cloud.yaml");
    let secrets = BTreeMap::from([(SECRET_NAME.to_string(), SECRET_VALUE.to_string())]);
    let ctx = conformance::provider_ctx(
        &cloud_dir.join("cloud.yaml"),
        &deploy_dir,
        secrets.clone(),
        Duration::from_secs(300),
    );
    let spec = ctx.spec.clone();
    let program = world.wrapper.display().to_string();
    let p = Arc::new(RailwayProvider::with_program(ctx.clone(), &program));
    world.control(&json!({"services": ["agent", "db"]}));

    // deploy, while another thread reads every process's argv: no secret value in any of them.
    let stop = Arc::new(AtomicBool::new(false));
    let railway_seen = Arc::new(AtomicUsize::new(0));
    let scanner = {
        let (stop, railway_seen) = (stop.clone(), railway_seen.clone());
        std::thread::spawn(move || {
            let mut leaks = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                for line in all_cmdlines() {
                    if line.contains(SECRET_VALUE) {
                        leaks.push(line.clone());
                    }
                    if line.contains("railway variable set") || line.contains(" variable set ") {
                        railway_seen.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            leaks
        })
    };
    let (tx, task) = megaplan_cloud_e2e::output_collector();
    let report = p.deploy(&tx).await;
    drop(tx);
    stop.store(true, Ordering::Relaxed);
    let leaks = scanner.join().expect("scanner");
    let (out, err) = task.await.expect("collector");
    let report = report.unwrap_or_else(|e| panic!("deploy: {e}\n{out}\n{err}"));
    assert_eq!(leaks, Vec::<String>::new(), "a secret value was in argv");
    assert!(
        railway_seen.load(Ordering::Relaxed) > 0,
        "the scanner saw the variable set process"
    );
    let reqs = world.take_requests();
    let names = ops(&reqs);
    // link, service list, variable set over stdin, one up: in that order, all authorized.
    for op in [
        "UserProjects",
        "EnvironmentInstances",
        "VariableCollectionUpsert",
        "up",
    ] {
        assert!(
            names.contains(&op.to_string()),
            "{op} missing from {names:?}"
        );
    }
    assert!(
        reqs.iter()
            .all(|r| r["op"] == "ws closed" || r["auth"] == true),
        "{reqs:?}"
    );
    assert!(
        !names.iter().any(|n| n == "CliEventTrack"),
        "no telemetry: {names:?}"
    );
    let upserts = find(&reqs, "VariableCollectionUpsert");
    assert_eq!(upserts.len(), 1);
    let hash = format!(
        "sha256:{}",
        hex::encode(Sha256::digest(SECRET_VALUE.as_bytes()))
    );
    assert_eq!(
        upserts[0]["variables"]["variables"],
        json!({ SECRET_NAME: hash })
    );
    assert_eq!(upserts[0]["variables"]["skipDeploys"], true);
    assert_eq!(upserts[0]["variables"]["serviceId"], "svc-agent");
    assert_eq!(upserts[0]["variables"]["environmentId"], "env-staging");
    let ups = find(&reqs, "up");
    assert_eq!(ups.len(), 1, "one deploy");
    assert_eq!(ups[0]["serviceId"], "svc-agent");
    assert_eq!(ups[0]["environment"], "env-staging");
    assert!(
        ups[0]["files"]
            .as_array()
            .expect("files")
            .iter()
            .any(|f| f.as_str().is_some_and(|f| f.ends_with("Dockerfile"))),
        "the deploy dir was uploaded: {:?}",
        ups[0]["files"]
    );
    assert!(
        names.iter().position(|n| n == "VariableCollectionUpsert")
            < names.iter().position(|n| n == "up"),
        "{names:?}"
    );
    assert!(
        names.contains(&"subscribe Deployment".to_string()),
        "up --ci waited for the deployment status: {names:?}"
    );
    assert!(report.success);
    assert_eq!(report.image_rebuild, "triggered");
    assert_eq!(
        report.verdict,
        "deploy: triggered Railway build/deploy for service agent"
    );
    assert_eq!(
        conformance::step_statuses(&report),
        [
            ("railway link", "ok"),
            ("verify Railway service", "ok"),
            ("set Railway service variables", "ok"),
            ("railway up", "ok"),
        ]
    );
    assert!(out.contains("Deploy complete"), "{out}");
    // The build logs streamed (EnvironmentLogs for the status's snapshot) before the verdict.
    assert!(
        out.lines()
            .any(|l| l.starts_with("building ") && l.ends_with(" files")),
        "{out}"
    );
    assert!(
        names.contains(&"subscribe EnvironmentLogs".to_string()),
        "{names:?}"
    );
    assert!(
        !serde_json::to_string(&report)
            .expect("json")
            .contains(SECRET_VALUE)
    );

    // The same upload again: Railway skips the build, the CLI says so, no rebuild is reported.
    let (report, out, _) = conformance::deploy_ok(&*p, "deploy 2").await;
    assert_eq!(report.image_rebuild, "not_triggered");
    assert_eq!(report.verdict, "deploy: vars updated, no image rebuild");
    assert!(report.success);
    // What the real CLI printed for the unchanged upload (and exited 0 on), not a guess.
    assert!(
        out.lines()
            .any(|l| l.starts_with("No changed files matched patterns")),
        "{out}"
    );
    assert!(!out.contains("Deploy complete"), "{out}");
    let reqs = world.take_requests();
    assert_eq!(
        find(&reqs, "up").len(),
        1,
        "it was uploaded: {:?}",
        ops(&reqs)
    );

    // A failed build is a failed deploy (the CLI's exit status, from the deployment status).
    std::fs::write(deploy_dir.join("changed.txt"), "1").expect("change");
    world.control(&json!({"services": ["agent", "db"], "up": "FAILED"}));
    let (tx, _task) = megaplan_cloud_e2e::output_collector();
    let e = p.deploy(&tx).await.expect_err("build fails");
    let e = megaplan_cloud_api::ErrorBody::from(e);
    assert_eq!(e.error, ErrorCode::ProviderFailed);
    // The CLI's verdict line, with the error of the deployment's failed step (DeploymentEvents).
    assert!(
        e.message.contains("Deploy failed: Docker build failed"),
        "{}",
        e.message
    );
    world.take_requests();

    // A crash after the build is a failed deploy too.
    std::fs::write(deploy_dir.join("changed.txt"), "crash").expect("change");
    world.control(&json!({"services": ["agent", "db"], "up": "CRASHED"}));
    let (tx, _task) = megaplan_cloud_e2e::output_collector();
    let e = p.deploy(&tx).await.expect_err("deployment crashes");
    let e = megaplan_cloud_api::ErrorBody::from(e);
    assert_eq!(e.error, ErrorCode::ProviderFailed);
    assert!(e.message.contains("Deploy crashed"), "{}", e.message);
    world.take_requests();

    // The service ends the status stream before a terminal status: the CLI exits 0 without a
    // verdict, which is not a success.
    std::fs::write(deploy_dir.join("changed.txt"), "ends").expect("change");
    world.control(&json!({"services": ["agent", "db"], "streams_end": true}));
    let (tx, _task) = megaplan_cloud_e2e::output_collector();
    let e = p.deploy(&tx).await.expect_err("no verdict");
    let e = megaplan_cloud_api::ErrorBody::from(e);
    assert_eq!(e.error, ErrorCode::ProviderFailed);
    assert!(
        e.message.contains("without a deployment status"),
        "{}",
        e.message
    );
    world.take_requests();

    // The service is not in the project: refused after the check, before any variable is set.
    world.control(&json!({"services": ["db"]}));
    let (tx, _task) = megaplan_cloud_e2e::output_collector();
    let e = p.deploy(&tx).await.expect_err("service missing");
    let e = megaplan_cloud_api::ErrorBody::from(e);
    assert_eq!(e.error, ErrorCode::RailwayServiceMissing);
    assert!(!ops(&world.take_requests()).contains(&"VariableCollectionUpsert".to_string()));
    world.control(&json!({"services": ["agent", "db"]}));

    // The operator links the cloud.yaml folder once, as they would by hand; every other
    // command runs there.
    world.link_as_operator(&cloud_dir);

    // exec over `railway ssh`: the relay runs it in the runner container.
    world.container.exec_ok(&format!(
        "echo 'export {SECRET_NAME}={SECRET_VALUE}' >> /etc/profile"
    ));
    let before = world.relay.exec_requests();
    let r = p
        .exec(
            &format!("echo \"${SECRET_NAME}\"; echo err >&2; exit 3"),
            None,
        )
        .await
        .expect("exec");
    assert_eq!(
        (r.code, r.stdout.as_str(), r.stderr.as_str()),
        (3, "***REDACTED***\n", "err\n")
    );
    assert_eq!(world.relay.exec_requests(), before + 1, "one relay session");
    let reqs = world.take_requests();
    assert!(
        ops(&reqs).contains(&"ServiceInstance".to_string()),
        "{reqs:?}"
    );
    assert!(
        ops(&reqs).contains(&"SshPublicKeys".to_string()),
        "{reqs:?}"
    );

    // A CLI error reads as its message even with backtraces on in the environment (the
    // namespace runs with RUST_BACKTRACE=1): anyhow's error backtrace is off for the CLI.
    let mut ghost_spec = (*spec).clone();
    ghost_spec.railway.service = "ghost".to_string();
    let ghost = RailwayProvider::with_program(
        ProviderCtx {
            spec: Arc::new(ghost_spec),
            ..ctx.clone()
        },
        &program,
    );
    let r = ghost.exec("true", None).await.expect("exec ghost");
    assert_ne!(r.code, 0);
    assert!(
        !r.stderr.is_empty() && !r.stderr.contains("Stack backtrace"),
        "{}",
        r.stderr
    );
    world.take_requests();

    // Held session: `railway ssh config` once, then one ControlMaster to the relay; later calls
    // cost one multiplexed channel: no CLI run, no backboard request, no new connection.
    let control_dir = tempfile::Builder::new()
        .prefix("rwc")
        .tempdir_in("/tmp")
        .expect("ctl dir");
    let sessions = SshSessions::new(control_dir.path().join("c"), None);
    let held = RailwayProvider::with_program(ctx.clone(), &program).with_sessions(sessions.clone());
    let r = held.exec("echo held", None).await.expect("held exec");
    assert_eq!((r.code, r.stdout.as_str()), (0, "held\n"));
    let reqs = world.take_requests();
    assert!(
        reqs.iter().any(|r| r["op"] == "ServiceInstance"),
        "resolved through `railway ssh config`: {reqs:?}"
    );
    assert_eq!(sessions.count(), 1, "one master held");
    let (conns, execs) = (
        world.relay.accepted_connections(),
        world.relay.exec_requests(),
    );
    for i in 0..3 {
        let r = held
            .exec(&format!("echo {i}; exit {i}"), None)
            .await
            .expect("held exec");
        assert_eq!((r.code, r.stdout.trim()), (i, i.to_string().as_str()));
    }
    held.upload("/workspace/app/held.txt", b"over the master")
        .await
        .expect("held upload");
    assert_eq!(
        held.read("/workspace/app/held.txt")
            .await
            .expect("held read"),
        b"over the master"
    );
    assert_eq!(
        world.take_requests(),
        Vec::<Value>::new(),
        "no CLI run after the first"
    );
    assert_eq!(
        world.relay.accepted_connections(),
        conns,
        "no new connection"
    );
    assert_eq!(
        world.relay.exec_requests(),
        execs + 5,
        "one channel per call"
    );
    sessions.close_all().await;

    // What every provider owes (tests/src/conformance.rs): the secret redacted, exit code and
    // stderr, stdin, upload/read of every byte value, a missing file, logs without follow.
    world.control(&json!({"services": ["agent", "db"], "log_lines": ["runner booted", format!("token {SECRET_VALUE}")]}));
    conformance::run_all(&Deployed { p: p.clone() }).await;
    // Its logs read the deployment's recent lines from the service.
    assert!(ops(&world.take_requests()).contains(&"DeploymentLogs".to_string()));
    // The upload is in the runner container the relay reaches.
    let all: Vec<u8> = (0..=255u8).collect();
    assert_eq!(
        world.container.read_file("/workspace/app/bytes.bin"),
        Some(all)
    );

    // A file large enough to be chunked.
    let big: Vec<u8> = (0..=255u8).cycle().take(UPLOAD_CHUNK * 2 + 100).collect();
    p.upload("/workspace/app/it's big", &big)
        .await
        .expect("chunked upload");
    assert_eq!(
        p.read("/workspace/app/it's big").await.expect("read big"),
        big
    );
    world.take_requests();

    // logs in follow mode keeps streaming (under a pseudo-terminal) until the client leaves.
    follow_until_the_client_leaves(&p, &world).await;

    // down: removes the latest deployment without a prompt.
    let (tx, _task) = megaplan_cloud_e2e::output_collector();
    p.down(&tx).await.unwrap_or_else(|e| panic!("down: {e}"));
    let reqs = world.take_requests();
    assert_eq!(find(&reqs, "DeploymentRemove").len(), 1, "{reqs:?}");

    // destroy: down (of a fresh deployment), then the volume, by flag and without a prompt.
    std::fs::write(deploy_dir.join("changed.txt"), "2").expect("change");
    let (tx, _task) = megaplan_cloud_e2e::output_collector();
    p.deploy(&tx).await.expect("redeploy");
    world.take_requests();
    let (tx, _task) = megaplan_cloud_e2e::output_collector();
    p.destroy(&tx)
        .await
        .unwrap_or_else(|e| panic!("destroy: {e}"));
    let reqs = world.take_requests();
    assert_eq!(find(&reqs, "DeploymentRemove").len(), 1, "{reqs:?}");
    let deletes = find(&reqs, "VolumeDelete");
    assert_eq!(deletes.len(), 1, "{reqs:?}");
    assert_eq!(deletes[0]["variables"]["id"], "volid-vol-1");

    // Nothing the CLI sent was an operation the stand-in does not know.
    let log = std::fs::read_to_string(world.dir.join("requests.jsonl")).unwrap_or_default();
    assert!(!log.contains("unknown operation"), "{log}");

    // A missing CLI is provider_unavailable naming it and its install page.
    let gone = RailwayProvider::with_program(ctx, "railway-not-installed-xyz");
    let e = gone.exec("true", None).await.expect_err("no cli");
    let e = megaplan_cloud_api::ErrorBody::from(e);
    assert_eq!(e.error, ErrorCode::ProviderUnavailable);
    assert!(
        e.message.contains("https://docs.railway.app/develop/cli"),
        "{}",
        e.message
    );
    let (tx, _task) = megaplan_cloud_e2e::output_collector();
    let e = gone
        .logs(true, &Default::default(), &tx)
        .await
        .expect_err("no cli, follow");
    let e = megaplan_cloud_api::ErrorBody::from(e);
    assert_eq!(e.error, ErrorCode::ProviderUnavailable);
}

/// `logs` with follow: lines keep arriving through the provider (the stand-in's subscription
/// sends one every 0.2 s, forever) until the receiver is dropped; then the CLI is gone and the
/// subscription closed.
async fn follow_until_the_client_leaves(p: &RailwayProvider, world: &RailwayWorld) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(StreamKind, String)>(64);
    let p_logs = async move { p.logs(true, &Default::default(), &tx).await };
    let reader = async move {
        let mut text = String::new();
        while let Some((_, chunk)) = rx.recv().await {
            text.push_str(&chunk);
            if text.matches("heartbeat").count() >= 5 {
                break;
            }
        }
        drop(rx); // the client leaves
        text
    };
    let (result, text) = tokio::join!(p_logs, reader);
    assert!(text.matches("heartbeat").count() >= 5, "{text}");
    assert!(text.contains("runner booted"), "{text}");
    assert!(!text.contains(SECRET_VALUE), "redacted: {text}");
    assert!(
        !text.contains('\x1b') && !text.contains('\r'),
        "terminal controls stripped: {text:?}"
    );
    let e = result.expect_err("the follow ends only because the client left");
    let e = megaplan_cloud_api::ErrorBody::from(e);
    assert!(e.message.contains("because the client went away"), "{e}");
    // The CLI went away with the client: its subscription closed.
    assert!(
        wait_until(Duration::from_secs(30), || {
            world
                .requests()
                .iter()
                .any(|r| r["op"] == "ws closed" && r["sent_log_lines"].as_u64() >= Some(5))
        }),
        "{:?}",
        world.requests()
    );
    assert!(
        wait_until(Duration::from_secs(30), || !all_cmdlines()
            .iter()
            .any(|c| c.contains(&format!("{} logs", world.cli.display())))),
        "no railway logs process is left"
    );
    world.take_requests();
}
