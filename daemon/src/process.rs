//! Running local processes (ssh, docker, railway, rsync) with deadlines, process-group kills and
//! redacted line streaming.
//!
//! Every child is spawned in its own process group so a deadline (or a client that went away)
//! kills the whole tree: `rsync` spawns `ssh`, `docker compose` spawns plugins, and killing only
//! the direct child would leave those running and holding our pipes open.

use crate::redact::Redactor;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// How long we keep reading a child's pipes after it exited. A child that left a daemon behind
/// (which inherited the pipes) must not make us wait for that daemon's death.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

/// What [`Cmd::display`] shows instead of a masked argument's value (the redaction token).
const MASK: &str = "***REDACTED***";

/// Read buffer for streamed output: memory stays bounded whatever the volume.
const CHUNK: usize = 8 * 1024;

/// At most this much of each pipe of a captured command ([`run`]) is kept; the rest is read and
/// dropped (so the child never blocks on a full pipe) and a note says how much was dropped. A
/// hostile runner printing without end cannot exhaust the daemon's memory.
pub const MAX_CAPTURE_BYTES: usize = 8 * 1024 * 1024;

/// A command to run: program, arguments, working dir, extra environment and optional stdin.
/// Its `Debug` shows [`Cmd::display`] and the stdin length only: stdin may carry secret values
/// (an env file), and masked arguments hold them.
#[derive(Clone, Default)]
pub struct Cmd {
    pub program: String,
    pub args: Vec<String>,
    pub cwd: Option<PathBuf>,
    pub env: Vec<(String, String)>,
    pub stdin: Option<Vec<u8>>,
    /// Indexes into `args` whose value must never be shown (`railway variables --set N=v`).
    pub masked: Vec<usize>,
}

impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cmd")
            .field("argv", &self.display())
            .field("cwd", &self.cwd)
            .field(
                "env",
                &self.env.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            )
            .field("stdin_bytes", &self.stdin.as_ref().map(Vec::len))
            .finish()
    }
}

impl Cmd {
    pub fn new(program: &str) -> Self {
        Cmd {
            program: program.to_string(),
            ..Cmd::default()
        }
    }

    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn args<I, S>(mut self, it: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(it.into_iter().map(Into::into));
        self
    }

    /// An argument holding a secret (`NAME=value`): passed to the program, but [`Cmd::display`]
    /// shows only `NAME=***REDACTED***`.
    pub fn secret_arg(mut self, a: impl Into<String>) -> Self {
        self.masked.push(self.args.len());
        self.args.push(a.into());
        self
    }

    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn stdin(mut self, bytes: Vec<u8>) -> Self {
        self.stdin = Some(bytes);
        self
    }

    /// The argv, shell-quoted and joined, for messages. Never includes stdin; masked arguments
    /// keep only their `NAME=` part.
    pub fn display(&self) -> String {
        let mut words = Vec::with_capacity(self.args.len() + 1);
        words.push(self.program.clone());
        for (i, a) in self.args.iter().enumerate() {
            if self.masked.contains(&i) {
                words.push(match a.split_once('=') {
                    Some((name, _)) => format!("{name}={MASK}"),
                    None => MASK.to_string(),
                });
            } else {
                words.push(a.clone());
            }
        }
        crate::shell::join(&words)
    }

    /// The full argv (program first), for callers that hand it to another process.
    pub fn argv(&self) -> Vec<String> {
        std::iter::once(self.program.clone())
            .chain(self.args.iter().cloned())
            .collect()
    }

    /// Start the command with piped stdin and stdout (stderr discarded) for a line protocol; the
    /// process group is killed when the returned child is dropped.
    pub fn spawn_piped(&self) -> Result<tokio::process::Child, RunError> {
        let mut c = self.command();
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        c.spawn().map_err(|e| spawn_error(&self.program, e))
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.program);
        c.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .kill_on_drop(true)
            .process_group(0);
        if let Some(dir) = &self.cwd {
            c.current_dir(dir);
        }
        c.stdin(if self.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        c
    }
}

/// The captured result of a finished command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Exit status; -1 when the process was killed by a signal.
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunError {
    /// The program is not installed (not on PATH).
    NotFound {
        program: String,
    },
    /// The deadline passed; the whole process group was killed.
    Timeout {
        after: Duration,
    },
    /// The receiver of streamed output went away (the client disconnected); the process group
    /// was killed.
    Cancelled,
    Io(String),
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::NotFound { program } => write!(f, "{program}: command not found"),
            RunError::Timeout { after } => {
                write!(f, "timed out after {}s and was killed", after.as_secs())
            }
            RunError::Cancelled => f.write_str("cancelled: the output receiver went away"),
            RunError::Io(e) => f.write_str(e),
        }
    }
}

/// Which pipe a streamed chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamKind {
    Stdout,
    Stderr,
}

/// Kills the child's process group when dropped while still armed: a future dropped mid-run
/// (client gone, deadline, task abort) must not leave grandchildren behind.
struct GroupGuard {
    pgid: Option<libc::pid_t>,
}

impl GroupGuard {
    fn new(child: &Child) -> Self {
        GroupGuard {
            pgid: child.id().and_then(|p| libc::pid_t::try_from(p).ok()),
        }
    }

    fn kill(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            // SAFETY: killpg only sends a signal. The group id is our child's pid, spawned with
            // process_group(0); a pid cannot be reused while its process group still exists.
            unsafe {
                libc::killpg(pgid, libc::SIGKILL);
            }
        }
    }

    fn disarm(&mut self) {
        self.pgid = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn_error(program: &str, e: std::io::Error) -> RunError {
    if e.kind() == std::io::ErrorKind::NotFound {
        RunError::NotFound {
            program: program.to_string(),
        }
    } else {
        RunError::Io(format!("cannot start {program}: {e}"))
    }
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    status.code().unwrap_or(-1)
}

/// Feed stdin in its own task so a child that writes a lot before reading cannot deadlock us.
fn feed_stdin(child: &mut Child, bytes: Option<Vec<u8>>) {
    if let (Some(mut pipe), Some(bytes)) = (child.stdin.take(), bytes) {
        tokio::spawn(async move {
            // A child that exits without reading all of stdin closes the pipe: not our error.
            let _ = pipe.write_all(&bytes).await;
            let _ = pipe.shutdown().await;
        });
    }
}

async fn read_all<R: AsyncRead + Unpin>(r: R, buf: &mut Vec<u8>) {
    read_capped(r, buf, MAX_CAPTURE_BYTES).await;
}

/// Read `r` to its end keeping at most `cap` bytes in `buf`; past the cap the bytes are counted
/// and dropped, and a final note line says how many. Every provider's captured output goes
/// through here (local children and the Kubernetes exec streams alike).
pub(crate) async fn read_capped<R: AsyncRead + Unpin>(mut r: R, buf: &mut Vec<u8>, cap: usize) {
    let mut chunk = vec![0u8; CHUNK];
    let mut dropped: u64 = 0;
    loop {
        match r.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = cap.saturating_sub(buf.len()).min(n);
                buf.extend_from_slice(&chunk[..room]);
                dropped += (n - room) as u64;
            }
        }
    }
    if dropped > 0 {
        buf.extend_from_slice(
            format!(
                "\n[megaplan-cloudd: {dropped} more bytes of output dropped; captured output is capped at {cap} bytes]\n"
            )
            .as_bytes(),
        );
    }
}

/// Run to completion and capture stdout and stderr. On `deadline` the process group is killed
/// and [`RunError::Timeout`] returned.
pub async fn run(cmd: &Cmd, deadline: Duration) -> Result<Output, RunError> {
    let mut command = cmd.command();
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().map_err(|e| spawn_error(&cmd.program, e))?;
    let mut guard = GroupGuard::new(&child);
    feed_stdin(&mut child, cmd.stdin.clone());
    let (Some(out_pipe), Some(err_pipe)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(RunError::Io(format!("{}: pipes unavailable", cmd.program)));
    };

    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let work = async {
        let reading = async {
            tokio::join!(
                read_all(out_pipe, &mut stdout),
                read_all(err_pipe, &mut stderr)
            );
        };
        tokio::pin!(reading);
        let status = tokio::select! {
            status = child.wait() => status,
            () = &mut reading => {
                return child.wait().await.map(|s| (s, true));
            }
        };
        // The child exited; finish reading what it left, but do not wait for a daemon that
        // inherited the pipes.
        let _ = tokio::time::timeout(DRAIN_AFTER_EXIT, &mut reading).await;
        status.map(|s| (s, false))
    };
    let result = tokio::time::timeout(deadline, work).await;
    match result {
        Err(_) => {
            guard.kill();
            Err(RunError::Timeout { after: deadline })
        }
        Ok(Err(e)) => Err(RunError::Io(format!("waiting for {}: {e}", cmd.program))),
        Ok(Ok((status, _))) => {
            guard.disarm();
            Ok(Output {
                code: exit_code(status),
                stdout,
                stderr,
            })
        }
    }
}

/// Run a command that leaves a daemon behind (`ssh -M -f`): stdout goes to /dev/null and stderr
/// to `log`, so no pipe of ours stays open in the daemon. Returns the exit code.
pub async fn run_detached(
    cmd: &Cmd,
    deadline: Duration,
    log: std::fs::File,
) -> Result<i32, RunError> {
    let mut command = cmd.command();
    command.stdout(Stdio::null()).stderr(Stdio::from(log));
    let mut child = command.spawn().map_err(|e| spawn_error(&cmd.program, e))?;
    let mut guard = GroupGuard::new(&child);
    feed_stdin(&mut child, cmd.stdin.clone());
    match tokio::time::timeout(deadline, child.wait()).await {
        Err(_) => {
            guard.kill();
            Err(RunError::Timeout { after: deadline })
        }
        Ok(Err(e)) => Err(RunError::Io(format!("waiting for {}: {e}", cmd.program))),
        Ok(Ok(status)) => {
            guard.disarm();
            Ok(exit_code(status))
        }
    }
}

/// Run while streaming output to `tx` as redacted complete lines; each message is one or more
/// whole lines (the last message of a stream may lack its newline). Memory stays bounded
/// whatever the volume. If `tx` closes (the client went away) the process group is killed and
/// [`RunError::Cancelled`] returned. Returns the exit code.
pub async fn run_streaming(
    cmd: &Cmd,
    deadline: Option<Duration>,
    redactor: &Redactor,
    tx: &mpsc::Sender<(StreamKind, String)>,
) -> Result<i32, RunError> {
    run_streaming_inner(cmd, deadline, redactor, tx, false).await
}

/// [`run_streaming`] for a command whose output was written to a terminal (a program run under
/// `script`, see `provider::railway`): terminal control sequences, carriage returns and other
/// control bytes are removed ([`TerminalText`]) before redaction, so a colour code or a cursor
/// move in the middle of a secret cannot hide it from the redactor.
pub async fn run_streaming_terminal(
    cmd: &Cmd,
    deadline: Option<Duration>,
    redactor: &Redactor,
    tx: &mpsc::Sender<(StreamKind, String)>,
) -> Result<i32, RunError> {
    run_streaming_inner(cmd, deadline, redactor, tx, true).await
}

async fn run_streaming_inner(
    cmd: &Cmd,
    deadline: Option<Duration>,
    redactor: &Redactor,
    tx: &mpsc::Sender<(StreamKind, String)>,
    terminal: bool,
) -> Result<i32, RunError> {
    let mut command = cmd.command();
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().map_err(|e| spawn_error(&cmd.program, e))?;
    let mut guard = GroupGuard::new(&child);
    feed_stdin(&mut child, cmd.stdin.clone());
    let (Some(out_pipe), Some(err_pipe)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(RunError::Io(format!("{}: pipes unavailable", cmd.program)));
    };

    let work = async {
        let pumps = async {
            tokio::try_join!(
                pump(out_pipe, StreamKind::Stdout, redactor, tx, terminal),
                pump(err_pipe, StreamKind::Stderr, redactor, tx, terminal),
            )
        };
        tokio::pin!(pumps);
        let status = tokio::select! {
            status = child.wait() => status,
            done = &mut pumps => {
                done?;
                return child.wait().await.map_err(|e| RunError::Io(e.to_string()));
            }
            () = tx.closed() => return Err(RunError::Cancelled),
        };
        if let Ok(done) = tokio::time::timeout(DRAIN_AFTER_EXIT, &mut pumps).await {
            done?;
        }
        status.map_err(|e| RunError::Io(e.to_string()))
    };
    let result = match deadline {
        Some(d) => tokio::time::timeout(d, work)
            .await
            .unwrap_or(Err(RunError::Timeout { after: d })),
        None => work.await,
    };
    match result {
        Ok(status) => {
            guard.disarm();
            Ok(exit_code(status))
        }
        Err(e) => {
            guard.kill();
            Err(e)
        }
    }
}

/// Copy one pipe to `tx` as redacted lines.
async fn pump<R: AsyncRead + Unpin>(
    mut r: R,
    kind: StreamKind,
    redactor: &Redactor,
    tx: &mpsc::Sender<(StreamKind, String)>,
    terminal: bool,
) -> Result<(), RunError> {
    let mut lines = redactor.line_redactor();
    let mut chunk = vec![0u8; CHUNK];
    let mut plain = TerminalText::default();
    loop {
        let n = match r.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let text = if terminal {
            lines.push(&plain.push(&chunk[..n]))
        } else {
            lines.push(&chunk[..n])
        };
        if !text.is_empty() && tx.send((kind, text)).await.is_err() {
            return Err(RunError::Cancelled);
        }
    }
    let rest = lines.finish();
    if !rest.is_empty() && tx.send((kind, rest)).await.is_err() {
        return Err(RunError::Cancelled);
    }
    Ok(())
}

/// Removes what a terminal would interpret rather than show, from a byte stream fed in chunks
/// of any size (a sequence may span chunks): escape sequences (CSI `ESC [ ... final`, OSC and
/// the other string sequences up to BEL or `ESC \\`, two-byte `ESC x` and charset selections),
/// carriage returns and the other C0 controls except newline and tab, and DEL. Everything else,
/// UTF-8 included, passes through unchanged.
#[derive(Debug, Default)]
pub struct TerminalText {
    state: TermState,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum TermState {
    #[default]
    Text,
    Esc,
    EscIntermediate,
    Csi,
    Str,
    StrEsc,
}

impl TerminalText {
    /// The shown text of `bytes`, given everything fed before.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(bytes.len());
        for &b in bytes {
            self.state = match (self.state, b) {
                (TermState::Text, 0x1b) => TermState::Esc,
                (TermState::Text, b'\n' | b'\t') => {
                    out.push(b);
                    TermState::Text
                }
                (TermState::Text, 0x00..=0x1f | 0x7f) => TermState::Text,
                (TermState::Text, _) => {
                    out.push(b);
                    TermState::Text
                }
                (TermState::Esc, b'[') => TermState::Csi,
                (TermState::Esc, b']' | b'P' | b'X' | b'^' | b'_') => TermState::Str,
                (TermState::Esc, 0x20..=0x2f) | (TermState::EscIntermediate, 0x20..=0x2f) => {
                    TermState::EscIntermediate
                }
                (TermState::Esc | TermState::EscIntermediate, _) => TermState::Text,
                (TermState::Csi, 0x40..=0x7e) => TermState::Text,
                (TermState::Csi, _) => TermState::Csi,
                (TermState::Str, 0x07) => TermState::Text,
                (TermState::Str, 0x1b) => TermState::StrEsc,
                (TermState::Str, _) => TermState::Str,
                (TermState::StrEsc, b'\\') => TermState::Text,
                (TermState::StrEsc, 0x1b) => TermState::StrEsc,
                (TermState::StrEsc, _) => TermState::Str,
            };
        }
        out
    }
}

/// Look a program up the way `execvp` would: a name with a `/` is checked as given, anything
/// else is searched on `$PATH`. Only executable regular files count.
pub fn which(program: &str) -> Option<PathBuf> {
    if program.is_empty() {
        return None;
    }
    if program.contains('/') {
        let p = Path::new(program);
        return is_executable(p).then(|| p.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn sh(script: &str) -> Cmd {
        Cmd::new("sh").arg("-c").arg(script)
    }

    #[tokio::test]
    async fn captures_stdout_stderr_and_exit_code() {
        let out = run(
            &sh("printf out; printf err >&2; exit 3"),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        assert_eq!(out.code, 3);
        assert_eq!(out.stdout, b"out");
        assert_eq!(out.stderr, b"err");
    }

    #[tokio::test]
    async fn stdin_reaches_the_child_byte_for_byte() {
        let bytes: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
        let out = run(
            &Cmd::new("cat").stdin(bytes.clone()),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        assert_eq!(out.code, 0);
        assert_eq!(out.stdout, bytes);
    }

    #[tokio::test]
    async fn captured_output_is_capped_and_the_rest_drained() {
        let mut buf = Vec::new();
        // 3 MiB through a 1 MiB cap: the writer is never blocked, memory stays at the cap.
        let (mut w, r) = tokio::io::duplex(64 * 1024);
        let writer = tokio::spawn(async move {
            let block = vec![b'x'; 64 * 1024];
            for _ in 0..48 {
                w.write_all(&block).await.unwrap();
            }
        });
        read_capped(r, &mut buf, 1024 * 1024).await;
        writer.await.unwrap();
        let note = b"\n[megaplan-cloudd: 2097152 more bytes of output dropped; captured output is capped at 1048576 bytes]\n";
        assert_eq!(buf.len(), 1024 * 1024 + note.len());
        assert!(buf.ends_with(note));

        // A real child printing 3x the default cap: captured output stays bounded.
        let out = run(
            &sh("head -c 25165824 /dev/zero; echo done >&2"),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
        assert_eq!(out.code, 0);
        assert!(
            out.stdout.len() < MAX_CAPTURE_BYTES + 200,
            "{}",
            out.stdout.len()
        );
        assert_eq!(out.stderr, b"done\n");
    }

    #[tokio::test]
    async fn signal_death_is_minus_one() {
        let out = run(&sh("kill -9 $$"), Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(out.code, -1);
    }

    #[tokio::test]
    async fn missing_program_is_not_found() {
        let err = run(&Cmd::new("no-such-program-xyz"), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(
            err,
            RunError::NotFound {
                program: "no-such-program-xyz".into()
            }
        );
    }

    #[tokio::test]
    async fn deadline_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("grandchild-survived");
        // The grandchild would write the marker after 2s if it outlived the kill.
        let script = format!(
            "(sleep 2; touch {}) & sleep 30",
            crate::shell::quote(&marker.to_string_lossy())
        );
        let err = run(&sh(&script), Duration::from_millis(300))
            .await
            .unwrap_err();
        assert_eq!(
            err,
            RunError::Timeout {
                after: Duration::from_millis(300)
            }
        );
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(!marker.exists(), "a grandchild outlived the deadline kill");
    }

    #[tokio::test]
    async fn a_daemon_holding_the_pipes_does_not_hang_run() {
        // Had `run` waited for the backgrounded sleep (which outlives the deadline), it would
        // have returned `Timeout`; an `Ok` with the output is the proof, no clock needed.
        let out = run(&sh("(sleep 120) & echo done"), Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(out.code, 0);
        assert_eq!(out.stdout, b"done\n");
    }

    #[tokio::test]
    async fn run_detached_leaves_no_pipe_open() {
        let dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(dir.path().join("log")).unwrap();
        // As above: waiting for the sleep would end in `Timeout`, not in the exit code.
        let code = run_detached(
            &sh("(sleep 120) & echo to-log >&2; exit 4"),
            Duration::from_secs(60),
            log,
        )
        .await
        .unwrap();
        assert_eq!(code, 4);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("log")).unwrap(),
            "to-log\n"
        );
    }

    fn redactor_for(name: &str, value: &str) -> Redactor {
        let mut values = BTreeMap::new();
        values.insert(name.to_string(), value.to_string());
        Redactor::new(&[name.to_string()], &values)
    }

    async fn collect(mut rx: mpsc::Receiver<(StreamKind, String)>) -> (String, String) {
        let (mut out, mut err) = (String::new(), String::new());
        while let Some((kind, text)) = rx.recv().await {
            match kind {
                StreamKind::Stdout => out.push_str(&text),
                StreamKind::Stderr => err.push_str(&text),
            }
        }
        (out, err)
    }

    #[tokio::test]
    async fn streaming_redacts_whole_lines_and_returns_the_code() {
        let redactor = redactor_for("MY_TOKEN", "supersecretvalue123");
        let (tx, rx) = mpsc::channel(4);
        let reader = tokio::spawn(collect(rx));
        // The secret is written in two pieces so it is split across reads.
        let script =
            "printf 'a supersec'; sleep 0.2; printf 'retvalue123 b\\nlast'; echo oops >&2; exit 5";
        let code = run_streaming(&sh(script), None, &redactor, &tx)
            .await
            .unwrap();
        drop(tx);
        let (out, err) = reader.await.unwrap();
        assert_eq!(code, 5);
        assert_eq!(out, "a ***REDACTED*** b\nlast");
        assert_eq!(err, "oops\n");
    }

    #[tokio::test]
    async fn streaming_a_large_volume_completes() {
        let (tx, rx) = mpsc::channel::<(StreamKind, String)>(4);
        let reader = tokio::spawn(async move {
            let mut rx = rx;
            let mut total = 0usize;
            while let Some((_, text)) = rx.recv().await {
                total += text.len();
            }
            total
        });
        let code = run_streaming(
            &sh("yes 0123456789 | head -c 20000000"),
            Some(Duration::from_secs(60)),
            &Redactor::none(),
            &tx,
        )
        .await
        .unwrap();
        drop(tx);
        assert_eq!(code, 0);
        assert_eq!(reader.await.unwrap(), 20_000_000);
    }

    #[tokio::test]
    async fn streaming_stops_when_the_receiver_goes_away() {
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        // Had it waited for the command it would have ended `Ok`; `Cancelled` is the proof.
        let err = run_streaming(&sh("sleep 300"), None, &Redactor::none(), &tx)
            .await
            .unwrap_err();
        assert_eq!(err, RunError::Cancelled);
    }

    #[tokio::test]
    async fn streaming_deadline_is_a_timeout() {
        let (tx, _rx) = mpsc::channel(1);
        let err = run_streaming(
            &sh("sleep 30"),
            Some(Duration::from_millis(200)),
            &Redactor::none(),
            &tx,
        )
        .await
        .unwrap_err();
        assert_eq!(
            err,
            RunError::Timeout {
                after: Duration::from_millis(200)
            }
        );
    }

    #[test]
    fn display_quotes_and_masks() {
        let cmd = Cmd::new("railway")
            .args(["variables", "--service", "my svc"])
            .arg("--set")
            .secret_arg("OPENAI_API_KEY=sk-live-value")
            .stdin(b"never shown".to_vec());
        assert_eq!(
            cmd.display(),
            "railway variables --service 'my svc' --set 'OPENAI_API_KEY=***REDACTED***'"
        );
        assert_eq!(cmd.argv()[5], "OPENAI_API_KEY=sk-live-value");
        let debug = format!("{cmd:?}");
        assert!(!debug.contains("sk-live-value"), "{debug}");
        assert!(!debug.contains("never shown"), "{debug}");
    }

    #[test]
    fn which_finds_programs_on_path_and_rejects_others() {
        assert!(which("sh").is_some());
        assert_eq!(which("/bin/sh").as_deref(), Some(Path::new("/bin/sh")));
        assert_eq!(which("no-such-program-xyz"), None);
        assert_eq!(which(""), None);
        assert_eq!(which("/etc/passwd"), None, "not executable");
    }

    #[test]
    fn terminal_text_keeps_what_a_terminal_shows() {
        let raw = b"\x1b[1;32mDeploy\x1b[0m ok\r\n\x1b]0;title\x07tab\there\x1b(Bx\x1b7\x08\x7f\r\nsk-\x1b[31mlive\x1b[0m\n\xc3\xa9\x1bP q\x1b\\end";
        let want = "Deploy ok\ntab\thereX\nsk-live\n\u{e9}end".replace('X', "x");
        assert_eq!(
            String::from_utf8(TerminalText::default().push(raw)).unwrap(),
            want
        );
        // Any split into chunks gives the same text: a sequence may span reads.
        for cut in 0..raw.len() {
            let mut t = TerminalText::default();
            let mut got = t.push(&raw[..cut]);
            got.extend(t.push(&raw[cut..]));
            assert_eq!(String::from_utf8(got).unwrap(), want, "cut at {cut}");
        }
    }

    #[tokio::test]
    async fn terminal_streaming_strips_controls_before_redaction() {
        let secret = "sk-live-0123456789";
        let redactor = Redactor::new(
            &["K".to_string()],
            &std::iter::once(("K".to_string(), secret.to_string())).collect(),
        );
        // The secret is split by a colour code: only stripping first lets the redactor see it.
        let cmd = Cmd::new("printf").arg("sk-live-\\033[1m0123456789\\033[0m\\r\\n");
        let (tx, mut rx) = mpsc::channel(16);
        let code = run_streaming_terminal(&cmd, None, &redactor, &tx)
            .await
            .unwrap();
        drop(tx);
        let mut seen = String::new();
        while let Some((_, text)) = rx.recv().await {
            seen.push_str(&text);
        }
        assert_eq!((code, seen.as_str()), (0, "***REDACTED***\n"));
        let (tx, mut rx) = mpsc::channel(16);
        run_streaming(&cmd, None, &redactor, &tx).await.unwrap();
        drop(tx);
        let mut plain = String::new();
        while let Some((_, text)) = rx.recv().await {
            plain.push_str(&text);
        }
        assert!(plain.contains("\x1b[1m"), "{plain:?}");
    }
}
