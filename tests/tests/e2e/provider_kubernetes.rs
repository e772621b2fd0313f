//! provider: kubernetes against a real cluster the test starts (tests/src/kube.rs: etcd,
//! kube-apiserver, controller-manager, scheduler, a kubelet on a dockerd of its own), through
//! the daemon and the client, with the daemon holding only the namespaced Role of
//! docs/providers.md: deploy → exec with a hostile argument → chain → status --chain →
//! supervise restarting a killed runner (one driver after) → logs -f → down (claim still
//! Bound) → a new deploy finds the workspace file → destroy (nothing labelled left). The
//! Secret's value never appears in the pod as the API serves it, the daemon's files (log,
//! SQLite) or any process's argv.

use megaplan_cloud_api::ErrorCode;
use megaplan_cloud_api::wire::TickRecord;
use megaplan_cloud_e2e::conformance::{self, ProviderFixture};
use megaplan_cloud_e2e::kube::{KubeCluster, KubeRunner};
use megaplan_cloud_e2e::receiver::Receiver;
use megaplan_cloud_e2e::rig::notify_config;
use megaplan_cloud_e2e::util::files_containing;
use megaplan_cloud_e2e::{unique_suffix, wait_until};
use megaplan_cloudd::cloud_yaml;
use megaplan_cloudd::provider::ProviderCtx;
use megaplan_cloudd::provider::kubernetes::KubernetesProvider;
use megaplan_cloudd::redact::Redactor;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Watches every process's argv for `needle` until stopped; the command lines seen with it.
fn argv_watch(needle: String) -> (Arc<AtomicBool>, std::thread::JoinHandle<Vec<String>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let handle = std::thread::spawn(move || {
        let mut seen = Vec::new();
        while !flag.load(Ordering::Relaxed) {
            if let Ok(procs) = std::fs::read_dir("/proc") {
                for p in procs.flatten() {
                    if let Ok(cmd) = std::fs::read(p.path().join("cmdline"))
                        && cmd.windows(needle.len()).any(|w| w == needle.as_bytes())
                    {
                        seen.push(String::from_utf8_lossy(&cmd).replace('\0', " "));
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        seen
    });
    (stop, handle)
}

/// The deployed pod, as the conformance suite takes it.
struct Deployed {
    p: Arc<KubernetesProvider>,
    secret: String,
}

impl ProviderFixture for Deployed {
    type P = KubernetesProvider;
    fn provider(&self) -> Arc<KubernetesProvider> {
        self.p.clone()
    }
    fn secret(&self) -> (&str, &str) {
        ("MP_KUBE_TOKEN", &self.secret)
    }
    // What the rendered entrypoint prints first, in the pod's log from its start.
    fn log_line(&self) -> &str {
        "entrypoint starting"
    }
    // The follow ends when the client leaves (the scenario's safety net shows no hang), but
    // returns Ok where the other providers return an error: see the fixture method's docs.
    fn follow_end_is_an_error(&self) -> bool {
        false
    }
    // Outside /workspace/app: the claim keeps the workspace, and the chain clones the repo
    // there later.
    fn upload_paths(&self) -> Vec<&str> {
        vec![
            "/tmp/conformance/bytes.bin",
            "/tmp/it's a $(dir)/f`x` \"y\"\nname",
        ]
    }
}

/// The conformance suite against the pod `cloud_yaml` deployed, through a provider built here
/// from the same cloud.yaml (the daemon's own is behind its socket).
fn run_conformance(cloud_yaml: &Path, secret: &str) {
    let spec = Arc::new(cloud_yaml::load(cloud_yaml).unwrap_or_else(|e| panic!("{e}")));
    let deploy_dir = tempfile::tempdir().expect("deploy dir");
    let ctx = |secrets: BTreeMap<String, String>| ProviderCtx {
        spec: spec.clone(),
        deploy_dir: deploy_dir.path().to_path_buf(),
        redactor: Redactor::new(&spec.secrets, &secrets),
        secrets,
        deadline: Duration::from_secs(120),
    };
    let with_secret = BTreeMap::from([("MP_KUBE_TOKEN".to_string(), secret.to_string())]);
    let p = Arc::new(KubernetesProvider::new(ctx(with_secret)).expect("provider"));
    let bare = KubernetesProvider::new(ctx(BTreeMap::new())).expect("provider");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        conformance::deploy_without_the_secret_is_refused(&bare, "MP_KUBE_TOKEN").await;
        conformance::run_all(&Deployed {
            p: p.clone(),
            secret: secret.to_string(),
        })
        .await;
    });
}

#[test]
fn kubernetes_runner_lifecycle_against_a_real_cluster() {
    let Some(cluster) = KubeCluster::start() else {
        return;
    };
    let secret = format!("kube-e2e-secret-{}", unique_suffix());
    let (stop_watch, watch) = argv_watch(secret.clone());
    let k = KubeRunner::start(&cluster, &[("MP_KUBE_TOKEN", &secret)]);
    let (d, project, cy, name) = (&k.daemon, &k.project, &k.cloud_yaml, &k.name);
    let run = |args: &[&str]| k.ctl(args);
    let ns = &cluster.namespace;
    let pod_path = format!("/api/v1/namespaces/{ns}/pods/{name}");
    let claim_path = format!("/api/v1/namespaces/{ns}/persistentvolumeclaims/{name}-workspace");

    // deploy: Secret, ConfigMap, claim, pod; ready on its readiness probe.
    let deployed = run(&["deploy"]);
    assert_eq!(
        deployed.code,
        Some(0),
        "deploy failed\nstdout: {}\nstderr: {}\n{}",
        deployed.stdout,
        deployed.stderr,
        cluster.logs_tail()
    );
    assert_eq!(deployed.json["success"], true, "{}", deployed.stdout);
    assert_eq!(deployed.json["provider"], "kubernetes");
    let pod = cluster.get_json(&pod_path);
    assert_eq!(
        pod["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "megaplan-cloudd"
    );
    assert!(
        pod["metadata"]["annotations"]["megaplan-cloudd/spec-digest"]
            .as_str()
            .is_some_and(|d| d.starts_with("sha256:")),
        "{pod:#}"
    );
    assert_eq!(pod["spec"]["restartPolicy"], "Never");
    assert_eq!(
        pod["spec"]["containers"][0]["envFrom"][0]["secretRef"]["name"],
        format!("{name}-env")
    );
    assert!(
        !pod.to_string().contains(&secret),
        "the secret is in the pod: {pod:#}"
    );
    assert_eq!(cluster.get_json(&claim_path)["status"]["phase"], "Bound");

    // exec: a hostile argument arrives as written; the secret reaches the runner's
    // environment through envFrom and comes back redacted.
    let e = run(&[
        "exec",
        "printf '%s|' \"a b\" '$(x)' `echo q` \"it's\"; echo \"tok=$MP_KUBE_TOKEN\"; echo err >&2; exit 7",
    ]);
    assert_eq!(e.code, Some(7), "{}\n{}", e.stdout, e.stderr);
    assert!(
        e.stdout.starts_with("a b|$(x)|q|it's|tok=***REDACTED***"),
        "{}",
        e.stdout
    );
    assert!(!e.stdout.contains(&secret));
    assert!(e.stderr.contains("err"), "{}", e.stderr);

    // What every provider owes (tests/src/conformance.rs), through the provider over the
    // deployed pod: exec, stdin, upload/read of every byte value, logs and follow, no
    // --session, no deploy without the secret.
    run_conformance(cy, &secret);

    // The chain (a second deploy replaces the pod; the claim stays), then status --chain.
    k.deploy_and_launch(
        &["m1", "m2", "m3"],
        r#"{"step_seconds": 0.2, "stall": ["m2"]}"#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        wait_until(Duration::from_secs(60), || {
            run(&["status", "--chain"]).current_milestone().as_deref() == Some("m2")
        }),
        "{}",
        run(&["status", "--chain"]).stdout
    );

    // supervise: a live runner is left alone; a killed one is restarted by the daemon, with
    // one driver afterwards.
    let t = run(&["supervise", "--chain"]);
    assert_eq!(t.code, Some(0), "{}", t.stderr);
    assert!(!t.report().acted, "{}", t.stdout);
    run(&["exec", "tmux kill-session -t =megaplan-chain"]).ok();
    run(&[
        "exec",
        "printf '%s' '{\"step_seconds\": 0.2}' > /workspace/app/.megaplan/standin-control.json",
    ])
    .ok();
    // The pod's resident observer keeps the driver's lease: the driver gone, the runner is
    // restarted once the lease has expired (before that the tick says unknown and waits).
    let mut last = String::new();
    let restarted = wait_until(Duration::from_secs(120), || {
        let t = run(&["supervise", "--chain"]);
        last = format!("{}\n{}", t.stdout, t.stderr);
        t.code == Some(0) && t.report().acted
    });
    assert!(
        restarted,
        "supervise never restarted the killed runner: {last}"
    );
    let drivers = run(&[
        "exec",
        "tmux list-sessions -F '#{session_name}' | grep -c '^megaplan-chain$'",
    ]);
    assert_eq!(drivers.stdout.trim(), "1", "{}", drivers.stderr);
    // The restart ran one milestone (`--one`); scheduled ticks carry the chain to its end.
    run(&["register", "--every", "2s"]).ok();
    let completed = wait_until(Duration::from_secs(90), || {
        run(&["status", "--chain"]).chain_complete()
    });
    let history = run(&["ticks", "--json", "--limit", "50"]).json;
    assert!(
        completed,
        "the chain did not complete under supervision; ticks: {history:#}"
    );
    let events: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["event"].as_str())
        .collect();
    assert!(events.contains(&"supervisor_restarted"), "{events:?}");
    run(&["unregister"]).ok();
    let s = run(&["status", "--chain"]).ok();
    assert!(s.stderr.contains("Completed: m1, m2, m3"), "{}", s.stderr);

    // logs -f: streams the entrypoint's output and keeps following (a line written after the
    // stream started arrives).
    let mut follow = d
        .ctl_command(
            project,
            &["--cloud-yaml", cy.to_str().unwrap(), "logs", "-f"],
        )
        .env("MP_KUBE_TOKEN", &secret)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    let first = lines.next().and_then(Result::ok).unwrap_or_default();
    assert!(!first.is_empty(), "logs -f printed nothing");
    let marker = format!("follow-marker-{}", unique_suffix());
    run(&["exec", &format!("echo {marker} > /proc/1/fd/1")]).ok();
    let arrived = lines
        .map_while(Result::ok)
        .take(10_000)
        .any(|l| l.contains(&marker));
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(
        arrived,
        "the line written after logs -f started did not arrive"
    );

    // The pod's log is redacted too: the secret written to it comes back masked.
    run(&["exec", "echo \"log-tok=$MP_KUBE_TOKEN\" > /proc/1/fd/1"]).ok();
    let logs = run(&["logs", "--no-follow", "--tail", "50"]);
    assert_eq!(logs.code, Some(0), "{}", logs.stderr);
    assert!(
        logs.stdout.contains("log-tok=***REDACTED***"),
        "{}",
        logs.stdout
    );
    assert!(!logs.stdout.contains(&secret));

    // down: the pod goes, the claim stays Bound; a new deploy finds the workspace file.
    run(&["exec", "echo kept > /workspace/app/kept.txt"]).ok();
    run(&["down"]).ok();
    assert!(wait_until(Duration::from_secs(30), || cluster
        .get_json(&pod_path)["code"]
        == 404));
    assert_eq!(cluster.get_json(&claim_path)["status"]["phase"], "Bound");
    run(&["deploy"]).ok();
    let kept = run(&["exec", "cat /workspace/app/kept.txt"]).ok();
    assert_eq!(kept.stdout.trim(), "kept");

    // The secret: not in the pod as served, the daemon's files, any argv.
    assert!(!cluster.get_json(&pod_path).to_string().contains(&secret));
    assert_eq!(
        files_containing(&d.dir, secret.as_bytes(), &[], &mut 0),
        Vec::<std::path::PathBuf>::new()
    );

    // destroy: nothing labelled for it is left.
    run(&["destroy", "--yes"]).ok();

    // A pod that cannot become ready: deploy fails with the reason the pod's status gives.
    let bad = project.join("bad.yaml");
    std::fs::write(
        &bad,
        std::fs::read_to_string(cy)
            .unwrap()
            .replace(&format!("name: {name}\n"), &format!("name: {name}-bad\n"))
            .replace(
                &format!("image: {}\n", cluster.image),
                "image: megaplan-e2e-missing:none\n",
            ),
    )
    .unwrap();
    let run_bad = |args: &[&str]| k.ctl_with(&bad, args);
    let refused = run_bad(&["deploy"]);
    assert_eq!(
        refused.code,
        Some(1),
        "{}\n{}",
        refused.stdout,
        refused.stderr
    );
    assert_eq!(
        refused.error_body().error,
        ErrorCode::ProviderFailed,
        "{}",
        refused.stdout
    );
    let message = refused.json["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("ErrImagePull") || message.contains("ImagePullBackOff"),
        "{message}"
    );
    run_bad(&["destroy", "--yes"]).ok();
    let selector = "app.kubernetes.io%2Fmanaged-by%3Dmegaplan-cloudd";
    for kind in ["pods", "persistentvolumeclaims", "secrets", "configmaps"] {
        let left = cluster.get_json(&format!(
            "/api/v1/namespaces/{ns}/{kind}?labelSelector={selector}"
        ));
        assert_eq!(
            left["items"],
            serde_json::json!([]),
            "{kind} left: {left:#}"
        );
    }
    stop_watch.store(true, Ordering::Relaxed);
    let seen = watch.join().unwrap();
    assert_eq!(seen, Vec::<String>::new(), "the secret appeared in an argv");
    assert_eq!(
        files_containing(&d.dir, secret.as_bytes(), &[], &mut 0),
        Vec::<std::path::PathBuf>::new()
    );
}

/// The resident observer over the pod's exec stream: a chain registered with a schedule that
/// never fires, its driver's tmux session killed in the pod, and an event tick follows at once
/// (the observer's watch saw the driver go), the stand-in receiver told. After `unregister`
/// no observer process is left in the pod.
#[test]
fn a_killed_driver_in_the_pod_is_told_at_once_and_the_observer_ends_with_unregister() {
    let Some(cluster) = KubeCluster::start() else {
        return;
    };
    let receiver = Receiver::start();
    let (_cfg, notify) = notify_config("retry: {initial_delay: 200ms, max_delay: 1s}\n");
    let notify = notify.display().to_string();
    let k = KubeRunner::start_with_args(&cluster, &[], &["--notify-config", &notify]);
    let run = |args: &[&str]| k.ctl(args);
    k.deploy_and_launch(&["m1", "m2"], r#"{"step_seconds": 0.1, "stall": ["m1"]}"#)
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs_tail()));
    assert!(
        wait_until(Duration::from_secs(60), || {
            run(&["status", "--chain"]).current_milestone().as_deref() == Some("m1")
        }),
        "{}",
        run(&["status", "--chain"]).stdout
    );
    let url = receiver.url("/hook");
    run(&["register", "--cron", "0 0 1 1 *", "--notify-url", &url]).ok();
    // A tick starts the pod's observer and its watch of the chain.
    let t = run(&["tick"]).ok();
    assert!(!t.tick().acted, "{}", t.stdout);
    assert!(
        wait_until(Duration::from_secs(60), || k
            .observers_in_pod()
            .is_some_and(|n| n == 1)),
        "no resident observer in the pod: {:?}\n{}",
        k.observers_in_pod(),
        k.daemon.log_text()
    );

    run(&["exec", "tmux kill-session -t =megaplan-chain"]).ok();
    let event_ticks = || -> Vec<TickRecord> {
        k.ticks(500)
            .into_iter()
            .filter(|t| t.trigger == "event")
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(90), || !event_ticks().is_empty()),
        "no event tick after the driver died; ticks: {:#?}\n{}",
        k.ticks(500),
        k.daemon.log_text()
    );
    assert!(
        wait_until(Duration::from_secs(90), || receiver.count("driver_gone")
            + receiver.count("supervisor_acted")
            >= 1),
        "the receiver was not told; got {:?}",
        receiver.events()
    );
    let all = k.ticks(500);
    assert!(
        all.iter().all(|t| t.trigger != "schedule"),
        "a scheduled tick ran: {all:#?}"
    );

    // Unregistered: the observer ends, in the pod too.
    run(&["unregister"]).ok();
    assert!(
        wait_until(Duration::from_secs(90), || k.observers_in_pod() == Some(0)),
        "the resident observer outlived its registration in the pod: {:?}\n{}\n{}",
        k.observers_in_pod(),
        k.pod_processes(),
        k.daemon.log_text()
    );
    run(&["destroy", "--yes"]).ok();
}
