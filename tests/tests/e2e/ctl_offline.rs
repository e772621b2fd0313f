//! What the client does without a daemon: `init`, argument errors, where cloud.yaml is found,
//! `doctor`, and the unreachable error.

use megaplan_cloud_api::ErrorCode;
use megaplan_cloud_e2e::bin;
use megaplan_cloud_e2e::rig::Run;
use std::path::Path;
use std::process::Command;

/// `megaplan-cloudctl args...` from `dir` with no daemon on the socket it is pointed at:
/// the exit code, what it printed on stdout, and its stderr.
fn ctl(dir: &Path, args: &[&str]) -> (Option<i32>, Run, String) {
    ctl_env(dir, &[], args)
}

/// [`ctl`] with extra environment.
fn ctl_env(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> (Option<i32>, Run, String) {
    let out = Command::new(bin("megaplan-cloudctl"))
        .args(args)
        .current_dir(dir)
        .env("MEGAPLAN_CLOUDD_SOCKET", dir.join("no-daemon.sock"))
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let run = Run::from_output(&out);
    (
        run.code,
        run,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn init_works_without_a_daemon_and_refuses_to_overwrite() {
    let tmp = tempfile::tempdir().unwrap();
    let (code, v, err) = ctl(tmp.path(), &["init"]);
    assert_eq!(code, Some(0), "{err}");
    // `init`'s answer is the client's own document (no daemon, no api type): read as JSON.
    assert_eq!(v.json["success"], true);
    let path = std::fs::canonicalize(tmp.path())
        .unwrap()
        .join("cloud.yaml");
    // The original prints `cloud_yaml` (the resolved path); `path` is ours, kept beside it.
    assert_eq!(v.json["cloud_yaml"], path.display().to_string());
    assert_eq!(v.json["path"], v.json["cloud_yaml"]);
    let written = std::fs::read_to_string(&path).unwrap();
    assert_eq!(written, megaplan_cloud_api::CLOUD_YAML_SCAFFOLD);
    // The scaffold parses as written, with the loader the daemon uses.
    let spec = megaplan_cloudd::cloud_yaml::load(&path).unwrap();
    assert!(spec.warnings.is_empty());

    std::fs::write(&path, "mine: true\n").unwrap();
    let (code, v, _) = ctl(tmp.path(), &["init"]);
    assert_eq!(code, Some(1));
    let e = v.error_body();
    assert_eq!(e.error, ErrorCode::InvalidArgs);
    assert!(e.message.contains("--force"));
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
    std::fs::write(tmp.path().join("cloud.yaml"), "provider: local\n").unwrap();
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
        let e = v.error_body();
        assert_eq!(e.error, ErrorCode::DaemonUnreachable, "{args:?}");
        assert!(e.message.contains("megaplan-cloudd"), "{args:?}");
        assert!(err.contains("no-daemon.sock"), "{args:?}: {err}");
    }
}

#[test]
fn supervise_needs_chain_and_destroy_needs_confirmation() {
    let tmp = tempfile::tempdir().unwrap();
    let (code, v, _) = ctl(tmp.path(), &["supervise"]);
    assert_eq!(code, Some(1));
    assert_eq!(v.error_body().error, ErrorCode::InvalidArgs);
    // No terminal and no --yes: refused before any daemon is asked.
    std::fs::write(tmp.path().join("cloud.yaml"), "provider: local\n").unwrap();
    let (code, v, _) = ctl(tmp.path(), &["destroy"]);
    assert_eq!(code, Some(1));
    let e = v.error_body();
    assert_eq!(e.error, ErrorCode::InvalidArgs);
    assert!(e.message.contains("--yes"));
}

#[test]
fn cloud_yaml_is_found_at_the_project_root_and_a_miss_lists_the_places_tried() {
    let tmp = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(tmp.path()).unwrap();
    let proj = root.join("proj");
    let sub = proj.join("src/deep");
    std::fs::create_dir_all(proj.join(".megaplan")).unwrap();
    std::fs::create_dir_all(&sub).unwrap();
    // Nothing yet: a structured error naming each place looked at, before any daemon is asked.
    let (code, v, err) = ctl(&sub, &["status", "--chain"]);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(v.error_body().error, ErrorCode::InvalidSpec);
    let tried: Vec<String> = v.error_extra("tried");
    let want_root = proj.join("cloud.yaml");
    let want_here = sub.join("cloud.yaml");
    assert_eq!(
        tried,
        [want_root.to_str().unwrap(), want_here.to_str().unwrap()]
    );
    assert!(v.error_body().message.contains("--cloud-yaml"));
    // With cloud.yaml at the project root, the command goes on to the daemon (absent here).
    std::fs::write(proj.join("cloud.yaml"), "provider: local\n").unwrap();
    let (code, v, err) = ctl(&sub, &["status", "--chain"]);
    assert_eq!(code, Some(69), "{err}");
    assert_eq!(v.error_body().error, ErrorCode::DaemonUnreachable);
    // `init` from the subfolder refuses to overwrite the project root's cloud.yaml.
    let (code, v, _) = ctl(&sub, &["init"]);
    assert_eq!(code, Some(1));
    assert!(
        v.error_body().message.contains(want_root.to_str().unwrap()),
        "{}",
        v.stdout
    );
}

#[test]
fn doctor_reports_python_markers_without_a_daemon() {
    let tmp = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(tmp.path()).unwrap();
    let home = root.join("home");
    let cloud_home = home.join(".megaplan/cloud");
    let proj = home.join("work/proj");
    std::fs::create_dir_all(proj.join(".megaplan")).unwrap();
    let cy = proj.join("cloud.yaml");
    std::fs::write(&cy, "provider: local\n").unwrap();
    let key = megaplan_cloud_api::paths::marker_key(&cy);
    let write = |key: &str, text: &str| {
        let f = megaplan_cloud_api::paths::legacy_marker_file(&cloud_home, key);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, text).unwrap();
    };
    write(
        &key,
        r#"{"remote_spec": "/workspace/app/chain.yaml", "provider": "local", "provider_identity": "megaplan-cloud", "extra_repos": [{"url": "u", "branch": "main", "workspace": "/workspace/lib"}], "odd": 1}"#,
    );
    write("ffffffffffffffff", "{truncated");
    let home_s = home.display().to_string();
    let (code, v, err) = ctl_env(
        &root,
        &[("HOME", home_s.as_str()), ("MEGAPLAN_CLOUD_HOME", "")],
        &["doctor"],
    );
    assert_eq!(code, Some(0), "{err}");
    // `doctor`'s document is the client's own (no api type carries it): read as JSON.
    let v = v.json;
    assert_eq!(v["daemon_reachable"], false);
    let markers = v["markers"].as_array().unwrap();
    let good = markers.iter().find(|m| m["key"] == key.as_str()).unwrap();
    assert_eq!(good["importable"], true);
    assert_eq!(good["cloud_yaml"], cy.display().to_string(), "{v}");
    assert_eq!(good["unmapped"].as_array().unwrap().len(), 1, "{good}");
    let bad = markers
        .iter()
        .find(|m| m["key"] == "ffffffffffffffff")
        .unwrap();
    assert_eq!(bad["importable"], false);
    assert!(bad["problem"].as_str().unwrap().contains("not valid JSON"));
    assert!(
        good["unmapped"][0].as_str().unwrap().contains("odd"),
        "{good}"
    );
    // The checklist: typed rows with a verdict, and the fix where something needs doing.
    let checks = v["checks"].as_array().unwrap();
    let check = |name: &str| {
        checks
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no {name} check in {v}"))
    };
    let daemon = check("daemon");
    assert_eq!(daemon["verdict"], "fail", "{daemon}");
    assert!(
        daemon["detail"]
            .as_str()
            .unwrap()
            .contains("no-daemon.sock"),
        "{daemon}"
    );
    assert!(
        daemon["fix"]
            .as_str()
            .unwrap()
            .contains("systemctl --user start megaplan-cloudd"),
        "{daemon}"
    );
    let disk = check("disk");
    assert_eq!(disk["verdict"], "ok", "the test machine has room: {disk}");
    assert!(disk["detail"].as_str().unwrap().contains("MiB free"));
    // No unit in this HOME: either said not installed, or no systemctl to ask.
    let unit = check("service unit");
    assert!(
        unit["verdict"] == "warn" || unit["verdict"] == "skip",
        "{unit}"
    );
    for c in checks {
        assert!(
            ["ok", "warn", "fail", "skip"].contains(&c["verdict"].as_str().unwrap()),
            "{c}"
        );
        if c["verdict"] == "ok" {
            assert!(c.get("fix").is_none(), "{c}");
        }
    }
    // Through a pipe the document is the whole answer: nothing on stderr.
    assert!(err.is_empty(), "{err}");
}
