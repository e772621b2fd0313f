//! local provider: Docker Compose on this machine, from the persistent deploy dir
//! (`~/.megaplan/cloud/<compose_project>/`).
//!
//! Every operation is `docker compose -p <project> -f <deploy_dir>/docker-compose.yaml <args>`
//! run in the deploy dir. Docker clients without the compose plugin answer `unknown command:
//! docker compose` (current), `'compose' is not a docker command` or `unknown shorthand flag`
//! (older); then the standalone `docker-compose` runs the same arguments. Which one works is
//! found once per daemon process and cached.
//!
//! `deploy` writes `<deploy_dir>/.env` (`PORT` then one `NAME=value` line per secret), which the
//! compose file reads as `env_file`. This puts the secret values on the operator's own disk: the
//! file is created 0600 and replaced atomically, and `destroy` of the deploy dir removes it.

use super::common::{
    DeployReport, DeployStep, ExecResult, OutTx, Provider, ProviderCtx, ProviderError, RunnerKill,
    check_secrets, deploy_failed, env_file_content, note, plain_step, push_streamed_step,
    run_error, runner_command, session_not_supported, stream_capture,
};
use super::transport::{self, Transport};
use crate::process::{self, Cmd, Output};
use crate::redact::Redactor;
use crate::runner::group::RunnerCall;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

/// The compose service that runs the agent.
pub const SERVICE: &str = "agent";

/// Building or starting (which may build) can take far longer than one command.
const MIN_UP_DEADLINE: Duration = Duration::from_secs(1800);

/// Asking `docker compose version` is quick.
const PROBE_DEADLINE: Duration = Duration::from_secs(30);

/// Which compose CLI runs the project.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComposeFlavor {
    /// `docker compose` (the CLI plugin).
    Plugin,
    /// `docker-compose` (the standalone program).
    Standalone,
}

const UNKNOWN: u8 = 0;
const PLUGIN: u8 = 1;
const STANDALONE: u8 = 2;

/// Which compose works here, once known. Process-wide: it depends on the machine, not on the
/// cloud.yaml.
static FLAVOR: AtomicU8 = AtomicU8::new(UNKNOWN);

/// The cached compose flavor, if it has been determined.
pub fn compose_flavor() -> Option<ComposeFlavor> {
    match FLAVOR.load(Ordering::Relaxed) {
        PLUGIN => Some(ComposeFlavor::Plugin),
        STANDALONE => Some(ComposeFlavor::Standalone),
        _ => None,
    }
}

fn remember(f: ComposeFlavor) {
    FLAVOR.store(
        match f {
            ComposeFlavor::Plugin => PLUGIN,
            ComposeFlavor::Standalone => STANDALONE,
        },
        Ordering::Relaxed,
    );
}

// ---------------------------------------------------------------------------------------------
// argv (pure).

/// Whether a failed `docker compose` run means the docker client has no compose plugin.
pub fn lacks_compose_plugin(output: &str) -> bool {
    output.contains("unknown command: docker compose")
        || output.contains("'compose' is not a docker command")
        || output.contains("unknown shorthand flag")
}

pub fn compose_file(deploy_dir: &Path) -> PathBuf {
    deploy_dir.join("docker-compose.yaml")
}

/// `docker compose -p <project> -f <file> <args>` (or `docker-compose ...`).
pub fn compose_argv(
    flavor: ComposeFlavor,
    project: &str,
    file: &Path,
    args: &[String],
) -> Vec<String> {
    let mut v = match flavor {
        ComposeFlavor::Plugin => vec!["docker".to_string(), "compose".to_string()],
        ComposeFlavor::Standalone => vec!["docker-compose".to_string()],
    };
    v.extend([
        "-p".to_string(),
        project.to_string(),
        "-f".to_string(),
        file.to_string_lossy().into_owned(),
    ]);
    v.extend(args.iter().cloned());
    v
}

fn words(w: &[&str]) -> Vec<String> {
    w.iter().map(|s| s.to_string()).collect()
}

pub fn build_args() -> Vec<String> {
    words(&["build"])
}

pub fn up_args() -> Vec<String> {
    words(&["up", "-d"])
}

/// `exec -T agent bash -lc <script>`: compose passes argv, so no shell quoting is involved.
pub fn exec_args(script: &str) -> Vec<String> {
    words(&["exec", "-T", SERVICE, "bash", "-lc", script])
}

/// [`exec_args`] bounded on the runner side (see [`super::common::runner_timeout`]) and run in a
/// process group of its own there ([`crate::runner::group`]): `exec -T agent timeout -k 5 <secs>
/// sh -c <wrapper> sh <pid file> <script>`. The returned call ends that group ([`kill_args`]).
pub fn exec_args_within(script: &str, deadline: Duration) -> (Vec<String>, RunnerCall) {
    let mut args = words(&["exec", "-T", SERVICE]);
    let (command, call) = runner_command(deadline, script);
    args.extend(command);
    (args, call)
}

/// `exec -T agent sh -c <kill> sh <pid file>`: ends the process group of `call`.
pub fn kill_args(call: &RunnerCall) -> Vec<String> {
    let mut args = words(&["exec", "-T", SERVICE]);
    args.extend(call.kill_words());
    args
}

pub fn read_args(path: &str) -> Vec<String> {
    words(&["exec", "-T", SERVICE, "cat", "--", path])
}

pub fn attach_args() -> Vec<String> {
    words(&["exec", SERVICE, "tmux", "attach", "-t", "agent"])
}

/// `logs [-f] [--tail N] [--since S] agent` (200 lines by default without `-f`).
pub fn logs_args(follow: bool, tail: Option<&str>, since: Option<&str>) -> Vec<String> {
    let mut w = vec!["logs"];
    w.extend(super::common::docker_log_flags(follow, tail, since));
    w.push(SERVICE);
    words(&w)
}

pub fn down_args() -> Vec<String> {
    words(&["stop"])
}

pub fn destroy_args() -> Vec<String> {
    words(&["down", "--volumes", "--remove-orphans"])
}

// ---------------------------------------------------------------------------------------------
// Execution.

#[derive(Debug)]
pub struct LocalProvider {
    ctx: ProviderCtx,
}

impl LocalProvider {
    pub fn new(ctx: ProviderCtx) -> Self {
        LocalProvider { ctx }
    }

    fn cmd(&self, flavor: ComposeFlavor, args: &[String]) -> Cmd {
        let argv = compose_argv(
            flavor,
            &self.ctx.spec.local.compose_project,
            &compose_file(&self.ctx.deploy_dir),
            args,
        );
        let (program, rest) = argv
            .split_first()
            .map_or(("docker", &[][..]), |(p, r)| (p.as_str(), r));
        Cmd::new(program)
            .args(rest.iter().cloned())
            .cwd(self.ctx.deploy_dir.clone())
    }

    /// The compose flavor, probing `docker compose version` the first time.
    async fn flavor(&self, out: Option<&OutTx>) -> Result<ComposeFlavor, ProviderError> {
        if let Some(f) = compose_flavor() {
            return Ok(f);
        }
        let probe = Cmd::new("docker").args(["compose", "version"]);
        let o = process::run(&probe, PROBE_DEADLINE)
            .await
            .map_err(|e| run_error(&probe, e))?;
        if o.code == 0 {
            remember(ComposeFlavor::Plugin);
            return Ok(ComposeFlavor::Plugin);
        }
        if lacks_compose_plugin(&combined(&o)) {
            return self.fall_back(out).await;
        }
        // Some other failure: do not cache; the real command will report it.
        Ok(ComposeFlavor::Plugin)
    }

    async fn fall_back(&self, out: Option<&OutTx>) -> Result<ComposeFlavor, ProviderError> {
        if process::which("docker-compose").is_none() {
            return Err(ProviderError::ComposeMissing);
        }
        remember(ComposeFlavor::Standalone);
        if let Some(out) = out {
            note(
                out,
                "note: docker has no compose plugin; using docker-compose",
            )
            .await;
        }
        Ok(ComposeFlavor::Standalone)
    }

    /// Run compose captured; when the plugin turns out missing, run the same args with
    /// `docker-compose`.
    async fn run(
        &self,
        args: &[String],
        stdin: Option<Vec<u8>>,
        deadline: Duration,
    ) -> Result<Output, ProviderError> {
        let flavor = self.flavor(None).await?;
        let with_stdin = |c: Cmd| match &stdin {
            Some(b) => c.stdin(b.clone()),
            None => c,
        };
        let cmd = with_stdin(self.cmd(flavor, args));
        let o = process::run(&cmd, deadline)
            .await
            .map_err(|e| run_error(&cmd, e))?;
        if o.code != 0 && flavor == ComposeFlavor::Plugin && lacks_compose_plugin(&combined(&o)) {
            let flavor = self.fall_back(None).await?;
            let cmd = with_stdin(self.cmd(flavor, args));
            return process::run(&cmd, deadline)
                .await
                .map_err(|e| run_error(&cmd, e));
        }
        Ok(o)
    }

    /// Run compose streaming to `out`; fails with the tail of the output on a non-zero exit.
    async fn stream_step(
        &self,
        what: &str,
        args: &[String],
        deadline: Option<Duration>,
        out: &OutTx,
    ) -> Result<super::common::Streamed, ProviderError> {
        let flavor = self.flavor(Some(out)).await?;
        let cmd = self.cmd(flavor, args);
        let s = stream_capture(&cmd, deadline, &self.ctx.redactor, out).await?;
        super::common::streamed_ok(what, s)
    }

    /// The guard that kills `call`'s process group in the runner with `docker compose exec`.
    fn runner_kill(&self, call: &RunnerCall) -> RunnerKill {
        let flavor = compose_flavor().unwrap_or(ComposeFlavor::Plugin);
        RunnerKill::command(self.cmd(flavor, &kill_args(call)))
    }

    fn write_env_file(&self, content: &str) -> Result<PathBuf, ProviderError> {
        write_private_file(&self.ctx.deploy_dir.join(".env"), content.as_bytes())
    }
}

fn combined(o: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Write `bytes` to `path` with mode 0600 from creation, replacing any old file atomically.
pub fn write_private_file(path: &Path, bytes: &[u8]) -> Result<PathBuf, ProviderError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let fail = |e: std::io::Error| ProviderError::LocalIo {
        action: format!("cannot write {}", path.display()),
        why: e.to_string(),
    };
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(fail)?;
    f.write_all(bytes).map_err(fail)?;
    f.sync_all().map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)?;
    Ok(path.to_path_buf())
}

/// Decide the flavor without async (for `attach`, whose argv is built synchronously).
fn flavor_blocking() -> ComposeFlavor {
    if let Some(f) = compose_flavor() {
        return f;
    }
    let probe = std::process::Command::new("docker")
        .args(["compose", "version"])
        .stdin(std::process::Stdio::null())
        .output();
    match probe {
        Ok(o) if o.status.success() => {
            remember(ComposeFlavor::Plugin);
            ComposeFlavor::Plugin
        }
        Ok(o)
            if lacks_compose_plugin(&format!(
                "{}\n{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )) && process::which("docker-compose").is_some() =>
        {
            remember(ComposeFlavor::Standalone);
            ComposeFlavor::Standalone
        }
        _ => ComposeFlavor::Plugin,
    }
}

/// `docker compose exec -T runner …` with optional stdin.
impl Transport for LocalProvider {
    /// Compose arguments, stdin, and the call that can end the command in the runner.
    type Request = (Vec<String>, Option<Vec<u8>>, Option<RunnerCall>);

    fn redactor(&self) -> &Redactor {
        &self.ctx.redactor
    }

    async fn send(
        &self,
        (args, stdin, call): Self::Request,
        _: bool,
    ) -> Result<Output, ProviderError> {
        let kill = call.map(|c| self.runner_kill(&c));
        let result = self.run(&args, stdin, self.ctx.deadline).await;
        if let Some(kill) = kill {
            kill.settle(&result).await;
        }
        result
    }

    fn exec_request(&self, script: &str, stdin: Option<Vec<u8>>) -> Self::Request {
        let (args, call) = exec_args_within(script, self.ctx.deadline);
        (args, stdin, Some(call))
    }

    fn read_request(&self, remote_path: &str) -> Self::Request {
        (read_args(remote_path), None, None)
    }
}

impl Provider for LocalProvider {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn build(&self, out: &OutTx) -> Result<(), ProviderError> {
        self.stream_step("docker compose build", &build_args(), None, out)
            .await
            .map(|_| ())
    }

    async fn deploy(&self, out: &OutTx) -> Result<DeployReport, ProviderError> {
        let spec = &self.ctx.spec;
        check_secrets(spec, &self.ctx.secrets)?;
        let env = env_file_content(spec, &self.ctx.secrets)?;
        let mut steps: Vec<DeployStep> = Vec::new();
        let env_path = self
            .write_env_file(&env)
            .map_err(|e| deploy_failed(e, "local", &steps))?;
        steps.push(plain_step(
            "write .env",
            "ok",
            &format!(
                "wrote {} (PORT + {} secret(s), mode 0600)",
                env_path.display(),
                spec.secrets.len()
            ),
        ));
        let deadline = Some(self.ctx.deadline.max(MIN_UP_DEADLINE));
        let flavor = self.flavor(Some(out)).await?;
        let cmd = self.cmd(flavor, &up_args());
        let s = stream_capture(&cmd, deadline, &self.ctx.redactor, out)
            .await
            .map_err(|e| deploy_failed(e, "local", &steps))?;
        push_streamed_step(
            &mut steps,
            "local",
            (
                "compose up",
                &format!("ran {}", cmd.display()),
                "docker compose up -d",
            ),
            &s,
        )?;
        Ok(DeployReport {
            success: true,
            provider: "local".to_string(),
            verdict: format!(
                "deploy: compose project {} is up",
                spec.local.compose_project
            ),
            image_rebuild: "unknown".to_string(),
            steps,
            warnings: Vec::new(),
        })
    }

    async fn resident_command(
        &self,
        script: &str,
    ) -> Result<Option<super::resident::Launch>, ProviderError> {
        let flavor = self.flavor(None).await?;
        Ok(Some(super::resident::Launch::process(
            self.cmd(flavor, &exec_args(script)),
            None,
        )))
    }

    async fn exec(
        &self,
        script: &str,
        stdin: Option<Vec<u8>>,
    ) -> Result<ExecResult, ProviderError> {
        transport::exec(self, script, stdin).await
    }

    async fn exec_streaming(&self, script: &str, out: &OutTx) -> Result<i32, ProviderError> {
        let flavor = self.flavor(Some(out)).await?;
        let (args, call) = exec_args_within(script, self.ctx.deadline);
        let cmd = self.cmd(flavor, &args);
        // The client going away (or the deadline) kills `docker compose exec` here, which the
        // command in the container never learns of: kill its group there too.
        let kill = self.runner_kill(&call);
        let result = process::run_streaming(&cmd, Some(self.ctx.deadline), &self.ctx.redactor, out)
            .await
            .map_err(|e| run_error(&cmd, e));
        kill.settle(&result).await;
        result
    }

    async fn upload(&self, remote_path: &str, content: &[u8]) -> Result<(), ProviderError> {
        transport::upload(self, remote_path, content).await
    }

    async fn read(&self, remote_path: &str) -> Result<Vec<u8>, ProviderError> {
        transport::read(self, remote_path).await
    }

    fn attach_argv(&self, session: Option<&str>) -> Result<Vec<String>, ProviderError> {
        if session.is_some() {
            return Err(session_not_supported("local"));
        }
        Ok(compose_argv(
            flavor_blocking(),
            &self.ctx.spec.local.compose_project,
            &compose_file(&self.ctx.deploy_dir),
            &attach_args(),
        ))
    }

    async fn logs(
        &self,
        follow: bool,
        window: &super::common::LogWindow,
        out: &OutTx,
    ) -> Result<i32, ProviderError> {
        let flavor = self.flavor(Some(out)).await?;
        let tail = window.tail_for(follow);
        let cmd = self.cmd(flavor, &logs_args(follow, tail.as_deref(), window.since()?));
        let deadline = (!follow).then_some(self.ctx.deadline);
        process::run_streaming(&cmd, deadline, &self.ctx.redactor, out)
            .await
            .map_err(|e| run_error(&cmd, e))
    }

    async fn down(&self, out: &OutTx) -> Result<(), ProviderError> {
        self.stream_step(
            "docker compose stop",
            &down_args(),
            Some(self.ctx.deadline),
            out,
        )
        .await
        .map(|_| ())
    }

    async fn destroy(&self, out: &OutTx) -> Result<(), ProviderError> {
        self.stream_step(
            "docker compose down --volumes --remove-orphans",
            &destroy_args(),
            Some(self.ctx.deadline),
            out,
        )
        .await
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(flavor: ComposeFlavor, args: Vec<String>) -> String {
        crate::shell::join(&compose_argv(
            flavor,
            "megaplan-cloud",
            Path::new("/home/op/.megaplan/cloud/megaplan-cloud/docker-compose.yaml"),
            &args,
        ))
    }

    const BASE: &str = "docker compose -p megaplan-cloud -f /home/op/.megaplan/cloud/megaplan-cloud/docker-compose.yaml";

    #[test]
    fn exec_is_bounded_on_the_runner_in_a_group_of_its_own() {
        let (args, call) = exec_args_within("echo 'x' $HOME", Duration::from_secs(90));
        let mut expected = words(&["exec", "-T", "agent"]);
        expected.extend(call.wrap(
            &super::super::common::runner_timeout(Duration::from_secs(90)),
            "echo 'x' $HOME",
        ));
        assert_eq!(args, expected);
        assert_eq!(
            &args[3..9],
            ["timeout", "-k", "5", "90", "sh", "-c"].map(String::from)
        );
        assert_eq!(args.last().map(String::as_str), Some("echo 'x' $HOME"));
        assert_eq!(exec_args_within("true", Duration::ZERO).0[6], "1");
        let mut kill = words(&["exec", "-T", "agent"]);
        kill.extend(call.kill_words());
        assert_eq!(kill_args(&call), kill);
    }

    #[test]
    fn every_operation_argv_is_exact() {
        let p = ComposeFlavor::Plugin;
        assert_eq!(argv(p, build_args()), format!("{BASE} build"));
        assert_eq!(argv(p, up_args()), format!("{BASE} up -d"));
        assert_eq!(
            argv(p, exec_args("echo hi")),
            format!("{BASE} exec -T agent bash -lc 'echo hi'")
        );
        assert_eq!(
            argv(p, read_args("/workspace/app/x y")),
            format!("{BASE} exec -T agent cat -- '/workspace/app/x y'")
        );
        assert_eq!(
            argv(p, attach_args()),
            format!("{BASE} exec agent tmux attach -t agent")
        );
        assert_eq!(
            argv(p, logs_args(true, None, None)),
            format!("{BASE} logs -f agent")
        );
        assert_eq!(
            argv(p, logs_args(false, Some("200"), None)),
            format!("{BASE} logs --tail 200 agent")
        );
        assert_eq!(
            argv(p, logs_args(true, Some("5"), Some("10m"))),
            format!("{BASE} logs -f --tail 5 --since 10m agent")
        );
        assert_eq!(argv(p, down_args()), format!("{BASE} stop"));
        assert_eq!(
            argv(p, destroy_args()),
            format!("{BASE} down --volumes --remove-orphans")
        );
    }

    #[test]
    fn standalone_takes_the_same_arguments() {
        let plugin = compose_argv(
            ComposeFlavor::Plugin,
            "p",
            Path::new("/d/docker-compose.yaml"),
            &up_args(),
        );
        let standalone = compose_argv(
            ComposeFlavor::Standalone,
            "p",
            Path::new("/d/docker-compose.yaml"),
            &up_args(),
        );
        assert_eq!(standalone[0], "docker-compose");
        assert_eq!(&plugin[2..], &standalone[1..]);
    }

    #[test]
    fn hostile_scripts_and_paths_stay_single_argv_words() {
        let script = "echo '$(rm -rf /)' \"`id`\"\nexit 3";
        let a = exec_args(script);
        assert_eq!(a.len(), 6);
        assert_eq!(a[5], script);
        let path = "-n; rm -rf / 'x'";
        let a = read_args(path);
        assert_eq!(a, ["exec", "-T", "agent", "cat", "--", path]);
    }

    #[test]
    fn the_three_missing_plugin_texts_trigger_the_fallback() {
        assert!(lacks_compose_plugin(
            "docker: unknown command: docker compose\n\nRun 'docker --help' for more information"
        ));
        assert!(lacks_compose_plugin(
            "docker: 'compose' is not a docker command.\nSee 'docker --help'"
        ));
        assert!(lacks_compose_plugin(
            "unknown shorthand flag: 'p' in -p\nSee 'docker --help'."
        ));
        assert!(!lacks_compose_plugin(
            "service \"agent\" is not running container #1"
        ));
        assert!(!lacks_compose_plugin(
            "Cannot connect to the Docker daemon at unix:///var/run/docker.sock"
        ));
    }

    #[test]
    fn private_file_is_0600_and_replaced() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(".env");
        std::fs::write(&p, "old").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private_file(&p, b"PORT=1\nK=v\n").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "PORT=1\nK=v\n");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!dir.path().join(".env.tmp").exists());
    }
}
