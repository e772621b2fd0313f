//! The service files as the service managers will run them: the systemd user unit's hardening
//! (scored by `systemd-analyze security --offline`) and the launchd agent's start-up wrapper,
//! run for real with a throw-away HOME (launchd itself cannot run here, the wrapper can).

use megaplan_cloud_e2e::{bin, wait_until};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

#[test]
fn user_unit_takes_the_session_agent_and_user_paths_and_is_hardened() {
    let unit = std::fs::read_to_string(root().join("systemd/megaplan-cloudd.service")).unwrap();
    assert!(
        !unit
            .lines()
            .any(|l| !l.starts_with('#') && l.contains("network-online")),
        "network-online.target is meaningless in a user manager"
    );
    assert!(
        !unit.contains("Environment=SSH_AUTH_SOCK"),
        "SSH_AUTH_SOCK must come from the session, not a fixed path"
    );
    assert!(unit.contains("%h/.local/bin") && unit.contains("%h/.cargo/bin"));
    for needed in [
        "LimitNOFILE=",
        "LockPersonality=yes",
        "RestrictRealtime=yes",
        "RestrictSUIDSGID=yes",
        "SystemCallArchitectures=native",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
    ] {
        assert!(unit.contains(needed), "unit lacks {needed}");
    }
    // Score it as systemd does (offline: no manager needed).
    let tmp = tempfile::tempdir().unwrap();
    let test_unit = megaplan_cloud_e2e::unit_with_built_daemon(tmp.path());
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes"])
        .arg(&test_unit)
        .output()
        .expect("systemd-analyze (package systemd) must be installed");
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for megaplan-cloudd.service: ")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or_else(|| panic!("no exposure score in:\n{text}"));
    assert!(
        score <= 5.0,
        "exposure {score} (was 9.4 before the hardening):\n{text}"
    );
}

#[test]
fn launchd_agent_needs_no_editing_and_its_wrapper_prepares_the_state_root() {
    let plist = root().join("launchd/com.megaplan.cloudd.plist");
    let text = std::fs::read_to_string(&plist).unwrap();
    assert!(!text.contains("USERNAME"), "placeholders left in the plist");
    // The property list as launchd reads it.
    let script = "import plistlib,sys,json; d=plistlib.load(open(sys.argv[1],'rb')); \
                  print(json.dumps({'args': d['ProgramArguments'], 'exit': d['ExitTimeOut'], 'umask': d['Umask']}))";
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(&plist)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v["exit"].as_u64().unwrap() > 30,
        "ExitTimeOut must exceed the 30 s grace"
    );
    assert_eq!(v["umask"], 63, "0077");
    let args: Vec<String> = v["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            a.as_str().unwrap().replace(
                "/usr/local/bin/megaplan-cloudd",
                bin("megaplan-cloudd").to_str().unwrap(),
            )
        })
        .collect();

    // Run the wrapper as launchd would: HOME set, nothing created beforehand.
    let home = tempfile::tempdir().unwrap();
    let mut child = Command::new(&args[0])
        .args(&args[1..])
        .env_clear()
        .env("HOME", home.path())
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let state = home.path().join(".megaplan/cloud");
    let socket = state.join("cloudd.sock");
    let up = wait_until(Duration::from_secs(30), || {
        std::os::unix::net::UnixStream::connect(&socket).is_ok()
    });
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = child.wait().unwrap();
    assert!(up, "the daemon never listened at {}", socket.display());
    assert_eq!(status.code(), Some(0));
    for dir in [state.clone(), state.join("logs")] {
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{} is {mode:o}", dir.display());
    }
    let stderr_log = std::fs::read_to_string(state.join("logs/cloudd.stderr.log")).unwrap();
    assert!(stderr_log.contains("megaplan-cloudd ready"), "{stderr_log}");
}
