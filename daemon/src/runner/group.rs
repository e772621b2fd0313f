//! Runner commands that can be ended from outside: each remote command runs in a process group
//! of its own inside the container and records that group under a per-call name, so the daemon
//! can kill it when its client goes away or its deadline passes. Neither sshd nor Docker
//! signals a `docker exec` command whose client left: without this, `exec` of a command that
//! prints without end keeps running in the container until the runner-side `timeout`.
//!
//! The command runs as `timeout -k 5 <secs> sh -c <WRAPPER> sh <pid file> <script>`: coreutils
//! `timeout` makes itself a process-group leader, the wrapper writes that group id (its parent,
//! `$PPID`) to the pid file, runs `bash -lc <script>` and removes the file when the script
//! ends. [`kill_words`] is the command the daemon sends (through the same session) to end the
//! group: it kills when the group leader is still the `timeout` naming this very pid file, and
//! when the leader is gone but members of its group remain (`timeout` exits as soon as its own
//! child dies, e.g. of the TERM at the deadline, leaving a grandchild that ignores TERM; Linux
//! never hands out a pid still in use as a group id, so that group is this call's). A live leader
//! that does not name the file is a reused pid and is never hit. It removes the file, and drops
//! the files of groups that no longer exist.

use crate::shell;
use std::sync::LazyLock;

/// Folder of the per-call pid files in the runner.
pub const CALLS_DIR: &str = "/tmp/megaplan-cloudd-calls";

/// Records the group of the `timeout` running it (`$PPID`) in `$1`, runs `bash -lc "$2"`,
/// removes the file and exits with the script's status. Failing to write the file (read-only
/// `/tmp`) does not stop the command; it can then only be ended by its deadline.
fn wrapper() -> &'static str {
    static TEXT: LazyLock<String> = LazyLock::new(|| {
        format!(
            "f=$1; mkdir -p {dir} 2>/dev/null && echo \"$PPID\" > \"$f\" 2>/dev/null; bash -lc \"$2\"; rc=$?; rm -f \"$f\"; exit \"$rc\"",
            dir = shell::quote(CALLS_DIR)
        )
    });
    &TEXT
}

/// Kills the group recorded in `$1` when its leader's command line still names `$1`, removes
/// the file, and removes the files of groups that are gone (neither the leader nor a member
/// lives). Always exits 0.
fn killer() -> &'static str {
    static TEXT: LazyLock<String> = LazyLock::new(|| {
        format!(
            "f=$1; if [ -f \"$f\" ]; then p=$(cat \"$f\" 2>/dev/null); rm -f \"$f\"; \
             case $p in ''|*[!0-9]*) ;; *) if [ -d \"/proc/$p\" ]; then \
             case $(tr '\\000' ' ' < \"/proc/$p/cmdline\" 2>/dev/null) in \
             *\"$f\"*) kill -s KILL -- \"-$p\" 2>/dev/null ;; esac; \
             else kill -s KILL -- \"-$p\" 2>/dev/null; fi ;; esac; fi; \
             for g in {dir}/*.pid; do [ -f \"$g\" ] || continue; q=$(cat \"$g\" 2>/dev/null); \
             case $q in ''|*[!0-9]*) rm -f \"$g\" ;; *) [ -d \"/proc/$q\" ] || \
             kill -0 -- \"-$q\" 2>/dev/null || rm -f \"$g\" ;; esac; done; exit 0",
            dir = shell::quote(CALLS_DIR)
        )
    });
    &TEXT
}

/// One remote command's handle in the runner: the pid file naming its process group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerCall {
    pub pid_file: String,
}

impl RunnerCall {
    /// A fresh call with a random name (16 hex characters).
    pub fn new() -> Self {
        RunnerCall {
            pid_file: format!("{CALLS_DIR}/{:016x}.pid", rand::random::<u64>()),
        }
    }

    /// The argv words running `bash -lc <script>` under `bounded_by` (the `timeout -k 5 <secs>`
    /// words) with the group recorded: `timeout … sh -c <wrapper> sh <pid file> <script>`.
    pub fn wrap(&self, bounded_by: &[String], script: &str) -> Vec<String> {
        let mut w: Vec<String> = bounded_by.to_vec();
        w.extend([
            "sh".to_string(),
            "-c".to_string(),
            wrapper().to_string(),
            "sh".to_string(),
            self.pid_file.clone(),
            script.to_string(),
        ]);
        w
    }

    /// The argv words, run in the runner, that kill this call's process group.
    pub fn kill_words(&self) -> Vec<String> {
        vec![
            "sh".to_string(),
            "-c".to_string(),
            killer().to_string(),
            "sh".to_string(),
            self.pid_file.clone(),
        ]
    }
}

impl Default for RunnerCall {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    fn alive(pid: &str) -> bool {
        std::path::Path::new(&format!("/proc/{pid}")).exists()
            && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_default()
                .contains(") Z ")
    }

    /// On this machine, with the real `timeout`, `sh` and `bash`: the wrapper passes stdin and
    /// the exit status through and leaves no pid file; a running call is killed whole (its
    /// grandchild included) by the kill words; a stale pid file is never acted on.
    #[test]
    fn a_wrapped_command_records_its_group_and_the_kill_ends_it() {
        let timeout: Vec<String> = ["timeout", "-k", "5", "60"].map(String::from).to_vec();
        let run = |words: &[String], stdin: &[u8]| {
            use std::io::Write;
            let mut c = Command::new(&words[0])
                .args(&words[1..])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            c.stdin.take().unwrap().write_all(stdin).unwrap();
            c.wait_with_output().unwrap()
        };

        let call = RunnerCall::new();
        let out = run(&call.wrap(&timeout, "cat; exit 7"), b"in'put $x");
        assert_eq!(out.status.code(), Some(7));
        assert_eq!(out.stdout, b"in'put $x");
        assert!(!std::path::Path::new(&call.pid_file).exists());

        // A running call: a grandchild prints its pid, then everything sleeps.
        let call = RunnerCall::new();
        let words = call.wrap(&timeout, "sleep 300 & echo $!; wait");
        let mut child = Command::new(&words[0])
            .args(&words[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let grandchild = line.trim().to_string();
        assert!(alive(&grandchild));
        assert_eq!(
            std::fs::read_to_string(&call.pid_file).unwrap().trim(),
            child.id().to_string(),
            "the group recorded is the timeout's"
        );
        let k = call.kill_words();
        let out = Command::new(&k[0]).args(&k[1..]).output().unwrap();
        assert_eq!(out.status.code(), Some(0));
        child.wait().unwrap();
        let mut gone = false;
        for _ in 0..2400 {
            if !alive(&grandchild) {
                gone = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert!(gone, "the grandchild {grandchild} outlived the kill");
        assert!(!std::path::Path::new(&call.pid_file).exists());

        // The deadline's TERM ended the wrapper, so `timeout` (the group leader) exited at once;
        // a grandchild that ignores TERM lives on in the leaderless group until the kill.
        let short: Vec<String> = ["timeout", "-k", "60", "1"].map(String::from).to_vec();
        let call = RunnerCall::new();
        let words = call.wrap(
            &short,
            "trap '' TERM; sleep 300 & echo $!; while :; do sleep 1; done",
        );
        let mut child = Command::new(&words[0])
            .args(&words[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let group = child.id();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let survivor = line.trim().to_string();
        assert_eq!(child.wait().unwrap().code(), Some(124), "the timeout fired");
        assert!(
            alive(&survivor),
            "the TERM-ignoring grandchild outlived its leader"
        );
        let k = call.kill_words();
        Command::new(&k[0]).args(&k[1..]).output().unwrap();
        let mut gone = false;
        // A generous safety net (2 min): the kill is signalled at once, but a loaded machine
        // may take long to reap.
        for _ in 0..2400 {
            if !alive(&survivor) {
                gone = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        if !gone {
            // Never leave the survivors running after a failed test.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{group}")])
                .status();
        }
        assert!(gone, "the leaderless group's {survivor} outlived the kill");

        // A stale file naming a live process that is not this call's: removed, nothing killed.
        let mut bystander = Command::new("sleep").arg("300").spawn().unwrap();
        let stale = RunnerCall::new();
        std::fs::create_dir_all(CALLS_DIR).unwrap();
        std::fs::write(&stale.pid_file, format!("{}\n", bystander.id())).unwrap();
        let k = stale.kill_words();
        Command::new(&k[0]).args(&k[1..]).output().unwrap();
        assert!(
            bystander.try_wait().unwrap().is_none(),
            "a bystander was killed"
        );
        assert!(!std::path::Path::new(&stale.pid_file).exists());
        bystander.kill().unwrap();
        bystander.wait().unwrap();
    }
}
