//! What every provider shares: the [`Provider`] trait, its result types, the context a
//! provider is built from, and the helpers that map process results to [`ProviderError`]s and
//! stream output.
//! The provider files (`ssh.rs`, `local.rs`, `railway.rs`, `transport.rs`) import this module;
//! `mod.rs` only chooses among them ([`super::AnyProvider`], [`super::for_spec`]).
pub use super::error::ProviderError;
use crate::cloud_yaml::CloudSpec;
use crate::process::{Cmd, Output, RunError, StreamKind};
use crate::redact::Redactor;
use crate::runner::group::RunnerCall;
use base64::Engine as _;
use megaplan_cloud_api::ErrorBody;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Where streamed, already-redacted output goes: (stream, one or more complete lines).
pub type OutTx = tokio::sync::mpsc::Sender<(StreamKind, String)>;

/// The captured result of a command run in the runner. Both texts are already redacted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExecResult {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// A deploy's report and its steps: typed in the api crate, the `deploy` answer.
pub use megaplan_cloud_api::output::{DeployReport, DeployStep};

/// Everything a provider needs for one request. `Debug` lists secret names, never values.
#[derive(Clone)]
pub struct ProviderCtx {
    pub spec: Arc<CloudSpec>,
    /// The rendered deploy dir (persistent for local and ssh, temporary for railway).
    pub deploy_dir: PathBuf,
    /// Secret values sent by the client for this request; held in memory only.
    pub secrets: BTreeMap<String, String>,
    pub redactor: Redactor,
    /// Deadline of each remote command (not of builds or followed logs).
    pub deadline: Duration,
}

impl std::fmt::Debug for ProviderCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderCtx")
            .field("cloud_yaml", &self.spec.path)
            .field("provider", &self.spec.provider)
            .field("deploy_dir", &self.deploy_dir)
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .field("deadline", &self.deadline)
            .finish()
    }
}

/// Seconds a runner command may take to stop after the TERM its deadline sends, before KILL.
pub const REMOTE_KILL_GRACE_SECS: u64 = 5;

/// `timeout -k 5 <secs>`: the words that bound a command on the runner itself. Killing our local
/// client (ssh, `docker compose exec`, `railway ssh`) at a deadline does not stop the command in
/// the container — neither sshd nor Docker ends a command whose client went away — so every
/// provider runs `bash -lc` under coreutils `timeout`, which ends the command's whole process
/// group when `deadline` passes (detached work such as a tmux session is not touched).
pub fn runner_timeout(deadline: Duration) -> [String; 4] {
    let secs = (deadline.as_secs() + u64::from(deadline.subsec_nanos() > 0)).max(1);
    [
        "timeout".to_string(),
        "-k".to_string(),
        REMOTE_KILL_GRACE_SECS.to_string(),
        secs.to_string(),
    ]
}

/// How long the kill of an abandoned runner command may take (one more round trip).
pub const RUNNER_KILL_DEADLINE: Duration = Duration::from_secs(20);

/// Ends a runner command's process group (see [`crate::runner::group`]) unless disarmed: when
/// its client went away or its deadline passed. The runner side gets no signal when our local
/// client (ssh, `docker compose exec`) is killed, so the kill is a command of its own, sent
/// through the same session. [`RunnerKill::kill`] sends it and waits; dropping an armed guard
/// (a request or tick abandoned mid-command) sends it from a task of its own.
pub struct RunnerKill {
    kill: Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>,
}

impl RunnerKill {
    /// A guard that runs `kill` (not started until needed).
    pub fn new(kill: impl std::future::Future<Output = ()> + Send + 'static) -> Self {
        RunnerKill {
            kill: Some(Box::pin(kill)),
        }
    }

    /// The local command `cmd` ([`send_kill`]) as the kill.
    pub fn command(cmd: Cmd) -> Self {
        RunnerKill::new(async move { send_kill(&cmd).await })
    }

    /// The command ended on its own: nothing to kill.
    pub fn disarm(mut self) {
        self.kill = None;
    }

    /// Send the kill now and wait for it.
    pub async fn kill(mut self) {
        if let Some(k) = self.kill.take() {
            k.await;
        }
    }

    /// Settle by the command's outcome: an `Ok` ended on its own (disarm), an `Err` (client
    /// gone, deadline, transport failure) may have left it running on the runner (kill).
    pub async fn settle<T, E>(self, result: &Result<T, E>) {
        match result {
            Ok(_) => self.disarm(),
            Err(_) => self.kill().await,
        }
    }
}

impl Drop for RunnerKill {
    fn drop(&mut self) {
        if let Some(k) = self.kill.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(k);
        }
    }
}

/// Run the kill command `cmd` of an abandoned runner command, bounded by
/// [`RUNNER_KILL_DEADLINE`]; a failure is logged (the runner-side deadline still ends it).
pub async fn send_kill(cmd: &Cmd) {
    match crate::process::run(cmd, RUNNER_KILL_DEADLINE).await {
        Ok(o) if o.code == 0 => {}
        Ok(o) => tracing::warn!(code = o.code, "could not end an abandoned runner command"),
        Err(e) => tracing::warn!(error = %e, "could not end an abandoned runner command"),
    }
}

/// The argv words running `bash -lc <script>` in the runner bounded by `deadline`
/// ([`runner_timeout`]) in a process group of its own, and the handle that can kill it.
pub fn runner_command(deadline: Duration, script: &str) -> (Vec<String>, RunnerCall) {
    let call = RunnerCall::new();
    (call.wrap(&runner_timeout(deadline), script), call)
}

/// Lines kept of a deploy step's output.
pub const TAIL_LINES: usize = 20;

/// Longest line kept in a step's output tail (longer ones are cut).
pub const TAIL_LINE_BYTES: usize = 4096;

/// The operations every transport offers.
#[allow(async_fn_in_trait)]
pub trait Provider {
    fn name(&self) -> &'static str;

    /// Whether the runner can run commands (supervise refuses without it).
    fn has_exec(&self) -> bool {
        true
    }

    /// Whether the `stdin` of [`Provider::exec`] reaches the runner without being written into
    /// any command line (an argv is readable by every local user): required to carry a
    /// credential file (`workflow::agent_auth`).
    fn stdin_is_private(&self) -> bool {
        true
    }

    /// Build the image from the deploy dir, which the caller has already rendered.
    async fn build(&self, out: &OutTx) -> Result<(), ProviderError>;

    /// Start (or restart) the runner with the secret values of [`ProviderCtx::secrets`].
    async fn deploy(&self, out: &OutTx) -> Result<DeployReport, ProviderError>;

    /// Run `bash -lc <script>` in the runner and capture its output. A non-zero exit is a
    /// result, not an error; errors are transport failures.
    async fn exec(&self, script: &str, stdin: Option<Vec<u8>>)
    -> Result<ExecResult, ProviderError>;

    /// Like [`Provider::exec`] for a script without side effects: a transport that lost its
    /// connection may reconnect and run it again.
    async fn observe(&self, script: &str) -> Result<ExecResult, ProviderError> {
        self.exec(script, None).await
    }

    /// The local command that runs `bash -lc <script>` in the runner with its stdin and stdout
    /// connected, over the session this transport holds, for a long-lived process (the
    /// resident observer, `crate::provider::resident`). No runner-side deadline: the process
    /// bounds its own requests. `None`: this transport cannot hold one. Over ssh the launch
    /// names the connection's session budget, which the observer draws one session from.
    async fn resident_command(
        &self,
        _script: &str,
    ) -> Result<Option<super::resident::Launch>, ProviderError> {
        Ok(None)
    }

    /// Run `bash -lc <script>` in the runner, streaming redacted output; returns the exit code.
    async fn exec_streaming(&self, script: &str, out: &OutTx) -> Result<i32, ProviderError>;

    /// Write `content` to `remote_path` in the runner (parents created).
    async fn upload(&self, remote_path: &str, content: &[u8]) -> Result<(), ProviderError>;

    /// The exact bytes of `remote_path` in the runner. Not redacted: callers redact whatever
    /// part of it they show.
    async fn read(&self, remote_path: &str) -> Result<Vec<u8>, ProviderError>;

    /// The argv the client runs on the user's terminal for `attach`. `session` (`--session`) is
    /// railway-only; other providers answer `invalid_args`.
    fn attach_argv(&self, session: Option<&str>) -> Result<Vec<String>, ProviderError>;

    /// Stream the runner's logs: followed until the receiver goes away, or the last lines
    /// (`window.tail`, default 200), optionally only those since `window.since`.
    async fn logs(
        &self,
        follow: bool,
        window: &LogWindow,
        out: &OutTx,
    ) -> Result<i32, ProviderError>;

    /// Stop the runner, keeping its state.
    async fn down(&self, out: &OutTx) -> Result<(), ProviderError>;

    /// Remove the runner and its provider-side state.
    async fn destroy(&self, out: &OutTx) -> Result<(), ProviderError>;
}

/// The flags `docker logs` and `docker compose logs` share: `[-f] [--tail N] [--since S]`.
pub(crate) fn docker_log_flags<'a>(
    follow: bool,
    tail: Option<&'a str>,
    since: Option<&'a str>,
) -> Vec<&'a str> {
    let mut w = Vec::new();
    if follow {
        w.push("-f");
    }
    if let Some(n) = tail {
        w.extend(["--tail", n]);
    }
    if let Some(s) = since {
        w.extend(["--since", s]);
    }
    w
}

/// Which part of the log history `logs` shows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogWindow {
    pub tail: Option<u32>,
    pub since: Option<String>,
}

/// Lines shown without `--tail` when not following.
pub const DEFAULT_LOG_TAIL: u32 = 200;

impl LogWindow {
    /// `--tail` as the CLIs take it: the given count; without one, 200 when not following and
    /// none (the whole history, then new lines) when following.
    pub fn tail_for(&self, follow: bool) -> Option<String> {
        match (self.tail, follow) {
            (Some(n), _) => Some(n.to_string()),
            (None, false) => Some(DEFAULT_LOG_TAIL.to_string()),
            (None, true) => None,
        }
    }

    /// `--since`, checked: a duration or a time, never anything a shell or a CLI parser could
    /// take for something else.
    pub fn since(&self) -> Result<Option<&str>, ProviderError> {
        let Some(s) = self.since.as_deref() else {
            return Ok(None);
        };
        let ok = !s.is_empty()
            && s.len() <= 40
            && !s.starts_with('-')
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b":.+-".contains(&b));
        if ok {
            Ok(Some(s))
        } else {
            Err(since_invalid(s))
        }
    }
}

/// `invalid_args` for a `--since` that is neither a duration nor a time.
pub(crate) fn since_invalid(since: &str) -> ProviderError {
    ProviderError::InvalidArgs {
        field: Some("since"),
        message: format!(
            "--since {since:?}: give a duration such as 10m or 2h, or a time such as 2026-12-01T10:00:00Z"
        ),
    }
}

/// Where to get a CLI we shell out to.
pub fn install_page(program: &str) -> &'static str {
    let base = program.rsplit('/').next().unwrap_or(program);
    match base {
        "railway" => "https://docs.railway.app/develop/cli",
        "docker" => "https://docs.docker.com/get-docker/",
        "docker-compose" => "https://docs.docker.com/compose/install/",
        "rsync" => "https://rsync.samba.org/",
        _ => "https://www.openssh.com/",
    }
}

pub(crate) fn unavailable(program: &str) -> ProviderError {
    ProviderError::cli_missing(program)
}

/// `provider_unavailable` unless `program` is on PATH.
pub(crate) fn require_cli(program: &str) -> Result<PathBuf, ProviderError> {
    crate::process::which(program).ok_or_else(|| unavailable(program))
}

/// Map a failure to start or finish a command.
pub(crate) fn run_error(cmd: &Cmd, e: RunError) -> ProviderError {
    match e {
        // spawn(2) says ENOENT both for a missing program and for a missing working folder:
        // name the folder when that is what is missing (the local provider runs compose in
        // the deploy folder, which `build` creates).
        RunError::NotFound { .. } if cmd.cwd.as_ref().is_some_and(|d| !d.is_dir()) => {
            let dir = cmd
                .cwd
                .as_ref()
                .map(|d| d.display().to_string())
                .unwrap_or_default();
            ProviderError::DeployFolderMissing { dir }
        }
        RunError::NotFound { program } => unavailable(&program),
        RunError::Timeout { after } => ProviderError::TimedOut {
            command: cmd.display(),
            after,
        },
        RunError::Cancelled => ProviderError::ClientGone {
            command: Some(cmd.display()),
        },
        RunError::Io(why) => ProviderError::CouldNotRun {
            command: cmd.display(),
            why,
        },
    }
}

/// An error built from unredacted remote output, with its message and extra fields redacted.
pub fn redact_error(redactor: &crate::redact::Redactor, mut e: ErrorBody) -> ErrorBody {
    e.message = redactor.redact(&e.message);
    for v in e.extra.values_mut() {
        *v = redactor.redact_json(v);
    }
    e
}

/// A remote command's failure as `provider_failed`, quoting its (redacted) explanation.
pub fn remote_failure(what: &str, r: &ExecResult) -> ProviderError {
    let said = if r.stderr.trim().is_empty() {
        r.stdout.trim()
    } else {
        r.stderr.trim()
    };
    let tail: Vec<&str> = said.lines().rev().take(8).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    ProviderError::CommandFailed {
        what: what.to_string(),
        code: r.code,
        explanation: tail.join("\n"),
        field: None,
    }
}

#[cfg(test)]
mod run_error_tests {
    use super::*;

    #[test]
    fn a_missing_working_folder_is_not_a_missing_cli() {
        let cmd = Cmd::new("docker").cwd("/nonexistent/megaplan/deploy");
        let e = run_error(
            &cmd,
            RunError::NotFound {
                program: "docker".into(),
            },
        );
        let message = e.to_string();
        assert!(
            message.contains("run `megaplan-cloudctl build` first"),
            "{e}"
        );
        assert!(!message.contains("Missing required CLI"), "{e}");
        let e = run_error(
            &Cmd::new("docker"),
            RunError::NotFound {
                program: "docker".into(),
            },
        );
        assert!(
            e.to_string().contains("Missing required CLI 'docker'"),
            "{e}"
        );
    }
}

/// The last `n` lines of `text`.
pub(crate) fn tail(text: &str, n: usize) -> String {
    let trimmed = text.trim_end_matches('\n');
    let lines: Vec<&str> = trimmed.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `s` as it is when its command exited 0; otherwise the failure of `what` with its exit code and
/// the most telling lines of its output.
pub(crate) fn streamed_ok(what: &str, s: Streamed) -> Result<Streamed, ProviderError> {
    if s.code != 0 {
        return Err(ProviderError::CommandFailed {
            what: what.to_string(),
            code: s.code,
            explanation: explanation(&s.stdout_tail, &s.stderr_tail),
            field: None,
        });
    }
    Ok(s)
}

/// The redacted explanation of a failed command: stderr, else stdout, else a note.
pub(crate) fn explanation(stdout: &str, stderr: &str) -> String {
    let text = if stderr.trim().is_empty() {
        stdout
    } else {
        stderr
    };
    let t = tail(text, TAIL_LINES);
    if t.trim().is_empty() {
        "(no output)".to_string()
    } else {
        t
    }
}

/// `provider_failed` for a step that exited non-zero. `what` names the step in plain words; the
/// message carries the step's own (redacted) explanation rather than the command line.
pub(crate) fn step_failed(what: &str, out: &Output, redactor: &Redactor) -> ProviderError {
    let stdout = redactor.redact(&String::from_utf8_lossy(&out.stdout));
    let stderr = redactor.redact(&String::from_utf8_lossy(&out.stderr));
    ProviderError::CommandFailed {
        what: what.to_string(),
        code: out.code,
        explanation: explanation(&stdout, &stderr),
        field: None,
    }
}

/// An [`ExecResult`] with both streams redacted.
pub(crate) fn exec_result(out: &Output, redactor: &Redactor) -> ExecResult {
    ExecResult {
        code: out.code,
        stdout: redactor.redact(&String::from_utf8_lossy(&out.stdout)),
        stderr: redactor.redact(&String::from_utf8_lossy(&out.stderr)),
    }
}

/// A deploy step built from a finished command.
pub(crate) fn step_from(name: &str, detail: &str, out: &Output, redactor: &Redactor) -> DeployStep {
    DeployStep {
        name: name.to_string(),
        status: if out.code == 0 { "ok" } else { "failed" }.to_string(),
        detail: detail.to_string(),
        stdout_tail: tail(
            &redactor.redact(&String::from_utf8_lossy(&out.stdout)),
            TAIL_LINES,
        ),
        stderr_tail: tail(
            &redactor.redact(&String::from_utf8_lossy(&out.stderr)),
            TAIL_LINES,
        ),
    }
}

/// A step that ran no command.
pub(crate) fn plain_step(name: &str, status: &str, detail: &str) -> DeployStep {
    DeployStep {
        name: name.to_string(),
        status: status.to_string(),
        detail: detail.to_string(),
        stdout_tail: String::new(),
        stderr_tail: String::new(),
    }
}

/// Turn a failed deploy into `provider_failed` carrying the steps so far, so the client can
/// still print which step broke.
pub(crate) fn deploy_failed(
    err: ProviderError,
    provider: &'static str,
    steps: &[DeployStep],
) -> ProviderError {
    ProviderError::DeployFailed {
        error: Box::new(err),
        provider,
        steps: steps.to_vec(),
    }
}

/// Record a streamed deploy step; a non-zero exit ends the deploy with `provider_failed`
/// ("<what> failed (exit N): <explanation>") carrying the steps so far.
pub(crate) fn push_streamed_step(
    steps: &mut Vec<DeployStep>,
    provider: &'static str,
    (name, detail, what): (&str, &str, &str),
    s: &Streamed,
) -> Result<(), ProviderError> {
    steps.push(DeployStep {
        name: name.to_string(),
        status: if s.code == 0 { "ok" } else { "failed" }.to_string(),
        detail: detail.to_string(),
        stdout_tail: s.stdout_tail.clone(),
        stderr_tail: s.stderr_tail.clone(),
    });
    if s.code == 0 {
        return Ok(());
    }
    let e = ProviderError::CommandFailed {
        what: what.to_string(),
        code: s.code,
        explanation: explanation(&s.stdout_tail, &s.stderr_tail),
        field: None,
    };
    Err(deploy_failed(e, provider, steps))
}

/// Refuse a deploy when a secret named in cloud.yaml has no value from the client.
pub(crate) fn check_secrets(
    spec: &CloudSpec,
    secrets: &BTreeMap<String, String>,
) -> Result<(), ProviderError> {
    let missing: Vec<&str> = spec
        .secrets
        .iter()
        .filter(|name| secrets.get(*name).is_none_or(|v| v.is_empty()))
        .map(String::as_str)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(ProviderError::MissingSecrets {
        missing: missing.into_iter().map(str::to_string).collect(),
        file: spec.path.clone(),
    })
}

/// The runner's env file: `PORT=<port>` then `NAME=value` per secret, in cloud.yaml order.
/// Docker env files have no quoting, so a value with a line break cannot be carried.
pub(crate) fn env_file_content(
    spec: &CloudSpec,
    secrets: &BTreeMap<String, String>,
) -> Result<String, ProviderError> {
    let mut out = format!("PORT={}\n", spec.resources.port);
    for name in &spec.secrets {
        let value = secrets.get(name).map(String::as_str).unwrap_or("");
        if value.contains(['\n', '\r']) {
            return Err(ProviderError::invalid_args(format!(
                "secret {name} contains a line break, which a Docker env file cannot carry; store it without line breaks (e.g. base64) and decode it in the runner"
            )));
        }
        out.push_str(name);
        out.push('=');
        out.push_str(value);
        out.push('\n');
    }
    Ok(out)
}

/// The parent folder of a remote path, for `mkdir -p`.
pub(crate) fn remote_parent(path: &str) -> Result<String, ProviderError> {
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        return Err(ProviderError::invalid_args(format!(
            "remote path {path:?} names no file; give a file path such as /workspace/app/idea.txt"
        )));
    }
    Ok(match trimmed.rfind('/') {
        Some(0) => "/".to_string(),
        Some(i) => trimmed[..i].to_string(),
        None => ".".to_string(),
    })
}

/// The runner-side script of an upload: base64 on stdin, decoded into `remote_path`.
pub(crate) fn upload_script(remote_path: &str) -> Result<String, ProviderError> {
    let parent = remote_parent(remote_path)?;
    Ok(format!(
        "mkdir -p {} && base64 -d > {}",
        crate::shell::quote(&parent),
        crate::shell::quote(remote_path)
    ))
}

/// Base64 text wrapped at 76 columns with a final newline (what `base64 -d` reads everywhere).
pub(crate) fn base64_lines(content: &[u8]) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(content);
    let mut out = String::with_capacity(encoded.len() + encoded.len() / 76 + 1);
    for chunk in encoded.as_bytes().chunks(76) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out
}

/// Decode base64 text that may contain line breaks.
pub(crate) fn decode_base64_text(text: &[u8]) -> Result<Vec<u8>, String> {
    let compact: Vec<u8> = text
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact)
        .map_err(|e| e.to_string())
}

/// What [`stream_capture`] returns: the exit code and the redacted tails of both streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Streamed {
    pub code: i32,
    pub stdout_tail: String,
    pub stderr_tail: String,
}

/// Run `cmd` streaming its redacted output to `out` while keeping the last [`TAIL_LINES`] lines
/// of each stream (for deploy step reports and failure messages). Memory stays bounded.
pub(crate) async fn stream_capture(
    cmd: &Cmd,
    deadline: Option<Duration>,
    redactor: &Redactor,
    out: &OutTx,
) -> Result<Streamed, ProviderError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(StreamKind, String)>(16);
    let forward = async move {
        let mut tails = [
            std::collections::VecDeque::new(),
            std::collections::VecDeque::new(),
        ];
        while let Some((kind, text)) = rx.recv().await {
            let t = &mut tails[kind as usize];
            for line in text.lines() {
                if t.len() == TAIL_LINES {
                    t.pop_front();
                }
                // A tail line is for a report: its first bytes are enough, and a runner
                // printing megabyte lines cannot make the tails hold 20 of them.
                let mut end = line.len().min(TAIL_LINE_BYTES);
                while !line.is_char_boundary(end) {
                    end -= 1;
                }
                t.push_back(line[..end].to_string());
            }
            if out.send((kind, text)).await.is_err() {
                // Dropping rx makes run_streaming see the client gone and kill the process.
                break;
            }
        }
        tails.map(|t| Vec::from(t).join("\n"))
    };
    let run = async {
        let r = crate::process::run_streaming(cmd, deadline, redactor, &tx).await;
        drop(tx);
        r
    };
    let (code, [stdout_tail, stderr_tail]) = tokio::join!(run, forward);
    let code = code.map_err(|e| run_error(cmd, e))?;
    Ok(Streamed {
        code,
        stdout_tail,
        stderr_tail,
    })
}

/// Send one informational line to the output stream (stderr side). A closed receiver is not an
/// error here: the operation itself decides what to do when the client is gone.
pub(crate) async fn note(out: &OutTx, line: &str) {
    let _ = out.send((StreamKind::Stderr, format!("{line}\n"))).await;
}

/// `invalid_args` for `attach --session` on a provider without named sessions.
pub(crate) fn session_not_supported(provider: &str) -> ProviderError {
    ProviderError::invalid_args(format!(
        "--session is only supported by the railway provider; this cloud.yaml uses provider: {provider} (drop --session)"
    ))
}
