//! End to end: the rendered `entrypoint.sh` + `health_server.py` boot a runner in a bench container
//! (`--network none`, stand-ins for the megaplan core, pip and codex) for each mode, and leave the
//! tmux session `agent`, the repo checkouts, the codex config and the health server behind.

use std::time::Duration;

use megaplan_cloud_e2e::{Container, bench, repo_in_container, wait_until};
use megaplan_cloudd::{cloud_yaml, render};

const RUNNER_DIR: &str = "/opt/runner";
const PORT: u16 = 18080;
const REF: &str = "e2e-ref-7";

/// Render the deploy dir of `yaml` and copy the runner's two files into the container.
fn install_runner(c: &Container, yaml: &str) {
    let spec = cloud_yaml::parse_bytes(yaml.as_bytes(), std::path::Path::new("/e2e/cloud.yaml"))
        .unwrap_or_else(|e| panic!("test cloud.yaml does not load: {e}\n{yaml}"));
    let files = render::render(&spec).unwrap_or_else(|e| panic!("render failed: {e}"));
    for name in [render::ENTRYPOINT, render::HEALTH_SERVER] {
        let f = files
            .iter()
            .find(|f| f.name == name)
            .unwrap_or_else(|| panic!("{name} not rendered"));
        let path = format!("{RUNNER_DIR}/{name}");
        c.write_file(&path, &f.content);
        c.exec_ok(&format!("chmod {:o} {path}", f.mode));
    }
}

/// Start the entrypoint detached (as a container's CMD would run) with `env` (`NAME=value ...`,
/// already shell-quoted) and wait until it reports the tmux session ready.
fn boot(c: &Container, env: &str) {
    c.exec_ok(&format!(
        "cd / && {env} setsid nohup {RUNNER_DIR}/entrypoint.sh >/dev/null 2>&1 </dev/null &"
    ));
    let ready = wait_until(Duration::from_secs(60), || {
        c.read_file("/var/log/entrypoint.log")
            .is_some_and(|log| String::from_utf8_lossy(&log).contains("tmux 'agent' session ready"))
    });
    assert!(
        ready,
        "entrypoint never reported the session ready\n{}",
        diagnostics(c)
    );
    assert!(
        c.exec("tmux has-session -t =agent").status.success(),
        "no tmux session `agent`\n{}",
        diagnostics(c)
    );
}

/// The entrypoint log and the `agent` pane, for failure messages.
fn diagnostics(c: &Container) -> String {
    let out = c.exec(
        "echo '--- /var/log/entrypoint.log'; cat /var/log/entrypoint.log; \
         echo '--- tmux'; tmux ls; tmux capture-pane -p -t =agent: 2>&1 | tail -40",
    );
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn read_text(c: &Container, path: &str) -> String {
    String::from_utf8(
        c.read_file(path)
            .unwrap_or_else(|| panic!("{path} is missing\n{}", diagnostics(c))),
    )
    .unwrap_or_else(|e| panic!("{path} is not UTF-8: {e}"))
}

/// Each line of a stand-in's JSON-lines log.
fn json_lines(c: &Container, path: &str) -> Vec<serde_json::Value> {
    read_text(c, path)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{path}: bad line {l:?}: {e}")))
        .collect()
}

fn wait_for_file(c: &Container, path: &str) {
    let found = wait_until(Duration::from_secs(30), || {
        c.exec(&format!("test -e '{path}'")).status.success()
    });
    assert!(found, "{path} never appeared\n{}", diagnostics(c));
}

/// The command running in the `agent` pane (`bash` for idle, `python` while auto runs).
fn pane_command(c: &Container) -> String {
    c.exec_ok("tmux list-panes -t =agent: -F '#{pane_current_command}'")
        .trim()
        .to_string()
}

fn assert_health_server(c: &Container) {
    let script = format!(
        "python3 -c 'import urllib.request; r = urllib.request.urlopen(\"http://127.0.0.1:{PORT}/any/path\", timeout=5); print(r.status, r.headers[\"Content-Type\"]); print(r.read().decode(), end=\"\")'"
    );
    let mut answer = String::new();
    let up = wait_until(Duration::from_secs(20), || {
        let out = c.exec(&script);
        answer = String::from_utf8_lossy(&out.stdout).into_owned();
        out.status.success()
    });
    assert!(
        up,
        "health server does not answer on :{PORT}\n{}",
        diagnostics(c)
    );
    assert_eq!(
        answer,
        "200 text/plain; charset=utf-8\nOK - megaplan cloud container alive\n"
    );
}

fn assert_pip_installed(c: &Container, spec: &str) {
    let calls = json_lines(c, "/var/log/standin-pip.log");
    assert!(
        calls.contains(&serde_json::json!(["pip", "install", "--upgrade", spec])),
        "pip was not asked for {spec}: {calls:?}"
    );
}

const CHATGPT_CONFIG: &str = "model = \"gpt-5.4\"\nmodel_reasoning_effort = \"high\"\nsandbox_mode = \"danger-full-access\"\napproval_policy = \"never\"\npreferred_auth_method = \"chatgpt\"\nforced_login_method = \"chatgpt\"\n";

fn bench_container(prefix: &str) -> Option<Container> {
    Some(bench()?.container(prefix))
}

#[test]
fn idle_runner_clones_configures_and_opens_a_login_shell() {
    let Some(c) = bench_container("ep-idle") else {
        return;
    };
    let repo = repo_in_container(&c);
    install_runner(
        &c,
        &format!(
            "provider: ssh\nssh:\n  host: box\nmode: idle\nrepo:\n  url: {repo}\n  workspace: \"/workspace/my app\"\nextra_repos:\n  - url: {repo}\n    path: /workspace/extra/lib\nmegaplan:\n  ref: {REF}\nresources:\n  port: {PORT}\n"
        ),
    );
    boot(&c, "GITHUB_TOKEN=ghp_e2eTokenValue0123456789");

    assert_eq!(
        c.exec_ok("git -C '/workspace/my app' log --format=%s"),
        "initial commit\n"
    );
    assert_eq!(
        c.exec_ok("git -C /workspace/extra/lib rev-parse --abbrev-ref HEAD"),
        "main\n"
    );
    assert_eq!(read_text(&c, "/root/.codex/config.toml"), CHATGPT_CONFIG);
    assert_eq!(
        c.exec_ok("stat -c %a /root/.git-credentials; cat /root/.git-credentials; git config --global credential.helper"),
        "600\nhttps://x-access-token:ghp_e2eTokenValue0123456789@github.com\nstore\n"
    );
    let log = read_text(&c, "/var/log/entrypoint.log");
    assert!(
        !log.contains("ghp_e2eTokenValue"),
        "token reached the log:\n{log}"
    );
    assert_pip_installed(
        &c,
        &format!("git+https://github.com/peteromallet/Arnold.git@{REF}"),
    );
    assert_health_server(&c);
    assert_eq!(pane_command(&c), "bash");
    assert!(log.contains("Runner mode: idle"), "{log}");
    assert!(!log.contains("WARNING"), "{log}");
}

#[test]
fn auto_runner_initialises_the_plan_and_runs_auto() {
    let Some(c) = bench_container("ep-auto") else {
        return;
    };
    let repo = repo_in_container(&c);
    c.write_file("/workspace/idea.txt", b"Add a health endpoint\n");
    install_runner(
        &c,
        &format!(
            "provider: local\nmode: auto\nrepo:\n  url: {repo}\n  workspace: /workspace/app\nauto:\n  plan_name: my-plan\n  idea_file: /workspace/idea.txt\n  robustness: heavy\nmegaplan:\n  ref: {REF}\n  codex_auth: apikey\nresources:\n  port: {PORT}\n"
        ),
    );
    boot(&c, "OPENAI_API_KEY=sk-e2e-not-a-real-key-0123456789");

    wait_for_file(&c, "/workspace/app/.megaplan/standin-auto.json");
    // What the stand-in core recorded of its calls (its own file): read as JSON.
    let init = serde_json::from_str::<serde_json::Value>(&read_text(
        &c,
        "/workspace/app/.megaplan/standin-init.json",
    ))
    .unwrap();
    assert_eq!(
        init["argv"],
        serde_json::json!([
            "init",
            "--project-dir",
            "/workspace/app",
            "--idea-file",
            "/workspace/idea.txt",
            "--auto-start",
            "--robustness",
            "heavy",
            "--name",
            "my-plan"
        ])
    );
    let auto = serde_json::from_str::<serde_json::Value>(&read_text(
        &c,
        "/workspace/app/.megaplan/standin-auto.json",
    ))
    .unwrap();
    assert_eq!(
        auto["argv"],
        serde_json::json!(["auto", "--plan", "my-plan"])
    );

    let config = read_text(&c, "/root/.codex/config.toml");
    assert!(
        config.starts_with("model = \"gpt-5.4\"\nmodel_reasoning_effort = \"high\"\n"),
        "{config}"
    );
    assert!(!config.contains("auth_method"), "{config}");
    let codex_calls = json_lines(&c, "/var/log/standin-codex.log");
    assert!(
        codex_calls.contains(&serde_json::json!(["login", "--with-api-key"])),
        "codex login not run: {codex_calls:?}"
    );
    assert_pip_installed(
        &c,
        &format!("git+https://github.com/peteromallet/Arnold.git@{REF}"),
    );
    assert_health_server(&c);
    assert_eq!(
        c.exec_ok("git -C /workspace/app log --format=%s"),
        "initial commit\n"
    );
}

#[test]
fn chain_runner_writes_the_session_marker_and_starts_the_chain() {
    let Some(c) = bench_container("ep-chain") else {
        return;
    };
    let repo = repo_in_container(&c);
    c.write_file("/workspace/specs/ideas/m1.md", b"first milestone\n");
    c.write_file(
        "/workspace/specs/chain.yaml",
        b"milestones:\n  - label: m1\n    idea: ideas/m1.md\n",
    );
    install_runner(
        &c,
        &format!(
            "provider: railway\nmode: chain\nrepo:\n  url: {repo}\n  workspace: /workspace/app\nchain:\n  spec: /workspace/specs/chain.yaml\nresources:\n  port: {PORT}\n"
        ),
    );
    boot(&c, "MEGAPLAN_INSTALL_SPEC=/opt/arnold-src");

    // The session marker and the stand-in core's run records are the runner's own files (no
    // api type): read as JSON.
    let marker = c
        .read_json("/workspace/.megaplan/cloud-sessions/agent.json")
        .unwrap_or_else(|| panic!("no session marker\n{}", diagnostics(&c)));
    assert_eq!(marker["session"], "agent");
    assert_eq!(marker["remote_spec"], "/workspace/specs/chain.yaml");
    assert_eq!(marker["workspace"], "/workspace/app");
    assert_eq!(marker["source"], "entrypoint-mode-chain");
    assert!(
        marker["started_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );

    wait_for_file(&c, "/workspace/specs/.megaplan/standin-chain-runs.jsonl");
    let runs = json_lines(&c, "/workspace/specs/.megaplan/standin-chain-runs.jsonl");
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(
        runs[0]["argv"],
        serde_json::json!(["chain", "start", "--spec", "/workspace/specs/chain.yaml"])
    );
    assert_eq!(runs[0]["trusted_container"], "1");
    assert_eq!(runs[0]["cwd"], "/workspace/app");
    let logged = wait_until(Duration::from_secs(30), || {
        c.read_file("/workspace/app/.megaplan/cloud-chain.log")
            .is_some_and(|l| String::from_utf8_lossy(&l).contains("milestone m1: done"))
    });
    assert!(
        logged,
        "chain output not in cloud-chain.log\n{}",
        diagnostics(&c)
    );

    assert_pip_installed(&c, "/opt/arnold-src");
    assert_eq!(read_text(&c, "/root/.codex/config.toml"), CHATGPT_CONFIG);
    assert_health_server(&c);
}

#[test]
fn chain_runner_without_its_spec_drops_to_idle() {
    let Some(c) = bench_container("ep-nospec") else {
        return;
    };
    let repo = repo_in_container(&c);
    install_runner(
        &c,
        &format!(
            "provider: local\nmode: chain\nrepo:\n  url: {repo}\nchain:\n  spec: /workspace/missing/chain.yaml\nresources:\n  port: {PORT}\n"
        ),
    );
    boot(&c, "");

    let log = read_text(&c, "/var/log/entrypoint.log");
    assert!(
        log.contains(
            "WARNING: chain.spec /workspace/missing/chain.yaml not found; dropping to idle"
        ),
        "{log}"
    );
    assert_eq!(pane_command(&c), "bash");
    assert!(
        c.read_file("/workspace/.megaplan/cloud-sessions/agent.json")
            .is_none(),
        "a marker was written for a chain that never started"
    );
    assert_eq!(
        c.exec_ok("git -C /workspace/app log --format=%s"),
        "initial commit\n"
    );
    assert_health_server(&c);
}
