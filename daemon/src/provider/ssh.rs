//! ssh provider: any Docker host reachable over ssh, through the daemon's held master.
//!
//! The deploy dir is synced to `ssh.remote_dir` (rsync, or `scp -r` when rsync is missing
//! locally or on the host), built there with `docker build -t <container>`, and run as one
//! long-lived container named `ssh.container`. Every remote string below is built from
//! [`crate::shell`] quoting: it goes through the host's login shell, and scripts run in the
//! runner go through `bash -lc` as well, so hostile names and paths arrive as literal words.

use super::budget::SESSION_WAIT;
use super::common::{
    DeployReport, DeployStep, ExecResult, OutTx, Provider, ProviderCtx, RunnerKill, check_secrets,
    deploy_failed, env_file_content, note, run_error, runner_command, send_kill,
    session_not_supported, step_failed, step_from,
};
use super::error::ProviderError;
use super::resident::Launch;
use super::ssh_master::{SSH_FAILURE, SessionFailure, SshMaster, SshSessions, SshTarget};
use super::transport::{self, Transport};
use crate::cloud_yaml::{CloudSpec, Ssh};
use crate::process::{self, Cmd, Output, StreamKind};
use crate::redact::Redactor;
use crate::runner::group::RunnerCall;
use crate::shell::{join, quote};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Syncing the deploy dir may take longer than one remote command.
const MIN_SYNC_DEADLINE: Duration = Duration::from_secs(600);

#[derive(Debug)]
pub struct SshProvider {
    ctx: ProviderCtx,
    ssh: Ssh,
    target: SshTarget,
    sessions: SshSessions,
}

// ---------------------------------------------------------------------------------------------
// Remote strings (pure).

/// `docker exec -i <container> bash -lc <script>`.
pub fn remote_exec(container: &str, script: &str) -> String {
    format!(
        "docker exec -i {} bash -lc {}",
        quote(container),
        quote(script)
    )
}

/// [`remote_exec`] bounded on the runner side (see [`super::common::runner_timeout`]) and run in
/// a process group of its own there ([`crate::runner::group`]): `docker exec -i <container>
/// timeout -k 5 <secs> sh -c <wrapper> sh <pid file> <script>`. The returned call ends that
/// group ([`remote_kill`]).
pub fn remote_exec_within(
    container: &str,
    script: &str,
    deadline: Duration,
) -> (String, RunnerCall) {
    let (words, call) = runner_command(deadline, script);
    (
        format!("docker exec -i {} {}", quote(container), join(&words)),
        call,
    )
}

/// `docker exec <container> sh -c <kill> sh <pid file>`: ends the process group of `call`.
pub fn remote_kill(container: &str, call: &RunnerCall) -> String {
    format!(
        "docker exec {} {}",
        quote(container),
        join(&call.kill_words())
    )
}

/// `docker exec -it <container> tmux attach -t agent` (run with a TTY).
pub fn remote_attach(container: &str) -> String {
    format!("docker exec -it {} tmux attach -t agent", quote(container))
}

/// `docker build -t <container> <remote_dir>`.
pub fn remote_build(container: &str, remote_dir: &str) -> String {
    join(&["docker", "build", "-t", container, remote_dir])
}

/// `mkdir -p <dir>...`.
pub fn remote_mkdir(dirs: &[&str]) -> String {
    let mut words = vec!["mkdir", "-p", "--"];
    words.extend(dirs);
    join(&words)
}

/// The env file of the runner.
pub fn env_path(remote_dir: &str) -> String {
    format!("{}/.env", remote_dir.trim_end_matches('/'))
}

/// Exit code of [`remote_prepare_dir`] and [`remote_write_env`] when `remote_dir` is not ours.
pub const FOREIGN_DIR_EXIT: i32 = 41;

/// The check that `$d` is a real folder owned by the ssh user: run before anything is written
/// there. `remote_dir` holds the build context and the `.env` with every secret, so a folder
/// another user created (or a symlink) is refused rather than used.
fn own_dir_check() -> String {
    format!(
        "if [ -L \"$d\" ] || [ ! -d \"$d\" ] || [ ! -O \"$d\" ]; then \
         echo \"megaplan-cloud: refusing ssh.remote_dir $d on this host: it is a symlink, not a folder, or owned by another user (not uid $(id -u)); another user may have created it to read the secrets. Remove it, or set ssh.remote_dir to a folder of your own\" >&2; \
         exit {FOREIGN_DIR_EXIT}; fi"
    )
}

/// Create `remote_dir` mode 0700 when missing (umask 077, so missing parents are private too),
/// refuse a symlink or a folder owned by another user, tighten our own to 0700, then create
/// `subdirs` inside it.
pub fn remote_prepare_dir(remote_dir: &str, subdirs: &[&str]) -> String {
    let mut script = format!(
        "umask 077; d={d}; if [ ! -e \"$d\" ] && [ ! -L \"$d\" ]; then mkdir -p -- \"$(dirname -- \"$d\")\" && mkdir -m 700 -- \"$d\" || exit 1; fi; {check}; chmod 700 -- \"$d\" || exit 1",
        d = quote(remote_dir.trim_end_matches('/')),
        check = own_dir_check(),
    );
    if !subdirs.is_empty() {
        script.push_str(" && ");
        script.push_str(&remote_mkdir(subdirs));
    }
    script
}

/// Writes stdin to `<remote_dir>/.env`: the folder is checked to be ours first, the content
/// goes to a fresh `mktemp` file inside it (mode 0600 from its creation) and replaces `.env`
/// atomically, so the secret values never appear in any argv or a file another user can open.
pub fn remote_write_env(remote_dir: &str) -> String {
    let dir = remote_dir.trim_end_matches('/');
    format!(
        "umask 077; d={d}; {check}; t=$(mktemp \"$d/.env.XXXXXX\") || exit 1; if cat > \"$t\" && mv -f -- \"$t\" {env}; then exit 0; else rm -f -- \"$t\"; exit 1; fi",
        d = quote(dir),
        check = own_dir_check(),
        env = quote(&env_path(dir)),
    )
}

/// `docker rm -f <container>` when it exists (old engines fail `rm -f` on a missing name).
pub fn remote_remove_container(container: &str) -> String {
    let c = quote(container);
    format!("if docker container inspect {c} >/dev/null 2>&1; then docker rm -f {c}; fi")
}

/// Host folder (or volume) mounted as the parent of `repo.workspace`, so the runner's
/// clone-if-missing can create the workspace and extra repos beside it.
pub fn workspace_mount(spec: &CloudSpec, ssh: &Ssh) -> (String, String) {
    let source = match &spec.resources.volume {
        Some(v) => v.clone(),
        None => host_workspace_dir(ssh),
    };
    let ws = spec.repo.workspace.trim_end_matches('/');
    let target = match ws.rfind('/') {
        // The parent of /app is /, which cannot be a mount point: mount the workspace itself.
        Some(0) | None => ws.to_string(),
        Some(i) => ws[..i].to_string(),
    };
    (source, target)
}

/// `<remote_dir>/workspace`: the bind-mounted workspace when no volume is configured.
pub fn host_workspace_dir(ssh: &Ssh) -> String {
    format!("{}/workspace", ssh.remote_dir.trim_end_matches('/'))
}

/// The `docker run` argv of the runner.
pub fn docker_run_args(spec: &CloudSpec, ssh: &Ssh) -> Vec<String> {
    let c = ssh.container.clone();
    let port = spec.resources.port;
    let mut v: Vec<String> = [
        "docker",
        "run",
        "-d",
        "--name",
        &c,
        "--restart",
        "unless-stopped",
        "--env-file",
        &env_path(&ssh.remote_dir),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let network = spec.resources.network.as_deref();
    // `none` has nothing to publish on and `host` shares the host's ports: docker refuses or
    // discards a mapping there (the rendered compose file drops it the same way).
    if !matches!(network, Some("none" | "host")) {
        v.extend(["-p".to_string(), format!("{port}:{port}")]);
    }
    if let Some(n) = network {
        v.extend(["--network".to_string(), n.to_string()]);
    }
    let (source, target) = workspace_mount(spec, ssh);
    v.extend(["-v".to_string(), format!("{source}:{target}")]);
    v.push(c);
    v
}

/// `docker logs [-f] [--tail N] [--since S] <c>` (200 lines by default without `-f`).
pub fn remote_logs(
    container: &str,
    follow: bool,
    tail: Option<&str>,
    since: Option<&str>,
) -> String {
    let mut w = vec!["docker", "logs"];
    w.extend(super::common::docker_log_flags(follow, tail, since));
    w.push(container);
    join(&w)
}

/// `docker stop <c>`.
pub fn remote_stop(container: &str) -> String {
    join(&["docker", "stop", container])
}

/// Whether removing `dir` recursively could hit the host's root: empty, `/`, `//`, `/./`, or any
/// path with `..` (which could climb there).
pub fn unsafe_to_remove(dir: &str) -> bool {
    let parts: Vec<&str> = dir
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    parts.is_empty() || parts.contains(&"..") || !dir.starts_with('/')
}

/// Remove the container, the volume when one is configured, and `remote_dir`.
pub fn remote_destroy(spec: &CloudSpec, ssh: &Ssh) -> Result<String, ProviderError> {
    if unsafe_to_remove(&ssh.remote_dir) {
        return Err(ProviderError::InvalidConfig {
            field: "ssh.remote_dir",
            message: format!(
                "{}: ssh.remote_dir {:?} is not a folder destroy can safely remove; set it to a dedicated absolute folder such as /tmp/megaplan-cloud",
                spec.path.display(),
                ssh.remote_dir
            ),
        });
    }
    let mut script = remote_remove_container(&ssh.container);
    if let Some(v) = &spec.resources.volume {
        let v = quote(v);
        script.push_str(&format!(
            " && if docker volume inspect {v} >/dev/null 2>&1; then docker volume rm {v}; fi"
        ));
    }
    script.push_str(&format!(" && rm -rf -- {}", quote(&ssh.remote_dir)));
    Ok(script)
}

/// The script that prints a runner file.
pub fn read_script(path: &str) -> String {
    format!("cat -- {}", quote(path))
}

/// Whether rsync failed because the host has no rsync (then scp is the fallback).
pub fn remote_lacks_rsync(stderr: &str) -> bool {
    let s = stderr.to_lowercase();
    s.contains("rsync: command not found")
        || s.contains("rsync: not found")
        || s.contains("rsync: no such file or directory")
}

/// `rsync -az --protect-args -e <transport> <dir>/ <target>:<remote_dir>/` (no `--delete`: the
/// host keeps its `.env` and workspace). `--protect-args` sends the remote path inside rsync's
/// protocol, so an rsync older than 3.2.4 never hands it to the remote shell.
pub fn rsync_args(master: &SshMaster, deploy_dir: &Path, remote_dir: &str) -> Vec<String> {
    vec![
        "rsync".to_string(),
        "-az".to_string(),
        "--protect-args".to_string(),
        "-e".to_string(),
        master.rsync_transport(),
        format!("{}/", deploy_dir.to_string_lossy().trim_end_matches('/')),
        format!(
            "{}{}/",
            master.target().copy_prefix(),
            remote_dir.trim_end_matches('/')
        ),
    ]
}

/// `scp -s <opts> -r <entries...> <target>:<remote_dir>/`. `-s` copies over SFTP, so the remote
/// path is never run through the remote shell as legacy scp does.
pub fn scp_args(master: &SshMaster, entries: &[String], remote_dir: &str) -> Vec<String> {
    let mut v = vec!["scp".to_string(), "-s".to_string()];
    v.extend(master.scp_options());
    v.push("-r".to_string());
    v.extend(entries.iter().cloned());
    v.push(format!(
        "{}{}/",
        master.target().copy_prefix(),
        remote_dir.trim_end_matches('/')
    ));
    v
}

fn cmd_of(argv: &[String]) -> Cmd {
    match argv.split_first() {
        Some((program, rest)) => Cmd::new(program).args(rest.iter().cloned()),
        None => Cmd::new(""),
    }
}

// ---------------------------------------------------------------------------------------------
// Execution.

impl SshProvider {
    pub fn new(ctx: ProviderCtx, sessions: SshSessions) -> Result<Self, ProviderError> {
        let ssh = ctx
            .spec
            .ssh
            .clone()
            .ok_or_else(|| ProviderError::InvalidConfig {
                field: "ssh.host",
                message: format!(
                    "{}: provider: ssh needs an ssh: section with host (add ssh:\\n  host: <docker host>)",
                    ctx.spec.path.display()
                ),
            })?;
        let target = SshTarget::from_spec(&ssh);
        Ok(SshProvider {
            ctx,
            ssh,
            target,
            sessions,
        })
    }

    pub fn target(&self) -> &SshTarget {
        &self.target
    }

    fn host(&self) -> String {
        self.target.describe()
    }

    /// The remote string running `script` in the runner, ended there at this request's deadline,
    /// and the call that can end it earlier.
    fn in_runner(&self, script: &str) -> (String, RunnerCall) {
        remote_exec_within(&self.ssh.container, script, self.ctx.deadline)
    }

    /// The guard that kills `call`'s process group in the runner, through the held master
    /// (re-established if it died), on a channel of its own once one is free.
    fn runner_kill(&self, call: &RunnerCall) -> RunnerKill {
        let sessions = self.sessions.clone();
        let target = self.target.clone();
        let remote = remote_kill(&self.ssh.container, call);
        RunnerKill::new(async move {
            let Ok(master) = sessions.master(&target).await else {
                return;
            };
            // The kill takes a session from the host's budget like any command; when none
            // frees up in time the runner-side `timeout` still ends the group.
            let Ok(_lease) = master.session(SESSION_WAIT).await else {
                return;
            };
            send_kill(&master.command(&remote)).await;
        })
    }

    /// Run a runner command captured; when it does not end on its own (deadline, dropped
    /// request), its process group in the runner is killed.
    async fn run_in_runner(
        &self,
        (remote, stdin, call): (String, Option<Vec<u8>>, RunnerCall),
        idempotent: bool,
    ) -> Result<Output, ProviderError> {
        let kill = self.runner_kill(&call);
        let result = self.run(&remote, stdin, idempotent).await;
        kill.settle(&result).await;
        result
    }

    /// Run a remote string captured, through the held master.
    async fn run(
        &self,
        remote: &str,
        stdin: Option<Vec<u8>>,
        idempotent: bool,
    ) -> Result<Output, ProviderError> {
        self.sessions
            .run(&self.target, remote, stdin, self.ctx.deadline, idempotent)
            .await
    }

    /// Run a mutating step captured, relay its redacted output, and fail on a non-zero exit.
    async fn step(&self, what: &str, remote: &str, out: &OutTx) -> Result<Output, ProviderError> {
        let o = self.run(remote, None, false).await?;
        relay(&o, &self.ctx.redactor, out).await;
        if o.code != 0 {
            return Err(step_failed(
                &format!("{what} on {}", self.host()),
                &o,
                &self.ctx.redactor,
            ));
        }
        Ok(o)
    }

    /// Stream a remote string's output; returns its exit code.
    async fn stream(
        &self,
        remote: &str,
        deadline: Option<Duration>,
        out: &OutTx,
    ) -> Result<i32, ProviderError> {
        let master = self.sessions.master(&self.target).await?;
        let cmd = master.command(remote);
        let _lease = master.session(deadline.unwrap_or(SESSION_WAIT)).await?;
        let (code, stderr_tail) =
            streaming_with_stderr_tail(&cmd, deadline, &self.ctx.redactor, out)
                .await
                .map_err(|e| run_error(&cmd, e))?;
        if code == SSH_FAILURE
            && let Some(failure) = master.session_failure(&stderr_tail)
        {
            return Err(match failure {
                SessionFailure::Refused(e) => e,
                SessionFailure::NoMaster => ProviderError::SshEndedBeforeStart {
                    host: self.host(),
                    remote: remote.to_string(),
                },
            });
        }
        if code == SSH_FAILURE && !master.is_alive().await {
            return Err(ProviderError::SshLostWhileRunning {
                host: self.host(),
                remote: remote.to_string(),
            });
        }
        Ok(code)
    }

    /// A failed step in `remote_dir`; a foreign or symlinked folder names the field to fix.
    fn dir_failure(&self, what: &str, o: &Output) -> ProviderError {
        let mut e = step_failed(&format!("{what} on {}", self.host()), o, &self.ctx.redactor);
        if o.code == FOREIGN_DIR_EXIT
            && let ProviderError::CommandFailed { field, .. } = &mut e
        {
            *field = Some("ssh.remote_dir");
        }
        e
    }

    async fn sync(&self, master: &Arc<SshMaster>, out: &OutTx) -> Result<(), ProviderError> {
        let remote_dir = &self.ssh.remote_dir;
        let o = self
            .run(&remote_prepare_dir(remote_dir, &[]), None, false)
            .await?;
        relay(&o, &self.ctx.redactor, out).await;
        if o.code != 0 {
            return Err(self.dir_failure("creating the remote deploy dir", &o));
        }
        let deadline = self.ctx.deadline.max(MIN_SYNC_DEADLINE);
        // rsync and scp each open one session on the master.
        let _lease = master.session(deadline).await?;
        if process::which("rsync").is_some() {
            let cmd = cmd_of(&rsync_args(master, &self.ctx.deploy_dir, remote_dir));
            let o = process::run(&cmd, deadline)
                .await
                .map_err(|e| run_error(&cmd, e))?;
            if o.code == 0 {
                return Ok(());
            }
            if !remote_lacks_rsync(&String::from_utf8_lossy(&o.stderr)) {
                return Err(step_failed(
                    &format!("rsync of the deploy dir to {}", self.host()),
                    &o,
                    &self.ctx.redactor,
                ));
            }
            note(
                out,
                &format!(
                    "warning: rsync not found on {}; falling back to scp -r",
                    self.host()
                ),
            )
            .await;
        } else {
            note(out, "warning: rsync not found; falling back to scp -r").await;
        }
        let entries = deploy_dir_entries(&self.ctx.deploy_dir)?;
        if entries.is_empty() {
            return Err(ProviderError::DaemonSetup {
                message: format!(
                    "the deploy dir {} is empty; render it before build",
                    self.ctx.deploy_dir.display()
                ),
            });
        }
        let cmd = cmd_of(&scp_args(master, &entries, remote_dir));
        let o = process::run(&cmd, deadline)
            .await
            .map_err(|e| run_error(&cmd, e))?;
        if o.code != 0 {
            return Err(step_failed(
                &format!("scp of the deploy dir to {}", self.host()),
                &o,
                &self.ctx.redactor,
            ));
        }
        Ok(())
    }
}

/// Longest stderr tail kept to recognise ssh's own failure lines in a streamed command.
const STDERR_TAIL_BYTES: usize = 4096;

/// [`process::run_streaming`] that also keeps the end of the (redacted) stderr, to tell a mux
/// session the server refused from the command's own failure. Forwarding stops when `out`
/// closes, which closes the inner channel and so ends the command as before.
async fn streaming_with_stderr_tail(
    cmd: &Cmd,
    deadline: Option<Duration>,
    redactor: &Redactor,
    out: &OutTx,
) -> Result<(i32, String), process::RunError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(StreamKind, String)>(64);
    let sink = out.clone();
    let forward = tokio::spawn(async move {
        let mut tail = String::new();
        loop {
            let next = tokio::select! {
                next = rx.recv() => next,
                _ = sink.closed() => None,
            };
            let Some((kind, text)) = next else { break };
            if kind == StreamKind::Stderr {
                tail.push_str(&text);
                if tail.len() > STDERR_TAIL_BYTES {
                    let mut cut = tail.len() - STDERR_TAIL_BYTES;
                    while !tail.is_char_boundary(cut) {
                        cut += 1;
                    }
                    tail.drain(..cut);
                }
            }
            if sink.send((kind, text)).await.is_err() {
                break;
            }
        }
        tail
    });
    let code = process::run_streaming(cmd, deadline, redactor, &tx).await;
    drop(tx);
    let tail = forward.await.unwrap_or_default();
    code.map(|c| (c, tail))
}

/// Top-level entries of the deploy dir, for `scp -r`.
fn deploy_dir_entries(dir: &Path) -> Result<Vec<String>, ProviderError> {
    let rd = std::fs::read_dir(dir).map_err(|e| ProviderError::LocalIo {
        action: format!("cannot list the deploy dir {}", dir.display()),
        why: e.to_string(),
    })?;
    let mut v: Vec<String> = rd
        .filter_map(Result::ok)
        .map(|e| e.path().to_string_lossy().into_owned())
        .collect();
    v.sort();
    Ok(v)
}

/// Send a finished command's redacted output to the stream.
async fn relay(o: &Output, redactor: &crate::redact::Redactor, out: &OutTx) {
    for (kind, bytes) in [
        (StreamKind::Stdout, &o.stdout),
        (StreamKind::Stderr, &o.stderr),
    ] {
        if bytes.is_empty() {
            continue;
        }
        let mut text = redactor.redact(&String::from_utf8_lossy(bytes));
        if !text.ends_with('\n') {
            text.push('\n');
        }
        let _ = out.send((kind, text)).await;
    }
}

/// A remote string through the held master, into `docker exec -i <container>` on the host.
impl Transport for SshProvider {
    /// The remote string, its stdin, and the call that can end it in the runner.
    type Request = (String, Option<Vec<u8>>, RunnerCall);

    fn redactor(&self) -> &Redactor {
        &self.ctx.redactor
    }

    async fn send(&self, req: Self::Request, retry_safe: bool) -> Result<Output, ProviderError> {
        self.run_in_runner(req, retry_safe).await
    }

    fn exec_request(&self, script: &str, stdin: Option<Vec<u8>>) -> Self::Request {
        let (remote, call) = self.in_runner(script);
        (remote, stdin, call)
    }

    /// ssh and `docker exec` without a TTY carry bytes unchanged: no encoding needed.
    fn read_request(&self, remote_path: &str) -> Self::Request {
        let (remote, call) = self.in_runner(&read_script(remote_path));
        (remote, None, call)
    }
}

impl Provider for SshProvider {
    fn name(&self) -> &'static str {
        "ssh"
    }

    async fn build(&self, out: &OutTx) -> Result<(), ProviderError> {
        let master = self.sessions.master(&self.target).await?;
        self.sync(&master, out).await?;
        let code = self
            .stream(
                &remote_build(&self.ssh.container, &self.ssh.remote_dir),
                None,
                out,
            )
            .await?;
        if code != 0 {
            return Err(ProviderError::StreamedCommandFailed {
                what: format!("docker build on {}", self.host()),
                code,
            });
        }
        Ok(())
    }

    async fn deploy(&self, out: &OutTx) -> Result<DeployReport, ProviderError> {
        let spec = &self.ctx.spec;
        check_secrets(spec, &self.ctx.secrets)?;
        let env = env_file_content(spec, &self.ctx.secrets)?;
        let r = &self.ctx.redactor;
        let c = &self.ssh.container;
        let mut steps: Vec<DeployStep> = Vec::new();
        let fail = |e: ProviderError, steps: &[DeployStep]| deploy_failed(e, "ssh", steps);

        let ws_dir = host_workspace_dir(&self.ssh);
        let mut dirs = vec![self.ssh.remote_dir.as_str()];
        if spec.resources.volume.is_none() {
            dirs.push(&ws_dir);
        }
        let subdirs = &dirs[1..];
        let o = self
            .run(
                &remote_prepare_dir(&self.ssh.remote_dir, subdirs),
                None,
                false,
            )
            .await
            .map_err(|e| fail(e, &steps))?;
        steps.push(step_from(
            "create remote dirs",
            &format!("mkdir -m 700 {} (owner checked)", dirs.join(" ")),
            &o,
            r,
        ));
        if o.code != 0 {
            return Err(fail(
                self.dir_failure("creating the remote dirs", &o),
                &steps,
            ));
        }

        let o = self
            .run(
                &remote_write_env(&self.ssh.remote_dir),
                Some(env.into_bytes()),
                false,
            )
            .await
            .map_err(|e| fail(e, &steps))?;
        steps.push(step_from(
            "write .env",
            &format!(
                "wrote {} (PORT + {} secret(s), mode 0600)",
                env_path(&self.ssh.remote_dir),
                spec.secrets.len()
            ),
            &o,
            r,
        ));
        if o.code != 0 {
            return Err(fail(self.dir_failure("writing the .env file", &o), &steps));
        }

        let o = self
            .run(&remote_remove_container(c), None, false)
            .await
            .map_err(|e| fail(e, &steps))?;
        steps.push(step_from(
            "remove old container",
            &format!("docker rm -f {c}"),
            &o,
            r,
        ));
        if o.code != 0 {
            return Err(fail(
                step_failed("removing the old container", &o, r),
                &steps,
            ));
        }

        let run_args = docker_run_args(spec, &self.ssh);
        let o = self
            .run(&join(&run_args), None, false)
            .await
            .map_err(|e| fail(e, &steps))?;
        steps.push(step_from(
            "docker run",
            &format!("started container {c}"),
            &o,
            r,
        ));
        if o.code != 0 {
            let mut e = step_failed("docker run", &o, r);
            if String::from_utf8_lossy(&o.stderr).contains("Unable to find image")
                && let ProviderError::CommandFailed { explanation, .. } = &mut e
            {
                explanation.push_str("; build the image first: megaplan-cloudctl build");
            }
            return Err(fail(e, &steps));
        }
        relay(
            &Output {
                code: 0,
                stdout: Vec::new(),
                stderr: format!("container {c} started on {}\n", self.host()).into_bytes(),
            },
            r,
            out,
        )
        .await;
        Ok(DeployReport {
            success: true,
            provider: "ssh".to_string(),
            verdict: format!("deploy: started container {c} on {}", self.target.host),
            image_rebuild: "not_triggered".to_string(),
            steps,
            warnings: Vec::new(),
        })
    }

    async fn exec(
        &self,
        script: &str,
        stdin: Option<Vec<u8>>,
    ) -> Result<ExecResult, ProviderError> {
        transport::exec(self, script, stdin).await
    }

    async fn observe(&self, script: &str) -> Result<ExecResult, ProviderError> {
        transport::observe(self, script).await
    }

    async fn resident_command(&self, script: &str) -> Result<Option<Launch>, ProviderError> {
        let master = self.sessions.master(&self.target).await?;
        Ok(Some(Launch::process(
            master.command(&remote_exec(&self.ssh.container, script)),
            Some(master.budget().clone()),
        )))
    }

    async fn exec_streaming(&self, script: &str, out: &OutTx) -> Result<i32, ProviderError> {
        let (remote, call) = self.in_runner(script);
        // The client going away (or the deadline) kills our ssh client, which the command in
        // the container never learns of: kill its group there too.
        let kill = self.runner_kill(&call);
        let result = self.stream(&remote, Some(self.ctx.deadline), out).await;
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
            return Err(session_not_supported("ssh"));
        }
        Ok(self
            .sessions
            .handle(&self.target)?
            .interactive_argv(&remote_attach(&self.ssh.container)))
    }

    async fn logs(
        &self,
        follow: bool,
        window: &super::common::LogWindow,
        out: &OutTx,
    ) -> Result<i32, ProviderError> {
        let deadline = (!follow).then_some(self.ctx.deadline);
        let tail = window.tail_for(follow);
        let script = remote_logs(
            &self.ssh.container,
            follow,
            tail.as_deref(),
            window.since()?,
        );
        self.stream(&script, deadline, out).await
    }

    async fn down(&self, out: &OutTx) -> Result<(), ProviderError> {
        self.step(
            &format!("docker stop {}", self.ssh.container),
            &remote_stop(&self.ssh.container),
            out,
        )
        .await
        .map(|_| ())
    }

    async fn destroy(&self, out: &OutTx) -> Result<(), ProviderError> {
        let script = remote_destroy(&self.ctx.spec, &self.ssh)?;
        self.step("destroy", &script, out).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::test_support::spec;
    use megaplan_cloud_api::ErrorCode;
    use proptest::prelude::*;
    use std::path::PathBuf;

    fn ssh_spec(extra: &str) -> (CloudSpec, Ssh) {
        let s = spec(&format!(
            "provider: ssh\nrepo: {{url: u}}\nssh: {{host: box, container: agent-1, remote_dir: /srv/mp}}\n{extra}"
        ));
        let ssh = s.ssh.clone().unwrap();
        (s, ssh)
    }

    #[test]
    fn exec_and_attach_strings_are_exact() {
        assert_eq!(
            remote_exec("agent-1", "echo \"$HOME\" 'x'"),
            "docker exec -i agent-1 bash -lc 'echo \"$HOME\" '\\''x'\\'''"
        );
        assert_eq!(
            remote_exec("a b;rm -rf /", "true"),
            "docker exec -i 'a b;rm -rf /' bash -lc true"
        );
        assert_eq!(
            remote_attach("agent-1"),
            "docker exec -it agent-1 tmux attach -t agent"
        );
        assert_eq!(
            remote_attach("$(x)"),
            "docker exec -it '$(x)' tmux attach -t agent"
        );
    }

    #[test]
    fn runner_commands_carry_their_deadline_and_their_group() {
        let (remote, call) = remote_exec_within("agent-1", "echo 'x'", Duration::from_secs(90));
        assert!(
            remote.starts_with("docker exec -i agent-1 timeout -k 5 90 sh -c "),
            "{remote}"
        );
        assert!(
            remote.ends_with(&format!(" sh {} 'echo '\\''x'\\'''", call.pid_file)),
            "{remote}"
        );
        assert!(
            call.pid_file
                .starts_with(&format!("{}/", crate::runner::group::CALLS_DIR))
        );
        assert_eq!(
            remote_kill("a b", &call),
            format!("docker exec 'a b' {}", join(&call.kill_words()))
        );
        // Sub-second parts round up; a zero deadline still gives the command one second.
        assert!(
            remote_exec_within("a", "true", Duration::from_millis(1500))
                .0
                .contains(" timeout -k 5 2 sh")
        );
        assert!(
            remote_exec_within("a", "true", Duration::ZERO)
                .0
                .contains(" timeout -k 5 1 sh")
        );
        // The host's shell hands docker the words of remote_exec with timeout's and the
        // group wrapper's in between; every pid file name is new.
        let words = |remote: &str| {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("docker() {{ printf '%s\\0' \"$@\"; }}; {remote}"))
                .output()
                .unwrap();
            String::from_utf8(out.stdout).unwrap()
        };
        let hostile = "printf '%s' \"$HOME\" `id` $(x); echo it's";
        let (remote, call) = remote_exec_within("c d", hostile, Duration::from_secs(7));
        let mut expected = vec!["exec".to_string(), "-i".into(), "c d".into()];
        expected.extend(call.wrap(
            &super::super::common::runner_timeout(Duration::from_secs(7)),
            hostile,
        ));
        assert_eq!(words(&remote), format!("{}\0", expected.join("\0")));
        assert_ne!(
            call,
            remote_exec_within("c d", hostile, Duration::from_secs(7)).1
        );
    }

    #[test]
    fn build_logs_stop_strings_are_exact() {
        assert_eq!(
            remote_build("agent-1", "/srv/mp"),
            "docker build -t agent-1 /srv/mp"
        );
        assert_eq!(
            remote_build("agent-1", "/srv/my dir`x`"),
            "docker build -t agent-1 '/srv/my dir`x`'"
        );
        assert_eq!(
            remote_logs("agent-1", true, None, None),
            "docker logs -f agent-1"
        );
        assert_eq!(
            remote_logs("agent-1", false, Some("200"), None),
            "docker logs --tail 200 agent-1"
        );
        assert_eq!(
            remote_logs("agent-1", false, Some("7"), Some("2026-12-01T10:00:00Z")),
            "docker logs --tail 7 --since 2026-12-01T10:00:00Z agent-1"
        );
        assert_eq!(remote_stop("a'b"), "docker stop 'a'\\''b'");
        assert_eq!(
            remote_mkdir(&["/srv/mp", "/srv/mp/workspace"]),
            "mkdir -p -- /srv/mp /srv/mp/workspace"
        );
    }

    /// Run a remote script with the local POSIX shell, as the host's login shell would.
    fn sh(script: &str, stdin: &[u8]) -> std::process::Output {
        use std::io::Write;
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        child.wait_with_output().unwrap()
    }

    fn mode(p: &std::path::Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn env_write_keeps_values_out_of_argv() {
        let script = remote_write_env("/srv/m p/");
        assert!(script.starts_with("umask 077; d='/srv/m p'; "), "{script}");
        assert!(script.contains("mktemp \"$d/.env.XXXXXX\""), "{script}");
        assert!(
            script.contains("mv -f -- \"$t\" '/srv/m p/.env'"),
            "{script}"
        );
    }

    #[test]
    fn remote_dir_is_created_private_and_env_written_through_mktemp() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("new parent").join("mp");
        let d_text = d.to_str().unwrap();
        let o = sh(
            &remote_prepare_dir(d_text, &[&format!("{d_text}/workspace")]),
            b"",
        );
        assert!(o.status.success(), "{o:?}");
        assert_eq!(mode(&d), 0o700);
        assert!(d.join("workspace").is_dir());

        // A stale world-writable temp file of the old fixed name is never opened.
        let stale = d.join(".env.tmp");
        std::fs::write(&stale, b"").unwrap();
        std::fs::set_permissions(&stale, std::os::unix::fs::PermissionsExt::from_mode(0o666))
            .unwrap();
        let o = sh(&remote_write_env(d_text), b"PORT=1\nK=secret-value\n");
        assert!(o.status.success(), "{o:?}");
        assert_eq!(
            std::fs::read_to_string(d.join(".env")).unwrap(),
            "PORT=1\nK=secret-value\n"
        );
        assert_eq!(mode(&d.join(".env")), 0o600);
        assert_eq!(std::fs::read(&stale).unwrap(), b"");
        // No temp file is left behind.
        let left: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".env.") && n != ".env.tmp")
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn foreign_or_symlinked_remote_dir_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        // A symlink planted where the folder should be.
        let target = tmp.path().join("elsewhere");
        std::fs::create_dir(&target).unwrap();
        let link = tmp.path().join("mp");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        for script in [
            remote_prepare_dir(link.to_str().unwrap(), &[]),
            remote_write_env(link.to_str().unwrap()),
        ] {
            let o = sh(&script, b"K=v\n");
            assert_eq!(o.status.code(), Some(FOREIGN_DIR_EXIT), "{o:?}");
            assert!(String::from_utf8_lossy(&o.stderr).contains("refusing ssh.remote_dir"));
        }
        assert!(!target.join(".env").exists());

        // A folder another user created (0777, as an attacker on a shared /tmp would).
        if unsafe { libc::geteuid() } == 0 {
            let foreign = tmp.path().join("foreign");
            std::fs::create_dir(&foreign).unwrap();
            std::fs::set_permissions(
                &foreign,
                std::os::unix::fs::PermissionsExt::from_mode(0o777),
            )
            .unwrap();
            let c = std::ffi::CString::new(foreign.to_str().unwrap()).unwrap();
            // SAFETY: chown on a NUL-terminated path we created; 65534 is `nobody`.
            assert_eq!(unsafe { libc::chown(c.as_ptr(), 65534, 65534) }, 0);
            for script in [
                remote_prepare_dir(foreign.to_str().unwrap(), &[]),
                remote_write_env(foreign.to_str().unwrap()),
            ] {
                let o = sh(&script, b"K=v\n");
                assert_eq!(o.status.code(), Some(FOREIGN_DIR_EXIT), "{o:?}");
            }
            assert!(!foreign.join(".env").exists());
            assert_eq!(mode(&foreign), 0o777, "a foreign folder is never changed");
        }
    }

    #[test]
    fn remove_container_is_guarded() {
        assert_eq!(
            remote_remove_container("agent-1"),
            "if docker container inspect agent-1 >/dev/null 2>&1; then docker rm -f agent-1; fi"
        );
    }

    #[test]
    fn docker_run_default_network_publishes_the_port() {
        let (s, ssh) = ssh_spec("resources: {port: 9090}\n");
        assert_eq!(
            join(&docker_run_args(&s, &ssh)),
            "docker run -d --name agent-1 --restart unless-stopped --env-file /srv/mp/.env -p 9090:9090 -v /srv/mp/workspace:/workspace agent-1"
        );
    }

    #[test]
    fn docker_run_network_none_has_no_port_mapping() {
        let (s, ssh) = ssh_spec("resources: {network: none, volume: agent-vol}\n");
        assert_eq!(
            docker_run_args(&s, &ssh),
            [
                "docker",
                "run",
                "-d",
                "--name",
                "agent-1",
                "--restart",
                "unless-stopped",
                "--env-file",
                "/srv/mp/.env",
                "--network",
                "none",
                "-v",
                "agent-vol:/workspace",
                "agent-1"
            ]
        );
    }

    #[test]
    fn docker_run_named_network_and_top_level_workspace() {
        let s = spec(
            "provider: ssh\nrepo: {url: u, workspace: /app}\nssh: {host: box, container: agent-1, remote_dir: /srv/mp}\nresources: {network: mynet}\n",
        );
        let ssh = s.ssh.clone().unwrap();
        assert_eq!(
            join(&docker_run_args(&s, &ssh)),
            "docker run -d --name agent-1 --restart unless-stopped --env-file /srv/mp/.env -p 8080:8080 --network mynet -v /srv/mp/workspace:/app agent-1"
        );
    }

    #[test]
    fn destroy_removes_container_volume_and_dir() {
        let (s, ssh) = ssh_spec("");
        assert_eq!(
            remote_destroy(&s, &ssh).unwrap(),
            "if docker container inspect agent-1 >/dev/null 2>&1; then docker rm -f agent-1; fi && rm -rf -- /srv/mp"
        );
        let (s, ssh) = ssh_spec("resources: {volume: vol-1}\n");
        assert_eq!(
            remote_destroy(&s, &ssh).unwrap(),
            "if docker container inspect agent-1 >/dev/null 2>&1; then docker rm -f agent-1; fi && if docker volume inspect vol-1 >/dev/null 2>&1; then docker volume rm vol-1; fi && rm -rf -- /srv/mp"
        );
    }

    #[test]
    fn destroy_refuses_root_like_dirs() {
        for bad in ["/", "//", "/./", "/.", "", "/srv/../", "relative/dir"] {
            assert!(unsafe_to_remove(bad), "{bad:?}");
        }
        for ok in ["/srv/mp", "/tmp/megaplan-cloud/", "/a b/c"] {
            assert!(!unsafe_to_remove(ok), "{ok:?}");
        }
        let (s, mut ssh) = ssh_spec("");
        ssh.remote_dir = "/".into();
        assert_eq!(
            remote_destroy(&s, &ssh).unwrap_err().code(),
            ErrorCode::InvalidSpec
        );
    }

    #[test]
    fn rsync_and_scp_argv_are_exact() {
        let sessions = SshSessions::new(PathBuf::from("/run/c"), None);
        let t = SshTarget {
            host: "box".into(),
            user: Some("me".into()),
            port: 2200,
            identity_file: None,
            max_sessions: crate::provider::budget::DEFAULT_MAX_SESSIONS,
        };
        let m = sessions.handle(&t).unwrap();
        let ctl = m.control_path().to_string_lossy().into_owned();
        assert_eq!(
            rsync_args(
                &m,
                Path::new("/home/op/.megaplan/cloud/ssh-box"),
                "/srv/mp/"
            ),
            [
                "rsync",
                "-az",
                "--protect-args",
                "-e",
                &format!(
                    "ssh -S {ctl} -o ControlMaster=no -o BatchMode=yes -o {} -p 2200 -o ConnectTimeout=10",
                    quote(crate::provider::ssh_master::NO_SECOND_CONNECTION)
                ),
                "/home/op/.megaplan/cloud/ssh-box/",
                "me@box:/srv/mp/"
            ]
        );
        assert_eq!(
            scp_args(
                &m,
                &["/d/Dockerfile".to_string(), "/d/sub".to_string()],
                "/srv/mp"
            ),
            [
                "scp",
                "-s",
                "-o",
                &format!("ControlPath={ctl}"),
                "-o",
                "ControlMaster=no",
                "-o",
                "BatchMode=yes",
                "-o",
                crate::provider::ssh_master::NO_SECOND_CONNECTION,
                "-P",
                "2200",
                "-r",
                "/d/Dockerfile",
                "/d/sub",
                "me@box:/srv/mp/"
            ]
        );
    }

    #[test]
    fn remote_rsync_absence_is_recognised() {
        assert!(remote_lacks_rsync(
            "bash: line 1: rsync: command not found\nrsync: connection unexpectedly closed"
        ));
        assert!(remote_lacks_rsync("sh: 1: rsync: not found"));
        assert!(!remote_lacks_rsync(
            "rsync: [sender] write error: Broken pipe"
        ));
    }

    #[test]
    fn read_script_protects_dash_paths() {
        assert_eq!(read_script("-n"), "cat -- -n");
        assert_eq!(read_script("/a b"), "cat -- '/a b'");
    }

    /// Run `remote` the way the host would: the login shell (`sh -c`) parses it and runs
    /// `docker exec -i C bash -lc SCRIPT`; a stand-in `docker` checks the fixed words, prints
    /// the container, then lets bash run SCRIPT with stand-ins for `cat`, `mkdir` and `printf`
    /// that print their arguments. Returns every printed word.
    fn through_two_shells(remote: &str) -> Vec<String> {
        let prelude = r#"docker() {
  [ "$#" -eq 6 ] && [ "$1" = exec ] && [ "$2" = -i ] && [ "$4" = bash ] && [ "$5" = -lc ] || exit 90
  printf 'container=%s\0' "$3"
  bash -c 'cat() { for a in "$@"; do printf "cat=%s\0" "$a"; done; }; word() { for a in "$@"; do printf "word=%s\0" "$a"; done; }; eval "$1"' _ "$6"
}
"#;
        crate::shell::nul_words_printed_by_sh(&format!("{prelude}{remote}"))
    }

    #[test]
    fn hostile_words_survive_both_shells() {
        let hostile = [
            "with space",
            "it's",
            "\"dq\"",
            "$HOME",
            "$(touch /tmp/pwned)",
            "`id`",
            "new\nline",
            "back\\slash",
            "*",
            "-rf",
            "",
        ];
        for w in hostile {
            let remote = remote_exec(w, &read_script(w));
            assert_eq!(
                through_two_shells(&remote),
                [
                    format!("container={w}"),
                    "cat=--".into(),
                    format!("cat={w}")
                ],
                "{w:?}"
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        #[test]
        fn any_container_and_path_survive_both_shells(container in "[^\\x00]{0,16}", path in "[^\\x00]{0,24}") {
            let remote = remote_exec(&container, &read_script(&path));
            prop_assert_eq!(
                through_two_shells(&remote),
                vec![format!("container={container}"), "cat=--".to_string(), format!("cat={path}")]
            );
        }

        #[test]
        fn any_command_argument_survives_both_shells(words in proptest::collection::vec("[^\\x00]{0,16}", 1..4)) {
            let script = format!("word {}", join(&words));
            let remote = remote_exec("agent", &script);
            let mut expected = vec!["container=agent".to_string()];
            expected.extend(words.iter().map(|w| format!("word={w}")));
            prop_assert_eq!(through_two_shells(&remote), expected);
        }
    }
}
