//! railway provider: the real `railway` CLI (written against railwayapp 5.71.0, whose source
//! the facts below come from; the e2e tests run that binary).
//!
//! `--environment <env>` (when `railway.environment` is set) goes where the CLI takes it: at the
//! end of `link`, and right after the subcommand everywhere else.
//!
//! Commands, in order per operation (the e2e test checks these exact argv):
//! - build: `docker build -t megaplan-cloud-<service> <deploy_dir>` (local docker)
//! - deploy: [`railway link --project P`, `railway service list --json`] when `railway.project`
//!   is set (`service status --all` is hidden and deprecated, `commands/service.rs`);
//!   `railway variable set NAME --service S --stdin --skip-deploys` per secret with the value on
//!   stdin (`commands/variable.rs` reads one value from stdin, trailing newlines trimmed, and
//!   refuses an empty one; `--skip-deploys` because `up` is the one deploy); then
//!   `railway up --service S --ci` in the deploy dir. Without `--detach` (which returns right
//!   after the upload, `commands/up.rs`) `--ci` streams the build logs and exits with the
//!   deployment's status: 0 on SUCCESS (or when Railway skipped the build: the build log line
//!   `No changed files matched patterns`, `commands/up/build_logs.rs`), 1 on FAILED or CRASHED.
//! - exec: `railway ssh --service S -- "bash -lc <script>"` (stdin, when given, travels as a
//!   base64 here-document: the daemon gives the CLI no stdin)
//! - upload: `railway ssh --service S -- "mkdir -p <dir> && base64 -d > <dest> <<'MEGAPLAN_UPLOAD' ..."`
//!   (large files in several appends, then a rename)
//! - read: `railway ssh --service S -- "base64 < <path>"` (decoded here: the remote channel is
//!   text for the CLI)
//! - held session: exec/upload/read go over one OpenSSH ControlMaster to the relay, like the
//!   ssh provider ([`super::ssh_master`]): `railway ssh` is plain OpenSSH to
//!   `<serviceInstanceId>@ssh.railway.com` (`commands/ssh/native.rs`), and
//!   `railway ssh config --service S --alias megaplan-<S> --dry-run` prints that destination as
//!   an OpenSSH `Host` block (`commands/ssh/config.rs`). Resolved once per service and cached;
//!   the operator's ssh config and agent supply the registered key. When the block cannot be
//!   had or the master does not start, every call falls back to `railway ssh` (retried after
//!   [`RELAY_RETRY`]).
//! - attach: `railway ssh --service S --session <session>`
//! - logs: `railway logs --service S --lines 200`; follow mode: `railway logs --service S` under
//!   a pseudo-terminal (`script -q -e -f -c ... /dev/null`), because the CLI streams only when
//!   its stdout is a terminal (`commands/logs.rs`, `should_stream`) and otherwise prints the last
//!   500 lines and exits; terminal control sequences are stripped before redaction
//!   ([`crate::process::run_streaming_terminal`])
//! - down: `railway down --service S --yes` (without `--yes` it prompts, `commands/down.rs`);
//!   destroy: down, then `railway volume delete --volume <volume> --yes` (the volume is a flag,
//!   and without `--yes` a non-terminal run fails, `commands/volume.rs`)
//!
//! No secret value is ever in an argv: the process list of the machine is readable by every
//! local user.

use super::common::{
    DeployReport, DeployStep, ExecResult, OutTx, Provider, ProviderCtx, base64_lines,
    check_secrets, decode_base64_text, deploy_failed, plain_step, push_streamed_step,
    remote_parent, run_error, step_failed, step_from, stream_capture,
};
use super::error::ProviderError;
use super::ssh_master::{SshMaster, SshSessions, SshTarget};
use super::transport::{self, Transport};
use crate::process::{self, Cmd, Output};
use crate::redact::Redactor;
use crate::shell::quote;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Raw bytes per upload command: keeps each argv well under the kernel's 128 KiB per-argument
/// limit. A multiple of 3, so every chunk is standalone base64.
pub const UPLOAD_CHUNK: usize = 48 * 1024;

/// Building and deploying can take far longer than one command.
const MIN_DEPLOY_DEADLINE: Duration = Duration::from_secs(1800);

const RAILWAY_CLI_PAGE: &str = "https://docs.railway.app/develop/cli";

/// The build log line after which `railway up --ci` exits 0 without a build: Railway skipped
/// it because no changed file matched the service's watch patterns
/// (`commands/up/build_logs.rs` in the CLI).
const NO_REBUILD_MARKER: &str = "No changed files matched patterns";

/// Runs a command under a pseudo-terminal (util-linux `script`): `-q` no banner, `-e` its exit
/// status, `-f` flush every write, `/dev/null` no typescript file.
const PTY_WRAPPER: [&str; 4] = ["script", "-q", "-e", "-f"];

// ---------------------------------------------------------------------------------------------
// argv (pure). `env` is `railway.environment`.

fn w(words: &[&str]) -> Vec<String> {
    words.iter().map(|s| s.to_string()).collect()
}

/// `<sub...> [--environment E] <rest...>`.
fn scoped(sub: &[&str], env: Option<&str>, rest: &[&str]) -> Vec<String> {
    let mut v = w(sub);
    if let Some(e) = env {
        v.extend(w(&["--environment", e]));
    }
    v.extend(w(rest));
    v
}

/// `link --project P [--environment E]` (the environment goes last here).
pub fn link_args(project: &str, env: Option<&str>) -> Vec<String> {
    let mut v = w(&["link", "--project", project]);
    if let Some(e) = env {
        v.extend(w(&["--environment", e]));
    }
    v
}

/// `service list [--environment E] --json`: the services of the linked environment.
pub fn service_list_args(env: Option<&str>) -> Vec<String> {
    scoped(&["service", "list"], env, &["--json"])
}

/// `variable set [--environment E] NAME --service S --stdin --skip-deploys`: the value goes on
/// stdin, never in argv.
pub fn variable_set_args(service: &str, env: Option<&str>, name: &str) -> Vec<String> {
    scoped(
        &["variable", "set"],
        env,
        &[name, "--service", service, "--stdin", "--skip-deploys"],
    )
}

/// `up [--environment E] --service S --ci`: waits for the deployment; the exit status is its
/// verdict.
pub fn up_args(service: &str, env: Option<&str>) -> Vec<String> {
    scoped(&["up"], env, &["--service", service, "--ci"])
}

pub fn ssh_args(service: &str, env: Option<&str>, command: &str) -> Vec<String> {
    scoped(&["ssh"], env, &["--service", service, "--", command])
}

pub fn attach_args(service: &str, env: Option<&str>, session: &str) -> Vec<String> {
    scoped(&["ssh"], env, &["--service", service, "--session", session])
}

/// `railway logs --service S [--lines N] [--since S]`. The real CLI (5.71, `logs.rs`) streams
/// only without `--lines`/`--since`/`--until`, so follow mode passes neither.
pub fn logs_args(
    service: &str,
    env: Option<&str>,
    follow: bool,
    tail: Option<&str>,
    since: Option<&str>,
) -> Vec<String> {
    let mut rest = vec!["--service", service];
    if !follow {
        rest.extend(["--lines", tail.unwrap_or("200")]);
        if let Some(s) = since {
            rest.extend(["--since", s]);
        }
    }
    scoped(&["logs"], env, &rest)
}

/// `argv` run under a pseudo-terminal: `script -q -e -f -c '<argv, quoted>' /dev/null`.
/// `script` runs the command line with `$SHELL -c`, so the caller sets `SHELL=/bin/sh`.
pub fn under_pty(argv: &[String]) -> Vec<String> {
    let mut v = w(&PTY_WRAPPER);
    v.push("-c".to_string());
    v.push(crate::shell::join(argv));
    v.push("/dev/null".to_string());
    v
}

pub fn down_args(service: &str, env: Option<&str>) -> Vec<String> {
    scoped(&["down"], env, &["--service", service, "--yes"])
}

pub fn volume_delete_args(volume: &str, env: Option<&str>) -> Vec<String> {
    scoped(&["volume"], env, &["delete", "--volume", volume, "--yes"])
}

/// `stderr` of `railway ssh` without the line the CLI prints before it starts ssh, "Using SSH
/// key from file <path>: <name>" or "... from agent: <name>" (`commands/ssh/native.rs`): it is
/// not the remote command's output.
pub fn without_key_notice(stderr: &[u8]) -> &[u8] {
    if stderr.starts_with(b"Using SSH key from ") {
        match stderr.iter().position(|&b| b == b'\n') {
            Some(i) => &stderr[i + 1..],
            None => &[],
        }
    } else {
        stderr
    }
}

/// `ssh config [--environment E] --service S --alias megaplan-<S> --dry-run`: prints the
/// service's OpenSSH `Host` block instead of writing it to `~/.ssh/config`.
pub fn ssh_config_args(service: &str, env: Option<&str>) -> Vec<String> {
    let alias = format!("megaplan-{service}");
    scoped(
        &["ssh", "config"],
        env,
        &["--service", service, "--alias", &alias, "--dry-run"],
    )
}

/// The relay destination in a `railway ssh config` `Host` block: `HostName`, `User` (the
/// service instance), `Port` (22 when absent) and `IdentityFile` when present. `None` unless
/// both `HostName` and `User` are there.
pub fn relay_target(block: &str) -> Option<SshTarget> {
    let (mut host, mut user, mut port, mut identity) = (None, None, 22u16, None);
    for line in block.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once(char::is_whitespace) else {
            continue;
        };
        let value = value.trim().trim_matches('"').to_string();
        match key.to_ascii_lowercase().as_str() {
            "hostname" => host = Some(value),
            "user" => user = Some(value),
            "port" => port = value.parse().ok()?,
            "identityfile" => identity = Some(value),
            _ => {}
        }
    }
    Some(SshTarget::with_default_sessions(
        host.filter(|h| !h.is_empty())?,
        Some(user.filter(|u| !u.is_empty())?),
        port,
        identity,
    ))
}

/// After a failed resolution or master start, calls use `railway ssh` for this long before the
/// held session is tried again.
pub const RELAY_RETRY: Duration = Duration::from_secs(300);

/// Resolved relay destinations per (CLI, folder, service, environment); `None` = fall back
/// (until the instant plus [`RELAY_RETRY`]).
type RelayCache = Mutex<HashMap<String, (Option<SshTarget>, Instant)>>;

fn relay_cache() -> &'static RelayCache {
    static CACHE: OnceLock<RelayCache> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

pub fn image_tag(service: &str) -> String {
    format!("megaplan-cloud-{service}")
}

pub fn build_argv(service: &str, deploy_dir: &Path) -> Vec<String> {
    vec![
        "docker".to_string(),
        "build".to_string(),
        "-t".to_string(),
        image_tag(service),
        deploy_dir.to_string_lossy().into_owned(),
    ]
}

/// The command string of `exec`: `bash -lc <script>`, with stdin as a here-document.
pub fn exec_command(script: &str, stdin: Option<&[u8]>) -> String {
    bash_command("bash -lc", script, stdin)
}

/// [`exec_command`] bounded on the runner side (see [`super::common::runner_timeout`]):
/// `timeout -k 5 <secs> bash -lc <script>`.
pub fn exec_command_within(script: &str, stdin: Option<&[u8]>, deadline: Duration) -> String {
    let runner = format!(
        "{} bash -lc",
        super::common::runner_timeout(deadline).join(" ")
    );
    bash_command(&runner, script, stdin)
}

fn bash_command(runner: &str, script: &str, stdin: Option<&[u8]>) -> String {
    match stdin {
        None => format!("{runner} {}", quote(script)),
        Some(bytes) => format!(
            "base64 -d <<'MEGAPLAN_STDIN' | {runner} {}\n{}MEGAPLAN_STDIN",
            quote(script),
            base64_lines(bytes)
        ),
    }
}

/// The command strings of an upload: one when the content fits a chunk (the original's form),
/// else appends to `<dest>.part` and a final rename.
pub fn upload_commands(remote_path: &str, content: &[u8]) -> Result<Vec<String>, ProviderError> {
    let parent = quote(&remote_parent(remote_path)?);
    let dest = quote(remote_path);
    if content.len() <= UPLOAD_CHUNK {
        return Ok(vec![format!(
            "mkdir -p {parent} && base64 -d > {dest} <<'MEGAPLAN_UPLOAD'\n{}MEGAPLAN_UPLOAD",
            base64_lines(content)
        )]);
    }
    let part = quote(&format!("{remote_path}.part"));
    let mut v = Vec::new();
    for (i, chunk) in content.chunks(UPLOAD_CHUNK).enumerate() {
        let head = if i == 0 {
            format!("mkdir -p {parent} && base64 -d > {part}")
        } else {
            format!("base64 -d >> {part}")
        };
        v.push(format!(
            "{head} <<'MEGAPLAN_UPLOAD'\n{}MEGAPLAN_UPLOAD",
            base64_lines(chunk)
        ));
    }
    v.push(format!("mv -f {part} {dest}"));
    Ok(v)
}

/// The command string of `read`.
pub fn read_command(path: &str) -> String {
    format!("base64 < {}", quote(path))
}

/// `not_triggered` when `railway up --ci` said Railway skipped the build, else `triggered`.
pub fn classify_up(stdout: &str) -> &'static str {
    if exit_line(stdout) == Some(UpOutcome::Skipped) {
        "not_triggered"
    } else {
        "triggered"
    }
}

/// The line `railway up --ci` ended on, from its stdout (terminal controls stripped): it exits 0
/// right after printing a build log line that STARTS with [`NO_REBUILD_MARKER`]
/// (`commands/up/build_logs.rs`: `starts_with`, then `process::exit(0)`), and prints
/// `Deploy complete` when the deployment status reaches SUCCESS (`commands/up.rs`). The last
/// such line decides, so build output that merely mentions either earlier does not.
fn exit_line(stdout: &str) -> Option<UpOutcome> {
    let shown = process::TerminalText::default().push(stdout.as_bytes());
    String::from_utf8_lossy(&shown)
        .lines()
        .rev()
        .map(str::trim)
        .find_map(|l| {
            if l.starts_with(NO_REBUILD_MARKER) {
                Some(UpOutcome::Skipped)
            } else if l == "Deploy complete" {
                Some(UpOutcome::Deployed)
            } else {
                None
            }
        })
}

/// What `railway up --ci` said about the deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpOutcome {
    /// Exit 0 after `Deploy complete` (the deployment reached SUCCESS).
    Deployed,
    /// Exit 0 after the skipped-build log line: nothing was rebuilt.
    Skipped,
    /// Exit 0 with neither: the status stream ended early (`commands/up.rs` returns Ok when it
    /// closes), so success is not established.
    NoVerdict,
    /// A non-zero exit: FAILED, CRASHED, or the upload/CLI failed.
    Failed,
}

impl UpOutcome {
    /// The deploy step's detail line.
    pub fn detail(self) -> &'static str {
        match self {
            UpOutcome::Deployed => "railway up --ci: deployment succeeded",
            UpOutcome::Skipped => "railway reported no image rebuild (no changed files matched)",
            UpOutcome::NoVerdict => "railway up --ci ended without a deployment status",
            UpOutcome::Failed => "railway up --ci: deployment failed",
        }
    }
}

/// The last `Deploy failed...`/`Deploy crashed` line `railway up --ci` printed, if any.
pub fn verdict_line(stdout: &str) -> Option<&str> {
    stdout
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with("Deploy failed") || l.starts_with("Deploy crashed"))
}

/// The verdict of `railway up --ci` from its exit code (the deployment status: 1 on FAILED or
/// CRASHED) and the line its stdout ended on.
pub fn up_outcome(code: i32, stdout: &str) -> UpOutcome {
    if code != 0 {
        UpOutcome::Failed
    } else {
        exit_line(stdout).unwrap_or(UpOutcome::NoVerdict)
    }
}

/// The deploy verdict line.
pub fn verdict(image_rebuild: &str, secret_count: usize, service: &str) -> String {
    match (image_rebuild, secret_count) {
        ("not_triggered", 0) => "deploy: no-op (nothing changed)".to_string(),
        ("not_triggered", _) => "deploy: vars updated, no image rebuild".to_string(),
        _ => format!("deploy: triggered Railway build/deploy for service {service}"),
    }
}

/// Whether `railway service list --json` lists `service` (5.71 prints an array of objects with
/// `id` and `name`, `commands/output/service_summary.rs`). Older CLIs printed other shapes, so
/// any object naming it (`name` or `serviceName`) counts.
pub fn service_listed(json: &Value, service: &str) -> bool {
    match json {
        Value::Object(m) => {
            ["name", "serviceName", "service"]
                .iter()
                .any(|k| m.get(*k).and_then(Value::as_str) == Some(service))
                || m.values().any(|v| service_listed(v, service))
        }
        Value::Array(items) => items.iter().any(|v| service_listed(v, service)),
        _ => false,
    }
}

fn service_missing(service: &str) -> ProviderError {
    ProviderError::RailwayServiceMissing {
        service: service.to_string(),
    }
}

/// A run of the CLI (or of the pty wrapper around it). The CLI reports errors through `anyhow`,
/// which appends a whole stack backtrace when the operator's environment has `RUST_BACKTRACE=1`;
/// the daemon shows an error's last lines, which would then be frames instead of the message.
/// `RUST_LIB_BACKTRACE=0` turns those error backtraces off (panics still honour
/// `RUST_BACKTRACE`).
pub fn cli_cmd(program: &str, args: Vec<String>, cwd: PathBuf) -> Cmd {
    Cmd::new(program)
        .args(args)
        .cwd(cwd)
        .env("RUST_LIB_BACKTRACE", "0")
}

// ---------------------------------------------------------------------------------------------
// Execution.

#[derive(Debug)]
pub struct RailwayProvider {
    ctx: ProviderCtx,
    /// The railway CLI to run (`railway` on PATH unless overridden).
    pub program: String,
    /// The daemon's held OpenSSH sessions; `None`: every call is `railway ssh`.
    sessions: Option<SshSessions>,
}

impl RailwayProvider {
    pub fn new(ctx: ProviderCtx) -> Self {
        Self::with_program(ctx, "railway")
    }

    pub fn with_program(ctx: ProviderCtx, program: &str) -> Self {
        RailwayProvider {
            ctx,
            program: program.to_string(),
            sessions: None,
        }
    }

    /// Hold a ControlMaster session to the relay in `sessions` (see the module docs).
    pub fn with_sessions(mut self, sessions: SshSessions) -> Self {
        self.sessions = Some(sessions);
        self
    }

    fn relay_key(&self) -> String {
        format!(
            "{}\0{}\0{}\0{}",
            self.program,
            self.project_dir().display(),
            self.service(),
            self.env().unwrap_or("")
        )
    }

    /// The live master to the service's relay destination, or `None` to use `railway ssh`.
    pub async fn relay(&self) -> Option<Arc<SshMaster>> {
        let sessions = self.sessions.as_ref()?;
        let key = self.relay_key();
        let cached = relay_cache()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned();
        let target = match cached {
            Some((Some(t), _)) => t,
            Some((None, since)) if since.elapsed() < RELAY_RETRY => return None,
            _ => {
                let t = self.resolve_relay().await;
                self.remember(&key, t.clone());
                t?
            }
        };
        match sessions.master(&target).await {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::warn!(
                    target = %target.describe(),
                    "railway relay session did not start, using `railway ssh`: {e}"
                );
                self.remember(&key, None);
                None
            }
        }
    }

    fn remember(&self, key: &str, target: Option<SshTarget>) {
        relay_cache()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.to_string(), (target, Instant::now()));
    }

    /// `railway ssh config ... --dry-run`, parsed.
    async fn resolve_relay(&self) -> Option<SshTarget> {
        let cmd = self.cmd(
            ssh_config_args(self.service(), self.env()),
            self.project_dir(),
        );
        match self.run(&cmd, self.ctx.deadline).await {
            Ok(o) if o.code == 0 => relay_target(&String::from_utf8_lossy(&o.stdout)),
            Ok(o) => {
                tracing::warn!(
                    "`{}` failed (exit {}), using `railway ssh`: {}",
                    cmd.display(),
                    o.code,
                    self.ctx
                        .redactor
                        .redact(&String::from_utf8_lossy(&o.stderr))
                );
                None
            }
            Err(e) => {
                tracing::warn!("`{}`: {e}, using `railway ssh`", cmd.display());
                None
            }
        }
    }

    fn service(&self) -> &str {
        &self.ctx.spec.railway.service
    }

    fn env(&self) -> Option<&str> {
        self.ctx.spec.railway.environment.as_deref()
    }

    /// Commands other than deploy run where the operator's own `railway link` applies: the
    /// cloud.yaml's folder. Deploy steps run in the deploy dir (what `railway up` uploads).
    fn project_dir(&self) -> PathBuf {
        self.ctx
            .spec
            .path
            .parent()
            .map_or_else(|| self.ctx.deploy_dir.clone(), Path::to_path_buf)
    }

    /// A missing railway CLI names the Railway install page even when `program` is a path or
    /// another name.
    fn cli_error(&self, e: ProviderError) -> ProviderError {
        match e {
            ProviderError::CliMissing { program, .. } if program == self.program => {
                ProviderError::CliMissing {
                    program,
                    install_page: RAILWAY_CLI_PAGE,
                }
            }
            e => e,
        }
    }

    fn cmd(&self, args: Vec<String>, cwd: PathBuf) -> Cmd {
        cli_cmd(&self.program, args, cwd)
    }

    async fn run(&self, cmd: &Cmd, deadline: Duration) -> Result<Output, ProviderError> {
        process::run(cmd, deadline)
            .await
            .map_err(|e| self.cli_error(run_error(cmd, e)))
    }

    async fn ssh(&self, command: &str) -> Result<Output, ProviderError> {
        if let (Some(m), Some(sessions)) = (self.relay().await, &self.sessions) {
            return sessions
                .run(m.target(), command, None, self.ctx.deadline, false)
                .await;
        }
        let cmd = self.cmd(
            ssh_args(self.service(), self.env(), command),
            self.project_dir(),
        );
        let mut o = self.run(&cmd, self.ctx.deadline).await?;
        o.stderr = without_key_notice(&o.stderr).to_vec();
        Ok(o)
    }

    /// A captured deploy step: recorded in `steps`, failing the deploy on a non-zero exit.
    async fn deploy_step(
        &self,
        cmd: &Cmd,
        name: &str,
        detail: &str,
        steps: &mut Vec<DeployStep>,
    ) -> Result<Output, ProviderError> {
        let o = self
            .run(cmd, self.ctx.deadline)
            .await
            .map_err(|e| deploy_failed(e, "railway", steps))?;
        steps.push(step_from(name, detail, &o, &self.ctx.redactor));
        if o.code != 0 {
            return Err(deploy_failed(
                step_failed(name, &o, &self.ctx.redactor),
                "railway",
                steps,
            ));
        }
        Ok(o)
    }

    /// Run a streamed step; a non-zero exit fails with the tail of its output.
    async fn stream_step(
        &self,
        what: &str,
        cmd: &Cmd,
        deadline: Option<Duration>,
        out: &OutTx,
    ) -> Result<(), ProviderError> {
        let s = stream_capture(cmd, deadline, &self.ctx.redactor, out)
            .await
            .map_err(|e| self.cli_error(e))?;
        super::common::streamed_ok(what, s).map(drop)
    }
}

/// A command string through `railway ssh` (or the held relay): the daemon gives the CLI no
/// stdin, so stdin travels inside the command as a base64 here-document, and so do uploads.
impl Transport for RailwayProvider {
    type Request = String;

    fn redactor(&self) -> &Redactor {
        &self.ctx.redactor
    }

    async fn send(&self, command: String, _: bool) -> Result<Output, ProviderError> {
        self.ssh(&command).await
    }

    fn exec_request(&self, script: &str, stdin: Option<Vec<u8>>) -> String {
        exec_command_within(script, stdin.as_deref(), self.ctx.deadline)
    }

    fn upload_requests(
        &self,
        remote_path: &str,
        content: &[u8],
    ) -> Result<Vec<String>, ProviderError> {
        upload_commands(remote_path, content)
    }

    fn read_request(&self, remote_path: &str) -> String {
        read_command(remote_path)
    }

    /// The remote channel is text for the CLI, so the file travels as base64.
    fn decode_read(&self, remote_path: &str, stdout: Vec<u8>) -> Result<Vec<u8>, ProviderError> {
        decode_base64_text(&stdout).map_err(|e| {
            ProviderError::failed(format!(
                "reading {remote_path}: railway ssh returned text that is not base64 ({e}); check that the runner has base64 (coreutils)"
            ))
        })
    }
}

impl Provider for RailwayProvider {
    fn name(&self) -> &'static str {
        "railway"
    }

    /// `exec`'s stdin travels as a here-document inside the command given to `railway ssh` (or
    /// the relay's `ssh`), which is an argv.
    fn stdin_is_private(&self) -> bool {
        false
    }

    async fn build(&self, out: &OutTx) -> Result<(), ProviderError> {
        super::common::require_cli("docker")?;
        let argv = build_argv(self.service(), &self.ctx.deploy_dir);
        let cmd = Cmd::new("docker").args(argv.into_iter().skip(1));
        self.stream_step("docker build", &cmd, None, out).await
    }

    async fn deploy(&self, out: &OutTx) -> Result<DeployReport, ProviderError> {
        let spec = &self.ctx.spec;
        check_secrets(spec, &self.ctx.secrets)?;
        let service = self.service().to_string();
        let env = self.env();
        let dir = self.ctx.deploy_dir.clone();
        let mut steps: Vec<DeployStep> = Vec::new();

        if let Some(project) = &spec.railway.project {
            self.deploy_step(
                &self.cmd(link_args(project, env), dir.clone()),
                "railway link",
                &format!("linked project {project}"),
                &mut steps,
            )
            .await?;
            let o = self
                .deploy_step(
                    &self.cmd(service_list_args(env), dir.clone()),
                    "verify Railway service",
                    &format!("service {service} is configured"),
                    &mut steps,
                )
                .await?;
            let listed = serde_json::from_slice::<Value>(&o.stdout)
                .map(|v| service_listed(&v, &service))
                .unwrap_or(false);
            if !listed {
                if let Some(last) = steps.last_mut() {
                    last.status = "failed".to_string();
                    last.detail = format!("service {service} is not in the project");
                }
                return Err(deploy_failed(service_missing(&service), "railway", &steps));
            }
        }

        let mut last_output = None;
        for name in &spec.secrets {
            let value = self.ctx.secrets.get(name).cloned().unwrap_or_default();
            let cmd = self
                .cmd(variable_set_args(&service, env, name), dir.clone())
                .stdin(value.into_bytes());
            let o = self
                .run(&cmd, self.ctx.deadline)
                .await
                .map_err(|e| deploy_failed(e, "railway", &steps))?;
            if o.code != 0 {
                steps.push(step_from(
                    "set Railway service variables",
                    &format!("setting {name} failed"),
                    &o,
                    &self.ctx.redactor,
                ));
                return Err(deploy_failed(
                    step_failed(
                        &format!("railway variable set {name} --stdin"),
                        &o,
                        &self.ctx.redactor,
                    ),
                    "railway",
                    &steps,
                ));
            }
            last_output = Some(o);
        }
        let count = spec.secrets.len();
        let detail = format!("set {count} service var(s)");
        steps.push(match &last_output {
            Some(o) => step_from(
                "set Railway service variables",
                &detail,
                o,
                &self.ctx.redactor,
            ),
            None => plain_step("set Railway service variables", "ok", &detail),
        });

        let cmd = self.cmd(up_args(&service, env), dir.clone());
        let deadline = Some(self.ctx.deadline.max(MIN_DEPLOY_DEADLINE));
        let s = stream_capture(&cmd, deadline, &self.ctx.redactor, out)
            .await
            .map_err(|e| deploy_failed(self.cli_error(e), "railway", &steps))?;
        let outcome = up_outcome(s.code, &s.stdout_tail);
        push_streamed_step(
            &mut steps,
            "railway",
            ("railway up", outcome.detail(), "railway up --ci"),
            &s,
        )
        .map_err(|mut e| {
            // The verdict line ("Deploy failed: ...", "Deploy crashed") is on stdout even when
            // stderr has other output.
            if let Some(line) = verdict_line(&s.stdout_tail)
                && let ProviderError::DeployFailed { error, .. } = &mut e
                && let ProviderError::CommandFailed { explanation, .. } = error.as_mut()
            {
                explanation.push_str(&format!(" ({line})"));
            }
            e
        })?;
        if outcome == UpOutcome::NoVerdict {
            if let Some(last) = steps.last_mut() {
                last.status = "failed".to_string();
            }
            return Err(deploy_failed(
                ProviderError::failed(format!(
                    "railway up --ci exited 0 without a deployment status (no 'Deploy complete', no skipped build): check the deployment with `railway deployment list --service {service}`"
                )),
                "railway",
                &steps,
            ));
        }
        let image_rebuild = if outcome == UpOutcome::Skipped {
            "not_triggered"
        } else {
            "triggered"
        };
        let warnings = Vec::new();
        Ok(DeployReport {
            success: true,
            provider: "railway".to_string(),
            verdict: verdict(image_rebuild, count, &service),
            image_rebuild: image_rebuild.to_string(),
            steps,
            warnings,
        })
    }

    async fn exec(
        &self,
        script: &str,
        stdin: Option<Vec<u8>>,
    ) -> Result<ExecResult, ProviderError> {
        transport::exec(self, script, stdin).await
    }

    async fn exec_streaming(&self, script: &str, out: &OutTx) -> Result<i32, ProviderError> {
        let remote = exec_command_within(script, None, self.ctx.deadline);
        let cmd = match self.relay().await {
            Some(m) => m.command(&remote),
            None => self.cmd(
                ssh_args(self.service(), self.env(), &remote),
                self.project_dir(),
            ),
        };
        process::run_streaming(&cmd, Some(self.ctx.deadline), &self.ctx.redactor, out)
            .await
            .map_err(|e| self.cli_error(run_error(&cmd, e)))
    }

    async fn upload(&self, remote_path: &str, content: &[u8]) -> Result<(), ProviderError> {
        transport::upload(self, remote_path, content).await
    }

    async fn read(&self, remote_path: &str) -> Result<Vec<u8>, ProviderError> {
        transport::read(self, remote_path).await
    }

    fn attach_argv(&self, session: Option<&str>) -> Result<Vec<String>, ProviderError> {
        let session = session.unwrap_or(&self.ctx.spec.railway.session);
        let mut v = vec![self.program.clone()];
        v.extend(attach_args(self.service(), self.env(), session));
        Ok(v)
    }

    async fn logs(
        &self,
        follow: bool,
        window: &super::common::LogWindow,
        out: &OutTx,
    ) -> Result<i32, ProviderError> {
        let since = window.since()?;
        if follow && (window.tail.is_some() || since.is_some()) {
            return Err(ProviderError::invalid_args(
                "railway logs cannot follow and take --tail/--since together (the Railway CLI streams only without them): drop -f, or drop --tail/--since",
            ));
        }
        let tail = window.tail.map(|n| n.to_string());
        let args = logs_args(self.service(), self.env(), follow, tail.as_deref(), since);
        if !follow {
            let cmd = self.cmd(args, self.project_dir());
            return process::run_streaming(&cmd, Some(self.ctx.deadline), &self.ctx.redactor, out)
                .await
                .map_err(|e| self.cli_error(run_error(&cmd, e)));
        }
        // Follow mode streams only to a terminal: run the CLI under one.
        super::common::require_cli(&self.program).map_err(|e| self.cli_error(e))?;
        super::common::require_cli(PTY_WRAPPER[0])?;
        let mut argv = vec![self.program.clone()];
        argv.extend(args);
        let pty = under_pty(&argv);
        let cmd = cli_cmd(&pty[0], pty[1..].to_vec(), self.project_dir()).env("SHELL", "/bin/sh");
        process::run_streaming_terminal(&cmd, None, &self.ctx.redactor, out)
            .await
            .map_err(|e| run_error(&cmd, e))
    }

    async fn down(&self, out: &OutTx) -> Result<(), ProviderError> {
        let cmd = self.cmd(down_args(self.service(), self.env()), self.project_dir());
        self.stream_step("railway down", &cmd, Some(self.ctx.deadline), out)
            .await
    }

    async fn destroy(&self, out: &OutTx) -> Result<(), ProviderError> {
        self.down(out).await?;
        if let Some(volume) = &self.ctx.spec.resources.volume {
            let cmd = self.cmd(volume_delete_args(volume, self.env()), self.project_dir());
            self.stream_step("railway volume delete", &cmd, Some(self.ctx.deadline), out)
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shell::join;
    use megaplan_cloud_api::ErrorCode;
    use proptest::prelude::*;

    #[test]
    fn argv_without_environment() {
        assert_eq!(join(&link_args("proj", None)), "link --project proj");
        assert_eq!(join(&service_list_args(None)), "service list --json");
        assert_eq!(
            join(&variable_set_args("agent", None, "K")),
            "variable set K --service agent --stdin --skip-deploys"
        );
        assert_eq!(join(&up_args("agent", None)), "up --service agent --ci");
        assert_eq!(
            join(&ssh_args("agent", None, "bash -lc true")),
            "ssh --service agent -- 'bash -lc true'"
        );
        assert_eq!(
            join(&attach_args("agent", None, "s1")),
            "ssh --service agent --session s1"
        );
        assert_eq!(
            join(&logs_args("agent", None, true, None, None)),
            "logs --service agent"
        );
        assert_eq!(
            join(&logs_args("agent", None, false, None, None)),
            "logs --service agent --lines 200"
        );
        assert_eq!(
            join(&logs_args("agent", None, false, Some("20"), Some("1h"))),
            "logs --service agent --lines 20 --since 1h"
        );
        assert_eq!(
            join(&down_args("agent", None)),
            "down --service agent --yes"
        );
        assert_eq!(
            join(&volume_delete_args("vol", None)),
            "volume delete --volume vol --yes"
        );
        assert_eq!(
            join(&build_argv("agent", Path::new("/tmp/d x"))),
            "docker build -t megaplan-cloud-agent '/tmp/d x'"
        );
    }

    #[test]
    fn no_argv_carries_a_secret_value() {
        // The value travels on stdin: the argv names the variable only.
        let argv = variable_set_args("agent", Some("prod"), "OPENAI_API_KEY");
        assert!(argv.iter().all(|a| !a.contains('=')), "{argv:?}");
        assert!(argv.contains(&"--stdin".to_string()));
        assert!(argv.contains(&"--skip-deploys".to_string()));
    }

    #[test]
    fn follow_runs_under_a_pty_wrapper() {
        let argv: Vec<String> = std::iter::once("/opt/rail way/railway".to_string())
            .chain(logs_args("agent", Some("prod"), true, None, None))
            .collect();
        assert_eq!(
            under_pty(&argv),
            [
                "script",
                "-q",
                "-e",
                "-f",
                "-c",
                "'/opt/rail way/railway' logs --environment prod --service agent",
                "/dev/null"
            ]
        );
    }

    #[test]
    fn the_pty_wrapper_gives_the_cli_a_terminal() {
        if crate::process::which("script").is_none() {
            return;
        }
        let argv = under_pty(&[
            "sh".to_string(),
            "-c".to_string(),
            "test -t 1 && echo tty".to_string(),
        ]);
        let out = std::process::Command::new(&argv[0])
            .args(&argv[1..])
            .env("SHELL", "/bin/sh")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "tty\r\n");
        assert!(out.status.success());
    }

    #[test]
    fn environment_placement() {
        let e = Some("staging");
        assert_eq!(
            join(&link_args("proj", e)),
            "link --project proj --environment staging"
        );
        assert_eq!(
            join(&service_list_args(e)),
            "service list --environment staging --json"
        );
        assert_eq!(
            join(&variable_set_args("agent", e, "K")),
            "variable set --environment staging K --service agent --stdin --skip-deploys"
        );
        assert_eq!(
            join(&up_args("agent", e)),
            "up --environment staging --service agent --ci"
        );
        assert_eq!(
            join(&ssh_args("agent", e, "x")),
            "ssh --environment staging --service agent -- x"
        );
        assert_eq!(
            join(&attach_args("agent", e, "s")),
            "ssh --environment staging --service agent --session s"
        );
        assert_eq!(
            join(&logs_args("agent", e, false, None, None)),
            "logs --environment staging --service agent --lines 200"
        );
        assert_eq!(
            join(&down_args("agent", e)),
            "down --environment staging --service agent --yes"
        );
        assert_eq!(
            join(&volume_delete_args("vol", e)),
            "volume --environment staging delete --volume vol --yes"
        );
    }

    #[test]
    fn the_cli_key_notice_is_not_remote_output() {
        assert_eq!(
            without_key_notice(
                b"Using SSH key from file /h/.ssh/id_ed25519.pub: id_ed25519\nerr\n"
            ),
            b"err\n"
        );
        assert_eq!(without_key_notice(b"Using SSH key from agent: k"), b"");
        assert_eq!(
            without_key_notice(b"err\nUsing SSH key from x\n"),
            b"err\nUsing SSH key from x\n"
        );
    }

    #[test]
    fn relay_destination_from_the_host_block() {
        assert_eq!(
            join(&ssh_config_args("agent", Some("prod"))),
            "ssh config --environment prod --service agent --alias megaplan-agent --dry-run"
        );
        // What `railway ssh config --dry-run` prints (commands/ssh/config.rs render_config_block).
        let block = "# BEGIN railway:p:e:s\n# Railway service: agent\nHost megaplan-agent\n    HostName ssh.railway.com\n    User 4f2c-instance\n    ServerAliveInterval 30\n    ServerAliveCountMax 3\n# END railway:p:e:s\n";
        assert_eq!(
            relay_target(block),
            Some(SshTarget::with_default_sessions(
                "ssh.railway.com".into(),
                Some("4f2c-instance".into()),
                22,
                None,
            ))
        );
        let dev = "Host a\n  HostName ssh.railway-develop.com\n  Port 2222\n  User i\n  IdentityFile \"/k/id x\"\n";
        let t = relay_target(dev).expect("target");
        assert_eq!(
            (t.port, t.identity_file.as_deref()),
            (2222, Some("/k/id x"))
        );
        assert_eq!(relay_target("Host a\n  HostName h\n"), None, "no User");
        assert_eq!(relay_target("Host a\n  User u\n"), None, "no HostName");
        assert_eq!(
            relay_target("Host a\n HostName h\n User u\n Port x\n"),
            None
        );
        assert_eq!(relay_target(""), None);
    }

    #[test]
    fn up_verdict_from_exit_status_and_output() {
        let skipped = "Indexing...\nUploading...\n  Deployment: https://railway.com/x\nCI mode enabled\nNo changed files matched patterns: src/**\n";
        assert_eq!(classify_up(skipped), "not_triggered");
        assert_eq!(up_outcome(0, skipped), UpOutcome::Skipped);
        let done = "Indexing...\nUploading...\nCI mode enabled\nbuild step 1\nDeploy complete\n";
        assert_eq!(classify_up(done), "triggered");
        assert_eq!(up_outcome(0, done), UpOutcome::Deployed);
        assert_eq!(up_outcome(1, "Deploy failed: exit 2\n"), UpOutcome::Failed);
        assert_eq!(up_outcome(1, "Deploy crashed\n"), UpOutcome::Failed);
        assert_eq!(
            verdict_line("CI mode enabled\nDeploy failed: exit 2\nbye\n"),
            Some("Deploy failed: exit 2")
        );
        assert_eq!(verdict_line("Deploy complete\n"), None);
        // The status stream closing early exits 0 with no verdict: not a success.
        assert_eq!(
            up_outcome(0, "Indexing...\nUploading...\nCI mode enabled\n"),
            UpOutcome::NoVerdict
        );
        // Our old guesses are not what the CLI prints.
        assert_eq!(classify_up("No changes to deploy"), "triggered");
        // The CLI exits on a line that STARTS with the marker; a build that merely mentions it
        // and then completes was a build.
        let mentions = "CI mode enabled\necho 'No changed files matched patterns' > notes.txt\nDeploy complete\n";
        assert_eq!(up_outcome(0, mentions), UpOutcome::Deployed);
        assert_eq!(classify_up(mentions), "triggered");
        let quoted = "CI mode enabled\n#4 RUN grep 'No changed files matched patterns' x\n";
        assert_eq!(up_outcome(0, quoted), UpOutcome::NoVerdict);
        // Forced colour (CLICOLOR_FORCE) wraps the verdict in SGR sequences.
        assert_eq!(
            up_outcome(0, "CI mode enabled\n\x1b[1;32mDeploy complete\x1b[0m\n"),
            UpOutcome::Deployed
        );
    }

    #[test]
    fn cli_errors_come_without_a_backtrace() {
        let c = cli_cmd("railway", vec!["down".into()], PathBuf::from("/p"));
        assert!(
            c.env
                .contains(&("RUST_LIB_BACKTRACE".to_string(), "0".to_string())),
            "{:?}",
            c.env
        );
    }

    #[test]
    fn verdicts() {
        assert_eq!(
            verdict("not_triggered", 0, "agent"),
            "deploy: no-op (nothing changed)"
        );
        assert_eq!(
            verdict("not_triggered", 2, "agent"),
            "deploy: vars updated, no image rebuild"
        );
        assert_eq!(
            verdict("triggered", 2, "agent"),
            "deploy: triggered Railway build/deploy for service agent"
        );
    }

    #[test]
    fn service_listing_in_either_json_shape() {
        let flat = serde_json::json!([{"name": "agent", "id": "1"}, {"name": "db"}]);
        assert!(service_listed(&flat, "agent"));
        assert!(!service_listed(&flat, "web"));
        let nested =
            serde_json::json!({"services": {"edges": [{"node": {"serviceName": "agent"}}]}});
        assert!(service_listed(&nested, "agent"));
        assert!(!service_listed(&serde_json::json!({"name": 1}), "agent"));
        let e = megaplan_cloud_api::ErrorBody::from(service_missing("agent"));
        assert_eq!(e.error, ErrorCode::RailwayServiceMissing);
        assert_eq!(
            e.message,
            "Railway service 'agent' was not found after project link. Run this command from the deploy directory, then rerun deploy: railway add --service agent"
        );
    }

    #[test]
    fn exec_command_strings() {
        assert_eq!(
            exec_command_within("echo hi", None, Duration::from_secs(600)),
            "timeout -k 5 600 bash -lc 'echo hi'"
        );
        assert_eq!(
            exec_command_within("cat", Some(b"abc"), Duration::from_millis(1500)),
            "base64 -d <<'MEGAPLAN_STDIN' | timeout -k 5 2 bash -lc cat\nYWJj\nMEGAPLAN_STDIN"
        );
        assert_eq!(exec_command("echo hi", None), "bash -lc 'echo hi'");
        assert_eq!(
            exec_command("cat", Some(b"abc")),
            "base64 -d <<'MEGAPLAN_STDIN' | bash -lc cat\nYWJj\nMEGAPLAN_STDIN"
        );
        assert_eq!(read_command("/w/it's"), "base64 < '/w/it'\\''s'");
    }

    #[test]
    fn small_upload_is_one_command_in_the_original_form() {
        assert_eq!(
            upload_commands("/workspace/app/idea.txt", b"hi").unwrap(),
            [
                "mkdir -p /workspace/app && base64 -d > /workspace/app/idea.txt <<'MEGAPLAN_UPLOAD'\naGk=\nMEGAPLAN_UPLOAD"
            ]
        );
    }

    #[test]
    fn large_upload_is_chunked_then_renamed() {
        let content = vec![7u8; UPLOAD_CHUNK * 2 + 5];
        let cmds = upload_commands("/w/big file", &content).unwrap();
        assert_eq!(cmds.len(), 4);
        assert!(
            cmds[0]
                .starts_with("mkdir -p /w && base64 -d > '/w/big file.part' <<'MEGAPLAN_UPLOAD'\n")
        );
        assert!(cmds[1].starts_with("base64 -d >> '/w/big file.part' <<'MEGAPLAN_UPLOAD'\n"));
        assert_eq!(cmds[3], "mv -f '/w/big file.part' '/w/big file'");
        assert!(cmds.iter().all(|c| c.len() < 100_000));
    }

    /// Run command strings the way `railway ssh` would (a shell in the runner), in a temp dir.
    fn run_in_sh(commands: &[String]) {
        for c in commands {
            let st = std::process::Command::new("sh")
                .arg("-c")
                .arg(c)
                .status()
                .unwrap();
            assert!(st.success(), "{c}");
        }
    }

    #[test]
    fn uploads_and_reads_round_trip_through_a_shell() {
        let dir = tempfile::tempdir().unwrap();
        let all: Vec<u8> = (0..=255u8).collect();
        let big: Vec<u8> = (0..=255u8).cycle().take(UPLOAD_CHUNK * 3 + 17).collect();
        for (name, content) in [("small 'q' $x", &all), ("big`f`", &big)] {
            let dest = dir.path().join("sub dir").join(name);
            let dest = dest.to_string_lossy().into_owned();
            run_in_sh(&upload_commands(&dest, content).unwrap());
            assert_eq!(&std::fs::read(&dest).unwrap(), content);
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(read_command(&dest))
                .output()
                .unwrap();
            assert_eq!(&decode_base64_text(&out.stdout).unwrap(), content);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn exec_script_words_survive_the_runner_shell_and_bash(words in proptest::collection::vec("[^\\x00]{0,16}", 1..4), stdin in proptest::collection::vec(any::<u8>(), 0..64)) {
            let script = format!("cat >/dev/null; printf '%s\\0' {}", join(&words));
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(exec_command(&script, Some(&stdin)))
                .output()
                .unwrap();
            let mut seen: Vec<String> = String::from_utf8(out.stdout).unwrap().split('\0').map(str::to_string).collect();
            seen.pop();
            prop_assert_eq!(seen, words);
        }

        #[test]
        fn exec_stdin_arrives_byte_exact(stdin in proptest::collection::vec(any::<u8>(), 0..512)) {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(exec_command("cat", Some(&stdin)))
                .output()
                .unwrap();
            prop_assert_eq!(out.stdout, stdin);
        }
    }
}
