//! ssh provider end to end: a real sshd on loopback (the "Docker host" is this machine), the
//! daemon's held ControlMaster session, a runner image built from a fixture Dockerfile.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use megaplan_cloud_api::ErrorCode;
use megaplan_cloud_e2e::conformance::{self, SECRET_NAME};
use megaplan_cloud_e2e::util::docker;
use megaplan_cloud_e2e::{Sshd, bench, unique_suffix, wait_until};
use megaplan_cloudd::cloud_yaml::{self, CloudSpec};
use megaplan_cloudd::provider::ssh::{SshProvider, scp_args};
use megaplan_cloudd::provider::ssh_master::{SshSessions, SshTarget};
use megaplan_cloudd::provider::{Provider, ProviderCtx};
use megaplan_cloudd::redact::Redactor;
use megaplan_cloudd::render;
use sha2::{Digest, Sha256};

const SECRET_VALUE: &str = "tok-e2e-0123456789abcdef";

/// Removes the runner container, its image and the host folders, whatever the test outcome.
struct Cleanup {
    container: String,
    dirs: Vec<PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.container])
            .output();
        let _ = Command::new("docker")
            .args(["rmi", "-f", &self.container])
            .output();
        for d in &self.dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

struct Fixture {
    _tmp: tempfile::TempDir,
    sshd: Sshd,
    sessions: SshSessions,
    cloud_dir: PathBuf,
    deploy_dir: PathBuf,
    remote_dir: String,
    container: String,
    image: String,
    _cleanup: Cleanup,
}

impl Fixture {
    fn new(image: &str) -> Fixture {
        let tmp = tempfile::Builder::new()
            .prefix("mpssh")
            .tempdir()
            .expect("temp dir");
        let sshd = Sshd::start();
        // A short private control folder, as the daemon uses (socket paths are length-limited).
        let sessions = SshSessions::new(tmp.path().join("c"), Some(sshd.ssh_config.clone()));
        let suffix = unique_suffix();
        let container = format!("mp-e2e-ssh-{suffix}");
        let remote_root = std::env::temp_dir().join(format!("mp-e2e-remote-{suffix}"));
        // Only safe characters are allowed in ssh.remote_dir (cloud_yaml::is_safe_remote_dir);
        // hostile words are covered by the quoting property tests.
        let remote_dir = remote_root
            .join("deploy_dir+1")
            .to_string_lossy()
            .into_owned();
        let cloud_dir = tmp.path().join("project");
        std::fs::create_dir_all(&cloud_dir).expect("project dir");
        let deploy_dir = tmp.path().join("deploy");
        Fixture {
            _cleanup: Cleanup {
                container: container.clone(),
                dirs: vec![remote_root],
            },
            _tmp: tmp,
            sshd,
            sessions,
            cloud_dir,
            deploy_dir,
            remote_dir,
            container,
            image: image.to_string(),
        }
    }

    /// Write cloud.yaml plus the fixture Dockerfile and load it.
    fn spec(&self, network: Option<&str>, port: u16) -> Arc<CloudSpec> {
        std::fs::write(
            self.cloud_dir.join("Fixture.Dockerfile"),
            format!(
                "FROM {}\nCOPY health_server.py /opt/fixture/health_server.py\nCMD [\"sh\", \"-c\", \"echo runner-started; exec sleep infinity\"]\n",
                self.image
            ),
        )
        .expect("write Dockerfile");
        let network = network
            .map(|n| format!("  network: {n}\n"))
            .unwrap_or_default();
        let yaml = format!(
            "provider: ssh\nrepo:\n  url: /srv/repo.git\n  workspace: /workspace/app\nsecrets: [{SECRET_NAME}]\nresources:\n  port: {port}\n{network}ssh:\n  host: 127.0.0.1\n  user: root\n  port: {sshd_port}\n  identity_file: {key}\n  remote_dir: \"{remote}\"\n  container: {c}\nimage:\n  dockerfile: Fixture.Dockerfile\n",
            sshd_port = self.sshd.port,
            key = self.sshd.client_key.display(),
            remote = self.remote_dir,
            c = self.container,
        );
        let path = self.cloud_dir.join("cloud.yaml");
        std::fs::write(&path, yaml).expect("write cloud.yaml");
        let spec = cloud_yaml::load(&path).unwrap_or_else(|e| panic!("cloud.yaml: {e}"));
        render::write_deploy_dir(&spec, &self.deploy_dir).unwrap_or_else(|e| panic!("render: {e}"));
        Arc::new(spec)
    }

    fn provider(&self, spec: Arc<CloudSpec>, with_secret: bool) -> SshProvider {
        let mut secrets = BTreeMap::new();
        if with_secret {
            secrets.insert(SECRET_NAME.to_string(), SECRET_VALUE.to_string());
        }
        let redactor = Redactor::new(&spec.secrets, &secrets);
        SshProvider::new(
            ProviderCtx {
                spec,
                deploy_dir: self.deploy_dir.clone(),
                secrets,
                redactor,
                deadline: Duration::from_secs(120),
            },
            self.sessions.clone(),
        )
        .unwrap_or_else(|e| panic!("provider: {e}"))
    }
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_provider_full_lifecycle_over_one_held_connection() {
    let Some(b) = bench() else { return };
    let fx = Fixture::new(&b.image);
    let spec = fx.spec(Some("none"), 18081);
    let p = fx.provider(spec.clone(), true);
    let connections_at_start = fx.sshd.accepted_connections();

    // build: rsync through the held master, then docker build streamed.
    let (tx, task) = megaplan_cloud_e2e::output_collector();
    p.build(&tx).await.unwrap_or_else(|e| panic!("build: {e}"));
    drop(tx);
    let (out, err) = task.await.expect("collector");
    assert!(
        Path::new(&fx.remote_dir).join("Dockerfile").is_file(),
        "deploy dir synced to remote_dir; build output:\n{out}\n{err}"
    );
    assert!(
        Path::new(&fx.remote_dir)
            .join("entrypoint.sh")
            .metadata()
            .map(|m| {
                use std::os::unix::fs::PermissionsExt;
                m.permissions().mode() & 0o111 != 0
            })
            .unwrap_or(false),
        "modes kept by rsync -a"
    );
    assert!(
        !docker(&["image", "inspect", "-f", "{{.Id}}", &fx.container]).is_empty(),
        "image tagged with the container name"
    );

    // deploy without the secret's value: refused before anything changes.
    conformance::deploy_without_the_secret_is_refused(
        &fx.provider(spec.clone(), false),
        SECRET_NAME,
    )
    .await;
    assert!(
        !Path::new(&fx.remote_dir).join(".env").exists(),
        "nothing written on refusal"
    );

    // deploy.
    let (report, _, _) = conformance::deploy_ok(&p, "deploy").await;
    assert!(report.success);
    assert_eq!(report.provider, "ssh");
    assert_eq!(
        conformance::step_statuses(&report),
        [
            ("create remote dirs", "ok"),
            ("write .env", "ok"),
            ("remove old container", "ok"),
            ("docker run", "ok")
        ]
    );
    let report_json = serde_json::to_string(&report).expect("report json");
    assert!(!report_json.contains(SECRET_VALUE), "{report_json}");
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.Running}}", &fx.container]),
        "true"
    );
    assert_eq!(
        docker(&[
            "inspect",
            "-f",
            "{{.HostConfig.NetworkMode}}",
            &fx.container
        ]),
        "none"
    );
    assert_eq!(
        docker(&[
            "inspect",
            "-f",
            "{{json .HostConfig.PortBindings}}",
            &fx.container
        ]),
        "{}",
        "no port mapping with network none"
    );
    assert_eq!(
        docker(&[
            "inspect",
            "-f",
            "{{.HostConfig.RestartPolicy.Name}}",
            &fx.container
        ]),
        "unless-stopped"
    );
    let env_file = Path::new(&fx.remote_dir).join(".env");
    let env_text = std::fs::read_to_string(&env_file).expect("remote .env");
    assert_eq!(
        env_text,
        format!("PORT=18081\n{SECRET_NAME}={SECRET_VALUE}\n")
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = env_file.metadata().expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "remote .env is private");
    }
    let mounts = docker(&["inspect", "-f", "{{json .Mounts}}", &fx.container]);
    assert!(
        mounts.contains(&format!("{}/workspace", fx.remote_dir))
            && mounts.contains("\"/workspace\""),
        "workspace parent bind-mounted: {mounts}"
    );

    // What every provider owes (tests/src/conformance.rs): the env file reached the
    // container and the value comes back redacted, exec, stdin, upload/read, logs, follow.
    let p = Arc::new(p);
    conformance::run_all(&conformance::Deployed {
        provider: p.clone(),
        secret_value: SECRET_VALUE,
        port: 18081,
        log_line: "runner-started",
        upload_paths: conformance::UPLOAD_PATHS.to_vec(),
    })
    .await;

    // The value itself, as a digest, reached the runner byte for byte.
    let r = p
        .exec(
            &format!("printf %s \"${SECRET_NAME}\" | sha256sum | cut -c1-64"),
            None,
        )
        .await
        .expect("exec");
    assert_eq!(r.stdout.trim(), sha256_hex(SECRET_VALUE));

    let r = p
        .observe("echo \"$0\" '$HOME' `echo x`")
        .await
        .expect("observe");
    assert_eq!(r.stdout, "bash $HOME x\n");

    // A file large enough to take several writes.
    let big: Vec<u8> = (0..=255u8).cycle().take(3 * 1024 * 1024 + 7).collect();
    p.upload("/workspace/app/big.bin", &big)
        .await
        .expect("big upload");
    assert_eq!(
        p.read("/workspace/app/big.bin").await.expect("big read"),
        big
    );
    let e = p
        .read("/workspace/app/missing")
        .await
        .expect_err("missing file");
    let e = megaplan_cloud_api::ErrorBody::from(e);
    assert!(e.message.contains("No such file"), "{}", e.message);

    // logs --tail 1 --since 1h: one line, from the last hour; a hostile --since is refused
    // before anything runs.
    let window = megaplan_cloudd::provider::LogWindow {
        tail: Some(1),
        since: Some("1h".into()),
    };
    let (tx, task) = megaplan_cloud_e2e::output_collector();
    let code = p.logs(false, &window, &tx).await.expect("logs --tail 1");
    drop(tx);
    let (one, err) = task.await.expect("collector");
    assert_eq!(code, 0, "{err}");
    assert_eq!(one.lines().count(), 1, "{one}");
    let bad = megaplan_cloudd::provider::LogWindow {
        tail: None,
        since: Some("1h; rm -rf /".into()),
    };
    let (tx, _task) = megaplan_cloud_e2e::output_collector();
    let e = p.logs(false, &bad, &tx).await.expect_err("hostile --since");
    let e = megaplan_cloud_api::ErrorBody::from(e);
    assert_eq!(e.error, ErrorCode::InvalidArgs, "{e}");

    // scp fallback transport through the same master (no new connection).
    let master = fx
        .sessions
        .master(&SshTarget {
            host: "127.0.0.1".into(),
            user: Some("root".into()),
            port: fx.sshd.port,
            identity_file: Some(fx.sshd.client_key.display().to_string()),
            max_sessions: 10,
        })
        .await
        .expect("master");
    let scp_dest = format!("{}/scp-copy", fx.remote_dir);
    std::fs::create_dir_all(&scp_dest).expect("scp dest");
    let entries = vec![fx.deploy_dir.join("Dockerfile").display().to_string()];
    let argv = scp_args(&master, &entries, &scp_dest);
    let out = Command::new(&argv[0])
        .args(&argv[1..])
        .output()
        .expect("scp");
    assert!(out.status.success(), "{out:?}");
    assert!(Path::new(&scp_dest).join("Dockerfile").is_file());

    // Everything so far used one TCP connection: the held master.
    assert_eq!(
        fx.sshd.accepted_connections() - connections_at_start,
        1,
        "one held connection for build, deploy, exec, upload, read, logs and scp"
    );
    assert_eq!(fx.sessions.count(), 1);

    // attach argv reuses the master's socket.
    let argv = p.attach_argv(None).expect("attach argv");
    assert!(argv.contains(&master.control_path().display().to_string()));
    assert_eq!(
        argv.last().map(String::as_str),
        Some(format!("docker exec -it {} tmux attach -t agent", fx.container).as_str())
    );

    // down.
    let (tx, _task) = megaplan_cloud_e2e::output_collector();
    p.down(&tx).await.expect("down");
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.Running}}", &fx.container]),
        "false"
    );

    // redeploy on the default network: the port is published.
    let spec = fx.spec(None, 18082);
    let p = fx.provider(spec, true);
    let (tx, _task) = megaplan_cloud_e2e::output_collector();
    p.deploy(&tx)
        .await
        .unwrap_or_else(|e| panic!("redeploy: {e}"));
    assert_eq!(
        docker(&["port", &fx.container, "18082/tcp"])
            .lines()
            .next()
            .unwrap_or_default()
            .rsplit(':')
            .next(),
        Some("18082"),
        "published {}",
        docker(&["port", &fx.container])
    );

    // destroy: container and remote_dir gone.
    let (tx, _task) = megaplan_cloud_e2e::output_collector();
    p.destroy(&tx).await.expect("destroy");
    assert_eq!(
        docker(&[
            "ps",
            "-a",
            "-q",
            "--filter",
            &format!("name=^{}$", fx.container)
        ]),
        ""
    );
    assert!(!Path::new(&fx.remote_dir).exists(), "remote_dir removed");

    fx.sessions.close_all().await;
    assert_eq!(fx.sessions.count(), 0);
    // `ssh -O exit` returns before the master has removed its socket: wait for that event.
    let ctl = master.control_path().to_path_buf();
    assert!(
        megaplan_cloud_e2e::wait_until(Duration::from_secs(10), || !ctl.exists()),
        "master exited"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_execs_cost_one_connection_and_a_dead_master_is_replaced() {
    let Some(b) = bench() else { return };
    let mut fx = Fixture::new(&b.image);
    let spec = fx.spec(Some("none"), 18083);
    // The runner here is a plain bench container named like the spec's container.
    let _ = Command::new("docker")
        .args([
            "run",
            "-d",
            "--network",
            "none",
            "--label",
            "megaplan-e2e=1",
            "--name",
            &fx.container,
            &b.image,
            "sleep",
            "infinity",
        ])
        .output()
        .expect("docker run");
    let p = fx.provider(spec, true);

    let before = fx.sshd.accepted_connections();
    let execs_before = fx.sshd.exec_requests();
    for i in 0..10 {
        let r = p.exec(&format!("echo {i}"), None).await.expect("exec");
        assert_eq!(r.stdout, format!("{i}\n"));
    }
    assert_eq!(
        fx.sshd.accepted_connections() - before,
        1,
        "10 execs over one held connection"
    );
    assert_eq!(fx.sshd.exec_requests() - execs_before, 10);

    // Concurrent commands share the connection too (channels are capped below MaxSessions).
    let p = Arc::new(p);
    let runs: Vec<_> = (0..20)
        .map(|i| {
            let p = p.clone();
            tokio::spawn(async move { p.exec(&format!("sleep 0.2; echo {i}"), None).await })
        })
        .collect();
    for (i, run) in runs.into_iter().enumerate() {
        let r = run.await.expect("join").expect("concurrent exec");
        assert_eq!((r.code, r.stdout), (0, format!("{i}\n")));
    }
    assert_eq!(fx.sshd.accepted_connections() - before, 1);

    // The host goes away and comes back: the dead master is noticed and replaced once.
    fx.sshd.restart();
    let r = p
        .observe("echo again")
        .await
        .expect("observe after restart");
    assert_eq!(r.stdout, "again\n");
    let r = p
        .exec("echo mutation", None)
        .await
        .expect("exec after restart");
    assert_eq!(r.stdout, "mutation\n");
    assert_eq!(fx.sshd.accepted_connections() - before, 2);
    assert_eq!(fx.sessions.count(), 1);

    // Unreachable host: a clear provider_failed, no hang.
    fx.sshd.stop();
    // The safety net only catches a hang; ssh's own ConnectTimeout ends the attempt.
    let e = tokio::time::timeout(Duration::from_secs(180), p.exec("true", None))
        .await
        .expect("an unreachable host is an error, not a hang")
        .expect_err("host down");
    let e = megaplan_cloud_api::ErrorBody::from(e);
    assert_eq!(e.error, ErrorCode::ProviderFailed);
    assert!(e.message.contains("127.0.0.1"), "{}", e.message);
    fx.sessions.close_all().await;
}

/// Issue 21 item 3: a server whose `MaxSessions` is below what the daemon was told refuses a
/// session on the held connection. That command fails, naming `ssh.max_sessions`; ssh never
/// opens a second TCP connection behind the daemon's back, and the commands already running
/// finish normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_mux_session_is_an_error_never_a_second_connection() {
    let sshd = match Sshd::try_start_with("MaxSessions 2\n") {
        Ok(s) => s,
        Err(e) => return megaplan_cloud_e2e::skip_or_panic(&e),
    };
    let tmp = tempfile::Builder::new()
        .prefix("mpssh")
        .tempdir()
        .expect("temp dir");
    let sessions = SshSessions::new(tmp.path().join("c"), Some(sshd.ssh_config.clone()));
    let target = SshTarget {
        host: "127.0.0.1".into(),
        user: Some("root".into()),
        port: sshd.port,
        identity_file: Some(sshd.client_key.display().to_string()),
        // What the operator left at the default, while this server allows 2.
        max_sessions: 10,
    };
    let gate = tmp.path().join("open");
    let hold = format!(
        "while [ ! -e {} ]; do sleep 0.1; done; echo held",
        megaplan_cloudd::shell::quote(&gate.display().to_string())
    );
    let deadline = Duration::from_secs(600);
    let execs = sshd.exec_requests();
    let holders: Vec<_> = (0..2)
        .map(|_| {
            let (s, t, hold) = (sessions.clone(), target.clone(), hold.clone());
            tokio::spawn(async move { s.run(&t, &hold, None, deadline, false).await })
        })
        .collect();
    let log = sshd.log.clone();
    let both_open = tokio::task::spawn_blocking(move || {
        wait_until(Duration::from_secs(60), || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("session_input_channel_req:") && l.ends_with(" req exec"))
                .count()
                >= execs + 2
        })
    })
    .await
    .expect("join");
    assert!(both_open, "the two holding commands did not start");

    let e = sessions
        .run(&target, "echo third", None, deadline, false)
        .await
        .expect_err("a third session on a MaxSessions 2 server");
    let e = megaplan_cloud_api::ErrorBody::from(e);
    assert_eq!(e.error, ErrorCode::ProviderFailed, "{}", e.message);
    assert_eq!(e.extra["field"], "ssh.max_sessions", "{}", e.message);
    assert!(
        e.message.contains("refused another session"),
        "{}",
        e.message
    );
    assert_eq!(sshd.accepted_connections(), 1, "no second TCP connection");

    std::fs::write(&gate, b"").expect("open the gate");
    for h in holders {
        let out = h.await.expect("join").expect("holding command");
        assert_eq!(
            (out.code, String::from_utf8_lossy(&out.stdout).into_owned()),
            (0, "held\n".to_string())
        );
    }
    assert_eq!(sshd.accepted_connections(), 1);
    sessions.close_all().await;
}
