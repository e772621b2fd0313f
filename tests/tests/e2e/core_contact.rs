//! First contact with the megaplan core (issue 14), against the bench's stand-in core, which
//! follows the real core (peteromallet/Arnold at 80208d744): its module is
//! `arnold_pipelines.megaplan` only, its argparse refuses what the real one refuses, its status
//! JSON and state file are the core's. Every cloud.yaml here is the default one: no
//! `megaplan.launcher`.

use megaplan_cloud_api::output::{Bootstrapped, Resumed};
use megaplan_cloud_api::report::{
    EffectiveStatus, Liveness, ReportedStatus, TickEvent, TickReport,
};
use megaplan_cloud_e2e::rig::{SshRig, resident_observers, write_chain};
use megaplan_cloud_e2e::wait_until;
use serde_json::Value;
use sha2::Digest as _;
use std::time::Duration;

const DIST: &str = "/usr/lib/python3/dist-packages";

fn jsonl(rig: &SshRig, path: &str) -> Vec<Value> {
    let text = rig.container.read_file(path).unwrap_or_default();
    String::from_utf8_lossy(&text)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn words(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Install the stand-in under the seed's spelling only (`arnold.pipelines.megaplan`).
fn reinstall_as_arnold_pipelines_dotted(rig: &SshRig) {
    rig.container.exec_ok(&format!(
        "d={DIST}; mkdir -p $d/arnold/pipelines && touch $d/arnold/__init__.py $d/arnold/pipelines/__init__.py \
         && mv $d/arnold_pipelines/megaplan $d/arnold/pipelines/megaplan && rm -rf $d/arnold_pipelines \
         && python3 -c 'import arnold.pipelines.megaplan' && ! python3 -c 'import arnold_pipelines' 2>/dev/null"
    ));
}

fn bootstrap(rig: &SshRig, name: &str) {
    let idea = rig.project.join("idea.md");
    std::fs::write(&idea, "Build a tiny thing\n").unwrap();
    let b = rig
        .ctl(&["bootstrap", idea.to_str().unwrap(), "--plan-name", name])
        .ok();
    assert!(
        b.decode::<Bootstrapped>().success,
        "{}\n{}",
        b.stdout,
        b.stderr
    );
}

/// Item 1: with no launcher set, every core command (init, status, chain start, status
/// --chain, the tick's observation) finds `arnold_pipelines.megaplan` on the runner.
#[test]
fn the_default_launcher_finds_the_real_module_name() {
    let Some(rig) = SshRig::start("", &[]) else {
        return;
    };
    bootstrap(&rig, "tiny");
    let init = rig
        .container
        .read_json("/workspace/app/.megaplan/standin-init.json")
        .expect("init ran on the runner");
    assert_eq!(init["core_module"], "arnold_pipelines.megaplan", "{init}");
    let st = rig.ctl(&["status"]).ok();
    assert_eq!(st.plan_status().plan(), Some("tiny"), "{}", st.stdout);

    rig.control(r#"{"step_seconds": 0.05}"#);
    let spec = write_chain(&rig.project.join("epic"), "chain.yaml", &["m1", "m2"]);
    rig.ctl(&["chain", spec.to_str().unwrap()]).ok();
    rig.wait_complete();
    let runs = jsonl(&rig, "/workspace/app/.megaplan/standin-chain-runs.jsonl");
    assert!(!runs.is_empty());
    assert!(
        runs.iter()
            .all(|r| r["core_module"] == "arnold_pipelines.megaplan"),
        "{runs:?}"
    );
    let tick = rig.ctl(&["supervise", "--chain"]).ok();
    assert_eq!(
        tick.report().effective_status,
        ReportedStatus::Classified(EffectiveStatus::Complete),
        "{}",
        tick.stdout
    );
    assert_eq!(
        sync_refresh_status(&tick.report()).as_deref(),
        Some("ok"),
        "the sync refresh imported the core: {}",
        tick.stdout
    );
}

/// Item 1: a runner with only `arnold.pipelines.megaplan` is probed too, and a launcher that
/// stops working ("No module named") is probed again instead of failing from then on.
#[test]
fn a_runner_with_only_the_seed_spelling_works_and_a_changed_install_is_reprobed() {
    let Some(rig) = SshRig::start("", &[]) else {
        return;
    };
    bootstrap(&rig, "tiny");
    // The daemon now remembers `arnold_pipelines.megaplan` for this runner; the install changes.
    reinstall_as_arnold_pipelines_dotted(&rig);
    let st = rig.ctl(&["status"]).ok();
    assert_eq!(
        st.plan_status().plan(),
        Some("tiny"),
        "{}\n{}",
        st.stdout,
        st.stderr
    );

    rig.control(r#"{"step_seconds": 0.05}"#);
    let spec = write_chain(&rig.project.join("epic"), "chain.yaml", &["m1"]);
    rig.ctl(&["chain", spec.to_str().unwrap()]).ok();
    rig.wait_complete();
    let runs = jsonl(&rig, "/workspace/app/.megaplan/standin-chain-runs.jsonl");
    assert!(
        !runs.is_empty()
            && runs
                .iter()
                .all(|r| r["core_module"] == "arnold.pipelines.megaplan"),
        "{runs:?}"
    );
}

/// Item 1: neither module: a clear error naming both and the setting.
#[test]
fn a_runner_without_the_core_names_both_modules_and_the_setting() {
    let Some(rig) = SshRig::start("", &[]) else {
        return;
    };
    rig.container
        .exec_ok(&format!("rm -rf {DIST}/arnold_pipelines {DIST}/arnold"));
    let st = rig.ctl(&["status"]);
    assert_ne!(st.code, Some(0), "{}", st.stdout);
    let all = format!("{}{}", st.stdout, st.stderr);
    for needle in [
        "arnold_pipelines.megaplan",
        "arnold.pipelines.megaplan",
        "megaplan.launcher",
    ] {
        assert!(all.contains(needle), "{needle} missing from: {all}");
    }
}

/// Item 3: `resume` runs the step the way the core's own driver does (`auto._phase_command`),
/// through the stand-in's argparse, which refuses what the real parser refuses.
#[test]
fn resume_translates_the_next_step_and_refuses_when_there_is_none() {
    let Some(rig) = SshRig::start("", &[]) else {
        return;
    };
    bootstrap(&rig, "tiny");
    let set_state = |state: &str| {
        rig.container.exec_ok(&format!(
            "cd /workspace/app/.megaplan/plans/tiny && python3 -c \
             'import json; d = json.load(open(\"state.json\")); d[\"current_state\"] = \"{state}\"; \
              json.dump(d, open(\"state.json\", \"w\"))'"
        ));
    };
    let last_argv = || {
        let steps = jsonl(&rig, "/workspace/app/.megaplan/standin-steps.jsonl");
        words(&steps.last().expect("a step ran")["argv"])
    };
    let cases: [(&str, &str, &[&str]); 4] = [
        (
            "finalized",
            "execute",
            &[
                "execute",
                "--confirm-destructive",
                "--user-approved",
                "--retry-blocked-tasks",
            ],
        ),
        ("reviewed", "feedback", &["feedback", "workflow"]),
        (
            "blocked",
            "recover-blocked",
            &["override", "recover-blocked", "--reason"],
        ),
        ("critiqued", "gate", &["gate"]),
    ];
    for (state, step, expected) in cases {
        set_state(state);
        let r = rig.ctl(&["resume"]).ok();
        assert_eq!(r.decode::<Resumed>().next_step, step, "{}", r.stdout);
        let argv = last_argv();
        assert_eq!(&argv[..expected.len()], expected, "{state}: {argv:?}");
        assert_eq!(&argv[argv.len() - 2..], ["--plan", "tiny"], "{argv:?}");
    }

    set_state("done");
    let r = rig.ctl(&["resume"]);
    assert_eq!(r.code, Some(1), "{}\n{}", r.stdout, r.stderr);
    assert!(
        format!("{}{}", r.stdout, r.stderr).contains("invalid_status"),
        "{}\n{}",
        r.stdout,
        r.stderr
    );
}

/// Item 6: `status` relays the core's JSON and exits 1 when it says `success: false`.
#[test]
fn status_exits_1_when_the_core_reports_failure() {
    let Some(rig) = SshRig::start("", &[]) else {
        return;
    };
    bootstrap(&rig, "tiny");
    let r = rig.ctl(&["status", "--plan", "no-such-plan"]);
    assert_eq!(r.code, Some(1), "{}\n{}", r.stdout, r.stderr);
    // `plan_not_found` is the core's own error code, passed through as the core wrote it (no
    // api type names it): read as the plan status document the core printed.
    let failed = r.plan_status();
    assert!(failed.failed(), "{}", r.stdout);
    assert_eq!(
        failed.0.get("error").and_then(Value::as_str),
        Some("plan_not_found"),
        "{}",
        r.stdout
    );
    let ok = rig.ctl(&["status", "--plan", "tiny"]);
    assert_eq!(ok.code, Some(0), "{}", ok.stdout);
}

/// Item 5: the operator's chain spec reaches the runner as written (comments, key order,
/// quoting), plus one `base_branch:` line when it names none; the identity digest is over
/// exactly those bytes.
#[test]
fn the_chain_spec_reaches_the_runner_byte_for_byte() {
    let Some(rig) = SshRig::start("", &[]) else {
        return;
    };
    rig.precreate_workspace();
    rig.control(r#"{"step_seconds": 0.05}"#);
    let epic = rig.project.join("epic");
    write_chain(&epic, "unused.yaml", &["m1"]);
    let text = "# The operator's chain: comments and key order matter to them.\n\
                prerequisite_policy: none   # keep\n\
                milestones:\n  - label: m1\n    idea: 'ideas/m1.md'  # quoted\n";
    let spec = epic.join("chain.yaml");
    std::fs::write(&spec, text).unwrap();
    rig.ctl(&["chain", spec.to_str().unwrap()]).ok();
    let uploaded = rig
        .container
        .read_file("/workspace/app/chain.yaml")
        .unwrap();
    let expected = format!("{text}base_branch: main\n");
    assert_eq!(String::from_utf8_lossy(&uploaded), expected);
    let marker = rig
        .container
        .read_json("/workspace/.megaplan/cloud-sessions/megaplan-chain.json")
        .expect("session marker");
    assert_eq!(
        marker["identity_digest"],
        hex::encode(sha2::Sha256::digest(expected.as_bytes())),
        "{marker}"
    );
    rig.wait_complete();

    // base_branch named: the file exactly as written (a fresh launch of the finished chain).
    let text = format!("{text}base_branch: main   # explicit\n");
    std::fs::write(&spec, &text).unwrap();
    rig.ctl(&["chain", spec.to_str().unwrap(), "--fresh"]).ok();
    let uploaded = rig
        .container
        .read_file("/workspace/app/chain.yaml")
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&uploaded), text);
}

/// Render the rig's cloud.yaml into the runner's entrypoint and boot it as the container's CMD
/// would; returns once the entrypoint reports its tmux session `agent` ready.
fn boot_entrypoint(rig: &SshRig) {
    let spec = megaplan_cloudd::cloud_yaml::load(&rig.cloud_yaml).expect("cloud.yaml loads");
    let files = megaplan_cloudd::render::render(&spec).expect("render");
    for name in [
        megaplan_cloudd::render::ENTRYPOINT,
        megaplan_cloudd::render::HEALTH_SERVER,
    ] {
        let f = files.iter().find(|f| f.name == name).expect("rendered");
        rig.container
            .write_file(&format!("/opt/runner/{name}"), &f.content);
        rig.container
            .exec_ok(&format!("chmod {:o} /opt/runner/{name}", f.mode));
    }
    rig.container.exec_ok(
        "cd / && PORT=18081 setsid nohup /opt/runner/entrypoint.sh >/dev/null 2>&1 </dev/null &",
    );
    let ready = wait_until(Duration::from_secs(60), || {
        rig.container
            .read_file("/var/log/entrypoint.log")
            .is_some_and(|l| String::from_utf8_lossy(&l).contains("tmux 'agent' session ready"))
    });
    assert!(ready, "the entrypoint never got its session ready");
}

const STATE_GLOB: &str = "/workspace/app/.megaplan/plans/.chains/chain-*.json";

/// A `mode: chain` runner booted by the entrypoint, driving the chain from its tmux session
/// `agent`, stalled in m1 (plan running). Returns once the chain state names m1.
fn booted_chain_runner(control: &str) -> Option<SshRig> {
    let rig = SshRig::start(
        "mode: chain\nchain:\n  spec: /workspace/app/chain.yaml\n",
        &[],
    )?;
    rig.precreate_workspace();
    rig.control(control);
    rig.container
        .write_file("/workspace/app/ideas/m1.md", b"first\n");
    rig.container
        .write_file("/workspace/app/ideas/m2.md", b"second\n");
    rig.container.write_file(
        "/workspace/app/chain.yaml",
        b"milestones:\n  - {label: m1, idea: ideas/m1.md}\n  - {label: m2, idea: ideas/m2.md}\n",
    );
    boot_entrypoint(&rig);
    let at_m1 = wait_until(Duration::from_secs(60), || {
        rig.container
            .exec(&format!("grep -l '\"plan-m1\"' {STATE_GLOB}"))
            .status
            .success()
    });
    assert!(at_m1, "the boot runner never reached m1");
    Some(rig)
}

/// Item 4: the entrypoint's boot runner (tmux session `agent`) is the chain's driver. With the
/// chain state stale, scheduled ticks see it alive and refuse; no second `chain start` ever runs.
#[test]
fn a_boot_runner_in_another_session_is_the_one_driver() {
    let Some(rig) = booted_chain_runner(r#"{"step_seconds": 0.05, "stall": ["m1"]}"#) else {
        return;
    };
    // Stale bookkeeping: the state says stale and the plan is not running any more.
    rig.container.exec_ok(&format!(
        "f=$(ls {STATE_GLOB}) && python3 -c 'import json,sys; p=sys.argv[1]; d=json.load(open(p)); \
         d[\"sync_state\"]=\"stale\"; json.dump(d, open(p, \"w\"))' \"$f\" && \
         python3 -c 'import json; p=\"/workspace/app/.megaplan/plans/plan-m1/state.json\"; d=json.load(open(p)); \
         d[\"current_state\"]=\"finalized\"; json.dump(d, open(p, \"w\"))'"
    ));
    let t = rig.ctl(&["supervise", "--chain"]).ok();
    assert_eq!(
        t.report().effective_status,
        ReportedStatus::Classified(EffectiveStatus::StaleBookkeeping),
        "{}",
        t.stdout
    );
    assert!(!t.report().acted, "{}", t.stdout);
    let runner = t.report().runner;
    assert_eq!(runner.status, Some(Liveness::Alive), "{}", t.stdout);
    assert_eq!(runner.session.as_deref(), Some("agent"), "{}", t.stdout);
    assert!(runner.pid.is_some_and(|p| p > 0), "{}", t.stdout);

    rig.ctl(&["register", "--every", "2s"]).ok();
    let three = wait_until(Duration::from_secs(90), || rig.ticks(50).len() >= 4);
    let history = rig.ticks(50);
    assert!(three, "the schedule never ticked: {history:?}");
    for t in &history {
        assert!(!t.acted, "{t:?}");
        let reason = t.refused_reason.as_deref().unwrap_or_default();
        assert!(reason.contains("runner is alive"), "{t:?}");
    }
    let runs = jsonl(&rig, "/workspace/app/.megaplan/standin-chain-runs.jsonl");
    assert_eq!(runs.len(), 1, "a second driver was started: {runs:?}");
    assert!(
        !rig.container
            .exec("tmux has-session -t =megaplan-chain")
            .status
            .success(),
        "no supervisor session beside the boot runner"
    );
}

/// Item 9: while a live driver saves its state file in a loop, ticks never lose one of its
/// writes (the core's `_capture_sync_state` is an unlocked load-modify-save of that file).
#[test]
fn ticks_never_lose_a_live_drivers_state_writes() {
    let Some(rig) =
        booted_chain_runner(r#"{"step_seconds": 0.05, "stall": ["m1"], "churn": ["m1"]}"#)
    else {
        return;
    };
    let churning = wait_until(Duration::from_secs(30), || {
        rig.container
            .exec(&format!("grep -l standin_writes {STATE_GLOB}"))
            .status
            .success()
    });
    assert!(churning, "the driver never started writing");
    for _ in 0..5 {
        let t = rig.ctl(&["supervise", "--chain"]).ok();
        assert!(!t.report().acted, "{}", t.stdout);
        assert_eq!(
            sync_refresh_status(&t.report()).as_deref(),
            Some("skipped"),
            "{}",
            t.stdout
        );
    }
    let lost = rig
        .container
        .read_file("/workspace/app/.megaplan/standin-lost-writes.jsonl")
        .unwrap_or_default();
    assert!(
        lost.is_empty(),
        "ticks replaced the driver's writes: {}",
        String::from_utf8_lossy(&lost)
    );
}

/// Issue 14 item 7, with the stand-in core as slow to start as the real one (2 s import): a
/// steady-state tick starts no core (the resident observer holds it imported); an upgrade of
/// the core's files makes the next tick import the new code once; a dead observer is replaced
/// (one core start) and the tick still succeeds.
#[test]
fn steady_state_ticks_start_no_core_and_an_upgraded_core_starts_once() {
    let Some(rig) =
        SshRig::start_with_container_args("", &["-e", "MEGAPLAN_STANDIN_IMPORT_SECONDS=2"], &[])
    else {
        return;
    };
    rig.precreate_workspace();
    rig.control(r#"{"step_seconds": 0.1, "stall": ["m1"]}"#);
    let spec = write_chain(&rig.project.join("epic"), "chain.yaml", &["m1", "m2"]);
    let launched = rig.ctl(&["chain", spec.to_str().unwrap()]);
    assert_eq!(
        launched.code,
        Some(0),
        "{}\n{}",
        launched.stdout,
        launched.stderr
    );
    rig.wait_running_at(90, "m1");
    let tick = || {
        let t = rig.ctl(&["supervise", "--chain"]);
        assert_eq!(t.code, Some(0), "{}\n{}", t.stdout, t.stderr);
        assert_eq!(t.report().event, TickEvent::Tick, "{}", t.stdout);
        let report = t.report();
        assert_eq!(report.remote_round_trips, Some(1), "{}", t.stdout);
        report
    };
    // `status --chain` above already started the observer and its core.
    for _ in 0..3 {
        let t = tick();
        assert_eq!(t.core_starts, Some(0), "steady state: {t:?}");
    }
    assert_eq!(resident_observers(&rig.container).len(), 1);

    // `pip install --upgrade` rewrites the core's files: never answer with the old code.
    rig.container.exec_ok(
        "f=/usr/lib/python3/dist-packages/arnold_pipelines/megaplan/cli.py && printf '\\n# upgraded\\n' >> \"$f\"",
    );
    let t = tick();
    assert_eq!(t.core_starts, Some(1), "after the upgrade: {t:?}");
    let t = tick();
    assert_eq!(t.core_starts, Some(0), "steady again: {t:?}");

    // The observer dies: the next tick starts another (one core start) and succeeds.
    let pids = resident_observers(&rig.container);
    assert_eq!(pids.len(), 1, "{pids:?}");
    rig.container.exec_ok(&format!("kill -9 {}", pids[0]));
    let t = tick();
    assert_eq!(t.core_starts, Some(1), "after the observer died: {t:?}");
    let after = resident_observers(&rig.container);
    assert_eq!(after.len(), 1, "{after:?}");
    assert_ne!(after, pids);
    rig.control(r#"{"step_seconds": 0.1}"#);
}

/// The sync refresh's `status` in a tick report (`ok`, `failed`, `skipped`); `None` when the
/// tick did not run one.
fn sync_refresh_status(report: &TickReport) -> Option<String> {
    report.sync_refresh.clone().flatten().map(|r| r.status)
}
