//! Held OpenSSH sessions: one ControlMaster connection per target, reused by every action and
//! supervise tick (hand-rolled on `tokio::process`; docs/design.md, "Held ssh sessions").
//!
//! A master is `ssh -M -N -f -o ControlPersist=yes` with its control socket in a private folder
//! of ours; every command is a mux client (`ssh -S <socket> -o ControlMaster=no`) so N commands
//! cost one TCP connection and one authentication. Liveness is checked by connecting to the
//! control socket (no process spawned). Masters outlive a daemon restart and are adopted.
//!
//! A mux client whose session the master cannot open (no master, or the server refused the
//! session past its `MaxSessions`) would silently open a connection of its own: ssh falls back
//! to a direct connection whatever `ControlMaster` says. Our clients carry a `ProxyCommand`
//! that fails instead ([`NO_SECOND_CONNECTION`]), so that fallback is an error we name, never a
//! second TCP connection. Sessions are counted against the connection's
//! [`SessionBudget`](super::budget::SessionBudget), which stays below the server's
//! `MaxSessions` (`ssh.max_sessions`, default 10).
//!
//! Host keys: ssh's own defaults apply (`StrictHostKeyChecking=ask`, which `BatchMode=yes` turns
//! into "refuse unknown hosts"); the operator's ssh config (`-F`) and agent are used as is.

use super::budget::{DEFAULT_MAX_SESSIONS, SessionBudget, SessionLease};
use super::error::ProviderError;
use crate::cloud_yaml::Ssh;
use crate::process::{self, Cmd, Output};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// `sockaddr_un.sun_path` holds 107 bytes plus NUL, and ssh first binds `<ControlPath>.<16
/// random chars>` before renaming it into place: the path itself may have at most 90 bytes.
pub const MAX_CONTROL_PATH: usize = 107 - 17;

/// Ceiling for opening a master: TCP connect (ConnectTimeout=10) plus authentication.
const MASTER_START_DEADLINE: Duration = Duration::from_secs(30);

/// How long to wait for the control socket to appear after `ssh -f` returned.
const SOCKET_APPEAR_WAIT: Duration = Duration::from_secs(3);

/// What the mux clients run instead of connecting directly when the master cannot give them a
/// session: it prints [`NO_SECOND_CONNECTION_MARK`] and fails (ssh then exits 255).
pub const NO_SECOND_CONNECTION: &str =
    "ProxyCommand=sh -c \"echo megaplan-cloudd: no second ssh connection >&2; exit 1\"";

/// The line [`NO_SECOND_CONNECTION`] prints: the command never started on the remote side.
pub const NO_SECOND_CONNECTION_MARK: &str = "megaplan-cloudd: no second ssh connection";

/// What ssh prints when the master asked the server for a session and the server refused it
/// (`MaxSessions` reached on that connection).
const SESSION_REFUSED: [&str; 2] = ["Session open refused by peer", "mux_client_request_session"];

/// exit status ssh uses for its own failures (connection, authentication, lost master).
pub const SSH_FAILURE: i32 = 255;

/// One ssh destination.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SshTarget {
    pub host: String,
    pub user: Option<String>,
    pub port: u16,
    pub identity_file: Option<String>,
    /// The server's `MaxSessions` (`ssh.max_sessions`): sets the connection's session budget.
    pub max_sessions: u32,
}

impl SshTarget {
    pub fn from_spec(ssh: &Ssh) -> Self {
        SshTarget {
            host: ssh.host.clone(),
            user: ssh.user.clone(),
            port: ssh.port,
            identity_file: ssh.identity_file.clone(),
            max_sessions: ssh.max_sessions,
        }
    }

    /// A target whose server has sshd's default `MaxSessions`.
    pub fn with_default_sessions(
        host: String,
        user: Option<String>,
        port: u16,
        identity_file: Option<String>,
    ) -> Self {
        SshTarget {
            host,
            user,
            port,
            identity_file,
            max_sessions: DEFAULT_MAX_SESSIONS,
        }
    }

    /// `[user@]host`, as ssh takes it.
    pub fn destination(&self) -> String {
        match &self.user {
            Some(u) => format!("{u}@{}", self.host),
            None => self.host.clone(),
        }
    }

    /// `[user@]host:` prefix for rsync/scp paths; IPv6 literals need brackets there.
    pub fn copy_prefix(&self) -> String {
        let host = if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match &self.user {
            Some(u) => format!("{u}@{host}:"),
            None => format!("{host}:"),
        }
    }

    /// Human name for messages.
    pub fn describe(&self) -> String {
        format!("{} port {}", self.destination(), self.port)
    }

    fn key(&self) -> String {
        format!(
            "{}|{}|{}|{}",
            self.user.as_deref().unwrap_or(""),
            self.host,
            self.port,
            self.identity_file.as_deref().unwrap_or("")
        )
    }
}

/// One held master connection. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct SshMaster {
    target: SshTarget,
    control_path: PathBuf,
    ssh_config: Option<PathBuf>,
    /// The sessions of this connection (shared by every handle of the target).
    budget: Arc<SessionBudget>,
}

impl SshMaster {
    pub fn target(&self) -> &SshTarget {
        &self.target
    }

    pub fn control_path(&self) -> &Path {
        &self.control_path
    }

    /// The ssh options shared by every client of this master (no destination): the mux socket,
    /// plus what a direct connection needs if the socket vanished meanwhile.
    fn client_options(&self, batch: bool) -> Vec<String> {
        let mut v = vec![
            "-S".to_string(),
            self.control_path.to_string_lossy().into_owned(),
            "-o".to_string(),
            "ControlMaster=no".to_string(),
        ];
        if batch {
            v.extend([
                "-o".to_string(),
                "BatchMode=yes".to_string(),
                "-o".to_string(),
                NO_SECOND_CONNECTION.to_string(),
            ]);
        }
        v.extend(common_options(&self.target, self.ssh_config.as_deref()));
        v
    }

    /// `ssh -S <ctl> -o ControlMaster=no -o BatchMode=yes -o ProxyCommand=<fail> [-F cfg] -p P
    /// [-i id] [user@]host -- <remote>`: the remote login shell runs `remote`, so it must be
    /// built with [`crate::shell`] quoting. Without a session from the master it fails.
    pub fn command(&self, remote: &str) -> Cmd {
        Cmd::new("ssh")
            .args(self.client_options(true))
            .arg(self.target.destination())
            .arg("--")
            .arg(remote)
    }

    /// The transport for `rsync -e`, one shell-quoted string (rsync splits it honouring quotes).
    pub fn rsync_transport(&self) -> String {
        let mut words = vec!["ssh".to_string()];
        words.extend(self.client_options(true));
        crate::shell::join(&words)
    }

    /// `scp` options using this master (scp's `-S` names a program, so the socket goes in `-o`).
    pub fn scp_options(&self) -> Vec<String> {
        let mut v = vec![
            "-o".to_string(),
            format!("ControlPath={}", self.control_path.to_string_lossy()),
            "-o".to_string(),
            "ControlMaster=no".to_string(),
            "-o".to_string(),
            "BatchMode=yes".to_string(),
            "-o".to_string(),
            NO_SECOND_CONNECTION.to_string(),
        ];
        if let Some(cfg) = &self.ssh_config {
            v.extend(["-F".to_string(), cfg.to_string_lossy().into_owned()]);
        }
        v.extend(["-P".to_string(), self.target.port.to_string()]);
        if let Some(id) = &self.target.identity_file {
            v.extend([
                "-i".to_string(),
                id.clone(),
                "-o".to_string(),
                "IdentitiesOnly=yes".to_string(),
            ]);
        }
        v
    }

    /// The argv the client runs on the user's terminal: like [`SshMaster::command`] with a TTY
    /// (`-t`) and without BatchMode, so a fallback direct connection may still prompt. This is
    /// the session [`super::budget::RESERVED_SESSIONS`] keeps free.
    pub fn interactive_argv(&self, remote: &str) -> Vec<String> {
        let mut v = vec!["ssh".to_string()];
        v.extend(self.client_options(false));
        v.push("-t".to_string());
        v.push(self.target.destination());
        v.push("--".to_string());
        v.push(remote.to_string());
        v
    }

    /// The session budget of this connection.
    pub fn budget(&self) -> &Arc<SessionBudget> {
        &self.budget
    }

    /// Wait in line for a session of this connection (held until the lease is dropped): at
    /// most `wait` and [`super::budget::SESSION_WAIT`], then a clear error.
    pub async fn session(&self, wait: Duration) -> Result<SessionLease, ProviderError> {
        self.budget.session(wait).await
    }

    /// The error for a command whose ssh client exited 255 without a session, or `None` when
    /// its stderr shows it had one (the command ran; its own exit or a lost connection).
    pub fn session_failure(&self, stderr: &str) -> Option<SessionFailure> {
        if SESSION_REFUSED.iter().any(|s| stderr.contains(s)) {
            return Some(SessionFailure::Refused(session_refused(
                &self.target,
                &self.budget,
                stderr,
            )));
        }
        stderr
            .contains(NO_SECOND_CONNECTION_MARK)
            .then_some(SessionFailure::NoMaster)
    }

    /// Whether the master accepts connections on its control socket.
    pub async fn is_alive(&self) -> bool {
        socket_alive(&self.control_path).await
    }
}

/// `[-F cfg] -p P [-i id -o IdentitiesOnly=yes] -o ConnectTimeout=10`.
fn common_options(t: &SshTarget, ssh_config: Option<&Path>) -> Vec<String> {
    let mut v = Vec::new();
    if let Some(cfg) = ssh_config {
        v.extend(["-F".to_string(), cfg.to_string_lossy().into_owned()]);
    }
    v.extend(["-p".to_string(), t.port.to_string()]);
    if let Some(id) = &t.identity_file {
        v.extend([
            "-i".to_string(),
            id.clone(),
            "-o".to_string(),
            "IdentitiesOnly=yes".to_string(),
        ]);
    }
    v.extend(["-o".to_string(), "ConnectTimeout=10".to_string()]);
    v
}

/// Why a mux client got no session; in both cases the command never started.
#[derive(Debug)]
pub enum SessionFailure {
    /// The server refused the session (its `MaxSessions` is lower than the budget assumes).
    Refused(ProviderError),
    /// The master was not there to ask.
    NoMaster,
}

fn session_refused(t: &SshTarget, budget: &SessionBudget, stderr: &str) -> ProviderError {
    ProviderError::SshSessionRefused {
        target: t.describe(),
        host: t.host.clone(),
        said: super::common::tail(stderr.trim(), 3),
        in_use: budget.in_use(),
        sessions: budget.sessions(),
        max_sessions: budget.max_sessions(),
    }
}

async fn socket_alive(path: &Path) -> bool {
    tokio::net::UnixStream::connect(path).await.is_ok()
}

type Slot = Arc<tokio::sync::Mutex<Option<Arc<SshMaster>>>>;

struct Inner {
    control_dir: PathBuf,
    ssh_config: Option<PathBuf>,
    slots: Mutex<HashMap<String, Slot>>,
    /// The session budget of each target's connection (created with the first `max_sessions`
    /// seen; one entry per target ever used).
    budgets: Mutex<HashMap<String, Arc<SessionBudget>>>,
    /// Keys of targets whose master is held (what [`SshSessions::count`] reports).
    held: Mutex<std::collections::HashSet<String>>,
}

/// The daemon's held sessions, one master per target.
#[derive(Clone)]
pub struct SshSessions {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SshSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshSessions")
            .field("control_dir", &self.inner.control_dir)
            .field("count", &self.count())
            .finish()
    }
}

impl SshSessions {
    /// `control_dir` must be a short private (0700) folder; `ssh_config` is passed as `-F`.
    pub fn new(control_dir: PathBuf, ssh_config: Option<PathBuf>) -> Self {
        SshSessions {
            inner: Arc::new(Inner {
                control_dir,
                ssh_config,
                slots: Mutex::new(HashMap::new()),
                budgets: Mutex::new(HashMap::new()),
                held: Mutex::new(std::collections::HashSet::new()),
            }),
        }
    }

    /// The control socket path of `t` (deterministic, so masters survive daemon restarts).
    pub fn control_path(&self, t: &SshTarget) -> PathBuf {
        let digest = Sha256::digest(t.key().as_bytes());
        let name = hex::encode(&digest[..8]);
        self.inner.control_dir.join(name)
    }

    /// A master handle for `t` without checking or starting it: for argv that must be built
    /// synchronously (attach). Its interactive clients fall back to a direct connection if no
    /// master runs; its batch clients fail instead ([`NO_SECOND_CONNECTION`]).
    pub fn handle(&self, t: &SshTarget) -> Result<SshMaster, ProviderError> {
        let control_path = self.control_path(t);
        check_control_path(&control_path)?;
        Ok(SshMaster {
            target: t.clone(),
            control_path,
            ssh_config: self.inner.ssh_config.clone(),
            budget: self.budget(t),
        })
    }

    /// The session budget of `t`'s connection: one per target, whichever master serves it.
    pub fn budget(&self, t: &SshTarget) -> Arc<SessionBudget> {
        let mut budgets = self
            .inner
            .budgets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let b = budgets
            .entry(t.key())
            .or_insert_with(|| Arc::new(SessionBudget::new(t.describe(), t.max_sessions)));
        if b.max_sessions() != t.max_sessions {
            tracing::warn!(
                host = %t.describe(),
                "ssh.max_sessions {} differs from the {} this connection's budget was made with; the first one stays until the daemon restarts (give every cloud.yaml of one host the same value)",
                t.max_sessions,
                b.max_sessions()
            );
        }
        b.clone()
    }

    fn slot(&self, t: &SshTarget) -> Slot {
        let mut slots = self
            .inner
            .slots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        slots.entry(t.key()).or_default().clone()
    }

    /// The live master for `t`: reused when its socket answers, else (re)started. Starts are
    /// serialized per target, so concurrent callers share one connection.
    pub async fn master(&self, t: &SshTarget) -> Result<Arc<SshMaster>, ProviderError> {
        let slot = self.slot(t);
        let mut held = slot.lock().await;
        if let Some(m) = held.as_ref()
            && m.is_alive().await
        {
            return Ok(m.clone());
        }
        *held = None;
        self.mark_held(t, false);
        let master = Arc::new(self.handle(t)?);
        ensure_dir(&self.inner.control_dir)?;
        if !master.is_alive().await {
            // A socket file nobody listens on (master died, host rebooted) blocks a new master.
            let _ = std::fs::remove_file(&master.control_path);
            self.start(&master).await?;
        }
        *held = Some(master.clone());
        self.mark_held(t, true);
        Ok(master)
    }

    fn mark_held(&self, t: &SshTarget, held: bool) {
        let mut set = self
            .inner
            .held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if held {
            set.insert(t.key());
        } else {
            set.remove(&t.key());
        }
    }

    async fn start(&self, m: &SshMaster) -> Result<(), ProviderError> {
        let log_path = m.control_path.with_extension("log");
        let log = std::fs::File::create(&log_path).map_err(|e| ProviderError::LocalIo {
            action: format!("cannot create {}", log_path.display()),
            why: e.to_string(),
        })?;
        let cmd = master_command(m);
        let code = process::run_detached(&cmd, MASTER_START_DEADLINE, log)
            .await
            .map_err(|e| super::common::run_error(&cmd, e))?;
        let why = || {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            super::common::tail(&text, 10)
        };
        if code != 0 {
            return Err(connect_failed(&m.target, code, &why()));
        }
        // `ssh -f` returns once authenticated; the socket follows within moments.
        let started = tokio::time::Instant::now();
        while !m.is_alive().await {
            if started.elapsed() > SOCKET_APPEAR_WAIT {
                return Err(connect_failed(&m.target, code, &why()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Number of masters currently held.
    pub fn count(&self) -> usize {
        self.inner
            .held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .len()
    }

    /// Close every master (`ssh -O exit`): graceful daemon shutdown.
    pub async fn close_all(&self) {
        let slots: Vec<Slot> = {
            let mut map = self
                .inner
                .slots
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            map.drain().map(|(_, s)| s).collect()
        };
        self.inner
            .held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clear();
        for slot in slots {
            let mut held = slot.lock().await;
            if let Some(m) = held.take() {
                let cmd = exit_command(&m);
                if let Err(e) = process::run(&cmd, Duration::from_secs(10)).await {
                    tracing::warn!("closing ssh master {}: {e}", m.target.describe());
                }
            }
        }
    }

    /// Run `remote` through the held master of `t`. When ssh itself fails (exit 255) and the
    /// master turns out dead, an `idempotent` command (a read or an observation) gets a fresh
    /// master and one more try; anything else is reported as "may or may not have run" and
    /// never re-run.
    pub async fn run(
        &self,
        t: &SshTarget,
        remote: &str,
        stdin: Option<Vec<u8>>,
        deadline: Duration,
        idempotent: bool,
    ) -> Result<Output, ProviderError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let master = self.master(t).await?;
            let mut cmd = master.command(remote);
            if let Some(bytes) = &stdin {
                cmd = cmd.stdin(bytes.clone());
            }
            // Waiting for a session counts against the deadline, like the command itself.
            let started = tokio::time::Instant::now();
            let lease = master.session(deadline).await?;
            let left = deadline.saturating_sub(started.elapsed());
            let out = process::run(&cmd, left)
                .await
                .map_err(|e| super::common::run_error(&cmd, e))?;
            drop(lease);
            if out.code != SSH_FAILURE {
                return Ok(out);
            }
            match master.session_failure(&String::from_utf8_lossy(&out.stderr)) {
                Some(SessionFailure::Refused(e)) => return Err(e),
                // The master went away before the command started: safe to run it again.
                Some(SessionFailure::NoMaster) if attempt < 2 => continue,
                Some(SessionFailure::NoMaster) => return Err(connection_lost(t, &out)),
                None => {}
            }
            if master.is_alive().await {
                return Ok(out);
            }
            if !idempotent || attempt >= 2 {
                return Err(connection_lost(t, &out));
            }
        }
    }
}

fn ensure_dir(dir: &Path) -> Result<(), ProviderError> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| ProviderError::LocalIo {
            action: format!("cannot create the ssh control folder {}", dir.display()),
            why: e.to_string(),
        })
}

/// Refuse control paths ssh cannot bind or would misread (`%` is a token, spaces split options).
pub fn check_control_path(p: &Path) -> Result<(), ProviderError> {
    let s = p.to_string_lossy();
    if s.len() > MAX_CONTROL_PATH {
        return Err(ProviderError::DaemonSetup {
            message: format!(
                "the ssh control socket path {s} is {} bytes; Unix sockets allow {} here (ssh adds 17 while creating one). Start the daemon with a shorter socket folder (--socket or $MEGAPLAN_CLOUDD_SOCKET; the ssh control folder sits beside the socket)",
                s.len(),
                MAX_CONTROL_PATH
            ),
        });
    }
    if s.chars()
        .any(|c| c.is_whitespace() || matches!(c, '%' | '"' | '\''))
    {
        return Err(ProviderError::DaemonSetup {
            message: format!(
                "the ssh control socket path {s:?} contains a space, quote or %, which ssh options cannot carry; start the daemon with a socket folder without them (--socket or $MEGAPLAN_CLOUDD_SOCKET)"
            ),
        });
    }
    Ok(())
}

/// `ssh -M -N -f -o ControlPersist=yes -o ControlPath=<ctl> -o BatchMode=yes
/// -o ServerAliveInterval=60 [-F cfg] -p P [-i id -o IdentitiesOnly=yes] -o ConnectTimeout=10
/// [user@]host`.
fn master_command(m: &SshMaster) -> Cmd {
    Cmd::new("ssh")
        .args(["-M", "-N", "-f", "-o", "ControlPersist=yes", "-o"])
        .arg(format!("ControlPath={}", m.control_path.to_string_lossy()))
        // One keep-alive a minute: an idle fleet's whole traffic (runner watches send nothing
        // while nothing changes). A silently dead connection is noticed after 3 unanswered
        // ones; a host that refuses or resets is noticed at once.
        .args(["-o", "BatchMode=yes", "-o", "ServerAliveInterval=60"])
        .args(common_options(&m.target, m.ssh_config.as_deref()))
        .arg(m.target.destination())
}

fn exit_command(m: &SshMaster) -> Cmd {
    let mut cmd = Cmd::new("ssh")
        .arg("-S")
        .arg(m.control_path.to_string_lossy().into_owned())
        .args(["-O", "exit"]);
    if let Some(cfg) = &m.ssh_config {
        cmd = cmd.arg("-F").arg(cfg.to_string_lossy().into_owned());
    }
    cmd.arg("-p")
        .arg(m.target.port.to_string())
        .arg(m.target.destination())
}

fn connect_failed(t: &SshTarget, code: i32, why: &str) -> ProviderError {
    let why = if why.trim().is_empty() {
        "(ssh printed nothing)".to_string()
    } else {
        why.to_string()
    };
    ProviderError::SshConnectFailed {
        target: t.describe(),
        host: t.host.clone(),
        port: t.port,
        destination: t.destination(),
        code,
        why,
    }
}

fn connection_lost(t: &SshTarget, out: &Output) -> ProviderError {
    let stderr = String::from_utf8_lossy(&out.stderr);
    ProviderError::SshConnectionLost {
        target: t.describe(),
        host: t.host.clone(),
        said: super::common::tail(stderr.trim(), 5),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use megaplan_cloud_api::{ErrorBody, ErrorCode};

    fn target() -> SshTarget {
        SshTarget {
            host: "box.example".into(),
            user: Some("deploy".into()),
            port: 2222,
            identity_file: Some("/home/op/.ssh/id_ed25519".into()),
            max_sessions: DEFAULT_MAX_SESSIONS,
        }
    }

    /// The options every ssh argv of [`target`] (under [`sessions`]) carries, in order.
    const TARGET_OPTIONS: [&str; 10] = [
        "-F",
        "/home/op/.ssh/config",
        "-p",
        "2222",
        "-i",
        "/home/op/.ssh/id_ed25519",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "ConnectTimeout=10",
    ];

    fn sessions() -> SshSessions {
        SshSessions::new(
            PathBuf::from("/run/user/1000/megaplan-cloudd/ssh"),
            Some(PathBuf::from("/home/op/.ssh/config")),
        )
    }

    #[test]
    fn control_path_is_sixteen_hex_of_the_target() {
        let s = sessions();
        let p = s.control_path(&target());
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(name.len(), 16);
        assert!(name.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(
            p.parent().unwrap(),
            Path::new("/run/user/1000/megaplan-cloudd/ssh")
        );
        let mut other = target();
        other.port = 22;
        assert_ne!(s.control_path(&other), p);
        assert_eq!(s.control_path(&target()), p, "deterministic");
    }

    #[test]
    fn master_argv_is_exact() {
        let m = sessions().handle(&target()).unwrap();
        let ctl = m.control_path().to_string_lossy().into_owned();
        assert_eq!(
            master_command(&m).argv(),
            [
                &[
                    "ssh",
                    "-M",
                    "-N",
                    "-f",
                    "-o",
                    "ControlPersist=yes",
                    "-o",
                    &format!("ControlPath={ctl}"),
                    "-o",
                    "BatchMode=yes",
                    "-o",
                    "ServerAliveInterval=60",
                ][..],
                &TARGET_OPTIONS,
                &["deploy@box.example"],
            ]
            .concat()
        );
    }

    #[test]
    fn client_argv_is_exact_and_keeps_the_remote_string_whole() {
        let m = sessions().handle(&target()).unwrap();
        let ctl = m.control_path().to_string_lossy().into_owned();
        let remote = "docker exec -i c bash -lc 'echo $HOME'";
        assert_eq!(
            m.command(remote).argv(),
            [
                &[
                    "ssh",
                    "-S",
                    &ctl,
                    "-o",
                    "ControlMaster=no",
                    "-o",
                    "BatchMode=yes",
                    "-o",
                    NO_SECOND_CONNECTION,
                ][..],
                &TARGET_OPTIONS,
                &["deploy@box.example", "--", remote],
            ]
            .concat()
        );
        assert_eq!(
            m.interactive_argv("docker exec -it c tmux attach -t agent"),
            [
                &["ssh", "-S", &ctl, "-o", "ControlMaster=no"][..],
                &TARGET_OPTIONS,
                &[
                    "-t",
                    "deploy@box.example",
                    "--",
                    "docker exec -it c tmux attach -t agent",
                ],
            ]
            .concat()
        );
    }

    #[test]
    fn minimal_target_has_no_user_identity_or_config() {
        let s = SshSessions::new(PathBuf::from("/tmp/c"), None);
        let t = SshTarget {
            host: "h".into(),
            user: None,
            port: 22,
            identity_file: None,
            max_sessions: DEFAULT_MAX_SESSIONS,
        };
        let m = s.handle(&t).unwrap();
        let ctl = m.control_path().to_string_lossy().into_owned();
        assert_eq!(
            m.command("true").argv(),
            [
                "ssh",
                "-S",
                &ctl,
                "-o",
                "ControlMaster=no",
                "-o",
                "BatchMode=yes",
                "-o",
                NO_SECOND_CONNECTION,
                "-p",
                "22",
                "-o",
                "ConnectTimeout=10",
                "h",
                "--",
                "true"
            ]
        );
        assert_eq!(
            m.rsync_transport(),
            format!(
                "ssh -S {ctl} -o ControlMaster=no -o BatchMode=yes -o {} -p 22 -o ConnectTimeout=10",
                crate::shell::quote(NO_SECOND_CONNECTION)
            )
        );
        assert_eq!(
            m.scp_options(),
            [
                "-o",
                &format!("ControlPath={ctl}"),
                "-o",
                "ControlMaster=no",
                "-o",
                "BatchMode=yes",
                "-o",
                NO_SECOND_CONNECTION,
                "-P",
                "22"
            ]
        );
        assert_eq!(
            exit_command(&m).argv(),
            ["ssh", "-S", &ctl, "-O", "exit", "-p", "22", "h"]
        );
    }

    #[test]
    fn a_session_the_master_could_not_give_is_named_never_taken_for_the_commands_own_failure() {
        let m = sessions().handle(&target()).unwrap();
        let refused = "mux_client_request_session: session request failed: Session open refused by peer\nmegaplan-cloudd: no second ssh connection\nkex_exchange_identification: Connection closed by remote host\n";
        match m.session_failure(refused) {
            Some(SessionFailure::Refused(e)) => {
                let e = ErrorBody::from(e);
                assert_eq!(e.error, ErrorCode::ProviderFailed);
                assert_eq!(e.extra["field"], "ssh.max_sessions");
                assert!(
                    e.message.contains("refused another session"),
                    "{}",
                    e.message
                );
                assert!(e.message.contains("did not run"), "{}", e.message);
            }
            other => panic!("{other:?}"),
        }
        let no_master = "Control socket connect(/x): No such file or directory\nmegaplan-cloudd: no second ssh connection\n";
        assert!(matches!(
            m.session_failure(no_master),
            Some(SessionFailure::NoMaster)
        ));
        assert!(
            m.session_failure("bash: nope: command not found\n")
                .is_none()
        );
    }

    #[test]
    fn copy_prefix_brackets_ipv6() {
        let mut t = target();
        assert_eq!(t.copy_prefix(), "deploy@box.example:");
        t.host = "::1".into();
        t.user = None;
        assert_eq!(t.copy_prefix(), "[::1]:");
    }

    #[test]
    fn long_or_odd_control_dirs_are_refused_with_a_fix() {
        let long = SshSessions::new(PathBuf::from(format!("/{}", "d".repeat(80))), None);
        let e = ErrorBody::from(long.handle(&target()).unwrap_err());
        assert!(e.message.contains("bytes"), "{}", e.message);
        assert!(e.message.contains("--socket"), "{}", e.message);
        let odd = SshSessions::new(PathBuf::from("/tmp/with space"), None);
        assert!(odd.handle(&target()).is_err());
        let pct = SshSessions::new(PathBuf::from("/tmp/100%"), None);
        assert!(pct.handle(&target()).is_err());
        // Exactly at the limit is accepted.
        let dir_len = MAX_CONTROL_PATH - 17;
        let ok = SshSessions::new(PathBuf::from(format!("/{}", "d".repeat(dir_len - 1))), None);
        let p = ok.handle(&target()).unwrap();
        assert_eq!(p.control_path().to_string_lossy().len(), MAX_CONTROL_PATH);
    }

    #[tokio::test]
    async fn a_missing_socket_is_dead_and_a_listening_one_alive() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sock");
        assert!(!socket_alive(&path).await);
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        assert!(socket_alive(&path).await);
        drop(listener);
        // Another test of this process forking a child (ssh, docker) in the moment between
        // fork and exec holds a copy of the listener a little longer; the socket goes dead
        // when the last copy closes. Wait for that, with a generous safety net.
        let mut dead = false;
        for _ in 0..600 {
            if !socket_alive(&path).await {
                dead = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert!(dead, "stale socket file");
    }

    #[tokio::test]
    async fn an_unreachable_host_fails_with_the_ssh_explanation() {
        let dir = tempfile::tempdir().unwrap();
        let s = SshSessions::new(dir.path().join("ssh"), None);
        let t = SshTarget {
            host: "127.0.0.1".into(),
            user: None,
            // Nothing listens on port 1.
            port: 1,
            identity_file: None,
            max_sessions: DEFAULT_MAX_SESSIONS,
        };
        let e = ErrorBody::from(s.master(&t).await.unwrap_err());
        assert_eq!(e.error, ErrorCode::ProviderFailed);
        assert!(e.message.contains("127.0.0.1 port 1"), "{}", e.message);
        assert!(
            e.message.to_lowercase().contains("refused"),
            "{}",
            e.message
        );
        assert_eq!(s.count(), 0);
    }
}
