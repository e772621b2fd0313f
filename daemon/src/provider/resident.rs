//! The resident observer: one long-lived `resident.py` per runner, started over the session the
//! daemon already holds (the provider's [`crate::provider::Provider::resident_command`]: `docker
//! exec -i` through the ssh ControlMaster, `docker compose exec -T` locally, both local
//! processes with piped stdin and stdout; on Kubernetes an exec stream of the held API client,
//! opened as a [`Channel`]). It imports the megaplan core once and answers observation requests
//! as JSON lines, so a steady-state tick starts no core at all.
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
use super::common::RunnerKill;
use crate::chain::error::ChainError;
use crate::chain::observe::{OBSERVATION_PREFIX, Observation, parse_observation};
use crate::process::Cmd;
use crate::runner::lenient::{or_default, present};
use crate::runner::observe::ObserveInput;
use futures_util::future::BoxFuture;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, Lines};
use tokio::process::Child;
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

/// A change the observer's watch saw on a runner, for the registration `key` (the cloud.yaml
/// key the watch was made for). `lost`: the watch itself ended with its observer (a reason to
/// look at the runner too: the session or the runner may be gone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerEvent {
    pub key: String,
    pub what: String,
    pub lost: bool,
}

/// Where runner events go. Bounded: a full channel drops events, which is harmless because one
/// tick answers any number of them.
pub type EventSender = tokio::sync::mpsc::Sender<RunnerEvent>;

/// How often a watch looks at the runner (on the runner itself; nothing crosses the session
/// while nothing changes).
pub const WATCH_POLL: Duration = Duration::from_millis(500);

/// What a watch looks at on the runner (`start_watch` in resident.py reads it): the chain
/// (spec, session, workspace, and the launcher its driver runs under), how long the driver
/// lease it writes lives, how often it asks whether an awaited pull request was merged, and
/// how long a running chain's log may stay quiet before that is a stall.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WatchRequest {
    pub spec: String,
    pub session: String,
    pub workspace: String,
    pub launcher: String,
    pub lease_ttl_secs: f64,
    pub pr_poll_secs: f64,
    pub log_path: String,
    pub stall_after_secs: f64,
}

/// The watches one observer runs: the route of each watch id to its registration, and each
/// registration's watch (id and request).
#[derive(Default)]
struct Watches {
    by_id: HashMap<u64, (String, EventSender)>,
    by_user: HashMap<String, (u64, WatchRequest)>,
}

/// One answer: the observation, parsed by `chain::observe` as it parses the one-shot script's
/// (a malformed one is that parser's error, naming the field), and how many observers had to
/// be started for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub observation: Result<Observation, ChainError>,
    pub observer_starts: u32,
}

/// One request line to the observer (`serve` in resident.py), tagged by `op`. Each carries
/// the `id` its answer names.
#[derive(Debug, Serialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum Request<'a> {
    /// One observation of `request`; the runner side kills it at `deadline_secs` and answers
    /// `deadline`.
    Observe {
        id: u64,
        request: &'a ObserveInput,
        deadline_secs: f64,
    },
    /// Start a watch of `request`, looking every `poll_secs`; answered `watching`.
    Watch {
        id: u64,
        request: &'a WatchRequest,
        poll_secs: f64,
    },
    /// End the watch whose id is `watch`; answered `unwatched`.
    Unwatch { id: u64, watch: u64 },
}

impl Request<'_> {
    fn id(&self) -> u64 {
        match self {
            Request::Observe { id, .. }
            | Request::Watch { id, .. }
            | Request::Unwatch { id, .. } => *id,
        }
    }
}

/// The observer's first line: `{"ready": true, "pid", "version"}`; until it comes, any other
/// line is login-shell noise.
#[derive(Deserialize)]
struct ReadyLine {
    #[serde(default, deserialize_with = "or_default")]
    ready: bool,
}

/// One line the observer writes after `ready`, as `serve` in resident.py writes them. A line
/// that is not a JSON object with a whole, non-negative `id` answers nothing and is skipped
/// (`{"id": null, ...}` answers a request it could not read). Every other field is read
/// whatever its JSON type, so one odd field never costs the line; which one is there decides
/// what the line is (see [`ReplyLine::into_message`]).
#[derive(Deserialize)]
struct ReplyLine {
    id: u64,
    /// A watch saw a change: `{"what", ...}`; present at all, it is an event.
    #[serde(default, deserialize_with = "any_event")]
    event: Option<EventBody>,
    /// The core's installed files changed: why (text; anything else is shown as its JSON).
    #[serde(default, deserialize_with = "present")]
    stale: Option<Box<RawValue>>,
    /// The request was killed on the runner at its deadline (the value is the deadline).
    #[serde(default, deserialize_with = "present")]
    deadline: Option<IgnoredAny>,
    /// The observation: kept as printed, for `chain::observe` to parse; an answer only when it
    /// is a JSON object.
    #[serde(default)]
    observation: Option<Box<RawValue>>,
    /// The answer to a watch: started or not.
    #[serde(default, deserialize_with = "or_default")]
    watching: Option<bool>,
    /// Why a watch was refused.
    #[serde(default, deserialize_with = "or_default")]
    error: Option<String>,
}

/// A watch's event: what changed (`before`, `after`, `drivers` are not read). Any other
/// shape is still an event, with the default words.
#[derive(Default, Deserialize)]
struct EventBody {
    #[serde(default, deserialize_with = "or_default")]
    what: Option<String>,
}

/// A present `event` of any shape (`null` included): an event, its words read if it has them.
fn any_event<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<EventBody>, D::Error> {
    or_default(d).map(Some)
}

/// What one line from the observer says.
enum Message {
    /// A watch's event, for the watch with this id.
    Event { watch: u64, what: String },
    /// The answer to the request with this id.
    Reply { id: u64, reply: Reply },
}

impl ReplyLine {
    /// In this order: an event, stale, deadline, an observation object (resident.py writes
    /// at most one of them in a line); anything else acknowledges a watch or an unwatch.
    fn into_message(self) -> Message {
        if let Some(event) = self.event {
            let what = event
                .what
                .unwrap_or_else(|| "the chain changed on the runner".to_string());
            return Message::Event {
                watch: self.id,
                what,
            };
        }
        let reply = if let Some(why) = self.stale {
            Reply::Stale(
                serde_json::from_str::<String>(why.get()).unwrap_or_else(|_| why.get().to_string()),
            )
        } else if self.deadline.is_some() {
            Reply::Deadline
        } else {
            match self.observation {
                Some(o) if o.get().starts_with('{') => Reply::Observation(o),
                _ => Reply::Ack {
                    watching: self.watching == Some(true),
                    error: self.error,
                },
            }
        };
        Message::Reply { id: self.id, reply }
    }
}

/// One running observer. Requests are multiplexed over it: each carries an id, a reader task
/// hands every answer to the request waiting for that id, and the runner side answers them
/// concurrently, so one hung request never holds back another registration's.
struct Resident {
    /// What ends its far side: taken (and used) when it is ended.
    ender: std::sync::Mutex<Option<Ender>>,
    /// The ssh session it holds (given back when it ends).
    _lease: Option<SessionLease>,
    /// `None` once closed (the runner side then ends itself and every request it runs).
    stdin: tokio::sync::Mutex<Option<Writer>>,
    pending: Arc<Pending>,
    watches: Arc<std::sync::Mutex<Watches>>,
    next_id: AtomicU64,
    /// When it last started or finished a request.
    last_used: std::sync::Mutex<Instant>,
    reader: tokio::task::JoinHandle<()>,
}

/// The requests waiting for an answer, by id; `None` once the observer is gone (with why).
type Pending = std::sync::Mutex<Result<HashMap<u64, oneshot::Sender<Reply>>, String>>;

enum Reply {
    /// The observation object, as printed.
    Observation(Box<RawValue>),
    /// The core's installed files changed (why); the observer exits.
    Stale(String),
    /// The runner side killed the request at its deadline; the observer goes on serving.
    Deadline,
    /// Any other answer: a watch started (`watching`) or refused (`error` says why), or ended.
    Ack {
        watching: bool,
        error: Option<String>,
    },
}

enum AskError {
    /// No answer at all by the daemon's deadline, not even the runner side's own deadline
    /// answer: the observer itself is stuck.
    Timeout,
    Gone(String),
}

/// Read lines until one is a JSON object that reads as a `T` satisfying `want` (login-shell
/// noise, other JSON and lines of another shape are skipped).
async fn read_until<T: DeserializeOwned>(
    lines: &mut Lines<BufReader<Reader>>,
    want: impl Fn(&T) -> bool,
) -> Result<T, AskError> {
    loop {
        match lines.next_line().await {
            Ok(Some(line)) => {
                if line.len() > MAX_LINE_BYTES {
                    return Err(AskError::Gone("it printed an oversized line".into()));
                }
                if let Some(read) = read_object::<T>(line.trim())
                    && want(&read)
                {
                    return Ok(read);
                }
            }
            Ok(None) => return Err(AskError::Gone("it exited".into())),
            Err(e) => return Err(AskError::Gone(format!("reading its output failed: {e}"))),
        }
    }
}

/// One line as a `T`, when it is a JSON object that reads as one. A derived struct would also
/// read a JSON array (its fields by position): only an object counts.
fn read_object<T: DeserializeOwned>(line: &str) -> Option<T> {
    if !line.starts_with('{') {
        return None;
    }
    serde_json::from_str(line).ok()
}

/// The reader task: every answer to its request, until the observer's output ends; then every
/// request still waiting learns why.
async fn dispatch(
    mut lines: Lines<BufReader<Reader>>,
    pending: Arc<Pending>,
    watches: Arc<std::sync::Mutex<Watches>>,
) {
    let why = loop {
        let line = match read_until(&mut lines, |_: &ReplyLine| true).await {
            Ok(line) => line,
            Err(AskError::Gone(why)) => break why,
            Err(AskError::Timeout) => break "it stopped answering".to_string(),
        };
        let (id, reply) = match line.into_message() {
            Message::Event { watch, what } => {
                let route = watches
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .by_id
                    .get(&watch)
                    .cloned();
                if let Some((key, tx)) = route {
                    let _ = tx.try_send(RunnerEvent {
                        key,
                        what,
                        lost: false,
                    });
                }
                continue;
            }
            Message::Reply { id, reply } => (id, reply),
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
    *pending.lock().unwrap_or_else(|p| p.into_inner()) = Err(why.clone());
    // The watches end with it: each registration hears so (an observer ended on purpose has no
    // watches left by now, see `Resident::end`).
    let lost = std::mem::take(&mut *watches.lock().unwrap_or_else(|p| p.into_inner()));
    for (key, tx) in lost.by_id.into_values() {
        let _ = tx.try_send(RunnerEvent {
            key,
            what: format!("the runner watch ended: the resident observer {why}"),
            lost: true,
        });
    }
}

/// The observer's input, whichever way it was started.
type Writer = Box<dyn AsyncWrite + Send + Unpin>;
/// The observer's output, whichever way it was started.
type Reader = Box<dyn AsyncRead + Send + Unpin>;

/// An observer's far side, ended with it.
enum Ender {
    /// A local process (ssh / docker client): killing it ends the local end; the runner side
    /// then sees the end of its input and ends with every request it runs.
    Child(Child),
    /// An open stream (a Kubernetes exec): closing it may not end the process on the runner,
    /// so its kill is sent too.
    Stream {
        kill: RunnerKill,
        hold: Box<dyn Send>,
    },
}

impl Ender {
    /// End it; a stream's kill is sent from a task of its own (see [`RunnerKill`]'s drop).
    fn end(self) {
        match self {
            Ender::Child(mut child) => {
                let _ = child.start_kill();
            }
            Ender::Stream { kill, hold } => {
                drop(hold);
                drop(kill);
            }
        }
    }

    /// End it and wait for a stream's kill to be sent (the daemon is stopping: no task of
    /// its own would outlive the runtime).
    async fn end_now(self) {
        match self {
            Ender::Stream { kill, hold } => {
                drop(hold);
                kill.kill().await;
            }
            child => child.end(),
        }
    }
}

/// An already-open duplex byte stream to a runner process running the observer script (on
/// Kubernetes, an exec stream into the pod): its input, its output, the kill that ends the
/// process on the runner, and whatever holds the stream open (dropped when the observer ends).
pub struct Channel {
    pub writer: Writer,
    pub reader: Reader,
    pub kill: RunnerKill,
    pub hold: Box<dyn Send>,
}

/// Opens a [`Channel`] for one observer; an error says why it cannot be opened.
pub type OpenChannel = Box<dyn Fn() -> BoxFuture<'static, Result<Channel, String>> + Send + Sync>;

/// How an observer's process is started.
pub enum LaunchHow {
    /// A local command (ssh, `docker compose exec`) with its stdin and stdout piped.
    Process(Cmd),
    /// An open stream (a Kubernetes exec) the launch opens itself.
    Stream(OpenChannel),
}

impl Resident {
    async fn start(
        how: &LaunchHow,
        lease: Option<SessionLease>,
        deadline: Duration,
    ) -> Result<Resident, AskError> {
        let (stdin, stdout, ender): (Writer, Reader, Ender) = match how {
            LaunchHow::Process(cmd) => {
                let mut child = cmd
                    .spawn_piped()
                    .map_err(|e| AskError::Gone(format!("cannot start {}: {e:?}", cmd.program)))?;
                let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
                    return Err(AskError::Gone("its pipes are unavailable".into()));
                };
                (Box::new(stdin), Box::new(stdout), Ender::Child(child))
            }
            LaunchHow::Stream(open) => match tokio::time::timeout(deadline, open()).await {
                Err(_) => return Err(AskError::Timeout),
                Ok(Err(why)) => return Err(AskError::Gone(why)),
                Ok(Ok(c)) => (
                    c.writer,
                    c.reader,
                    Ender::Stream {
                        kill: c.kill,
                        hold: c.hold,
                    },
                ),
            },
        };
        // Until it is kept below, dropping it (an error, or this start given up) ends it: the
        // child is killed on drop, and a stream's kill is sent on drop.
        let mut lines = BufReader::new(stdout).lines();
        let ready = read_until(&mut lines, |r: &ReadyLine| r.ready);
        match tokio::time::timeout(deadline, ready).await {
            Err(_) => return Err(AskError::Timeout),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(_)) => {}
        }
        let pending: Arc<Pending> = Arc::new(std::sync::Mutex::new(Ok(HashMap::new())));
        let watches = Arc::new(std::sync::Mutex::new(Watches::default()));
        let reader = tokio::spawn(dispatch(lines, pending.clone(), watches.clone()));
        Ok(Resident {
            ender: std::sync::Mutex::new(Some(ender)),
            _lease: lease,
            stdin: tokio::sync::Mutex::new(Some(stdin)),
            pending,
            watches,
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
        let watching = !self
            .watches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_id
            .is_empty();
        waiting == 0
            && !watching
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
        // Ended on purpose: its watches end silently (the slot re-makes them on a new observer).
        *self.watches.lock().unwrap_or_else(|p| p.into_inner()) = Watches::default();
        // End of input first: the runner side then kills every request it runs and exits.
        if let Ok(mut stdin) = self.stdin.try_lock() {
            stdin.take();
        }
        let ender = self.ender.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(e) = ender {
            e.end();
        }
        self.reader.abort();
        // The requests still waiting learn it at once (their senders are dropped here).
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending.is_ok() {
            *pending = Err("it was ended".to_string());
        }
    }

    /// [`Resident::end`], waiting for the kill of a stream's process to be sent (the daemon
    /// is stopping).
    async fn end_now(&self) {
        let ender = self.ender.lock().unwrap_or_else(|p| p.into_inner()).take();
        self.end();
        if let Some(e) = ender {
            e.end_now().await;
        }
    }

    async fn ask(&self, request: &ObserveInput, deadline: Duration) -> Result<Reply, AskError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let line = Request::Observe {
            id,
            request,
            deadline_secs: runner_deadline(deadline).as_secs_f64(),
        };
        self.call(&line, deadline).await
    }

    /// Send `request` and wait for its answer.
    async fn call(&self, request: &Request<'_>, deadline: Duration) -> Result<Reply, AskError> {
        let id = request.id();
        self.touch();
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
        let work = async {
            let mut bytes = serde_json::to_vec(request)
                .map_err(|e| AskError::Gone(format!("encoding the request failed: {e}")))?;
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

    /// Make (or keep) `user`'s watch of `request` on this observer; a watch of another request
    /// for the same user is replaced. Events go to `events`.
    async fn watch(
        &self,
        user: &str,
        request: &WatchRequest,
        events: &EventSender,
    ) -> Result<(), AskError> {
        let old = {
            let w = self.watches.lock().unwrap_or_else(|p| p.into_inner());
            match w.by_user.get(user) {
                Some((_, r)) if r == request => return Ok(()),
                Some((id, _)) => Some(*id),
                None => None,
            }
        };
        if let Some(old) = old {
            self.unwatch_id(user, old).await;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // Routed before it is sent, so the first event is never lost.
        {
            let mut w = self.watches.lock().unwrap_or_else(|p| p.into_inner());
            w.by_id.insert(id, (user.to_string(), events.clone()));
            w.by_user.insert(user.to_string(), (id, request.clone()));
        }
        let line = Request::Watch {
            id,
            request,
            poll_secs: WATCH_POLL.as_secs_f64(),
        };
        match self.call(&line, WATCH_CALL_DEADLINE).await {
            Ok(Reply::Ack { watching: true, .. }) => {
                tracing::info!(key = user, "runner watch started");
                Ok(())
            }
            other => {
                let mut w = self.watches.lock().unwrap_or_else(|p| p.into_inner());
                w.by_id.remove(&id);
                w.by_user.remove(user);
                match other {
                    Err(e) => Err(e),
                    Ok(Reply::Ack { error, .. }) => Err(AskError::Gone(format!(
                        "it refused the watch: {}",
                        error.as_deref().unwrap_or("no reason")
                    ))),
                    Ok(_) => Err(AskError::Gone("it answered the watch oddly".into())),
                }
            }
        }
    }

    /// End `user`'s watch `id` here and on the runner.
    async fn unwatch_id(&self, user: &str, id: u64) {
        {
            let mut w = self.watches.lock().unwrap_or_else(|p| p.into_inner());
            w.by_id.remove(&id);
            if w.by_user.get(user).is_some_and(|(i, _)| *i == id) {
                w.by_user.remove(user);
            }
        }
        let call = self.next_id.fetch_add(1, Ordering::Relaxed);
        let line = Request::Unwatch {
            id: call,
            watch: id,
        };
        let _ = self.call(&line, WATCH_CALL_DEADLINE).await;
    }

    /// `user`'s watch id here, if any.
    fn watch_of(&self, user: &str) -> Option<u64> {
        self.watches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_user
            .get(user)
            .map(|(id, _)| *id)
    }
}

/// How long starting or ending a watch may take (one line each way on a held session).
const WATCH_CALL_DEADLINE: Duration = Duration::from_secs(30);

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

/// How to start the observer of one runner: the local command or the stream to open, the
/// runner key, and over ssh the session budget of the held connection (the observer holds one
/// of its sessions for its whole life).
pub struct Launch {
    pub how: LaunchHow,
    runner_key: String,
    pub budget: Option<Arc<SessionBudget>>,
}

impl Launch {
    /// A local command's launch; its runner key is the whole command (transport, host,
    /// container, the launcher's interpreter), hashed.
    pub fn process(cmd: Cmd, budget: Option<Arc<SessionBudget>>) -> Self {
        let runner_key = runner_key(&cmd.argv().join("\0"));
        Launch {
            how: LaunchHow::Process(cmd),
            runner_key,
            budget,
        }
    }

    /// A stream's launch; `identity` names the runner (for a pod: cluster, namespace, pod,
    /// container and the observer script with its launcher), hashed into the runner key.
    pub fn stream(identity: &str, open: OpenChannel) -> Self {
        Launch {
            how: LaunchHow::Stream(open),
            runner_key: runner_key(identity),
            budget: None,
        }
    }

    /// The runner key. Every cloud.yaml observing the same runner shares it.
    pub fn runner(&self) -> String {
        self.runner_key.clone()
    }
}

fn runner_key(identity: &str) -> String {
    let digest = Sha256::digest(identity.as_bytes());
    hex::encode(&digest[..8])
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
    /// The watches the registrations want on this runner (request and where events go),
    /// made again on every new observer.
    wanted: std::sync::Mutex<HashMap<String, (WatchRequest, EventSender)>>,
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
                r.end_now().await;
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
                Err(e) => return Err(ResidentError::Unavailable(e.to_string())),
            },
        };
        *starts += 1;
        match Resident::start(&launch.how, lease, left).await {
            Ok(r) => {
                let r = Arc::new(r);
                *guard = Some(r.clone());
                // The watches of the observer this one replaces, made again.
                let wanted: Vec<_> = slot
                    .wanted
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .map(|(u, (req, tx))| (u.clone(), req.clone(), tx.clone()))
                    .collect();
                for (user, req, tx) in wanted {
                    let why = match r.watch(&user, &req, &tx).await {
                        Ok(()) => continue,
                        Err(AskError::Timeout) => "no answer".to_string(),
                        Err(AskError::Gone(why)) => why,
                    };
                    tracing::info!(key = %user, "the runner watch could not be made again: {why}");
                }
                Ok(r)
            }
            Err(AskError::Timeout) => Err(deadline_hit()),
            Err(AskError::Gone(why)) => Err(ResidentError::Unavailable(why)),
        }
    }

    /// Watch the chain `request` (spec, session, workspace, launcher) on the runner `launch`
    /// starts, for the registration `user`: its observer looks every [`WATCH_POLL`] and each
    /// change is sent to `events`. Kept across observer restarts; one watch per registration
    /// (a new request replaces the old). Needs the runner's observer to be running (it is right
    /// after an observation); without one the watch is made when one starts.
    pub async fn watch(
        &self,
        user: &str,
        launch: &Launch,
        request: &WatchRequest,
        events: &EventSender,
    ) -> Result<(), String> {
        let slot = self.slot(&launch.runner(), user);
        slot.wanted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(user.to_string(), (request.clone(), events.clone()));
        let current = match tokio::time::timeout(WATCH_CALL_DEADLINE, slot.observer.lock()).await {
            Ok(g) => g.as_ref().filter(|r| !r.is_gone()).cloned(),
            Err(_) => None,
        };
        let Some(r) = current else {
            return Ok(());
        };
        r.watch(user, request, events).await.map_err(|e| match e {
            AskError::Timeout => "the observer did not answer the watch".to_string(),
            AskError::Gone(why) => why,
        })
    }

    /// Every runner's slot, outside the map's lock.
    fn all_slots(&self) -> Vec<Arc<Slot>> {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.values().cloned().collect()
    }

    /// Whether `user` has a running watch on some runner.
    pub fn watching(&self, user: &str) -> bool {
        let slots = self.all_slots();
        slots.iter().any(|s| {
            s.observer.try_lock().is_ok_and(|g| {
                g.as_ref()
                    .is_some_and(|r| !r.is_gone() && r.watch_of(user).is_some())
            })
        })
    }

    /// End `user`'s watches (it was unregistered), here and on the runners.
    pub async fn unwatch(&self, user: &str) {
        let slots = self.all_slots();
        for slot in slots {
            slot.wanted
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(user);
            let current = slot.observer.lock().await.clone();
            if let Some(r) = current
                && let Some(id) = r.watch_of(user)
            {
                r.unwatch_id(user, id).await;
            }
        }
    }

    /// Ask the resident observer of the runner `launch` starts (started when there is none,
    /// or when it died) for one observation of `request` (the `observe.py` input), on behalf
    /// of the cloud.yaml `user` (its marker key).
    pub async fn observe(
        &self,
        user: &str,
        launch: &Launch,
        request: &ObserveInput,
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
                Ok(Reply::Observation(printed)) => {
                    // Parsed as the one-shot script's line is: one parser for both.
                    let line = format!("{OBSERVATION_PREFIX}{}", printed.get());
                    return Ok(Answer {
                        observation: parse_observation(&line),
                        observer_starts: starts,
                    });
                }
                Ok(Reply::Stale(why)) => {
                    tracing::info!(runner, "restarting the resident observer: {why}");
                    slot.retire(&resident).await;
                }
                Ok(Reply::Deadline) => return Err(ResidentError::Deadline(deadline)),
                Ok(Reply::Ack { .. }) => {
                    return Err(ResidentError::Unavailable(
                        "it answered the observation without one".into(),
                    ));
                }
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
    use serde_json::{Value, json};
    use std::path::Path;

    /// The answer's observation, parsed.
    fn obs(a: &Answer) -> &Observation {
        match &a.observation {
            Ok(o) => o,
            Err(e) => panic!("the observation did not parse: {e:?}"),
        }
    }

    /// The plan status word and its source, as observed.
    fn plan(a: &Answer) -> (Option<&str>, Option<&str>) {
        let p = &obs(a).plan_status;
        (p.status.as_deref(), p.source.as_deref())
    }

    fn standin() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/bench/standin")
    }

    /// The observer as a local `sh -c` child, the stand-in core on its PYTHONPATH.
    fn local(launcher: &str, pythonpath: &Path, tmux: &Path) -> Launch {
        Launch::process(local_cmd(launcher, pythonpath, tmux), None)
    }

    fn local_cmd(launcher: &str, pythonpath: &Path, tmux: &Path) -> Cmd {
        Cmd::new("sh")
            .arg("-c")
            .arg(resident_script(launcher))
            .env("PYTHONPATH", pythonpath.display().to_string())
            .env("MEGAPLAN_STANDIN_IMPORT_SECONDS", "0")
            .env("TMUX_TMPDIR", tmux.display().to_string())
    }

    /// The command of a process launch.
    fn cmd_of(launch: &Launch) -> Cmd {
        match &launch.how {
            LaunchHow::Process(cmd) => cmd.clone(),
            LaunchHow::Stream(_) => panic!("a stream launch has no command"),
        }
    }

    /// What one observer line says, in words (`None`: skipped).
    fn said(line: &str) -> Option<String> {
        let read: ReplyLine = read_object(line.trim())?;
        Some(match read.into_message() {
            Message::Event { watch, what } => format!("event {watch}: {what}"),
            Message::Reply { id, reply } => match reply {
                Reply::Observation(o) => format!("observation {id}: {}", o.get()),
                Reply::Stale(why) => format!("stale {id}: {why}"),
                Reply::Deadline => format!("deadline {id}"),
                Reply::Ack { watching, error } => format!("ack {id}: {watching} {error:?}"),
            },
        })
    }

    /// Every line an observer may print, hostile ones included, and what each one is: a line
    /// without a whole non-negative `id` in a JSON object is skipped; an odd field never costs
    /// the line; `event`, `stale`, `deadline` count when present at all, in that order.
    #[test]
    fn each_observer_line_is_read_as_before_and_odd_lines_are_skipped() {
        let skipped = [
            "",
            "Last login: Fri Dec  4 15:25:48 2026",
            "{not json",
            "[1, {\"id\": 1}]",
            "\"text\"",
            "5",
            "null",
            r#"{"ready": true, "pid": 7, "version": 1}"#,
            r#"{"id": null, "observation": {"version": 1, "fatal": "bad request"}}"#,
            r#"{"id": "1", "observation": {}}"#,
            r#"{"id": -1, "observation": {}}"#,
            r#"{"id": 1.5, "observation": {}}"#,
            r#"{"id": 1e3, "observation": {}}"#,
            r#"{"id": 18446744073709551616, "observation": {}}"#,
            r#"{"id": 1, "observation": {}} trailing"#,
            r#"{"id": 1, "observation": {}"#,
        ];
        for line in skipped {
            assert_eq!(said(line), None, "{line}");
        }
        let read = [
            (
                r#"{"id": 1, "event": {"what": "the chain state file changed", "drivers": [3]}}"#,
                "event 1: the chain state file changed",
            ),
            (
                r#"{"id": 1, "event": null}"#,
                "event 1: the chain changed on the runner",
            ),
            (
                r#"{"id": 1, "event": "x"}"#,
                "event 1: the chain changed on the runner",
            ),
            (
                r#"{"id": 1, "event": {"what": 5}}"#,
                "event 1: the chain changed on the runner",
            ),
            (
                r#"{"id": 1, "event": {"what": ""}, "stale": "s"}"#,
                "event 1: ",
            ),
            (
                r#"{"id": 2, "stale": "core files changed", "deadline": 3}"#,
                "stale 2: core files changed",
            ),
            (r#"{"id": 2, "stale": null}"#, "stale 2: null"),
            (r#"{"id": 2, "stale": {"a":1}}"#, r#"stale 2: {"a":1}"#),
            (
                r#"{"id": 3, "deadline": null, "observation": {"version": 1}}"#,
                "deadline 3",
            ),
            (r#"  {"id": 3, "deadline": 2.5}  "#, "deadline 3"),
            (
                r#"{"id": 4, "observation": {"version": 1, "x": [1, {"y": null}]}}"#,
                r#"observation 4: {"version": 1, "x": [1, {"y": null}]}"#,
            ),
            (r#"{"id": 4, "observation": null}"#, "ack 4: false None"),
            (r#"{"id": 4, "observation": [1]}"#, "ack 4: false None"),
            (r#"{"id": 4, "observation": "{}"}"#, "ack 4: false None"),
            (r#"{"id": 5, "watching": true}"#, "ack 5: true None"),
            (
                r#"{"id": 5, "watching": false, "error": "RuntimeError: full"}"#,
                r#"ack 5: false Some("RuntimeError: full")"#,
            ),
            (
                r#"{"id": 5, "watching": "true", "error": 7}"#,
                "ack 5: false None",
            ),
            (
                r#"{"id": 6, "unwatched": true, "extra": {"anything": [1, 2]}}"#,
                "ack 6: false None",
            ),
        ];
        for (line, want) in read {
            assert_eq!(said(line).as_deref(), Some(want), "{line}");
        }
        // The first line only counts when it says `ready: true`.
        let ready = |line: &str| read_object::<ReadyLine>(line).is_some_and(|r| r.ready);
        assert!(ready(r#"{"ready": true, "pid": 7, "version": 1}"#));
        for not in [
            r#"{"ready": "true"}"#,
            r#"{"ready": 1}"#,
            "[true]",
            r#"{"pid": 7}"#,
            "ready",
        ] {
            assert!(!ready(not), "{not}");
        }
    }

    /// The requests as resident.py reads them: one JSON object per line, tagged by `op`.
    #[test]
    fn requests_are_tagged_by_op_as_the_observer_reads_them() {
        let root = tempfile::tempdir().unwrap();
        let (_ws, input) = workspace(root.path());
        let line = |r: &Request<'_>| {
            serde_json::from_slice::<Value>(&serde_json::to_vec(r).unwrap()).unwrap()
        };
        let observe = Request::Observe {
            id: 7,
            request: &input,
            deadline_secs: 1.5,
        };
        assert_eq!(observe.id(), 7);
        assert_eq!(
            line(&observe),
            json!({"id": 7, "op": "observe", "request": serde_json::to_value(&input).unwrap(), "deadline_secs": 1.5})
        );
        let watch = WatchRequest {
            spec: "/w/chain.yaml".into(),
            session: "megaplan-chain".into(),
            workspace: "/w".into(),
            launcher: "python3 -m arnold_pipelines.megaplan".into(),
            lease_ttl_secs: 15.0,
            pr_poll_secs: 60.0,
            log_path: ".megaplan/cloud-chain.log".into(),
            stall_after_secs: 900.0,
        };
        assert_eq!(
            line(&Request::Watch {
                id: 8,
                request: &watch,
                poll_secs: 0.5
            }),
            json!({"id": 8, "op": "watch", "poll_secs": 0.5, "request": {
                "spec": "/w/chain.yaml", "session": "megaplan-chain", "workspace": "/w",
                "launcher": "python3 -m arnold_pipelines.megaplan", "lease_ttl_secs": 15.0,
                "pr_poll_secs": 60.0, "log_path": ".megaplan/cloud-chain.log",
                "stall_after_secs": 900.0,
            }})
        );
        assert_eq!(
            line(&Request::Unwatch { id: 9, watch: 8 }),
            json!({"id": 9, "op": "unwatch", "watch": 8})
        );
    }

    /// A stand-in observer (a small Python program, not resident.py) that prints hostile lines
    /// around its answers; what it does for a request is named by the request's `spec`.
    const HOSTILE_OBSERVER: &str = r#"
import json, sys
def say(obj):
    sys.stdout.write(obj if isinstance(obj, str) else json.dumps(obj))
    sys.stdout.write("\n")
    sys.stdout.flush()
say("Last login: noise from a login shell")
say({"ready": "true"})
say([{"ready": True}])
say({"ready": True, "pid": 1, "version": 1})
for line in sys.stdin:
    req = json.loads(line)
    rid, mode = req["id"], req["request"].get("spec")
    for noise in ["garbage {", "[%d]" % rid, {"id": None, "observation": {"version": 1}},
                  {"id": str(rid), "observation": {"version": 1}}, {"id": -rid},
                  {"id": rid + 1000, "observation": {"version": 1}},
                  {"id": 4242, "event": {"what": "a watch nobody made"}}]:
        say(noise)
    if req["op"] == "watch":
        if mode == "refuse":
            say({"id": rid, "watching": "yes", "error": 7})
        else:
            say({"id": rid, "watching": True})
            for event in [None, "x", {"what": 5}, {"what": "the chain state file changed"}]:
                say({"id": rid, "event": event})
    elif req["op"] == "unwatch":
        say({"id": rid, "unwatched": True})
    elif mode == "answer":
        say({"id": rid, "observation": {"version": 1, "core_starts": 0, "warnings_are": "ignored"}})
    elif mode == "not-an-object":
        say({"id": rid, "observation": "{}"})
    elif mode == "odd-field":
        say({"id": rid, "observation": {"version": 1, "core_starts": "many"}})
    elif mode == "deadline":
        say({"id": rid, "deadline": None})
    elif mode == "oversized":
        sys.stdout.write('{"id": %d, "observation": {"pad": "%s"}}\n' % (rid, "x" * (32 * 1024 * 1024)))
        sys.stdout.flush()
"#;

    /// Through the real reader task: hostile lines around each answer are skipped, answers for
    /// other ids and events of unknown watches dropped, an odd event still told (default
    /// words), and each kind of answer ends its request as before.
    #[tokio::test]
    async fn a_hostile_observer_is_read_line_by_line_as_before() {
        let launch = Launch::process(
            Cmd::new("python3")
                .arg("-u")
                .arg("-c")
                .arg(HOSTILE_OBSERVER),
            None,
        );
        let r = Residents::default();
        let deadline = Duration::from_secs(60);
        let ask = |mode: &str| {
            ObserveRequest {
                spec: mode.into(),
                session: String::new(),
                workspace: String::new(),
                launcher: String::new(),
                log_path: String::new(),
                sync_refresh: false,
                pr_probe: false,
            }
            .input("/nowhere")
        };

        let a = r
            .observe("k", &launch, &ask("answer"), deadline)
            .await
            .unwrap();
        assert_eq!((a.observer_starts, obs(&a).core_starts), (1, 0));
        // A wrong-typed field is the parser's error, naming the field (as one-shot).
        let a = r
            .observe("k", &launch, &ask("odd-field"), deadline)
            .await
            .unwrap();
        let e = a.observation.unwrap_err();
        assert!(e.to_string().contains("field `core_starts`"), "{e:?}");
        let e = r
            .observe("k", &launch, &ask("not-an-object"), deadline)
            .await
            .unwrap_err();
        assert_eq!(
            e,
            ResidentError::Unavailable("it answered the observation without one".into())
        );
        let e = r
            .observe("k", &launch, &ask("deadline"), deadline)
            .await
            .unwrap_err();
        assert_eq!(e, ResidentError::Deadline(deadline));
        assert_eq!(r.running(), 1, "one observer answered all of them");

        // A refused watch says why (an odd `error` is no reason); a made one tells its events.
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let watch = |spec: &str| WatchRequest {
            spec: spec.into(),
            session: String::new(),
            workspace: String::new(),
            launcher: String::new(),
            lease_ttl_secs: 15.0,
            pr_poll_secs: 60.0,
            log_path: String::new(),
            stall_after_secs: 0.0,
        };
        let e = r
            .watch("k", &launch, &watch("refuse"), &tx)
            .await
            .unwrap_err();
        assert_eq!(e, "it refused the watch: no reason");
        assert!(!r.watching("k"));
        r.watch("k", &launch, &watch("ok"), &tx).await.unwrap();
        assert!(r.watching("k"));
        let safety = Duration::from_secs(120);
        let mut told = Vec::new();
        for _ in 0..4 {
            let e = tokio::time::timeout(safety, rx.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!((e.key.as_str(), e.lost), ("k", false));
            told.push(e.what);
        }
        assert_eq!(
            told,
            [
                "the chain changed on the runner",
                "the chain changed on the runner",
                "the chain changed on the runner",
                "the chain state file changed",
            ]
        );
        r.unwatch("k").await;
        assert!(!r.watching("k"));

        // An oversized line ends the observer; a fresh one printing it again is unavailable.
        let e = r
            .observe("k", &launch, &ask("oversized"), deadline)
            .await
            .unwrap_err();
        assert_eq!(
            e,
            ResidentError::Unavailable("it printed an oversized line".into())
        );
        assert!(
            rx.try_recv().is_err(),
            "the watch was ended on purpose: no lost event"
        );
    }

    /// A temp root with a copy of the stand-in core (`site`) and a private tmux folder.
    fn bench_dirs() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
        let root = tempfile::tempdir().unwrap();
        let core = root.path().join("site");
        copy_dir(&standin(), &core);
        let tmux = root.path().join("tmux");
        std::fs::create_dir_all(&tmux).unwrap();
        (root, core, tmux)
    }

    fn workspace(root: &Path) -> (std::path::PathBuf, ObserveInput) {
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
        .input(&root.join("markers").display().to_string());
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
        let (root, core, tmux) = bench_dirs();
        let (ws, req) = workspace(root.path());
        let cmd = local("python3 -m arnold_pipelines.megaplan", &core, &tmux);
        let r = Residents::default();
        let deadline = Duration::from_secs(60);

        let first = r.observe("k", &cmd, &req, deadline).await.unwrap();
        assert_eq!(first.observer_starts, 1);
        assert_eq!(obs(&first).core_starts, 1, "{:?}", first.observation);
        assert_eq!(plan(&first), (Some("finalized"), Some("megaplan status")));
        for _ in 0..3 {
            let a = r.observe("k", &cmd, &req, deadline).await.unwrap();
            assert_eq!((a.observer_starts, obs(&a).core_starts), (0, 0));
            assert_eq!(plan(&a).0, Some("finalized"));
        }
        assert_eq!(r.running(), 1);

        // `pip install --upgrade`: the core's files change; the next answer comes from new code.
        let cli = core.join("arnold_pipelines/megaplan/cli.py");
        let text = std::fs::read_to_string(&cli).unwrap();
        std::fs::write(&cli, format!("{text}\n# upgraded\n")).unwrap();
        let after = r.observe("k", &cmd, &req, deadline).await.unwrap();
        assert_eq!(after.observer_starts, 1);
        assert_eq!(obs(&after).core_starts, 1, "{:?}", after.observation);
        let again = r.observe("k", &cmd, &req, deadline).await.unwrap();
        assert_eq!(obs(&again).core_starts, 0);

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
        assert_eq!(obs(&back).core_starts, 0);

        // No python at all: unavailable, for the caller's one-shot fallback.
        let none = Launch::process(
            Cmd::new("sh")
                .arg("-c")
                .arg("echo no python here; exit 127"),
            None,
        );
        let e = r.observe("k2", &none, &req, deadline).await.unwrap_err();
        assert!(matches!(e, ResidentError::Unavailable(_)), "{e:?}");
    }

    /// A launch that is an open stream (as on Kubernetes) is read and dispatched as a local
    /// process is: its runner key is the identity it was given, one observer answers every
    /// registration on it, and ending it (unregistering) runs its kill, which ends the far side.
    #[tokio::test]
    async fn a_stream_launch_answers_as_a_process_does_and_its_kill_runs_when_it_ends() {
        let (root, core, tmux) = bench_dirs();
        let (_ws, req) = workspace(root.path());
        let cmd = local_cmd("python3 -m arnold_pipelines.megaplan", &core, &tmux);
        let opened = Arc::new(AtomicU64::new(0));
        let (killed_tx, killed_rx) = tokio::sync::oneshot::channel::<u32>();
        let killed_tx = Arc::new(std::sync::Mutex::new(Some(killed_tx)));
        let open: OpenChannel = {
            let opened = opened.clone();
            Box::new(move || {
                let (cmd, opened, killed_tx) = (cmd.clone(), opened.clone(), killed_tx.clone());
                Box::pin(async move {
                    opened.fetch_add(1, Ordering::Relaxed);
                    let mut child = cmd.spawn_piped().map_err(|e| format!("{e:?}"))?;
                    let pid = child.id().unwrap_or_default();
                    let writer = child.stdin.take().ok_or("no stdin")?;
                    let reader = child.stdout.take().ok_or("no stdout")?;
                    // The far side's kill: here the local child, as the pod's group there.
                    let kill = RunnerKill::new(async move {
                        let _ = child.kill().await;
                        if let Some(tx) = killed_tx.lock().unwrap().take() {
                            let _ = tx.send(pid);
                        }
                    });
                    Ok(Channel {
                        writer: Box::new(writer),
                        reader: Box::new(reader),
                        kill,
                        hold: Box::new(()),
                    })
                })
            })
        };
        let launch = Launch::stream("kubernetes\0ns/pod/agent\0script", open);
        assert_eq!(
            launch.runner(),
            runner_key("kubernetes\0ns/pod/agent\0script")
        );
        assert_ne!(
            launch.runner(),
            Launch::process(cmd_of(&local("x", &core, &tmux)), None).runner()
        );
        let r = Residents::default();
        let deadline = Duration::from_secs(60);
        let mut starts = 0;
        for user in ["a", "b"] {
            let a = r.observe(user, &launch, &req, deadline).await.unwrap();
            assert_eq!(plan(&a).0, Some("finalized"));
            starts += a.observer_starts;
        }
        assert_eq!(
            (starts, opened.load(Ordering::Relaxed), r.running()),
            (1, 1, 1)
        );

        for user in ["a", "b"] {
            for (runner, _) in r.forget_user(user) {
                r.drop_runner(&runner).await;
            }
        }
        assert_eq!(r.running(), 0);
        let pid = tokio::time::timeout(Duration::from_secs(120), killed_rx)
            .await
            .expect("the stream's kill never ran")
            .unwrap();
        assert!(
            wait_for(|| !Path::new(&format!("/proc/{pid}")).exists()).await,
            "the observer outlived its stream"
        );

        // A stream that cannot open: unavailable, for the one-shot fallback.
        let broken = Launch::stream(
            "nowhere",
            Box::new(|| Box::pin(async { Err("the pod is gone".to_string()) })),
        );
        let e = r.observe("c", &broken, &req, deadline).await.unwrap_err();
        assert_eq!(e, ResidentError::Unavailable("the pod is gone".into()));
    }

    /// Issue 21 item 3: one observer per runner whichever cloud.yaml asks; it ends when the
    /// last registration using the runner goes, or when idle; over ssh it takes a session of
    /// the connection's budget, and past the observers' share none starts (one-shot instead).
    #[tokio::test]
    async fn one_observer_per_runner_ended_when_unused_and_counted_in_the_budget() {
        let (root, core, tmux) = bench_dirs();
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
        let counted = Launch::process(cmd_of(&launch), Some(budget.clone()));
        r.observe("a", &counted, &req, deadline).await.unwrap();
        assert_eq!((budget.in_use(), budget.observers_in_use()), (1, 1));
        r.reap_idle(Duration::ZERO);
        assert_eq!(budget.in_use(), 0);
        // A connection whose budget leaves observers no session: none starts.
        let tight = Launch::process(
            cmd_of(&launch),
            Some(Arc::new(SessionBudget::new("root@h port 22", 3))),
        );
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
        let (root, core, tmux) = bench_dirs();
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
            let (r, cmd, hung_req) = (r.clone(), cmd_of(&launch), hung_req.clone());
            hung.push(tokio::spawn(async move {
                let launch = Launch::process(cmd, None);
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
            assert_eq!(plan(&a).0, Some("finalized"));
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

    /// Issue 24 item 1: a watch speaks only when the chain changes on the runner, survives a
    /// new observer (the slot makes it again), and ends with an unwatch.
    #[tokio::test]
    async fn a_watch_reports_a_state_change_and_is_made_again_on_a_new_observer() {
        let (root, core, tmux) = bench_dirs();
        let (ws, req) = workspace(root.path());
        let launch = local("python3 -m arnold_pipelines.megaplan", &core, &tmux);
        let r = Residents::default();
        let deadline = Duration::from_secs(60);
        r.observe("k", &launch, &req, deadline).await.unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        // The resident's own defaults: lease 15 s, pull requests every 60 s, no stall watch.
        let watched = WatchRequest {
            spec: req.request.spec.clone(),
            session: req.request.session.clone(),
            workspace: req.request.workspace.clone(),
            launcher: req.request.launcher.clone(),
            lease_ttl_secs: 15.0,
            pr_poll_secs: 60.0,
            log_path: req.request.log_path.clone(),
            stall_after_secs: 0.0,
        };
        r.watch("k", &launch, &watched, &tx).await.unwrap();
        assert!(r.watching("k"));
        // The same watch again is kept, not duplicated.
        r.watch("k", &launch, &watched, &tx).await.unwrap();

        // The chain state file is the one the observation read.
        let first = r.observe("k", &launch, &req, deadline).await.unwrap();
        let state = obs(&first).state_path.clone();
        let write_state = |n: u32| {
            let text = std::fs::read_to_string(&state).unwrap();
            let mut v: Value = serde_json::from_str(&text).unwrap();
            v["watch_test"] = json!(n);
            std::fs::write(&state, v.to_string()).unwrap();
        };
        write_state(1);
        let safety = Duration::from_secs(120);
        let e = tokio::time::timeout(safety, rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(e.key, "k");
        assert!(!e.lost);
        assert!(e.what.contains("state file"), "{e:?}");

        // Its core upgraded: a new observer answers, and the watch is made on it again.
        let cli = core.join("arnold_pipelines/megaplan/cli.py");
        let text = std::fs::read_to_string(&cli).unwrap();
        std::fs::write(&cli, format!("{text}\n# upgraded\n")).unwrap();
        let after = r.observe("k", &launch, &req, deadline).await.unwrap();
        assert_eq!(after.observer_starts, 1);
        assert!(r.watching("k"));
        while rx.try_recv().is_ok() {}
        write_state(2);
        let e = tokio::time::timeout(safety, rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(e.what.contains("state file"), "{e:?}");

        // A driver of this chain starts, then dies: both are told.
        let spec = req.request.spec.clone();
        while rx.try_recv().is_ok() {}
        let mut driver = std::process::Command::new("python3")
            .args(["-c", "import time; time.sleep(600)", "-m"])
            .args([
                "arnold_pipelines.megaplan",
                "chain",
                "start",
                "--spec",
                &spec,
            ])
            .spawn()
            .unwrap();
        let e = tokio::time::timeout(safety, rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(e.what.contains("driver process started"), "{e:?}");
        driver.kill().unwrap();
        driver.wait().unwrap();
        let e = tokio::time::timeout(safety, rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(e.what.contains("driver process is gone"), "{e:?}");

        r.unwatch("k").await;
        assert!(!r.watching("k"));
        let _ = ws;
    }
}
