//! The daemon as a service, tested against the real binaries on real sockets and SQLite files:
//! restarts and crashes lose nothing, only our uid gets in, one daemon per socket, a thousand
//! registrations tick without starving or overlapping, garbage input is refused, SIGTERM is
//! clean, and the service files validate.

use megaplan_cloud_api::ErrorCode;
use megaplan_cloud_api::report::TickEvent;
use megaplan_cloud_api::wire::{RegisterResponse, RegistrationListed, TickRecord};
use megaplan_cloud_e2e::rig::{Run, local_cloud_yaml, ssh_cloud_yaml_to};
use megaplan_cloud_e2e::util::{post_oversized, raw_http, sqlite, wait_until};
use megaplan_cloud_e2e::{Daemon, bin};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// What a client run printed, with its exit status.
fn run(out: &Output) -> Run {
    Run::from_output(out)
}

/// A client run that must succeed.
fn ok(out: Output) -> Run {
    Run::from_output(&out).ok()
}

#[test]
fn restart_keeps_registrations_markers_and_ticks() {
    let mut d = Daemon::start(&[], &[]);
    let work = d.dir.join("work");
    let cy = local_cloud_yaml(&work.join("a"));
    let cys = cy.to_str().unwrap();
    ok(d.ctl(
        &work,
        &[],
        &["--cloud-yaml", cys, "register", "--every", "1h"],
    ));
    let tick = d.ctl(&work, &[], &["--cloud-yaml", cys, "tick"]);
    let tick = run(&tick).tick();
    assert_eq!(tick.event, TickEvent::Error);
    assert!(tick.refused_reason.unwrap().contains("missing_remote_spec"));

    // A legacy marker file is imported into SQLite on first use.
    let key = ok(d.ctl(
        &work,
        &[],
        &["--cloud-yaml", cys, "registrations", "--json"],
    ))
    .registrations()[0]
        .registration
        .key
        .clone();
    let legacy = d.home.join("markers").join(&key).join("last_chain.json");
    std::fs::create_dir_all(legacy.parent().unwrap()).unwrap();
    std::fs::write(
        &legacy,
        r#"{"remote_spec": "/workspace/app/chain.yaml", "chain_session": "megaplan-chain"}"#,
    )
    .unwrap();
    let t2 = run(&d.ctl(&work, &[], &["--cloud-yaml", cys, "tick"])).tick();
    // With a marker the tick gets past spec resolution (and then fails on the absent runner).
    assert!(
        !t2.refused_reason
            .as_deref()
            .unwrap()
            .contains("missing_remote_spec"),
        "{t2:?}"
    );
    std::fs::remove_file(&legacy).unwrap();

    d.restart();
    let regs = ok(d.ctl(&work, &[], &["registrations", "--json"])).registrations();
    assert_eq!(regs.len(), 1);
    assert_eq!(regs[0].registration.cloud_yaml, cys);
    assert_eq!(regs[0].registration.schedule, "every:3600");
    assert_eq!(regs[0].registration.ticks_run, 2);
    let ticks = ok(d.ctl(&work, &[], &["--cloud-yaml", cys, "ticks", "--json"]));
    assert_eq!(ticks.decode::<Vec<TickRecord>>().len(), 2);
    // The marker survived in SQLite although the legacy file is gone.
    let t3 = run(&d.ctl(&work, &[], &["--cloud-yaml", cys, "tick"])).tick();
    assert!(
        !t3.refused_reason
            .as_deref()
            .unwrap()
            .contains("missing_remote_spec"),
        "{t3:?}"
    );
    let st = ok(d.ctl(&work, &[], &["daemon", "status", "--json"])).health();
    assert_eq!(st.registrations, 1);
    assert_eq!(st.ticks.run, 3);
}

#[test]
fn kill9_during_a_tick_loses_nothing() {
    // A TCP listener that accepts and never speaks: the ssh handshake of the tick hangs there.
    let blackhole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = blackhole.local_addr().unwrap().port();
    let mut d = Daemon::start(&[], &[]);
    let work = d.dir.join("work");
    let cy = ssh_cloud_yaml_to(&work, port);
    let cys = cy.to_str().unwrap();
    let other = local_cloud_yaml(&work.join("b"));
    ok(d.ctl(
        &work,
        &[],
        &[
            "--cloud-yaml",
            cys,
            "register",
            "--every",
            "1h",
            "--remote-spec",
            "/w/chain.yaml",
        ],
    ));
    ok(d.ctl(
        &work,
        &[],
        &[
            "--cloud-yaml",
            other.to_str().unwrap(),
            "register",
            "--every",
            "1h",
        ],
    ));
    let _ = d.ctl(
        &work,
        &[],
        &["--cloud-yaml", other.to_str().unwrap(), "tick"],
    );

    // Start a tick that blocks in the ssh handshake, then crash the daemon under it.
    let socket = d.socket.clone();
    let cy_thread = cy.clone();
    let ticker = std::thread::spawn(move || {
        let _ = Command::new(bin("megaplan-cloudctl"))
            .arg("--cloud-yaml")
            .arg(&cy_thread)
            .arg("tick")
            .env("MEGAPLAN_CLOUDD_SOCKET", &socket)
            .output();
    });
    let (conn, _) = blackhole.accept().unwrap();
    let _ = conn.set_read_timeout(Some(Duration::from_millis(10)));
    d.kill9();
    let _ = ticker.join();
    drop(conn);

    let db = d.home.join("cloudd.db");
    assert_eq!(sqlite(&db, "PRAGMA integrity_check;"), "ok");
    let mut d2 = Daemon::start_in(d.keep_dir(), &[], &[]);
    let regs = ok(d2.ctl(&work, &[], &["registrations", "--json"])).registrations();
    assert_eq!(regs.len(), 2);
    let t = run(&d2.ctl(
        &work,
        &[],
        &["--cloud-yaml", other.to_str().unwrap(), "tick"],
    ))
    .tick();
    assert_eq!(t.key.len(), 16, "{t:?}");
    assert_eq!(sqlite(&db, "PRAGMA integrity_check;"), "ok");
    d2.terminate();
}

#[test]
fn socket_is_private_and_other_uids_are_refused() {
    let d = Daemon::start(&[], &[]);
    let meta = std::fs::metadata(&d.socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "socket mode");
    let dir = std::fs::metadata(d.socket.parent().unwrap()).unwrap();
    assert_eq!(
        dir.permissions().mode() & 0o777,
        0o700,
        "socket folder mode"
    );

    // Another uid cannot even reach the socket (the folder is 0700): the client says so, exit 69 (daemon unreachable).
    let out = Command::new("runuser")
        .args(["-u", "nobody", "--"])
        .arg(bin("megaplan-cloudctl"))
        .args(["daemon", "status"])
        .env("MEGAPLAN_CLOUDD_SOCKET", &d.socket)
        .current_dir("/")
        .output()
        .expect("runuser (util-linux) must be installed");
    assert_eq!(out.status.code(), Some(69), "{out:?}");
    assert_eq!(run(&out).error_body().error, ErrorCode::DaemonUnreachable);

    // A daemon run by `nobody`, reached by root (who can traverse the folder): the connection
    // is closed at accept without an answer, and the refusal is logged.
    let tmp = tempfile::Builder::new()
        .prefix("mp-nobody")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let home = tmp.path().join("home");
    let sock = tmp.path().join("run").join("cloudd.sock");
    let log = std::fs::File::create(tmp.path().join("nobody.log")).unwrap();
    std::fs::set_permissions(
        tmp.path().join("nobody.log"),
        std::fs::Permissions::from_mode(0o666),
    )
    .unwrap();
    let mut child = Command::new("runuser")
        .args(["-u", "nobody", "--"])
        .arg(bin("megaplan-cloudd"))
        .arg("--no-log-file")
        .env("MEGAPLAN_CLOUD_HOME", &home)
        .env("MEGAPLAN_CLOUDD_SOCKET", &sock)
        .env("HOME", tmp.path())
        .env_remove("XDG_RUNTIME_DIR")
        .current_dir("/")
        .stderr(log)
        .spawn()
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || UnixStream::connect(&sock)
            .is_ok()),
        "nobody's daemon did not start: {}",
        std::fs::read_to_string(tmp.path().join("nobody.log")).unwrap_or_default()
    );
    let resp = raw_http(
        &sock,
        b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(resp.is_empty(), "a refused peer got an answer: {resp}");
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
    let logged = std::fs::read_to_string(tmp.path().join("nobody.log")).unwrap();
    assert!(
        logged.contains("refused connection from another user"),
        "{logged}"
    );
}

#[test]
fn second_daemon_on_the_same_socket_is_refused() {
    let d = Daemon::start(&[], &[]);
    let out = Command::new(bin("megaplan-cloudd"))
        .arg("--no-log-file")
        .env("MEGAPLAN_CLOUD_HOME", &d.home)
        .env("MEGAPLAN_CLOUDD_SOCKET", &d.socket)
        .env_remove("XDG_RUNTIME_DIR")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("another megaplan-cloudd is already serving"),
        "{err}"
    );
    // The first one still serves.
    let st = ok(d.ctl(&d.dir, &[], &["daemon", "status", "--json"])).health();
    assert_eq!(st.socket, d.socket.to_str().unwrap());
}

#[test]
fn stale_socket_file_is_replaced() {
    let mut d = Daemon::start(&[], &[]);
    let dir = d.keep_dir();
    d.kill9();
    assert!(d.socket.exists(), "a crashed daemon leaves its socket file");
    let d2 = Daemon::start_in(dir, &[], &[]);
    ok(d2.ctl(&d2.dir, &[], &["daemon", "status", "--json"]));
}

#[test]
fn unreachable_daemon_names_the_socket_and_exits_69() {
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("nothing.sock");
    // A cloud.yaml to find (without one the client stops earlier, listing the places tried).
    std::fs::write(tmp.path().join("cloud.yaml"), "provider: local\n").unwrap();
    let out = Command::new(bin("megaplan-cloudctl"))
        .args(["status"])
        .env("MEGAPLAN_CLOUDD_SOCKET", &sock)
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(69));
    let v = run(&out).error_body();
    assert_eq!(v.error, ErrorCode::DaemonUnreachable);
    let msg = v.message.as_str();
    assert!(
        msg.contains(sock.to_str().unwrap()) && msg.contains("megaplan-cloudd"),
        "{msg}"
    );
}

#[test]
fn garbage_input_is_refused_and_the_daemon_keeps_serving() {
    let d = Daemon::start(&[], &[]);
    let bad = raw_http(&d.socket, b"POST /v1/run HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 9\r\nConnection: close\r\n\r\n{not json");
    assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");
    assert!(bad.contains("invalid_args"), "{bad}");
    let resp = post_oversized(&d.socket, 2 * 1024 * 1024);
    assert!(
        resp.starts_with("HTTP/1.1 413"),
        "{}",
        &resp[..resp.len().min(200)]
    );
    let nf = raw_http(
        &d.socket,
        b"GET /v2/nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(nf.starts_with("HTTP/1.1 404"), "{nf}");
    // A bad cloud.yaml is refused at registration with the loader's error.
    let work = d.dir.join("w");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("cloud.yaml"), "provider: fly\nrepo: {url: /r}\n").unwrap();
    let out = d.ctl(&work, &[], &["register"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(run(&out).error_body().error, ErrorCode::FutureProvider);
    ok(d.ctl(&d.dir, &[], &["daemon", "status", "--json"]));
}

#[test]
fn a_cloud_yaml_that_breaks_later_gets_error_reports() {
    let d = Daemon::start(&[], &[]);
    let work = d.dir.join("w");
    let cy = local_cloud_yaml(&work.join("x"));
    let cys = cy.to_str().unwrap();
    ok(d.ctl(
        &work,
        &[],
        &["--cloud-yaml", cys, "register", "--every", "1h"],
    ));
    std::fs::write(&cy, "repo: [broken\n").unwrap();
    let t = run(&d.ctl(&work, &[], &["--cloud-yaml", cys, "tick"])).tick();
    assert_eq!(t.event, TickEvent::Error);
    assert!(
        t.refused_reason
            .as_deref()
            .unwrap()
            .contains("not valid YAML"),
        "{t:?}"
    );
    std::fs::remove_file(&cy).unwrap();
    let t = run(&d.ctl(&work, &[], &["--cloud-yaml", cys, "tick"])).tick();
    assert!(
        t.refused_reason
            .as_deref()
            .unwrap()
            .contains("cannot read cloud.yaml"),
        "{t:?}"
    );
    let regs = ok(d.ctl(&work, &[], &["registrations", "--json"])).registrations();
    assert_eq!(regs[0].registration.ticks_run, 2);
    assert_eq!(regs[0].registration.last_success, Some(false));
}

#[test]
fn sigterm_exits_zero_and_removes_the_socket() {
    let mut d = Daemon::start(&[], &[]);
    let status = d.terminate();
    assert_eq!(status.code(), Some(0), "{}", d.log_text());
    assert!(!d.socket.exists());
    assert!(d.log_text().contains("megaplan-cloudd stopped"));
}

#[test]
fn thousand_registrations_all_tick_without_overlap() {
    let d = Daemon::start(&[], &["--max-concurrent-ticks", "8"]);
    let work = d.dir.join("many");
    let interval = 5u64;
    // Register through the API directly (1,000 client processes would measure fork, not us).
    for i in 0..1000 {
        let cy = local_cloud_yaml(&work.join(format!("c{i:04}")));
        register_api(&d, &cy, interval);
    }
    let regs = ok(d.ctl(&work, &[], &["registrations", "--json"])).registrations();
    assert_eq!(regs.len(), 1000);
    // Every registration ticks (the wait is a safety net; lateness under load is measured by
    // the benchmark program, not here).
    let all_ticked = wait_until(Duration::from_secs(2 * interval + 2), || {
        run(&d.ctl(&work, &[], &["registrations", "--json"]))
            .registrations()
            .iter()
            .all(|r| r.registration.ticks_run >= 1)
    });
    let regs = ok(d.ctl(&work, &[], &["registrations", "--json"])).registrations();
    let starved: Vec<&RegistrationListed> = regs
        .iter()
        .filter(|r| r.registration.ticks_run == 0)
        .collect();
    assert!(
        all_ticked,
        "{} of 1000 registrations never ticked",
        starved.len()
    );
    // No two ticks of one registration overlap in time.
    let db = d.home.join("cloudd.db");
    let overlaps = sqlite(
        &db,
        "SELECT count(*) FROM ticks a JOIN ticks b ON a.key = b.key AND a.id < b.id \
         AND b.started_at < a.finished_at;",
    );
    assert_eq!(overlaps, "0");
}

/// Runs `cmd` and returns its output; fails with `missing` when it cannot start, and with
/// `failed` and its stderr when it exits non-zero.
fn succeeds(cmd: &mut Command, missing: &str, failed: &str) -> Output {
    let out = cmd.output().expect(missing);
    assert!(
        out.status.success(),
        "{failed}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn service_files_validate() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let unit = std::fs::read_to_string(root.join("systemd/megaplan-cloudd.service")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let test_unit = megaplan_cloud_e2e::unit_with_built_daemon(tmp.path());
    succeeds(
        Command::new("systemd-analyze")
            .arg("verify")
            .arg(&test_unit),
        "systemd-analyze (package systemd) must be installed",
        "systemd-analyze verify failed",
    );
    for needed in [
        "Type=notify",
        "Restart=on-failure",
        "--socket %t/megaplan-cloudd/cloudd.sock",
        "RuntimeDirectoryMode=0700",
        "UMask=0077",
        "LimitNOFILE=65536",
    ] {
        assert!(unit.contains(needed), "unit lacks {needed}");
    }
    let plist = root.join("launchd/com.megaplan.cloudd.plist");
    succeeds(
        Command::new("xmllint").arg("--noout").arg(&plist),
        "xmllint (libxml2-utils) must be installed",
        "plist is not well-formed XML",
    );
    // plutil -lint equivalent: Python's plistlib parses the property list itself (types and all).
    let lint = succeeds(
        Command::new("python3").args(["-c", "import plistlib,sys; d=plistlib.load(open(sys.argv[1],'rb')); assert d['RunAtLoad'] is True; assert d['KeepAlive']['SuccessfulExit'] is False; assert d['ProgramArguments'][1] == '-c' and '--socket' in d['ProgramArguments'][2]; assert d['Umask'] == 0o077; print(d['Label'])"])
        .arg(&plist),
        "python3 must be installed",
        "plist lint failed",
    );
    assert_eq!(
        String::from_utf8_lossy(&lint.stdout).trim(),
        "com.megaplan.cloudd"
    );
    let text = std::fs::read_to_string(&plist).unwrap();
    for needed in [
        "<key>RunAtLoad</key>",
        "<key>KeepAlive</key>",
        "<key>ProgramArguments</key>",
        "--socket",
    ] {
        assert!(text.contains(needed), "plist lacks {needed}");
    }
}

#[test]
fn readiness_is_reported_to_systemd() {
    // Type=notify: the daemon sends READY=1 on $NOTIFY_SOCKET once it serves, STOPPING=1 on stop.
    let tmp = tempfile::tempdir().unwrap();
    let notify = tmp.path().join("notify.sock");
    let listener = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    listener
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let notify_s = notify.display().to_string();
    let mut d = Daemon::start(&[("NOTIFY_SOCKET", &notify_s)], &[]);
    let mut buf = [0u8; 256];
    let n = listener.recv(&mut buf).expect("no READY=1 from the daemon");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("READY=1"));
    // Ready means ready: the socket answers now.
    assert!(UnixStream::connect(&d.socket).is_ok());
    assert_eq!(d.terminate().code(), Some(0));
    let n = listener
        .recv(&mut buf)
        .expect("no STOPPING=1 from the daemon");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
}

/// `POST /v1/clouds` straight on the socket; the answer (panics unless 200).
fn register_api(d: &Daemon, cloud_yaml: &Path, every_secs: u64) -> RegisterResponse {
    let body = format!(
        r#"{{"cloud_yaml": "{}", "every_secs": {every_secs}}}"#,
        cloud_yaml.display()
    );
    let resp = raw_http(
        &d.socket,
        format!("POST /v1/clouds HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).as_bytes(),
    );
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let (_, payload) = resp.split_once("\r\n\r\n").unwrap();
    serde_json::from_str(payload.trim()).unwrap_or_else(|e| panic!("{e}: {payload}"))
}

fn rfc3339(s: &str) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("{s:?} is not RFC 3339: {e}"))
        .with_timezone(&chrono::Utc)
}

/// The daemon's own start time (its clock, not the test's), as the store writes times.
fn started_at(d: &Daemon) -> (chrono::DateTime<chrono::Utc>, String) {
    let st = ok(d.ctl(&d.dir, &[], &["daemon", "status", "--json"])).health();
    let t = rfc3339(&st.started_at);
    (t, t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

/// Scheduled ticks stored with a due time after `after` (store format): (key, due_at) rows.
fn scheduled_ticks_after(db: &Path, after: &str) -> Vec<(String, chrono::DateTime<chrono::Utc>)> {
    sqlite(
        db,
        &format!(
            "SELECT key || ' ' || due_at FROM ticks WHERE tick_trigger = 'schedule' AND due_at > '{after}' ORDER BY key, due_at;"
        ),
    )
    .lines()
    .map(|l| {
        let (k, d) = l.split_once(' ').unwrap();
        (k.to_string(), rfc3339(d))
    })
    .collect()
}

#[test]
fn restart_keeps_each_registrations_jitter_offset() {
    use megaplan_cloud_api::schedule::{Schedule, every_offset_secs};
    let mut d = Daemon::start(&[], &[]);
    let work = d.dir.join("jitter");
    let every = 10u64;
    let mut registered = std::collections::BTreeMap::new();
    for i in 0..20 {
        let cy = local_cloud_yaml(&work.join(format!("j{i:02}")));
        let r = register_api(&d, &cy, every);
        registered.insert(r.key, r.cron);
    }
    let distinct: std::collections::BTreeSet<&String> = registered.values().collect();
    assert!(distinct.len() > 1, "offsets do not spread: {registered:?}");

    d.restart();
    let (_, restarted) = started_at(&d);
    // The restored schedules are the per-key ones `register` answered with.
    let regs = ok(d.ctl(&work, &[], &["registrations", "--json"])).registrations();
    for r in &regs {
        let key = r.registration.key.as_str();
        let expected = Schedule::Every(Duration::from_secs(every))
            .to_cron(key)
            .unwrap();
        assert_eq!(
            r.registration.cron.as_deref(),
            Some(registered[key].as_str()),
            "{key} after restart: {r:?}"
        );
        assert_eq!(
            r.registration.cron.as_deref(),
            Some(expected.as_str()),
            "{key}"
        );
    }
    // And the ticks fire at those offsets: each due time sits at the key's own second.
    let db = d.home.join("cloudd.db");
    assert!(
        wait_until(Duration::from_secs(120), || {
            let keys: std::collections::BTreeSet<String> = scheduled_ticks_after(&db, &restarted)
                .into_iter()
                .map(|(k, _)| k)
                .collect();
            keys.len() == registered.len()
        }),
        "not every registration ticked after the restart: {}",
        d.log_text()
    );
    for (key, due) in scheduled_ticks_after(&db, &restarted) {
        use chrono::Timelike;
        assert_eq!(
            u64::from(due.second()) % every,
            every_offset_secs(every, &key),
            "{key} fired at {due}, not at its own offset"
        );
    }
}

#[test]
fn two_thousand_registrations_tick_on_schedule_after_a_restart() {
    let n = 2000usize;
    let every = 30i64;
    let mut d = Daemon::start(&[], &[]);
    let work = d.dir.join("many");
    for i in 0..n {
        let cy = local_cloud_yaml(&work.join(format!("r{i:04}")));
        register_api(&d, &cy, every as u64);
    }
    d.restart();
    let (t0, t0_text) = started_at(&d);
    let db = d.home.join("cloudd.db");

    // Wait (generous safety net) until every registration has two scheduled ticks due after
    // the restart; then judge from the daemon's records alone.
    let per_key = || {
        let mut m: std::collections::BTreeMap<String, Vec<chrono::DateTime<chrono::Utc>>> =
            Default::default();
        for (k, due) in scheduled_ticks_after(&db, &t0_text) {
            m.entry(k).or_default().push(due);
        }
        m
    };
    let done = wait_until(Duration::from_secs(600), || {
        let m = per_key();
        m.len() == n && m.values().all(|v| v.len() >= 2)
    });
    let m = per_key();
    let st = ok(d.ctl(&work, &[], &["daemon", "status", "--json"])).health();
    assert!(
        done,
        "{} of {n} registrations ticked twice after the restart; scheduler: {:?}",
        m.values().filter(|v| v.len() >= 2).count(),
        st.schedule
    );
    assert_eq!(st.schedule.scheduled, n as u64, "{:?}", st.schedule);
    assert_eq!(st.schedule.unschedulable, 0, "{:?}", st.schedule);
    let interval = chrono::Duration::seconds(every);
    for (key, dues) in &m {
        // The first tick after the restart is for an occurrence within two intervals of it.
        assert!(
            dues[0] <= t0 + interval * 2,
            "{key}: first tick after the restart ({t0}) was due at {}",
            dues[0]
        );
        // Never twice for one interval: due times are distinct and at least an interval apart.
        for w in dues.windows(2) {
            assert!(
                w[1] - w[0] >= interval,
                "{key} ticked twice within one interval: {} and {}",
                w[0],
                w[1]
            );
        }
    }
    // The scheduler's account agrees: everything that came due fired, was skipped, was
    // missed, or is still waiting for a tick slot.
    let s = &st.schedule;
    let (due, fired, skipped, missed) = (s.due, s.fired, s.skipped, s.missed);
    assert!(fired + skipped + missed <= due, "{s:?}");
    assert!(fired >= 2 * n as u64, "{s:?}");
}

/// A number from a `sqlite3` answer.
fn count(db: &Path, sql: &str) -> u64 {
    sqlite(db, sql)
        .parse()
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// The database file and its WAL on disk, in bytes.
fn db_bytes(db: &Path) -> u64 {
    [
        db.to_path_buf(),
        PathBuf::from(format!("{}-wal", db.display())),
    ]
    .iter()
    .filter_map(|p| std::fs::metadata(p).ok())
    .map(|m| m.len())
    .sum()
}

#[test]
fn the_database_is_pruned_oldest_first_under_its_size_cap_keeping_undelivered_notifications() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let mut d = Daemon::start_in(dir.clone(), &[], &[]);
    let db = d.home.join("cloudd.db");
    let work = d.dir.join("work");
    let cy = local_cloud_yaml(&work.join("a"));
    let cys = cy.to_str().unwrap();
    ok(d.ctl(
        &work,
        &[],
        &["--cloud-yaml", cys, "register", "--every", "1h"],
    ));
    let key = run(&d.ctl(&work, &[], &["--cloud-yaml", cys, "tick"]))
        .tick()
        .key;
    assert_eq!(d.terminate().code(), Some(0), "{}", d.log_text());
    drop(d);

    // Months of history, written while the daemon is stopped: 3000 tick reports of ~1 KiB the
    // watcher has read, 200 delivered notifications and 5 still undelivered.
    let pad = "hex(randomblob(500))";
    sqlite(
        &db,
        &format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000)
             INSERT INTO ticks (key, cloud_yaml, tick_trigger, started_at, finished_at, duration_ms,
                                success, event, next_action, acted, refused_reason, report)
             SELECT '{key}', '{cys}', 'manual', '2020-01-01T00:00:00.000Z',
                    strftime('%Y-%m-%dT%H:%M:%S.000Z', '2020-01-01', '+' || i || ' minutes'), 0, 0,
                    'supervisor_error', 'none', 0, NULL, json_object('pad', {pad}) FROM n;
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200)
             INSERT INTO outbox (key, event, sink, body, created_at, status, attempts, next_attempt_at, finished_at)
             SELECT '{key}', 'stalled', '{{\"kind\":\"command\",\"argv\":[\"true\"]}}', {pad},
                    '2020-01-01T00:00:00.000Z', 'delivered', 1, '2020-01-01T00:00:00.000Z',
                    '2020-01-01T00:00:01.000Z' FROM n;
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5)
             INSERT INTO outbox (key, event, sink, body, created_at, status, attempts, next_attempt_at)
             SELECT '{key}', 'stalled', '{{\"kind\":\"command\",\"argv\":[\"true\"]}}', {pad},
                    '2020-01-01T00:00:00.000Z', 'pending', 0, '2999-01-01T00:00:00.000Z' FROM n;
             UPDATE watch_cursor SET last_tick_id = (SELECT MAX(id) FROM ticks);"
        ),
    );
    let newest = count(&db, "SELECT MAX(id) FROM ticks;");
    assert!(
        db_bytes(&db) > 2 << 20,
        "the history is smaller than planned"
    );

    let cap: u64 = 256 * 1024;
    // Per-registration retention is set out of the way: what goes here goes by the cap.
    let mut d = Daemon::start_in(
        dir.clone(),
        &[],
        &["--max-db-size", "256KiB", "--keep-ticks", "100000"],
    );
    // More ticks on top, each stored and the cap kept after each.
    for _ in 0..5 {
        let t = run(&d.ctl(&work, &[], &["--cloud-yaml", cys, "tick"]));
        assert_eq!(t.tick().key, key, "{}", t.stdout);
    }
    let st = ok(d.ctl(&work, &[], &["daemon", "status", "--json"])).health();
    let s = &st.storage;
    let pruned_ticks = s.pruned_ticks;
    let pruned_notes = s.pruned_notifications;
    assert!(pruned_ticks > 0 && pruned_notes > 0, "{s:?}");
    assert_eq!(s.max_bytes, cap, "{s:?}");
    assert!(s.used_bytes <= cap, "{s:?}");
    // Slack: SQLite checkpoints the WAL at a quarter of the cap, plus a tick's pages.
    assert!(s.size_bytes <= cap + cap / 2, "{s:?}");
    assert!(
        db_bytes(&db) <= cap + cap / 2,
        "{} bytes on disk",
        db_bytes(&db)
    );

    // What pruning removed is counted exactly, and only prunable rows went.
    let ticks_left = count(&db, "SELECT count(*) FROM ticks;");
    assert_eq!(ticks_left + pruned_ticks, 3000 + 1 + 5, "{s:?}");
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM outbox WHERE status = 'delivered';"
        ) + pruned_notes,
        200,
        "{s:?}"
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM outbox WHERE status = 'pending';"),
        5,
        "an undelivered notification was pruned"
    );
    // Oldest first: the first real tick and the oldest history went; the newest ticks stayed.
    assert_eq!(count(&db, "SELECT count(*) FROM ticks WHERE id = 1;"), 0);
    assert!(count(&db, "SELECT MIN(id) FROM ticks;") > 1);
    assert_eq!(
        count(
            &db,
            &format!("SELECT count(*) FROM ticks WHERE id > {newest};")
        ),
        5
    );
    let remaining_min = count(&db, "SELECT MIN(id) FROM ticks;");
    assert_eq!(
        count(
            &db,
            &format!("SELECT count(*) FROM ticks WHERE id >= {remaining_min};")
        ),
        ticks_left,
        "the ticks left are not the newest ones"
    );
    // The registration itself is untouched and still served.
    let regs = ok(d.ctl(&work, &[], &["registrations", "--json"])).registrations();
    assert_eq!(regs.len(), 1, "{regs:#?}");
    assert_eq!(d.terminate().code(), Some(0), "{}", d.log_text());
}
