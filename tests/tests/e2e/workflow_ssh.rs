//! Remote workflows over ssh on the bench (issue 5): chain launch, status --chain through a
//! run, collision refusal, --fresh, missing ideas, legacy marker, and one round trip per status.

use megaplan_cloud_api::ErrorCode;
use megaplan_cloud_api::output::{Bootstrapped, Resumed};
use megaplan_cloud_api::report::{EffectiveStatus, Liveness, ReportedStatus};
use megaplan_cloud_api::status::{ChainLaunched, ChainSessions};
use megaplan_cloud_api::wire::Health;
use megaplan_cloud_e2e::rig::{SshRig, write_chain};
use megaplan_cloud_e2e::wait_until;
use serde_json::Value;
use std::time::Duration;

fn chain_status(rig: &SshRig) -> megaplan_cloud_e2e::rig::Run {
    rig.ctl(&["status", "--chain"])
}

#[test]
fn chain_runs_to_completion_with_collision_and_fresh() {
    let Some(rig) = SshRig::start("", &[]) else {
        return;
    };
    rig.precreate_workspace();
    rig.control(r#"{"step_seconds": 0.3, "stall": ["m2"]}"#);
    let epic = rig.project.join("epic");
    let spec = write_chain(&epic, "chain.yaml", &["m1", "m2", "m3"]);

    let launched = rig.ctl(&["chain", spec.to_str().unwrap()]).ok();
    assert!(launched.success(), "{}", launched.stdout);
    assert_eq!(launched.decode::<ChainLaunched>().session, "megaplan-chain");
    assert!(
        launched
            .stderr
            .contains("chain started in tmux session megaplan-chain"),
        "{}",
        launched.stderr
    );
    // Ideas and the normalised spec were uploaded where the spec names them.
    let idea = rig
        .container
        .read_file("/workspace/app/ideas/m2.md")
        .expect("idea uploaded");
    assert_eq!(idea, b"Idea for m2\n");
    let uploaded = String::from_utf8(
        rig.container
            .read_file("/workspace/app/chain.yaml")
            .unwrap(),
    )
    .unwrap();
    assert!(uploaded.contains("base_branch: main"), "{uploaded}");

    // The legacy marker file is valid JSON with the documented fields.
    let key = rig.ctl(&["registrations", "--json"]); // any call works; the key is derived locally
    drop(key);
    let markers_dir = rig.daemon.home.join("markers");
    let entry = std::fs::read_dir(&markers_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    let legacy: Value =
        serde_json::from_slice(&std::fs::read(entry.path().join("last_chain.json")).unwrap())
            .unwrap();
    for field in [
        "remote_spec",
        "started_at",
        "base_branch",
        "workspace",
        "chain_session",
        "chain_log",
        "extra_repos",
        "provider",
        "provider_identity",
    ] {
        assert!(
            legacy.get(field).is_some(),
            "legacy marker lacks {field}: {legacy}"
        );
    }
    assert_eq!(legacy["remote_spec"], "/workspace/app/chain.yaml");
    assert_eq!(legacy["provider"], "ssh");
    // As the original writes it for ssh: the docker host.
    assert_eq!(legacy["provider_identity"], "127.0.0.1");
    assert_eq!(legacy["extra_repos"], serde_json::json!([]));
    assert!(chrono_like(legacy["started_at"].as_str().unwrap()));

    // Running, stalled in m2; status --chain is one request to the runner's resident observer
    // (started by the status calls above), over its held channel: no new remote execution.
    assert!(
        wait_until(Duration::from_secs(30), || {
            let s = chain_status(&rig);
            s.current_milestone().as_deref() == Some("m2")
        }),
        "never reached m2"
    );
    let before = rig.sshd.exec_requests();
    let s = chain_status(&rig).ok();
    assert_eq!(
        rig.sshd.exec_requests() - before,
        0,
        "status --chain must be answered by the resident observer, with no new remote execution"
    );
    assert_eq!(
        s.chain().effective_status,
        ReportedStatus::Classified(EffectiveStatus::Running),
        "{}",
        s.stdout
    );
    let status = s.chain();
    assert_eq!(status.milestone_count, 3);
    assert_eq!(status.runner.status, Some(Liveness::Alive));
    assert!(
        s.stderr.contains("Current milestone: m2 (index 1)"),
        "{}",
        s.stderr
    );
    assert!(s.stderr.contains("Completed: m1"), "{}", s.stderr);

    // Another chain while this one runs: refused, and the first keeps running untouched.
    let other = write_chain(&rig.project.join("other"), "chain.yaml", &["x1"]);
    let refused = rig.ctl(&["chain", other.to_str().unwrap()]);
    assert_eq!(refused.code, Some(1));
    assert_eq!(
        refused.error_body().error,
        ErrorCode::ChainSessionCollision,
        "{}",
        refused.stdout
    );
    let still = rig.container.exec("tmux has-session -t =megaplan-chain");
    assert!(still.status.success(), "the running chain was disturbed");
    let spec_now = String::from_utf8(
        rig.container
            .read_file("/workspace/app/chain.yaml")
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        spec_now, uploaded,
        "a refused launch must not upload anything"
    );
    // The same chain again is a no-op that says so.
    let again = rig.ctl(&["chain", spec.to_str().unwrap()]).ok();
    assert!(
        again.decode::<ChainLaunched>().already_running,
        "{}",
        again.stdout
    );

    // Release the stall: the chain completes.
    rig.control(r#"{"step_seconds": 0.2}"#);
    assert!(
        wait_until(Duration::from_secs(40), || chain_status(&rig)
            .chain_status()
            .expect("status --chain")
            .effective_status
            == ReportedStatus::Classified(EffectiveStatus::Complete)),
        "never completed"
    );
    let done = chain_status(&rig).ok();
    assert!(
        done.stderr.contains("Completed: m1, m2, m3"),
        "{}",
        done.stderr
    );
    assert!(done.stderr.contains("Remaining: none"), "{}", done.stderr);

    // --fresh resets the state before the new run.
    rig.control(r#"{"step_seconds": 0.2, "stall": ["m1"]}"#);
    let fresh = rig.ctl(&["chain", spec.to_str().unwrap(), "--fresh"]).ok();
    assert!(fresh.stderr.contains("fresh: removed"), "{}", fresh.stderr);
    assert!(
        wait_until(Duration::from_secs(30), || {
            let s = chain_status(&rig);
            s.current_milestone().as_deref() == Some("m1")
                && s.chain_status().is_some_and(|st| {
                    // The core's own chain state, kept whole by the api type.
                    st.chain_state
                        .get("completed")
                        .and_then(Value::as_array)
                        .is_some_and(|c| c.is_empty())
                })
        }),
        "fresh run did not restart from m1"
    );
    rig.control(r#"{"step_seconds": 0.1}"#);
}

fn chrono_like(s: &str) -> bool {
    s.len() >= 20 && s.as_bytes()[4] == b'-' && s.contains('T')
}

#[test]
fn missing_idea_lists_every_path_and_uploads_nothing() {
    let Some(rig) = SshRig::start("", &[]) else {
        return;
    };
    let dir = rig.project.join("epic");
    let spec = write_chain(&dir, "chain.yaml", &["m1", "m2"]);
    std::fs::remove_file(dir.join("ideas/m2.md")).unwrap();
    let before = rig.sshd.exec_requests();
    let r = rig.ctl(&["chain", spec.to_str().unwrap()]);
    assert_eq!(r.code, Some(1));
    assert_eq!(
        r.error_body().error,
        ErrorCode::MissingIdeaFile,
        "{}",
        r.stdout
    );
    #[derive(serde::Deserialize)]
    struct MissingIdea {
        tried: Vec<String>,
    }
    let missing: Vec<MissingIdea> = r.error_extra("missing");
    let tried = &missing[0].tried;
    assert_eq!(tried.len(), 3, "{tried:?}");
    assert!(tried[0].ends_with("epic/ideas/m2.md"));
    assert!(tried[1].ends_with("project/ideas/m2.md"));
    assert!(tried[2].ends_with("epic/m2.md"));
    assert!(r.error_body().message.contains("m2"));
    assert_eq!(
        rig.sshd.exec_requests(),
        before,
        "nothing may touch the runner"
    );
    assert!(
        rig.container
            .read_file("/workspace/app/chain.yaml")
            .is_none()
    );
}

#[test]
fn hand_written_legacy_marker_is_honoured() {
    let Some(rig) = SshRig::start("", &[]) else {
        return;
    };
    rig.precreate_workspace();
    // A chain started by the original tool: spec and state exist on the runner, marker on disk.
    rig.container
        .write_file("/workspace/app/ideas/a.md", b"a\n");
    rig.container.write_file(
        "/workspace/app/legacy.yaml",
        b"milestones:\n  - label: a\n    idea: ideas/a.md\n",
    );
    rig.container.exec_ok("cd /workspace/app && python -m arnold_pipelines.megaplan chain start --spec /workspace/app/legacy.yaml");
    let key = megaplan_cloud_api::paths::marker_key(&rig.cloud_yaml);
    let file = rig
        .daemon
        .home
        .join("markers")
        .join(&key)
        .join("last_chain.json");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(
        &file,
        r#"{"remote_spec": "/workspace/app/legacy.yaml", "chain_session": "megaplan-chain"}"#,
    )
    .unwrap();
    let s = rig.ctl(&["status", "--chain"]).ok();
    assert_eq!(s.chain().spec, "/workspace/app/legacy.yaml");
    assert_eq!(
        s.chain().effective_status,
        ReportedStatus::Classified(EffectiveStatus::Complete),
        "{}",
        s.stdout
    );
    assert_eq!(s.chain().spec_source.as_deref(), Some("last_chain marker"));
}

#[test]
fn bootstrap_status_exec_and_chains() {
    let Some(rig) = SshRig::start("", &[]) else {
        return;
    };
    let idea = rig.project.join("idea.md");
    std::fs::write(&idea, "Build a tiny thing\n").unwrap();
    let b = rig
        .ctl(&[
            "bootstrap",
            idea.to_str().unwrap(),
            "--plan-name",
            "tiny",
            "--robustness",
            "light",
        ])
        .ok();
    assert!(b.decode::<Bootstrapped>().success, "{}", b.stdout);
    let init: Value = rig
        .container
        .read_json("/workspace/app/.megaplan/standin-init.json")
        .expect("init recorded");
    let argv: Vec<&str> = init["argv"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(argv.windows(2).any(|w| w == ["--name", "tiny"]), "{argv:?}");
    assert!(
        argv.windows(2)
            .any(|w| w == ["--idea-file", "/workspace/app/idea.txt"]),
        "{argv:?}"
    );
    assert!(argv.contains(&"--auto-start"));
    assert_eq!(
        rig.container.read_file("/workspace/app/idea.txt").unwrap(),
        b"Build a tiny thing\n"
    );

    let st = rig.ctl(&["status"]).ok();
    let plan = st.plan_status();
    assert_eq!(plan.plan(), Some("tiny"), "{}\n{}", st.stdout, st.stderr);
    assert_eq!(plan.state(), Some("running"));

    // resume runs the step the status names next, for that plan.
    let r = rig.ctl(&["resume"]).ok();
    let resumed: Resumed = r.decode();
    assert_eq!(resumed.next_step, "execute", "{}", r.stdout);
    assert_eq!(resumed.plan.as_deref(), Some("tiny"));
    let steps = String::from_utf8(
        rig.container
            .read_file("/workspace/app/.megaplan/standin-steps.jsonl")
            .expect("step recorded"),
    )
    .unwrap();
    assert!(
        steps.contains("execute") && steps.contains("tiny"),
        "{steps}"
    );

    // exec relays output, stderr and the exit code; hostile text passes through literally.
    let e = rig.ctl(&[
        "exec",
        "printf '%s|' \"a b\" '$(x)' `echo q`; echo err >&2; exit 7",
    ]);
    assert_eq!(e.code, Some(7));
    assert_eq!(e.stdout, "a b|$(x)|q|");
    assert!(e.stderr.contains("err"));

    let c = rig.ctl(&["chains"]).ok();
    assert!(
        c.decode::<ChainSessions>().sessions.is_empty(),
        "{}",
        c.stdout
    );
    let all = rig.ctl(&["status", "--all"]).ok();
    assert!(all.success(), "{}", all.stdout);
}

#[test]
fn exec_output_is_redacted() {
    let Some(mut rig) = SshRig::start("secrets: [MEGAPLAN_TEST_TOKEN]\n", &[]) else {
        return;
    };
    let secret = "s3cr3t-value-4242-xyz";
    rig.env.push(("MEGAPLAN_TEST_TOKEN".into(), secret.into()));
    let e = rig.ctl(&["exec", &format!("echo token={secret}; echo MEGAPLAN_TEST_TOKEN={secret}; echo ghp_abcdefghijklmnopqrstuvwxyz")]);
    assert_eq!(e.code, Some(0), "{}", e.stderr);
    assert!(!e.stdout.contains(secret), "{}", e.stdout);
    assert!(!e.stdout.contains("ghp_abcdefghij"), "{}", e.stdout);
    assert_eq!(
        e.stdout.matches("***REDACTED***").count(),
        3,
        "{}",
        e.stdout
    );
}

#[test]
fn shutdown_closes_the_held_ssh_session() {
    let Some(mut rig) = SshRig::start("", &[]) else {
        return;
    };
    let connections = rig.sshd.accepted_connections();
    for _ in 0..5 {
        assert_eq!(rig.ctl(&["exec", "true"]).code, Some(0));
    }
    assert_eq!(
        rig.sshd.accepted_connections() - connections,
        1,
        "five execs, one held connection"
    );
    let health = rig.ctl(&["daemon", "status", "--json"]).ok();
    assert_eq!(health.decode::<Health>().ssh_sessions, 1);
    let control_dir = rig.daemon.socket.parent().unwrap().join("ssh");
    let masters = || {
        let out = std::process::Command::new("pgrep")
            .arg("-f")
            .arg(control_dir.to_str().unwrap())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    assert_eq!(masters(), 1, "one ControlMaster process while serving");
    assert_eq!(rig.daemon.terminate().code(), Some(0));
    assert!(
        wait_until(Duration::from_secs(10), || masters() == 0),
        "the ssh master outlived the daemon"
    );
}

#[test]
fn multi_line_secret_values_are_refused() {
    let Some(mut rig) = SshRig::start("secrets: [MEGAPLAN_TEST_PEM]\n", &[]) else {
        return;
    };
    rig.env
        .push(("MEGAPLAN_TEST_PEM".into(), "abc\ndefg".into()));
    let e = rig.ctl(&["exec", "echo hi"]);
    assert_eq!(e.code, Some(1));
    assert_eq!(e.error_body().error, ErrorCode::InvalidArgs);
    assert_eq!(e.error_field(), "MEGAPLAN_TEST_PEM");
    assert!(!e.stdout.contains("defg"));
}
