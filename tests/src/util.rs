//! Small process, naming and locking helpers shared by the bench modules.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A suffix unique across test threads and test binaries: `<pid>-<counter>-<nanos mod 1e6>`.
pub fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{}-{n}-{}", std::process::id(), nanos % 1_000_000)
}

/// The least time [`wait_until`] waits before it gives up. CI shares two cores with whatever
/// else runs, so an event the test waits for can be late by tens of seconds there; the wait is a
/// safety net against a hang, never a measurement (speed lives in the benchmark program).
pub const SAFETY_NET_FLOOR: Duration = Duration::from_secs(90);

/// Polls `check` every 50 ms until it returns true or the safety net runs out: `timeout` times
/// three, and never less than [`SAFETY_NET_FLOOR`]. Returns the last result. Tests must not use
/// it to assert that something is fast; they assert what happened (counts, states, outputs).
pub fn wait_until(timeout: Duration, check: impl FnMut() -> bool) -> bool {
    poll_until(safety_net(timeout), check)
}

/// The generous deadline used for `timeout`: three times it, at least [`SAFETY_NET_FLOOR`].
pub fn safety_net(timeout: Duration) -> Duration {
    (timeout * 3).max(SAFETY_NET_FLOOR)
}

/// Polls `check` every 50 ms for exactly up to `timeout`. Only for waits whose expiry is the
/// expected, normal outcome (a grace period before a kill); event waits use [`wait_until`].
pub fn poll_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs a command to completion; `Err` names the program when it cannot be spawned.
pub fn run(cmd: &mut Command) -> Result<Output, String> {
    cmd.output()
        .map_err(|e| format!("cannot run {:?}: {e}", cmd.get_program()))
}

/// Runs a command and requires exit 0; the error carries the command line, status and stderr.
pub fn run_ok(cmd: &mut Command) -> Result<Output, String> {
    let out = run(cmd)?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "{:?} {:?} failed ({}): {}{}",
            cmd.get_program(),
            cmd.get_args().collect::<Vec<_>>(),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        ))
    }
}

/// An exclusive `flock` held until drop (serialises image builds across test binaries).
pub struct FileLock {
    _file: File,
}

impl FileLock {
    pub fn acquire(path: &Path) -> Result<FileLock, String> {
        let file = File::options()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| format!("cannot open lock file {}: {e}", path.display()))?;
        // SAFETY: flock on a valid, owned file descriptor; blocking until the lock is granted.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc != 0 {
            return Err(format!(
                "flock {} failed: {}",
                path.display(),
                std::io::Error::last_os_error()
            ));
        }
        Ok(FileLock { _file: file })
    }
}

/// Run `sqlite3 <db> <sql>` (the CLI, so tests read the file as any other program would) and
/// return its trimmed stdout; panics when it fails.
pub fn sqlite(db: &Path, sql: &str) -> String {
    let out = Command::new("sqlite3")
        .arg(db)
        .arg(sql)
        .output()
        .expect("sqlite3 must be installed (.ci/run installs it)");
    assert!(out.status.success(), "sqlite3 {sql} failed: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Raw HTTP/1.1 over a Unix socket, for requests the client would never send; returns the whole
/// response text (the server closes: send `Connection: close`).
pub fn raw_http(socket: &Path, request: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket)
        .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", socket.display()));
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    // The server may answer (413) and close before a huge body is fully written.
    let _ = s.write_all(request);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// `POST /v1/clouds` with a JSON body of `bytes` bytes (a declared `Content-Length`), straight
/// on the socket: the answer, for the tests that check a body over the limit is refused (413).
pub fn post_oversized(socket: &Path, bytes: usize) -> String {
    let mut req = format!(
        "POST /v1/clouds HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {bytes}\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    req.resize(req.len() + bytes, b'a');
    raw_http(socket, &req)
}

/// `docker <args>`'s stdout, trimmed (empty when it fails: callers compare it to what they expect).
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("run docker");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Every regular file under `dir` (recursively, symlinks not followed, `skip` left out) whose
/// bytes contain `needle`; `scanned` counts the files read, so a caller can show the scan saw
/// something.
pub fn files_containing(
    dir: &Path,
    needle: &[u8],
    skip: &[&Path],
    scanned: &mut usize,
) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return hits;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if skip.iter().any(|s| path == *s) {
            continue;
        }
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            hits.extend(files_containing(&path, needle, skip, scanned));
        } else if meta.is_file() {
            let bytes = std::fs::read(&path).unwrap_or_default();
            *scanned += 1;
            if bytes.windows(needle.len()).any(|w| w == needle) {
                hits.push(path);
            }
        }
    }
    hits
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn unique_suffixes_do_not_repeat_within_a_process() {
        let all: HashSet<String> = (0..1000).map(|_| unique_suffix()).collect();
        assert_eq!(all.len(), 1000);
        assert!(
            all.iter()
                .all(|s| s.starts_with(&format!("{}-", std::process::id())))
        );
    }

    #[test]
    fn wait_until_reports_timeout_and_success() {
        assert!(!poll_until(Duration::from_millis(120), || false));
        assert_eq!(safety_net(Duration::from_secs(1)), SAFETY_NET_FLOOR);
        assert_eq!(
            safety_net(Duration::from_secs(100)),
            Duration::from_secs(300)
        );
        let mut n = 0;
        assert!(wait_until(Duration::from_secs(5), || {
            n += 1;
            n == 3
        }));
    }

    #[test]
    fn file_lock_is_exclusive_until_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.lock");
        let held = FileLock::acquire(&path).expect("first lock");
        let probe = File::options()
            .read(true)
            .write(true)
            .open(&path)
            .expect("open");
        let try_lock = || {
            // SAFETY: flock on an owned, open descriptor.
            unsafe { libc::flock(probe.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }
        };
        assert_ne!(
            try_lock(),
            0,
            "second lock must fail while the first is held"
        );
        drop(held);
        assert_eq!(try_lock(), 0, "lock is free after drop");
    }

    #[test]
    fn run_ok_reports_program_status_and_stderr() {
        let err =
            run_ok(Command::new("sh").args(["-c", "echo nope >&2; exit 4"])).expect_err("fails");
        assert!(
            err.contains("\"sh\"") && err.contains("nope") && err.contains('4'),
            "{err}"
        );
        assert!(run(&mut Command::new("/nonexistent/binary")).is_err());
    }
}
