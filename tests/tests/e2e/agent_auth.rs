//! Agent login (issue 14 item 2), end to end over ssh on the bench: with the default
//! `megaplan.codex_auth: chatgpt`, `deploy` and `chain` carry the operator's
//! `~/.codex/auth.json` and `~/.hermes/auth.json` (a fake HOME here, holding distinctive tokens)
//! onto the runner: `/workspace/.creds/<agent>-auth.json` on the workspace volume and
//! `~/.<agent>/auth.json` in the runner's home, each 0600 and byte-identical; after a restart the
//! rendered entrypoint seeds a fresh home from the volume. A missing local file is a warning
//! naming it; `apikey` seeds nothing. No token is found in the client's output, the daemon's
//! files (database, WAL, logs at debug level, deploy dir) or its log.

use megaplan_cloud_api::output::{AgentAuthReport, Deployed};
use megaplan_cloud_api::status::ChainLaunched;
use megaplan_cloud_e2e::rig::{Run, SEED_REPO, SshRig, write_chain};
use megaplan_cloud_e2e::wait_until;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const CODEX_ACCESS: &str = "e2e-codex-access-Zq81vLm3";
const CODEX_REFRESH: &str = "e2e-codex-refresh-Kp27xNb9";
const CODEX_ID: &str = "e2e.codex-id-token.Wd64sYc5";
const HERMES_TOKEN: &str = "e2e-hermes-token-Ty39rFg7";
const TOKENS: [&str; 4] = [CODEX_ACCESS, CODEX_REFRESH, CODEX_ID, HERMES_TOKEN];
use megaplan_cloudd::redact::REPLACEMENT as REDACTED;

/// What seeding the agents' logins did, as `deploy` (`Deployed::agent_auth`) and `chain`
/// (beside `ChainLaunched`'s fields) answer it.
fn agent_auth(seeding: Option<AgentAuthReport>, answer: &str) -> AgentAuthReport {
    seeding.unwrap_or_else(|| panic!("the answer reports the agent logins: {answer}"))
}

/// The agents seeded, whichever way the report went.
fn seeded(report: &AgentAuthReport) -> &[String] {
    match report {
        AgentAuthReport::Seeded { seeded, .. } | AgentAuthReport::Skipped { seeded, .. } => seeded,
    }
}

/// codex writes its auth.json pretty-printed over several lines.
fn codex_auth() -> String {
    format!(
        "{{\n  \"OPENAI_API_KEY\": null,\n  \"auth_mode\": \"chatgpt\",\n  \"tokens\": {{\n    \"id_token\": \"{CODEX_ID}\",\n    \"access_token\": \"{CODEX_ACCESS}\",\n    \"refresh_token\": \"{CODEX_REFRESH}\",\n    \"account_id\": \"acct-e2e\"\n  }},\n  \"last_refresh\": \"2026-12-01T10:00:00Z\"\n}}\n"
    )
}

fn hermes_auth() -> String {
    format!(
        "{{\"version\":1,\"providers\":{{\"openai-codex\":{{\"tokens\":{{\"access_token\":\"{HERMES_TOKEN}\"}}}}}}}}"
    )
}

/// Every regular file under `dir` (recursively, `skip` excluded) holding one of the tokens.
fn files_with_tokens(dir: &Path, skip: &Path, scanned: &mut usize) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return hits;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path == skip {
            continue;
        }
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            hits.extend(files_with_tokens(&path, skip, scanned));
        } else if meta.is_file() {
            let bytes = std::fs::read(&path).unwrap_or_default();
            *scanned += 1;
            if TOKENS
                .iter()
                .any(|t| bytes.windows(t.len()).any(|w| w == t.as_bytes()))
            {
                hits.push(path);
            }
        }
    }
    hits
}

fn assert_no_token(text: &str, what: &str) {
    for t in TOKENS {
        assert!(!text.contains(t), "{what} shows the token {t}:\n{text}");
    }
}

/// `stat -c %a` of a runner path.
fn mode(rig: &SshRig, path: &str) -> String {
    rig.container
        .exec_ok(&format!("stat -c %a {path}"))
        .trim()
        .to_string()
}

/// The runner file at `path` is `content`, mode 0600.
fn assert_seeded(rig: &SshRig, path: &str, content: &str) {
    let found = rig
        .container
        .read_file(path)
        .unwrap_or_else(|| panic!("{path} is not on the runner"));
    assert!(
        found == content.as_bytes(),
        "{path} differs from the local file"
    );
    assert_eq!(mode(rig, path), "600", "{path}");
}

#[test]
fn chatgpt_logins_reach_the_runner_and_nowhere_else() {
    // The runner image: the bench image with a git remote for repo.url and the rendered
    // entrypoint as its main process (so a restart boots it again).
    let Some((leftovers, mut rig)) = SshRig::start_building(
        "mp-auth",
        "Dockerfile.fixture",
        |image| {
            format!(
                r#"FROM {image}
{SEED_REPO}
ENV MEGAPLAN_STANDIN_IMPORT_SECONDS=0
COPY entrypoint.sh health_server.py /usr/local/bin/
RUN chmod 0755 /usr/local/bin/entrypoint.sh
CMD ["/usr/local/bin/entrypoint.sh"]
"#
            )
        },
        "",
    ) else {
        return;
    };
    let cloud_yaml = rig.cloud_yaml.clone();
    let base_yaml = std::fs::read_to_string(&cloud_yaml).unwrap();
    let remote_dir = leftovers.remote_dir.clone();
    // The operator's HOME, outside the daemon's folder (it holds the tokens on purpose).
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(home.path().join(".codex")).unwrap();
    std::fs::create_dir_all(home.path().join(".hermes")).unwrap();
    let codex = codex_auth();
    let hermes = hermes_auth();
    std::fs::write(home.path().join(".codex/auth.json"), &codex).unwrap();
    std::fs::write(home.path().join(".hermes/auth.json"), &hermes).unwrap();
    rig.env = vec![("HOME".to_string(), home.path().display().to_string())];
    let mut said = Vec::new();
    let mut ctl = |args: &[&str]| -> Run {
        let r = rig.ctl(args);
        said.push(format!("{}{}", r.stdout, r.stderr));
        r
    };

    ctl(&["build"]).ok();
    let deployed = ctl(&["deploy"]).ok();
    let deploy: Deployed = deployed.decode();
    assert!(deploy.report.success, "{}", deployed.stdout);
    let seeding = agent_auth(deploy.agent_auth, &deployed.stdout);
    assert_eq!(
        seeded(&seeding),
        ["codex", "hermes"],
        "{}\n{}",
        deployed.stdout,
        deployed.stderr
    );
    assert!(
        matches!(&seeding, AgentAuthReport::Seeded { missing, .. } if missing.is_empty()),
        "{seeding:?}"
    );
    assert!(
        deployed
            .stderr
            .contains("agent login: seeded codex to /workspace/.creds/codex-auth.json"),
        "{}",
        deployed.stderr
    );
    // On the workspace volume (the docker host's bind mount), in a 0700 folder, and in the
    // runner's home, each 0600 and byte-identical.
    assert_seeded(&rig, "/workspace/.creds/codex-auth.json", &codex);
    assert_seeded(&rig, "/workspace/.creds/hermes-auth.json", &hermes);
    assert_eq!(mode(&rig, "/workspace/.creds"), "700");
    assert_seeded(&rig, "/root/.codex/auth.json", &codex);
    assert_seeded(&rig, "/root/.hermes/auth.json", &hermes);
    assert_eq!(
        std::fs::read(format!("{remote_dir}/workspace/.creds/codex-auth.json")).unwrap(),
        codex.as_bytes(),
        "the login is not on the persistent workspace of the docker host"
    );
    // Nothing left behind by the atomic writes.
    assert_eq!(
        rig.container
            .exec_ok("ls -A /workspace/.creds /root/.codex /root/.hermes | grep -c tmp || true")
            .trim(),
        "0"
    );

    // A fresh home (what a recreated container has): the entrypoint seeds it on boot.
    rig.container
        .exec_ok("rm -f /root/.codex/auth.json /root/.hermes/auth.json /var/log/entrypoint.log");
    let restarted = Command::new("docker")
        .args(["restart", &rig.container.name])
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(
        restarted.status.success(),
        "{}",
        String::from_utf8_lossy(&restarted.stderr)
    );
    let booted = wait_until(Duration::from_secs(60), || {
        rig.container
            .read_file("/var/log/entrypoint.log")
            .is_some_and(|l| String::from_utf8_lossy(&l).contains("tmux 'agent' session ready"))
    });
    let log = String::from_utf8_lossy(
        &rig.container
            .read_file("/var/log/entrypoint.log")
            .unwrap_or_default(),
    )
    .into_owned();
    assert!(booted, "the entrypoint did not boot again:\n{log}");
    assert!(
        log.contains("codex: seeded auth.json from /workspace/.creds/codex-auth.json"),
        "{log}"
    );
    assert!(
        log.contains("hermes: seeded auth.json from /workspace/.creds/hermes-auth.json"),
        "{log}"
    );
    assert_seeded(&rig, "/root/.codex/auth.json", &codex);
    assert_seeded(&rig, "/root/.hermes/auth.json", &hermes);

    // The runner printing the files: the client sees the structure, never a token.
    let shown = ctl(&[
        "exec",
        "cat /root/.codex/auth.json; echo; cat /root/.hermes/auth.json",
    ]);
    assert_eq!(shown.code, Some(0), "{}", shown.stderr);
    assert!(
        shown.stdout.contains("\"auth_mode\": \"chatgpt\""),
        "{}",
        shown.stdout
    );
    assert!(shown.stdout.contains(REDACTED), "{}", shown.stdout);

    // `chain` seeds too; a missing local file is a warning naming it.
    std::fs::remove_file(home.path().join(".hermes/auth.json")).unwrap();
    rig.container
        .exec_ok("rm -rf /workspace/.creds /root/.codex/auth.json");
    let spec = write_chain(&rig.project.join("epic"), "chain.yaml", &["m1"]);
    let launched = ctl(&["chain", spec.to_str().unwrap()]).ok();
    let missing_path = home.path().join(".hermes/auth.json").display().to_string();
    assert!(
        launched.stderr.contains(&format!(
            "warning: agent login: {missing_path} not found; hermes on the runner has no login"
        )),
        "{}",
        launched.stderr
    );
    let seeding = agent_auth(
        launched
            .decode::<ChainLaunched>()
            .rest
            .get("agent_auth")
            .cloned()
            .map(|v| serde_json::from_value(v).expect("agent_auth reads as AgentAuthReport")),
        &launched.stdout,
    );
    assert_eq!(seeded(&seeding), ["codex"], "{}", launched.stdout);
    let AgentAuthReport::Seeded { missing, .. } = &seeding else {
        panic!("the launch seeded: {seeding:?}");
    };
    assert_eq!(missing[0].local, format!("{missing_path} not found"));
    assert_seeded(&rig, "/workspace/.creds/codex-auth.json", &codex);
    assert_seeded(&rig, "/root/.codex/auth.json", &codex);
    assert!(
        rig.container
            .read_file("/workspace/.creds/hermes-auth.json")
            .is_none()
    );
    assert!(
        wait_until(Duration::from_secs(40), || {
            rig.ctl(&["status", "--chain"]).chain_complete()
        }),
        "the chain did not complete"
    );

    // `apikey`: nothing is read or seeded.
    std::fs::write(
        &cloud_yaml,
        format!("{base_yaml}megaplan:\n  codex_auth: apikey\n"),
    )
    .unwrap();
    std::fs::write(home.path().join(".hermes/auth.json"), &hermes).unwrap();
    rig.container.exec_ok("rm -rf /workspace/.creds");
    let opted_out = ctl(&["deploy"]).ok();
    let seeding = agent_auth(opted_out.decode::<Deployed>().agent_auth, &opted_out.stdout);
    let AgentAuthReport::Skipped {
        seeded: none,
        skipped,
        ..
    } = &seeding
    else {
        panic!("apikey skips seeding: {seeding:?}");
    };
    assert!(none.is_empty(), "{}", opted_out.stdout);
    assert_eq!(skipped, "megaplan.codex_auth is apikey");
    assert!(
        wait_until(Duration::from_secs(30), || ctl(&["exec", "true"]).code
            == Some(0)),
        "the redeployed runner does not answer"
    );
    assert_eq!(
        rig.container
            .exec_ok("ls -A /workspace/.creds 2>/dev/null | wc -l; test ! -e /root/.codex/auth.json && echo no-login")
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["0", "no-login"]
    );

    // No token anywhere on the daemon's side, nor in anything the client printed.
    for (i, text) in said.iter().enumerate() {
        assert_no_token(text, &format!("client output #{i}"));
    }
    let mut scanned = 0;
    let hits = files_with_tokens(&rig.daemon.dir, &rig.project, &mut scanned);
    assert!(hits.is_empty(), "a token is stored in {hits:#?}");
    assert!(scanned >= 3, "only {scanned} files were scanned");
    let dump = megaplan_cloud_e2e::util::sqlite(&rig.daemon.home.join("cloudd.db"), ".dump");
    assert!(dump.contains("CREATE TABLE"), "no database dump");
    assert_no_token(&dump, "the database");
    let log = rig.daemon.log_text();
    assert!(log.contains("DEBUG"), "debug logging is on");
    assert_no_token(&log, "the daemon log");
}
