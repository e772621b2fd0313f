//! What every command of the workflow layer is given and gives back: the client's stream
//! ([`Out`]), the command's context ([`Ctx`]: the loaded cloud.yaml, its provider, secrets
//! and redactor) and its outcome ([`Done`]). The command files (`chain.rs`, `ops.rs`,
//! `status.rs`, `supervise.rs`, `agent_auth.rs`) import this module, never `mod.rs`, which
//! only dispatches to them.

use crate::cloud_yaml::CloudSpec;
use crate::process::StreamKind;
use crate::provider::{self, AnyProvider, OutTx, Provider as _, ProviderCtx};
use crate::redact::Redactor;
use crate::state::AppState;
use megaplan_cloud_api::output::CommandOutput;
use megaplan_cloud_api::wire::Frame;
use megaplan_cloud_api::{ErrorBody, ErrorCode};
use std::collections::BTreeMap;
use std::path::PathBuf;
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
                deadline: self.state.settings().command_timeout,
            },
            self.state.ssh(),
        )
        .map_err(ErrorBody::from)
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
        crate::render::persistent_deploy_dir(&self.spec, &self.state.settings().cloud_home)
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

    /// Redact a typed answer's text before it leaves the daemon: through its JSON, whose shape
    /// redaction keeps (only string contents change), so it reads back as the same type.
    pub fn redact_typed<T: serde::Serialize + serde::de::DeserializeOwned>(
        &self,
        t: T,
    ) -> Result<T, ErrorBody> {
        let v = serde_json::to_value(&t).map_err(internal)?;
        serde_json::from_value(self.redactor.redact_json(&v)).map_err(internal)
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
        self.state.launchers().forget(&self.key);
        let again = resolve_launcher(&self.state, &self.spec, &self.key, &p).await?;
        if again == launcher {
            return Ok(r);
        }
        Ok(run(build(&again)).await?)
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
    if let Some(l) = state.launchers().get(key) {
        return Ok(l);
    }
    let r = p.observe(&launcher::probe_script()).await?;
    let l = launcher::parse_probe(&r.stdout)?;
    state.launchers().remember(key, &l);
    Ok(l)
}

/// A command's outcome: its typed answer (the `result` frame's payload) and the exit code.
pub struct Done {
    pub output: CommandOutput,
    pub exit_code: i32,
}

impl Done {
    pub fn ok(output: CommandOutput) -> Self {
        Done {
            output,
            exit_code: 0,
        }
    }
    pub fn code(output: CommandOutput, exit_code: i32) -> Self {
        Done { output, exit_code }
    }
}

fn internal(e: serde_json::Error) -> ErrorBody {
    ErrorBody::new(
        ErrorCode::Internal,
        format!("cannot redact the command's answer: {e}"),
    )
}
