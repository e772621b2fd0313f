//! megaplan-cloudctl as a person sees it: in a real terminal (a tmux pane: `new-session -d`,
//! `capture-pane`) the client renders tables and summaries and prints an error once; through a
//! pipe the same commands print JSON for scripts. Also: shell completions load into bash and
//! complete a subcommand, and the man page renders.

use megaplan_cloud_api::ErrorBody;
use megaplan_cloud_api::wire::{RegisterResponse, RegistrationListed, TickRecord};
use megaplan_cloud_e2e::pane::{
    Pane, assert_fits_80, in_80_columns, in_terminal, signal_then_hold,
};
use megaplan_cloud_e2e::rig::{SshRig, local_cloud_yaml, write_chain};
use megaplan_cloud_e2e::{Daemon, bin, wait_until};
use megaplan_cloudd::shell::quote;
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

#[test]
fn terminal_gets_tables_and_one_error_line_pipes_get_json() {
    let Some(rig) = SshRig::start("", &[]) else {
        return;
    };
    rig.precreate_workspace();
    rig.control(r#"{"step_seconds": 0.1, "stall": ["m1"]}"#);
    let spec = write_chain(&rig.project.join("epic"), "chain.yaml", &["m1", "m2"]);
    rig.ctl(&["chain", spec.to_str().unwrap()]).ok();
    rig.ctl(&["register", "--every", "1h"]).ok();
    rig.ctl(&["tick"]);

    let ctl = bin("megaplan-cloudctl").display().to_string();
    let cy = rig.cloud_yaml.display().to_string();
    // A local-provider cloud.yaml that was never built: the daemon answers with an error.
    let local_dir = rig.project.join("local");
    std::fs::create_dir_all(&local_dir).unwrap();
    let local_cy = local_dir.join("cloud.yaml");
    std::fs::write(&local_cy, "provider: local\nrepo:\n  url: /srv/repo.git\n").unwrap();
    let local_cy = local_cy.display().to_string();
    let socket = rig.daemon.socket.display().to_string();
    let env = [("MEGAPLAN_CLOUDD_SOCKET", socket.as_str())];
    let section = |name: &str, args: &str| {
        format!(
            "echo '== {name}'; cd {dir} && {ctl} {args} 2>&1; echo \"== exit $?\"",
            dir = quote(&rig.project.display().to_string()),
            ctl = quote(&ctl),
        )
    };
    let script = [
        section("registrations", "registrations"),
        section("ticks", "ticks --all"),
        section(
            "status",
            &format!("--cloud-yaml {} status --chain", quote(&cy)),
        ),
        section("error", "--cloud-yaml /nonexistent/cloud.yaml status"),
        section(
            "daemon-error",
            &format!("--cloud-yaml {} status", quote(&local_cy)),
        ),
    ]
    .join("; ");
    let pane = in_terminal(&script, &env);
    let part = |name: &str| -> String {
        let start = pane
            .find(&format!("== {name}\n"))
            .unwrap_or_else(|| panic!("no section {name}:\n{pane}"));
        let rest = &pane[start..];
        let end = rest.find("== exit").unwrap_or(rest.len());
        rest[..end].to_string()
    };

    let regs = part("registrations");
    assert!(
        regs.contains("KEY") && regs.contains("SCHEDULE") && regs.contains("NEXT"),
        "{regs}"
    );
    assert!(regs.contains("every 1h"), "{regs}");
    assert!(!regs.contains('{'), "JSON on a terminal:\n{regs}");

    let ticks = part("ticks");
    assert!(
        ticks.contains("WHEN") && ticks.contains("EVENT") && ticks.contains("manual"),
        "{ticks}"
    );
    assert!(!ticks.contains('{'), "JSON on a terminal:\n{ticks}");

    let status = part("status");
    assert!(
        !status.contains("\"success\""),
        "JSON on a terminal:\n{status}"
    );
    assert!(status.contains("m1"), "{status}");

    let err = part("error");
    assert_error_shown_once(&err, "error:");
    assert!(err.contains("/nonexistent/cloud.yaml"), "{err}");
    assert_error_shown_once(&part("daemon-error"), "build` first");

    // Through a pipe: JSON, as scripts expect.
    let regs: Vec<RegistrationListed> = serde_json::from_str(&rig.ctl(&["registrations"]).stdout)
        .expect("registrations through a pipe is JSON");
    assert_eq!(regs.len(), 1);
    let ticks: Vec<TickRecord> =
        serde_json::from_str(&rig.ctl(&["ticks"]).stdout).expect("ticks through a pipe is JSON");
    assert!(!ticks.is_empty());
    let st = rig.ctl(&["status", "--chain"]);
    assert!(st.success(), "{}", st.stdout);
    let bad = rig.daemon.ctl(
        &rig.project,
        &[],
        &["--cloud-yaml", "/nonexistent/cloud.yaml", "status"],
    );
    let v: ErrorBody = serde_json::from_slice(&bad.stdout).expect("error JSON through a pipe");
    assert!(!v.success);
    // Outside any project (no cloud.yaml in reach) `ticks` shows every registration's history
    // instead of an empty list.
    let outside = rig.daemon.ctl(std::path::Path::new("/"), &[], &["ticks"]);
    let all: Value = serde_json::from_slice(&outside.stdout).expect("ticks JSON");
    assert!(
        !all.as_array().unwrap().is_empty(),
        "{}",
        String::from_utf8_lossy(&outside.stderr)
    );
    // `--json` forces JSON on a terminal too.
    let forced = in_terminal(
        &format!("cd /tmp && {} registrations --json", quote(&ctl)),
        &env,
    );
    assert!(forced.contains("\"cloud_yaml\""), "{forced}");
}

/// An error on a terminal is printed once (`once` appears exactly once) and never as JSON.
fn assert_error_shown_once(err: &str, once: &str) {
    assert_eq!(
        err.matches(once).count(),
        1,
        "an error is printed once on a terminal:\n{err}"
    );
    assert!(
        !err.contains("\"error\""),
        "JSON error on a terminal:\n{err}"
    );
}

/// A daemon and a project (`proj`) whose local-provider cloud.yaml (never built) is registered
/// every hour: the daemon, the project folder, the cloud.yaml and `register`'s output.
fn registered_local_project() -> (Daemon, PathBuf, PathBuf, Output) {
    let d = Daemon::start(&[], &[]);
    let work = d.dir.join("proj");
    let cy = local_cloud_yaml(&work);
    let out = d.ctl(
        &work,
        &[],
        &[
            "--cloud-yaml",
            cy.to_str().unwrap(),
            "register",
            "--every",
            "1h",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    (d, work, cy, out)
}

/// A tmux pane running `megaplan-cloudctl --cloud-yaml <rig's> <args>` in the rig's project,
/// then printing `<first word of args> exited <code>` and signalling `signal` (the pane holds).
fn ctl_in_pane(rig: &SshRig, args: &str, signal: &str) -> Pane {
    let ctl = bin("megaplan-cloudctl").display().to_string();
    let socket = rig.daemon.socket.display().to_string();
    let what = args.split_whitespace().next().unwrap_or(args);
    let script = format!(
        "cd {dir} && {ctl} --cloud-yaml {cy} {args}; echo \"{what} exited $?\"; {hold}",
        dir = quote(&rig.project.display().to_string()),
        ctl = quote(&ctl),
        cy = quote(&rig.cloud_yaml.display().to_string()),
        hold = signal_then_hold(signal),
    );
    Pane::start(&script, &[("MEGAPLAN_CLOUDD_SOCKET", socket.as_str())])
}

#[test]
fn tab_in_a_real_bash_completes_flags_past_the_first_word_and_registration_keys() {
    let (d, work, cy, _) = registered_local_project();
    let cys = cy.to_str().unwrap();
    let key = registration_key(&d, &work, cys);
    let ctl = bin("megaplan-cloudctl");
    let path = format!(
        "{}:{}",
        ctl.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let socket = d.socket.display().to_string();
    // An interactive bash with nothing of the user's, the completion loaded as the docs say.
    let pane = Pane::start_sized(
        "PS1='$ ' exec bash --norc --noprofile -i",
        &[
            ("PATH", path.as_str()),
            ("MEGAPLAN_CLOUDD_SOCKET", socket.as_str()),
        ],
        120,
    );
    pane.send_keys(&[
        "source <(megaplan-cloudctl completions bash) && echo loaded",
        "Enter",
    ]);
    pane.wait_for("the completion loaded", |l| l == "loaded");
    // TAB TAB after `pause ` offers the registration's key (beside the flags), from the daemon.
    pane.send_keys(&["megaplan-cloudctl pause ", "Tab", "Tab"]);
    pane.wait_for("the key offered", |l| {
        l.split_whitespace().any(|w| w == key)
    });
    // A few characters of it complete to the whole key.
    pane.send_keys(&["C-u", "megaplan-cloudctl pause ", &key[..3], "Tab"]);
    pane.wait_for("the key completed", |l| {
        l.contains(&format!("megaplan-cloudctl pause {key}"))
    });
    // A flag of a subcommand, past the first word.
    pane.send_keys(&["C-u", "megaplan-cloudctl register --ev", "Tab"]);
    pane.wait_for("--every completed", |l| {
        l.contains("megaplan-cloudctl register --every")
    });
}

#[test]
fn bash_completion_completes_a_subcommand_and_the_man_page_renders() {
    let ctl = bin("megaplan-cloudctl").display().to_string();
    let script = format!(
        "source <({ctl} completions bash) \
         && fn=$(complete -p megaplan-cloudctl | sed 's/.*-F \\([^ ]*\\).*/\\1/') \
         && COMP_WORDS=(megaplan-cloudctl regi) && COMP_CWORD=1 \
         && \"$fn\" megaplan-cloudctl regi megaplan-cloudctl && printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        ctl = quote(&ctl)
    );
    let out = Command::new("bash").args(["-c", &script]).output().unwrap();
    let words = String::from_utf8_lossy(&out.stdout);
    assert!(
        words.lines().any(|w| w == "register") && words.lines().any(|w| w == "registrations"),
        "bash completion of `regi`: {words:?} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // zsh and fish get the same dynamic completion: their code asks this binary.
    for shell in ["zsh", "fish"] {
        let out = Command::new(&ctl)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("COMPLETE="),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    // One page per subcommand, with the sections a person looks for.
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(&ctl)
        .args(["man", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    for page in [
        "megaplan-cloudctl.1",
        "megaplan-cloudctl-pause.1",
        "megaplan-cloudctl-ls.1",
    ] {
        assert!(dir.path().join(page).is_file(), "no {page}");
    }
    let root = std::fs::read_to_string(dir.path().join("megaplan-cloudctl.1")).unwrap();
    for section in ["EXIT STATUS", "ENVIRONMENT", "FILES", "EXAMPLES"] {
        assert!(root.contains(section), "no {section} in the man page");
    }
    let man = Command::new(&ctl).arg("man").output().unwrap();
    let roff = String::from_utf8_lossy(&man.stdout);
    assert!(
        roff.contains(".TH") && roff.contains("megaplan\\-cloudctl"),
        "{roff}"
    );
}

#[test]
fn version_works_without_a_daemon_and_names_both_sides() {
    let out = Command::new(bin("megaplan-cloudctl"))
        .args(["version", "--json"])
        .env("MEGAPLAN_CLOUDD_SOCKET", "/nonexistent/cloudd.sock")
        .output()
        .unwrap();
    // The daemon is down: still the client's version, and 69 (EX_UNAVAILABLE), documented.
    assert_eq!(out.status.code(), Some(69));
    // `version`'s document is the client's own (no api type carries it): read as JSON.
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["client"]["version"], megaplan_cloud_api::VERSION);
    assert!(v["daemon"].is_null());
}

#[test]
fn attach_in_a_real_terminal_types_into_the_runner_session_and_detaches_with_the_prefix() {
    let Some(rig) = SshRig::start("", &[]) else {
        return;
    };
    // The runner's tmux session `agent`, as the entrypoint leaves it.
    rig.container
        .exec_ok("tmux new-session -d -s agent -x 120 -y 40 bash && tmux has-session -t agent");
    // The daemon holds the ssh session the attach reuses.
    rig.ctl(&["exec", "true"]).ok();

    let pane = ctl_in_pane(&rig, "attach", "attached");
    // Typed into the runner's shell; the arithmetic proves the shell ran it (an echo of the
    // keystrokes alone would show `$((40+2))`).
    let typed = || pane.send_keys(&["echo attached-$((40+2))", "Enter"]);
    typed();
    let mut seen = false;
    for _ in 0..20 {
        if wait_until(Duration::from_secs(3), || {
            pane.capture().lines().any(|l| l.trim() == "attached-42")
        }) {
            seen = true;
            break;
        }
        typed();
    }
    assert!(
        seen,
        "typed command never ran in the runner:\n{}",
        pane.capture()
    );
    // The runner's shell saw it too.
    let inner = rig.container.exec_ok("tmux capture-pane -p -t agent");
    assert!(inner.contains("attached-42"), "{inner}");

    // Detach with the runner tmux's prefix: the client exits 0, the session keeps running.
    pane.send_keys(&["C-b", "d"]);
    let after = pane.wait_signal("attached");
    assert!(
        after.lines().any(|l| l.trim() == "attach exited 0"),
        "{after}"
    );
    rig.container.exec_ok("tmux has-session -t agent");

    // With no terminal the client says why instead of running ssh without one.
    let no_tty = rig.ctl(&["attach"]);
    assert_eq!(no_tty.code, Some(1), "{}", no_tty.stderr);
    assert!(no_tty.stderr.contains("terminal"), "{}", no_tty.stderr);
}

#[test]
fn register_warns_when_no_remote_spec_can_be_resolved() {
    let (d, work, cy, out) = registered_local_project();
    let cys = cy.to_str().unwrap();
    let v: RegisterResponse = serde_json::from_slice(&out.stdout).unwrap();
    let warned = |v: &RegisterResponse| {
        v.warnings
            .iter()
            .any(|w| w.contains("no remote chain spec"))
    };
    assert!(warned(&v), "{v:?}");
    // Through a pipe the warning is in the document, and stderr stays empty.
    assert!(out.stderr.is_empty(), "{out:?}");
    // Naming the spec on the runner answers the question: no warning.
    let out = d.ctl(
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
    );
    let v: RegisterResponse = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!warned(&v), "{v:?}");
    // Before any build the local provider's folder does not exist: the error says so, not
    // "Missing required CLI" (spawn's ENOENT for a missing working folder).
    let st = d.ctl(&work, &[], &["--cloud-yaml", cys, "status"]);
    let v: ErrorBody = serde_json::from_slice(&st.stdout).unwrap();
    let m = v.message.as_str();
    assert!(
        m.contains("build` first") && !m.contains("Missing required CLI"),
        "{v:?}"
    );

    // `tick`, `ticks` and `unregister` take the key `registrations` shows, from anywhere.
    let key = registration_key(&d, &work, cys);
    let root = std::path::Path::new("/");
    let t = d.ctl(root, &[], &["tick", &key]);
    let tv: TickRecord = serde_json::from_slice(&t.stdout).unwrap();
    assert_eq!(tv.key, key, "{tv:?}");
    let h = d.ctl(root, &[], &["ticks", &key]);
    let hv: Vec<TickRecord> = serde_json::from_slice(&h.stdout).unwrap();
    assert!(!hv.is_empty() && hv.iter().all(|r| r.key == key), "{hv:?}");
    // A unique prefix of the key names the registration for every per-registration command,
    // from anywhere; an unknown key is an error naming it, never an empty answer.
    let prefix = &key[..6];
    for args in [
        vec!["pause", prefix, "--reason", "repair"],
        vec!["explain", prefix],
        vec!["notifications", prefix],
        vec!["ticks", prefix],
        vec!["unpause", prefix],
    ] {
        let out = d.ctl(root, &[], &args);
        assert!(out.status.success(), "{args:?}: {out:?}");
        assert!(out.stderr.is_empty(), "{args:?} through a pipe: {out:?}");
    }
    // Without $USER and $LOGNAME (a service, `sudo -i`) the pause still names who paused.
    let out = d
        .ctl_command(root, &["pause", prefix])
        .env_remove("USER")
        .env_remove("LOGNAME")
        .output()
        .unwrap();
    let p: megaplan_cloud_api::wire::PauseResponse = serde_json::from_slice(&out.stdout).unwrap();
    let me = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout).unwrap();
    assert!(
        p.paused.paused_by.starts_with(&format!("{}@", me.trim())),
        "{}",
        p.paused.paused_by
    );
    assert!(d.ctl(root, &[], &["unpause", prefix]).status.success());
    let h = d.ctl(root, &[], &["ticks", prefix]);
    let hv: Vec<megaplan_cloud_api::wire::TickRecord> = serde_json::from_slice(&h.stdout).unwrap();
    assert!(!hv.is_empty() && hv.iter().all(|r| r.key == key), "{hv:?}");
    for args in [
        vec!["ticks", "zzz"],
        vec!["pause", "zzz"],
        vec!["unregister", "0000000000000000"],
    ] {
        let out = d.ctl(root, &[], &args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        let err: megaplan_cloud_api::ErrorBody = serde_json::from_slice(&out.stdout).unwrap();
        assert!(
            err.message
                .starts_with(&format!("no registration with key {}", args[1])),
            "{args:?}: {}",
            err.message
        );
    }
    // Any interval of a minute or more registers (cron where it can say it, an interval where
    // it cannot), and cron's nicknames too; the answer names the next three runs.
    for args in [
        ["--every", "90m"],
        ["--every", "1h30m"],
        ["--every", "45m"],
        ["--every", "7m"],
        ["--every", "5h"],
        ["--cron", "@hourly"],
        ["--cron", "@weekly"],
    ] {
        let out = d.ctl(
            &work,
            &[],
            &["--cloud-yaml", cys, "register", args[0], args[1]],
        );
        assert!(out.status.success(), "{args:?}: {out:?}");
        let r: megaplan_cloud_api::wire::RegisterResponse =
            serde_json::from_slice(&out.stdout).unwrap();
        let runs: Vec<chrono::DateTime<chrono::FixedOffset>> = r
            .next_runs
            .iter()
            .map(|t| chrono::DateTime::parse_from_rfc3339(t).unwrap())
            .collect();
        assert_eq!(runs.len(), 3, "{args:?}: {r:?}");
        let gap = (runs[2] - runs[1]).num_seconds();
        let want = match args[1] {
            "90m" | "1h30m" => 5400,
            "45m" => 2700,
            "7m" => 420,
            "5h" => 18_000,
            "@hourly" => 3600,
            _ => 7 * 86_400,
        };
        assert_eq!(gap, want, "{args:?}: {r:?}");
    }
    // `logs --since banana` is refused here, as a structured usage error, before docker sees it.
    let out = d.ctl(
        &work,
        &[],
        &["--cloud-yaml", cys, "logs", "--since", "banana"],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err: megaplan_cloud_api::ErrorBody = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        err.message.contains("--since \"banana\""),
        "{}",
        err.message
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).starts_with("error: invalid_args"),
        "{out:?}"
    );
    // A value the client can tell is wrong is a usage error: exit 2, like a bad flag.
    for bad in [
        ["--every", "5"],
        ["--every", "banana"],
        ["--cron", "@often"],
    ] {
        let out = d.ctl(
            &work,
            &[],
            &["--cloud-yaml", cys, "register", bad[0], bad[1]],
        );
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {out:?}");
        let err: megaplan_cloud_api::ErrorBody = serde_json::from_slice(&out.stdout).unwrap();
        assert!(err.message.contains(bad[0]), "{bad:?}: {}", err.message);
    }
    let echo = in_80_columns(
        &format!(
            "cd {} && {} --cloud-yaml {} register --every 90m",
            quote(&work.display().to_string()),
            quote(&bin("megaplan-cloudctl").display().to_string()),
            quote(cys)
        ),
        &[("MEGAPLAN_CLOUDD_SOCKET", d.socket.to_str().unwrap())],
    );
    assert_fits_80(&echo);
    assert!(
        echo.contains("every 90m") && echo.contains("next ticks"),
        "{echo}"
    );
    assert_eq!(
        echo.matches("no remote chain spec").count(),
        1,
        "warned once:\n{echo}"
    );

    // `--jq` filters the answer in-process (no jq binary); a filter that does not parse is a
    // usage error before the daemon is asked.
    let j = d.ctl(root, &[], &["ls", "--jq", ".registrations[] | .key"]);
    assert!(j.status.success() && j.stderr.is_empty(), "{j:?}");
    assert_eq!(String::from_utf8_lossy(&j.stdout).trim(), key);
    let j = d.ctl(
        root,
        &[],
        &["ticks", prefix, "--jq", "map(.trigger) | unique"],
    );
    assert_eq!(
        String::from_utf8_lossy(&j.stdout).trim(),
        r#"["manual"]"#,
        "{j:?}"
    );
    let bad = d.ctl(root, &[], &["ls", "--jq", ".["]);
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("--jq"),
        "{bad:?}"
    );
    let u = d.ctl(root, &[], &["unregister", &key]);
    assert!(u.status.success(), "{u:?}");
    let left: Vec<RegistrationListed> =
        serde_json::from_slice(&d.ctl(root, &[], &["registrations"]).stdout).unwrap();
    assert_eq!(left.len(), 0, "{left:?}");
}

fn registration_key(d: &megaplan_cloud_e2e::Daemon, work: &std::path::Path, cy: &str) -> String {
    let regs: Vec<RegistrationListed> =
        serde_json::from_slice(&d.ctl(work, &[], &["registrations"]).stdout).unwrap();
    regs.iter()
        .find(|r| r.registration.cloud_yaml == cy)
        .map(|r| r.registration.key.clone())
        .unwrap_or_else(|| panic!("{cy} not in {regs:?}"))
}

#[test]
fn a_silent_operation_shows_a_spinner_on_a_terminal_and_none_through_a_pipe() {
    // The core's hung `status` never returns on its own: the daemon's command deadline ends it,
    // so `status --chain` answers (an error) and the spinner goes. 60 s bounds the wait; what is
    // asserted is the spinner while silent and its absence after the answer.
    let Some(rig) = SshRig::start("", &["--command-timeout", "60s"]) else {
        return;
    };
    rig.precreate_workspace();
    rig.control(r#"{"step_seconds": 0.1, "stall": ["m1"]}"#);
    let spec = write_chain(&rig.project.join("epic"), "chain.yaml", &["m1"]);
    rig.ctl(&["chain", spec.to_str().unwrap()]).ok();
    // The core's status now never answers: `status --chain` sits silent until released.
    rig.control(r#"{"step_seconds": 0.1, "stall": ["m1"], "hang_status": true}"#);
    let pane = ctl_in_pane(&rig, "status --chain", "status-done");
    pane.wait_for("the spinner", |l| {
        l.contains("status: waiting for megaplan-cloudd and the runner")
    });
    // Released: the answer replaces the spinner.
    rig.control(r#"{"step_seconds": 0.1, "stall": ["m1"]}"#);
    let done = pane.wait_signal("status-done");
    assert!(
        done.lines().any(|l| l.starts_with("status exited")),
        "{done}"
    );
    assert!(!done.contains("waiting for megaplan-cloudd"), "{done}");
    // Through a pipe: no spinner text on stderr.
    let piped = rig.ctl(&["status", "--chain"]);
    assert!(!piped.stderr.contains("waiting for"), "{}", piped.stderr);
}

#[test]
fn ls_shows_every_chain_in_80_columns_what_needs_a_person_first_and_redraws_after_a_tick() {
    use megaplan_cloud_api::fleet::{Fleet, FleetState};
    use megaplan_cloud_api::wire::TickNowResponse;
    let Some(rig) = SshRig::start("", &[]) else {
        return;
    };
    rig.launch_awaiting_pr(&["m1", "m2"], 7);
    rig.ctl(&["register", "--every", "1h"]).ok();
    // The stand-in chain reaches PR #7 on its own; each tick stores what it saw.
    let awaiting = wait_until(Duration::from_secs(60), || {
        matches!(
            serde_json::from_str::<TickNowResponse>(&rig.ctl(&["tick"]).stdout),
            Ok(TickNowResponse::Ran(t)) if t.report.effective_status.as_str() == "awaiting_pr_merge"
        )
    });
    assert!(awaiting, "the chain never reached awaiting_pr_merge");
    // A second registration never ticked, and a third whose cloud.yaml is gone.
    let text = std::fs::read_to_string(&rig.cloud_yaml).unwrap();
    let mut others = Vec::new();
    for name in ["other", "gone"] {
        let dir = rig.daemon.dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let cy = dir.join("cloud.yaml");
        std::fs::write(&cy, &text).unwrap();
        let cys = cy.display().to_string();
        rig.daemon.ctl(
            &dir,
            &[],
            &["--cloud-yaml", &cys, "register", "--every", "1h"],
        );
        others.push(cy);
    }
    std::fs::remove_file(&others[1]).unwrap();

    // Through a pipe our own commands answer with the document alone: stderr stays empty.
    for args in [&["pause"][..], &["unpause"], &["tick"]] {
        let r = rig.ctl(args);
        assert!(r.stderr.is_empty(), "{args:?} through a pipe: {}", r.stderr);
        assert!(
            r.stdout.trim_start().starts_with('{'),
            "{args:?}: {}",
            r.stdout
        );
    }

    // Through a pipe: the typed fleet as JSON on stdout, nothing on stderr.
    let piped = rig.ctl(&["ls"]).ok();
    assert!(
        piped.stderr.is_empty(),
        "stderr through a pipe: {}",
        piped.stderr
    );
    let fleet: Fleet = serde_json::from_str(&piped.stdout).expect("ls through a pipe is a Fleet");
    let states: Vec<(String, FleetState)> = fleet
        .registrations
        .iter()
        .map(|r| (r.name.clone(), r.state))
        .collect();
    assert_eq!(
        states,
        [
            ("gone".to_string(), FleetState::NeedsPerson),
            ("project".to_string(), FleetState::AwaitingPr),
            ("other".to_string(), FleetState::Unknown),
        ],
        "{}",
        piped.stdout
    );
    let project = &fleet.registrations[1];
    assert_eq!(project.pr_number, Some(7));
    let m = project
        .milestone
        .clone()
        .expect("the tick saw the milestone");
    assert_eq!((m.number, m.count, m.label.as_deref()), (1, 2, Some("m1")));
    assert!(project.next_tick_at.is_some() && project.host.as_deref() == Some("127.0.0.1"));

    // In an 80-column terminal: one screen, nothing wrapped, keys whole, the fix spelled out.
    let ctl = bin("megaplan-cloudctl").display().to_string();
    let socket = rig.daemon.socket.display().to_string();
    let env = [("MEGAPLAN_CLOUDD_SOCKET", socket.as_str())];
    let section = |name: &str, args: &str| {
        format!(
            "echo '== {name}'; cd {dir} && {ctl} {args} 2>&1; echo \"== exit $?\"",
            dir = quote(&rig.project.display().to_string()),
            ctl = quote(&ctl),
        )
    };
    let all = in_80_columns(
        &[
            section("status", "status --chain"),
            section("tick", "tick"),
            section("ls", "ls"),
            section("registrations", "registrations"),
            section("sessions", "status --sessions"),
            section("ticks", "ticks --all -n 2"),
        ]
        .join("; "),
        &env,
    );
    assert_fits_80(&all);
    let part = |name: &str| -> String {
        let start = all
            .find(&format!("== {name}\n"))
            .unwrap_or_else(|| panic!("no section {name}:\n{all}"));
        let rest = &all[start + name.len() + 4..];
        rest[..rest.find("== exit").unwrap_or(rest.len())].to_string()
    };
    // `status --chain`: one screen that says where the chain is, what happens next and the fix.
    let status = part("status");
    assert!(status.lines().count() <= 25, "{status}");
    for want in [
        "state     awaiting PR merge",
        "milestone 1/2 m1",
        "PR        #7",
        "once PR #7 is merged",
        "fix       merge PR #7",
    ] {
        assert!(status.contains(want), "no {want:?} in:\n{status}");
    }
    assert!(
        !status.contains("Per-milestone") && !status.contains('{'),
        "{status}"
    );
    // `tick`: a few lines, no timestamps to the nanosecond.
    let tick = part("tick");
    assert!(tick.lines().count() <= 10, "{tick}");
    assert!(
        tick.contains("manual tick") && tick.contains("refused to act"),
        "{tick}"
    );
    assert!(
        tick.contains("saw       awaiting PR merge, milestone 1/2 m1"),
        "{tick}"
    );
    // The tables fit too: one line per row, the key whole, a cut list says so.
    let regs = part("registrations");
    assert!(
        regs.contains(&project.key) && regs.contains("awaiting PR"),
        "{regs}"
    );
    let sessions = part("sessions");
    assert!(
        sessions.contains("SESSION") && sessions.contains("megaplan-chain"),
        "{sessions}"
    );
    assert!(!sessions.contains('{'), "{sessions}");
    let ticks = part("ticks");
    assert!(ticks.contains(&project.key), "{ticks}");
    assert!(ticks.contains("showing the newest 2"), "{ticks}");
    assert_eq!(
        ticks.lines().filter(|l| !l.trim().is_empty()).count(),
        4,
        "{ticks}"
    );
    let pane = part("ls");
    assert!(all.contains("== exit 0"), "{all}");
    let lines: Vec<&str> = pane.lines().collect();
    let header = lines
        .iter()
        .position(|l| l.starts_with("NAME"))
        .unwrap_or_else(|| panic!("no table:\n{pane}"));
    assert!(
        lines[header + 1].starts_with("gone") && lines[header + 1].contains("needs a person"),
        "{pane}"
    );
    assert!(
        lines[header + 2].contains(&project.key)
            && lines[header + 2].contains("awaiting PR #7")
            && lines[header + 2].contains("1/2 m1"),
        "{pane}"
    );
    assert!(lines[header + 3].contains("unknown"), "{pane}");
    assert!(pane.contains("needs you:"), "{pane}");
    assert!(pane.contains("project: PR #7 waits to be merged"), "{pane}");
    assert!(pane.contains("→ merge PR #7"), "{pane}");
    assert!(
        pane.contains("gone: the registered cloud.yaml cannot be read"),
        "{pane}"
    );
    assert!(!pane.contains('{'), "JSON on a terminal:\n{pane}");

    // `--watch` redraws when the daemon stores a tick: merge the PR, tick, and the row says the
    // supervisor started the next milestone.
    let watch = Pane::start_sized(
        &format!(
            "cd {dir} && {ctl} fleet --watch",
            dir = quote(&rig.project.display().to_string()),
            ctl = quote(&ctl),
        ),
        &env,
        80,
    );
    watch.wait_for("the first draw", |l| l.contains("awaiting PR #7"));
    rig.container.set_pr(7, "MERGED");
    // The driver left when the chain reached the PR; until its lease expires (15 s) a tick
    // sees it `unknown` and does not advance (only a dead runner is advanced; the lease's
    // follow-up tick may be the one that does): tick until a stored tick advanced, within a
    // generous safety net.
    let mut last = String::new();
    assert!(
        wait_until(Duration::from_secs(120), || {
            last = rig.ctl(&["tick"]).ok().stdout;
            rig.ticks(50)
                .iter()
                .any(|t| t.event == megaplan_cloud_api::report::TickEvent::Advanced)
        }),
        "no tick advanced the merged chain: {last}"
    );
    let redrawn = watch.wait_for("the redraw after the tick", |l| {
        l.contains(&project.key) && l.contains("running") && l.contains("2/2 m2")
    });
    assert_fits_80(&redrawn);
}
