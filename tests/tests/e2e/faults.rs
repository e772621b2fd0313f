//! The fault suite (issue 7) against the real daemon: sshd killed mid-tick, the runner container
//! stopped, a corrupt remote chain state, a remote command that never returns, 100 MB of logs,
//! idle and oversized clients, a full or read-only disk, SIGTERM during a build, and ten hung
//! runners beside a healthy one (issue 21).
//!
//! Every test checks the same three things: the daemon keeps serving (a later `daemon status`
//! answers), nothing stored is lost or corrupted (`PRAGMA integrity_check` and the earlier rows),
//! and the error the operator sees names what happened (error code and message words).

use megaplan_cloud_api::ErrorBody;
use megaplan_cloud_api::ErrorCode;
use megaplan_cloud_api::report::{EffectiveStatus, ReportedStatus, TickEvent};
use megaplan_cloud_api::wire::{
    Explanation, Health, RegisterResponse, Registration, RegistrationListed, TickBackoff,
    TickRecord,
};
use megaplan_cloud_e2e::rig::{
    Run, SshRig, ctl_for, local_cloud_yaml, spawn_ctl, ssh_cloud_yaml_to,
};
use megaplan_cloud_e2e::util::{post_oversized, raw_http, sqlite};
use megaplan_cloud_e2e::{Daemon, bench, bin, skip_or_panic, wait_until};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Helpers.

/// The database is sound and still holds at least `ticks` tick rows and `registrations` rows.
fn assert_db_intact(db: &Path, registrations: usize, ticks: usize) {
    assert_eq!(
        sqlite(db, "PRAGMA integrity_check;"),
        "ok",
        "{}",
        db.display()
    );
    let regs: usize = sqlite(db, "SELECT count(*) FROM registrations;")
        .parse()
        .unwrap();
    let stored: usize = sqlite(db, "SELECT count(*) FROM ticks;").parse().unwrap();
    assert!(
        regs >= registrations,
        "registrations lost: {regs} < {registrations}"
    );
    assert!(stored >= ticks, "ticks lost: {stored} < {ticks}");
}

/// `daemon status` answers, and the daemon log holds no panic.
fn assert_serving(d: &Daemon) -> Health {
    let st = Run::from_output(&d.ctl(&d.dir, &[], &["daemon", "status", "--json"])).ok();
    let health = st.health();
    assert_eq!(health.pid, d.pid(), "{}", st.stdout);
    let log = d.log_text();
    assert!(!log.contains("panicked"), "the daemon panicked:\n{log}");
    health
}

/// The message of the structured error `r` printed; empty when it printed none.
fn message(r: &Run) -> String {
    r.try_decode::<ErrorBody>()
        .map(|e| e.message)
        .unwrap_or_default()
}

/// `registrations --json` against `d` from `cwd`, which must succeed.
fn registrations(d: &Daemon, cwd: &Path) -> Vec<RegistrationListed> {
    Run::from_output(&d.ctl(cwd, &[], &["registrations", "--json"]))
        .ok()
        .registrations()
}

/// `pgrep -a -f pattern` lines (every process whose command line matches).
fn pgrep(pattern: &str) -> Vec<String> {
    let out = Command::new("pgrep")
        .args(["-a", "-f", pattern])
        .output()
        .expect("pgrep (procps) must be installed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Waits until no process's command line matches `pattern`; on the safety net's expiry fails
/// naming `what` outlived its owner and the processes still there.
fn assert_gone(pattern: &str, what: &str) {
    assert!(
        wait_until(Duration::from_secs(30), || pgrep(pattern).is_empty()),
        "{what}: {:#?}",
        pgrep(pattern)
    );
}

/// Processes of the runner blocked in the stand-in core's hanging `status` (`hang_status`): it
/// records its pid in `.megaplan/standin-hangs.jsonl` (the observer calls the core in its own
/// interpreter, so the command line does not name the status call); those still alive.
fn hanging_status(rig: &SshRig) -> Vec<String> {
    let out = rig.container.exec(
        "f=/workspace/app/.megaplan/standin-hangs.jsonl; [ -f \"$f\" ] || exit 0; \
         python3 -c 'import json, os, sys\nfor line in open(sys.argv[1]):\n    pid = json.loads(line)[\"pid\"]\n    if os.path.exists(\"/proc/%d\" % pid): print(pid)' \"$f\"",
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| format!("pid {l} (hanging status)"))
        .collect()
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A cloud.yaml like the rig's, for another container.
fn cloud_yaml_for(rig: &SshRig, dir: &str, container: &str) -> PathBuf {
    let text = std::fs::read_to_string(&rig.cloud_yaml)
        .unwrap()
        .replace(&rig.container.name, container);
    let d = rig.project.join(dir);
    std::fs::create_dir_all(&d).unwrap();
    let p = d.join("cloud.yaml");
    std::fs::write(&p, text).unwrap();
    p
}

fn run_cmd(program: &str, args: &[&str]) -> std::process::Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// 1. sshd killed while a tick is blocked in its observation.

#[test]
fn sshd_killed_mid_tick_stores_an_error_and_the_next_tick_works() {
    let Some(mut rig) = SshRig::start("", &[]) else {
        return;
    };
    rig.launch_stalled(&["m1", "m2"]);
    rig.wait_milestone("m1");
    rig.ctl(&["register", "--every", "1h"]).ok();
    let first = rig.ctl(&["tick"]);
    assert!(first.tick().success, "{}", first.stdout);

    // The observation blocks in the core's `status`; kill sshd (and every session) under it.
    rig.control(r#"{"step_seconds": 0.1, "stall": ["m1"], "hang_status": true}"#);
    let client = spawn_ctl(&rig.daemon, &rig.project, &rig.cloud_yaml, &["tick"]);
    assert!(
        wait_until(Duration::from_secs(20), || !hanging_status(&rig).is_empty()),
        "the tick never reached the hanging status"
    );
    rig.sshd.stop();
    let out = client.wait_with_output().unwrap();
    let t = Run::from_output(&out);
    assert_eq!(t.code, Some(1), "{}\n{}", t.stdout, t.stderr);
    let record = t.tick();
    assert_eq!(record.event, TickEvent::Error, "{}", t.stdout);
    let reason = record.refused_reason.unwrap();
    assert!(
        reason.contains("chain status read failed") && reason.contains("ssh"),
        "{reason}"
    );
    assert_eq!(
        record.report.error.as_deref(),
        Some("provider_failed"),
        "{}",
        t.stdout
    );

    // sshd back and the core answering again: the next tick works on a fresh connection.
    rig.control(r#"{"step_seconds": 0.1, "stall": ["m1"]}"#);
    rig.sshd.restart();
    let next = rig.ctl(&["tick"]);
    assert!(next.tick().success, "{}", next.stdout);
    assert_eq!(next.tick().event, TickEvent::Tick, "{}", next.stdout);

    assert_serving(&rig.daemon);
    let stored = rig.ticks(100);
    let events: Vec<&str> = stored.iter().map(|t| t.event.as_str()).collect();
    assert_eq!(
        events,
        ["supervisor_tick", "supervisor_error", "supervisor_tick"],
        "newest first"
    );
    assert_db_intact(&rig.daemon.home.join("cloudd.db"), 1, 3);
    rig.control(r#"{"step_seconds": 0.1}"#);
}

// ---------------------------------------------------------------------------------------------
// 2. The runner container stopped.

#[test]
fn stopped_runner_container_is_named_in_status_ticks_and_exec() {
    let Some(rig) = SshRig::start("", &[]) else {
        return;
    };
    rig.launch_completed(&["m1"]);
    rig.ctl(&["register", "--every", "1h"]).ok();
    assert!(rig.ctl(&["tick"]).tick().success);

    let stop = run_cmd("docker", &["stop", "-t", "1", &rig.container.name]);
    assert!(stop.status.success(), "{stop:?}");

    let s = rig.ctl(&["status", "--chain"]);
    assert_eq!(s.code, Some(1), "{}", s.stdout);
    assert_eq!(
        s.error_body().error,
        ErrorCode::ProviderFailed,
        "{}",
        s.stdout
    );
    let m = message(&s);
    assert!(
        m.contains("chain observation") && m.contains("is not running"),
        "{m}"
    );
    assert!(s.stderr.contains("is not running"), "{}", s.stderr);

    let t = rig.ctl(&["tick"]);
    assert_eq!(t.tick().event, TickEvent::Error, "{}", t.stdout);
    assert!(!t.tick().success);
    let reason = t.tick().refused_reason.unwrap();
    assert!(reason.contains("is not running"), "{reason}");

    let e = rig.ctl(&["exec", "echo never"]);
    assert_ne!(e.code, Some(0), "{}", e.stdout);
    assert!(!e.stdout.contains("never"), "{}", e.stdout);
    assert!(e.stderr.contains("is not running"), "{}", e.stderr);

    assert_serving(&rig.daemon);
    assert_db_intact(&rig.daemon.home.join("cloudd.db"), 1, 2);

    // Started again, the same registration observes normally.
    let start = run_cmd("docker", &["start", &rig.container.name]);
    assert!(start.status.success(), "{start:?}");
    let again = rig.ctl(&["status", "--chain"]).ok();
    assert_eq!(
        again
            .chain_status()
            .expect("status --chain")
            .effective_status,
        ReportedStatus::Classified(EffectiveStatus::Complete),
        "{}",
        again.stdout
    );
}

// ---------------------------------------------------------------------------------------------
// 3. The remote chain state file truncated, emptied, and replaced by non-JSON.

#[test]
fn corrupt_remote_chain_state_is_named_and_stored_as_a_tick_error() {
    let Some(rig) = SshRig::start("", &[]) else {
        return;
    };
    rig.launch_completed(&["m1"]);
    rig.ctl(&["register", "--every", "1h"]).ok();
    assert!(rig.ctl(&["tick"]).tick().success);
    let state_file = rig
        .container
        .exec_ok("ls /workspace/app/.megaplan/plans/.chains/chain-*.json | grep -v runtime_policy")
        .trim()
        .to_string();
    assert!(state_file.ends_with(".json"), "{state_file}");
    let good = rig.container.read_file(&state_file).unwrap();

    let half = good.len() / 2;
    let corruptions: [(&str, Vec<u8>); 3] = [
        ("truncated", good[..half].to_vec()),
        ("empty", Vec::new()),
        ("not JSON", b"this is not json at all\n".to_vec()),
    ];
    for (n, (what, bytes)) in corruptions.iter().enumerate() {
        rig.container.write_file(&state_file, bytes);
        let s = rig.ctl(&["status", "--chain"]);
        assert_eq!(s.code, Some(1), "{what}: {}", s.stdout);
        assert_eq!(
            s.error_body().error,
            ErrorCode::ProviderFailed,
            "{what}: {}",
            s.stdout
        );
        assert_eq!(
            s.error_extra::<String>("file"),
            state_file,
            "{what}: {}",
            s.stdout
        );
        let m = message(&s);
        assert!(
            m.contains(&state_file) && m.contains("invalid JSON"),
            "{what}: {m}"
        );

        let t = rig.ctl(&["tick"]);
        assert_eq!(t.tick().event, TickEvent::Error, "{what}: {}", t.stdout);
        let reason = t.tick().refused_reason.unwrap();
        assert!(
            reason.contains(&state_file) && reason.contains("invalid JSON"),
            "{what}: {reason}"
        );
        // Writing the state file is also a change the runner watch reports, so event ticks
        // (`trigger: event`) may come between these; the manual ones are counted.
        let manual = rig
            .ticks(100)
            .iter()
            .filter(|t| t.trigger == "manual")
            .count();
        assert_eq!(manual, n + 2, "{what}");
    }

    assert_serving(&rig.daemon);
    let stored = rig.ticks(100).len();
    assert!(stored >= 4, "{stored}");
    assert_db_intact(&rig.daemon.home.join("cloudd.db"), 1, stored);
    // Restored, the state reads again.
    rig.container.write_file(&state_file, &good);
    let s = rig.ctl(&["status", "--chain"]).ok();
    assert_eq!(
        s.chain().effective_status,
        ReportedStatus::Classified(EffectiveStatus::Complete),
        "{}",
        s.stdout
    );
}

// ---------------------------------------------------------------------------------------------
// 4. A remote command that never returns: the tick deadline ends it, locally and remotely.

#[test]
fn hanging_remote_command_is_killed_at_the_tick_deadline() {
    let Some(rig) = SshRig::start("", &["--tick-timeout", "5s"]) else {
        return;
    };
    rig.launch_stalled(&["m1", "m2"]);
    rig.wait_milestone("m1");
    rig.ctl(&["register", "--every", "1h"]).ok();
    rig.control(r#"{"step_seconds": 0.1, "stall": ["m1"], "hang_status": true}"#);

    // What ended the tick is asserted from its report (the deadline's own message), not from
    // a clock in the test.
    let t = rig.ctl(&["tick"]);
    assert_eq!(t.tick().event, TickEvent::Error, "{}", t.stdout);
    let reason = t.tick().refused_reason.unwrap();
    assert!(
        reason.contains("deadline of 5s") && reason.contains("killed"),
        "{reason}"
    );

    // Nothing of that tick keeps running: not the hanging command in the container (killed
    // there at its deadline), and no local ssh client or `docker exec` beyond the runner's one
    // resident observer, which stays to answer the next tick.
    let hosts_clients = || {
        let mut pids: Vec<String> = pgrep(&format!("ssh -S {}", rig.daemon.dir.display()))
            .iter()
            .chain(pgrep(&format!("docker exec -i {}", rig.container.name)).iter())
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .filter(|p| p.chars().all(|c| c.is_ascii_digit()))
            .collect();
        pids.sort();
        pids.dedup();
        pids
    };
    assert!(
        wait_until(Duration::from_secs(10), || hanging_status(&rig).is_empty()
            && hosts_clients().len() <= 2),
        "processes of the timed-out tick are still running: {:#?} {:#?}",
        hanging_status(&rig),
        hosts_clients()
    );
    rig.control(r#"{"step_seconds": 0.1, "stall": ["m1"]}"#);
    let next = rig.ctl(&["tick"]).ok();
    assert_eq!(next.tick().event, TickEvent::Tick, "{}", next.stdout);

    assert_serving(&rig.daemon);
    assert_db_intact(&rig.daemon.home.join("cloudd.db"), 1, 1);
    rig.control(r#"{"step_seconds": 0.1, "stall": ["m1"]}"#);
    let next = rig.ctl(&["tick"]);
    assert!(next.tick().success, "{}", next.stdout);
    rig.control(r#"{"step_seconds": 0.1}"#);
}

// ---------------------------------------------------------------------------------------------
// 5. 100 MB of remote log output through `logs` with flat daemon memory.

#[test]
fn hundred_megabytes_of_logs_stream_with_flat_daemon_memory() {
    let Some(rig) = SshRig::start("", &[]) else {
        return;
    };
    let b = bench().unwrap();
    // 1,000,000 lines of 100 x's; `echo` ends the last line (docker keeps a partial line until
    // its newline), then an end marker.
    let logs_c = b.container_with(
        "mp-logs",
        &[],
        &[
            "bash",
            "-c",
            "head -c 100000000 /dev/zero | tr '\\0' 'x' | fold -w 100; echo; echo END-OF-LOGS; sleep infinity",
        ],
    );
    const MARKER: &[u8] = b"END-OF-LOGS\n";
    let expected = 100_000_000 + 1_000_000 + MARKER.len();
    let cy = cloud_yaml_for(&rig, "logs", &logs_c.name);
    let pid = rig.daemon.pid();
    // Warm up: the ssh session exists before the baseline is taken.
    let warm = Run::from_output(&rig.daemon.ctl(
        &rig.project,
        &[],
        &["--cloud-yaml", cy.to_str().unwrap(), "exec", "true"],
    ));
    assert_eq!(warm.code, Some(0), "{}", warm.stderr);
    let baseline = rss_kib(pid);

    let started = Instant::now();
    let mut client = spawn_ctl(&rig.daemon, &rig.project, &cy, &["logs", "-f"]);
    let mut stdout = client.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0usize;
        let mut tail: Vec<u8> = Vec::new();
        let mut other = 0usize;
        loop {
            let n = match stdout.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            total += n;
            other += buf[..n]
                .iter()
                .filter(|&&c| c != b'x' && c != b'\n')
                .count();
            tail.extend_from_slice(&buf[..n]);
            if tail.len() > 64 {
                tail.drain(..tail.len() - 64);
            }
            if total >= expected {
                break;
            }
        }
        (total, tail, other)
    });
    let mut peak = baseline;
    // A safety net against a stuck stream, not a speed bound: the byte count is what is asserted.
    let deadline = Instant::now() + megaplan_cloud_e2e::util::safety_net(Duration::from_secs(200));
    while !reader.is_finished() && Instant::now() < deadline {
        peak = peak.max(rss_kib(pid));
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = client.kill();
    let _ = client.wait();
    let (total, tail, other) = reader.join().unwrap();
    let took = started.elapsed();
    assert_eq!(
        total,
        expected,
        "bytes received after {took:?} (tail {:?})",
        String::from_utf8_lossy(&tail)
    );
    assert!(
        tail.ends_with(MARKER),
        "{:?}",
        String::from_utf8_lossy(&tail)
    );
    assert_eq!(other, MARKER.len() - 1, "unexpected bytes in the stream");
    let growth_mib = (peak.saturating_sub(baseline)) / 1024;
    eprintln!(
        "100 MB of logs in {took:?}; daemon RSS {} MiB -> peak {} MiB",
        baseline / 1024,
        peak / 1024
    );
    assert!(
        growth_mib < 64,
        "daemon RSS grew by {growth_mib} MiB while streaming"
    );
    // The client is gone: the daemon ends its side of the stream although the runner is quiet.
    let ssh_client = format!("ssh -S .* docker logs -f {}", logs_c.name);
    assert_gone(
        &ssh_client,
        "the daemon still streams logs to a client that left",
    );
    assert_serving(&rig.daemon);
}

// ---------------------------------------------------------------------------------------------
// 6. Idle connections and oversized bodies.

#[test]
fn idle_clients_do_not_block_others_and_huge_bodies_are_refused() {
    let d = Daemon::start(&[], &[]);
    let work = d.dir.join("w");
    std::fs::create_dir_all(&work).unwrap();
    let cy = work.join("cloud.yaml");
    std::fs::write(&cy, "provider: local\nrepo: {url: /srv/repo.git}\n").unwrap();
    let cys = cy.to_str().unwrap();
    Run::from_output(&d.ctl(&work, &[], &["--cloud-yaml", cys, "register"])).ok();
    let pid = d.pid();
    let baseline = rss_kib(pid);

    // 50 clients that connect and send nothing, and 10 that stop in the middle of a header.
    let mut idle: Vec<UnixStream> = (0..50)
        .map(|_| UnixStream::connect(&d.socket).unwrap())
        .collect();
    for _ in 0..10 {
        let mut s = UnixStream::connect(&d.socket).unwrap();
        s.write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Half: ")
            .unwrap();
        idle.push(s);
    }
    // With 60 idle connections open, requests are still answered (the client's own timeouts
    // are the safety net against a hang).
    for _ in 0..3 {
        let st = assert_serving(&d);
        assert_eq!(st.registrations, 1);
        assert_eq!(registrations(&d, &work).len(), 1);
    }

    // 8 MiB bodies, declared and chunked: 413 every time, memory flat.
    let huge = vec![b'a'; 8 * 1024 * 1024];
    for _ in 0..5 {
        let resp = post_oversized(&d.socket, huge.len());
        assert!(
            resp.starts_with("HTTP/1.1 413"),
            "{}",
            &resp[..resp.len().min(300)]
        );
    }
    let mut chunked = b"POST /v1/run HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for piece in huge.chunks(64 * 1024) {
        chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        chunked.extend_from_slice(piece);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let resp = raw_http(&d.socket, &chunked);
    assert!(
        resp.starts_with("HTTP/1.1 413"),
        "{}",
        &resp[..resp.len().min(300)]
    );
    let after = rss_kib(pid);
    let growth_mib = after.saturating_sub(baseline) / 1024;
    assert!(
        growth_mib < 16,
        "daemon RSS grew by {growth_mib} MiB (from {} to {} KiB)",
        baseline,
        after
    );
    drop(idle);
    assert_serving(&d);
    assert_db_intact(&d.home.join("cloudd.db"), 1, 0);
}

// ---------------------------------------------------------------------------------------------
// 7. A full disk, and a file system that turns read-only under the daemon.

/// A file system mounted for one test, unmounted (and its loop device freed) on drop.
struct MountGuard {
    dir: PathBuf,
    mounted: bool,
}

impl MountGuard {
    fn mount(args: &[&str], dir: &Path) -> Option<MountGuard> {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount").args(args).arg(dir).output();
        match out {
            Ok(o) if o.status.success() => Some(MountGuard {
                dir: dir.to_path_buf(),
                mounted: true,
            }),
            Ok(o) => {
                skip_or_panic(&format!(
                    "cannot mount {args:?} on {}: {}",
                    dir.display(),
                    String::from_utf8_lossy(&o.stderr).trim()
                ));
                None
            }
            Err(e) => {
                skip_or_panic(&format!("cannot run mount: {e}"));
                None
            }
        }
    }

    fn remount(&self, options: &str) -> std::process::Output {
        Command::new("mount")
            .args(["-o", options])
            .arg(&self.dir)
            .output()
            .expect("mount")
    }

    /// Unmount now (not lazily: the file system must really be released).
    fn unmount(mut self) {
        let out = Command::new("umount")
            .arg(&self.dir)
            .output()
            .expect("umount");
        assert!(
            out.status.success(),
            "umount {}: {out:?}",
            self.dir.display()
        );
        self.mounted = false;
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if self.mounted {
            // Lazy: a failed test may still hold files open there.
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

/// A write refused by the file system: `storage_failed` naming the database and the cause.
fn assert_storage_failed(r: &Run, db: &Path, cause: &[&str]) {
    assert_eq!(r.code, Some(1), "{}\n{}", r.stdout, r.stderr);
    assert_eq!(
        r.error_body().error,
        ErrorCode::StorageFailed,
        "{}",
        r.stdout
    );
    let m = message(r);
    assert!(m.contains(db.to_str().unwrap()), "{m}");
    assert!(cause.iter().any(|c| m.contains(c)), "{m}");
    assert!(r.stderr.contains("storage_failed"), "{}", r.stderr);
}

/// Registers the local project `work/a` and runs one tick of it (an error, the project was
/// never built, but stored). Returns a's cloud.yaml.
fn registered_with_one_tick(d: &Daemon, work: &Path) -> PathBuf {
    let a = local_cloud_yaml(&work.join("a"));
    ctl_for(d, &a, &["register", "--every", "1h"]).ok();
    let t = ctl_for(d, &a, &["tick"]);
    assert_eq!(t.tick().event, TickEvent::Error, "{}", t.stdout);
    a
}

/// With the storage failing for `cause`: a tick of `a` and registering `work/b` are storage
/// errors naming `db`, and the daemon still serves its one registration. Returns b's cloud.yaml.
fn assert_writes_fail(d: &Daemon, work: &Path, a: &Path, db: &Path, cause: &[&str]) -> PathBuf {
    assert_storage_failed(&ctl_for(d, a, &["tick"]), db, cause);
    let b = local_cloud_yaml(&work.join("b"));
    assert_storage_failed(&ctl_for(d, &b, &["register"]), db, cause);
    assert_eq!(assert_serving(d).registrations, 1);
    b
}

#[test]
fn full_disk_is_a_storage_error_and_the_daemon_keeps_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let Some(mount) = MountGuard::mount(
        &["-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs"],
        &dir.join("home"),
    ) else {
        return;
    };
    let mut d = Daemon::start_in(dir.clone(), &[], &[]);
    let db = d.home.join("cloudd.db");
    let work = tmp.path().join("work");
    let a = registered_with_one_tick(&d, &work);

    // Fill the file system to the last block.
    let mut fill = std::fs::File::create(d.home.join("fill")).unwrap();
    let block = vec![0u8; 64 * 1024];
    while fill.write_all(&block).is_ok() {}
    while fill.write_all(&block[..512]).is_ok() {}
    drop(fill);

    let full = ["database or disk is full", "No space left"];
    let b = assert_writes_fail(&d, &work, &a, &db, &full);
    let regs = registrations(&d, &work);
    assert_eq!(regs[0].registration.ticks_run, 1, "{regs:#?}");

    // Space back: the same daemon stores again.
    std::fs::remove_file(d.home.join("fill")).unwrap();
    let t = ctl_for(&d, &a, &["tick"]);
    assert_eq!(
        t.try_decode::<TickRecord>().map(|t| t.key.len()),
        Some(16),
        "{}",
        t.stdout
    );
    ctl_for(&d, &b, &["register"]).ok();
    assert_db_intact(&db, 2, 2);

    // Read-only: Linux refuses `remount,ro` while the daemon holds its database open for
    // writing, so the daemon is stopped first; started on the read-only file system it must
    // refuse with the database named, not serve a store that cannot write.
    assert_eq!(d.terminate().code(), Some(0), "{}", d.log_text());
    let ro = mount.remount("remount,ro");
    assert!(ro.status.success(), "{ro:?}");
    let out = Command::new(bin("megaplan-cloudd"))
        .env("MEGAPLAN_CLOUD_HOME", &d.home)
        .env("MEGAPLAN_CLOUDD_SOCKET", &d.socket)
        .env_remove("XDG_RUNTIME_DIR")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let db_line = err
        .lines()
        .find(|l| l.contains("database") && l.contains(db.to_str().unwrap()))
        .unwrap_or_else(|| panic!("no error names the database:\n{err}"));
    assert!(
        db_line.contains("Read-only file system") && db_line.contains("remount"),
        "{db_line}"
    );
    assert!(!db_line.contains("corrupt"), "{db_line}");
    let rw = mount.remount("remount,rw");
    assert!(rw.status.success(), "{rw:?}");
    let d2 = Daemon::start_in(dir, &[], &[]);
    let st = assert_serving(&d2);
    assert_eq!(st.registrations, 2);
    assert_db_intact(&db, 2, 2);
    drop(d2);
    drop(d);
}

#[test]
fn file_system_turning_read_only_is_a_storage_error_and_the_daemon_keeps_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let image = tmp.path().join("fs.img");
    let truncate = run_cmd("truncate", &["-s", "32M", image.to_str().unwrap()]);
    assert!(truncate.status.success(), "{truncate:?}");
    let mkfs = run_cmd("mkfs.ext4", &["-q", "-F", image.to_str().unwrap()]);
    if !mkfs.status.success() {
        skip_or_panic(&format!("mkfs.ext4 failed: {mkfs:?}"));
        return;
    }
    let dir = tmp.path().join("d");
    let home = dir.join("home");
    let Some(mount) = MountGuard::mount(&["-o", "loop", image.to_str().unwrap()], &home) else {
        return;
    };
    let mut d = Daemon::start_in(dir.clone(), &[], &[]);
    let db = d.home.join("cloudd.db");
    let work = tmp.path().join("work");
    let a = registered_with_one_tick(&d, &work);

    // What the kernel does on a disk error with errors=remount-ro: the file system turns
    // read-only under the running daemon (`remount,ro` itself is refused while files are open
    // for writing). Everything committed so far is flushed first.
    assert!(
        run_cmd("sync", &["-f", home.to_str().unwrap()])
            .status
            .success()
    );
    let abort = mount.remount("remount,abort");
    assert!(abort.status.success(), "{abort:?}");

    let ro = ["disk I/O error", "readonly", "read-only", "Read-only"];
    assert_writes_fail(&d, &work, &a, &db, &ro);
    let stored = Run::from_output(&d.ctl(
        &work,
        &[],
        &["--cloud-yaml", a.to_str().unwrap(), "ticks", "--json"],
    ))
    .ok();
    assert_eq!(
        stored.decode::<Vec<TickRecord>>().len(),
        1,
        "{}",
        stored.stdout
    );
    assert_eq!(d.terminate().code(), Some(0), "{}", d.log_text());

    // Mounted again (the journal is replayed), nothing committed before the failure is lost.
    mount.unmount();
    let Some(_mount) = MountGuard::mount(&["-o", "loop", image.to_str().unwrap()], &home) else {
        return;
    };
    assert_db_intact(&db, 1, 1);
    let d2 = Daemon::start_in(dir, &[], &[]);
    let st = assert_serving(&d2);
    assert_eq!(st.registrations, 1);
    assert_eq!(st.ticks.run, 1);
    drop(d2);
}

// ---------------------------------------------------------------------------------------------
// 8. SIGTERM while a build runs on the runner's host.

#[test]
fn sigterm_during_a_build_exits_zero_within_the_grace_period() {
    let b = match bench() {
        Some(b) => b,
        None => return,
    };
    let Some(mut rig) = SshRig::start("", &["--shutdown-grace", "3s"]) else {
        return;
    };
    let fixture = rig.project.join("fixture");
    std::fs::create_dir_all(&fixture).unwrap();
    std::fs::write(
        fixture.join("Dockerfile"),
        format!(
            // The container name makes the slow step unique, so it never comes from the cache.
            "FROM {}\nRUN echo fixture-build-running {} && sleep 30\nCMD [\"sleep\", \"infinity\"]\n",
            b.image, rig.container.name
        ),
    )
    .unwrap();
    let mut text = std::fs::read_to_string(&rig.cloud_yaml).unwrap();
    text.push_str(&format!(
        "image:\n  dockerfile: {}\n",
        fixture.join("Dockerfile").display()
    ));
    std::fs::write(&rig.cloud_yaml, text).unwrap();
    let _leftovers = megaplan_cloud_e2e::rig::DeployLeftovers {
        image: rig.container.name.clone(),
        remote_dir: format!("/tmp/mp-e2e-{}", rig.container.name),
    };
    rig.ctl(&["register", "--every", "1h"]).ok();
    rig.ctl(&["tick"]);

    let mut client = spawn_ctl(&rig.daemon, &rig.project, &rig.cloud_yaml, &["build"]);
    // The build's own output is progress, so the client prints it on stderr (stdout stays the
    // one JSON document, read after the client ends).
    let build_output = client.stderr.take().unwrap();
    let (seen_tx, seen_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(build_output).lines().map_while(Result::ok) {
            if line.contains("fixture-build-running") {
                let _ = seen_tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    // Waiting for an event: the generous safety net, never a measurement.
    let mut seen = false;
    wait_until(Duration::from_secs(60), || {
        seen = seen_rx.try_recv().is_ok();
        seen
    });
    assert!(seen, "the build never reached its slow step");

    let status = rig.daemon.terminate();
    assert_eq!(status.code(), Some(0), "{}", rig.daemon.log_text());
    // That the daemon stopped at its grace period rather than waiting for the build is shown
    // below by the client's `shutting_down` error (a finished build would have answered with
    // its result), not by a clock in the test.
    // The client is not left hanging: it ends at once, with the result or a clear error.
    let mut client_done = None;
    wait_until(Duration::from_secs(5), || {
        client_done = client.try_wait().unwrap();
        client_done.is_some()
    });
    let Some(code) = client_done else {
        let _ = client.kill();
        panic!("the client still waits after the daemon stopped");
    };
    let stderr = reader.join().unwrap();
    let mut printed = String::new();
    client
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut printed)
        .unwrap();
    assert_eq!(code.code(), Some(1), "{printed}\n{stderr}");
    let json_start = printed.find("\n{").map_or(0, |i| i + 1);
    let err: Value = serde_json::from_str(&printed[json_start..])
        .unwrap_or_else(|e| panic!("no JSON error on stdout ({e}): {printed}"));
    assert_eq!(err["error"], "shutting_down", "{printed}");
    let m = err["message"].as_str().unwrap();
    assert!(m.contains("shut down") && m.contains("build"), "{m}");
    assert!(stderr.contains("shutting_down"), "{stderr}");

    assert_db_intact(&rig.daemon.home.join("cloudd.db"), 1, 1);
    let dir = rig.daemon.dir.clone();
    let ssh_config = rig.sshd.ssh_config.display().to_string();
    let d2 = Daemon::start_in(dir, &[("MEGAPLAN_CLOUDD_SSH_CONFIG", &ssh_config)], &[]);
    let st = assert_serving(&d2);
    assert_eq!(st.registrations, 1);
    assert_eq!(st.ticks.run, 1);
    drop(d2);
    // The interrupted build still runs on the runner's host: end its client and its RUN
    // container, so no step completes and nothing is left in the image cache.
    rig.sshd.stop();
    remove_containers_running(&rig.container.name);
}

/// `docker rm -f` every container whose command mentions `marker` (a build's RUN step).
fn remove_containers_running(marker: &str) {
    let out = run_cmd(
        "docker",
        &["ps", "-a", "--no-trunc", "--format", "{{.ID}} {{.Command}}"],
    );
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let (true, Some(id)) = (line.contains(marker), line.split_whitespace().next()) {
            run_cmd("docker", &["rm", "-f", id]);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 9. A damaged database: refused at start (quick_check), and 503 "storage failed" from health
//    when it breaks under a running daemon, never "0 registrations".

/// Pages of the registrations table and its primary-key index (SQLite's dbstat table).
fn registration_pages(db: &Path) -> Vec<u64> {
    sqlite(
        db,
        "SELECT pageno FROM dbstat WHERE name IN ('registrations', 'sqlite_autoindex_registrations_1');",
    )
    .lines()
    .map(|l| l.parse().unwrap())
    .collect()
}

/// Overwrite whole pages of the database file with junk (what a failing disk leaves).
fn damage_pages(db: &Path, pages: &[u64]) {
    use std::io::{Seek, SeekFrom};
    let page_size: u64 = sqlite(db, "PRAGMA page_size;").parse().unwrap();
    let mut f = std::fs::OpenOptions::new().write(true).open(db).unwrap();
    for &p in pages {
        assert!(p > 1, "page 1 holds the schema; damage table pages only");
        f.seek(SeekFrom::Start((p - 1) * page_size)).unwrap();
        f.write_all(&vec![0x5a; page_size as usize]).unwrap();
    }
    f.sync_all().unwrap();
}

/// Start `megaplan-cloudd` on `d`'s dirs and wait (bounded) for it to exit by itself.
fn start_expecting_exit(d: &Daemon) -> (Option<i32>, String) {
    let log = d.dir.join("refused.log");
    let mut child = Command::new(bin("megaplan-cloudd"))
        .arg("--no-log-file")
        .env("MEGAPLAN_CLOUD_HOME", &d.home)
        .env("MEGAPLAN_CLOUDD_SOCKET", &d.socket)
        .env_remove("XDG_RUNTIME_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut status = None;
    wait_until(Duration::from_secs(60), || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    (
        status.and_then(|s| s.code()),
        std::fs::read_to_string(&log).unwrap_or_default(),
    )
}

#[test]
fn damaged_database_is_refused_at_start_by_quick_check() {
    let mut d = Daemon::start(&[], &[]);
    let db = d.home.join("cloudd.db");
    let work = d.dir.join("work");
    for i in 0..60 {
        let cy = local_cloud_yaml(&work.join(format!("c{i:02}")));
        ctl_for(&d, &cy, &["register", "--every", "1h"]).ok();
    }
    assert_eq!(d.terminate().code(), Some(0), "{}", d.log_text());
    let pages = registration_pages(&db);
    assert!(!pages.is_empty());
    damage_pages(&db, &pages);
    let before = std::fs::read(&db).unwrap();

    let (code, err) = start_expecting_exit(&d);
    assert_eq!(code, Some(1), "a damaged database was served:\n{err}");
    let line = err
        .lines()
        .find(|l| l.contains(db.to_str().unwrap()))
        .unwrap_or_else(|| panic!("no error names the database:\n{err}"));
    assert!(
        line.contains("is damaged") && line.contains("quick_check") && line.contains("backup"),
        "{line}"
    );
    assert!(!d.socket.exists(), "a refused daemon left its socket");
    assert_eq!(
        std::fs::read(&db).unwrap(),
        before,
        "the refused file was modified"
    );
}

#[test]
fn database_damaged_under_a_running_daemon_makes_health_say_storage_failed() {
    let d = Daemon::start(&[], &[]);
    let db = d.home.join("cloudd.db");
    let work = d.dir.join("work");
    for i in 0..60 {
        let cy = local_cloud_yaml(&work.join(format!("c{i:02}")));
        ctl_for(&d, &cy, &["register", "--every", "1h"]).ok();
    }
    let st = assert_serving(&d);
    assert_eq!(st.registrations, 60);
    // Everything into the main file, then damage the registrations' pages there, then write
    // another table so every connection of the daemon drops its page cache.
    assert_eq!(sqlite(&db, "PRAGMA wal_checkpoint(TRUNCATE);"), "0|0|0");
    damage_pages(&db, &registration_pages(&db));
    sqlite(
        &db,
        "INSERT OR REPLACE INTO counters (name, value) VALUES ('fault_probe', 0);",
    );

    let resp = raw_http(
        &d.socket,
        b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(resp.starts_with("HTTP/1.1 503"), "{resp}");
    assert!(resp.contains("storage_failed"), "{resp}");
    let st = Run::from_output(&d.ctl(&d.dir, &[], &["daemon", "status", "--json"]));
    assert_eq!(st.code, Some(1), "{}", st.stdout);
    assert_eq!(
        st.error_body().error,
        ErrorCode::StorageFailed,
        "{}",
        st.stdout
    );
    assert!(message(&st).contains(db.to_str().unwrap()), "{}", st.stdout);
    assert!(!st.stdout.contains("\"registrations\""), "{}", st.stdout);
    let log = d.log_text();
    assert!(!log.contains("panicked"), "the daemon panicked:\n{log}");
}

// ---------------------------------------------------------------------------------------------
// 10. A manual tick whose client goes away mid-tick still ends with a stored report.

#[test]
fn manual_tick_outlives_a_client_that_disconnects() {
    // A TCP listener that accepts and never speaks: the tick's ssh handshake hangs there until
    // the tick deadline kills it.
    let blackhole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    blackhole.set_nonblocking(true).unwrap();
    let port = blackhole.local_addr().unwrap().port();
    let d = Daemon::start(&[], &["--tick-timeout", "3s"]);
    let work = d.dir.join("work");
    let cy = ssh_cloud_yaml_to(&work, port);
    ctl_for(
        &d,
        &cy,
        &[
            "register",
            "--every",
            "1h",
            "--remote-spec",
            "/w/chain.yaml",
        ],
    )
    .ok();
    let key = registrations(&d, &work)[0].registration.key.clone();

    let mut client = UnixStream::connect(&d.socket).unwrap();
    client
        .write_all(
            format!("POST /v1/clouds/{key}/tick HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
    let mut conn = None;
    assert!(
        wait_until(Duration::from_secs(60), || {
            conn = blackhole.accept().ok();
            conn.is_some()
        }),
        "the tick never reached the ssh host"
    );
    // The client gives up mid-tick (curl -m 2, a closed terminal).
    drop(client);

    let stored = || {
        Run::from_output(&d.ctl(&work, &[], &["registrations", "--json"]))
            .try_decode::<Vec<RegistrationListed>>()
            .is_some_and(|regs| regs.first().is_some_and(|r| r.registration.ticks_run == 1))
    };
    assert!(
        wait_until(Duration::from_secs(120), stored),
        "the tick's report was never stored after its client left:\n{}",
        d.log_text()
    );
    let t = Run::from_output(&d.ctl(
        &work,
        &[],
        &["--cloud-yaml", cy.to_str().unwrap(), "ticks", "--json"],
    ))
    .ok();
    let ticks: Vec<TickRecord> = t.decode();
    assert_eq!(ticks[0].trigger, "manual", "{}", t.stdout);
    assert_eq!(ticks[0].event, TickEvent::Error, "{}", t.stdout);
    drop(conn);
    assert_serving(&d);
    assert_db_intact(&d.home.join("cloudd.db"), 1, 1);
}

// ---------------------------------------------------------------------------------------------
// 11. The launcher and the registered cloud.yaml itself as a way in.

#[test]
fn launcher_with_shell_syntax_is_refused_when_cloud_yaml_is_loaded() {
    let d = Daemon::start(&[], &[]);
    let work = d.dir.join("work");
    let canary = d.dir.join("launcher-ran");
    let hostile = format!("python -m x; touch {}", canary.display());
    let bad = local_cloud_yaml(&work.join("bad"));
    std::fs::write(
        &bad,
        format!(
            "provider: local\nrepo: {{url: /srv/repo.git}}\nmegaplan:\n  launcher: \"{hostile}\"\n"
        ),
    )
    .unwrap();
    let r = ctl_for(&d, &bad, &["register", "--every", "1h"]);
    assert_eq!(r.code, Some(1), "{}", r.stdout);
    assert_eq!(r.error_body().error, ErrorCode::InvalidSpec, "{}", r.stdout);
    assert_eq!(r.error_field(), "megaplan.launcher", "{}", r.stdout);
    assert!(message(&r).contains("\"x;\""), "{}", r.stdout);

    // A registered cloud.yaml that later gains such a launcher: its ticks refuse, by field.
    let good = local_cloud_yaml(&work.join("good"));
    ctl_for(&d, &good, &["register", "--every", "1h"]).ok();
    let mut text = std::fs::read_to_string(&good).unwrap();
    text.push_str(&format!("megaplan:\n  launcher: \"{hostile}\"\n"));
    std::fs::write(&good, text).unwrap();
    let t = ctl_for(&d, &good, &["tick"]);
    assert_eq!(t.tick().event, TickEvent::Error, "{}", t.stdout);
    let reason = t.tick().refused_reason.unwrap();
    assert!(reason.contains("megaplan.launcher"), "{reason}");
    assert!(!canary.exists(), "the launcher's shell syntax ran");
    assert_serving(&d);
}

#[test]
fn registered_cloud_yaml_writable_by_group_or_others_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let d = Daemon::start(&[], &[]);
    let work = d.dir.join("work");
    let cy = local_cloud_yaml(&work.join("shared"));
    std::fs::set_permissions(&cy, std::fs::Permissions::from_mode(0o666)).unwrap();
    let r = ctl_for(&d, &cy, &["register", "--every", "1h"]);
    assert_eq!(r.code, Some(1), "{}", r.stdout);
    let m = message(&r);
    assert!(
        m.contains("writable by others") && m.contains("chmod go-w"),
        "{m}"
    );
    let regs = registrations(&d, &work);
    assert_eq!(regs.len(), 0, "{regs:#?}");

    // Registered while private, then opened to its group: the tick refuses and says why.
    std::fs::set_permissions(&cy, std::fs::Permissions::from_mode(0o644)).unwrap();
    ctl_for(&d, &cy, &["register", "--every", "1h"]).ok();
    std::fs::set_permissions(&cy, std::fs::Permissions::from_mode(0o664)).unwrap();
    let t = ctl_for(&d, &cy, &["tick"]);
    assert_eq!(t.tick().event, TickEvent::Error, "{}", t.stdout);
    let reason = t.tick().refused_reason.unwrap();
    assert!(reason.contains("writable by its group"), "{reason}");
    assert_serving(&d);
}

// ---------------------------------------------------------------------------------------------
// 12. Nothing outlives its owner (issue 21, item 3): a remote command whose client left or whose
//     deadline passed, a notify command past its timeout, the resident observer after SIGTERM.

/// Processes in the container whose command line holds `marker` (pgrep, run by `docker exec`
/// directly so no shell of ours carries the marker; pgrep never lists itself).
fn container_procs(rig: &SshRig, marker: &str) -> Vec<String> {
    let out = run_cmd(
        "docker",
        &["exec", &rig.container.name, "pgrep", "-a", "-f", marker],
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// The per-call pid files left in the runner (`runner::group::CALLS_DIR`).
fn call_files(rig: &SshRig) -> Vec<String> {
    let out = rig
        .container
        .exec("ls -A /tmp/megaplan-cloudd-calls 2>/dev/null; true");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn exec_whose_client_is_killed_leaves_nothing_running_in_the_container() {
    let Some(rig) = SshRig::start("", &[]) else {
        return;
    };
    let marker = format!("lifetime-{}", megaplan_cloud_e2e::util::unique_suffix());
    // Endless output the client never reads.
    let mut client = spawn_ctl(
        &rig.daemon,
        &rig.project,
        &rig.cloud_yaml,
        &["exec", &format!("yes {marker}")],
    );
    assert!(
        wait_until(Duration::from_secs(30), || !container_procs(&rig, &marker)
            .is_empty()),
        "the command never started in the container"
    );
    client.kill().unwrap();
    client.wait().unwrap();
    assert_runner_left_clean(&rig, &marker, "its client");
    // The same session still serves the next command.
    let next = rig.ctl(&["exec", "echo still-here"]);
    assert_eq!(next.code, Some(0), "{}\n{}", next.stdout, next.stderr);
    assert!(next.stdout.contains("still-here"), "{}", next.stdout);
    assert!(call_files(&rig).is_empty(), "{:?}", call_files(&rig));
    assert_serving(&rig.daemon);
}

/// Waits (safety net only) until no process of `marker` runs in the container and no call's
/// pid file is left; `owner` names what the command should not have outlived.
fn assert_runner_left_clean(rig: &SshRig, marker: &str, owner: &str) {
    assert!(
        wait_until(Duration::from_secs(30), || container_procs(rig, marker)
            .is_empty()),
        "the command outlived {owner}: {:#?}",
        container_procs(rig, marker)
    );
    assert!(
        wait_until(Duration::from_secs(30), || call_files(rig).is_empty()),
        "pid files left: {:?}",
        call_files(rig)
    );
}

#[test]
fn exec_past_its_command_timeout_leaves_nothing_running_in_the_container() {
    let Some(rig) = SshRig::start("", &["--command-timeout", "3s"]) else {
        return;
    };
    let marker = format!("lifetime-{}", megaplan_cloud_e2e::util::unique_suffix());
    // It ignores the TERM of the runner-side `timeout`; only a KILL of its group ends it.
    let r = rig.ctl(&[
        "exec",
        &format!("trap '' TERM; while :; do sleep 1; done; echo {marker}"),
    ]);
    assert_eq!(r.code, Some(1), "{}\n{}", r.stdout, r.stderr);
    assert_eq!(
        r.error_body().error,
        ErrorCode::DeadlineExceeded,
        "{}",
        r.stdout
    );
    assert_runner_left_clean(&rig, &marker, "its deadline");
    assert_serving(&rig.daemon);
}

#[test]
fn notify_command_past_its_timeout_leaves_no_child_behind() {
    let Some((rig, _cfg)) =
        SshRig::start_notifying("", "retry: {max_attempts: 1, timeout: 2s}\n", &[])
    else {
        return;
    };
    // A unique duration is the marker: `sleep 300.<n>` is this test's sleep, nobody else's.
    let n = std::process::id();
    let sleeper = format!("sleep 300.{n}");
    rig.launch_completed(&["m1"]);
    rig.ctl(&[
        "register",
        "--every",
        "1h",
        "--notify-command",
        &format!("{sleeper}; echo done"),
    ])
    .ok();
    rig.ctl(&["tick"]).ok();
    let outbox = || rig.ctl(&["notifications", "--json"]).ok().outbox();
    assert!(
        wait_until(Duration::from_secs(30), || outbox()
            .first()
            .is_some_and(|r| r.status == "failed")),
        "the attempt was never reported: {:#?}",
        outbox()
    );
    let row = outbox();
    assert_eq!(row[0].attempts, 1, "{row:#?}");
    assert!(
        row[0]
            .last_error
            .as_deref()
            .unwrap_or_default()
            .contains("did not finish"),
        "{row:#?}"
    );
    assert_gone(&sleeper, "the notify command's child outlived its timeout");
    assert_serving(&rig.daemon);
}

#[test]
fn sigterm_during_a_hung_tick_ends_the_runner_side_observer() {
    let Some(mut rig) = SshRig::start("", &["--shutdown-grace", "2s"]) else {
        return;
    };
    rig.launch_stalled(&["m1", "m2"]);
    rig.wait_milestone("m1");
    rig.ctl(&["register", "--every", "1h"]).ok();
    rig.control(r#"{"step_seconds": 0.1, "stall": ["m1"], "hang_status": true}"#);
    let client = spawn_ctl(&rig.daemon, &rig.project, &rig.cloud_yaml, &["tick"]);
    assert!(
        wait_until(Duration::from_secs(30), || !hanging_status(&rig).is_empty()),
        "the tick never reached the hanging status"
    );
    let observer = hanging_status(&rig);
    rig.daemon.terminate();
    let _ = client.wait_with_output();
    assert!(
        wait_until(Duration::from_secs(30), || hanging_status(&rig).is_empty()),
        "the runner-side observer outlived the daemon: {observer:?} still {:?}",
        hanging_status(&rig)
    );
    rig.control(r#"{"step_seconds": 0.1}"#);
}

/// Ten registrations whose runner observation hangs (their chain spec on the runner is a FIFO:
/// reading it never returns) and one healthy registration, all on one sshd host and one runner,
/// all `--every 15s`. The hung ones end at the observation deadline, back off and may hold only
/// a small share of the tick slots; the healthy one runs every occurrence that comes due. Judged
/// by counts: occurrences run, skipped and missed. The observation deadline (5s) is well under
/// the interval, as docs/operations.md advises: the first tick of a runner that just hung holds
/// an ordinary slot until then.
#[test]
fn hung_runners_never_starve_a_healthy_registration() {
    let Some(rig) = SshRig::start(
        "",
        &[
            "--tick-timeout",
            "60s",
            "--observe-timeout",
            "5s",
            "--max-concurrent-ticks",
            "8",
            "--max-ticks-per-host",
            "4",
        ],
    ) else {
        return;
    };
    rig.launch_stalled(&["m1", "m2"]);
    rig.wait_milestone("m1");

    let mut hung = Vec::new();
    for i in 0..10 {
        let fifo = format!("/workspace/app/.megaplan/hung-{i}.yaml");
        rig.container.exec_ok(&format!("mkfifo {fifo}"));
        let cy = cloud_yaml_for(&rig, &format!("hung-{i}"), &rig.container.name);
        let r = ctl_for(
            &rig.daemon,
            &cy,
            &["register", "--every", "15s", "--remote-spec", &fifo],
        )
        .ok();
        hung.push((r.decode::<RegisterResponse>().key, cy));
    }
    let healthy = rig.ctl(&["register", "--every", "15s"]).ok();
    let healthy = healthy.decode::<RegisterResponse>().key;

    let regs = || -> Vec<Registration> {
        rig.ctl(&["registrations", "--json"])
            .try_decode::<Vec<RegistrationListed>>()
            .unwrap_or_default()
            .into_iter()
            .map(|r| r.registration)
            .collect()
    };
    let reg = |key: &str| -> Option<Registration> { regs().into_iter().find(|r| r.key == key) };
    let scheduled = || -> Vec<TickRecord> {
        rig.ticks(100)
            .into_iter()
            .filter(|t| t.trigger == "schedule")
            .collect()
    };

    // Bounded by counts: wait until six occurrences of the healthy registration came due and
    // ended one way or another (ran, or skipped because its previous tick still waited).
    const N: u64 = 6;
    let came_due = || scheduled().len() as u64 + reg(&healthy).map_or(0, |r| r.ticks_skipped);
    assert!(
        wait_until(Duration::from_secs(120), || came_due() >= N),
        "the healthy registration saw {} occurrences",
        came_due()
    );
    let runs = scheduled();
    let h = reg(&healthy).expect("the healthy registration");
    assert_eq!(
        h.ticks_skipped, 0,
        "the healthy registration skipped occurrences: {h:?}"
    );
    assert!(runs.len() as u64 >= N, "{runs:?}");
    let mut dues: Vec<chrono::DateTime<chrono::FixedOffset>> = runs
        .iter()
        .map(|t| chrono::DateTime::parse_from_rfc3339(t.due_at.as_deref().unwrap()).unwrap())
        .collect();
    dues.sort();
    for w in dues.windows(2) {
        assert_eq!(
            (w[1] - w[0]).num_seconds(),
            15,
            "an occurrence between {} and {} never ran",
            w[0],
            w[1]
        );
    }
    for t in &runs {
        assert!(t.success, "{t:?}");
        assert_eq!(t.event, TickEvent::Tick, "{t:?}");
    }
    assert!(h.backoff.is_none(), "the healthy one backs off: {h:?}");

    // The hung ones hit their observation deadline, back off, and say why.
    assert!(
        wait_until(Duration::from_secs(60), || {
            let all = regs();
            hung.iter().all(|(k, _)| {
                all.iter()
                    .any(|r| r.key == *k && r.backoff.as_ref().is_some_and(|b| b.strikes >= 1))
            })
        }),
        "not every hung registration backs off: {:#?}",
        regs()
    );
    for (k, _) in &hung {
        let r = reg(k);
        let reason = r
            .as_ref()
            .and_then(|r| r.backoff.as_ref())
            .map(|b| b.reason.clone())
            .unwrap_or_default();
        assert!(reason.contains("within 5s"), "{k}: {r:?}");
    }
    let (_, cy) = &hung[0];
    let e = ctl_for(&rig.daemon, cy, &["explain", "--json"]);
    let explanation: Explanation = e.decode();
    // Beside its `lines`, the api keeps the explanation whole (`rest`): its back-off is the
    // registration's (a typed `TickBackoff`), its refusal the last tick's.
    let backoff: Option<TickBackoff> = explanation
        .rest
        .get("backoff")
        .and_then(|b| serde_json::from_value(b.clone()).ok());
    assert!(backoff.is_some_and(|b| b.strikes >= 1), "{}", e.stdout);
    assert!(
        explanation.lines.iter().any(|l| l.starts_with("backoff: ")),
        "{}",
        e.stdout
    );
    assert_eq!(
        explanation
            .rest
            .get("refused_reason")
            .and_then(Value::as_str)
            .map(|r| r.contains("within 5s")),
        Some(true),
        "{}",
        e.stdout
    );
    // Occurrences held back by a back-off are counted, never silently lost.
    assert!(
        wait_until(Duration::from_secs(60), || {
            assert_serving(&rig.daemon).schedule.backed_off >= 1
        }),
        "no occurrence was held back"
    );
    let st = assert_serving(&rig.daemon);
    assert_eq!(st.schedule.missed, 0, "{:?}", st.schedule);
    assert_db_intact(&rig.daemon.home.join("cloudd.db"), 11, N as usize);
}
