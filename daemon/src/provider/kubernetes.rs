//! kubernetes provider: one bare Pod plus one ReadWriteOnce PersistentVolumeClaim per
//! cloud.yaml, on an existing cluster, through the Kubernetes API (the `kube` crate; no
//! `kubectl` in the daemon's path).
//!
//! - `deploy` applies the Secret (the secret values, read by the pod through `envFrom`) and
//!   the ConfigMap (the same rendered `entrypoint.sh` and `health_server.py` as the other
//!   providers), creates the claim on the first deploy, replaces the pod, and waits on a watch
//!   of the pod until its Ready condition (the readiness probe on the health server) or a reason
//!   it will not get there (ImagePullBackOff, CrashLoopBackOff, Evicted, …).
//! - Commands run over the held client's exec stream (`kube` `ws`), bounded on the runner by
//!   `timeout` in a process group of their own (`runner::group`), like every provider. The v4
//!   exec protocol of older clusters cannot half-close stdin (a remote `cat` never sees EOF),
//!   so a command given stdin reads exactly its length: the script starts with
//!   `exec 0< <(head -c N)`.
//! - The resident observer (`provider/resident.rs`) runs in the pod over an exec stream of the
//!   held client, its script on stdin, in a process group of its own; ending it closes the
//!   stream and kills that group with another exec (closing an exec stream is not guaranteed to
//!   end the process in the pod).
//! - `down` deletes the pod and the Secret, keeping the claim (the workspace); `destroy`
//!   deletes every object labelled for this cloud.yaml.
//!
//! One client per (kubeconfig, context), held for the daemon's life (the held-session idea: no
//! reconnect per call).

use super::common::{
    DeployReport, DeployStep, ExecResult, LogWindow, OutTx, Provider, ProviderCtx, RunnerKill,
    check_secrets, deploy_failed, note, plain_step, runner_command, session_not_supported,
};
use super::error::ProviderError;
use super::kubernetes_manifest::{self as manifest, CONTAINER, Names, Readiness};
use super::resident::{Channel, Launch};
use crate::cloud_yaml::Kubernetes;
use crate::process::StreamKind;
use crate::runner::group::RunnerCall;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status as ExecStatus;
use kube::api::{Api, AttachParams, DeleteParams, ListParams, LogParams, Patch, PatchParams};
use kube::runtime::wait::{await_condition, conditions};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt};

/// Creating a pod may pull an image and clone a repository: far longer than one command.
const MIN_READY_DEADLINE: Duration = Duration::from_secs(600);

/// Deleting a pod waits its grace period (10 s, `terminationGracePeriodSeconds`) and more.
const DELETE_DEADLINE: Duration = Duration::from_secs(180);

/// The field manager of server-side apply.
const FIELD_MANAGER: &str = "megaplan-cloudd";

/// The held clients, one per (kubeconfig, context).
type ClientKey = (Option<PathBuf>, Option<String>);
static CLIENTS: OnceLock<tokio::sync::Mutex<HashMap<ClientKey, kube::Client>>> = OnceLock::new();

fn failed(message: impl Into<String>) -> ProviderError {
    ProviderError::failed(message)
}

/// A Kubernetes API error as `provider_failed` (`provider_unavailable` when the API server
/// cannot be reached), saying what was being done.
fn api_error(what: &str, e: kube::Error) -> ProviderError {
    match &e {
        kube::Error::Api(s) => ProviderError::Failed {
            message: format!(
                "{what}: the API server refused ({} {}): {}",
                s.code, s.reason, s.message
            ),
            reason: Some(s.reason.clone()),
        },
        kube::Error::HyperError(_) | kube::Error::Service(_) => {
            ProviderError::KubernetesUnreachable {
                what: what.to_string(),
                why: e.to_string(),
            }
        }
        _ => failed(format!("{what}: {e}")),
    }
}

/// The held client for `k`'s kubeconfig and context, made on first use: the kubeconfig given,
/// else `$KUBECONFIG` or `~/.kube/config`, else the in-cluster service account.
pub async fn client(k: &Kubernetes) -> Result<kube::Client, ProviderError> {
    let key = (k.kubeconfig.clone(), k.context.clone());
    let clients = CLIENTS.get_or_init(|| tokio::sync::Mutex::new(HashMap::new()));
    let mut held = clients.lock().await;
    if let Some(c) = held.get(&key) {
        return Ok(c.clone());
    }
    let options = kube::config::KubeConfigOptions {
        context: k.context.clone(),
        cluster: None,
        user: None,
    };
    let unavailable = |why: String| ProviderError::KubernetesConfig { why };
    let mut config = match (&k.kubeconfig, &k.context) {
        (Some(path), _) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| unavailable(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kc, &options)
                .await
                .map_err(|e| unavailable(format!("{}: {e}", path.display())))?
        }
        (None, Some(_)) => kube::Config::from_kubeconfig(&options)
            .await
            .map_err(|e| unavailable(e.to_string()))?,
        (None, None) => kube::Config::infer()
            .await
            .map_err(|e| unavailable(e.to_string()))?,
    };
    // Followed logs and long commands are bounded by the daemon's own deadlines.
    config.read_timeout = None;
    let c = kube::Client::try_from(config).map_err(|e| unavailable(e.to_string()))?;
    held.insert(key, c.clone());
    Ok(c)
}

/// The kubernetes provider for one cloud.yaml.
pub struct KubernetesProvider {
    ctx: ProviderCtx,
    k: Kubernetes,
    names: Names,
}

impl std::fmt::Debug for KubernetesProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesProvider")
            .field("ctx", &self.ctx)
            .field("namespace", &self.names.namespace)
            .field("pod", &self.names.pod)
            .finish()
    }
}

/// The exit code an exec stream's final status says (`Success` → 0).
fn exit_code(status: Option<&ExecStatus>) -> Result<i32, ProviderError> {
    let Some(s) = status else {
        return Err(failed(
            "the exec stream ended without an exit status (the pod may have stopped)",
        ));
    };
    if s.status.as_deref() == Some("Success") {
        return Ok(0);
    }
    let code = s.details.as_ref().and_then(|d| {
        d.causes
            .iter()
            .flatten()
            .find(|c| c.reason.as_deref() == Some("ExitCode"))
            .and_then(|c| c.message.as_deref())
            .and_then(|m| m.parse::<i32>().ok())
    });
    code.ok_or_else(|| {
        failed(format!(
            "the command could not run in the pod: {}",
            s.message.as_deref().unwrap_or("(no message)")
        ))
    })
}

/// Longest script sent inside the exec request itself; a longer one goes on stdin.
const INLINE_SCRIPT_MAX: usize = 8 * 1024;

/// How the resident observer's script runs in the pod: the words after the process-group
/// wrapper, and the bytes sent on its stdin first. A script longer than [`INLINE_SCRIPT_MAX`]
/// (the observer script with `resident.py` inside is several times that) travels on stdin:
/// `head -c N` reads exactly it (nothing else is sent before the observer says `ready`), and
/// the observer then reads its requests from the same stdin.
pub fn resident_words(script: &str) -> (String, Option<Vec<u8>>) {
    if script.len() <= INLINE_SCRIPT_MAX {
        return (script.to_string(), None);
    }
    (
        format!("s=$(head -c {}) && eval \"$s\"", script.len()),
        Some(script.as_bytes().to_vec()),
    )
}

/// No runner-side deadline for the resident observer (`timeout 0`): it lives as long as the
/// daemon wants it, bounds its own requests, and is ended by its kill. `timeout` is still
/// there for the process group it makes (see `runner::group`), which the kill ends whole.
const RESIDENT_BOUND: [&str; 2] = ["timeout", "0"];

/// `exec 0< <(head -c N)` before `script`: the command's stdin ends after the `N` bytes sent
/// (see the module docs).
pub fn framed_script(script: &str, stdin_len: usize) -> String {
    format!("exec 0< <(head -c {stdin_len})\n{script}")
}

impl KubernetesProvider {
    pub fn new(ctx: ProviderCtx) -> Result<Self, ProviderError> {
        let k = ctx
            .spec
            .kubernetes
            .clone()
            .ok_or_else(|| ProviderError::InvalidConfig {
                field: "kubernetes",
                message: "provider: kubernetes needs a kubernetes: section with at least image:"
                    .to_string(),
            })?;
        let names = manifest::names(&ctx.spec, &k);
        Ok(KubernetesProvider { ctx, k, names })
    }

    async fn api<K>(&self) -> Result<Api<K>, ProviderError>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Ok(Api::namespaced(
            client(&self.k).await?,
            &self.names.namespace,
        ))
    }

    /// The rendered `entrypoint.sh` and `health_server.py`.
    fn entrypoint_files(&self) -> Result<BTreeMap<String, String>, ProviderError> {
        let mut files = BTreeMap::new();
        for f in crate::render::render(&self.ctx.spec).map_err(ProviderError::Render)? {
            if f.name == crate::render::ENTRYPOINT || f.name == crate::render::HEALTH_SERVER {
                files.insert(f.name, String::from_utf8_lossy(&f.content).into_owned());
            }
        }
        Ok(files)
    }

    /// Server-side apply of one object (its manifest, as `kubernetes_manifest` builds it).
    async fn apply<K>(
        &self,
        name: &str,
        object: impl serde::Serialize + std::fmt::Debug + Send + Sync,
    ) -> Result<(), ProviderError>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + std::fmt::Debug
            + serde::de::DeserializeOwned
            + serde::Serialize,
        <K as kube::Resource>::DynamicType: Default,
    {
        let api: Api<K> = self.api().await?;
        let pp = PatchParams::apply(FIELD_MANAGER).force();
        api.patch(name, &pp, &Patch::Apply(&object))
            .await
            .map_err(|e| {
                api_error(
                    &format!("applying {} {name}", K::kind(&Default::default())),
                    e,
                )
            })?;
        Ok(())
    }

    /// Delete `name` and wait until it is gone (absent already: done).
    async fn delete_and_wait<K>(&self, name: &str, out: &OutTx) -> Result<bool, ProviderError>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + std::fmt::Debug
            + serde::de::DeserializeOwned
            + Send
            + 'static,
        <K as kube::Resource>::DynamicType: Default,
    {
        let kind = K::kind(&Default::default()).to_string();
        let api: Api<K> = self.api().await?;
        let Some(existing) = api
            .get_opt(name)
            .await
            .map_err(|e| api_error(&format!("reading {kind} {name}"), e))?
        else {
            return Ok(false);
        };
        let uid = existing.meta().uid.clone().unwrap_or_default();
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(true),
            Err(e) => return Err(api_error(&format!("deleting {kind} {name}"), e)),
        }
        note(out, &format!("{kind} {name}: deleting")).await;
        let gone = tokio::time::timeout(
            DELETE_DEADLINE,
            await_condition(api, name, conditions::is_deleted(&uid)),
        )
        .await;
        match gone {
            Ok(Ok(_)) => Ok(true),
            Ok(Err(e)) => Err(failed(format!("waiting for {kind} {name} to go: {e}"))),
            Err(_) => Err(ProviderError::NotInTime {
                message: format!(
                    "{kind} {name} was still there {}s after its deletion; look at its finalizers and events",
                    DELETE_DEADLINE.as_secs()
                ),
                reason: None,
            }),
        }
    }

    /// Wait on a watch of the pod until it is ready or will not be; the reason when not.
    async fn wait_ready(&self, out: &OutTx) -> Result<(), ProviderError> {
        let api: Api<Pod> = self.api().await?;
        let deadline = self.ctx.deadline.max(MIN_READY_DEADLINE);
        let last = Arc::new(std::sync::Mutex::new(String::new()));
        let seen = last.clone();
        let cond = move |p: Option<&Pod>| {
            let r = manifest::readiness(p);
            if let (Readiness::Waiting(w), Ok(mut s)) = (&r, seen.lock()) {
                *s = w.clone();
            }
            !matches!(r, Readiness::Waiting(_))
        };
        let waited =
            tokio::time::timeout(deadline, await_condition(api, &self.names.pod, cond)).await;
        let pod = match waited {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => return Err(failed(format!("watching pod {}: {e}", self.names.pod))),
            Err(_) => {
                let why = last.lock().map(|s| s.clone()).unwrap_or_default();
                return Err(ProviderError::NotInTime {
                    message: format!(
                        "pod {} was not ready within {}s: {why}",
                        self.names.pod,
                        deadline.as_secs()
                    ),
                    reason: Some(why),
                });
            }
        };
        match manifest::readiness(pod.as_ref()) {
            Readiness::Ready => {
                note(out, &format!("pod {}: ready", self.names.pod)).await;
                Ok(())
            }
            Readiness::Failed(why) | Readiness::Waiting(why) => Err(ProviderError::Failed {
                message: format!("pod {} will not become ready: {why}", self.names.pod),
                reason: Some(why),
            }),
        }
    }

    /// The guard that ends `call`'s process group in the pod (another exec over the client).
    fn runner_kill(&self, call: &RunnerCall) -> RunnerKill {
        pod_kill(self.k.clone(), self.names.clone(), call)
    }

    /// Run `script` (`bash -lc`, bounded on the runner) in the pod; `Ok((code, stdout, stderr))`
    /// raw. A command still running at the deadline (plus the runner-side grace) is killed.
    async fn exec_raw(
        &self,
        script: &str,
        stdin: Option<Vec<u8>>,
    ) -> Result<(i32, Vec<u8>, Vec<u8>), ProviderError> {
        // The exec's command travels in the request's URI (one `command=` parameter per word,
        // percent-encoded), which http caps at 64 KiB: a long script (the launch gate with the
        // mutation inside) is sent on stdin instead and run from there.
        let (script, stdin) = match stdin {
            None if script.len() > INLINE_SCRIPT_MAX => (
                "s=$(cat); exec 0</dev/null; eval \"$s\"".to_string(),
                Some(script.as_bytes().to_vec()),
            ),
            other => (script.to_string(), other),
        };
        let script = match &stdin {
            Some(b) => framed_script(&script, b.len()),
            None => script,
        };
        let (argv, call) = runner_command(self.ctx.deadline, &script);
        let pods: Api<Pod> = self.api().await?;
        let kill = self.runner_kill(&call);
        let ap = AttachParams::default()
            .container(CONTAINER)
            .stdin(stdin.is_some())
            .stdout(true)
            .stderr(true);
        let run = async {
            let mut p = pods
                .exec(&self.names.pod, argv, &ap)
                .await
                .map_err(|e| api_error(&format!("exec in pod {}", self.names.pod), e))?;
            // Kept open until the command ends: closing it would end the stream.
            let mut writer = p.stdin();
            if let (Some(w), Some(bytes)) = (writer.as_mut(), &stdin) {
                w.write_all(bytes)
                    .await
                    .map_err(|e| failed(format!("sending stdin to the pod: {e}")))?;
                let _ = w.flush().await;
            }
            let mut stdout = p.stdout();
            let mut stderr = p.stderr();
            let status = p.take_status();
            let read_all = |r: Option<tokio::io::ReadHalf<tokio::io::SimplexStream>>| async move {
                let mut buf = Vec::new();
                if let Some(r) = r {
                    crate::process::read_capped(r, &mut buf, crate::process::MAX_CAPTURE_BYTES)
                        .await;
                }
                buf
            };
            let (out, err, status) =
                tokio::join!(read_all(stdout.take()), read_all(stderr.take()), async {
                    match status {
                        Some(s) => s.await,
                        None => None,
                    }
                });
            drop(writer);
            let code = exit_code(status.as_ref())?;
            let _ = p.join().await;
            Ok::<_, ProviderError>((code, out, err))
        };
        self.bounded(kill, run).await
    }

    /// Await `run` within the deadline plus the runner-side grace. On success the kill guard is
    /// disarmed; on an error or the deadline the command's process group in the pod is ended.
    async fn bounded<T>(
        &self,
        kill: RunnerKill,
        run: impl std::future::Future<Output = Result<T, ProviderError>>,
    ) -> Result<T, ProviderError> {
        let limit =
            self.ctx.deadline + Duration::from_secs(super::common::REMOTE_KILL_GRACE_SECS + 5);
        let result = match tokio::time::timeout(limit, run).await {
            Ok(r) => r,
            Err(_) => Err(ProviderError::NotInTime {
                message: format!(
                    "a command in pod {} did not finish within {}s and was killed",
                    self.names.pod,
                    limit.as_secs()
                ),
                reason: None,
            }),
        };
        kill.settle(&result).await;
        result
    }

    fn exec_result(&self, (code, out, err): (i32, Vec<u8>, Vec<u8>)) -> ExecResult {
        ExecResult {
            code,
            stdout: self.ctx.redactor.redact(&String::from_utf8_lossy(&out)),
            stderr: self.ctx.redactor.redact(&String::from_utf8_lossy(&err)),
        }
    }

    /// The argv prefix of a `kubectl` on the operator's terminal reaching this cluster.
    fn kubectl_prefix(&self) -> Vec<String> {
        let mut v = vec!["kubectl".to_string()];
        if let Some(p) = &self.k.kubeconfig {
            v.extend(["--kubeconfig".to_string(), p.display().to_string()]);
        }
        if let Some(c) = &self.k.context {
            v.extend(["--context".to_string(), c.clone()]);
        }
        v.extend(["-n".to_string(), self.names.namespace.clone()]);
        v
    }
}

/// The guard that ends `call`'s process group in the pod `names` names (another exec over the
/// held client of `k`).
fn pod_kill(k: Kubernetes, names: Names, call: &RunnerCall) -> RunnerKill {
    let words = call.kill_words();
    RunnerKill::new(async move {
        let Ok(c) = client(&k).await else { return };
        let pods: Api<Pod> = Api::namespaced(c, &names.namespace);
        // The API refuses an exec with no stream at all (kube validates it before sending):
        // stdout is attached, the kill prints nothing.
        let ap = AttachParams::default()
            .container(CONTAINER)
            .stdin(false)
            .stdout(true)
            .stderr(false);
        let run = async {
            match pods.exec(&names.pod, words, &ap).await {
                Ok(mut p) => {
                    if let Some(s) = p.take_status() {
                        s.await;
                    }
                    let _ = p.join().await;
                }
                Err(e) => tracing::warn!(
                    error = %e,
                    "could not end an abandoned runner command in the pod"
                ),
            }
        };
        if tokio::time::timeout(super::common::RUNNER_KILL_DEADLINE, run)
            .await
            .is_err()
        {
            tracing::warn!("could not end an abandoned runner command in the pod");
        }
    })
}

/// Longest piece of a line held before it is forwarded: a runner printing without line breaks
/// cannot make the daemon hold more.
const MAX_LINE_BYTES: usize = 64 * 1024;

/// Forward `reader` line by line, redacted, to `out` as `kind`; `false` when the client went.
async fn forward_lines<R: tokio::io::AsyncBufRead + Unpin>(
    reader: R,
    kind: StreamKind,
    redactor: &crate::redact::Redactor,
    out: &OutTx,
) -> bool {
    let mut reader = reader;
    let mut line = Vec::new();
    loop {
        let (taken, ended) = match reader.fill_buf().await {
            Ok([]) | Err(_) => (0, true),
            Ok(buf) => {
                let room = MAX_LINE_BYTES.saturating_sub(line.len()).max(1);
                let take = match buf.iter().position(|b| *b == b'\n') {
                    Some(i) => (i + 1).min(room),
                    None => buf.len().min(room),
                };
                line.extend_from_slice(&buf[..take]);
                (take, false)
            }
        };
        reader.consume(taken);
        let complete = line.ends_with(b"\n") || line.len() >= MAX_LINE_BYTES;
        if !line.is_empty() && (complete || ended) {
            let text = redactor.redact(&String::from_utf8_lossy(&line));
            line.clear();
            if out.send((kind, text)).await.is_err() {
                return false;
            }
        }
        if ended {
            return true;
        }
    }
}

/// Open the resident observer's exec stream into the pod: `script` (`bash -lc`) in a process
/// group of its own, stdin and stdout attached. The channel's kill ends that group: closing
/// an exec stream does not reliably end the process in the pod.
async fn open_resident(k: Kubernetes, names: Names, script: Arc<str>) -> Result<Channel, String> {
    let c = client(&k).await.map_err(|e| e.to_string())?;
    let pods: Api<Pod> = Api::namespaced(c, &names.namespace);
    let call = RunnerCall::new();
    let (words, stdin) = resident_words(&script);
    let argv = call.wrap(&RESIDENT_BOUND.map(String::from), &words);
    let ap = AttachParams::default()
        .container(CONTAINER)
        .stdin(true)
        .stdout(true)
        .stderr(false);
    let mut p = pods
        .exec(&names.pod, argv, &ap)
        .await
        .map_err(|e| api_error(&format!("exec in pod {}", names.pod), e).to_string())?;
    // From here on the process may run in the pod: dropping the kill ends it.
    let kill = pod_kill(k, names, &call);
    let (Some(mut writer), Some(reader)) = (p.stdin(), p.stdout()) else {
        return Err("the exec stream has no stdin or stdout".to_string());
    };
    if let Some(bytes) = stdin {
        writer
            .write_all(&bytes)
            .await
            .map_err(|e| format!("sending the observer script to the pod: {e}"))?;
        writer
            .flush()
            .await
            .map_err(|e| format!("sending the observer script to the pod: {e}"))?;
    }
    Ok(Channel {
        writer: Box::new(writer),
        reader: Box::new(reader),
        kill,
        hold: Box::new(p),
    })
}

impl Provider for KubernetesProvider {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    /// The resident observer over an exec stream of the held client. Its runner is the pod's
    /// container on this cluster with this script (which names the launcher), so every
    /// cloud.yaml on the pod shares one observer.
    async fn resident_command(&self, script: &str) -> Result<Option<Launch>, ProviderError> {
        let identity = format!(
            "kubernetes\0{:?}\0{:?}\0{}/{}/{CONTAINER}\0{script}",
            self.k.kubeconfig, self.k.context, self.names.namespace, self.names.pod
        );
        let (k, names, script) = (self.k.clone(), self.names.clone(), Arc::<str>::from(script));
        Ok(Some(Launch::stream(
            &identity,
            Box::new(move || Box::pin(open_resident(k.clone(), names.clone(), script.clone()))),
        )))
    }

    async fn build(&self, out: &OutTx) -> Result<(), ProviderError> {
        note(
            out,
            &format!(
                "provider kubernetes runs kubernetes.image ({}) as it is: nothing to build here; build and push it with your own tooling",
                self.k.image
            ),
        )
        .await;
        Ok(())
    }

    async fn deploy(&self, out: &OutTx) -> Result<DeployReport, ProviderError> {
        let spec = &self.ctx.spec;
        check_secrets(spec, &self.ctx.secrets)?;
        let n = &self.names;
        let mut steps: Vec<DeployStep> = Vec::new();
        let fail = |e: ProviderError, steps: &[DeployStep]| deploy_failed(e, "kubernetes", steps);

        let values: BTreeMap<String, String> = spec
            .secrets
            .iter()
            .filter_map(|name| {
                self.ctx
                    .secrets
                    .get(name)
                    .map(|v| (name.clone(), v.clone()))
            })
            .collect();
        self.apply::<Secret>(&n.secret, manifest::secret(n, &values))
            .await
            .map_err(|e| fail(e, &steps))?;
        steps.push(plain_step(
            "secret",
            "ok",
            &format!(
                "applied Secret {} ({} value(s), read by the pod through envFrom)",
                n.secret,
                values.len()
            ),
        ));

        let files = self.entrypoint_files().map_err(|e| fail(e, &steps))?;
        self.apply::<ConfigMap>(&n.config_map, manifest::config_map(n, &files))
            .await
            .map_err(|e| fail(e, &steps))?;
        steps.push(plain_step(
            "entrypoint",
            "ok",
            &format!(
                "applied ConfigMap {} (entrypoint.sh, health_server.py)",
                n.config_map
            ),
        ));

        let claims: Api<PersistentVolumeClaim> = self.api().await?;
        let existing = claims
            .get_opt(&n.pvc)
            .await
            .map_err(|e| fail(api_error(&format!("reading claim {}", n.pvc), e), &steps))?;
        let claim_detail = match existing {
            Some(_) => format!("claim {} kept (the workspace of earlier deploys)", n.pvc),
            None => {
                let claim: PersistentVolumeClaim =
                    serde_json::from_value(manifest::pvc(n, &self.k)).map_err(|e| {
                        fail(failed(format!("building claim {}: {e}", n.pvc)), &steps)
                    })?;
                claims
                    .create(&Default::default(), &claim)
                    .await
                    .map_err(|e| {
                        fail(api_error(&format!("creating claim {}", n.pvc), e), &steps)
                    })?;
                format!(
                    "created claim {} ({}, ReadWriteOnce)",
                    n.pvc, self.k.storage
                )
            }
        };
        steps.push(plain_step("workspace", "ok", &claim_detail));

        let replaced = self
            .delete_and_wait::<Pod>(&n.pod, out)
            .await
            .map_err(|e| fail(e, &steps))?;
        let pod_json = manifest::pod(spec, &self.k, n, &files);
        let pod: Pod = serde_json::from_value(pod_json)
            .map_err(|e| fail(failed(format!("building pod {}: {e}", n.pod)), &steps))?;
        let pods: Api<Pod> = self.api().await?;
        pods.create(&Default::default(), &pod)
            .await
            .map_err(|e| fail(api_error(&format!("creating pod {}", n.pod), e), &steps))?;
        note(
            out,
            &format!("pod {}: created; waiting for it to be ready", n.pod),
        )
        .await;
        if let Err(e) = self.wait_ready(out).await {
            steps.push(plain_step("ready", "failed", &e.to_string()));
            return Err(fail(e, &steps));
        }
        steps.push(plain_step(
            "pod",
            "ok",
            &format!(
                "{} pod {} in namespace {}; ready (its readiness probe reached the health server on :{})",
                if replaced { "replaced" } else { "created" },
                n.pod,
                n.namespace,
                spec.resources.port
            ),
        ));
        Ok(DeployReport {
            success: true,
            provider: "kubernetes".to_string(),
            verdict: format!("deploy: pod {}/{} is ready", n.namespace, n.pod),
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
        let r = self.exec_raw(script, stdin).await?;
        Ok(self.exec_result(r))
    }

    async fn exec_streaming(&self, script: &str, out: &OutTx) -> Result<i32, ProviderError> {
        let (argv, call) = runner_command(self.ctx.deadline, script);
        let pods: Api<Pod> = self.api().await?;
        let kill = self.runner_kill(&call);
        let ap = AttachParams::default()
            .container(CONTAINER)
            .stdin(false)
            .stdout(true)
            .stderr(true);
        let redactor = &self.ctx.redactor;
        let run = async {
            let mut p = pods
                .exec(&self.names.pod, argv, &ap)
                .await
                .map_err(|e| api_error(&format!("exec in pod {}", self.names.pod), e))?;
            let stdout = p.stdout().map(tokio::io::BufReader::new);
            let stderr = p.stderr().map(tokio::io::BufReader::new);
            let status = p.take_status();
            let (a, b) = tokio::join!(
                async {
                    match stdout {
                        Some(r) => forward_lines(r, StreamKind::Stdout, redactor, out).await,
                        None => true,
                    }
                },
                async {
                    match stderr {
                        Some(r) => forward_lines(r, StreamKind::Stderr, redactor, out).await,
                        None => true,
                    }
                }
            );
            if !(a && b) {
                p.abort();
                return Err(ProviderError::ClientGone { command: None });
            }
            let status = match status {
                Some(s) => s.await,
                None => None,
            };
            let code = exit_code(status.as_ref())?;
            let _ = p.join().await;
            Ok(code)
        };
        self.bounded(kill, run).await
    }

    async fn upload(&self, remote_path: &str, content: &[u8]) -> Result<(), ProviderError> {
        let script = super::common::upload_script(remote_path)?;
        let stdin = super::common::base64_lines(content).into_bytes();
        let r = self.exec(&script, Some(stdin)).await?;
        if r.code != 0 {
            return Err(super::common::remote_failure(
                &format!("upload to {remote_path} in the runner"),
                &r,
            ));
        }
        Ok(())
    }

    async fn read(&self, remote_path: &str) -> Result<Vec<u8>, ProviderError> {
        let script = format!("cat -- {}", crate::shell::quote(remote_path));
        let (code, out, err) = self.exec_raw(&script, None).await?;
        if code != 0 {
            return Err(super::common::remote_failure(
                &format!("reading {remote_path} in the runner"),
                &self.exec_result((code, Vec::new(), err)),
            ));
        }
        Ok(out)
    }

    fn attach_argv(&self, session: Option<&str>) -> Result<Vec<String>, ProviderError> {
        if session.is_some() {
            return Err(session_not_supported("kubernetes"));
        }
        let mut v = self.kubectl_prefix();
        v.extend(
            [
                "exec",
                "-it",
                &self.names.pod,
                "-c",
                CONTAINER,
                "--",
                "tmux",
                "attach",
                "-t",
                "agent",
            ]
            .map(String::from),
        );
        Ok(v)
    }

    async fn logs(
        &self,
        follow: bool,
        window: &LogWindow,
        out: &OutTx,
    ) -> Result<i32, ProviderError> {
        let since = match window.since()? {
            Some(s) => Some(
                manifest::since_seconds(s, chrono::Utc::now())
                    .ok_or_else(|| super::common::since_invalid(s))?,
            ),
            None => None,
        };
        let tail = window.tail_for(follow).and_then(|t| t.parse::<i64>().ok());
        let lp = LogParams {
            container: Some(CONTAINER.to_string()),
            follow,
            tail_lines: tail,
            since_seconds: since,
            ..LogParams::default()
        };
        let pods: Api<Pod> = self.api().await?;
        let run = async {
            let stream = pods
                .log_stream(&self.names.pod, &lp)
                .await
                .map_err(|e| api_error(&format!("logs of pod {}", self.names.pod), e))?;
            // Lines are bounded and redacted as for exec (a log line can be any length).
            use tokio_util::compat::FuturesAsyncReadCompatExt;
            let reader = tokio::io::BufReader::new(Box::pin(stream).compat());
            forward_lines(reader, StreamKind::Stdout, &self.ctx.redactor, out).await;
            Ok::<i32, ProviderError>(0)
        };
        if follow {
            run.await
        } else {
            tokio::time::timeout(self.ctx.deadline, run)
                .await
                .unwrap_or_else(|_| {
                    Err(ProviderError::NotInTime {
                        message: format!(
                            "the logs of pod {} did not arrive within {}s",
                            self.names.pod,
                            self.ctx.deadline.as_secs()
                        ),
                        reason: None,
                    })
                })
        }
    }

    async fn down(&self, out: &OutTx) -> Result<(), ProviderError> {
        let n = &self.names;
        let pod = self.delete_and_wait::<Pod>(&n.pod, out).await?;
        self.delete_and_wait::<Secret>(&n.secret, out).await?;
        note(
            out,
            &format!(
                "{}; claim {} kept (destroy removes it)",
                if pod {
                    format!("pod {} deleted", n.pod)
                } else {
                    format!("pod {} was not running", n.pod)
                },
                n.pvc
            ),
        )
        .await;
        Ok(())
    }

    async fn destroy(&self, out: &OutTx) -> Result<(), ProviderError> {
        let n = &self.names;
        self.delete_and_wait::<Pod>(&n.pod, out).await?;
        self.delete_and_wait::<Secret>(&n.secret, out).await?;
        self.delete_and_wait::<ConfigMap>(&n.config_map, out)
            .await?;
        self.delete_and_wait::<PersistentVolumeClaim>(&n.pvc, out)
            .await?;
        // Anything else labelled for this cloud.yaml (a renamed kubernetes.name leaves some).
        let lp = ListParams::default().labels(&manifest::label_selector(n));
        let pods: Api<Pod> = self.api().await?;
        for p in pods
            .list(&lp)
            .await
            .map_err(|e| api_error("listing labelled pods", e))?
        {
            if let Some(name) = p.metadata.name {
                self.delete_and_wait::<Pod>(&name, out).await?;
            }
        }
        let claims: Api<PersistentVolumeClaim> = self.api().await?;
        for c in claims
            .list(&lp)
            .await
            .map_err(|e| api_error("listing labelled claims", e))?
        {
            if let Some(name) = c.metadata.name {
                self.delete_and_wait::<PersistentVolumeClaim>(&name, out)
                    .await?;
            }
        }
        note(
            out,
            &format!("pod, claim, Secret and ConfigMap of {} deleted", n.pod),
        )
        .await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use megaplan_cloud_api::ErrorCode;

    #[test]
    fn framed_stdin_reads_exactly_its_length_then_sees_eof() {
        // The stream stays open after the bytes (as over the v4 exec protocol); the framed
        // script must still finish, with exactly the bytes sent.
        let script = framed_script("wc -c; cat >/dev/null; echo done", 5);
        let mut child = std::process::Command::new("bash")
            .arg("-c")
            .arg(&script)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        use std::io::Write;
        stdin.write_all(b"hello").unwrap();
        // stdin is kept open: head -c 5 ends the input anyway.
        let out = child.wait_with_output().unwrap();
        drop(stdin);
        assert_eq!(String::from_utf8_lossy(&out.stdout), "5\ndone\n");
    }

    /// The observer script is far beyond the exec URI's share, so it travels on stdin; `head
    /// -c` takes exactly it and the observer reads its requests from the rest of the same
    /// stdin (run here by the same wrapper and `bash` the pod runs it with).
    #[test]
    fn the_resident_script_goes_on_stdin_and_leaves_the_rest_of_it_to_the_observer() {
        let observer = crate::runner::observe::resident_script("python3 -m x");
        assert!(observer.len() > INLINE_SCRIPT_MAX, "{}", observer.len());
        let (small, none) = resident_words("echo hi");
        assert_eq!((small.as_str(), none), ("echo hi", None));

        let script = format!(
            "# {}\necho ready; IFS= read -r l; echo \"got:$l\"",
            "x".repeat(INLINE_SCRIPT_MAX)
        );
        let (words, stdin) = resident_words(&script);
        assert!(words.len() < 100, "{words}");
        let call = RunnerCall::new();
        let argv = call.wrap(&RESIDENT_BOUND.map(String::from), &words);
        let mut child = std::process::Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        use std::io::{BufRead, Write};
        input.write_all(&stdin.unwrap()).unwrap();
        input.flush().unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line, "ready\n");
        // Only after `ready`, as the daemon sends requests.
        input.write_all(b"request\n").unwrap();
        line.clear();
        out.read_line(&mut line).unwrap();
        assert_eq!(line, "got:request\n");
        assert!(child.wait().unwrap().success());
    }

    #[tokio::test]
    async fn forwarded_lines_are_redacted_and_bounded() {
        let mut values = BTreeMap::new();
        values.insert("TOK".to_string(), "verysecretvalue".to_string());
        let r = crate::redact::Redactor::new(&["TOK".to_string()], &values);
        let long = "x".repeat(MAX_LINE_BYTES * 2 + 10);
        let input = format!("a verysecretvalue\nb\n{long}\nlast");
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let reader = tokio::io::BufReader::new(input.as_bytes());
        assert!(forward_lines(reader, StreamKind::Stdout, &r, &tx).await);
        drop(tx);
        let mut got = Vec::new();
        while let Some((_, text)) = rx.recv().await {
            got.push(text);
        }
        assert_eq!(got[0], "a ***REDACTED***\n");
        assert_eq!(got[1], "b\n");
        assert!(
            got[2..].iter().all(|t| t.len() <= MAX_LINE_BYTES),
            "{:?}",
            got.len()
        );
        assert_eq!(
            got.concat().len(),
            input.len() - "verysecretvalue".len() + "***REDACTED***".len()
        );
        assert_eq!(got.last().map(String::as_str), Some("last"));
    }

    #[tokio::test]
    async fn an_unreadable_kubeconfig_is_provider_unavailable_naming_the_field() {
        let s = crate::provider::test_support::spec(
            "provider: kubernetes\nrepo: {url: u}\nkubernetes: {image: i, kubeconfig: /nonexistent/megaplan/kubeconfig}\n",
        );
        let k = s.kubernetes.clone().unwrap();
        let Err(e) = client(&k).await else {
            panic!("a missing kubeconfig must not give a client")
        };
        let e = megaplan_cloud_api::ErrorBody::from(e);
        assert_eq!(e.error, ErrorCode::ProviderUnavailable);
        assert_eq!(e.extra["field"], "kubernetes.kubeconfig");
        assert!(
            e.message.contains("/nonexistent/megaplan/kubeconfig"),
            "{e}"
        );
    }

    #[test]
    fn exit_codes_come_from_the_status() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{StatusCause, StatusDetails};
        let ok = ExecStatus {
            status: Some("Success".into()),
            ..Default::default()
        };
        assert_eq!(exit_code(Some(&ok)).unwrap(), 0);
        let seventeen = ExecStatus {
            status: Some("Failure".into()),
            reason: Some("NonZeroExitCode".into()),
            details: Some(StatusDetails {
                causes: Some(vec![StatusCause {
                    reason: Some("ExitCode".into()),
                    message: Some("17".into()),
                    field: None,
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(exit_code(Some(&seventeen)).unwrap(), 17);
        assert!(exit_code(None).is_err());
    }

    #[test]
    fn attach_runs_kubectl_exec_into_the_agent_session() {
        let s = crate::provider::test_support::spec(
            "provider: kubernetes\nrepo: {url: u}\nkubernetes: {image: i, namespace: ns, context: dev, name: r1}\n",
        );
        let ctx = ProviderCtx {
            redactor: crate::redact::Redactor::none(),
            spec: Arc::new(s),
            deploy_dir: PathBuf::from("/d"),
            secrets: BTreeMap::new(),
            deadline: Duration::from_secs(5),
        };
        let p = KubernetesProvider::new(ctx).unwrap();
        assert_eq!(
            crate::shell::join(&p.attach_argv(None).unwrap()),
            "kubectl --context dev -n ns exec -it r1 -c agent -- tmux attach -t agent"
        );
        assert_eq!(
            p.attach_argv(Some("x")).unwrap_err().code(),
            ErrorCode::InvalidArgs
        );
    }
}
