//! A whole remote setup for workflow tests: a bench runner container, a cloud.yaml pointing at
//! it (ssh via the private sshd, local via docker compose, or railway via the stand-in), a
//! daemon, and helpers to drive `megaplan-cloudctl` and read its JSON.

use crate::{Container, Daemon, Sshd, bench, repo_in_container, wait_until};
use megaplan_cloud_api::ErrorBody;
use megaplan_cloud_api::output::PlanStatus;
use megaplan_cloud_api::report::{EffectiveStatus, Liveness, ReportedStatus, TickReport};
use megaplan_cloud_api::status::ChainStatus;
use megaplan_cloud_api::wire::{Health, RegistrationListed, SinkBreaker, TickRecord};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// What one client invocation printed.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub json: Value,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn from_output(o: &Output) -> Run {
        let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
        Run {
            code: o.status.code(),
            json: serde_json::from_str(&stdout).unwrap_or(Value::Null),
            stdout,
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    /// What the client printed, decoded as the api type `T`; panics naming the type and
    /// showing the output when it is not one (the test then fails on the shape, not on a
    /// missing key).
    pub fn decode<T: DeserializeOwned>(&self) -> T {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "not a {}: {e}\nstdout: {}\nstderr: {}",
                std::any::type_name::<T>(),
                self.stdout,
                self.stderr
            )
        })
    }

    /// [`Run::decode`] that answers `None` instead of failing, for waits that poll a command
    /// which may answer an error first.
    pub fn try_decode<T: DeserializeOwned>(&self) -> Option<T> {
        serde_json::from_str(&self.stdout).ok()
    }

    /// The tick report `supervise --chain` prints.
    pub fn report(&self) -> TickReport {
        self.decode()
    }

    /// The stored tick `tick` (the daemon's tick-now) prints: its record, report inside.
    pub fn tick(&self) -> TickRecord {
        self.decode()
    }

    /// The structured error a failed command prints.
    pub fn error_body(&self) -> ErrorBody {
        self.decode()
    }

    /// An `extra` field of the structured error, decoded as `T`. The extras are free-form by
    /// the API's design (each error names its own: `field`, `missing`, ...), so this is the one
    /// place a test reads one by name.
    pub fn error_extra<T: DeserializeOwned>(&self, key: &str) -> T {
        let body = self.error_body();
        let value = body.extra.get(key).cloned().unwrap_or(Value::Null);
        serde_json::from_value(value).unwrap_or_else(|e| {
            panic!(
                "the error's `{key}` is not a {}: {e}\nstdout: {}",
                std::any::type_name::<T>(),
                self.stdout
            )
        })
    }

    /// The input a refusal names (`field` of the structured error).
    pub fn error_field(&self) -> String {
        self.error_extra("field")
    }

    /// The `success` every answer carries, whatever its type.
    pub fn success(&self) -> bool {
        #[derive(serde::Deserialize)]
        struct Answer {
            success: bool,
        }
        self.decode::<Answer>().success
    }

    /// `registrations --json`: every registration with what the watcher knows of it.
    pub fn registrations(&self) -> Vec<RegistrationListed> {
        self.decode()
    }

    /// `daemon status --json`: the daemon's health.
    pub fn health(&self) -> Health {
        self.decode()
    }

    /// `notifications --json`: the outbox rows, newest first.
    pub fn outbox(&self) -> Vec<OutboxRow> {
        self.decode()
    }

    /// `status` (no flag): the core's status document.
    pub fn plan_status(&self) -> PlanStatus {
        self.decode()
    }

    /// `status --chain`'s document; `None` when the command answered something else (an error).
    pub fn chain_status(&self) -> Option<ChainStatus> {
        self.try_decode()
    }

    /// `status --chain`'s document, which the command must have answered.
    pub fn chain(&self) -> ChainStatus {
        self.decode()
    }

    /// `status --chain` says the chain is complete.
    pub fn chain_complete(&self) -> bool {
        self.chain_status().is_some_and(|s| {
            s.effective_status == ReportedStatus::Classified(EffectiveStatus::Complete)
        })
    }

    /// The label of the milestone `status --chain` says the chain is at.
    pub fn current_milestone(&self) -> Option<String> {
        self.chain_status()?
            .summary
            .current_milestone
            .map(|m| m.label)
    }

    /// Panics with everything printed when the exit code is not 0.
    pub fn ok(self) -> Run {
        assert_eq!(
            self.code,
            Some(0),
            "command failed\nstdout: {}\nstderr: {}",
            self.stdout,
            self.stderr
        );
        self
    }
}

/// One row of `notifications --json` (the daemon's `notify::store::OutboxEntry`, which the
/// api crate does not carry: it is written, never read, by the daemon). Only what the tests
/// check; unknown fields are ignored.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct OutboxRow {
    pub key: String,
    pub event: String,
    /// The sink as listed (`webhook URL`, `command CMD`).
    pub sink: String,
    /// `pending`, `delivered` or `failed`.
    pub status: String,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub breaker: SinkBreaker,
}

/// An ssh rig: sshd on loopback, a runner container behind it, a daemon using the sshd's config.
pub struct SshRig {
    pub sshd: Sshd,
    pub container: Container,
    pub daemon: Daemon,
    /// The operator's project folder (holds cloud.yaml).
    pub project: PathBuf,
    pub cloud_yaml: PathBuf,
    pub env: Vec<(String, String)>,
}

impl SshRig {
    /// `None` when the bench is unavailable and not required (the test then returns early).
    pub fn start(extra_yaml: &str, daemon_args: &[&str]) -> Option<SshRig> {
        SshRig::start_with_env(extra_yaml, &[], daemon_args)
    }

    /// [`SshRig::start`] with extra environment for the daemon.
    pub fn start_with_env(
        extra_yaml: &str,
        daemon_env: &[(&str, &str)],
        daemon_args: &[&str],
    ) -> Option<SshRig> {
        SshRig::start_full(extra_yaml, daemon_env, &[], daemon_args)
    }

    /// [`SshRig::start_with_env`] whose daemon reads `config` as its notify.yaml
    /// (`--notify-config`); the returned guard keeps the file's folder alive.
    pub fn start_notifying(
        extra_yaml: &str,
        config: &str,
        daemon_env: &[(&str, &str)],
    ) -> Option<(SshRig, tempfile::TempDir)> {
        let (guard, path) = notify_config(config);
        let path = path.display().to_string();
        let rig = SshRig::start_with_env(extra_yaml, daemon_env, &["--notify-config", &path])?;
        Some((rig, guard))
    }

    /// [`SshRig::start`] with extra `docker run` arguments for the runner container, e.g.
    /// `-e MEGAPLAN_STANDIN_IMPORT_SECONDS=2` for a stand-in core as slow to start as the real one.
    pub fn start_with_container_args(
        extra_yaml: &str,
        docker_args: &[&str],
        daemon_args: &[&str],
    ) -> Option<SshRig> {
        SshRig::start_full(extra_yaml, &[], docker_args, daemon_args)
    }

    fn start_full(
        extra_yaml: &str,
        daemon_env: &[(&str, &str)],
        docker_args: &[&str],
        daemon_args: &[&str],
    ) -> Option<SshRig> {
        let b = bench()?;
        let sshd = Sshd::start();
        let container = b.container_with("mp-ssh", docker_args, &["sleep", "infinity"]);
        let repo = repo_in_container(&container);
        let (daemon, project) = ssh_daemon(&sshd, daemon_env, daemon_args);
        let cloud_yaml = project.join("cloud.yaml");
        let text = format!("{}{extra_yaml}", ssh_cloud_yaml(&sshd, &container, &repo));
        std::fs::write(&cloud_yaml, text).expect("cloud.yaml");
        Some(SshRig {
            sshd,
            container,
            daemon,
            project,
            cloud_yaml,
            env: Vec::new(),
        })
    }

    /// An ssh rig whose runner image the client's own `build` makes (`image.dockerfile`), for
    /// the tests that follow a whole build and deploy: `dockerfile(bench image)` is written at
    /// `<project>/<dockerfile_path>`, which cloud.yaml names, with `extra_yaml` after it. The
    /// container is a plain bench container until `deploy` replaces it; `repo.url` is
    /// `/srv/repo.git`, which the Dockerfile makes ([`SEED_REPO`]). The daemon logs at debug
    /// level: what it logs in detail is scanned for secrets too. The leftovers of the deploy
    /// come first so that they are dropped after the rig: `let (_leftovers, rig) = ...`.
    pub fn start_building(
        prefix: &str,
        dockerfile_path: &str,
        dockerfile: impl FnOnce(&str) -> String,
        extra_yaml: &str,
    ) -> Option<(DeployLeftovers, SshRig)> {
        let b = bench()?;
        let sshd = Sshd::start();
        let container = b.container(prefix);
        let (daemon, project) = ssh_daemon(&sshd, &[("RUST_LOG", "debug")], &[]);
        let dockerfile_at = project.join(dockerfile_path);
        std::fs::create_dir_all(dockerfile_at.parent().unwrap_or(&project))
            .expect("Dockerfile dir");
        std::fs::write(&dockerfile_at, dockerfile(&b.image)).expect("Dockerfile");
        let cloud_yaml = project.join("cloud.yaml");
        let text = format!(
            "{}image:\n  dockerfile: {dockerfile_path}\n{extra_yaml}",
            ssh_cloud_yaml(&sshd, &container, "/srv/repo.git")
        );
        std::fs::write(&cloud_yaml, text).expect("cloud.yaml");
        let leftovers = DeployLeftovers {
            image: container.name.clone(),
            remote_dir: format!("/tmp/mp-e2e-{}", container.name),
        };
        let rig = SshRig {
            sshd,
            container,
            daemon,
            project,
            cloud_yaml,
            env: Vec::new(),
        };
        Some((leftovers, rig))
    }

    /// `megaplan-cloudctl --cloud-yaml <rig's> args...` from the project folder.
    pub fn ctl(&self, args: &[&str]) -> Run {
        ctl_in(
            &self.daemon,
            &self.project,
            &self.env,
            &self.cloud_yaml,
            args,
        )
    }

    /// `megaplan-cloudctl --cloud-yaml <rig's> args...` from the project folder, spawned (for a
    /// client that keeps running: `watch`, `logs --follow`); see [`spawn_ctl`].
    pub fn spawn_ctl(&self, args: &[&str]) -> Child {
        spawn_ctl(&self.daemon, &self.project, &self.cloud_yaml, args)
    }

    /// Clone the repo into the workspace ahead of time (so control files can be placed there).
    pub fn precreate_workspace(&self) {
        self.container.exec_ok(
            "git clone -q /srv/repo.git /workspace/app && mkdir -p /workspace/app/.megaplan",
        );
    }

    /// Write the stand-in core's control file.
    pub fn control(&self, json: &str) {
        self.container.write_file(
            "/workspace/app/.megaplan/standin-control.json",
            json.as_bytes(),
        );
    }

    /// Start a chain of `labels` milestones (spec and ideas under `<project>/epic`); requires
    /// the client to succeed.
    pub fn launch(&self, labels: &[&str]) {
        let spec = write_chain(&self.project.join("epic"), "chain.yaml", labels);
        self.ctl(&["chain", &spec.display().to_string()]).ok();
    }

    /// The stored tick history (`ticks --json --limit <limit>`), newest first; empty when the
    /// daemon cannot answer (a wait then polls again).
    pub fn ticks(&self, limit: u32) -> Vec<TickRecord> {
        self.ctl(&["ticks", "--json", "--limit", &limit.to_string()])
            .try_decode()
            .unwrap_or_default()
    }

    /// `registrations --json`, which must succeed.
    pub fn registrations(&self) -> Vec<RegistrationListed> {
        self.ctl(&["registrations", "--json"]).ok().registrations()
    }

    /// Waits until `status --chain` answers a document for which `want` holds; on the safety
    /// net's expiry (`secs`) fails naming `what`, with the last answer.
    pub fn wait_chain(&self, secs: u64, what: &str, want: impl Fn(&ChainStatus) -> bool) {
        let mut last = String::new();
        let seen = wait_until(Duration::from_secs(secs), || {
            let s = self.ctl(&["status", "--chain"]);
            last = format!("{}\n{}", s.stdout, s.stderr);
            s.chain_status().is_some_and(|c| want(&c))
        });
        assert!(seen, "status --chain never said {what}; last: {last}");
    }

    /// [`SshRig::wait_chain`] until the effective status is `status`.
    pub fn wait_effective_status(&self, secs: u64, status: EffectiveStatus) {
        self.wait_chain(secs, status.as_str(), |s| {
            s.effective_status == ReportedStatus::Classified(status)
        });
    }

    /// [`SshRig::wait_chain`] until the chain runs milestone `label`.
    pub fn wait_running_at(&self, secs: u64, label: &str) {
        self.wait_chain(secs, &format!("running at {label}"), |s| {
            s.summary
                .current_milestone
                .as_ref()
                .is_some_and(|m| m.label == label)
                && s.effective_status == ReportedStatus::Classified(EffectiveStatus::Running)
        });
    }

    /// Launches a chain of `labels` whose first milestone never finishes (the stand-in core
    /// stalls there, its driver alive): the workspace made, the stand-in core told.
    pub fn launch_stalled(&self, labels: &[&str]) {
        self.precreate_workspace();
        self.control(&format!(
            r#"{{"step_seconds": 0.1, "stall": ["{}"]}}"#,
            labels[0]
        ));
        self.launch(labels);
    }

    /// Launches a chain of `labels` on a fast stand-in core and waits for it to complete.
    pub fn launch_completed(&self, labels: &[&str]) {
        self.precreate_workspace();
        self.control(r#"{"step_seconds": 0.1}"#);
        self.launch(labels);
        self.wait_complete();
    }

    /// Launches a chain of `labels` whose first milestone stops at pull request `pr` (open on
    /// the stand-in `gh`): the workspace made, the stand-in core told, the PR opened.
    pub fn launch_awaiting_pr(&self, labels: &[&str], pr: u32) {
        self.precreate_workspace();
        self.control(&format!(
            r#"{{"step_seconds": 0.1, "await_pr": {{"{}": {pr}}}}}"#,
            labels[0]
        ));
        self.container.set_pr(pr, "OPEN");
        self.launch(labels);
    }

    /// Waits for `status --chain` to name `label` as the current milestone.
    pub fn wait_milestone(&self, label: &str) {
        self.wait_status(
            Duration::from_secs(60),
            &format!("named milestone {label}"),
            |s| s.current_milestone().as_deref() == Some(label),
        );
    }

    /// Waits for `status --chain` to see the runner alive.
    pub fn wait_runner_alive(&self) {
        self.wait_status(Duration::from_secs(60), "saw the runner alive", |s| {
            s.chain_status()
                .is_some_and(|c| c.runner.status == Some(Liveness::Alive))
        });
    }

    /// Waits for `status --chain` to say `complete`.
    pub fn wait_complete(&self) {
        self.wait_status(
            Duration::from_secs(90),
            "said complete",
            Run::chain_complete,
        );
    }

    /// Waits (up to the safety net `net`) for a `status --chain` that `done` accepts; on the
    /// net's expiry fails saying it never `what`, with the last status and the runner's chain
    /// log.
    fn wait_status(&self, net: Duration, what: &str, done: impl Fn(&Run) -> bool) {
        let mut last = String::new();
        let reached = wait_until(net, || {
            let s = self.ctl(&["status", "--chain"]);
            last = format!("{}\n{}", s.stdout, s.stderr);
            done(&s)
        });
        if !reached {
            let log = self
                .container
                .read_file("/workspace/app/.megaplan/cloud-chain.log")
                .unwrap_or_default();
            panic!(
                "status --chain never {what}; last: {last}\nchain log: {}",
                String::from_utf8_lossy(&log)
            );
        }
    }
}

/// A daemon that reaches `sshd` through its client config (plus `daemon_env`, `daemon_args`),
/// and the operator's project folder beside it (created).
fn ssh_daemon(sshd: &Sshd, daemon_env: &[(&str, &str)], daemon_args: &[&str]) -> (Daemon, PathBuf) {
    let ssh_config = sshd.ssh_config.display().to_string();
    let mut env = vec![("MEGAPLAN_CLOUDD_SSH_CONFIG", ssh_config.as_str())];
    env.extend_from_slice(daemon_env);
    let daemon = Daemon::start(&env, daemon_args);
    let project = daemon.dir.join("project");
    std::fs::create_dir_all(&project).expect("project dir");
    (daemon, project)
}

/// The ssh part of every rig's cloud.yaml: the runner `container` behind `sshd`, its workspace
/// cloned from `repo_url`, no network.
fn ssh_cloud_yaml(sshd: &Sshd, container: &Container, repo_url: &str) -> String {
    format!(
        "provider: ssh\nrepo:\n  url: {repo_url}\n  workspace: /workspace/app\nssh:\n  host: 127.0.0.1\n  user: root\n  port: {port}\n  identity_file: {key}\n  container: {c}\n  remote_dir: /tmp/mp-e2e-{c}\nresources:\n  network: none\n",
        port = sshd.port,
        key = sshd.client_key.display(),
        c = container.name,
    )
}

/// The Dockerfile line that gives a runner image built by [`SshRig::start_building`] its git
/// remote for `repo.url`: a bare `/srv/repo.git` with one commit on `main`.
pub const SEED_REPO: &str = r#"RUN set -e; git init -q --bare -b main /srv/repo.git; seed=$(mktemp -d); cd "$seed"; git init -q -b main; printf '# e2e\n' > README.md; git add README.md; git -c user.name=e2e -c user.email=e2e@example.invalid commit -q -m init; git push -q /srv/repo.git main; cd /; rm -rf "$seed""#;

/// `megaplan-cloudctl --cloud-yaml <cloud_yaml> args...` against `daemon` from `project`, with
/// `env` (secret values, a fake HOME) in its environment.
pub fn ctl_in(
    daemon: &Daemon,
    project: &Path,
    env: &[(String, String)],
    cloud_yaml: &Path,
    args: &[&str],
) -> Run {
    let mut full = vec!["--cloud-yaml", cloud_yaml.to_str().unwrap_or_default()];
    full.extend_from_slice(args);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Run::from_output(&daemon.ctl(project, &env, &full))
}

/// `megaplan-cloudctl --cloud-yaml <cloud_yaml> args...` against `daemon`, run from the
/// cloud.yaml's folder (the operator's project): for a second project beside a rig's, or a
/// daemon without a rig.
pub fn ctl_for(daemon: &Daemon, cloud_yaml: &Path, args: &[&str]) -> Run {
    let project = cloud_yaml.parent().unwrap_or(Path::new("/"));
    let cloud_yaml = cloud_yaml.display().to_string();
    let mut full = vec!["--cloud-yaml", cloud_yaml.as_str()];
    full.extend_from_slice(args);
    Run::from_output(&daemon.ctl(project, &[], &full))
}

/// A notify config file (`notify.yaml` holding `yaml`) in its own temp folder, kept alive by
/// the returned guard.
pub fn notify_config(yaml: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("notify.yaml");
    std::fs::write(&path, yaml).expect("notify.yaml");
    (dir, path)
}

/// `megaplan-cloudctl --cloud-yaml <cloud_yaml> args...` against `daemon` from `cwd`, spawned
/// with piped stdout and stderr (the caller reads them, kills and waits).
pub fn spawn_ctl(daemon: &Daemon, cwd: &Path, cloud_yaml: &Path, args: &[&str]) -> Child {
    Command::new(crate::bin("megaplan-cloudctl"))
        .arg("--cloud-yaml")
        .arg(cloud_yaml)
        .args(args)
        .current_dir(cwd)
        .env("MEGAPLAN_CLOUDD_SOCKET", &daemon.socket)
        .env("MEGAPLAN_CLOUD_HOME", &daemon.home)
        .env_remove("XDG_RUNTIME_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("megaplan-cloudctl")
}

/// `<dir>/cloud.yaml` (dir created) for provider local with no deploy folder: it validates and
/// needs no runner, so every tick stops early (`missing_remote_spec`), quickly and offline.
pub fn local_cloud_yaml(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).expect("cloud.yaml dir");
    let path = dir.join("cloud.yaml");
    std::fs::write(&path, "provider: local\nrepo:\n  url: /srv/repo.git\n").expect("cloud.yaml");
    path
}

/// `<dir>/cloud.yaml` (dir created) for provider ssh to `127.0.0.1:<port>`, with no runner
/// behind it: for a tick that must hang in the ssh handshake (the port a listener that never
/// speaks) or fail to connect.
pub fn ssh_cloud_yaml_to(dir: &Path, port: u16) -> PathBuf {
    std::fs::create_dir_all(dir).expect("cloud.yaml dir");
    let path = dir.join("cloud.yaml");
    std::fs::write(
        &path,
        format!(
            "provider: ssh\nrepo: {{url: /srv/r.git}}\nssh: {{host: 127.0.0.1, port: {port}}}\n"
        ),
    )
    .expect("cloud.yaml");
    path
}

/// Pids of the resident observers (`python3 -c <resident.py>`) running in `container`.
pub fn resident_observers(container: &Container) -> Vec<String> {
    let out = container.exec(
        "python3 -c 'import os\nfor p in os.listdir(\"/proc\"):\n    try:\n        c = open(\"/proc/%s/cmdline\" % p, \"rb\").read()\n    except Exception:\n        continue\n    if p.isdigit() and int(p) != os.getpid() and b\"sys.exit(serve(\" in c:\n        print(p)'",
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Write a local chain spec with `labels` milestones and their idea files under `dir`.
pub fn write_chain(dir: &Path, name: &str, labels: &[&str]) -> PathBuf {
    let ideas = dir.join("ideas");
    std::fs::create_dir_all(&ideas).expect("ideas dir");
    let mut spec = String::from("milestones:\n");
    for l in labels {
        std::fs::write(ideas.join(format!("{l}.md")), format!("Idea for {l}\n")).expect("idea");
        spec.push_str(&format!("  - label: {l}\n    idea: ideas/{l}.md\n"));
    }
    let path = dir.join(name);
    std::fs::write(&path, spec).expect("spec");
    path
}

/// What a build or deploy over ssh leaves on the runner's host beyond the bench's own clean-up
/// (the image tagged with the runner's name, the synced remote dir with the runner's `.env`
/// and workspace), removed on drop.
pub struct DeployLeftovers {
    pub image: String,
    pub remote_dir: String,
}

impl Drop for DeployLeftovers {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["rmi", "-f", &self.image])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.remote_dir);
    }
}
