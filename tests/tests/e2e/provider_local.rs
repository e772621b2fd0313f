//! local provider end to end: the real docker engine and Compose, from a rendered deploy dir.
//!
//! On this bench `docker` on PATH is a client without the compose plugin ("unknown command:
//! docker compose"), so the provider must fall back to the standalone `docker-compose`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use megaplan_cloud_e2e::conformance::{self, SECRET_NAME};
use megaplan_cloud_e2e::util::docker;
use megaplan_cloud_e2e::{bench, unique_suffix};
use megaplan_cloudd::provider::Provider;
use megaplan_cloudd::provider::local::{self, ComposeFlavor, LocalProvider};

const SECRET_VALUE: &str = "tok-local-0123456789abcdef";

fn text(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Tears the compose project down (with its image) whatever the test outcome.
struct Project {
    name: String,
    deploy_dir: PathBuf,
}

impl Project {
    fn compose(&self, args: &[&str]) -> std::process::Output {
        Command::new("docker-compose")
            .arg("-p")
            .arg(&self.name)
            .arg("-f")
            .arg(self.deploy_dir.join("docker-compose.yaml"))
            .args(args)
            .current_dir(&self.deploy_dir)
            .output()
            .expect("docker-compose")
    }

    /// The agent container's id (running or not), if any.
    fn container(&self) -> String {
        text(&self.compose(&["ps", "-a", "-q", "agent"]))
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = self.compose(&["down", "--volumes", "--remove-orphans", "--rmi", "local"]);
    }
}

/// Whether the docker client on PATH lacks the compose plugin (then the fallback must happen).
fn docker_lacks_compose_plugin() -> bool {
    let out = Command::new("docker")
        .args(["compose", "version"])
        .output()
        .expect("docker");
    !out.status.success()
        && local::lacks_compose_plugin(&format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_provider_lifecycle_with_compose_fallback() {
    let Some(b) = bench() else { return };
    let lacks_plugin = docker_lacks_compose_plugin();
    let tmp = tempfile::tempdir().expect("tmp");
    let cloud_dir = tmp.path().join("project");
    let deploy_dir = tmp.path().join("deploy");
    std::fs::create_dir_all(&cloud_dir).expect("mkdir");
    let name = format!("mpe2e-{}", unique_suffix());
    let project = Project {
        name: name.clone(),
        deploy_dir: deploy_dir.clone(),
    };
    std::fs::write(
        cloud_dir.join("Fixture.Dockerfile"),
        format!(
            "FROM {}\nCOPY health_server.py /opt/fixture/health_server.py\nCMD [\"sh\", \"-c\", \"echo runner-started; exec sleep infinity\"]\n",
            b.image
        ),
    )
    .expect("Dockerfile");
    let yaml = format!(
        "provider: local\nrepo:\n  url: /srv/repo.git\n  workspace: /workspace/app\nsecrets: [{SECRET_NAME}]\nresources:\n  port: 18091\n  network: none\nlocal:\n  compose_project: {name}\nimage:\n  dockerfile: Fixture.Dockerfile\n"
    );
    std::fs::write(cloud_dir.join("cloud.yaml"), yaml).expect("cloud.yaml");
    let secrets = BTreeMap::from([(SECRET_NAME.to_string(), SECRET_VALUE.to_string())]);
    let ctx = conformance::provider_ctx(
        &cloud_dir.join("cloud.yaml"),
        &deploy_dir,
        secrets.clone(),
        Duration::from_secs(120),
    );
    let p = Arc::new(LocalProvider::new(ctx.clone()));

    // build: the compose CLI is chosen (fallback announced when the plugin is missing).
    let (tx, task) = megaplan_cloud_e2e::output_collector();
    p.build(&tx).await.unwrap_or_else(|e| panic!("build: {e}"));
    drop(tx);
    let (_, err) = task.await.expect("collector");
    if lacks_plugin {
        assert_eq!(local::compose_flavor(), Some(ComposeFlavor::Standalone));
        assert!(
            err.contains("using docker-compose"),
            "fallback announced: {err}"
        );
    } else {
        assert_eq!(local::compose_flavor(), Some(ComposeFlavor::Plugin));
    }

    // deploy without the secret's value: refused, .env untouched.
    let mut bare = ctx.clone();
    bare.secrets.clear();
    conformance::deploy_without_the_secret_is_refused(&LocalProvider::new(bare), SECRET_NAME).await;

    // deploy: .env (0600) then up -d.
    let (report, _, _) = conformance::deploy_ok(&*p, "deploy").await;
    assert!(report.success);
    assert_eq!(
        report
            .steps
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>(),
        ["write .env", "compose up"]
    );
    let env_path = deploy_dir.join(".env");
    assert_eq!(
        std::fs::read_to_string(&env_path).expect(".env"),
        format!("PORT=18091\n{SECRET_NAME}={SECRET_VALUE}\n")
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = env_path.metadata().expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let id = project.container();
    assert!(!id.is_empty(), "agent container exists");
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.Running}}", &id]),
        "true"
    );
    assert_eq!(
        docker(&["inspect", "-f", "{{.HostConfig.NetworkMode}}", &id]),
        "none"
    );
    assert_eq!(
        docker(&["inspect", "-f", "{{json .HostConfig.PortBindings}}", &id]),
        "{}"
    );

    // What every provider owes (tests/src/conformance.rs): env (redacted), exit code and
    // stderr, stdin, upload/read of every byte value, logs, follow, no --session.
    conformance::run_all(&conformance::Deployed {
        provider: p.clone(),
        secret_value: SECRET_VALUE,
        port: 18091,
        log_line: "runner-started",
        upload_paths: vec![
            "/workspace/app/bytes.bin",
            "/workspace/app/it's $(x) `y`
z",
        ],
    })
    .await;

    // exec runs in the workspace; the bind mount shows an uploaded file on this machine.
    let r = p.exec("pwd", None).await.expect("exec");
    assert_eq!(r.stdout, "/workspace/app\n");
    let all: Vec<u8> = (0..=255u8).collect();
    assert_eq!(
        std::fs::read(deploy_dir.join("workspace/bytes.bin")).expect("bind mount"),
        all
    );

    // attach argv: the same compose CLI, the project and file, then the attach.
    let argv = p.attach_argv(None).expect("attach");
    let compose_file = deploy_dir.join("docker-compose.yaml").display().to_string();
    let mut expected: Vec<String> = if lacks_plugin {
        vec!["docker-compose".into()]
    } else {
        vec!["docker".into(), "compose".into()]
    };
    expected.extend(
        [
            "-p",
            &name,
            "-f",
            &compose_file,
            "exec",
            "agent",
            "tmux",
            "attach",
            "-t",
            "agent",
        ]
        .map(String::from),
    );
    assert_eq!(argv, expected);

    // down: stopped, still there.
    let (tx, _task) = megaplan_cloud_e2e::output_collector();
    p.down(&tx).await.unwrap_or_else(|e| panic!("down: {e}"));
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.Running}}", &id]),
        "false"
    );

    // destroy: down --volumes --remove-orphans removes the container.
    let (tx, _task) = megaplan_cloud_e2e::output_collector();
    p.destroy(&tx)
        .await
        .unwrap_or_else(|e| panic!("destroy: {e}"));
    assert_eq!(project.container(), "");
    assert!(
        Path::new(&deploy_dir).join("workspace/bytes.bin").exists(),
        "bind-mounted data is the operator's"
    );
}
