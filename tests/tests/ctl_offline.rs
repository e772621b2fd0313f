//! What the client does without a daemon: `init`, argument errors, and the unreachable error.

use megaplan_cloud_e2e::bin;
use serde_json::Value;
use std::process::Command;

fn ctl(dir: &std::path::Path, args: &[&str]) -> (Option<i32>, Value, String) {
    let out = Command::new(bin("megaplan-cloudctl"))
        .args(args)
        .current_dir(dir)
        .env("MEGAPLAN_CLOUDD_SOCKET", dir.join("no-daemon.sock"))
        .output()
        .unwrap();
    (
        out.status.code(),
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn init_works_without_a_daemon_and_refuses_to_overwrite() {
    let tmp = tempfile::tempdir().unwrap();
    let (code, v, err) = ctl(tmp.path(), &["init"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(v["success"], true);
    let path = tmp.path().join("cloud.yaml");
    let written = std::fs::read_to_string(&path).unwrap();
    assert_eq!(written, megaplan_cloud_api::CLOUD_YAML_SCAFFOLD);
    // The scaffold parses as written, with the loader the daemon uses.
    let spec = megaplan_cloudd::cloud_yaml::load(&path).unwrap();
    assert!(spec.warnings.is_empty());

    std::fs::write(&path, "mine: true\n").unwrap();
    let (code, v, _) = ctl(tmp.path(), &["init"]);
    assert_eq!(code, Some(1));
    assert_eq!(v["error"], "invalid_args");
    assert!(v["message"].as_str().unwrap().contains("--force"));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "mine: true\n");

    let (code, _, _) = ctl(tmp.path(), &["--cloud-yaml", "sub/dir/cloud.yaml", "init"]);
    assert_eq!(code, Some(0));
    assert!(tmp.path().join("sub/dir/cloud.yaml").exists());
    let (code, _, _) = ctl(tmp.path(), &["init", "--force"]);
    assert_eq!(code, Some(0));
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        megaplan_cloud_api::CLOUD_YAML_SCAFFOLD
    );
}

#[test]
fn every_daemon_command_says_how_to_start_the_daemon() {
    let tmp = tempfile::tempdir().unwrap();
    for args in [
        vec!["build"],
        vec!["status", "--chain"],
        vec!["supervise", "--chain"],
        vec!["registrations"],
        vec!["daemon", "status"],
        vec!["exec", "true"],
    ] {
        let (code, v, err) = ctl(tmp.path(), &args);
        assert_eq!(code, Some(69), "{args:?}: {err}");
        assert_eq!(v["error"], "daemon_unreachable", "{args:?}");
        assert!(
            v["message"].as_str().unwrap().contains("megaplan-cloudd"),
            "{args:?}"
        );
        assert!(err.contains("no-daemon.sock"), "{args:?}: {err}");
    }
}

#[test]
fn supervise_needs_chain_and_destroy_needs_confirmation() {
    let tmp = tempfile::tempdir().unwrap();
    let (code, v, _) = ctl(tmp.path(), &["supervise"]);
    assert_eq!(code, Some(1));
    assert_eq!(v["error"], "invalid_args");
    // No terminal and no --yes: refused before any daemon is asked.
    let (code, v, _) = ctl(tmp.path(), &["destroy"]);
    assert_eq!(code, Some(1));
    assert_eq!(v["error"], "invalid_args");
    assert!(v["message"].as_str().unwrap().contains("--yes"));
}
