//! The railway bench: the REAL Railway CLI (5.71.0, a debug build) against a STAND-IN for
//! Railway's service only (`tests/bench/railway-service`, whose header lists the CLI facts it is
//! modelled on), plus a loopback sshd reached as `ssh.railway.com` in the relay's place, whose
//! sessions run in a bench runner container.
//!
//! Nothing may leave the machine: every railway test runs in a network namespace of its own
//! with only loopback ([`in_private_namespace`] re-runs the test binary there, as root, with
//! `unshare --net --mount`). The same private mount namespace holds the test user's ssh config
//! (a tmpfs over `~/.ssh` of the account, which OpenSSH reads from the password database, not
//! `$HOME`) and an `/etc/hosts` that maps `backboard.railway.com` and `ssh.railway.com` to
//! 127.0.0.1: the CLI's upload and subscriptions go to `https://backboard.railway.com` whatever
//! `RAILWAY_BACKBOARD_URL` says.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::util::wait_until;
use crate::{Bench, Container, Sshd, skip_or_panic};

/// The Railway CLI version the provider is written against.
pub const RAILWAY_CLI_VERSION: &str = "5.71.0";

/// Where `.ci/run` installs (and caches) the debug build of the real CLI.
pub const RAILWAY_CLI_ROOT: &str = "/var/tmp/megaplan-e2e/railway-5.71.0";

/// The account token the stand-in accepts (`RAILWAY_API_TOKEN`).
pub const API_TOKEN: &str = "e2e-api-token";

/// Set (to the outer test's scratch dir) inside the private namespace.
const NS_ENV: &str = "MEGAPLAN_RAILWAY_NS";

/// The real CLI: `$MEGAPLAN_RAILWAY_CLI`, else the `.ci/run` install, else `railway` on `PATH`,
/// when its `--version` is [`RAILWAY_CLI_VERSION`]. Prints the version. `None` (after SKIP, or a
/// panic under `MEGAPLAN_E2E_REQUIRED=1`) when there is none.
pub fn real_cli() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Ok(p) = std::env::var("MEGAPLAN_RAILWAY_CLI") {
        candidates.push(PathBuf::from(p));
    }
    candidates.push(Path::new(RAILWAY_CLI_ROOT).join("bin/railway"));
    if let Some(p) = megaplan_cloudd::process::which("railway") {
        candidates.push(p);
    }
    let mut seen = Vec::new();
    for c in candidates {
        let Ok(out) = Command::new(&c).arg("--version").output() else {
            continue;
        };
        let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if out.status.success() && version.ends_with(RAILWAY_CLI_VERSION) {
            eprintln!("railway CLI: {} ({version})", c.display());
            return Some(c);
        }
        seen.push(format!("{} says {version:?}", c.display()));
    }
    skip_or_panic(&format!(
        "the real Railway CLI {RAILWAY_CLI_VERSION} is not installed (.ci/run installs it: cargo install railwayapp --locked --debug --version {RAILWAY_CLI_VERSION} --root {RAILWAY_CLI_ROOT}){}",
        if seen.is_empty() {
            String::new()
        } else {
            format!("; found: {}", seen.join(", "))
        }
    ));
    None
}

/// True inside the private namespace: run the test. Outside, re-runs test `name` of this test
/// binary there, asserts it passed, and returns false (the caller returns). `name` is the
/// test's full path in the e2e binary (`module::test`), as `--exact` matches it.
pub fn in_private_namespace(name: &str) -> bool {
    if inside_private_namespace() {
        return true;
    }
    let exe = std::env::current_exe().expect("test binary");
    let args = [name, "--exact", "--nocapture", "--test-threads=1"];
    match run_in_private_namespace(&exe, &args) {
        Err(why) => skip_or_panic(&why),
        Ok(status) => assert!(
            status.success(),
            "{name} failed inside its network namespace ({status}); its output is above"
        ),
    }
    false
}

/// True in a process started by [`run_in_private_namespace`].
pub fn inside_private_namespace() -> bool {
    std::env::var_os(NS_ENV).is_some()
}

/// Runs `program args` in a network namespace with only loopback and a private mount namespace
/// holding the bench's `/etc/hosts` and a tmpfs over the account's `~/.ssh` (root only).
/// `Err` says why it cannot.
pub fn run_in_private_namespace(
    program: &Path,
    args: &[&str],
) -> Result<std::process::ExitStatus, String> {
    // SAFETY: getuid(2) cannot fail.
    if unsafe { libc::getuid() } != 0 {
        return Err("the railway e2e bench needs root (unshare --net --mount)".to_owned());
    }
    for tool in ["unshare", "ip", "mount", "openssl", "script"] {
        if megaplan_cloudd::process::which(tool).is_none() {
            return Err(format!("{tool} is missing (util-linux, iproute2, openssl)"));
        }
    }
    let scratch = tempfile::Builder::new()
        .prefix("megaplan-e2e-railway-ns")
        .tempdir()
        .map_err(|e| format!("temp dir: {e}"))?;
    let hosts = scratch.path().join("hosts");
    fs::write(
        &hosts,
        "127.0.0.1 localhost backboard.railway.com ssh.railway.com\n::1 localhost\n",
    )
    .map_err(|e| format!("hosts: {e}"))?;
    let ssh_dir = account_home().join(".ssh");
    fs::create_dir_all(&ssh_dir).map_err(|e| format!("{}: {e}", ssh_dir.display()))?;
    let script = "set -e; ip link set lo up; mount -t tmpfs -o mode=0700 megaplan-e2e \"$1\"; \
                  mount --bind \"$2\" /etc/hosts; shift 2; exec \"$@\"";
    Command::new("unshare")
        .args([
            "--net",
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            script,
            "sh",
        ])
        .arg(&ssh_dir)
        .arg(&hosts)
        .arg(program)
        .args(args)
        .env(NS_ENV, scratch.path())
        // An operator's environment with backtraces on: the CLI's errors must still be messages.
        .env("RUST_BACKTRACE", "1")
        .status()
        .map_err(|e| format!("unshare: {e}"))
}

/// The account's home from the password database (where OpenSSH looks for `~/.ssh`).
fn account_home() -> PathBuf {
    // SAFETY: getpwuid returns a pointer into static storage or null; read at once.
    unsafe {
        let pw = libc::getpwuid(libc::getuid());
        assert!(!pw.is_null(), "no passwd entry for this uid");
        let dir = std::ffi::CStr::from_ptr((*pw).pw_dir);
        PathBuf::from(dir.to_string_lossy().into_owned())
    }
}

/// The stand-in service, the relay sshd and the runner container, set up inside the private
/// namespace; everything stops on drop.
pub struct RailwayWorld {
    pub dir: PathBuf,
    /// The real CLI binary.
    pub cli: PathBuf,
    /// A wrapper that runs the real CLI with the bench's environment (program for the provider).
    pub wrapper: PathBuf,
    /// `$HOME` of the CLI (its `~/.railway/config.json` and `~/.ssh/id_ed25519`).
    pub home: PathBuf,
    /// The plain-HTTP GraphQL port (`RAILWAY_BACKBOARD_URL`).
    pub port: u16,
    pub container: Container,
    pub relay: Sshd,
    service: Child,
    _tmp: tempfile::TempDir,
}

impl RailwayWorld {
    /// Starts everything (call inside [`in_private_namespace`]).
    pub fn start(bench: &Bench, cli: PathBuf) -> RailwayWorld {
        let tmp = tempfile::Builder::new()
            .prefix("megaplan-e2e-railway")
            .tempdir()
            .expect("temp dir");
        let dir = tmp.path().to_path_buf();
        let tls = crate::tls::server_cert(
            &dir,
            "megaplan e2e CA",
            "backboard.railway.com",
            "DNS:backboard.railway.com",
        );
        let container = bench.container("rw-runner");
        // Railway's relay puts a session into the service's container: so does this one.
        // On ssh.railway.com's own port, 22 (free in this private network namespace).
        let relay = Sshd::try_start_on(
            Some(22),
            &format!(
                "ForceCommand exec docker exec -i {} sh -c \"$SSH_ORIGINAL_COMMAND\"\n",
                container.name
            ),
        )
        .unwrap_or_else(|e| panic!("relay sshd: {e}"));
        let home = dir.join("home");
        fs::create_dir_all(home.join(".ssh")).expect("home");
        fs::copy(&relay.client_key, home.join(".ssh/id_ed25519")).expect("key");
        fs::copy(
            relay.client_key.with_extension("pub"),
            home.join(".ssh/id_ed25519.pub"),
        )
        .expect("pub key");
        fs::set_permissions(
            home.join(".ssh/id_ed25519"),
            fs::Permissions::from_mode(0o600),
        )
        .expect("chmod key");
        // The test user's ssh config (a tmpfs in this namespace): ssh.railway.com is the relay,
        // and the account's key is the one registered with "Railway".
        let host_pub =
            fs::read_to_string(relay.dir.join("ssh_host_ed25519_key.pub")).expect("host key");
        let known_hosts = dir.join("known_hosts");
        let fields: Vec<&str> = host_pub.split_whitespace().take(2).collect();
        fs::write(
            &known_hosts,
            format!("ssh.railway.com {}\n", fields.join(" ")),
        )
        .expect("known_hosts");
        fs::write(
            account_home().join(".ssh/config"),
            format!(
                "Host ssh.railway.com\n  HostName 127.0.0.1\n  HostKeyAlias ssh.railway.com\n  \
                 IdentityFile {}\n  UserKnownHostsFile {}\n  GlobalKnownHostsFile /dev/null\n  \
                 StrictHostKeyChecking yes\n  BatchMode yes\n  LogLevel ERROR\n",
                home.join(".ssh/id_ed25519").display(),
                known_hosts.display()
            ),
        )
        .expect("ssh config");

        let service = Command::new("/usr/bin/python3")
            .arg(crate::bench_dir().join("railway-service"))
            .arg(&dir)
            .arg(&tls.cert)
            .arg(&tls.key)
            .stdin(Stdio::null())
            .stderr(fs::File::create(dir.join("service.log")).expect("log"))
            .spawn()
            .expect("railway-service runs");
        let port_file = dir.join("port");
        assert!(
            wait_until(Duration::from_secs(30), || port_file.exists()),
            "the railway service stand-in did not start: {}",
            fs::read_to_string(dir.join("service.log")).unwrap_or_default()
        );
        let port: u16 = fs::read_to_string(&port_file)
            .expect("port")
            .trim()
            .parse()
            .expect("port number");

        let wrapper = dir.join("railway");
        let mut script = String::from("#!/bin/sh\n");
        for (k, v) in cli_env(&home, port, &dir) {
            script.push_str(&format!(
                "export {k}={}\n",
                megaplan_cloudd::shell::quote(&v)
            ));
        }
        script.push_str(&format!(
            "exec {} \"$@\"\n",
            megaplan_cloudd::shell::quote(&cli.to_string_lossy())
        ));
        fs::write(&wrapper, script).expect("wrapper");
        fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).expect("chmod");
        let world = RailwayWorld {
            dir,
            cli,
            wrapper,
            home,
            port,
            container,
            relay,
            service,
            _tmp: tmp,
        };
        world.control(&serde_json::json!({}));
        world
    }

    /// Environment for running the real CLI against the stand-in.
    pub fn env(&self) -> Vec<(String, String)> {
        cli_env(&self.home, self.port, &self.dir)
    }

    /// Replaces the stand-in's control (see `CONTROL` in tests/bench/railway-service); the
    /// runner's local key is always registered.
    pub fn control(&self, value: &Value) {
        let mut v = value.clone();
        let key = fs::read_to_string(self.home.join(".ssh/id_ed25519.pub")).expect("pub key");
        v["ssh_public_keys"] = serde_json::json!([key.trim()]);
        fs::write(self.dir.join("control.json"), v.to_string()).expect("control");
    }

    /// The requests recorded since the last call (each: `op`, `variables`, ...), then cleared.
    pub fn take_requests(&self) -> Vec<Value> {
        let path = self.dir.join("requests.jsonl");
        let text = fs::read_to_string(&path).unwrap_or_default();
        let _ = fs::remove_file(&path);
        text.lines()
            .map(|l| serde_json::from_str(l).expect("request json"))
            .collect()
    }

    /// The requests recorded so far, without clearing.
    pub fn requests(&self) -> Vec<Value> {
        fs::read_to_string(self.dir.join("requests.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("request json"))
            .collect()
    }

    /// `railway link` of `dir` to the stand-in's project, environment and service, as an
    /// operator does once by hand; requires success and forgets the requests it made.
    pub fn link_as_operator(&self, dir: &Path) {
        let o = self.cli(
            dir,
            &[
                "link",
                "--project",
                "proj-1",
                "--environment",
                "staging",
                "--service",
                "agent",
            ],
        );
        assert!(
            o.status.success(),
            "link: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        self.take_requests();
    }

    /// Runs the real CLI (through the wrapper) in `cwd`.
    pub fn cli(&self, cwd: &Path, args: &[&str]) -> std::process::Output {
        Command::new(&self.wrapper)
            .args(args)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .output()
            .expect("railway runs")
    }
}

impl Drop for RailwayWorld {
    fn drop(&mut self) {
        let _ = self.service.kill();
        let _ = self.service.wait();
    }
}

fn cli_env(home: &Path, port: u16, dir: &Path) -> Vec<(String, String)> {
    vec![
        ("HOME".into(), home.display().to_string()),
        ("RAILWAY_API_TOKEN".into(), API_TOKEN.into()),
        (
            "RAILWAY_BACKBOARD_URL".into(),
            format!("http://127.0.0.1:{port}/graphql/v2"),
        ),
        (
            "SSL_CERT_FILE".into(),
            dir.join("ca.pem").display().to_string(),
        ),
        ("RAILWAY_NO_TELEMETRY".into(), "1".into()),
        ("RAILWAY_NO_AUTO_UPDATE".into(), "1".into()),
        ("NO_COLOR".into(), "1".into()),
    ]
}

/// Every `/proc/<pid>/cmdline` (NUL-separated argv) readable now.
pub fn all_cmdlines() -> Vec<String> {
    let mut v = Vec::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for e in entries.flatten() {
            let is_pid = e
                .file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit());
            if is_pid
                && let Ok(bytes) = fs::read(e.path().join("cmdline"))
                && !bytes.is_empty()
            {
                v.push(String::from_utf8_lossy(&bytes).replace('\0', " "));
            }
        }
    }
    v
}
