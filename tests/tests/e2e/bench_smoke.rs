//! Proves the bench itself: sshd + docker + containers, the stand-in megaplan core, the gh stand-in and the
//! railway CLI stand-in. Every later end-to-end test relies on these behaving as documented in
//! tests/bench/README.md.
//!
//! The documents read here are the stand-ins' own (the core's chain and plan state files, its
//! `status` output, the recorded argv of a fake `docker`): no api type carries them, so they are
//! read as JSON by field name on purpose.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use megaplan_cloud_e2e::{Container, Sshd, bench, repo_in_container, wait_until};
use megaplan_cloudd::shell::quote;
use serde_json::{Value, json};
use sha1::{Digest, Sha1};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn describe(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    )
}

/// `<dir>/.megaplan/plans/.chains/<stem>-<sha1(path)[:12]>.json` computed independently of the stand-in.
fn state_path(spec: &str) -> String {
    let p = Path::new(spec);
    let digest = hex::encode(Sha1::digest(spec.as_bytes()));
    format!(
        "{}/.megaplan/plans/.chains/{}-{}.json",
        p.parent()
            .map(|d| d.display().to_string())
            .unwrap_or_default(),
        p.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        &digest[..12]
    )
}

const LAUNCHER: &str = "python -m arnold_pipelines.megaplan";

/// A workspace `/w/app` cloned from the in-container fixture repo, with three milestone ideas and a chain spec.
fn chain_workspace(c: &Container, spec_name: &str, control: &Value) -> String {
    let repo = repo_in_container(c);
    c.exec_ok(&format!("test -d /w/app || git clone -q {repo} /w/app"));
    for m in ["m1", "m2", "m3"] {
        c.write_file(
            &format!("/w/app/ideas/{m}.txt"),
            format!("idea for {m}\n").as_bytes(),
        );
    }
    let spec = format!("/w/app/{spec_name}");
    c.write_file(
        &spec,
        b"base_branch: main\nmilestones:\n  - label: m1\n    idea: ideas/m1.txt\n  - label: m2\n    idea: ideas/m2.txt\n    branch: megaplan/m2\n  - label: m3\n    idea: /w/app/ideas/m3.txt\n",
    );
    c.write_file(
        "/w/app/.megaplan/standin-control.json",
        control.to_string().as_bytes(),
    );
    spec
}

fn chain_state(c: &Container, spec: &str) -> Value {
    c.read_json(&state_path(spec))
        .unwrap_or_else(|| panic!("no chain state at {} in {}", state_path(spec), c.name))
}

fn completed_labels(state: &Value) -> Vec<String> {
    state["completed"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["label"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn ssh_reaches_docker_on_the_bench_host_and_relays_exit_codes_and_hostile_words() {
    let Some(b) = bench() else { return };
    let c = b.container("smoke-ssh");
    let sshd = Sshd::start();

    let inner = quote("echo hi; exit 3");
    let out = sshd.ssh(&format!("docker exec {} bash -lc {inner}", c.name));
    assert_eq!(text(&out.stdout), "hi\n", "{}", describe(&out));
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));

    let hostile =
        "it's \"quoted\" $(touch /tmp/pwned) `touch /tmp/pwned2` $HOME\nsecond line; rm -rf /nope";
    let out = sshd.ssh(&format!(
        "docker exec {} printf %s {}",
        c.name,
        quote(hostile)
    ));
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(text(&out.stdout), hostile);
    assert!(c.read_file("/tmp/pwned").is_none() && c.read_file("/tmp/pwned2").is_none());
    assert!(!Path::new("/tmp/pwned").exists());

    // The same through the -o options form, plus the log-derived counters.
    let out = Command::new("ssh")
        .args(sshd.ssh_options())
        .args(["root@127.0.0.1", "true"])
        .stdin(Stdio::null())
        .output()
        .expect("ssh runs");
    assert!(out.status.success(), "{}", describe(&out));
    assert!(wait_until(Duration::from_secs(5), || sshd.exec_requests() == 3));
    assert_eq!(sshd.accepted_connections(), 3);
}

#[test]
fn sshd_restart_keeps_port_and_keys_and_counts_multiplexed_commands_once() {
    let Some(_) = bench() else { return };
    let mut sshd = Sshd::start();
    let control = sshd.dir.join("cm");
    let mux = |cmd: &str| {
        Command::new("ssh")
            .arg("-F")
            .arg(&sshd.ssh_config)
            .args(["-o", "ControlMaster=auto", "-o", "ControlPersist=30"])
            .arg("-o")
            .arg(format!("ControlPath={}", control.display()))
            .args(["root@127.0.0.1", cmd])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .expect("ssh runs")
    };
    for i in 0..3 {
        let out = mux(&format!("echo {i}"));
        assert_eq!(text(&out.stdout), format!("{i}\n"), "{}", describe(&out));
    }
    assert!(wait_until(Duration::from_secs(5), || sshd.exec_requests() == 3));
    assert_eq!(
        sshd.accepted_connections(),
        1,
        "three commands over one master connection"
    );

    let port = sshd.port;
    sshd.restart();
    assert_eq!(sshd.port, port);
    // The master died with the old server; a plain connection with the same known_hosts must work.
    let out = sshd.ssh("echo after-restart");
    assert_eq!(text(&out.stdout), "after-restart\n", "{}", describe(&out));
    assert_eq!(sshd.accepted_connections(), 2);

    sshd.stop();
    let out = sshd.ssh("true");
    assert!(!out.status.success(), "a stopped sshd refuses connections");
}

#[test]
fn runner_image_has_the_launcher_tools_and_standins() {
    let Some(b) = bench() else { return };
    assert!(b.image.starts_with("megaplan-e2e:"), "{}", b.image);
    let c = b.container("smoke-image");
    let out = c.exec_ok(
        "python --version; tmux -V; git --version; python3 -c 'import yaml; print(\"yaml ok\")';
         pip install -e /src/megaplan && pip3 --version && python -m pip install x && npm i -g @openai/codex;
         printf 'k3y' | codex login --with-api-key; codex login --api-key hunter22; cat /var/log/standin-pip.log \
           /var/log/standin-npm.log /var/log/standin-codex.log",
    );
    assert!(out.contains("Python 3.11"), "{out}");
    assert!(out.contains("yaml ok"), "{out}");
    assert!(
        out.contains(r#"["pip", "install", "-e", "/src/megaplan"]"#),
        "{out}"
    );
    assert!(out.contains(r#"["-m", "pip", "install", "x"]"#), "{out}");
    assert!(out.contains(r#"["i", "-g", "@openai/codex"]"#), "{out}");
    assert!(out.contains(r#"["login", "--api-key", "<set>"]"#), "{out}");
    assert!(
        !out.contains("hunter22") && !out.contains("k3y"),
        "secrets stay off disk: {out}"
    );
    // No network inside the runner.
    let out = c.exec("getent hosts deb.debian.org || exit 9");
    assert_eq!(out.status.code(), Some(9), "{}", describe(&out));
}

#[test]
fn standin_core_runs_a_three_milestone_chain_into_the_sha1_named_state_file() {
    let Some(b) = bench() else { return };
    let c = b.container("smoke-chain");
    let spec = chain_workspace(&c, "chain.yaml", &json!({"step_seconds": 0.05}));

    let out = c.exec(&format!(
        "cd /w/app && {LAUNCHER} chain start --spec {spec} --no-git-refresh"
    ));
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        text(&out.stdout).contains("chain complete"),
        "{}",
        describe(&out)
    );

    let state = chain_state(&c, &spec);
    assert_eq!(state["current_milestone_index"], 3);
    assert_eq!(completed_labels(&state), ["m1", "m2", "m3"]);
    assert_eq!(
        state["completed"][1],
        json!({"label": "m2", "plan": "plan-m2", "status": "done"})
    );
    assert_eq!(state["current_plan_name"], Value::Null);
    assert_eq!(state["last_state"], "done");
    assert_eq!(state["schema_version"], 0);
    for key in [
        "pr_number",
        "branch_head",
        "sync_state",
        "chain_session",
        "resolved_workspace",
    ] {
        assert!(state.get(key).is_some(), "state lacks {key}: {state}");
    }
    let raw = text(&c.read_file(&state_path(&spec)).unwrap_or_default());
    assert!(
        raw.starts_with("{\n  \"schema_version\": 0,\n"),
        "indent=2, schema first: {raw}"
    );

    let plan = c
        .read_json("/w/app/.megaplan/plans/plan-m3/state.json")
        .expect("plan state");
    assert_eq!(plan["current_state"], "done");
    let status: Value =
        serde_json::from_str(&c.exec_ok(&format!("cd /w/app && {LAUNCHER} status --plan plan-m1")))
            .expect("status prints JSON");
    assert_eq!(
        status,
        json!({"success": true, "step": "status", "plan": "plan-m1", "state": "done",
               "next_step": null, "valid_next": []})
    );

    let runs = text(
        &c.read_file("/w/app/.megaplan/standin-chain-runs.jsonl")
            .unwrap_or_default(),
    );
    let run: Value = serde_json::from_str(runs.lines().next().unwrap_or("{}")).expect("run record");
    assert_eq!(run["git_refresh"], false);
    assert_eq!(run["one"], false);

    // A later start is a no-op on a complete chain.
    let again = c.exec_ok(&format!(
        "cd /w/app && {LAUNCHER} chain start --spec {spec}"
    ));
    assert!(again.contains("chain complete"), "{again}");
    assert_eq!(chain_state(&c, &spec)["current_milestone_index"], 3);

    // _capture_sync_state: the core's own .megaplan dir is excluded from git status, so once the uploaded spec
    // and ideas are committed the workspace is "stale" (ahead of origin), then "synced" after a push, then
    // "dirty" with an edit. Unknown state fields are carried through untouched.
    let path = state_path(&spec);
    c.exec_ok(&format!(
        "python3 -c {}",
        quote(&format!(
            "import json; p = '{path}'; d = json.load(open(p)); d['future_field'] = {{'x': 1}}; \
             json.dump(d, open(p, 'w'))"
        ))
    ));
    let sync = |c: &Container| {
        c.exec_ok(&format!(
            "cd /w/app && python3 -c {}",
            quote(&format!(
                "from arnold_pipelines.megaplan.chain import _capture_sync_state, load_chain_state; \
                 from pathlib import Path; \
                 _capture_sync_state(Path('/w/app'), Path('{spec}'), branch='main', pr_number=None, \
                 extra_repos=['/w/missing']); s = load_chain_state(Path('{spec}')); \
                 print(s.sync_state, s.dirty_flag, s.branch_head == s.pr_head, s.extra_repo_sync[0]['status'])"
            ))
        ))
    };
    c.exec_ok("cd /w/app && git add -A && git -c user.name=t -c user.email=t@e commit -qm ideas");
    assert_eq!(
        sync(&c).trim(),
        "stale False False missing",
        "local commit not on origin yet"
    );
    c.exec_ok("cd /w/app && git push -q origin main");
    assert_eq!(sync(&c).trim(), "synced False True missing");
    c.exec_ok("echo change >> /w/app/README.md");
    assert_eq!(sync(&c).trim(), "dirty True True missing");
    let state = chain_state(&c, &spec);
    assert_eq!(state["current_milestone_index"], 3);
    assert_eq!(state["future_field"], json!({"x": 1}));
}

#[test]
fn standin_chain_stalls_until_released_and_waits_for_a_merged_pr() {
    let Some(b) = bench() else { return };
    let c = b.container("smoke-control");

    // Stall at m2 in a tmux runner, then release it by editing the control file.
    let spec = chain_workspace(
        &c,
        "chain.yaml",
        &json!({"step_seconds": 0.05, "stall": ["m2"]}),
    );
    c.exec_ok(&format!(
        "cd /w/app && tmux new-session -d -s megaplan-chain -c /w/app {}",
        quote(&format!(
            "{LAUNCHER} chain start --spec {spec} >> .megaplan/cloud-chain.log 2>&1"
        ))
    ));
    let at_m2 = || {
        c.read_json(&state_path(&spec))
            .is_some_and(|s| s["current_plan_name"] == "plan-m2" && s["last_state"] == "running")
    };
    assert!(
        wait_until(Duration::from_secs(20), at_m2),
        "runner never reached m2"
    );
    std::thread::sleep(Duration::from_millis(1500));
    let state = chain_state(&c, &spec);
    assert_eq!(
        state["current_milestone_index"], 1,
        "stalled at m2: {state}"
    );
    assert_eq!(completed_labels(&state), ["m1"]);
    assert!(
        c.exec("tmux has-session -t megaplan-chain")
            .status
            .success(),
        "runner alive while stalled"
    );
    let status: Value =
        serde_json::from_str(&c.exec_ok(&format!("cd /w/app && {LAUNCHER} status")))
            .expect("status JSON");
    assert_eq!(status["plan"], "plan-m2");
    assert_eq!(status["state"], "running");
    assert_eq!(status["next_step"], "execute");

    c.write_file(
        "/w/app/.megaplan/standin-control.json",
        br#"{"step_seconds": 0.05}"#,
    );
    let done = || {
        c.read_json(&state_path(&spec))
            .is_some_and(|s| s["current_milestone_index"] == 3)
    };
    assert!(
        wait_until(Duration::from_secs(20), done),
        "released runner did not finish"
    );
    assert!(
        wait_until(Duration::from_secs(10), || !c
            .exec("tmux has-session -t megaplan-chain")
            .status
            .success()),
        "the tmux session ends with the runner"
    );

    // await_pr: m2 opens PR 7 and the chain waits until gh reports it MERGED.
    let spec = "/w/app/review.yaml";
    c.exec_ok(&format!("cp /w/app/chain.yaml {spec}"));
    c.write_file(
        "/w/app/.megaplan/standin-control.json",
        br#"{"step_seconds": 0.05, "await_pr": {"m2": 7}}"#,
    );
    let start_one = || {
        c.exec_ok(&format!(
            "cd /w/app && {LAUNCHER} chain start --spec {spec} --one"
        ))
    };
    c.exec_ok(&format!(
        "cd /w/app && {LAUNCHER} chain start --spec {spec}"
    ));
    let state = chain_state(&c, spec);
    assert_eq!(state["last_state"], "awaiting_pr_merge", "{state}");
    assert_eq!(state["pr_number"], 7);
    assert_eq!(state["pr_state"], "open");
    assert_eq!(state["current_plan_name"], "plan-m2");
    assert_eq!(state["current_milestone_index"], 1);
    let status: Value =
        serde_json::from_str(&c.exec_ok(&format!("cd /w/app && {LAUNCHER} status --plan plan-m2")))
            .expect("JSON");
    assert_eq!(status["state"], "awaiting_pr_merge");
    assert_eq!(status["next_step"], "review");

    let missing = c.exec("gh pr view 7 --json state");
    assert_eq!(missing.status.code(), Some(1), "{}", describe(&missing));
    c.set_pr(7, "OPEN");
    assert_eq!(
        c.exec_ok("gh pr view 7 --json state"),
        "{\"state\": \"OPEN\"}\n"
    );
    assert!(start_one().contains("still awaiting merge"));
    assert_eq!(chain_state(&c, spec)["current_milestone_index"], 1);

    c.set_pr(7, "MERGED");
    assert_eq!(
        c.exec_ok("gh pr view 7 --json state --jq .state"),
        "MERGED\n"
    );
    start_one();
    let state = chain_state(&c, spec);
    assert_eq!(
        state["current_milestone_index"], 2,
        "--one completes only the merged milestone: {state}"
    );
    assert_eq!(completed_labels(&state), ["m1", "m2"]);
    assert_eq!(state["completed"][1]["pr_number"], 7);
    assert_eq!(state["current_plan_name"], Value::Null);
    start_one();
    assert_eq!(chain_state(&c, spec)["current_milestone_index"], 3);
    assert!(start_one().contains("chain complete"));
    let runs = text(
        &c.read_file("/w/app/.megaplan/standin-chain-runs.jsonl")
            .unwrap_or_default(),
    );
    assert!(
        runs.lines().filter(|l| l.contains("\"one\": true")).count() >= 4,
        "{runs}"
    );
}

#[test]
fn standin_init_auto_and_steps() {
    let Some(b) = bench() else { return };
    let c = b.container("smoke-init");
    c.write_file("/w/app/idea.txt", b"Build a Tiny CLI!\n");
    let out: Value = serde_json::from_str(&c.exec_ok(&format!(
        "cd /w/app && {LAUNCHER} init --project-dir /w/app --idea-file /w/app/idea.txt --auto-start --robustness light"
    )))
    .expect("init JSON");
    assert_eq!(out["plan"], "build-a-tiny-cli");
    let record = c
        .read_json("/w/app/.megaplan/standin-init.json")
        .expect("init record");
    assert_eq!(
        record["argv"],
        json!([
            "init",
            "--project-dir",
            "/w/app",
            "--idea-file",
            "/w/app/idea.txt",
            "--auto-start",
            "--robustness",
            "light"
        ])
    );
    let out = c.exec(&format!(
        "cd /w/app && {LAUNCHER} init --project-dir /w/app --idea-file /w/nope.txt --robustness x"
    ));
    assert_eq!(out.status.code(), Some(1));
    let err: Value = serde_json::from_slice(&out.stdout).expect("error JSON");
    assert_eq!(err["error"], "missing_idea_file");

    c.exec_ok(&format!(
        "cd /w/app && {LAUNCHER} init --project-dir /w/app --idea-file /w/app/idea.txt --robustness light --name p2 && \
         tmux new-session -d -s agent -c /w/app '{LAUNCHER} auto --plan p2'"
    ));
    assert!(wait_until(Duration::from_secs(10), || c
        .read_file("/w/app/.megaplan/standin-auto.json")
        .is_some()));
    assert!(
        c.exec("tmux has-session -t agent").status.success(),
        "auto keeps running"
    );
    let status: Value =
        serde_json::from_str(&c.exec_ok(&format!("cd /w/app && {LAUNCHER} status --plan p2")))
            .expect("JSON");
    assert_eq!(status["state"], "running");
    let step: Value =
        serde_json::from_str(&c.exec_ok(&format!("cd /w/app && {LAUNCHER} execute --plan p2")))
            .expect("JSON");
    assert_eq!(
        step,
        json!({"success": true, "step": "execute", "plan": "p2"})
    );
    assert_eq!(
        c.exec(&format!("cd /w/app && {LAUNCHER} user-action x"))
            .status
            .code(),
        Some(2)
    );
}

/// A stand-in daemon for testing the `Daemon` harness itself: answers on the socket, records its env and
/// argv, exits 0 on SIGTERM (or 7 when started with `--fail-start`).
const FAKE_DAEMON: &str = r#"#!/usr/bin/env python3
import json, os, signal, socket, sys
if "--fail-start" in sys.argv:
    print("fake daemon: refusing to start", file=sys.stderr)
    sys.exit(7)
path = os.environ["MEGAPLAN_CLOUDD_SOCKET"]
if os.path.exists(path):
    os.unlink(path)
with open(os.path.join(os.environ["MEGAPLAN_CLOUD_HOME"], "fake-%d.json" % os.getpid()), "w") as f:
    json.dump({"argv": sys.argv[1:], "env": dict(os.environ)}, f)
def bye(*_):
    print("fake daemon: SIGTERM", file=sys.stderr, flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, bye)
srv = socket.socket(socket.AF_UNIX)
srv.bind(path)
srv.listen(8)
print("fake daemon: listening", file=sys.stderr, flush=True)
while True:
    conn, _ = srv.accept()
    conn.close()
"#;

#[test]
fn daemon_harness_starts_restarts_and_stops_a_socket_server() {
    use megaplan_cloud_e2e::Daemon;
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::ExitStatusExt;

    let tools = tempfile::tempdir().expect("tempdir");
    let fake = tools.path().join("fake-cloudd");
    std::fs::write(&fake, FAKE_DAEMON).expect("write fake daemon");
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");

    let mut d = Daemon::start_program(&fake, &[("EXTRA_FLAG", "x y")], &["--foreground"]);
    assert!(d.socket.starts_with(&d.dir) && d.home.starts_with(&d.dir));
    assert!(std::os::unix::net::UnixStream::connect(&d.socket).is_ok());
    let record: Value = serde_json::from_slice(
        &std::fs::read(d.home.join(format!("fake-{}.json", d.pid()))).expect("env record"),
    )
    .expect("JSON");
    assert_eq!(record["argv"], json!(["--foreground"]));
    assert_eq!(record["env"]["EXTRA_FLAG"], "x y");
    assert_eq!(
        record["env"]["MEGAPLAN_CLOUD_HOME"],
        d.home.display().to_string()
    );
    assert_eq!(
        record["env"]["MEGAPLAN_CLOUDD_SOCKET"],
        d.socket.display().to_string()
    );
    assert!(record["env"].get("XDG_RUNTIME_DIR").is_none());

    let first = d.pid();
    d.restart();
    assert_ne!(d.pid(), first);
    assert_eq!(
        d.log_text().matches("fake daemon: SIGTERM").count(),
        1,
        "{}",
        d.log_text()
    );
    assert_eq!(
        d.log_text().matches("fake daemon: listening").count(),
        2,
        "log appended across restarts"
    );

    d.kill9();
    let dir = d.keep_dir();
    drop(d);
    assert!(dir.join("daemon.log").is_file(), "keep_dir survives drop");
    let mut again = Daemon::start_program_in(&fake, dir.clone(), &[], &[]);
    assert!(
        std::os::unix::net::UnixStream::connect(&again.socket).is_ok(),
        "starts over a stale socket file"
    );
    let status = again.terminate();
    assert_eq!(status.code(), Some(0), "{status:?}");
    drop(again);

    let mut killed = Daemon::start_program_in(&fake, dir.clone(), &[], &[]);
    killed.kill9();
    assert_eq!(
        killed.terminate().signal(),
        None,
        "terminate on a stopped daemon is a no-op"
    );

    let failed = std::panic::catch_unwind(|| {
        Daemon::start_program_in(&fake, dir.clone(), &[], &["--fail-start"])
    });
    let msg = failed.expect_err("start-up failure panics");
    let msg = msg.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        msg.contains("exited during start-up") && msg.contains("refusing to start"),
        "{msg}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn real_daemon_answers_ctl_and_survives_kill9_restart_on_the_same_dirs() {
    use megaplan_cloud_e2e::Daemon;

    let mut d = Daemon::start(&[], &[]);
    let cwd = tempfile::tempdir().expect("tempdir");
    let out = d.ctl(cwd.path(), &[], &["daemon", "status", "--json"]);
    assert!(out.status.success(), "{}\n{}", describe(&out), d.log_text());
    let status: Value = serde_json::from_slice(&out.stdout).expect("daemon status JSON");
    assert_eq!(status["pid"], d.pid());
    assert_eq!(status["socket"], d.socket.display().to_string());
    assert_eq!(status["cloud_home"], d.home.display().to_string());

    d.kill9();
    let dir = d.keep_dir();
    drop(d);
    let mut again = Daemon::start_in(dir.clone(), &[], &[]);
    let out = again.ctl(cwd.path(), &[], &["daemon", "status", "--json"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        describe(&out),
        again.log_text()
    );
    let status: Value = serde_json::from_slice(&out.stdout).expect("daemon status JSON");
    assert_eq!(status["pid"], again.pid());
    assert!(
        again.terminate().success(),
        "SIGTERM is a clean shutdown:\n{}",
        again.log_text()
    );

    // With the daemon gone, ctl reports it unreachable (exit non-zero, JSON error on stdout).
    let out = again.ctl(cwd.path(), &[], &["daemon", "status", "--json"]);
    assert!(!out.status.success());
    let err: Value = serde_json::from_slice(&out.stdout).expect("error JSON");
    assert_eq!(err["success"], false);
    drop(again);
    let _ = std::fs::remove_dir_all(&dir);
}
