//! Workflows: what each cloud command does, gluing cloud.yaml, providers and the chain domain.
//! [`run`] is the single entry of `POST /v1/run`; it always ends the stream with exactly one
//! `result` (or `terminal`) frame, whatever happens.

pub mod agent_auth;
pub mod chain;
pub mod ops;
pub mod status;
pub mod supervise;

pub use crate::provider::{redact_error, remote_failure};
pub use crate::supervisor::markers;

use crate::cloud_yaml::{self, CloudSpec};
use crate::process::StreamKind;
use crate::provider::{self, AnyProvider, OutTx, Provider as _, ProviderCtx};
use crate::redact::Redactor;
use crate::state::AppState;
use megaplan_cloud_api::wire::{Command, Frame, RepoOverrides, RunRequest};
use megaplan_cloud_api::{ErrorBody, ErrorCode};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::mpsc;

/// The client's stream.
#[derive(Clone)]
pub struct Out {
    tx: mpsc::Sender<Frame>,
}

impl Out {
    pub fn new(tx: mpsc::Sender<Frame>) -> Self {
        Out { tx }
    }

    pub async fn stdout(&self, data: impl Into<String>) {
        let _ = self.tx.send(Frame::Stdout { data: data.into() }).await;
    }

    pub async fn stderr(&self, data: impl Into<String>) {
        let _ = self.tx.send(Frame::Stderr { data: data.into() }).await;
    }

    pub async fn frame(&self, f: Frame) {
        let _ = self.tx.send(f).await;
    }

    /// Run `call` with a provider-shaped sender whose lines are forwarded to this stream; every
    /// line is out before this returns (and so before the result frame).
    pub async fn relay<T>(&self, call: impl AsyncFnOnce(&OutTx) -> T) -> T {
        self.relay_with(false, call).await
    }

    /// Like [`Out::relay`] with both streams sent to the client's stderr: wrapper output of
    /// `bootstrap`/`resume` must not mix with the JSON payload on stdout.
    pub async fn relay_to_stderr<T>(&self, call: impl AsyncFnOnce(&OutTx) -> T) -> T {
        self.relay_with(true, call).await
    }

    async fn relay_with<T>(&self, all_to_stderr: bool, call: impl AsyncFnOnce(&OutTx) -> T) -> T {
        let (tx, fwd) = self.forward(all_to_stderr);
        let r = call(&tx).await;
        drop(tx);
        let _ = fwd.await;
        r
    }

    fn forward(&self, all_to_stderr: bool) -> (OutTx, tokio::task::JoinHandle<()>) {
        let (ptx, mut prx) = mpsc::channel::<(StreamKind, String)>(256);
        let tx = self.tx.clone();
        let handle = tokio::spawn(async move {
            loop {
                // A client that went away ends the forwarding at once, not at the next line: a
                // quiet `logs --follow` would otherwise keep its remote command (and the task,
                // which shutdown waits for) alive until the runner printed something again.
                let next = tokio::select! {
                    next = prx.recv() => next,
                    () = tx.closed() => None,
                };
                let Some((kind, data)) = next else {
                    break;
                };
                let f = match kind {
                    StreamKind::Stdout if !all_to_stderr => Frame::Stdout { data },
                    StreamKind::Stdout | StreamKind::Stderr => Frame::Stderr { data },
                };
                if tx.send(f).await.is_err() {
                    // The client went away; dropping `prx` tells the provider to stop.
                    break;
                }
            }
        });
        (ptx, handle)
    }

    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// One command's context: the validated cloud.yaml, secrets, redactor and client stream.
pub struct Ctx {
    pub state: Arc<AppState>,
    pub spec: Arc<CloudSpec>,
    pub key: String,
    pub cwd: PathBuf,
    /// Secret values for this request (client's, else remembered, else the daemon's env).
    pub secrets: BTreeMap<String, String>,
    pub redactor: Redactor,
    pub out: Out,
    /// The agents' login files the client handed over (`deploy`, `chain`); memory only.
    pub agent_auth: Option<megaplan_cloud_api::wire::AgentAuth>,
}

impl Ctx {
    /// Build the provider; `deploy_dir` is where the rendered files are (or will be).
    pub fn provider(&self, deploy_dir: PathBuf) -> Result<AnyProvider, ErrorBody> {
        self.provider_redacting(deploy_dir, self.redactor.clone())
    }

    fn provider_redacting(
        &self,
        deploy_dir: PathBuf,
        redactor: Redactor,
    ) -> Result<AnyProvider, ErrorBody> {
        provider::for_spec(
            ProviderCtx {
                spec: self.spec.clone(),
                deploy_dir,
                secrets: self.secrets.clone(),
                redactor,
                deadline: self.state.settings.command_timeout,
            },
            &self.state.ssh,
        )
    }

    /// The provider for commands that never touch the deploy dir.
    pub fn runner(&self) -> Result<AnyProvider, ErrorBody> {
        self.provider(self.runner_dir())
    }

    /// [`Ctx::runner`] without output redaction, for structured output that text redaction
    /// would corrupt (the chain observation's JSON); the caller redacts what it derives.
    pub fn raw_runner(&self) -> Result<AnyProvider, ErrorBody> {
        self.provider_redacting(self.runner_dir(), Redactor::none())
    }

    fn runner_dir(&self) -> PathBuf {
        self.persistent_deploy_dir()
            .unwrap_or_else(std::env::temp_dir)
    }

    pub fn persistent_deploy_dir(&self) -> Option<PathBuf> {
        crate::render::persistent_deploy_dir(&self.spec, &self.state.settings.cloud_home)
    }

    /// Secret names listed in cloud.yaml without a value from the client.
    pub fn missing_secrets(&self) -> Vec<String> {
        self.spec
            .secrets
            .iter()
            .filter(|n| !self.secrets.contains_key(*n))
            .cloned()
            .collect()
    }

    pub fn require_secrets(&self) -> Result<(), ErrorBody> {
        let missing = self.missing_secrets();
        if missing.is_empty() {
            return Ok(());
        }
        Err(ErrorBody::new(
            ErrorCode::MissingSecrets,
            format!(
                "Missing required secrets: {}; export them in the shell that runs megaplan-cloudctl",
                missing.join(", ")
            ),
        )
        .with("missing", missing))
    }

    /// Redact a JSON payload before it leaves the daemon.
    pub fn redact(&self, v: &Value) -> Value {
        self.redactor.redact_json(v)
    }

    /// The core launcher for this runner: `megaplan.launcher` as written, else the one probed
    /// on the runner (remembered per runner; see `chain::launcher`).
    pub async fn launcher(&self) -> Result<String, ErrorBody> {
        resolve_launcher(&self.state, &self.spec, &self.key, &self.runner()?).await
    }

    /// Run a core command built from the launcher. When the launcher was probed and the command
    /// says "No module named", the remembered launcher is dropped, the runner probed again, and
    /// the command re-run once if the runner now names another module.
    pub async fn core_exec(
        &self,
        build: impl Fn(&str) -> String,
        observe_only: bool,
    ) -> Result<provider::ExecResult, ErrorBody> {
        let p = self.runner()?;
        let run = |script: String| {
            let p = &p;
            async move {
                if observe_only {
                    p.observe(&script).await
                } else {
                    p.exec(&script, None).await
                }
            }
        };
        let launcher = resolve_launcher(&self.state, &self.spec, &self.key, &p).await?;
        let r = run(build(&launcher)).await?;
        if r.code == 0
            || crate::chain::launcher::configured(&self.spec).is_some()
            || !crate::chain::launcher::says_module_missing(&format!("{}{}", r.stdout, r.stderr))
        {
            return Ok(r);
        }
        self.state.launchers.forget(&self.key);
        let again = resolve_launcher(&self.state, &self.spec, &self.key, &p).await?;
        if again == launcher {
            return Ok(r);
        }
        run(build(&again)).await
    }
}

/// [`Ctx::launcher`] for callers without a `Ctx` (ticks).
pub async fn resolve_launcher(
    state: &AppState,
    spec: &CloudSpec,
    key: &str,
    p: &impl provider::Provider,
) -> Result<String, ErrorBody> {
    use crate::chain::launcher;
    if let Some(l) = launcher::configured(spec) {
        return Ok(l.to_string());
    }
    if let Some(l) = state.launchers.get(key) {
        return Ok(l);
    }
    let r = p.observe(&launcher::probe_script()).await?;
    let l = launcher::parse_probe(&r.stdout)?;
    state.launchers.remember(key, &l);
    Ok(l)
}

/// A command's outcome: the stdout payload (null = print nothing) and the exit code.
pub struct Done {
    pub payload: Value,
    pub exit_code: i32,
}

impl Done {
    pub fn ok(payload: Value) -> Self {
        Done {
            payload,
            exit_code: 0,
        }
    }
    pub fn code(payload: Value, exit_code: i32) -> Self {
        Done { payload, exit_code }
    }
}

pub async fn run(state: Arc<AppState>, req: RunRequest, tx: mpsc::Sender<Frame>) {
    let out = Out::new(tx);
    let name = req.command.name();
    let started = std::time::Instant::now();
    let result = execute(state, req, out.clone()).await;
    let (payload, exit_code) = match result {
        Ok(Done { payload, exit_code }) => (payload, exit_code),
        Err(e) => {
            out.stderr(format!("error: {}: {}\n", e.error, e.message))
                .await;
            (e.to_value(), 1)
        }
    };
    tracing::info!(
        command = name,
        exit_code,
        ms = started.elapsed().as_millis() as u64,
        "command finished"
    );
    out.frame(Frame::Result { payload, exit_code }).await;
}

fn apply_overrides(spec: &mut CloudSpec, o: &RepoOverrides) -> Result<(), ErrorBody> {
    if let Some(u) = &o.repo_url {
        spec.repo.url = u.clone();
    }
    if let Some(b) = &o.repo_branch {
        spec.repo.branch = b.clone();
    }
    if let Some(w) = &o.repo_workspace {
        if !w.starts_with('/') {
            return Err(ErrorBody::new(
                ErrorCode::InvalidArgs,
                format!("--repo-workspace must be an absolute remote path, got {w:?}"),
            ));
        }
        spec.repo.workspace = w.clone();
    }
    Ok(())
}

async fn execute(state: Arc<AppState>, req: RunRequest, out: Out) -> Result<Done, ErrorBody> {
    let path = Path::new(&req.cloud_yaml);
    if !path.is_absolute() {
        return Err(ErrorBody::new(
            ErrorCode::InvalidArgs,
            format!(
                "cloud_yaml must be an absolute path, got {:?}",
                req.cloud_yaml
            ),
        ));
    }
    let mut spec = cloud_yaml::load_async(path).await?;
    for w in &spec.warnings {
        out.stderr(format!("warning: {w}\n")).await;
    }
    match &req.command {
        Command::Bootstrap { overrides, .. } | Command::Chain { overrides, .. } => {
            apply_overrides(&mut spec, overrides)?
        }
        _ => {}
    }
    let key = spec.key();
    // A marker saved under the key of the path as typed (older clients keyed the lexical path)
    // is taken over by the resolved path's key, which is the original's.
    let aliases: Vec<String> = [Some(&req.cloud_yaml), req.cloud_yaml_as_given.as_ref()]
        .into_iter()
        .flatten()
        .map(|p| megaplan_cloud_api::paths::marker_key(Path::new(p)))
        .filter(|k| *k != key)
        .collect();
    // With --remote-spec no legacy marker file is read at all.
    let names_remote_spec = matches!(
        &req.command,
        Command::Status {
            remote_spec: Some(_),
            ..
        } | Command::Supervise {
            remote_spec: Some(_),
            ..
        }
    );
    if !aliases.is_empty() && !names_remote_spec {
        for w in markers::adopt(&state, &key, &spec.path.display().to_string(), &aliases).await? {
            out.stderr(format!("warning: {w}\n")).await;
        }
    }
    // Output is redacted line by line, so a value spanning lines could escape in pieces whose
    // lines are too short to match; the ssh/local env files cannot carry one either.
    if let Some(name) = req
        .secrets
        .iter()
        .find(|(k, v)| spec.secrets.contains(k) && v.contains(['\n', '\r']))
        .map(|(k, _)| k)
    {
        return Err(ErrorBody::new(
            ErrorCode::InvalidArgs,
            format!("secret {name} contains a line break; export a single-line value (e.g. base64-encode it)"),
        )
        .with("field", name.as_str()));
    }
    // Remember what the client handed over (memory only) so unattended ticks redact too.
    let wanted: BTreeMap<String, String> = req
        .secrets
        .iter()
        .filter(|(k, v)| spec.secrets.contains(k) && !v.is_empty())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    state.remember_secrets(&key, &wanted);
    // The strings of the agents' login files are redacted like secret values, by this command
    // and by the unattended ticks after it (memory only, as above).
    let agent_auth = req.agent_auth.clone();
    if let Some(auth) = &agent_auth {
        state.remember_secrets(&key, &agent_auth::secret_literals(auth));
    }
    let mut secrets = state.secret_values(&key, &spec.secrets);
    secrets.extend(wanted);
    let redactor = Redactor::cached(&key, &spec.secrets, &secrets);
    let ctx = Ctx {
        state,
        spec: Arc::new(spec),
        key,
        cwd: PathBuf::from(&req.cwd),
        secrets,
        redactor,
        out,
        agent_auth,
    };
    match req.command {
        Command::Build => ops::build(&ctx).await,
        Command::Deploy => ops::deploy(&ctx).await,
        Command::Exec { cmd, argv } => ops::exec(&ctx, &exec_command(&cmd, &argv)?).await,
        Command::Logs {
            follow,
            tail,
            since,
        } => ops::logs(&ctx, follow, &crate::provider::LogWindow { tail, since }).await,
        Command::Attach { session } => ops::attach(&ctx, session.as_deref()).await,
        Command::Down => ops::down(&ctx).await,
        Command::Destroy { yes } => ops::destroy(&ctx, yes).await,
        Command::Status {
            chain: true,
            remote_spec,
            ..
        } => status::chain_status(&ctx, remote_spec.as_deref()).await,
        Command::Status { all: true, .. } | Command::Chains => status::chains(&ctx).await,
        Command::Status { plan, .. } => status::plain_status(&ctx, plan.as_deref()).await,
        Command::Resume { plan } => status::resume(&ctx, plan.as_deref()).await,
        Command::Bootstrap {
            idea,
            plan_name,
            robustness,
            ..
        } => chain::bootstrap(&ctx, &idea, plan_name.as_deref(), robustness.as_deref()).await,
        Command::Chain {
            spec,
            idea_dir,
            fresh,
            no_git_refresh,
            ..
        } => {
            chain::launch(
                &ctx,
                &chain::LaunchArgs {
                    spec: PathBuf::from(spec),
                    idea_dir: idea_dir.map(PathBuf::from),
                    fresh,
                    no_git_refresh,
                },
            )
            .await
        }
        Command::Supervise {
            remote_spec,
            dry_run,
        } => supervise::cli(&ctx, remote_spec.as_deref(), dry_run).await,
    }
}

/// The shell command `exec` runs: the command string as given, or the argv words each quoted.
pub fn exec_command(cmd: &str, argv: &[String]) -> Result<String, ErrorBody> {
    match (cmd.trim().is_empty(), argv.is_empty()) {
        (false, true) => Ok(cmd.to_string()),
        (true, false) => Ok(argv
            .iter()
            .map(|w| crate::shell::quote(w))
            .collect::<Vec<_>>()
            .join(" ")),
        (true, true) => Err(ErrorBody::new(
            ErrorCode::InvalidArgs,
            "exec needs a command: `exec \"ls -la\"` or `exec -- ls -la`",
        )),
        (false, false) => Err(ErrorBody::new(
            ErrorCode::InvalidArgs,
            "exec takes a command string or words after `--`, not both",
        )),
    }
}

#[cfg(test)]
mod exec_tests {
    use super::exec_command;

    #[test]
    fn exec_runs_the_string_or_the_words_each_quoted() {
        assert_eq!(
            exec_command("ls -la | wc -l", &[]).unwrap(),
            "ls -la | wc -l"
        );
        let words = [
            "printf".to_string(),
            "%s\\n".into(),
            "a b".into(),
            "$(id)".into(),
            "it's".into(),
        ];
        assert_eq!(
            exec_command("", &words).unwrap(),
            "printf '%s\\n' 'a b' '$(id)' 'it'\\''s'"
        );
        assert!(exec_command(" ", &[]).is_err());
        assert!(exec_command("ls", &words).is_err());
    }
}
