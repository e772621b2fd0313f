//! The service files as the service managers will run them: the systemd user unit's hardening
//! (scored by `systemd-analyze security --offline`) and the launchd agent's start-up wrapper,
//! run for real with a throw-away HOME (launchd itself cannot run here, the wrapper can).

use megaplan_cloud_e2e::{bin, skip_or_panic, wait_until};
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
    for needed in [
        "ProtectSystem=strict",
        "ProtectHome=read-only",
        "SystemCallFilter=~@resources",
        "CapabilityBoundingSet=\n",
        "UMask=0077",
    ] {
        assert!(unit.contains(needed), "unit lacks {needed:?}");
    }
    // What the daemon writes must stay writable under ProtectHome=read-only: its state root
    // (created outside the sandbox first, else the namespace setup fails on a fresh account).
    assert!(
        unit.contains("ExecStartPre=+/bin/mkdir -p -m 0700 %h/.megaplan"),
        "the state root must exist before the sandbox is set up"
    );
    let writable = unit
        .lines()
        .find_map(|l| l.strip_prefix("ReadWritePaths="))
        .expect("ReadWritePaths= names the state root");
    assert!(
        writable.split_whitespace().any(|p| p == "-%h/.megaplan"),
        "{writable}"
    );
    // A classic ssh-agent listens in /tmp/ssh-*/: a private /tmp would hide SSH_AUTH_SOCK.
    assert!(
        !unit.lines().any(|l| l.starts_with("PrivateTmp=yes")),
        "PrivateTmp= hides an ssh-agent socket in /tmp"
    );

    // Score it as systemd does (offline: no manager needed), as a system unit and as a user unit.
    let tmp = tempfile::tempdir().unwrap();
    let test_unit = megaplan_cloud_e2e::unit_with_built_daemon(tmp.path());
    for flavour in [Flavour::System, Flavour::User] {
        let Some((score, text)) = exposure(&test_unit, flavour, tmp.path()) else {
            return;
        };
        assert!(
            score <= 2.0,
            "{flavour:?} exposure {score} must be OK (≤ 2.0; was 3.9 system / 4.1 user):\n{text}"
        );
    }
}

#[derive(Debug, Clone, Copy)]
enum Flavour {
    System,
    User,
}

/// `systemd-analyze security --offline=yes [--user] <unit>`: the overall exposure and the table,
/// or None after `skip_or_panic` when this systemd cannot score a unit file offline.
fn exposure(unit: &Path, flavour: Flavour, scratch: &Path) -> Option<(f64, String)> {
    let mut cmd = Command::new("systemd-analyze");
    cmd.args(["security", "--offline=yes"]);
    if let Flavour::User = flavour {
        // The user manager's offline analysis resolves %t from XDG_RUNTIME_DIR; a session has
        // one, a test runner may not.
        let runtime = scratch.join("runtime");
        std::fs::create_dir_all(&runtime).unwrap();
        std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o700)).unwrap();
        cmd.arg("--user").env("XDG_RUNTIME_DIR", &runtime);
    }
    let out = match cmd.arg(unit).output() {
        Ok(out) => out,
        Err(e) => {
            skip_or_panic(&format!(
                "systemd-analyze (package systemd) cannot run: {e}"
            ));
            return None;
        }
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let score = text.lines().find_map(|l| {
        l.split("Overall exposure level for megaplan-cloudd.service: ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
    });
    match score {
        Some(score) => Some((score, text)),
        // systemd < 247 has no --offline: it would score the (absent) loaded unit instead.
        None if text.contains("--offline") || text.contains("unrecognized option") => {
            skip_or_panic(&format!(
                "this systemd-analyze cannot score a unit file offline:\n{text}"
            ));
            None
        }
        None => panic!("no exposure score for the {flavour:?} unit in:\n{text}"),
    }
}

/// `Documentation=` names files the documented install steps put there: run the install lines
/// of README's quick start and docs/operations.md into a scratch root and look.
#[test]
fn unit_documentation_points_at_files_the_install_steps_install() {
    let unit = std::fs::read_to_string(root().join("systemd/megaplan-cloudd.service")).unwrap();
    let docs: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("Documentation="))
        .flat_map(str::split_whitespace)
        .collect();
    assert!(!docs.is_empty(), "the unit names no Documentation=");
    for guide in ["README.md", "docs/operations.md"] {
        let text = std::fs::read_to_string(root().join(guide)).unwrap();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("/usr/share/doc/megaplan-cloudd"))
            .filter(|l| {
                l.trim_start().starts_with("sudo install") || l.trim_start().starts_with("install")
            })
            .collect();
        assert!(
            !lines.is_empty(),
            "{guide} has no step that installs the unit's documentation"
        );
        let dest = tempfile::tempdir().unwrap();
        for line in lines {
            let command = line
                .split(" #")
                .next()
                .unwrap_or(line)
                .trim()
                .trim_start_matches("sudo ")
                .replace(
                    "/usr/share/doc/",
                    &format!("{}/usr/share/doc/", dest.path().display()),
                );
            let status = Command::new("sh")
                .args(["-c", &command])
                .current_dir(root())
                .status()
                .unwrap();
            assert!(status.success(), "{guide}: `{command}` failed");
        }
        for doc in &docs {
            let path = doc
                .strip_prefix("file://")
                .unwrap_or_else(|| panic!("{doc}: only file:// documentation is installed"));
            let installed = dest.path().join(path.trim_start_matches('/'));
            assert!(
                installed.is_file(),
                "{guide}'s install steps do not install {doc}"
            );
        }
    }
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
