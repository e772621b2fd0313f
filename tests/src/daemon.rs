//! The real `megaplan-cloudd` on a temp socket, and `megaplan-cloudctl` pointed at it.

use std::fs;
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use crate::util::wait_until;

/// Socket path variable read by both binaries.
pub const SOCKET_ENV: &str = "MEGAPLAN_CLOUDD_SOCKET";
/// Local state root variable (`~/.megaplan/cloud` by default).
pub const HOME_ENV: &str = "MEGAPLAN_CLOUD_HOME";

fn target_candidates() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    // The test executable lives in target/<profile>/deps/; its ancestors hold the profile dir first.
    if let Ok(exe) = std::env::current_exe() {
        dirs.extend(exe.ancestors().skip(1).map(Path::to_path_buf));
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        let target = PathBuf::from(target);
        dirs.push(target.join("debug"));
        dirs.push(target.join("release"));
    }
    dirs
}

/// Path of a workspace binary (`megaplan-cloudd`, `megaplan-cloudctl`); builds nothing.
pub fn bin(name: &str) -> PathBuf {
    target_candidates()
        .into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("binary {name} not found next to the test executable; run `cargo build --workspace --bins` first")
        })
}

/// A running daemon; `Drop` sends SIGTERM, then SIGKILL after 5 s.
#[derive(Debug)]
pub struct Daemon {
    /// Root of this daemon's files (`home/`, `run/`, `daemon.log`).
    pub dir: PathBuf,
    /// `MEGAPLAN_CLOUD_HOME`.
    pub home: PathBuf,
    /// `MEGAPLAN_CLOUDD_SOCKET`.
    pub socket: PathBuf,
    /// The daemon's stdout+stderr, appended across restarts.
    pub log: PathBuf,
    program: PathBuf,
    env: Vec<(String, String)>,
    args: Vec<String>,
    child: Option<Child>,
    tmp: Option<tempfile::TempDir>,
}

fn owned_env(extra_env: &[(&str, &str)]) -> Vec<(String, String)> {
    extra_env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

impl Daemon {
    /// Starts a daemon in a fresh temp dir (removed on drop unless [`Daemon::keep_dir`]).
    pub fn start(extra_env: &[(&str, &str)], args: &[&str]) -> Daemon {
        Daemon::start_program(&bin("megaplan-cloudd"), extra_env, args)
    }

    /// Like [`Daemon::start`] with another executable in place of `megaplan-cloudd` (bench self-tests, or a
    /// daemon built elsewhere). It gets the same env and must answer on `$MEGAPLAN_CLOUDD_SOCKET`.
    pub fn start_program(program: &Path, extra_env: &[(&str, &str)], args: &[&str]) -> Daemon {
        let tmp = tempfile::Builder::new()
            .prefix("megaplan-e2e-daemon")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temp dir: {e}"));
        let mut d = Daemon::new(
            program.to_path_buf(),
            tmp.path().to_path_buf(),
            extra_env,
            args,
        );
        d.tmp = Some(tmp);
        d.spawn();
        d
    }

    /// Starts a daemon on existing dirs (e.g. a restart after `kill9` of another instance); `dir` is kept.
    pub fn start_in(dir: PathBuf, extra_env: &[(&str, &str)], args: &[&str]) -> Daemon {
        let mut d = Daemon::new(bin("megaplan-cloudd"), dir, extra_env, args);
        d.spawn();
        d
    }

    /// [`Daemon::start_in`] with another executable (see [`Daemon::start_program`]).
    pub fn start_program_in(
        program: &Path,
        dir: PathBuf,
        extra_env: &[(&str, &str)],
        args: &[&str],
    ) -> Daemon {
        let mut d = Daemon::new(program.to_path_buf(), dir, extra_env, args);
        d.spawn();
        d
    }

    fn new(program: PathBuf, dir: PathBuf, extra_env: &[(&str, &str)], args: &[&str]) -> Daemon {
        let home = dir.join("home");
        let run = dir.join("run");
        for d in [&home, &run] {
            // Private, as the daemon requires of its socket folder (it never chmods one).
            std::os::unix::fs::DirBuilderExt::mode(fs::DirBuilder::new().recursive(true), 0o700)
                .create(d)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", d.display()));
        }
        Daemon {
            socket: run.join("cloudd.sock"),
            log: dir.join("daemon.log"),
            home,
            dir,
            program,
            env: owned_env(extra_env),
            args: args.iter().map(|s| (*s).to_owned()).collect(),
            child: None,
            tmp: None,
        }
    }

    fn spawn(&mut self) {
        let log = fs::File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", self.log.display()));
        let log_err = log
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot dup the daemon log handle: {e}"));
        let child = Command::new(&self.program)
            .args(&self.args)
            .env(HOME_ENV, &self.home)
            .env(SOCKET_ENV, &self.socket)
            .env_remove("XDG_RUNTIME_DIR")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.program.display()));
        self.child = Some(child);
        let socket = self.socket.clone();
        let mut exited = None;
        let up = wait_until(Duration::from_secs(20), || {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                exited = Some(status);
                return true;
            }
            UnixStream::connect(&socket).is_ok()
        });
        if let Some(status) = exited {
            self.child = None;
            panic!(
                "megaplan-cloudd exited during start-up ({status}); log {}:\n{}",
                self.log.display(),
                fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
        assert!(
            up,
            "megaplan-cloudd did not answer on {} within 20 s; log:\n{}",
            self.socket.display(),
            fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    /// Process id of the running daemon.
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .map(Child::id)
            .unwrap_or_else(|| panic!("the daemon is not running"))
    }

    /// SIGKILL, no clean-up by the daemon (crash simulation).
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait (SIGKILL after 20 s); returns how the daemon ended.
    pub fn terminate(&mut self) -> ExitStatus {
        // Generous: the daemon's own grace period decides when it stops; this only keeps a
        // wedged daemon from holding the test forever (it is then killed and the exit status
        // shows the signal, which fails the test's exit-code check).
        self.stop_with_grace(crate::util::safety_net(Duration::from_secs(20)))
    }

    fn stop_with_grace(&mut self, grace: Duration) -> ExitStatus {
        let Some(mut child) = self.child.take() else {
            return ExitStatus::from_raw(0);
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let mut status = None;
        // The grace period running out is a normal outcome here (then: kill), so poll for
        // exactly that long.
        crate::util::poll_until(grace, || {
            status = child.try_wait().ok().flatten();
            status.is_some()
        });
        match status {
            Some(s) => s,
            None => {
                let _ = child.kill();
                child
                    .wait()
                    .unwrap_or_else(|e| panic!("cannot reap megaplan-cloudd: {e}"))
            }
        }
    }

    /// Stops (SIGTERM) and starts again on the same dirs with the same env and args.
    pub fn restart(&mut self) {
        self.terminate();
        self.spawn();
    }

    /// Keeps the temp dir on disk after drop (for post-mortem or a later [`Daemon::start_in`]).
    pub fn keep_dir(&mut self) -> PathBuf {
        if let Some(tmp) = self.tmp.take() {
            let _ = tmp.keep();
        }
        self.dir.clone()
    }

    /// The `megaplan-cloudctl args` command [`Daemon::ctl`] runs, for callers that spawn it.
    pub fn ctl_command(&self, cwd: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(bin("megaplan-cloudctl"));
        c.args(args)
            .current_dir(cwd)
            .env(SOCKET_ENV, &self.socket)
            .env(HOME_ENV, &self.home)
            .env_remove("XDG_RUNTIME_DIR")
            .stdin(Stdio::null());
        c
    }

    /// Runs `megaplan-cloudctl args` in `cwd` against this daemon, with extra env; stdin is empty.
    pub fn ctl(&self, cwd: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
        Command::new(bin("megaplan-cloudctl"))
            .args(args)
            .current_dir(cwd)
            .env(SOCKET_ENV, &self.socket)
            .env(HOME_ENV, &self.home)
            .env_remove("XDG_RUNTIME_DIR")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run megaplan-cloudctl: {e}"))
    }

    /// Contents of the daemon log so far (for assertion messages).
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop_with_grace(Duration::from_secs(5));
    }
}

/// The repository's systemd unit written into `dir` with `ExecStart` pointing at the built
/// daemon (systemd-analyze wants the binary to exist). Returns the unit's path.
pub fn unit_with_built_daemon(dir: &Path) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root");
    let unit = fs::read_to_string(root.join("systemd/megaplan-cloudd.service"))
        .unwrap_or_else(|e| panic!("cannot read the systemd unit: {e}"));
    let path = dir.join("megaplan-cloudd.service");
    fs::write(
        &path,
        unit.replace(
            "/usr/local/bin/megaplan-cloudd",
            bin("megaplan-cloudd").to_str().unwrap_or_default(),
        ),
    )
    .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binary_panics_with_the_build_hint() {
        let err =
            std::panic::catch_unwind(|| bin("megaplan-no-such-binary")).expect_err("must panic");
        let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(msg.contains("cargo build --workspace --bins"), "{msg}");
    }

    #[test]
    fn target_candidates_start_next_to_the_test_executable() {
        let exe = std::env::current_exe().expect("exe");
        let first = target_candidates().into_iter().next().expect("a candidate");
        assert_eq!(Some(first.as_path()), exe.parent());
    }
}
