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
//! Restarted when it died, when a request passed its deadline (the process is killed here, and
//! ends itself on the runner), and when it says its core's installed files changed (`stale`:
//! a fresh observer imports the new code and answers the same request). When it cannot run at
//! all the caller falls back to the one-shot observation (one interpreter, the core imported
//! once).

use super::budget::{SessionBudget, SessionLease};
use crate::process::Cmd;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};
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
                "the resident observer did not answer within {}s; it was ended",
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

struct Resident {
    /// Dropping it kills the local end (ssh / docker client); the runner side then sees the
    /// end of its input, or its own request deadline.
    _child: Child,
    /// The ssh session it holds (given back when it ends).
    _lease: Option<SessionLease>,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    next_id: u64,
    last_used: Instant,
}

enum Reply {
    Observation(Value),
    Stale(String),
}

enum AskError {
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
        Ok(Resident {
            _child: child,
            _lease: lease,
            stdin,
            lines,
            next_id: 1,
            last_used: Instant::now(),
        })
    }

    async fn ask(&mut self, request: &Value, deadline: Duration) -> Result<Reply, AskError> {
        let id = self.next_id;
        self.next_id += 1;
        let line = json!({
            "id": id,
            "op": "observe",
            "request": request,
            "deadline_secs": deadline.as_secs_f64(),
        });
        let work = async {
            let mut bytes = line.to_string().into_bytes();
            bytes.push(b'\n');
            self.stdin
                .write_all(&bytes)
                .await
                .map_err(|e| AskError::Gone(format!("writing the request failed: {e}")))?;
            self.stdin
                .flush()
                .await
                .map_err(|e| AskError::Gone(format!("writing the request failed: {e}")))?;
            let obj = read_until(&mut self.lines, |o| o.get("id") == Some(&json!(id))).await?;
            if let Some(why) = obj.get("stale") {
                return Ok(Reply::Stale(
                    why.as_str().map_or_else(|| why.to_string(), str::to_string),
                ));
            }
            match obj.get("observation") {
                Some(v @ Value::Object(_)) => Ok(Reply::Observation(v.clone())),
                _ => Err(AskError::Gone("it answered without an observation".into())),
            }
        };
        tokio::time::timeout(deadline, work)
            .await
            .unwrap_or(Err(AskError::Timeout))
    }
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
    observer: tokio::sync::Mutex<Option<Resident>>,
    users: std::sync::Mutex<HashSet<String>>,
}

/// The resident observers, one slot per runner ([`Launch::runner`]), whichever cloud.yaml
/// asks. A slot's lock serialises the requests of one runner; the process is taken out of its
/// slot while it answers, so a request cancelled half-way (its tick hit the deadline) drops,
/// and so kills, the observer it was using. An observer ends when no registration uses its
/// runner any more ([`Residents::forget_user`] + [`Residents::drop_runner`]), when it has been
/// idle for [`IDLE_AFTER`] ([`Residents::reap_idle`]), and with the daemon.
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
            .filter(|s| s.observer.try_lock().map_or(true, |g| g.is_some()))
            .count()
    }

    /// End every observer (daemon shutdown).
    pub async fn close_all(&self) {
        let slots: Vec<_> = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            slots.drain().map(|(_, s)| s).collect()
        };
        for s in slots {
            s.observer.lock().await.take();
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

    /// End the observer of `runner` (after the request it may be answering) and forget it.
    pub async fn drop_runner(&self, runner: &str) {
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            slots.remove(runner)
        };
        if let Some(slot) = slot
            && slot.observer.lock().await.take().is_some()
        {
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
                .is_some_and(|r| r.last_used.elapsed() >= idle)
            {
                guard.take();
                ended += 1;
                tracing::info!(runner = %runner, "resident observer ended: idle");
            }
            guard.is_some()
        });
        ended
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
        let mut guard = slot.observer.lock().await;
        let begun = Instant::now();
        let left = || deadline.saturating_sub(begun.elapsed());
        let mut starts = 0u32;
        // At most: an observer that died since the last tick, and one whose core went stale.
        for _ in 0..3 {
            let mut resident = match guard.take() {
                Some(r) => r,
                None => {
                    let lease = match &launch.budget {
                        None => None,
                        Some(b) => match b.observer(left()).await {
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
                    starts += 1;
                    match Resident::start(&launch.cmd, lease, left()).await {
                        Ok(r) => r,
                        Err(AskError::Timeout) => return Err(ResidentError::Deadline(deadline)),
                        Err(AskError::Gone(why)) => return Err(ResidentError::Unavailable(why)),
                    }
                }
            };
            let fresh = starts > 0 && resident.next_id == 1;
            match resident.ask(request, left()).await {
                Ok(Reply::Observation(observation)) => {
                    resident.last_used = Instant::now();
                    *guard = Some(resident);
                    return Ok(Answer {
                        observation,
                        observer_starts: starts,
                    });
                }
                Ok(Reply::Stale(why)) => {
                    tracing::info!(runner, "restarting the resident observer: {why}");
                }
                Err(AskError::Timeout) => return Err(ResidentError::Deadline(deadline)),
                Err(AskError::Gone(why)) if fresh => {
                    return Err(ResidentError::Unavailable(why));
                }
                Err(AskError::Gone(why)) => {
                    tracing::info!(
                        runner,
                        "the resident observer ended ({why}); starting another"
                    );
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

        // A status that never returns: the request deadline ends the observer.
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
        assert_eq!(r.running(), 0);
        std::fs::remove_file(ws.join(".megaplan/standin-control.json")).unwrap();
        let back = r.observe("k", &cmd, &req, deadline).await.unwrap();
        assert_eq!(back.observer_starts, 1);

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
}
