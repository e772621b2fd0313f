//! The resident observer: one long-lived `resident.py` per runner, started over the session the
//! daemon already holds (the provider's [`crate::provider::Provider::resident_command`]: `docker
//! exec -i` through the ssh ControlMaster, `docker compose exec -T` locally). It imports the
//! megaplan core once and answers observation requests as JSON lines, so a steady-state tick
//! starts no core at all.
//!
//! Restarted when it died, when a request passed its deadline (the process is killed here, and
//! ends itself on the runner), and when it says its core's installed files changed (`stale`:
//! a fresh observer imports the new code and answers the same request). When it cannot run at
//! all the caller falls back to the one-shot observation (one interpreter, the core imported
//! once).

use crate::process::Cmd;
use serde_json::{Value, json};
use std::collections::HashMap;
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
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    argv: Vec<String>,
    next_id: u64,
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
    async fn start(cmd: &Cmd, deadline: Duration) -> Result<Resident, AskError> {
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
            stdin,
            lines,
            argv: cmd.argv(),
            next_id: 1,
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

/// The resident observers, one slot per runner key. A slot's lock serialises the requests of
/// one runner; the process is taken out of its slot while it answers, so a request cancelled
/// half-way (its tick hit the deadline) drops, and so kills, the observer it was using.
#[derive(Default)]
pub struct Residents {
    slots: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Resident>>>>>,
}

impl Residents {
    fn slot(&self, key: &str) -> Arc<tokio::sync::Mutex<Option<Resident>>> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.entry(key.to_string()).or_default().clone()
    }

    /// How many runners have a resident observer right now.
    pub fn running(&self) -> usize {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots
            .values()
            .filter(|s| s.try_lock().map_or(true, |g| g.is_some()))
            .count()
    }

    /// End every observer (daemon shutdown).
    pub async fn close_all(&self) {
        let slots: Vec<_> = {
            let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            slots.values().cloned().collect()
        };
        for s in slots {
            s.lock().await.take();
        }
    }

    /// Ask the resident observer of `key` (started with `start` when there is none, or when
    /// `start` changed) for one observation of `request` (the `observe.py` input).
    pub async fn observe(
        &self,
        key: &str,
        start: &Cmd,
        request: &Value,
        deadline: Duration,
    ) -> Result<Answer, ResidentError> {
        let slot = self.slot(key);
        let mut guard = slot.lock().await;
        let begun = Instant::now();
        let left = || deadline.saturating_sub(begun.elapsed());
        let mut starts = 0u32;
        // At most: an observer that died since the last tick, and one whose core went stale.
        for _ in 0..3 {
            let mut resident = match guard.take() {
                Some(r) if r.argv == start.argv() => r,
                _ => {
                    starts += 1;
                    match Resident::start(start, left()).await {
                        Ok(r) => r,
                        Err(AskError::Timeout) => return Err(ResidentError::Deadline(deadline)),
                        Err(AskError::Gone(why)) => return Err(ResidentError::Unavailable(why)),
                    }
                }
            };
            let fresh = starts > 0 && resident.next_id == 1;
            match resident.ask(request, left()).await {
                Ok(Reply::Observation(observation)) => {
                    *guard = Some(resident);
                    return Ok(Answer {
                        observation,
                        observer_starts: starts,
                    });
                }
                Ok(Reply::Stale(why)) => {
                    tracing::info!(key, "restarting the resident observer: {why}");
                }
                Err(AskError::Timeout) => return Err(ResidentError::Deadline(deadline)),
                Err(AskError::Gone(why)) if fresh => {
                    return Err(ResidentError::Unavailable(why));
                }
                Err(AskError::Gone(why)) => {
                    tracing::info!(key, "the resident observer ended ({why}); starting another");
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
    fn local(launcher: &str, pythonpath: &Path, tmux: &Path) -> Cmd {
        Cmd::new("sh")
            .arg("-c")
            .arg(resident_script(launcher))
            .env("PYTHONPATH", pythonpath.display().to_string())
            .env("MEGAPLAN_STANDIN_IMPORT_SECONDS", "0")
            .env("TMUX_TMPDIR", tmux.display().to_string())
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
        let none = Cmd::new("sh")
            .arg("-c")
            .arg("echo no python here; exit 127");
        let e = r.observe("k2", &none, &req, deadline).await.unwrap_err();
        assert!(matches!(e, ResidentError::Unavailable(_)), "{e:?}");
    }
}
