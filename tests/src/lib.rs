//! Offline end-to-end test bench for megaplan-cloudd.
//!
//! What it provides (see `tests/bench/README.md`):
//! - [`bench()`]: a Docker engine plus the test runner image (debootstrap'd Debian with tmux, git, python3 and
//!   the STAND-IN megaplan core, `gh`, `pip`, `codex`, `npm`), built once per machine and cached by content hash.
//! - [`Container`]: throw-away runner containers (`--network none`).
//! - [`Sshd`]: a private OpenSSH server on loopback whose "remote host" is this machine.
//! - [`Daemon`] / [`bin`]: the real `megaplan-cloudd` / `megaplan-cloudctl` binaries on a temp socket.
//! - [`git_bare_repo`] / [`repo_in_container`]: tiny git remotes for `repo.url`.
//! - [`railway`]: the real Railway CLI against a STAND-IN for Railway's service, in a private network namespace.
//! - [`rig`]: the ssh rig (`SshRig`) and `Run`, which reads what the client printed as the api types.
//! - [`receiver`]: the STAND-IN webhook receiver; [`pane`]: a real terminal (a tmux pane) for renderers.
//!
//! Tests call [`bench()`] first: when the machine cannot provide Docker it returns `None` after printing
//! `SKIP: <why>` — unless `MEGAPLAN_E2E_REQUIRED=1` (set by `.ci/run`), where it panics instead.

pub mod conformance;
mod container;
mod daemon;
mod git;
mod image;
pub mod kube;
pub mod pane;
pub mod railway;
pub mod receiver;
pub mod rig;
mod sshd;
pub mod tls;
pub mod util;

use std::path::PathBuf;
use std::sync::OnceLock;

pub use container::Container;
pub use daemon::{Daemon, bin, unit_with_built_daemon};
pub use git::{git_bare_repo, repo_in_container};
pub use sshd::Sshd;
pub use util::{unique_suffix, wait_until};

/// Environment variable that turns every "cannot provide the bench" skip into a failure.
pub const E2E_REQUIRED_ENV: &str = "MEGAPLAN_E2E_REQUIRED";

/// True when `MEGAPLAN_E2E_REQUIRED=1`: missing prerequisites fail the test instead of skipping it.
pub fn e2e_required() -> bool {
    std::env::var(E2E_REQUIRED_ENV).is_ok_and(|v| v == "1")
}

/// The shared bench: the Docker engine is answering and the runner image exists.
#[derive(Debug)]
pub struct Bench {
    /// Docker image tag of the test runner image (`megaplan-e2e:<hash>`).
    pub image: String,
}

/// The shared bench, built once per machine (see the module docs). `None` means "skip this test".
pub fn bench() -> Option<&'static Bench> {
    static BENCH: OnceLock<Result<Bench, String>> = OnceLock::new();
    let result = BENCH.get_or_init(|| image::ensure_bench().map(|image| Bench { image }));
    match result {
        Ok(b) => {
            report_outcome("ran", None);
            Some(b)
        }
        Err(why) => {
            skip_or_panic(why);
            None
        }
    }
}

/// Environment variable naming a file where each end-to-end test appends whether it ran on the
/// bench or was skipped (and why), so the test script can say so at the end (libtest hides a
/// passing test's output).
pub const E2E_REPORT_ENV: &str = "MEGAPLAN_E2E_REPORT";

/// Appends `<outcome>\t<test name>[\t<why>]` to the report file, when one is named.
fn report_outcome(outcome: &str, why: Option<&str>) {
    use std::io::Write;
    let Some(path) = std::env::var_os(E2E_REPORT_ENV) else {
        return;
    };
    let test = std::thread::current()
        .name()
        .unwrap_or("unnamed")
        .to_string();
    let why = why.map(|w| format!("\t{}", w.replace(['\n', '\t'], " ")));
    let line = format!("{outcome}\t{test}{}\n", why.unwrap_or_default());
    // One short O_APPEND write per line: lines from parallel tests never interleave.
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = f.write_all(line.as_bytes());
    }
}

/// Panics with `why` when the bench is required, else prints the skip line.
pub fn skip_or_panic(why: &str) {
    if e2e_required() {
        panic!("the e2e bench is required ({E2E_REQUIRED_ENV}=1) but unavailable: {why}");
    }
    report_outcome("skipped", Some(why));
    eprintln!("SKIP: {why}");
}

impl Bench {
    /// A running container of the bench image (`sleep infinity`), removed on drop.
    pub fn container(&self, prefix: &str) -> Container {
        Container::run(&self.image, prefix, &[], &["sleep", "infinity"])
    }

    /// A running container with extra `docker run` arguments (placed before the image) and a command.
    /// `--network none` is always added.
    pub fn container_with(
        &self,
        prefix: &str,
        docker_args: &[&str],
        command: &[&str],
    ) -> Container {
        Container::run(&self.image, prefix, docker_args, command)
    }
}

/// Directory of the bench sources (`tests/bench`).
pub fn bench_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bench")
}

/// A provider output channel whose text a task collects: `(stdout, stderr)` when the sender
/// side is dropped. Shared by the provider end-to-end tests.
pub fn output_collector() -> (
    megaplan_cloudd::provider::OutTx,
    tokio::task::JoinHandle<(String, String)>,
) {
    use megaplan_cloudd::process::StreamKind;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(StreamKind, String)>(64);
    let task = tokio::spawn(async move {
        let (mut out, mut err) = (String::new(), String::new());
        while let Some((kind, text)) = rx.recv().await {
            match kind {
                StreamKind::Stdout => out.push_str(&text),
                StreamKind::Stderr => err.push_str(&text),
            }
        }
        (out, err)
    });
    (tx, task)
}
