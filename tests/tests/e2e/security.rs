//! The security suite (issue 11, items 2-4) against the real daemon and client on real sockets:
//! the socket folder and state root, the single-instance locks, the peer-uid checks on both
//! ends, bounded input and connections, `{key}` parameters, and secrets in stored errors and on
//! the Docker host. docs/security.md states the threat model each test stands for.
//!
//! Every test bounds work (connection counts, log lines, bytes) and waits for events; none
//! asserts a duration.

use megaplan_cloud_api::wire::RegisterResponse;
use megaplan_cloud_api::{ErrorBody, ErrorCode};
use megaplan_cloud_e2e::rig::{Run, SshRig};
use megaplan_cloud_e2e::util::{raw_http, sqlite};
use megaplan_cloud_e2e::{Daemon, bin, wait_until};
use serde_json::Value;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Generous safety net for event waits (never an assertion about speed).
const PATIENCE: Duration = Duration::from_secs(60);

const NOBODY: u32 = 65534;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

fn chown(p: &Path, uid: u32) {
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    // SAFETY: chown on a NUL-terminated path the test created.
    assert_eq!(
        unsafe { libc::chown(c.as_ptr(), uid, uid) },
        0,
        "{}",
        p.display()
    );
}

/// `megaplan-cloudd` run to completion with `env` (for start-up refusals).
fn daemon_output(env: &[(&str, &Path)], args: &[&str]) -> std::process::Output {
    let mut c = Command::new(bin("megaplan-cloudd"));
    c.args(args)
        .env_remove("XDG_RUNTIME_DIR")
        .stdin(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A refusal exits at once; a daemon that starts instead is stopped so the test can fail.
    let mut status = None;
    wait_until(Duration::from_secs(20), || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    if status.is_none() {
        let _ = child.kill();
    }
    child.wait_with_output().unwrap()
}

/// The structured error an HTTP answer carries in its body.
fn error_of(resp: &str) -> ErrorBody {
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not an error body: {e}\n{resp}"))
}

/// The input an error names (its `field` extra; the extras are free-form by the API's design).
fn field_of(e: &ErrorBody) -> &str {
    e.extra
        .get("field")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn get(socket: &Path, path: &str) -> String {
    raw_http(
        socket,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

fn post(socket: &Path, path: &str, body: &Value) -> String {
    let body = body.to_string();
    raw_http(
        socket,
        format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Whether the server closed `s` (EOF or reset), reading and dropping whatever it sent.
fn closed_by_server(s: &mut UnixStream) -> bool {
    let _ = s.set_read_timeout(Some(Duration::from_millis(50)));
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 2. The socket and the state folder.

#[test]
fn a_shared_socket_folder_is_refused_and_never_chmodded() {
    let tmp = tempfile::tempdir().unwrap();
    let shared = tmp.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    // Like /tmp: world-writable with the sticky bit.
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let home = tmp.path().join("home");
    let out = daemon_output(
        &[("MEGAPLAN_CLOUD_HOME", &home)],
        &[
            "--no-log-file",
            "--socket",
            shared.join("s.sock").to_str().unwrap(),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the daemon started in a shared folder: {err}"
    );
    assert!(
        err.contains("mode 1777") && err.contains("another --socket"),
        "{err}"
    );
    assert_eq!(
        mode(&shared),
        0o1777,
        "the folder's mode (and sticky bit) must be kept"
    );
    assert!(!shared.join("s.sock").exists());

    // A folder of our own with group bits is refused the same way, and left alone.
    let loose = tmp.path().join("loose");
    std::fs::create_dir(&loose).unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o750)).unwrap();
    let out = daemon_output(
        &[("MEGAPLAN_CLOUD_HOME", &home)],
        &[
            "--no-log-file",
            "--socket",
            loose.join("s.sock").to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("chmod 700"));
    assert_eq!(mode(&loose), 0o750);

    // A new folder is created for the socket, 0700.
    let fresh = tmp.path().join("fresh").join("run");
    let sock = fresh.join("s.sock");
    let mut child = Command::new(bin("megaplan-cloudd"))
        .args(["--no-log-file", "--socket", sock.to_str().unwrap()])
        .env("MEGAPLAN_CLOUD_HOME", &home)
        .env_remove("XDG_RUNTIME_DIR")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let up = wait_until(PATIENCE, || UnixStream::connect(&sock).is_ok());
    let fresh_mode = mode(&fresh);
    let _ = child.kill();
    let _ = child.wait();
    assert!(up, "the daemon did not start in a new folder");
    assert_eq!(fresh_mode, 0o700);
}

#[test]
fn a_second_daemon_on_the_same_database_is_refused_whatever_its_socket() {
    let d = Daemon::start(&[], &[]);
    let other_run = d.dir.join("run2");
    let out = daemon_output(
        &[("MEGAPLAN_CLOUD_HOME", &d.home)],
        &[
            "--no-log-file",
            "--socket",
            other_run.join("other.sock").to_str().unwrap(),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a second daemon ran on the same database: {err}"
    );
    assert!(err.contains("already using the database"), "{err}");
    assert!(
        err.contains(d.home.join("cloudd.db").to_str().unwrap()),
        "{err}"
    );
    assert!(!other_run.join("other.sock").exists());
    // The first one still serves.
    assert!(get(&d.socket, "/v1/health").starts_with("HTTP/1.1 200"));
}

#[test]
fn the_state_root_and_log_folder_are_private_from_the_first_mkdir() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("new").join("state");
    let root_s = root.to_str().unwrap().to_string();
    let mut d = Daemon::start(&[("MEGAPLAN_CLOUD_HOME", &root_s)], &[]);
    assert!(get(&d.socket, "/v1/health").starts_with("HTTP/1.1 200"));
    assert_eq!(mode(&root), 0o700, "state root");
    assert_eq!(mode(&root.join("logs")), 0o700, "log folder");
    assert_eq!(mode(&tmp.path().join("new")), 0o700, "created parent");
    assert_eq!(mode(&root.join("cloudd.db")) & 0o077, 0, "database");
    d.terminate();
}

/// A daemon run as `nobody` (as the other user on a shared machine), reached by root, who can
/// traverse its 0700 folder.
struct NobodyDaemon {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
    _tmp: tempfile::TempDir,
}

impl NobodyDaemon {
    fn start() -> NobodyDaemon {
        let tmp = tempfile::Builder::new()
            .prefix("mp-nobody")
            .tempdir_in("/tmp")
            .unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let socket = tmp.path().join("run").join("cloudd.sock");
        let log = tmp.path().join("nobody.log");
        let file = std::fs::File::create(&log).unwrap();
        std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o666)).unwrap();
        let child = Command::new("runuser")
            .args(["-u", "nobody", "--"])
            .arg(bin("megaplan-cloudd"))
            .arg("--no-log-file")
            .env("MEGAPLAN_CLOUD_HOME", tmp.path().join("home"))
            .env("MEGAPLAN_CLOUDD_SOCKET", &socket)
            .env("HOME", tmp.path())
            .env_remove("XDG_RUNTIME_DIR")
            .current_dir("/")
            .stderr(file)
            .spawn()
            .expect("runuser (util-linux) must be installed");
        assert!(
            wait_until(PATIENCE, || UnixStream::connect(&socket).is_ok()),
            "nobody's daemon did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        NobodyDaemon {
            child,
            socket,
            log,
            _tmp: tmp,
        }
    }

    fn stop(&mut self) -> String {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

#[test]
fn connections_from_another_uid_are_closed_at_accept_with_a_rate_limited_warning() {
    if !is_root() {
        megaplan_cloud_e2e::skip_or_panic("this test needs root (it runs processes as nobody)");
        return;
    }
    let mut d = NobodyDaemon::start();
    const FLOOD: usize = 2_000;
    let mut answered = 0;
    for _ in 0..FLOOD {
        let resp = raw_http(
            &d.socket,
            b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        if !resp.is_empty() {
            answered += 1;
        }
    }
    let log = d.stop();
    assert_eq!(answered, 0, "a refused peer got an answer");
    let lines = log
        .lines()
        .filter(|l| l.contains("refused connection from another user"))
        .count();
    assert!(lines >= 1, "the refusal is logged: {log}");
    // One line per 10 s at most, whatever the flood; the count of held-back ones is in it.
    assert!(
        lines <= 3,
        "{lines} warning lines for {FLOOD} refused connections"
    );
    assert!(log.len() < 64 * 1024, "log grew to {} bytes", log.len());
}

/// A STAND-IN for a hostile listener at a socket path (another user's process, or a program of
/// ours that is not the daemon): it answers like megaplan-cloudd would, records every byte it
/// receives, and for `/v1/run` returns a `terminal` frame with an argv of its own choosing.
const FAKE_DAEMON: &str = r#"
import json, os, socket, sys
path, record, argv = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(path); os.chmod(path, 0o777); s.listen(16)
while True:
    c, _ = s.accept()
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = c.recv(65536)
        if not chunk: break
        data += chunk
    if not data:
        # A readiness probe: connected and left without a byte.
        c.close(); continue
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length": length = int(v.strip())
    while len(body) < length:
        chunk = c.recv(65536)
        if not chunk: break
        body += chunk
    with open(record, "ab") as f: f.write(head + b"\r\n\r\n" + body)
    if head.startswith(b"GET /v1/secret-names"):
        out = json.dumps({"success": True, "names": ["MP_SECURITY_TOKEN"]}).encode()
        ctype = b"application/json"
    else:
        frames = [{"frame": "terminal", "argv": argv}, {"frame": "result", "payload": None, "exit_code": 0}]
        out = b"".join(json.dumps(f).encode() + b"\n" for f in frames)
        ctype = b"application/x-ndjson"
    try: c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: " + ctype + b"\r\nContent-Length: " + str(len(out)).encode() + b"\r\nConnection: close\r\n\r\n" + out)
    except OSError: pass
    c.close()
"#;

fn fake_daemon(uid: Option<u32>, dir: &Path, argv: &[&str]) -> (Child, PathBuf, PathBuf) {
    let socket = dir.join("fake.sock");
    let record = dir.join("received.bin");
    std::fs::write(&record, b"").unwrap();
    std::fs::set_permissions(&record, std::fs::Permissions::from_mode(0o666)).unwrap();
    let argv_json = serde_json::to_string(argv).unwrap();
    let mut c = Command::new("python3");
    c.args(["-c", FAKE_DAEMON]);
    if let Some(uid) = uid {
        // The listener itself runs as that uid (no wrapper), so killing it ends it.
        std::os::unix::process::CommandExt::uid(&mut c, uid);
        std::os::unix::process::CommandExt::gid(&mut c, uid);
    }
    let child = c
        .arg(&socket)
        .arg(&record)
        .arg(&argv_json)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        wait_until(PATIENCE, || UnixStream::connect(&socket).is_ok()),
        "the stand-in listener did not start"
    );
    (child, socket, record)
}

fn ctl_at(socket: &Path, cwd: &Path, env: &[(&str, &str)], args: &[&str]) -> Run {
    let out = Command::new(bin("megaplan-cloudctl"))
        .args(args)
        .current_dir(cwd)
        .env("MEGAPLAN_CLOUDD_SOCKET", socket)
        .env_remove("XDG_RUNTIME_DIR")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    Run::from_output(&out)
}

#[test]
fn the_client_sends_nothing_to_a_server_of_another_uid() {
    if !is_root() {
        megaplan_cloud_e2e::skip_or_panic("this test needs root (it runs processes as nobody)");
        return;
    }
    let tmp = tempfile::Builder::new()
        .prefix("mp-fake")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let (mut child, socket, record) = fake_daemon(Some(NOBODY), tmp.path(), &["true"]);
    let cy = tmp.path().join("cloud.yaml");
    std::fs::write(
        &cy,
        "provider: local\nrepo: {url: u}\nsecrets: [MP_SECURITY_TOKEN]\n",
    )
    .unwrap();
    let r = ctl_at(
        &socket,
        tmp.path(),
        &[("MP_SECURITY_TOKEN", "tok-must-stay-home-4242")],
        &["--cloud-yaml", cy.to_str().unwrap(), "status"],
    );
    let _ = child.kill();
    let _ = child.wait();
    assert_ne!(r.code, Some(0), "{}{}", r.stdout, r.stderr);
    let msg = format!("{}{}", r.stdout, r.stderr);
    assert!(msg.contains(&format!("served by uid {NOBODY}")), "{msg}");
    let received = std::fs::read(&record).unwrap();
    assert!(
        received.is_empty(),
        "the client sent {} bytes to another user's listener: {}",
        received.len(),
        String::from_utf8_lossy(&received)
    );
}

#[test]
fn the_client_runs_no_attach_argv_of_an_unknown_shape() {
    let tmp = tempfile::tempdir().unwrap();
    let pwned = tmp.path().join("pwned");
    let evil = format!("touch {}", pwned.display());
    let (mut child, socket, _record) = fake_daemon(None, tmp.path(), &["sh", "-c", &evil]);
    let cy = tmp.path().join("cloud.yaml");
    std::fs::write(&cy, "provider: local\nrepo: {url: u}\n").unwrap();
    // attach wants a terminal: run the client on a pty (util-linux `script`).
    let cmdline = format!(
        "{} --cloud-yaml {} attach",
        bin("megaplan-cloudctl").display(),
        cy.display()
    );
    let out = Command::new("script")
        .args(["-q", "-e", "-c", &cmdline, "/dev/null"])
        .current_dir(tmp.path())
        .env("MEGAPLAN_CLOUDD_SOCKET", &socket)
        .env_remove("XDG_RUNTIME_DIR")
        .stdin(Stdio::null())
        .output()
        .expect("script (util-linux) must be installed");
    let r = Run::from_output(&out);
    let _ = child.kill();
    let _ = child.wait();
    assert!(!pwned.exists(), "the client ran the argv the listener sent");
    assert_ne!(r.code, Some(0));
    assert!(
        format!("{}{}", r.stdout, r.stderr).contains("unknown shape"),
        "{} {}",
        r.stdout,
        r.stderr
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Bounded input.

#[test]
fn a_fifo_or_dev_zero_named_as_cloud_yaml_is_refused_and_the_api_keeps_serving() {
    let d = Daemon::start(&[], &[]);
    let fifo = d.dir.join("cloud.yaml");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo on a NUL-terminated path in the test's folder.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let zero_link = d.dir.join("zero").join("cloud.yaml");
    std::fs::create_dir_all(zero_link.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &zero_link).unwrap();
    for path in [&fifo, &zero_link] {
        // Nobody ever writes to the FIFO: a blocking read would never return.
        let resp = post(
            &d.socket,
            "/v1/clouds",
            &serde_json::json!({"cloud_yaml": path.to_str().unwrap()}),
        );
        assert!(
            resp.starts_with("HTTP/1.1 400"),
            "{}: {resp}",
            path.display()
        );
        let v = error_of(&resp);
        assert_eq!(v.error, ErrorCode::InvalidSpec, "{v:?}");
        assert!(v.message.contains("not a regular file"), "{v:?}");
        let resp = get(
            &d.socket,
            &format!("/v1/secret-names?cloud_yaml={}", path.display()),
        );
        assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    }
    assert!(get(&d.socket, "/v1/health").starts_with("HTTP/1.1 200"));
    let pid = d.pid();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(
        rss_kib < 256 * 1024,
        "daemon RSS is {rss_kib} KiB after /dev/zero"
    );
}

#[test]
fn thousands_of_secret_names_are_refused_naming_the_field() {
    let d = Daemon::start(&[], &[]);
    let cy = d.dir.join("cloud.yaml");
    let names: Vec<String> = (0..20_000).map(|i| format!("SECRET_NAME_{i}")).collect();
    std::fs::write(
        &cy,
        format!(
            "provider: local\nrepo: {{url: u}}\nsecrets: [{}]\n",
            names.join(", ")
        ),
    )
    .unwrap();
    let resp = post(
        &d.socket,
        "/v1/clouds",
        &serde_json::json!({"cloud_yaml": cy.to_str().unwrap()}),
    );
    assert!(
        resp.starts_with("HTTP/1.1 400"),
        "{}",
        &resp[..resp.len().min(400)]
    );
    let v = error_of(&resp);
    assert_eq!(field_of(&v), "secrets", "{v:?}");
    assert!(v.message.contains("over the limit of 256"), "{v:?}");
}

#[test]
fn idle_slow_and_half_sent_connections_are_closed_and_capped() {
    let d = Daemon::start(
        &[],
        &[
            "--max-connections",
            "32",
            "--header-timeout",
            "1s",
            "--body-timeout",
            "1s",
        ],
    );
    let pid = d.pid();
    // Warm up (database pool, log file) before counting.
    assert!(get(&d.socket, "/v1/health").starts_with("HTTP/1.1 200"));
    let baseline = open_fds(pid);
    let mut held: Vec<UnixStream> = Vec::new();
    // Idle: connect, send nothing.
    for _ in 0..100 {
        held.push(UnixStream::connect(&d.socket).unwrap());
    }
    // Slowloris: half a request head.
    for _ in 0..20 {
        let mut s = UnixStream::connect(&d.socket).unwrap();
        let _ = s.write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Slow: ");
        held.push(s);
    }
    // Half-sent 1 MiB bodies.
    for _ in 0..20 {
        let mut s = UnixStream::connect(&d.socket).unwrap();
        let _ = s.write_all(
            b"POST /v1/clouds HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n",
        );
        let _ = s.write_all(&vec![b' '; 500_000]);
        held.push(s);
    }
    // Never much more than the cap is held open by the daemon, whatever the clients do (140
    // connections; the slack covers connections accepted and not yet dropped, and the pool).
    let peak = open_fds(pid);
    assert!(
        peak <= baseline + 32 + 16,
        "the daemon holds {peak} fds (baseline {baseline}, cap 32)"
    );
    // Every one of them is closed by the server: idle and slow heads at the header timeout,
    // half bodies at the body timeout, the ones over the cap at accept.
    let mut open: Vec<UnixStream> = held;
    assert!(
        wait_until(PATIENCE, || {
            open.retain_mut(|s| !closed_by_server(s));
            open.is_empty()
        }),
        "{} connections were never closed by the daemon",
        open.len()
    );
    assert!(wait_until(PATIENCE, || open_fds(pid) <= baseline + 4));
    assert!(get(&d.socket, "/v1/health").starts_with("HTTP/1.1 200"));
}

#[test]
fn a_declared_content_length_over_the_limit_is_answered_413_without_the_body() {
    let d = Daemon::start(&[], &[]);
    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.write_all(
        b"POST /v1/clouds HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2000000\r\n\r\n",
    )
    .unwrap();
    // No body byte is ever sent; the answer must come anyway (the read timeout is a safety net).
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let resp = String::from_utf8_lossy(&resp);
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp:?}");
    assert!(resp.to_lowercase().contains("connection: close"), "{resp}");
}

#[test]
fn key_parameters_must_be_marker_keys_or_absolute_paths() {
    let d = Daemon::start(&[], &[]);
    // A marker planted outside markers/: `../` in the key must not reach it.
    let planted = d.home.join("evil").join("last_chain.json");
    std::fs::create_dir_all(planted.parent().unwrap()).unwrap();
    std::fs::write(&planted, r#"{"remote_spec": "/planted/spec.yaml"}"#).unwrap();
    for (method, path) in [
        ("GET", "/v1/markers?cloud_yaml=../evil"),
        ("GET", "/v1/markers?cloud_yaml=..%2Fevil"),
        ("GET", "/v1/ticks?cloud_yaml=..%2F..%2Fx"),
        ("DELETE", "/v1/clouds/0123456789abcde"),
        ("DELETE", "/v1/clouds/..%2F..%2Fetc"),
        ("POST", "/v1/clouds/0123456789ABCDEF/tick"),
        ("POST", "/v1/clouds/0123456789abcdef0/tick"),
    ] {
        let resp = raw_http(
            &d.socket,
            format!("{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        );
        assert!(resp.starts_with("HTTP/1.1 400"), "{method} {path}: {resp}");
        let v = error_of(&resp);
        assert_eq!(field_of(&v), "key", "{v:?}");
        assert!(v.message.contains("16 lowercase hex"), "{v:?}");
        assert!(!resp.contains("/planted/spec.yaml"), "{resp}");
    }
    // A well-formed unknown key is a plain 404.
    let resp = raw_http(
        &d.socket,
        b"DELETE /v1/clouds/0123456789abcdef HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(resp.starts_with("HTTP/1.1 404"), "{resp}");
}

// ---------------------------------------------------------------------------------------------
// 4. Secrets.

#[test]
fn a_broken_cloud_yaml_next_to_a_credential_is_stored_redacted() {
    let d = Daemon::start(&[], &[]);
    let work = d.dir.join("w");
    std::fs::create_dir_all(&work).unwrap();
    let cy = work.join("cloud.yaml");
    let cys = cy.to_str().unwrap();
    std::fs::write(
        &cy,
        "provider: local\nrepo: {url: /srv/none.git}\nsecrets: [MP_SECURITY_TOKEN]\n",
    )
    .unwrap();
    let token = "tok-9f8e7d6c5b4a-credential";
    let env = [("MP_SECURITY_TOKEN", token)];
    Run::from_output(&d.ctl(&work, &env, &["--cloud-yaml", cys, "register"])).ok();
    // Any command hands the client's secret values over for this key (its outcome is not the
    // point: the local runner does not exist).
    let _ = d.ctl(&work, &env, &["--cloud-yaml", cys, "status"]);
    // The operator pastes the credential into the file and breaks its syntax right there.
    std::fs::write(
        &cy,
        format!("provider: local\nrepo: {{url: /srv/none.git\nsecrets: [MP_SECURITY_TOKEN]\ntoken: \"{token}\n  bad: [\n"),
    )
    .unwrap();
    let r = Run::from_output(&d.ctl(&work, &[], &["--cloud-yaml", cys, "tick"]));
    assert!(
        !r.stdout.contains(token) && !r.stderr.contains(token),
        "{r:?}"
    );
    let ticks = Run::from_output(&d.ctl(&work, &[], &["--cloud-yaml", cys, "ticks", "--json"]));
    assert!(
        ticks.stdout.contains("supervisor_error") || ticks.stdout.contains("error"),
        "{}",
        ticks.stdout
    );
    assert!(!ticks.stdout.contains(token), "{}", ticks.stdout);
    let db = d.home.join("cloudd.db");
    let stored = sqlite(&db, "SELECT group_concat(report, ' ') FROM ticks;");
    assert!(!stored.is_empty());
    assert!(!stored.contains(token), "{stored}");
    // Nor anywhere in the database files (WAL included).
    for f in ["cloudd.db", "cloudd.db-wal"] {
        if let Ok(bytes) = std::fs::read(d.home.join(f)) {
            assert!(
                !bytes.windows(token.len()).any(|w| w == token.as_bytes()),
                "{f} holds the credential"
            );
        }
    }
}

#[test]
fn a_foreign_remote_dir_on_the_docker_host_is_refused_and_its_files_untouched() {
    if !is_root() {
        megaplan_cloud_e2e::skip_or_panic("this test needs root (it runs processes as nobody)");
        return;
    }
    let Some(rig) = SshRig::start("secrets: [MP_SECURITY_TOKEN]\n", &[]) else {
        return;
    };
    let remote_dir = PathBuf::from(format!("/tmp/mp-e2e-{}", rig.container.name));
    // Another local user of the Docker host pre-creates the folder and a readable .env.tmp.
    std::fs::create_dir_all(&remote_dir).unwrap();
    std::fs::set_permissions(&remote_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let trap = remote_dir.join(".env.tmp");
    std::fs::write(&trap, b"").unwrap();
    std::fs::set_permissions(&trap, std::fs::Permissions::from_mode(0o666)).unwrap();
    chown(&trap, NOBODY);
    chown(&remote_dir, NOBODY);
    let token = "tok-docker-host-5151-secret";
    let env = [("MP_SECURITY_TOKEN", token)];
    let cys = rig.cloud_yaml.to_str().unwrap();
    let mut refusals = Vec::new();
    for cmd in ["deploy", "build"] {
        let r = Run::from_output(
            &rig.daemon
                .ctl(&rig.project, &env, &["--cloud-yaml", cys, cmd]),
        );
        assert_ne!(r.code, Some(0), "{cmd}: {}{}", r.stdout, r.stderr);
        refusals.push(format!("{}{}", r.stdout, r.stderr));
    }
    // Nothing was written into the foreign folder: no .env, the trap still empty and the
    // folder's mode unchanged.
    let env_written = remote_dir.join(".env").exists();
    let trap_content = std::fs::read(&trap).unwrap_or_default();
    let folder_mode = mode(&remote_dir);
    let _ = std::fs::remove_dir_all(&remote_dir);
    assert!(
        !env_written,
        "a .env was written into another user's folder"
    );
    assert!(
        trap_content.is_empty(),
        "secrets reached the planted .env.tmp"
    );
    assert_eq!(folder_mode, 0o777);
    for text in &refusals {
        assert!(text.contains("refusing ssh.remote_dir"), "{text}");
        assert!(!text.contains(token), "{text}");
    }
}

// ---------------------------------------------------------------------------------------------
// One database, one owner (issue 21, item 4): the lock is on the database file itself, and the
// database, its companions and its folder follow the socket folder's rule.

/// A folder of our own (0700) under `parent`.
fn private_dir(parent: &Path, name: &str) -> PathBuf {
    let d = parent.join(name);
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
        .create(&d)
        .unwrap();
    d
}

/// Scheduled tick rows and the number of (key, due_at) pairs stored more than once.
fn scheduled_rows_and_doubles(db: &Path) -> (u64, u64) {
    let rows = sqlite(
        db,
        "SELECT count(*) FROM ticks WHERE tick_trigger = 'schedule';",
    );
    let doubles = sqlite(
        db,
        "SELECT count(*) FROM (SELECT key, due_at FROM ticks WHERE tick_trigger = 'schedule'
         GROUP BY key, due_at HAVING count(*) > 1);",
    );
    (rows.parse().unwrap(), doubles.parse().unwrap())
}

#[test]
fn a_second_daemon_on_a_symlink_or_hard_link_to_the_database_is_refused_and_the_first_keeps_ticking()
 {
    let d = Daemon::start(&[], &[]);
    let db = d.home.join("cloudd.db");
    let work = private_dir(&d.dir, "work");
    let cy = work.join("cloud.yaml");
    std::fs::write(&cy, "provider: local\nrepo:\n  url: /srv/repo.git\n").unwrap();
    let reg = post(
        &d.socket,
        "/v1/clouds",
        &serde_json::json!({"cloud_yaml": cy, "every_secs": 2}),
    );
    assert!(reg.starts_with("HTTP/1.1 200"), "{reg}");
    assert!(
        wait_until(PATIENCE, || scheduled_rows_and_doubles(&db).0 >= 1),
        "the first daemon never ticked: {}",
        d.log_text()
    );

    let links = private_dir(&d.dir, "links");
    let sym = links.join("sym.db");
    let hard = links.join("hard.db");
    std::os::unix::fs::symlink(&db, &sym).unwrap();
    std::fs::hard_link(&db, &hard).unwrap();
    let pid = format!("pid {}", d.pid());
    for (name, link) in [("symlink", &sym), ("hard link", &hard)] {
        let other_home = d.dir.join(format!("home-{}", name.replace(' ', "-")));
        let other_sock = d.dir.join("run2").join(format!("{}.sock", name.len()));
        let out = daemon_output(
            &[("MEGAPLAN_CLOUD_HOME", &other_home)],
            &[
                "--no-log-file",
                "--socket",
                other_sock.to_str().unwrap(),
                "--db",
                link.to_str().unwrap(),
            ],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "a second daemon ran on a {name} to the database: {err}"
        );
        assert!(err.contains(link.to_str().unwrap()), "{name}: {err}");
        assert!(err.contains(&pid), "{name}: the holder is not named: {err}");
        assert!(
            !other_sock.exists(),
            "{name}: the second daemon bound its socket"
        );
    }
    // The symlink's refusal names the real path to pass instead.
    let out = daemon_output(
        &[("MEGAPLAN_CLOUD_HOME", &d.dir.join("home-again"))],
        &[
            "--no-log-file",
            "--socket",
            d.dir.join("run2").join("again.sock").to_str().unwrap(),
            "--db",
            sym.to_str().unwrap(),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is a symlink") && err.contains(&format!("pass --db {}", db.display())),
        "{err}"
    );

    // The first keeps ticking, alone: two more occurrences, each stored exactly once.
    let (before, _) = scheduled_rows_and_doubles(&db);
    assert!(
        wait_until(PATIENCE, || scheduled_rows_and_doubles(&db).0 >= before + 2),
        "the first daemon stopped ticking: {}",
        d.log_text()
    );
    let (rows, doubles) = scheduled_rows_and_doubles(&db);
    assert!(rows >= before + 2);
    assert_eq!(doubles, 0, "an occurrence was ticked twice");
    assert!(get(&d.socket, "/v1/health").starts_with("HTTP/1.1 200"));
}

#[test]
fn a_database_planted_by_another_user_or_open_to_others_is_refused_and_left_alone() {
    if !is_root() {
        megaplan_cloud_e2e::skip_or_panic("this test needs root (it chowns files to nobody)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let home = private_dir(tmp.path(), "home");
    let sock = |n: &str| tmp.path().join("run").join(format!("{n}.sock"));
    let run = |db: &Path, n: &str| {
        let out = daemon_output(
            &[("MEGAPLAN_CLOUD_HOME", &home)],
            &[
                "--no-log-file",
                "--socket",
                sock(n).to_str().unwrap(),
                "--db",
                db.to_str().unwrap(),
            ],
        );
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(
            out.status.code(),
            Some(1),
            "the daemon used {}: {err}",
            db.display()
        );
        assert!(!sock(n).exists());
        err
    };

    // Like /tmp: world-writable with the sticky bit; another user pre-created x.db, 0666.
    let shared = tmp.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let planted = shared.join("x.db");
    std::fs::write(&planted, b"").unwrap();
    std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o666)).unwrap();
    chown(&planted, NOBODY);
    let err = run(&planted, "planted");
    assert!(
        err.contains(planted.to_str().unwrap())
            && err.contains("not by us")
            && err.contains("another --db"),
        "{err}"
    );
    // Never migrated, chmodded or chowned.
    let meta = std::fs::metadata(&planted).unwrap();
    assert_eq!((meta.len(), meta.uid(), mode(&planted)), (0, NOBODY, 0o666));
    assert!(!shared.join("x.db.lock").exists());

    // A new database in that folder is refused too, naming the folder.
    let err = run(&shared.join("new.db"), "shared");
    assert!(
        err.contains("mode 1777") && err.contains("another --db"),
        "{err}"
    );
    assert!(!shared.join("new.db").exists());
    assert_eq!(mode(&shared), 0o1777);

    // Our own database that others can write is refused, naming the fix.
    let mine = private_dir(tmp.path(), "mine");
    let loose = mine.join("loose.db");
    std::fs::write(&loose, b"").unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o666)).unwrap();
    let err = run(&loose, "loose");
    assert!(
        err.contains(loose.to_str().unwrap()) && err.contains("chmod 600"),
        "{err}"
    );
    assert_eq!(mode(&loose), 0o666);

    // -wal and -shm files that are not ours are refused before SQLite could read them.
    for (suffix, uid, file_mode) in [("-wal", NOBODY, 0o600), ("-shm", 0, 0o666)] {
        let db = mine.join(format!("c{suffix}.db"));
        let companion = PathBuf::from(format!("{}{suffix}", db.display()));
        std::fs::write(&companion, b"").unwrap();
        std::fs::set_permissions(&companion, std::fs::Permissions::from_mode(file_mode)).unwrap();
        chown(&companion, uid);
        let err = run(&db, suffix);
        assert!(err.contains(companion.to_str().unwrap()), "{suffix}: {err}");
        assert!(!db.exists(), "{suffix}: the database was created");
    }

    // A new database (and its folder) is created private.
    let fresh = tmp.path().join("fresh").join("state").join("cloudd.db");
    let fresh_s = fresh.to_str().unwrap().to_string();
    let mut d = Daemon::start(&[], &["--db", &fresh_s]);
    assert!(get(&d.socket, "/v1/health").starts_with("HTTP/1.1 200"));
    assert_eq!(mode(&fresh), 0o600);
    assert_eq!(mode(fresh.parent().unwrap()), 0o700);
    let wal = PathBuf::from(format!("{fresh_s}-wal"));
    assert_eq!(mode(&wal) & 0o077, 0, "the WAL");
    assert_eq!(d.terminate().code(), Some(0), "{}", d.log_text());
}

// ---------------------------------------------------------------------------------------------
// Issue 21, item 5: bounded input everywhere.

/// A local cloud.yaml in `d`'s folder, registered; returns its path and key.
fn registered_local(d: &Daemon) -> (PathBuf, String) {
    let work = d.dir.join("w");
    std::fs::create_dir_all(&work).unwrap();
    let cy = work.join("cloud.yaml");
    std::fs::write(&cy, "provider: local\nrepo: {url: /srv/none.git}\n").unwrap();
    let r = Run::from_output(&d.ctl(
        &work,
        &[],
        &["--cloud-yaml", cy.to_str().unwrap(), "register", "--json"],
    ))
    .ok();
    let key = r.decode::<RegisterResponse>().key;
    (cy, key)
}

#[test]
fn ticks_since_an_age_beyond_the_calendar_is_refused_naming_since() {
    let d = Daemon::start(&[], &[]);
    let work = d.dir.join("w");
    std::fs::create_dir_all(&work).unwrap();
    for since in ["9999999999d", "18446744073709551615s"] {
        let r =
            Run::from_output(&d.ctl(&work, &[], &["ticks", "--all", "--json", "--since", since]));
        // A refusal from the daemon (exit 1, invalid_args naming the field), never "the daemon
        // is unreachable" (69) from a dropped connection.
        assert_eq!(r.code, Some(1), "{since}: {r:?}");
        assert_eq!(
            r.error_body().error,
            ErrorCode::InvalidArgs,
            "{since}: {r:?}"
        );
        assert_eq!(r.error_field(), "since", "{since}: {r:?}");
        assert!(r.stderr.contains("since"), "{r:?}");
    }
    assert!(get(&d.socket, "/v1/health").starts_with("HTTP/1.1 200"));
}

#[test]
fn a_huge_pause_reason_is_refused_naming_reason() {
    let d = Daemon::start(&[], &[]);
    let (_cy, key) = registered_local(&d);
    // As much as the body limit lets through (1 MiB of body in all).
    let huge = "r".repeat(1024 * 1024 - 200);
    let resp = post(
        &d.socket,
        &format!("/v1/clouds/{key}/pause"),
        &serde_json::json!({"by": "ops@box", "reason": huge}),
    );
    assert!(
        resp.starts_with("HTTP/1.1 400"),
        "{}",
        &resp[..resp.len().min(400)]
    );
    let v = error_of(&resp);
    assert_eq!(field_of(&v), "reason", "{v:?}");
    assert!(v.message.contains("over the limit of 1024"), "{v:?}");
    // Nothing was paused.
    let db = d.home.join("cloudd.db");
    assert_eq!(sqlite(&db, "SELECT count(*) FROM pauses;"), "0");
    // 1 KiB is accepted and stored whole, once.
    let kib = "k".repeat(1024);
    let resp = post(
        &d.socket,
        &format!("/v1/clouds/{key}/pause"),
        &serde_json::json!({"by": "ops@box", "reason": kib}),
    );
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(
        sqlite(&db, "SELECT sum(length(reason)) FROM pauses;"),
        "1024"
    );
}

#[test]
fn a_pause_reason_is_referred_to_in_each_tick_report_never_copied_whole() {
    let Some(rig) = SshRig::start("", &[]) else {
        return;
    };
    rig.precreate_workspace();
    rig.control(r#"{"step_seconds": 0.1}"#);
    let spec =
        megaplan_cloud_e2e::rig::write_chain(&rig.project.join("epic"), "chain.yaml", &["m1"]);
    rig.ctl(&["chain", spec.to_str().unwrap()]).ok();
    rig.ctl(&["register", "--every", "1h"]).ok();
    let reason = format!("repairing the runner: {}", "n".repeat(1024 - 22));
    assert_eq!(reason.len(), 1024);
    rig.ctl(&["pause", "--reason", &reason]).ok();
    let ticks = 3;
    for _ in 0..ticks {
        let t = rig.ctl(&["tick"]).ok();
        assert!(t.tick().report.paused.flatten().is_some(), "{}", t.stdout);
    }
    let db = rig.daemon.home.join("cloudd.db");
    // Every report refers to the pause (who, since when, the start of the note) ...
    assert_eq!(
        sqlite(
            &db,
            "SELECT count(*) FROM ticks WHERE json_extract(report, '$.paused.paused_by') IS NOT NULL \
             AND json_extract(report, '$.paused.reason') LIKE 'repairing the runner: n%';"
        ),
        ticks.to_string()
    );
    // ... and none carries more than 120 bytes (and the `…`) of it: the pause holds the note.
    let longest: usize = sqlite(
        &db,
        "SELECT max(length(CAST(json_extract(report, '$.paused.reason') AS BLOB))) FROM ticks;",
    )
    .parse()
    .unwrap();
    assert!(
        longest <= 123,
        "a report carries {longest} bytes of the pause reason"
    );
    assert_eq!(
        sqlite(
            &db,
            "SELECT count(*) FROM ticks WHERE instr(report, 'nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn') > 0;"
        ),
        "0"
    );
    // The pause itself keeps the whole note, once.
    assert_eq!(
        sqlite(&db, "SELECT sum(length(reason)) FROM pauses;"),
        "1024"
    );
}

#[test]
fn thousands_of_notify_urls_a_port_out_of_range_and_a_huge_command_are_refused_naming_the_field() {
    let d = Daemon::start(&[], &[]);
    let (cy, _key) = registered_local(&d);
    let cy = cy.to_str().unwrap();
    let urls: Vec<String> = (0..20_000)
        .map(|i| format!("http://127.0.0.1:9/h{i}"))
        .collect();
    let cases = [
        (
            serde_json::json!({"cloud_yaml": cy, "notify_urls": urls}),
            "notify_urls",
            "over the limit of 16",
        ),
        (
            serde_json::json!({"cloud_yaml": cy, "notify_urls": ["http://127.0.0.1:99999/hook"]}),
            "notify_url",
            "99999",
        ),
        (
            serde_json::json!({"cloud_yaml": cy, "notify_urls": [format!("http://127.0.0.1/{}", "u".repeat(4096))]}),
            "notify_url",
            "over the limit of 2048",
        ),
        (
            serde_json::json!({"cloud_yaml": cy, "notify_command": format!("cat >/dev/null #{}", "c".repeat(8192))}),
            "notify_command",
            "over the limit of 4096",
        ),
    ];
    for (body, field, says) in cases {
        let resp = post(&d.socket, "/v1/clouds", &body);
        assert!(
            resp.starts_with("HTTP/1.1 400"),
            "{field}: {}",
            &resp[..resp.len().min(400)]
        );
        let v = error_of(&resp);
        assert_eq!(field_of(&v), field, "{v:?}");
        assert!(v.message.contains(says), "{field}: {v:?}");
    }
    // None of them was stored as a sink.
    let db = d.home.join("cloudd.db");
    assert_eq!(sqlite(&db, "SELECT count(*) FROM notify_sinks;"), "0");
}

#[test]
fn a_fifo_or_dev_zero_as_notify_config_fails_start_up_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let fifo = tmp.path().join("notify.yaml");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo on a NUL-terminated path in the test's folder.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    // The FIFO first: before the fix it blocks start-up (the safety net then stops the daemon
    // and the exit check fails) instead of reading /dev/zero until memory runs out.
    for (i, config) in [fifo.as_path(), Path::new("/dev/zero")]
        .into_iter()
        .enumerate()
    {
        let run = tmp.path().join(format!("run{i}"));
        let home = tmp.path().join(format!("home{i}"));
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
            .create(&run)
            .unwrap();
        let out = daemon_output(
            &[
                ("MEGAPLAN_CLOUD_HOME", &home),
                ("MEGAPLAN_CLOUDD_SOCKET", &run.join("cloudd.sock")),
                ("MEGAPLAN_CLOUDD_NOTIFY_CONFIG", config),
            ],
            &["--no-log-file"],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{}: {stderr}", config.display());
        assert!(
            stderr.contains(&config.display().to_string()) && stderr.contains("not a regular file"),
            "{stderr}"
        );
        assert!(
            !run.join("cloudd.sock").exists(),
            "the socket was left behind"
        );
    }
}

#[test]
fn a_thousand_refused_requests_and_failed_ticks_write_a_handful_of_warn_lines() {
    let d = Daemon::start(&[], &[]);
    let (cy, key) = registered_local(&d);
    // The registered file breaks: every tick of it now fails the same way.
    std::fs::write(&cy, "provider: [\n").unwrap();
    let warns = || d.log_text().lines().filter(|l| l.contains("WARN")).count();
    let before = warns();
    let n = 500;
    for _ in 0..n {
        let resp = post(&d.socket, &format!("/v1/clouds/{key}/tick"), &Value::Null);
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        let resp = get(&d.socket, "/v1/ticks?since=not-a-time");
        assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    }
    let db = d.home.join("cloudd.db");
    assert_eq!(
        sqlite(
            &db,
            "SELECT count(*) FROM ticks WHERE report LIKE '%supervisor_error%';"
        ),
        n.to_string(),
        "every tick ran and failed"
    );
    let written = warns() - before;
    // One line for the first failed tick, one for the first refusal (and a count a minute).
    assert!(
        (2..=6).contains(&written),
        "{written} WARN lines for {} refused requests and failed ticks:\n{}",
        2 * n,
        d.log_text()
    );
}
