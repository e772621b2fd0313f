//! The resident observer: one long-lived `resident.py` per runner, started over the session the
//! daemon already holds (the provider's [`crate::provider::Provider::resident_command`]: `docker
//! exec -i` through the ssh ControlMaster, `docker compose exec -T` locally). It imports the
//! megaplan core once and answers observation requests as JSON lines, so a steady-state tick
//! starts no core at all.
//!
//! One observer per runner (host and container), shared by every cloud.yaml observing it; over
//! ssh it holds one session of the connection's budget (`provider/budget.rs`). Ended when no
//! registration uses the runner any more, after [`IDLE_AFTER`] unused, and with the daemon.
//!
//! Requests run concurrently on it (each in a child of the observer on the runner), so one that
//! hangs never holds back another registration's: at its deadline the runner side kills it and
//! answers "deadline". Restarted when it died, when it gave no answer at all by a request's
//! deadline (stuck: the process is killed here, and ends itself on the runner with every
//! request it runs), and when it says its core's installed files changed (`stale`: a fresh
//! observer imports the new code and answers the same request). When it cannot run at
//! all the caller falls back to the one-shot observation (one interpreter, the core imported
//! once).

use super::budget::{SessionBudget, SessionLease};
use crate::process::Cmd;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::sync::oneshot;
use tokio::time::Instant;

/// Longest line read from an observer (an observation holds files of up to 4 MiB, escaped).
const MAX_LINE_BYTES: usize = 32 * 1024 * 1024;

/// Why the resident observer gave no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResidentError {
    /// It cannot run here (start failed, or it ended before it answered): use the one-shot
    /// observation instead.
    Unavailable(String),
    /// The request passed its deadline; the observer was ended.
    Deadline(Duration),
}

impl std::fmt::Display for ResidentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResidentError::Unavailable(why) => write!(f, "the resident observer cannot run: {why}"),
            ResidentError::Deadline(d) => write!(
                f,
                "the runner observation did not finish within {}s; it was stopped on the runner",
                d.as_secs()
            ),
        }
    }
}

/// One answer: the observation object and how many observers had to be started for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub observation: Value,
    pub observer_starts: u32,
}

/// One running observer. Requests are multiplexed over it: each carries an id, a reader task
/// hands every answer to the request waiting for that id, and the runner side answers them
/// concurrently, so one hung request never holds back another registration's.
struct Resident {
    /// Killing it ends the local end (ssh / docker client); the runner side then sees the end
    /// of its input and ends with every request it runs.
    child: std::sync::Mutex<Child>,
    /// The ssh session it holds (given back when it ends).
    _lease: Option<SessionLease>,
    /// `None` once closed (the runner side then ends itself and every request it runs).
    stdin: tokio::sync::Mutex<Option<ChildStdin>>,
    pending: Arc<Pending>,
    next_id: AtomicU64,
    /// When it last started or finished a request.
    last_used: std::sync::Mutex<Instant>,
    reader: tokio::task::JoinHandle<()>,
}

/// The requests waiting for an answer, by id; `None` once the observer is gone (with why).
type Pending = std::sync::Mutex<Result<HashMap<u64, oneshot::Sender<Reply>>, String>>;

enum Reply {
    Observation(Value),
    Stale(String),
    /// The runner side killed the request at its deadline; the observer goes on serving.
    Deadline,
}

enum AskError {
    /// No answer at all by the daemon's deadline, not even the runner side's own deadline
    /// answer: the observer itself is stuck.
    Timeout,
    Gone(String),
}

/// Read lines until one is a JSON object satisfying `want` (login-shell noise is skipped).
async fn read_until(
    lines: &mut Lines<BufReader<ChildStdout>>,
    want: impl Fn(&serde_json::Map<String, Value>) -> bool,
) -> Result<serde_json::Map<String, Value>, AskError> {
    loop {
        match lines.next_line().await {
            Ok(Some(line)) => {
                if line.len() > MAX_LINE_BYTES {
                    return Err(AskError::Gone("it printed an oversized line".into()));
                }
                if let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(line.trim())
                    && want(&obj)
                {
                    return Ok(obj);
                }
            }
            Ok(None) => return Err(AskError::Gone("it exited".into())),
            Err(e) => return Err(AskError::Gone(format!("reading its output failed: {e}"))),
        }
    }
}

/// The reader task: every answer to its request, until the observer's output ends; then every
/// request still waiting learns why.
async fn dispatch(mut lines: Lines<BufReader<ChildStdout>>, pending: Arc<Pending>) {
    let why = loop {
        let obj = match read_until(&mut lines, |o| o.get("id").is_some_and(Value::is_u64)).await {
            Ok(obj) => obj,
            Err(AskError::Gone(why)) => break why,
            Err(AskError::Timeout) => break "it stopped answering".to_string(),
        };
        let Some(id) = obj.get("id").and_then(Value::as_u64) else {
            continue;
        };
        let reply = if let Some(why) = obj.get("stale") {
            Reply::Stale(why.as_str().map_or_else(|| why.to_string(), str::to_string))
        } else if obj.contains_key("deadline") {
            Reply::Deadline
        } else {
            match obj.get("observation") {
                Some(v @ Value::Object(_)) => Reply::Observation(v.clone()),
                _ => continue,
            }
        };
        let waiter = match &mut *pending.lock().unwrap_or_else(|p| p.into_inner()) {
            Ok(map) => map.remove(&id),
            Err(_) => None,
        };
        // A request that gave up (its tick ended) no longer listens: its answer is dropped.
        if let Some(w) = waiter {
            let _ = w.send(reply);
        }
    };
    // Dropping the senders tells every waiting request the observer is gone.
    *pending.lock().unwrap_or_else(|p| p.into_inner()) = Err(why);
}

impl Resident {
    async fn start(
        cmd: &Cmd,
        lease: Option<SessionLease>,
        deadline: Duration,
    ) -> Result<Resident, AskError> {
        let mut child = cmd
            .spawn_piped()
            .map_err(|e| AskError::Gone(format!("cannot start {}: {e:?}", cmd.program)))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(AskError::Gone("its pipes are unavailable".into()));
        };
        let mut lines = BufReader::new(stdout).lines();
        let ready = read_until(&mut lines, |o| o.get("ready") == Some(&Value::Bool(true)));
        match tokio::time::timeout(deadline, ready).await {
            Err(_) => return Err(AskError::Timeout),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(_)) => {}
        }
        let pending: Arc<Pending> = Arc::new(std::sync::Mutex::new(Ok(HashMap::new())));
        let reader = tokio::spawn(dispatch(lines, pending.clone()));
        Ok(Resident {
            child: std::sync::Mutex::new(child),
            _lease: lease,
            stdin: tokio::sync::Mutex::new(Some(stdin)),
            pending,
            next_id: AtomicU64::new(1),
            last_used: std::sync::Mutex::new(Instant::now()),
            reader,
        })
    }

    fn touch(&self) {
        *self.last_used.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    /// Unused (no request waiting) for at least `idle`.
    fn idle_for(&self, idle: Duration) -> bool {
        let waiting = match &*self.pending.lock().unwrap_or_else(|p| p.into_inner()) {
            Ok(map) => map.len(),
            Err(_) => 0,
        };
        waiting == 0
            && self
                .last_used
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .elapsed()
                >= idle
    }

    /// Gone: its output ended (it exited, or its session broke).
    fn is_gone(&self) -> bool {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_err()
    }

    /// End it now, and with it every request it runs (the runner side sees end of input).
    fn end(&self) {
        // End of input first: the runner side then kills every request it runs and exits.
        if let Ok(mut stdin) = self.stdin.try_lock() {
            stdin.take();
        }
        let _ = self
            .child
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .start_kill();
        self.reader.abort();
        // The requests still waiting learn it at once (their senders are dropped here).
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending.is_ok() {
            *pending = Err("it was ended".to_string());
        }
    }

    async fn ask(&self, request: &Value, deadline: Duration) -> Result<Reply, AskError> {
        self.touch();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        match &mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()) {
            Ok(map) => {
                map.insert(id, tx);
            }
            Err(why) => return Err(AskError::Gone(why.clone())),
        }
        // Forget the request however this ends (answered, timed out, or cancelled with its tick).
        let _waiting = Forget {
            pending: &self.pending,
            id,
        };
        let line = json!({
            "id": id,
            "op": "observe",
            "request": request,
            "deadline_secs": runner_deadline(deadline).as_secs_f64(),
        });
        let work = async {
            let mut bytes = line.to_string().into_bytes();
            bytes.push(b'\n');
            {
                let mut stdin = self.stdin.lock().await;
                let Some(stdin) = stdin.as_mut() else {
                    return Err(AskError::Gone("it was ended".into()));
                };
                stdin
                    .write_all(&bytes)
                    .await
                    .map_err(|e| AskError::Gone(format!("writing the request failed: {e}")))?;
                stdin
                    .flush()
                    .await
                    .map_err(|e| AskError::Gone(format!("writing the request failed: {e}")))?;
            }
            rx.await.map_err(|_| {
                AskError::Gone(
                    match &*self.pending.lock().unwrap_or_else(|p| p.into_inner()) {
                        Err(why) => why.clone(),
                        Ok(_) => "it ended".to_string(),
                    },
                )
            })
        };
        let answer = tokio::time::timeout(deadline, work)
            .await
            .unwrap_or(Err(AskError::Timeout));
        self.touch();
        answer
    }
}

impl Drop for Resident {
    fn drop(&mut self) {
        self.end();
    }
}

/// Removes a request from the waiting list when its `ask` ends, answered or not.
struct Forget<'a> {
    pending: &'a Pending,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        if let Ok(map) = &mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()) {
            map.remove(&self.id);
        }
    }
}

/// The deadline the runner side kills a request at: a little before the daemon's own, so a
/// request that hangs is answered "deadline" by a healthy observer, and only an observer that
/// does not answer at all is ended as stuck.
fn runner_deadline(deadline: Duration) -> Duration {
    let margin = (deadline / 5).clamp(Duration::from_millis(200), Duration::from_secs(5));
    deadline
        .saturating_sub(margin)
        .max(Duration::from_millis(100))
}

/// How to start the observer of one runner: the local command, and over ssh the session budget
/// of the held connection (the observer holds one of its sessions for its whole life).
pub struct Launch {
    pub cmd: Cmd,
    pub budget: Option<Arc<SessionBudget>>,
}

impl Launch {
    /// The runner key: the observer's whole command (transport, host, container, the
    /// launcher's interpreter), hashed. Every cloud.yaml observing the same runner shares it.
    pub fn runner(&self) -> String {
        let digest = Sha256::digest(self.cmd.argv().join("\0").as_bytes());
        hex::encode(&digest[..8])
    }
}

/// An observer unused this long is ended (its session goes back to the budget).
pub const IDLE_AFTER: Duration = Duration::from_secs(600);

/// How often the daemon looks for idle observers.
pub const REAP_EVERY: Duration = Duration::from_secs(60);

/// One runner's observer and the cloud.yaml files (marker keys) that used it.
#[derive(Default)]
struct Slot {
    /// Locked only to look at the observer or start one, never while a request runs.
    observer: tokio::sync::Mutex<Option<Arc<Resident>>>,
    users: std::sync::Mutex<HashSet<String>>,
    /// Set when the runner was dropped (or the daemon stops): a request still running then
    /// must not start a new observer for it.
    closed: std::sync::atomic::AtomicBool,
}

impl Slot {
    /// Forget `resident` if it is still this slot's observer (another request may have
    /// replaced it already), and end it.
    async fn retire(&self, resident: &Arc<Resident>) {
        let mut guard = self.observer.lock().await;
        if guard.as_ref().is_some_and(|r| Arc::ptr_eq(r, resident)) {
            guard.take();
        }
        resident.end();
    }
}

/// The resident observers, one slot per runner ([`Launch::runner`]), whichever cloud.yaml
/// asks. Requests of one runner share its observer and run concurrently on it; a request
/// that hangs is killed on the runner at its deadline ("deadline" answer) while the others go
/// on. An observer that gives no answer at all by a request's deadline is stuck and is ended.
/// An observer ends when no registration uses its runner any more ([`Residents::forget_user`]
/// then [`Residents::drop_runner`]), when it has been idle for [`IDLE_AFTER`]
/// ([`Residents::reap_idle`]), and with the daemon.
#[derive(Default)]
pub struct Residents {
    slots: std::sync::Mutex<HashMap<String, Arc<Slot>>>,
}

impl Residents {
    fn slot(&self, runner: &str, user: &str) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let slot = slots.entry(runner.to_string()).or_default().clone();
        slot.users
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(user.to_string());
        slot
    }

    /// How many runners have a resident observer right now.
    pub fn running(&self) -> usize {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots
            .values()
            .filter(|s| {
                s.observer
                    .try_lock()
                    .map_or(true, |g| g.as_ref().is_some_and(|r| !r.is_gone()))
            })
            .count()
    }

    /// End every observer (daemon shutdown).
    pub async fn close_all(&self) {
        let slots: Vec<_> = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            slots.drain().map(|(_, s)| s).collect()
        };
        for s in slots {
            s.closed.store(true, Ordering::Relaxed);
            if let Some(r) = s.observer.lock().await.take() {
                r.end();
            }
        }
    }

    /// Forget that the cloud.yaml `user` observes through any runner (it was unregistered).
    /// Returns each runner it used with the other cloud.yaml files still using it, for the
    /// caller to [`Residents::drop_runner`] those no registration needs any more.
    pub fn forget_user(&self, user: &str) -> Vec<(String, Vec<String>)> {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let mut used = Vec::new();
        for (runner, slot) in slots.iter() {
            let mut users = slot.users.lock().unwrap_or_else(|p| p.into_inner());
            if users.remove(user) {
                used.push((runner.clone(), users.iter().cloned().collect()));
            }
        }
        used
    }

    /// End the observer of `runner` (and any request it still runs) and forget it.
    pub async fn drop_runner(&self, runner: &str) {
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            slots.remove(runner)
        };
        let Some(slot) = slot else {
            return;
        };
        slot.closed.store(true, Ordering::Relaxed);
        if let Some(r) = slot.observer.lock().await.take() {
            r.end();
            tracing::info!(
                runner,
                "resident observer ended: no registration uses its runner"
            );
        }
    }

    /// End the observers unused for `idle` or longer; slots left empty are forgotten. Returns
    /// how many observers ended. An observer answering right now is never idle.
    pub fn reap_idle(&self, idle: Duration) -> usize {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let mut ended = 0;
        slots.retain(|runner, slot| {
            let Ok(mut guard) = slot.observer.try_lock() else {
                return true;
            };
            if guard
                .as_ref()
                .is_some_and(|r| r.is_gone() || r.idle_for(idle))
            {
                if let Some(r) = guard.take() {
                    r.end();
                }
                ended += 1;
                tracing::info!(runner = %runner, "resident observer ended: idle");
            }
            guard.is_some()
        });
        ended
    }

    /// The runner's observer, started when there is none or when it died. `starts` counts
    /// the starts.
    async fn observer(
        slot: &Slot,
        launch: &Launch,
        left: Duration,
        starts: &mut u32,
    ) -> Result<Arc<Resident>, ResidentError> {
        let deadline_hit = || ResidentError::Deadline(left);
        let mut guard = tokio::time::timeout(left, slot.observer.lock())
            .await
            .map_err(|_| deadline_hit())?;
        if let Some(r) = guard.as_ref().filter(|r| !r.is_gone()) {
            return Ok(r.clone());
        }
        guard.take();
        if slot.closed.load(Ordering::Relaxed) {
            return Err(ResidentError::Unavailable(
                "its runner is no longer observed (unregistered, or the daemon is stopping)".into(),
            ));
        }
        let lease = match &launch.budget {
            None => None,
            Some(b) => match b.observer(left).await {
                Ok(Some(lease)) => Some(lease),
                Ok(None) => {
                    return Err(ResidentError::Unavailable(format!(
                        "the {} resident observers this ssh connection allows (ssh.max_sessions {} leaves {} sessions, {} of them kept for commands) already run",
                        b.observer_cap(),
                        b.max_sessions(),
                        b.sessions(),
                        b.sessions() - b.observer_cap()
                    )));
                }
                Err(e) => return Err(ResidentError::Unavailable(e.message)),
            },
        };
        *starts += 1;
        match Resident::start(&launch.cmd, lease, left).await {
            Ok(r) => {
                let r = Arc::new(r);
                *guard = Some(r.clone());
                Ok(r)
            }
            Err(AskError::Timeout) => Err(deadline_hit()),
            Err(AskError::Gone(why)) => Err(ResidentError::Unavailable(why)),
        }
    }

    /// Ask the resident observer of the runner `launch` starts (started when there is none,
    /// or when it died) for one observation of `request` (the `observe.py` input), on behalf
    /// of the cloud.yaml `user` (its marker key).
    pub async fn observe(
        &self,
        user: &str,
        launch: &Launch,
        request: &Value,
        deadline: Duration,
    ) -> Result<Answer, ResidentError> {
        let runner = launch.runner();
        let slot = self.slot(&runner, user);
        let begun = Instant::now();
        let left = || deadline.saturating_sub(begun.elapsed());
        let mut starts = 0u32;
        // At most: an observer that died since the last tick, and one whose core went stale.
        for _ in 0..3 {
            let before = starts;
            let resident = match Self::observer(&slot, launch, left(), &mut starts).await {
                Err(ResidentError::Deadline(_)) => return Err(ResidentError::Deadline(deadline)),
                other => other?,
            };
            let fresh = starts > before;
            match resident.ask(request, left()).await {
                Ok(Reply::Observation(observation)) => {
                    return Ok(Answer {
                        observation,
                        observer_starts: starts,
                    });
                }
                Ok(Reply::Stale(why)) => {
                    tracing::info!(runner, "restarting the resident observer: {why}");
                    slot.retire(&resident).await;
                }
                Ok(Reply::Deadline) => return Err(ResidentError::Deadline(deadline)),
                Err(AskError::Timeout) => {
                    tracing::warn!(
                        runner,
                        "the resident observer gave no answer, not even its own deadline's, within {}s; ending it",
                        deadline.as_secs()
                    );
                    slot.retire(&resident).await;
                    return Err(ResidentError::Deadline(deadline));
                }
                Err(AskError::Gone(why)) if fresh => {
                    slot.retire(&resident).await;
                    return Err(ResidentError::Unavailable(why));
                }
                Err(AskError::Gone(why)) => {
                    tracing::info!(
                        runner,
                        "the resident observer ended ({why}); starting another"
                    );
                    slot.retire(&resident).await;
                }
            }
        }
        Err(ResidentError::Unavailable(
            "it kept ending before it answered".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::observe::{ObserveRequest, resident_script};
    use std::path::Path;

    fn standin() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/bench/standin")
    }

    /// The observer as a local `sh -c` child, the stand-in core on its PYTHONPATH.
    fn local(launcher: &str, pythonpath: &Path, tmux: &Path) -> Launch {
        Launch {
            cmd: Cmd::new("sh")
                .arg("-c")
                .arg(resident_script(launcher))
                .env("PYTHONPATH", pythonpath.display().to_string())
                .env("MEGAPLAN_STANDIN_IMPORT_SECONDS", "0")
                .env("TMUX_TMPDIR", tmux.display().to_string()),
            budget: None,
        }
    }

    fn workspace(root: &Path) -> (std::path::PathBuf, Value) {
        let ws = crate::runner::observe::tests::chain_workspace(root);
        let req = ObserveRequest {
            spec: ws.join("chain.yaml").display().to_string(),
            session: "megaplan-chain".into(),
            workspace: ws.display().to_string(),
            launcher: "python3 -m arnold_pipelines.megaplan".into(),
            log_path: crate::runner::layout::DEFAULT_CHAIN_LOG.into(),
            sync_refresh: false,
            pr_probe: false,
        }
        .to_json(&root.join("markers").display().to_string());
        (ws, req)
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap().flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                if e.file_name() != "__pycache__" {
                    copy_dir(&p, &to.join(e.file_name()));
                }
            } else {
                std::fs::copy(&p, to.join(e.file_name())).unwrap();
            }
        }
    }

    /// One observer answers many requests with one core import; a change to the core's files
    /// makes it step aside and a fresh one import the new code; a request past its deadline
    /// ends it; a command that cannot start is `Unavailable`.
    #[tokio::test]
    async fn one_import_in_steady_state_a_fresh_one_after_the_core_changes() {
        let root = tempfile::tempdir().unwrap();
        let core = root.path().join("site");
        copy_dir(&standin(), &core);
        let tmux = root.path().join("tmux");
        std::fs::create_dir_all(&tmux).unwrap();
        let (ws, req) = workspace(root.path());
        let cmd = local("python3 -m arnold_pipelines.megaplan", &core, &tmux);
        let r = Residents::default();
        let deadline = Duration::from_secs(60);

        let first = r.observe("k", &cmd, &req, deadline).await.unwrap();
        assert_eq!(first.observer_starts, 1);
        assert_eq!(first.observation["core_starts"], 1, "{}", first.observation);
        assert_eq!(
            first.observation["plan_status"]["source"],
            "megaplan status"
        );
        assert_eq!(first.observation["plan_status"]["status"], "finalized");
        for _ in 0..3 {
            let a = r.observe("k", &cmd, &req, deadline).await.unwrap();
            assert_eq!(
                (a.observer_starts, &a.observation["core_starts"]),
                (0, &json!(0))
            );
            assert_eq!(a.observation["plan_status"]["status"], "finalized");
        }
        assert_eq!(r.running(), 1);

        // `pip install --upgrade`: the core's files change; the next answer comes from new code.
        let cli = core.join("arnold_pipelines/megaplan/cli.py");
        let text = std::fs::read_to_string(&cli).unwrap();
        std::fs::write(&cli, format!("{text}\n# upgraded\n")).unwrap();
        let after = r.observe("k", &cmd, &req, deadline).await.unwrap();
        assert_eq!(after.observer_starts, 1);
        assert_eq!(after.observation["core_starts"], 1, "{}", after.observation);
        let again = r.observe("k", &cmd, &req, deadline).await.unwrap();
        assert_eq!(again.observation["core_starts"], 0);

        // A status that never returns: the request is killed on the runner at its deadline;
        // the observer answers "deadline" and goes on serving.
        std::fs::write(
            ws.join(".megaplan/standin-control.json"),
            r#"{"hang_status": true}"#,
        )
        .unwrap();
        let e = r
            .observe("k", &cmd, &req, Duration::from_secs(2))
            .await
            .unwrap_err();
        assert_eq!(e, ResidentError::Deadline(Duration::from_secs(2)));
        assert_eq!(r.running(), 1);
        std::fs::remove_file(ws.join(".megaplan/standin-control.json")).unwrap();
        let back = r.observe("k", &cmd, &req, deadline).await.unwrap();
        assert_eq!(back.observer_starts, 0);
        assert_eq!(back.observation["core_starts"], 0);

        // No python at all: unavailable, for the caller's one-shot fallback.
        let none = Launch {
            cmd: Cmd::new("sh")
                .arg("-c")
                .arg("echo no python here; exit 127"),
            budget: None,
        };
        let e = r.observe("k2", &none, &req, deadline).await.unwrap_err();
        assert!(matches!(e, ResidentError::Unavailable(_)), "{e:?}");
    }

    /// Issue 21 item 3: one observer per runner whichever cloud.yaml asks; it ends when the
    /// last registration using the runner goes, or when idle; over ssh it takes a session of
    /// the connection's budget, and past the observers' share none starts (one-shot instead).
    #[tokio::test]
    async fn one_observer_per_runner_ended_when_unused_and_counted_in_the_budget() {
        let root = tempfile::tempdir().unwrap();
        let core = root.path().join("site");
        copy_dir(&standin(), &core);
        let tmux = root.path().join("tmux");
        std::fs::create_dir_all(&tmux).unwrap();
        let (_ws, req) = workspace(root.path());
        let launch = local("python3 -m arnold_pipelines.megaplan", &core, &tmux);
        let r = Residents::default();
        let deadline = Duration::from_secs(60);

        // Five cloud.yaml files on one runner: one observer, started once.
        let mut starts = 0;
        for user in ["a", "b", "c", "d", "e"] {
            starts += r
                .observe(user, &launch, &req, deadline)
                .await
                .unwrap()
                .observer_starts;
        }
        assert_eq!((starts, r.running()), (1, 1));

        // Unregistering one of them leaves the others' observer; the last one ends it.
        let used = r.forget_user("a");
        assert_eq!(used.len(), 1);
        assert_eq!(used[0].0, launch.runner());
        assert_eq!(used[0].1.len(), 4);
        for (user, others) in [("b", 3), ("c", 2), ("d", 1)] {
            assert_eq!(r.forget_user(user)[0].1.len(), others, "{user}");
        }
        let used = r.forget_user("e");
        assert_eq!(used, vec![(launch.runner(), Vec::new())]);
        r.drop_runner(&used[0].0).await;
        assert_eq!(r.running(), 0);
        assert!(r.forget_user("e").is_empty(), "the runner is forgotten");

        // Idle: a recent observer stays, one unused for the idle period ends.
        r.observe("a", &launch, &req, deadline).await.unwrap();
        assert_eq!(r.reap_idle(IDLE_AFTER), 0);
        assert_eq!(r.running(), 1);
        assert_eq!(r.reap_idle(Duration::ZERO), 1);
        assert_eq!(r.running(), 0);
        assert!(r.forget_user("a").is_empty(), "an empty slot is forgotten");

        // Over ssh: the observer holds one session of the budget for its life.
        let budget = Arc::new(SessionBudget::new("root@h port 22", 10));
        let counted = Launch {
            cmd: launch.cmd.clone(),
            budget: Some(budget.clone()),
        };
        r.observe("a", &counted, &req, deadline).await.unwrap();
        assert_eq!((budget.in_use(), budget.observers_in_use()), (1, 1));
        r.reap_idle(Duration::ZERO);
        assert_eq!(budget.in_use(), 0);
        // A connection whose budget leaves observers no session: none starts.
        let tight = Launch {
            cmd: launch.cmd.clone(),
            budget: Some(Arc::new(SessionBudget::new("root@h port 22", 3))),
        };
        let e = r.observe("a", &tight, &req, deadline).await.unwrap_err();
        assert!(
            matches!(&e, ResidentError::Unavailable(why) if why.contains("ssh.max_sessions 3")),
            "{e:?}"
        );
        assert_eq!(r.running(), 0);
    }

    /// The pids of the stand-in core's hanging `status` calls (it logs each) still alive.
    fn hanging(ws: &Path) -> Vec<u32> {
        let log =
            std::fs::read_to_string(ws.join(".megaplan/standin-hangs.jsonl")).unwrap_or_default();
        log.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|v| v["pid"].as_u64())
            .filter_map(|p| u32::try_from(p).ok())
            .filter(|p| Path::new(&format!("/proc/{p}")).exists())
            .collect()
    }

    /// Poll `done` every 50 ms; the bound is a safety net for a hang, never a guess at speed.
    async fn wait_for(mut done: impl FnMut() -> bool) -> bool {
        for _ in 0..(180 * 20) {
            if done() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        done()
    }

    /// Issue 21 item 1: requests of one runner share its observer but never wait for each
    /// other. Ten registrations whose observation hangs (their core's `status` never returns)
    /// ask at once with a healthy one on the same runner: the healthy one is answered while the
    /// ten still hang, by the same observer; a hung request is stopped on the runner at its
    /// deadline, and the observer goes on; ending the observer ends every request it runs.
    #[tokio::test]
    async fn a_hung_request_never_holds_back_another_on_the_same_runner() {
        let root = tempfile::tempdir().unwrap();
        let core = root.path().join("site");
        copy_dir(&standin(), &core);
        let tmux = root.path().join("tmux");
        std::fs::create_dir_all(&tmux).unwrap();
        let (_ws, req) = workspace(root.path());
        let hung_root = root.path().join("hung");
        let (hung_ws, hung_req) = workspace(&hung_root);
        std::fs::write(
            hung_ws.join(".megaplan/standin-control.json"),
            r#"{"hang_status": true}"#,
        )
        .unwrap();
        let launch = local("python3 -m arnold_pipelines.megaplan", &core, &tmux);
        let r = Arc::new(Residents::default());
        let first = r
            .observe("healthy", &launch, &req, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(first.observer_starts, 1);

        // Ten hung requests in flight on the runner (each logged its pid as it began to hang).
        let mut hung = Vec::new();
        for i in 0..10 {
            let (r, cmd, hung_req) = (r.clone(), launch.cmd.clone(), hung_req.clone());
            hung.push(tokio::spawn(async move {
                let launch = Launch { cmd, budget: None };
                r.observe(
                    &format!("hung-{i}"),
                    &launch,
                    &hung_req,
                    Duration::from_secs(600),
                )
                .await
            }));
        }
        assert!(
            wait_for(|| hanging(&hung_ws).len() == 10).await,
            "the ten requests never hung together: {:?}",
            hanging(&hung_ws)
        );
        for _ in 0..3 {
            let a = r
                .observe("healthy", &launch, &req, Duration::from_secs(60))
                .await
                .unwrap();
            assert_eq!(a.observer_starts, 0, "the same observer answers");
            assert_eq!(a.observation["plan_status"]["status"], "finalized");
        }
        assert_eq!(hanging(&hung_ws).len(), 10);
        assert!(hung.iter().all(|h| !h.is_finished()));

        // One more hung request with a short deadline: stopped on the runner (its process is
        // gone when the answer comes), the observer still the same.
        let e = r
            .observe("hung-x", &launch, &hung_req, Duration::from_secs(3))
            .await
            .unwrap_err();
        assert_eq!(e, ResidentError::Deadline(Duration::from_secs(3)));
        assert_eq!(hanging(&hung_ws).len(), 10, "only the ten remain");
        let a = r
            .observe("healthy", &launch, &req, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(a.observer_starts, 0);

        // Unregistering ends the observer and every request it still runs.
        r.drop_runner(&launch.runner()).await;
        for h in hung {
            let e = h.await.unwrap().unwrap_err();
            assert!(matches!(e, ResidentError::Unavailable(_)), "{e:?}");
        }
        assert!(
            wait_for(|| hanging(&hung_ws).is_empty()).await,
            "hung requests outlived their observer: {:?}",
            hanging(&hung_ws)
        );
    }
}
