//! Secrets at rest (issue 7): a whole ssh flow in which the runner echoes a secret everywhere it
//! can — build, deploy, exec, logs (tail and follow), chain, status --chain, supervise, manual and
//! scheduled ticks — and afterwards the value is found nowhere on the daemon's side: not in the
//! database (raw bytes of the file and its WAL, and `sqlite3 .dump`), not in any file under the
//! daemon's state root (logs, markers, the rendered deploy dir), not in its stderr log (run at
//! debug level). The ssh provider writes `.env` only on the remote host, over stdin.

use megaplan_cloud_api::output::Deployed;
use megaplan_cloud_api::report::SyncInfo;
use megaplan_cloud_api::wire::TickRecord;
use megaplan_cloud_e2e::rig::{SEED_REPO, SshRig, write_chain};
use megaplan_cloud_e2e::util::files_containing;
use megaplan_cloud_e2e::{bin, wait_until};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const NAME: &str = "MEGAPLAN_E2E_SECRET";
const SECRET: &str = "e2e-secret-value-9f8e7d6c";
use megaplan_cloudd::redact::REPLACEMENT as REDACTED;

/// The value is nowhere on the daemon's side: files under its dir (except the operator's
/// project folder), the database dump, the daemon log.
fn assert_secret_at_rest_nowhere(rig: &SshRig, when: &str) {
    let project = rig.project.clone();
    let mut scanned = 0;
    let hits = files_containing(
        &rig.daemon.dir,
        SECRET.as_bytes(),
        &[&project],
        &mut scanned,
    );
    assert!(
        hits.is_empty(),
        "{when}: the secret value is stored in {hits:#?}"
    );
    assert!(scanned >= 3, "{when}: only {scanned} files were scanned");
    let dump = megaplan_cloud_e2e::util::sqlite(&rig.daemon.home.join("cloudd.db"), ".dump");
    assert!(
        dump.contains("INSERT INTO ticks"),
        "{when}: no ticks in the dump"
    );
    assert!(
        !dump.contains(SECRET),
        "{when}: the secret is in the database"
    );
    assert!(
        !rig.daemon.log_text().contains(SECRET),
        "{when}: the secret is in the daemon log"
    );
}

#[test]
fn secret_values_never_reach_the_database_files_or_log() {
    // The runner image: a git remote for repo.url, a login shell that prints the secret on
    // stderr for every remote command, and a main process that prints it to the container log.
    // Debug level: whatever the daemon logs in detail must not carry the value either.
    let Some((leftovers, mut rig)) = SshRig::start_building(
        "mp-secret",
        "image/Dockerfile",
        |image| {
            format!(
                r#"FROM {image}
{SEED_REPO}
RUN printf '%s\n' 'echo "login shell: {NAME}=${NAME}" >&2' > /etc/profile.d/zz-e2e-secret.sh
CMD ["bash", "-c", "echo \"runner booting with token ${NAME}\"; echo \"{NAME}: ${NAME}\"; exec sleep infinity"]
"#
            )
        },
        &format!("secrets: [{NAME}]\n"),
    ) else {
        return;
    };
    let remote_dir = leftovers.remote_dir.clone();
    rig.env = vec![(NAME.to_string(), SECRET.to_string())];

    let built = rig.ctl(&["build"]).ok();
    assert!(!built.stdout.contains(SECRET) && !built.stderr.contains(SECRET));
    let deployed = rig.ctl(&["deploy"]).ok();
    assert!(
        deployed.decode::<Deployed>().report.success,
        "{}",
        deployed.stdout
    );
    assert!(!deployed.stdout.contains(SECRET) && !deployed.stderr.contains(SECRET));
    // The value did reach the runner: in the remote .env (0600) and the container's environment.
    // (This also shows the scan below finds the value where it is.)
    let mut scanned = 0;
    assert_eq!(
        files_containing(Path::new(&remote_dir), SECRET.as_bytes(), &[], &mut scanned),
        [Path::new(&remote_dir).join(".env")]
    );
    assert_eq!(
        rig.container.exec_ok(&format!("printenv {NAME}")).trim(),
        SECRET
    );

    // exec: stdout and stderr (plus the login shell's line) carry the value; the client sees
    // only the redaction token.
    let e = rig.ctl(&[
        "exec",
        &format!("echo \"${NAME}\"; echo \"{NAME}=${NAME}\"; printenv {NAME} >&2"),
    ]);
    assert_eq!(e.code, Some(0), "{}", e.stderr);
    assert!(!e.stdout.contains(SECRET) && !e.stderr.contains(SECRET));
    assert_eq!(e.stdout.matches(REDACTED).count(), 2, "{}", e.stdout);
    assert!(e.stderr.contains(REDACTED), "{}", e.stderr);

    // logs: the tail, then a followed stream cut off by the client.
    let l = rig.ctl(&["logs", "--no-follow"]).ok();
    assert!(
        l.stdout
            .contains(&format!("runner booting with token {REDACTED}")),
        "{}",
        l.stdout
    );
    assert!(!l.stdout.contains(SECRET));
    let mut follow = Command::new(bin("megaplan-cloudctl"))
        .arg("--cloud-yaml")
        .arg(&rig.cloud_yaml)
        .arg("logs")
        .current_dir(&rig.project)
        .env("MEGAPLAN_CLOUDD_SOCKET", &rig.daemon.socket)
        .env(NAME, SECRET)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(follow.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let _ = follow.kill();
    let _ = follow.wait();
    assert_eq!(
        first.trim(),
        format!("runner booting with token {REDACTED}")
    );

    // A chain, then a chain state whose fields echo the value (read from the runner's env).
    let spec = write_chain(&rig.project.join("epic"), "chain.yaml", &["m1"]);
    rig.ctl(&["chain", spec.to_str().unwrap()]).ok();
    assert!(
        wait_until(Duration::from_secs(40), || {
            rig.ctl(&["status", "--chain"]).chain_complete()
        }),
        "the chain did not complete"
    );
    rig.ctl(&["exec", &format!(
        "python3 - <<'EOF'\nimport glob, json, os\npath = [p for p in glob.glob('/workspace/app/.megaplan/plans/.chains/chain-*.json') if 'runtime_policy' not in p][0]\nstate = json.load(open(path))\nstate['pr_head'] = os.environ['{NAME}']\nstate['branch_head'] = '{NAME}=' + os.environ['{NAME}']\njson.dump(state, open(path, 'w'), indent=2)\nEOF"
    )])
    .ok();
    let s = rig.ctl(&["status", "--chain"]).ok();
    assert_eq!(
        s.chain().pr.pr_head.flatten().as_deref(),
        Some(REDACTED),
        "{}",
        s.stdout
    );
    assert!(!s.stdout.contains(SECRET) && !s.stderr.contains(SECRET));

    // Ticks: supervise --chain, manual, and scheduled ones (which redact with the values the
    // last client command handed over, kept in memory only).
    let t = rig.ctl(&["supervise", "--chain"]).ok();
    assert_eq!(
        t.report().pr.pr_head.flatten().as_deref(),
        Some(REDACTED),
        "{}",
        t.stdout
    );
    rig.ctl(&["register", "--every", "2s"]).ok();
    let scheduled = || {
        rig.ticks(100)
            .iter()
            .filter(|t| t.trigger == "schedule")
            .count()
    };
    assert!(
        wait_until(Duration::from_secs(20), || scheduled() >= 2),
        "no scheduled ticks"
    );
    rig.ctl(&["tick"]).ok();
    let stored = rig.ctl(&["ticks", "--json", "--limit", "100"]).ok();
    let all: Vec<TickRecord> = stored.decode();
    assert!(all.len() >= 4, "{}", stored.stdout);
    for tick in &all {
        assert_eq!(
            tick.report.pr.pr_head.clone().flatten().as_deref(),
            Some(REDACTED),
            "{tick:?}"
        );
        // The sync facts were observed (a report that could not observe has none).
        assert_ne!(tick.report.sync, SyncInfo::default(), "{tick:?}");
    }
    assert!(!stored.stdout.contains(SECRET));

    // Nothing at rest while the daemon runs (database file and its WAL included) ...
    assert_secret_at_rest_nowhere(&rig, "while running");
    let deploy_dir = rig.daemon.home.join("ssh-127.0.0.1");
    assert!(
        deploy_dir.join("Dockerfile").is_file(),
        "the rendered deploy dir was scanned"
    );
    assert!(!deploy_dir.join(".env").exists());
    assert!(
        rig.daemon.log_text().contains("DEBUG"),
        "debug logging is on"
    );

    // ... nor after a clean stop (the WAL checkpointed into the database file).
    let mut rig = rig;
    assert_eq!(rig.daemon.terminate().code(), Some(0));
    assert_secret_at_rest_nowhere(&rig, "after stop");
}
