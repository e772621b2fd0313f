//! An operator switches from the Python `cloud` CLI (issue 10). The machine is laid out as the
//! original leaves it (facts from `arnold_pipelines/megaplan/cloud/cli.py` at commit 80208d744
//! of peteromallet/Arnold): a `last_chain.json` under `markers/<sha256 of the resolved
//! cloud.yaml path, 16 hex>/` with a string `provider_identity` and `extra_repos` objects, the
//! project reached through a symlink, cloud.yaml at the project root (which holds `.megaplan/`
//! and `.git`), and the shell in a subfolder. The daemon's state root (`MEGAPLAN_CLOUD_HOME`)
//! stands for `~/.megaplan/cloud`. Then `status --chain`, `supervise --chain` and
//! `exec "…" --cloud-yaml …` are run with no flag the original did not need.

use megaplan_cloud_api::paths::{legacy_marker_file, marker_key};
use megaplan_cloud_api::report::{
    EffectiveStatus, NextAction, ProviderConsistency, ReportedStatus, TickEvent,
};
use megaplan_cloud_api::status::ChainLaunched;
use megaplan_cloud_e2e::rig::{Run, SshRig, write_chain};
use megaplan_cloud_e2e::util::sqlite;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

/// The original's `last_chain.json` after `cloud chain` on an ssh runner.
fn python_marker(remote_spec: &str, started_at: &str) -> Value {
    json!({
        "remote_spec": remote_spec,
        "started_at": started_at,
        "base_branch": "main",
        "provenance": {"success": true, "event": "cloud_chain_launched", "remote_spec": remote_spec},
        "workspace": "/workspace/app",
        "chain_session": "megaplan-chain",
        "chain_log": "/workspace/app/.megaplan/cloud-chain.log",
        "extra_repos": [],
        "provider": "ssh",
        "provider_identity": "127.0.0.1",
    })
}

fn write_marker(root: &Path, key: &str, text: &str) -> PathBuf {
    let f = legacy_marker_file(root, key);
    std::fs::create_dir_all(f.parent().unwrap()).unwrap();
    std::fs::write(&f, text).unwrap();
    f
}

/// A chain the original started: spec and finished state on the runner (the stand-in core).
fn chain_on_runner(rig: &SshRig, name: &str) -> String {
    let spec = format!("/workspace/app/{name}.yaml");
    rig.container
        .write_file(&format!("/workspace/app/ideas/{name}.md"), b"idea\n");
    rig.container.write_file(
        &spec,
        format!("milestones:\n  - label: {name}\n    idea: ideas/{name}.md\n").as_bytes(),
    );
    rig.container.exec_ok(&format!(
        "cd /workspace/app && python -m arnold_pipelines.megaplan chain start --spec {spec}"
    ));
    spec
}

fn ctl_in(rig: &SshRig, cwd: &Path, args: &[&str]) -> Run {
    Run::from_output(&rig.daemon.ctl(cwd, &[], args))
}

fn stored_marker(rig: &SshRig, key: &str) -> Value {
    let text = sqlite(
        &rig.daemon.home.join("cloudd.db"),
        &format!("SELECT marker FROM markers WHERE key = '{key}'"),
    );
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

#[test]
fn an_operator_of_the_python_tool_keeps_their_chain() {
    let Some(rig) = SshRig::start("", &[]) else {
        return;
    };
    rig.precreate_workspace();
    let first = chain_on_runner(&rig, "legacy");
    rig.container
        .exec_ok("printf 'log\\n' > /workspace/app/.megaplan/cloud-chain.log");

    // The project on disk, and the symlink the operator reaches it through.
    let base = std::fs::canonicalize(&rig.daemon.dir).unwrap();
    let real = base.join("disk/proj");
    std::fs::create_dir_all(real.join(".megaplan")).unwrap();
    std::fs::create_dir_all(real.join(".git")).unwrap();
    std::fs::create_dir_all(real.join("src/module")).unwrap();
    std::os::unix::fs::symlink(base.join("disk"), base.join("projects")).unwrap();
    // The operator's cloud.yaml, with a key only the original reads.
    let mut yaml = std::fs::read_to_string(&rig.cloud_yaml).unwrap();
    yaml.push_str("chain_session: my-slot\n");
    std::fs::write(real.join("cloud.yaml"), yaml).unwrap();
    let via_link = base.join("projects/proj");
    let shell = via_link.join("src/module");

    // The original keys the marker by the resolved path; the lexical one would differ.
    let key = marker_key(&real.join("cloud.yaml"));
    assert_ne!(key, marker_key(&via_link.join("cloud.yaml")));
    let python_file = write_marker(
        &rig.daemon.home,
        &key,
        &serde_json::to_string_pretty(&python_marker(&first, "2026-11-30T10:00:00.123456+00:00"))
            .unwrap(),
    );

    // 1. status --chain from the subfolder: cloud.yaml found at the project root, the marker
    //    found under the resolved key and imported.
    let s = ctl_in(&rig, &shell, &["status", "--chain"]).ok();
    assert_eq!(s.chain().spec, first.as_str(), "{}", s.stdout);
    let status = s.chain();
    assert_eq!(status.spec_source.as_deref(), Some("last_chain marker"));
    assert_eq!(
        status.effective_status,
        ReportedStatus::Classified(EffectiveStatus::Complete),
        "{}",
        s.stdout
    );
    assert_eq!(
        status.provider_consistency,
        Some(ProviderConsistency::NotApplicable)
    );
    // The original's logs object.
    let logs = &status.logs;
    assert_eq!(
        logs.workspace.as_deref(),
        Some("/workspace/app"),
        "{logs:?}"
    );
    assert_eq!(logs.agent_log.as_deref(), Some("/workspace/app/agent.log"));
    let chain_log = logs.chain_log.clone().expect("logs.chain_log");
    assert_eq!(chain_log.path, "/workspace/app/.megaplan/cloud-chain.log");
    assert_eq!(chain_log.size, Some(4), "{logs:?}");
    assert!(chain_log.mtime.is_some(), "{logs:?}");
    assert!(logs.plan_log.is_some(), "{logs:?}");
    assert!(
        s.stderr.contains("warning: chain_session in ") && s.stderr.contains("megaplan-chain"),
        "{}",
        s.stderr
    );
    let stored = stored_marker(&rig, &key);
    assert_eq!(stored["remote_spec"], first.as_str());
    assert_eq!(stored["provider_identity"], "127.0.0.1");

    // The same marker through the symlinked path given as --cloud-yaml: keyed by the resolved
    // path, as the original keys it.
    let s = ctl_in(
        &rig,
        &base,
        &[
            "status",
            "--chain",
            "--cloud-yaml",
            "projects/proj/cloud.yaml",
        ],
    )
    .ok();
    assert_eq!(s.chain().spec, first.as_str(), "{}", s.stdout);
    assert_eq!(s.chain().spec_source.as_deref(), Some("last_chain marker"));

    // 2. supervise --chain from the same folder.
    let t = ctl_in(&rig, &shell, &["supervise", "--chain"]).ok();
    assert!(t.report().success, "{}", t.stdout);
    assert_eq!(t.report().spec, first.as_str());
    assert_eq!(t.report().event, TickEvent::Tick, "{}", t.stdout);
    assert_eq!(t.report().next_action, NextAction::Done);

    // 3. exec with the original's habit: one command string, --cloud-yaml at the end, the path
    //    through the symlink.
    let e = ctl_in(
        &rig,
        &base,
        &[
            "exec",
            "echo hi   there",
            "--cloud-yaml",
            "projects/proj/cloud.yaml",
        ],
    )
    .ok();
    assert_eq!(e.stdout, "hi there\n", "{}", e.stderr);
    // The argv form keeps word boundaries.
    let e = ctl_in(
        &rig,
        &shell,
        &[
            "exec",
            "--",
            "printf",
            "[%s]",
            "a  b",
            "$HOME",
            "--cloud-yaml",
        ],
    )
    .ok();
    assert_eq!(e.stdout, "[a  b][$HOME][--cloud-yaml]", "{}", e.stderr);

    // 4. The Python tool launches again later: its newer last_chain.json wins over SQLite.
    let second = chain_on_runner(&rig, "again");
    std::fs::write(
        &python_file,
        python_marker(&second, "2099-01-01T00:00:00.000001+00:00").to_string(),
    )
    .unwrap();
    let s = ctl_in(&rig, &shell, &["status", "--chain"]).ok();
    assert_eq!(s.chain().spec, second.as_str(), "{}", s.stdout);
    assert_eq!(stored_marker(&rig, &key)["remote_spec"], second.as_str());

    // 5. A corrupt legacy file is a warning naming it; the stored marker still answers. With
    //    --remote-spec the file is not even read.
    std::fs::write(&python_file, "{\"remote_spec\": ").unwrap();
    let s = ctl_in(&rig, &shell, &["status", "--chain"]).ok();
    assert_eq!(s.chain().spec, second.as_str(), "{}", s.stdout);
    assert!(
        s.stderr.contains(&format!(
            "warning: ignoring the legacy marker {}",
            python_file.display()
        )),
        "{}",
        s.stderr
    );
    let s = ctl_in(
        &rig,
        &shell,
        &["status", "--chain", "--remote-spec", &first],
    )
    .ok();
    assert_eq!(s.chain().spec, first.as_str());
    assert!(!s.stderr.contains("legacy marker"), "{}", s.stderr);
    let t = ctl_in(&rig, &shell, &["supervise", "--chain"]).ok();
    assert!(t.report().success, "{}", t.stdout);
    assert!(
        t.report()
            .warnings
            .unwrap_or_default()
            .first()
            .is_some_and(|w| w.contains(&python_file.display().to_string())),
        "{}",
        t.stdout
    );

    // 6. A chain launched here leaves a last_chain.json the Python tool reads: the original's
    //    shapes under the resolved key, and the launch output carries its provenance fields.
    let spec = write_chain(&via_link.join("epic"), "chain.yaml", &["n1"]);
    let launched = ctl_in(&rig, &shell, &["chain", spec.to_str().unwrap()]).ok();
    let chain = launched.decode::<ChainLaunched>();
    assert_eq!(chain.current_milestone.as_deref(), Some("n1"));
    // The original tool's provenance fields, which the api type keeps whole in `rest`: checked
    // as the Python tool wrote them (their shape is the original's, not ours).
    assert_eq!(
        chain.rest["event"], "cloud_chain_launched",
        "{}",
        launched.stdout
    );
    assert_eq!(chain.rest["tmux"]["session"], "megaplan-chain");
    assert_eq!(chain.rest["uploaded_idea_count"], 1);
    // The legacy file the Python tool reads: its raw shape is the point.
    let written: Value = serde_json::from_slice(&std::fs::read(&python_file).unwrap()).unwrap();
    assert_eq!(written["remote_spec"], "/workspace/app/chain.yaml");
    assert_eq!(written["provider_identity"], "127.0.0.1");
    assert_eq!(written["extra_repos"], json!([]));
    assert!(written["started_at"].is_string());

    // 7. doctor finds the marker, pairs it with the project's cloud.yaml, and (the daemon is
    //    up) shows the loader's warning about the original-only key.
    let home = base.display().to_string();
    let d = Run::from_output(
        &rig.daemon
            .ctl(&shell, &[("HOME", home.as_str())], &["doctor"]),
    )
    .ok();
    // `doctor`'s document is the client's own (no api type carries it): read as JSON.
    assert_eq!(d.json["daemon_reachable"], true, "{}", d.stdout);
    let real_yaml = real.join("cloud.yaml").display().to_string();
    let m = entry_where(&d.json["markers"], "key", &key);
    assert_eq!(m["importable"], true, "{}", d.stdout);
    assert_eq!(m["cloud_yaml"], real_yaml.as_str(), "{}", d.stdout);
    let y = entry_where(&d.json["cloud_yamls"], "path", &real_yaml);
    assert_eq!(y["has_marker"], true, "{}", d.stdout);
    assert!(
        y["warnings"][0]
            .as_str()
            .unwrap_or_default()
            .starts_with("chain_session in "),
        "{}",
        d.stdout
    );
}

/// The entry of the JSON list `list` whose `field` is `value` (null when none is).
fn entry_where(list: &Value, field: &str, value: &str) -> Value {
    list.as_array()
        .expect("a list")
        .iter()
        .find(|e| e[field] == value)
        .cloned()
        .unwrap_or(Value::Null)
}

#[test]
fn a_marker_under_the_unresolved_path_is_adopted_by_the_resolved_one() {
    let Some(rig) = SshRig::start("", &[]) else {
        return;
    };
    rig.precreate_workspace();
    let spec = chain_on_runner(&rig, "lexical");
    let base = std::fs::canonicalize(&rig.daemon.dir).unwrap();
    std::fs::create_dir_all(base.join("disk/p2")).unwrap();
    std::os::unix::fs::symlink(base.join("disk"), base.join("link")).unwrap();
    std::fs::copy(&rig.cloud_yaml, base.join("disk/p2/cloud.yaml")).unwrap();
    let lexical = base.join("link/p2/cloud.yaml");
    let resolved = base.join("disk/p2/cloud.yaml");
    // Written under the key of the path as typed (as this project's older client keyed it),
    // in its older shape (object provider_identity, extra_repos as paths).
    write_marker(
        &rig.daemon.home,
        &marker_key(&lexical),
        &json!({"remote_spec": spec, "provider": "ssh", "provider_identity": null,
                "extra_repos": ["/workspace/lib"], "started_at": "2026-11-01T00:00:00+00:00"})
        .to_string(),
    );
    let s = ctl_in(
        &rig,
        &base,
        &[
            "status",
            "--chain",
            "--cloud-yaml",
            lexical.to_str().unwrap(),
        ],
    )
    .ok();
    assert_eq!(s.chain().spec, spec.as_str(), "{}", s.stdout);
    // Now under the resolved key, legacy file included, in the original's shape.
    let file = legacy_marker_file(&rig.daemon.home, &marker_key(&resolved));
    let adopted: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(adopted["remote_spec"], spec.as_str());
    assert_eq!(
        adopted["extra_repos"],
        json!([{"url": null, "branch": null, "workspace": "/workspace/lib"}])
    );
    // The resolved path finds it directly now.
    let s = ctl_in(
        &rig,
        &base,
        &[
            "status",
            "--chain",
            "--cloud-yaml",
            resolved.to_str().unwrap(),
        ],
    )
    .ok();
    assert_eq!(s.chain().spec, spec.as_str());
}
