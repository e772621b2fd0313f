//! Throw-away runner containers of the bench image.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use crate::util::unique_suffix;

/// Label put on every bench container so leftovers of a crashed run can be found (`docker ps -a --filter`).
pub const CONTAINER_LABEL: &str = "megaplan-e2e=1";

/// A running container, removed (`docker rm -f`) on drop.
#[derive(Debug)]
pub struct Container {
    pub name: String,
}

fn sanitize(prefix: &str) -> String {
    let cleaned: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    if cleaned.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        cleaned
    } else {
        format!("e2e{cleaned}")
    }
}

impl Container {
    /// Sets the stand-in `gh`'s answer for pull request `number` to `state` (`OPEN`, `MERGED`,
    /// ...): the file the bench's `gh` reads (tests/bench).
    pub fn set_pr(&self, number: u32, state: &str) {
        self.exec_ok(&format!(
            "mkdir -p /var/lib/gh-standin && echo {state} > /var/lib/gh-standin/pr-{number}"
        ));
    }

    /// Ends the chain's tmux session and waits until no process drives `chain start` any
    /// more: the driver's processes take their SIGHUP a moment after `tmux kill-session`
    /// returns, and a `chain --fresh` in that moment rightly refuses a live driver. The wait
    /// reads the processes' argv (as the runner's own driver check does, so a script that only
    /// mentions `chain start` is no driver), with a generous safety net: 1200 looks 0.1 s apart.
    pub fn end_chain_session(&self) {
        const DRIVERS_GONE: &str = r#"
import os, sys, time
def driving():
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        if any(argv[i:i + 2] == [b"chain", b"start"] for i in range(len(argv))):
            return True
    return False
for _ in range(1200):
    if not driving():
        sys.exit(0)
    time.sleep(0.1)
sys.exit("a chain driver outlived its tmux session")
"#;
        self.exec_ok(&format!(
            "tmux kill-session -t =megaplan-chain 2>/dev/null; python3 -c {}",
            megaplan_cloudd::shell::quote(DRIVERS_GONE)
        ));
    }

    /// `docker run -d --network none --label megaplan-e2e=1 --name <prefix>-<unique> [docker_args] image command`.
    pub fn run(image: &str, prefix: &str, docker_args: &[&str], command: &[&str]) -> Container {
        let name = format!("{}-{}", sanitize(prefix), unique_suffix());
        let out = Command::new("docker")
            .args([
                "run",
                "-d",
                "--network",
                "none",
                "--label",
                CONTAINER_LABEL,
                "--name",
                &name,
                // The stand-in core starts instantly in tests (its default is as slow as the
                // real core; the benchmark sets that back). A later `-e` in docker_args wins.
                "-e",
                "MEGAPLAN_STANDIN_IMPORT_SECONDS=0",
            ])
            .args(docker_args)
            .arg(image)
            .args(command)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run docker: {e}"));
        assert!(
            out.status.success(),
            "docker run {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Container { name }
    }

    /// `docker exec -i NAME bash -lc SCRIPT` with empty stdin.
    pub fn exec(&self, script: &str) -> Output {
        self.exec_with_stdin(script, b"")
    }

    /// Like [`Container::exec`], feeding `stdin` to the script.
    pub fn exec_with_stdin(&self, script: &str, stdin: &[u8]) -> Output {
        let mut child = Command::new("docker")
            .args(["exec", "-i", &self.name, "bash", "-lc", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run docker exec: {e}"));
        let mut input = child.stdin.take();
        let data = stdin.to_vec();
        // A writer thread, so a script that does not read its stdin cannot deadlock us on a full pipe.
        let writer = std::thread::spawn(move || {
            if let Some(pipe) = input.as_mut() {
                let _ = pipe.write_all(&data);
            }
            drop(input);
        });
        let out = child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("docker exec in {} failed: {e}", self.name));
        let _ = writer.join();
        out
    }

    /// Runs `script` and panics (with both streams) unless it exits 0; returns stdout as text.
    pub fn exec_ok(&self, script: &str) -> String {
        let out = self.exec(script);
        assert!(
            out.status.success(),
            "script failed in {} ({}):\n{script}\n--- stdout\n{}\n--- stderr\n{}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Writes `content` to `path` in the container (parent directories created).
    pub fn write_file(&self, path: &str, content: &[u8]) {
        let out = Command::new("docker")
            .args([
                "exec",
                "-i",
                &self.name,
                "sh",
                "-c",
                "mkdir -p \"$(dirname \"$1\")\" && cat > \"$1\"",
                "sh",
                path,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                if let Some(mut pipe) = child.stdin.take() {
                    pipe.write_all(content)?;
                }
                child.wait_with_output()
            })
            .unwrap_or_else(|e| panic!("cannot write {path} in {}: {e}", self.name));
        assert!(
            out.status.success(),
            "writing {path} in {} failed: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Contents of `path` in the container, or `None` when it cannot be read.
    pub fn read_file(&self, path: &str) -> Option<Vec<u8>> {
        let out = Command::new("docker")
            .args(["exec", &self.name, "cat", "--", path])
            .stdin(Stdio::null())
            .output()
            .ok()?;
        out.status.success().then_some(out.stdout)
    }

    /// `read_file` parsed as JSON.
    pub fn read_json(&self, path: &str) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.read_file(path)?).ok()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

#[cfg(test)]
mod tests {
    use super::sanitize;

    #[test]
    fn container_names_are_docker_safe() {
        assert_eq!(sanitize("smoke-ssh_1.x"), "smoke-ssh_1.x");
        assert_eq!(sanitize("a b/c:d"), "a-b-c-d");
        assert_eq!(sanitize("-lead"), "e2e-lead");
        assert_eq!(sanitize(""), "e2e");
    }
}
