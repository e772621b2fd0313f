//! railway provider end to end against the Railway CLI stand-in (tests/bench/railway): every
//! operation's recorded argv is the documented sequence, and `railway ssh` really runs in a
//! bench container.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use megaplan_cloud_api::ErrorCode;
use megaplan_cloud_e2e::{bench, railway_standin_dir, unique_suffix};
use megaplan_cloudd::cloud_yaml::{self, CloudSpec};
use megaplan_cloudd::provider::railway::{RailwayProvider, UPLOAD_CHUNK};
use megaplan_cloudd::provider::{Provider, ProviderCtx};
use megaplan_cloudd::redact::Redactor;
use megaplan_cloudd::render;
use serde_json::{Value, json};

const SECRET_NAME: &str = "E2E_TOKEN";
const SECRET_VALUE: &str = "tok-railway-0123456789abcdef";

/// The stand-in behind a wrapper that exports its settings from `standin.env` (rewritten by the
/// test between operations), so the provider runs it like the real CLI: no env of its own.
struct Standin {
    dir: PathBuf,
    wrapper: PathBuf,
    log: PathBuf,
    container: String,
}

impl Standin {
    fn new(dir: &Path, container: &str) -> Standin {
        let wrapper = dir.join("railway");
        let log = dir.join("argv.jsonl");
        let s = Standin {
            dir: dir.to_path_buf(),
            wrapper: wrapper.clone(),
            log,
            container: container.to_string(),
        };
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nset -a\n. '{}'\nset +a\nexec '{}' \"$@\"\n",
                dir.join("standin.env").display(),
                railway_standin_dir().join("railway").display()
            ),
        )
        .expect("wrapper");
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))
                .expect("chmod");
        }
        s.configure(&[]);
        s
    }

    /// Rewrite the stand-in's settings (extra `NAME=value` lines) and clear the argv log.
    fn configure(&self, extra: &[(&str, &str)]) {
        let mut env = format!(
            "RAILWAY_STANDIN_LOG='{}'\nRAILWAY_STANDIN_CONTAINER='{}'\n",
            self.log.display(),
            self.container
        );
        for (k, v) in extra {
            env.push_str(&format!("{k}='{v}'\n"));
        }
        std::fs::write(self.dir.join("standin.env"), env).expect("standin.env");
        let _ = std::fs::remove_file(&self.log);
    }

    /// The recorded argv lines since the last `configure`/`take`, then cleared.
    fn take(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let _ = std::fs::remove_file(&self.log);
        text.lines()
            .map(|l| serde_json::from_str(l).expect("argv json"))
            .collect()
    }
}

/// Removes the locally built image whatever the outcome.
struct Image(String);

impl Drop for Image {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rmi", "-f", &self.0]).output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn railway_provider_runs_the_documented_cli_sequences() {
    let Some(b) = bench() else { return };
    let c = b.container("rw");
    let tmp = tempfile::tempdir().expect("tmp");
    let standin = Standin::new(tmp.path(), &c.name);
    let cloud_dir = tmp.path().join("project");
    let deploy_dir = tmp.path().join("deploy");
    std::fs::create_dir_all(&cloud_dir).expect("mkdir");
    let service = format!("e2e-{}", unique_suffix());
    let _image = Image(format!("megaplan-cloud-{service}"));
    std::fs::write(
        cloud_dir.join("Fixture.Dockerfile"),
        format!(
            "FROM {}\nCOPY railway.toml /opt/fixture/railway.toml\n",
            b.image
        ),
    )
    .expect("Dockerfile");
    let yaml = format!(
        "provider: railway\nrepo:\n  url: /srv/repo.git\nsecrets: [{SECRET_NAME}]\nresources:\n  volume: vol-1\nrailway:\n  service: {service}\n  session: agent-session\n  project: proj-1\n  environment: staging\nimage:\n  dockerfile: Fixture.Dockerfile\n"
    );
    std::fs::write(cloud_dir.join("cloud.yaml"), yaml).expect("cloud.yaml");
    let spec: Arc<CloudSpec> =
        Arc::new(cloud_yaml::load(&cloud_dir.join("cloud.yaml")).unwrap_or_else(|e| panic!("{e}")));
    render::write_deploy_dir(&spec, &deploy_dir).unwrap_or_else(|e| panic!("render: {e}"));
    let mut secrets = BTreeMap::new();
    secrets.insert(SECRET_NAME.to_string(), SECRET_VALUE.to_string());
    let ctx = ProviderCtx {
        spec: spec.clone(),
        deploy_dir: deploy_dir.clone(),
        secrets: secrets.clone(),
        redactor: Redactor::new(&spec.secrets, &secrets),
        deadline: Duration::from_secs(120),
    };
    let program = standin.wrapper.display().to_string();
    let p = RailwayProvider::with_program(ctx.clone(), &program);
    let s = service.as_str();
    let services = format!("{service},db");
    standin.configure(&[("RAILWAY_STANDIN_SERVICES", &services)]);

    // build: local docker build of megaplan-cloud-<service>; the CLI is not called.
    let (tx, _task) = megaplan_cloud_e2e::output_collector();
    p.build(&tx).await.unwrap_or_else(|e| panic!("build: {e}"));
    let out = Command::new("docker")
        .args(["image", "inspect", &format!("megaplan-cloud-{service}")])
        .output()
        .expect("docker");
    assert!(out.status.success(), "image built");
    assert_eq!(standin.take(), Vec::<Value>::new());

    // deploy: link, service check, one variables call per secret, up.
    let (tx, task) = megaplan_cloud_e2e::output_collector();
    let report = p
        .deploy(&tx)
        .await
        .unwrap_or_else(|e| panic!("deploy: {e}"));
    drop(tx);
    let _ = task.await;
    assert_eq!(
        standin.take(),
        [
            json!(["link", "--project", "proj-1", "--environment", "staging"]),
            json!([
                "service",
                "status",
                "--environment",
                "staging",
                "--all",
                "--json"
            ]),
            json!([
                "variables",
                "--environment",
                "staging",
                "--service",
                s,
                "--set",
                "E2E_TOKEN=<set>"
            ]),
            json!([
                "up",
                "--environment",
                "staging",
                "--service",
                s,
                "--detach",
                "--ci"
            ]),
        ]
    );
    assert!(report.success);
    assert_eq!(report.image_rebuild, "triggered");
    assert_eq!(
        report.verdict,
        format!("deploy: triggered Railway build/deploy for service {service}")
    );
    assert_eq!(
        report
            .steps
            .iter()
            .map(|s| (s.name.as_str(), s.detail.as_str()))
            .collect::<Vec<_>>(),
        [
            ("railway link", "linked project proj-1"),
            (
                "verify Railway service",
                format!("service {service} is configured").as_str()
            ),
            ("set Railway service variables", "set 1 service var(s)"),
            ("railway up", "ran railway up --detach --ci"),
        ]
    );
    assert!(
        !serde_json::to_string(&report)
            .expect("json")
            .contains(SECRET_VALUE)
    );

    // deploy where railway up rebuilt nothing.
    standin.configure(&[
        ("RAILWAY_STANDIN_SERVICES", &services),
        ("RAILWAY_STANDIN_UP_OUTPUT", "No changes to deploy"),
    ]);
    let (tx, _task) = megaplan_cloud_e2e::output_collector();
    let report = p.deploy(&tx).await.expect("deploy");
    assert_eq!(report.image_rebuild, "not_triggered");
    assert_eq!(report.verdict, "deploy: vars updated, no image rebuild");
    standin.take();

    // deploy when the service is not in the project.
    standin.configure(&[("RAILWAY_STANDIN_SERVICES", "db")]);
    let (tx, _task) = megaplan_cloud_e2e::output_collector();
    let e = p.deploy(&tx).await.expect_err("service missing");
    assert_eq!(e.error, ErrorCode::RailwayServiceMissing);
    assert!(
        e.message
            .contains(&format!("railway add --service {service}"))
    );
    assert_eq!(standin.take().len(), 2, "stops after the service check");

    // deploy without the secret value: refused before any CLI call.
    let mut bare = ctx.clone();
    bare.secrets.clear();
    let (tx, _task) = megaplan_cloud_e2e::output_collector();
    let e = RailwayProvider::with_program(bare, &program)
        .deploy(&tx)
        .await
        .expect_err("missing secret");
    assert_eq!(e.error, ErrorCode::MissingSecrets);
    assert_eq!(
        e.message.split(';').next(),
        Some("Missing required secrets: E2E_TOKEN")
    );
    assert_eq!(standin.take(), Vec::<Value>::new());

    // A failing railway up is provider_failed with its explanation.
    standin.configure(&[
        ("RAILWAY_STANDIN_SERVICES", &services),
        ("RAILWAY_STANDIN_FAIL", "up"),
    ]);
    let (tx, _task) = megaplan_cloud_e2e::output_collector();
    let e = p.deploy(&tx).await.expect_err("up fails");
    assert_eq!(e.error, ErrorCode::ProviderFailed);
    assert!(
        e.message.contains("up failed (RAILWAY_STANDIN_FAIL)"),
        "{}",
        e.message
    );
    standin.configure(&[]);

    // exec: exit code, stdout/stderr (redacted), stdin.
    c.exec_ok(&format!(
        "echo 'export {SECRET_NAME}={SECRET_VALUE}' >> /etc/profile"
    ));
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
    // Bounded on the runner too: `timeout -k 5 <deadline secs>` around `bash -lc`.
    let cmd = format!(
        "timeout -k 5 120 bash -lc {}",
        megaplan_cloudd::shell::quote(&format!("echo \"${SECRET_NAME}\"; echo err >&2; exit 3"))
    );
    assert_eq!(
        standin.take(),
        [json!([
            "ssh",
            "--environment",
            "staging",
            "--service",
            s,
            "--",
            cmd
        ])]
    );
    let r = p
        .exec("tr a-z A-Z", Some(b"piped stdin\n".to_vec()))
        .await
        .expect("exec stdin");
    assert_eq!(r.stdout, "PIPED STDIN\n");
    standin.take();

    // upload/read: every byte value, and a file large enough to be chunked.
    let all: Vec<u8> = (0..=255u8).collect();
    p.upload("/workspace/app/bytes.bin", &all)
        .await
        .expect("upload");
    assert_eq!(c.read_file("/workspace/app/bytes.bin"), Some(all.clone()));
    assert_eq!(p.read("/workspace/app/bytes.bin").await.expect("read"), all);
    assert_eq!(standin.take().len(), 2, "one ssh call each");
    let big: Vec<u8> = (0..=255u8).cycle().take(UPLOAD_CHUNK * 2 + 100).collect();
    p.upload("/workspace/app/it's big", &big)
        .await
        .expect("chunked upload");
    assert_eq!(standin.take().len(), 4, "three chunks and a rename");
    assert_eq!(
        p.read("/workspace/app/it's big").await.expect("read big"),
        big
    );
    standin.take();

    // logs without follow: the last 200 lines of the runner.
    let (tx, task) = megaplan_cloud_e2e::output_collector();
    let code = p.logs(false, &tx).await.expect("logs");
    drop(tx);
    let _ = task.await;
    assert_eq!(code, 0);
    assert_eq!(
        standin.take(),
        [json!([
            "logs",
            "--environment",
            "staging",
            "--service",
            s,
            "--lines",
            "200"
        ])]
    );

    // attach: the configured session, or --session.
    assert_eq!(
        p.attach_argv(None).expect("attach"),
        [
            &program,
            "ssh",
            "--environment",
            "staging",
            "--service",
            s,
            "--session",
            "agent-session"
        ]
    );
    assert_eq!(p.attach_argv(Some("other")).expect("attach")[7], "other");

    // down, then destroy = down + volume delete.
    let (tx, _task) = megaplan_cloud_e2e::output_collector();
    p.down(&tx).await.expect("down");
    assert_eq!(
        standin.take(),
        [json!(["down", "--environment", "staging", "--service", s])]
    );
    let (tx, _task) = megaplan_cloud_e2e::output_collector();
    p.destroy(&tx).await.expect("destroy");
    assert_eq!(
        standin.take(),
        [
            json!(["down", "--environment", "staging", "--service", s]),
            json!(["volume", "--environment", "staging", "delete", "vol-1"]),
        ]
    );

    // A missing CLI is provider_unavailable naming it and its install page.
    let gone = RailwayProvider::with_program(ctx, "railway-not-installed-xyz");
    let e = gone.exec("true", None).await.expect_err("no cli");
    assert_eq!(e.error, ErrorCode::ProviderUnavailable);
    assert!(
        e.message.contains("https://docs.railway.app/develop/cli"),
        "{}",
        e.message
    );
}
