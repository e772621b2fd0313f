//! megaplan-cloudctl as a person sees it: in a real terminal (a tmux pane: `new-session -d`,
//! `capture-pane`) the client renders tables and summaries and prints an error once; through a
//! pipe the same commands print JSON for scripts. Also: shell completions load into bash and
//! complete a subcommand, and the man page renders.

use megaplan_cloud_e2e::rig::{SshRig, write_chain};
use megaplan_cloud_e2e::{bin, unique_suffix, wait_until};
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

/// Runs `script` (sh) in a fresh tmux server's pane of 200x50 and returns the pane's text once
/// the script has printed its end marker. The server is private to this call (`-L`).
fn in_terminal(script: &str, env: &[(&str, &str)]) -> String {
    let server = format!("mp-ctl-{}", unique_suffix());
    let marker = "__PANE_DONE__";
    let full = format!("{script}; echo {marker}; sleep 600");
    let mut cmd = Command::new("tmux");
    cmd.args([
        "-L",
        &server,
        "-f",
        "/dev/null",
        "new-session",
        "-d",
        "-x",
        "200",
        "-y",
        "50",
    ])
    .args(["-s", "t", "sh", "-c", &full])
    .env_remove("NO_COLOR")
    .env("TERM", "xterm-256color");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let started = cmd.status().expect("tmux runs");
    assert!(started.success(), "tmux new-session failed");
    let capture = || {
        let out = Command::new("tmux")
            .args([
                "-L",
                &server,
                "capture-pane",
                "-p",
                "-J",
                "-S",
                "-",
                "-t",
                "t",
            ])
            .output()
            .expect("capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let done = wait_until(Duration::from_secs(60), || {
        capture().lines().any(|l| l.trim() == marker)
    });
    let text = capture();
    let _ = Command::new("tmux")
        .args(["-L", &server, "kill-server"])
        .status();
    assert!(done, "the pane never finished:\n{text}");
    text
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

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
    let socket = rig.daemon.socket.display().to_string();
    let env = [("MEGAPLAN_CLOUDD_SOCKET", socket.as_str())];
    let section = |name: &str, args: &str| {
        format!(
            "echo '== {name}'; cd {dir} && {ctl} {args} 2>&1; echo \"== exit $?\"",
            dir = sh_quote(&rig.project.display().to_string()),
            ctl = sh_quote(&ctl),
        )
    };
    let script = [
        section("registrations", "registrations"),
        section("ticks", "ticks --all"),
        section(
            "status",
            &format!("--cloud-yaml {} status --chain", sh_quote(&cy)),
        ),
        section("error", "--cloud-yaml /nonexistent/cloud.yaml status"),
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
    assert_eq!(
        err.matches("error:").count(),
        1,
        "an error is printed once on a terminal:\n{err}"
    );
    assert!(
        !err.contains("\"error\""),
        "JSON error on a terminal:\n{err}"
    );
    assert!(err.contains("/nonexistent/cloud.yaml"), "{err}");

    // Through a pipe: JSON, as scripts expect.
    let regs: Value = serde_json::from_str(&rig.ctl(&["registrations"]).stdout)
        .expect("registrations through a pipe is JSON");
    assert_eq!(regs.as_array().map(Vec::len), Some(1));
    let ticks: Value =
        serde_json::from_str(&rig.ctl(&["ticks"]).stdout).expect("ticks through a pipe is JSON");
    assert!(!ticks.as_array().unwrap().is_empty());
    let st = rig.ctl(&["status", "--chain"]);
    assert_eq!(st.json["success"], true, "{}", st.stdout);
    let bad = rig.daemon.ctl(
        &rig.project,
        &[],
        &["--cloud-yaml", "/nonexistent/cloud.yaml", "status"],
    );
    let v: Value = serde_json::from_slice(&bad.stdout).expect("error JSON through a pipe");
    assert_eq!(v["success"], false);
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
        &format!("cd /tmp && {} registrations --json", sh_quote(&ctl)),
        &env,
    );
    assert!(forced.contains("\"cloud_yaml\""), "{forced}");
}

#[test]
fn bash_completion_completes_a_subcommand_and_the_man_page_renders() {
    let ctl = bin("megaplan-cloudctl").display().to_string();
    let script = format!(
        "source <({ctl} completions bash) \
         && fn=$(complete -p megaplan-cloudctl | sed 's/.*-F \\([^ ]*\\).*/\\1/') \
         && COMP_WORDS=(megaplan-cloudctl regi) && COMP_CWORD=1 \
         && \"$fn\" megaplan-cloudctl regi megaplan-cloudctl && printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        ctl = sh_quote(&ctl)
    );
    let out = Command::new("bash").args(["-c", &script]).output().unwrap();
    let words = String::from_utf8_lossy(&out.stdout);
    assert!(
        words.lines().any(|w| w == "register") && words.lines().any(|w| w == "registrations"),
        "bash completion of `regi`: {words:?} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for shell in ["zsh", "fish"] {
        let out = Command::new(&ctl)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains("registrations"));
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
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["client"]["version"], megaplan_cloud_api::VERSION);
    assert!(v["daemon"].is_null());
}
