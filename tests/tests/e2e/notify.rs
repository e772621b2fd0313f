//! Unattended watching that tells a human (issue 12), over the real bench (sshd + Docker
//! runner, real daemon, real SQLite) with a STAND-IN webhook receiver on 127.0.0.1
//! (`megaplan_cloud_e2e::receiver`): one notification per transition across a daemon restart,
//! retries until a failing receiver accepts, durable delivery across a restart, redaction,
//! stall detection, pause, dry run, explain, and the ticks/watch filters.

use megaplan_cloud_api::ErrorCode;
use megaplan_cloud_api::notification::NotificationEvent;
use megaplan_cloud_api::report::{EffectiveStatus, NextAction, ReportedStatus, TickEvent};
use megaplan_cloud_api::wire::{
    BreakerState, Explanation, PauseResponse, RegisterResponse, TickRecord,
};
use megaplan_cloud_e2e::receiver::Receiver;
use megaplan_cloud_e2e::rig::{OutboxRow, Run, SshRig, notify_config, write_chain};
use megaplan_cloud_e2e::{bin, wait_until};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const SIGNING_SECRET: &str = "hook-signing-key-for-tests";

/// The signature check of docs/notifications.md: `openssl dgst -sha256 -hmac KEY` over the
/// body (openssl comes with the bench's ca-certificates package, see .ci/run).
fn signature_ok(body: &[u8], header: Option<&str>) -> bool {
    use std::io::Write;
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-hmac", SIGNING_SECRET])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("openssl is needed to check webhook signatures: {e}"));
    child.stdin.take().unwrap().write_all(body).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let hex = text.split_whitespace().last().unwrap_or_default();
    header == Some(format!("sha256={hex}").as_str())
}

#[test]
fn one_notification_per_transition_across_a_daemon_restart() {
    let receiver = Receiver::start();
    let Some((mut rig, _cfg)) = SshRig::start_notifying(
        "",
        "failed_ticks: 3\nstill_waiting_after: 3s\nretry: {initial_delay: 200ms, max_delay: 1s}\n",
        &[("MEGAPLAN_CLOUDD_NOTIFY_SECRET", SIGNING_SECRET)],
    ) else {
        return;
    };
    rig.launch_awaiting_pr(&["m1", "m2"], 7);
    rig.wait_effective_status(30, EffectiveStatus::AwaitingPrMerge);
    let url = receiver.url("/megaplan-topic");
    let reg = rig
        .ctl(&["register", "--every", "1s", "--notify-url", &url])
        .ok();
    assert_eq!(
        reg.decode::<RegisterResponse>().notify,
        [format!("webhook {url}")],
        "{}",
        reg.stdout
    );

    assert!(
        wait_until(Duration::from_secs(60), || receiver
            .count("awaiting_pr_merge")
            == 1),
        "no awaiting_pr_merge notification; got {:?}\n{}",
        receiver.events(),
        rig.daemon.log_text()
    );
    // Many more ticks in the same state, then a restart, then more ticks: still one.
    let n = rig.ticks(500).len();
    assert!(wait_until(Duration::from_secs(60), || rig.ticks(500).len() >= n + 3));
    rig.daemon.restart();
    let n = rig.ticks(500).len();
    assert!(wait_until(Duration::from_secs(60), || rig.ticks(500).len() >= n + 3));
    assert_eq!(
        receiver.count("awaiting_pr_merge"),
        1,
        "{:?}",
        receiver.events()
    );
    // Still waiting after `still_waiting_after`: told once more, once.
    assert!(
        wait_until(Duration::from_secs(60), || receiver.count("still_waiting")
            == 1),
        "no still_waiting: {:?}",
        receiver.events()
    );
    let n = rig.ticks(500).len();
    assert!(wait_until(Duration::from_secs(60), || rig.ticks(500).len() >= n + 3));
    assert_eq!(
        receiver.count("still_waiting"),
        1,
        "{:?}",
        receiver.events()
    );

    // The documented body and a valid signature.
    let first = receiver.accepted()[0].clone();
    assert_eq!(first.method, "POST");
    assert_eq!(first.path, "/megaplan-topic");
    let body = first.notification().expect("the body is a notification");
    assert_eq!(body.schema, "megaplan-cloudd/notification/v1");
    assert_eq!(body.event, NotificationEvent::AwaitingPrMerge);
    assert_eq!(body.effective_status.as_deref(), Some("awaiting_pr_merge"));
    assert_eq!(body.cloud_yaml, rig.cloud_yaml.display().to_string());
    assert!(body.message.contains("PR #7"), "{body:?}");
    assert_eq!(first.header("x-megaplan-event"), Some("awaiting_pr_merge"));
    assert!(
        signature_ok(&first.body, first.header("x-megaplan-signature")),
        "bad signature {:?}",
        first.header("x-megaplan-signature")
    );

    // Merge: the supervisor advances (and restarts for m2) until complete; each act is told,
    // complete once.
    rig.container.set_pr(7, "MERGED");
    assert!(
        wait_until(Duration::from_secs(90), || receiver.count("complete") == 1),
        "no complete notification; got {:?}",
        receiver.events()
    );
    let n = rig.ticks(500).len();
    assert!(wait_until(Duration::from_secs(60), || rig.ticks(500).len() >= n + 3));
    let acted = rig.ticks(500).iter().filter(|t| t.acted).count();
    assert!(acted >= 1);
    assert_eq!(
        receiver.count("supervisor_acted"),
        acted,
        "{:?}",
        receiver.events()
    );
    assert_eq!(receiver.count("complete"), 1);
    assert_eq!(receiver.count("still_waiting"), 1);
    assert_eq!(receiver.count("awaiting_pr_merge"), 1);
    // Delivered exactly once each: no delivery id was accepted twice.
    let mut ids: Vec<String> = receiver
        .accepted()
        .iter()
        .filter_map(|r| r.header("x-megaplan-delivery").map(str::to_string))
        .collect();
    let total = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), total);
}

#[test]
fn a_receiver_failing_three_times_gets_the_notification_once_and_pending_ones_survive_a_restart() {
    let receiver = Receiver::start();
    let Some((mut rig, _cfg)) = SshRig::start_notifying(
        "",
        "retry: {initial_delay: 200ms, max_delay: 1s, max_attempts: 50}\n",
        &[],
    ) else {
        return;
    };
    rig.launch_completed(&["m1"]);
    receiver.fail_next(&[500, 503, 500]);
    rig.ctl(&[
        "register",
        "--every",
        "1h",
        "--notify-url",
        &receiver.url("/t"),
    ])
    .ok();
    rig.ctl(&["tick"]).ok();
    assert!(
        wait_until(Duration::from_secs(60), || receiver.accepted().len() == 1),
        "never accepted; received {:?}",
        receiver
            .received()
            .iter()
            .map(|r| r.status)
            .collect::<Vec<_>>()
    );
    let got = receiver.received();
    assert_eq!(
        got.iter().map(|r| r.status).collect::<Vec<_>>(),
        [500, 503, 500, 200]
    );
    let ids: Vec<_> = got
        .iter()
        .map(|r| r.header("x-megaplan-delivery"))
        .collect();
    assert!(ids.iter().all(|i| *i == ids[0]), "{ids:?}");
    assert_eq!(receiver.events(), ["complete"]);
    let outbox = rig.ctl(&["notifications", "--json"]).ok().outbox();
    assert_eq!(outbox[0].status, "delivered", "{outbox:#?}");
    assert_eq!(outbox[0].attempts, 4);

    // A notification still failing when the daemon stops is delivered by the next start.
    receiver.fail_next(&[500; 1000]);
    rig.container.end_chain_session();
    // Re-run the chain to leave `complete` and come back: a new transition.
    rig.control(r#"{"step_seconds": 0.1, "await_pr": {"m2": 8}}"#);
    let spec = write_chain(&rig.project.join("epic2"), "chain.yaml", &["m2"]);
    rig.ctl(&["chain", spec.to_str().unwrap(), "--fresh"]).ok();
    rig.container.set_pr(8, "OPEN");
    rig.wait_effective_status(30, EffectiveStatus::AwaitingPrMerge);
    let before = receiver.received().len();
    rig.ctl(&["tick"]).ok();
    assert!(wait_until(Duration::from_secs(30), || receiver
        .received()
        .len()
        > before));
    rig.daemon.terminate();
    receiver.succeed_from_now();
    let accepted_before = receiver.accepted().len();
    rig.daemon.restart();
    assert!(
        wait_until(Duration::from_secs(60), || receiver.accepted().len()
            > accepted_before),
        "the pending notification was not delivered after the restart"
    );
    assert_eq!(
        receiver.count("awaiting_pr_merge"),
        1,
        "{:?}",
        receiver.events()
    );
}

#[test]
fn a_secret_in_the_tick_report_never_reaches_the_receiver() {
    // The gh stand-in prints the PR state from a file; a lowercase token there comes back as
    // the probe result, into the tick's refused_reason and `pr.merge_probe`.
    let secret = "ghp-notify-secret-7f3a9c2e5b";
    let receiver = Receiver::start();
    let Some((rig, _cfg)) = SshRig::start_notifying(
        "secrets: [MP_NOTIFY_TOKEN]\n",
        &format!(
            "sinks:\n  - url: {}\n  - url: {}\n    preset: slack\n",
            receiver.url("/json"),
            receiver.url("/slack")
        ),
        &[("MP_NOTIFY_TOKEN", secret)],
    ) else {
        return;
    };
    rig.precreate_workspace();
    rig.control(r#"{"step_seconds": 0.1, "await_pr": {"m1": 9}}"#);
    rig.container.set_pr(9, secret);
    rig.launch(&["m1"]);
    rig.wait_effective_status(30, EffectiveStatus::AwaitingPrMerge);
    rig.ctl(&["register", "--every", "1h"]).ok();
    let t = rig.ctl(&["tick"]).ok();
    assert!(!t.stdout.contains(secret));
    assert!(
        t.tick()
            .report
            .refused_reason
            .unwrap_or_default()
            .contains("state="),
        "{}",
        t.stdout
    );
    assert!(wait_until(Duration::from_secs(60), || receiver
        .accepted()
        .len()
        == 2));
    for r in receiver.received() {
        let text = String::from_utf8_lossy(&r.body);
        assert!(!text.contains(secret), "{}: {text}", r.path);
        assert!(!text.contains(&secret.to_uppercase()), "{text}");
    }
    let json = receiver
        .accepted()
        .into_iter()
        .find(|r| r.path == "/json")
        .unwrap();
    assert!(
        json.notification()
            .expect("the json preset's body is a notification")
            .message
            .contains("PR #9 state=")
    );
    let slack = receiver
        .accepted()
        .into_iter()
        .find(|r| r.path == "/slack")
        .unwrap();
    // Slack's incoming-webhook body is Slack's shape, not ours: read as JSON.
    assert!(
        slack.json()["text"]
            .as_str()
            .unwrap()
            .contains("pull request"),
        "{:?}",
        slack.json()
    );
    // Nor the database.
    let db = rig.daemon.home.join("cloudd.db");
    let dump = megaplan_cloud_e2e::util::sqlite(&db, "SELECT body FROM outbox;");
    assert!(!dump.is_empty() && !dump.contains(secret), "{dump}");
}

#[test]
fn a_live_runner_whose_log_does_not_grow_is_stalled_reported_and_never_restarted() {
    let receiver = Receiver::start();
    let Some((rig, _cfg)) = SshRig::start_notifying(
        "",
        &format!("stall_after: 2s\nsinks:\n  - url: {}\n", receiver.url("/s")),
        &[],
    ) else {
        return;
    };
    rig.launch_stalled(&["m1", "m2"]);
    assert!(
        wait_until(Duration::from_secs(60), || {
            rig.ctl(&["status", "--chain"])
                .chain_status()
                .is_some_and(|s| {
                    s.effective_status == ReportedStatus::Classified(EffectiveStatus::Running)
                        && s.stalled
                })
        }),
        "status --chain never said stalled"
    );
    let st = rig.ctl(&["status", "--chain"]);
    assert!(
        st.stderr.contains("Stalled: the runner is alive"),
        "{}",
        st.stderr
    );
    let s = st.chain();
    assert!(s.stalled_for_secs.unwrap_or_default() >= 2, "{s:#?}");
    assert_eq!(s.stall_after_secs, 2);
    let runs_before = rig
        .container
        .exec_ok("wc -l < /workspace/app/.megaplan/standin-chain-runs.jsonl");
    rig.ctl(&["register", "--every", "1s"]).ok();
    assert!(
        wait_until(Duration::from_secs(60), || receiver.count("stalled") == 1),
        "no stalled notification: {:?}",
        receiver.events()
    );
    let n = rig.ticks(500).len();
    assert!(wait_until(Duration::from_secs(60), || rig.ticks(500).len() >= n + 3));
    assert_eq!(receiver.count("stalled"), 1);
    let ticks = rig.ticks(500);
    assert!(
        ticks.iter().all(|t| !t.acted),
        "a stalled runner was touched"
    );
    assert_eq!(ticks[0].report.stalled, Some(true), "{:#?}", ticks[0]);
    assert_eq!(
        rig.container
            .exec_ok("wc -l < /workspace/app/.megaplan/standin-chain-runs.jsonl"),
        runs_before
    );
    rig.container.exec_ok("tmux has-session -t =megaplan-chain");
    let regs = rig.registrations();
    assert!(regs[0].stalled, "{regs:#?}");
    let table = rig.ctl(&["registrations"]).ok();
    assert!(table.stdout.contains("stalled"), "{}", table.stdout);
    let body = receiver.accepted()[0]
        .notification()
        .expect("the body is a notification");
    // `details` are the event's own facts (docs/notifications.md lists them per event): the
    // api keeps them as JSON.
    assert!(
        body.details["stalled_for_secs"].as_i64().unwrap() >= 2,
        "{body:?}"
    );
}

#[test]
fn pause_withholds_mutations_across_a_restart_dry_run_and_explain_say_what_would_happen() {
    let Some((mut rig, _cfg)) = SshRig::start_notifying("", "", &[]) else {
        return;
    };
    rig.launch_stalled(&["m1", "m2"]);
    rig.wait_runner_alive();
    rig.container
        .exec_ok("tmux kill-session -t =megaplan-chain");
    rig.control(r#"{"step_seconds": 0.1}"#);
    rig.ctl(&["register", "--every", "1h"]).ok();
    let p = rig.ctl(&["pause", "--reason", "manual repair"]).ok();
    let by = p.decode::<PauseResponse>().paused.paused_by;
    assert!(by.contains('@'), "{by}");
    let runs = || {
        rig.container
            .exec_ok("wc -l < /workspace/app/.megaplan/standin-chain-runs.jsonl")
    };
    let runs_before = runs();

    let t = rig.ctl(&["supervise", "--chain"]);
    assert_eq!(t.code, Some(0), "{}", t.stderr);
    assert_eq!(
        t.report().effective_status,
        ReportedStatus::Classified(EffectiveStatus::StaleBookkeeping),
        "{}",
        t.stdout
    );
    assert!(!t.report().acted);
    assert_eq!(t.report().event, TickEvent::Blocked);
    let reason = t.report().refused_reason.unwrap();
    assert!(
        reason.starts_with(&format!("paused by {by} since ")),
        "{reason}"
    );
    assert!(reason.contains("restart"), "{reason}");
    assert_eq!(
        t.report()
            .paused
            .flatten()
            .and_then(|p| p.reason)
            .as_deref(),
        Some("manual repair")
    );

    // The pause survives a restart and shows in the registrations list.
    rig.daemon.restart();
    let regs = rig.registrations();
    assert_eq!(
        regs[0].paused.as_ref().map(|p| p.paused_by.as_str()),
        Some(by.as_str()),
        "{regs:#?}"
    );
    // Through a pipe the client prints JSON (the table is for terminals: ctl/src/render.rs's
    // tests and tests/tests/e2e/ctl_terminal.rs cover it).
    let piped = rig.ctl(&["registrations"]).ok();
    assert_eq!(
        piped.registrations()[0]
            .paused
            .as_ref()
            .map(|p| p.paused_by.as_str()),
        Some(by.as_str()),
        "{}",
        piped.stdout
    );
    let t = rig.ctl(&["tick"]).ok();
    assert!(!t.tick().acted);
    assert!(
        t.tick()
            .refused_reason
            .unwrap_or_default()
            .starts_with("paused by")
    );
    assert_eq!(runs(), runs_before, "a paused registration was mutated");

    // explain: facts, rule, action, refusal.
    // Through a pipe `explain` is JSON; its `lines` are what a terminal shows.
    let e = rig.ctl(&["explain"]).ok();
    let explanation: Explanation = e.decode();
    let lines: Vec<&str> = explanation.lines.iter().map(String::as_str).collect();
    assert!(!lines.is_empty(), "explain JSON has lines: {}", e.stdout);
    for start in [
        "facts:   status stale_bookkeeping, runner dead",
        "rule:    stale_bookkeeping, runner dead → restart",
        "refused: paused by",
    ] {
        assert!(
            lines.iter().any(|l| l.starts_with(start)),
            "no line {start:?}: {}",
            e.stdout
        );
    }
    assert!(
        lines.contains(&"action:  blocked (acted: no)"),
        "{}",
        e.stdout
    );
    // The facts are kept whole by the api type (`Explanation::rest`): read as JSON.
    let ej: Explanation = rig.ctl(&["explain", "--json"]).ok().decode();
    assert_eq!(ej.rest["facts"]["runner"], "dead");

    // Dry run: would restart, did not, not stored.
    let stored = rig.ticks(500).len();
    rig.ctl(&["unpause"]).ok();
    let d = rig.ctl(&["supervise", "--chain", "--dry-run"]);
    assert_eq!(d.code, Some(0), "{}", d.stderr);
    assert!(d.report().dry_run, "{}", d.stdout);
    assert!(!d.report().acted);
    assert_eq!(d.report().next_action, NextAction::Restart);
    assert!(d.stderr.contains("dry run"), "{}", d.stderr);
    assert_eq!(runs(), runs_before, "a dry run mutated");
    assert_eq!(rig.ticks(500).len(), stored);

    // Unpaused: the supervisor acts again.
    let t = rig.ctl(&["supervise", "--chain"]).ok();
    assert!(t.report().acted, "{}", t.stdout);
    assert_eq!(t.report().event, TickEvent::Restarted);
    assert!(rig.registrations()[0].paused.is_none());
}

#[test]
fn failing_ticks_notify_once_then_recover_and_ticks_watch_filter() {
    let receiver = Receiver::start();
    let Some((mut rig, _cfg)) = SshRig::start_notifying(
        "",
        &format!(
            "failed_ticks: 3\nsinks:\n  - command: \"cat >> {}\"\n",
            "/dev/null"
        ),
        &[],
    ) else {
        return;
    };
    rig.launch_completed(&["m1"]);
    rig.ctl(&[
        "register",
        "--every",
        "1s",
        "--notify-url",
        &receiver.url("/f"),
    ])
    .ok();
    assert!(wait_until(Duration::from_secs(30), || receiver
        .count("complete")
        == 1));
    assert!(wait_until(Duration::from_secs(30), || rig.ticks(500).len() >= 2));

    // `watch` shows the last stored reports first.
    let mut watch = rig.spawn_ctl(&["watch", "--json", "--backlog", "2"]);
    let mut out = BufReader::new(watch.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    let rec: TickRecord = serde_json::from_str(&first).unwrap_or_else(|e| panic!("{e}: {first}"));
    assert_eq!(rec.trigger, "schedule");

    rig.sshd.stop();
    assert!(
        wait_until(Duration::from_secs(90), || receiver.count("ticks_failing")
            == 1),
        "no ticks_failing: {:?}",
        receiver.events()
    );
    let failed: Vec<TickRecord> = rig
        .ctl(&["ticks", "--json", "--failed", "--limit", "100"])
        .ok()
        .decode();
    assert!(failed.len() >= 3);
    assert!(failed.iter().all(|t| !t.success));
    let by_event = rig
        .ctl(&[
            "ticks",
            "--json",
            "--event",
            "supervisor_error",
            "--limit",
            "100",
        ])
        .ok()
        .decode::<Vec<TickRecord>>();
    assert_eq!(by_event.len(), failed.len());
    let none: Vec<TickRecord> = rig
        .ctl(&["ticks", "--json", "--since", "2999-01-01"])
        .ok()
        .decode();
    assert_eq!(none.len(), 0);
    let recent: Vec<TickRecord> = rig
        .ctl(&["ticks", "--json", "--since", "1h", "--limit", "500"])
        .ok()
        .decode();
    assert_eq!(recent.len(), rig.ticks(500).len());
    let bad = rig.ctl(&["ticks", "--since", "last tuesday"]);
    assert_eq!(bad.code, Some(1));
    assert_eq!(bad.error_field(), "since", "{}", bad.stdout);

    rig.sshd.restart();
    assert!(
        wait_until(Duration::from_secs(60), || receiver
            .count("ticks_recovered")
            == 1),
        "no ticks_recovered: {:?}",
        receiver.events()
    );
    assert_eq!(receiver.count("ticks_failing"), 1);
    assert_eq!(receiver.count("complete"), 1, "{:?}", receiver.events());

    // The daemon going away ends `watch` with a message saying so.
    rig.daemon.terminate();
    let status = watch.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut watch.stderr.take().unwrap(), &mut err).unwrap();
    assert!(err.contains("the last 2 stored tick report"), "{err}");
    assert!(
        err.contains("shutting down")
            || err.contains("went away")
            || err.contains("closed the stream"),
        "{err}"
    );
    assert_ne!(status.code(), Some(0));
}

#[test]
fn bad_notify_input_is_refused_by_field() {
    let Some((rig, _cfg)) = SshRig::start_notifying("", "", &[]) else {
        return;
    };
    let r = rig.ctl(&["register", "--notify-url", "ftp://ntfy.example/t"]);
    assert_eq!(r.code, Some(1));
    assert_eq!(r.error_field(), "notify_url", "{}", r.stdout);
    assert!(r.error_body().message.contains("https://"));
    let r = rig.ctl(&["register", "--notify-url", "http://u:pw@127.0.0.1/t"]);
    assert_eq!(r.error_field(), "notify_url");
    let r = rig.ctl(&[
        "register",
        "--notify-url",
        "http://127.0.0.1/t",
        "--notify-preset",
        "teams",
    ]);
    assert_eq!(r.error_field(), "notify_preset");
    let r = rig.ctl(&["pause"]);
    assert_eq!(
        r.error_body().error,
        ErrorCode::NotRegistered,
        "{}",
        r.stdout
    );
    // A bad config file stops the daemon at start with the file and field named.
    let (_g, path) = notify_config("stall_after: soon\n");
    let out = Command::new(bin("megaplan-cloudd"))
        .args(["--notify-config", path.to_str().unwrap(), "--no-log-file"])
        // A folder of its own for the socket: the daemon creates it 0700 (it refuses to bind
        // in a folder others can enter).
        .env(
            "MEGAPLAN_CLOUDD_SOCKET",
            rig.daemon.dir.join("other-run/other.sock"),
        )
        .env("MEGAPLAN_CLOUD_HOME", rig.daemon.dir.join("other-home"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("notify.yaml") && err.contains("stall_after"),
        "{err}"
    );
}

/// https webhooks (ntfy.sh and Slack only take https): a receiver whose certificate chains to
/// a CA the daemon trusts (`SSL_CERT_FILE`, honoured like curl and openssl do) gets the
/// notification over TLS; one whose CA it does not trust never gets the request, and the
/// outbox records a certificate error. Needs no runner: the registration's cloud.yaml is
/// removed, so each tick fails at once and the first failure (`failed_ticks: 1`) notifies.
#[test]
fn https_webhooks_reach_trusted_receivers_only() {
    use megaplan_cloud_e2e::{Daemon, tls};
    let tmp = tempfile::tempdir().unwrap();
    let good = tls::server_cert(
        &tmp.path().join("good"),
        "megaplan e2e CA",
        "127.0.0.1",
        "IP:127.0.0.1",
    );
    let bad = tls::server_cert(
        &tmp.path().join("bad"),
        "a CA nobody trusts",
        "127.0.0.1",
        "IP:127.0.0.1",
    );
    let trusted = Receiver::start_tls(&good.cert, &good.key);
    let untrusted = Receiver::start_tls(&bad.cert, &bad.key);
    let (_g, config) = notify_config(&format!(
        "failed_ticks: 1\nretry: {{max_attempts: 2, initial_delay: 100ms, max_delay: 200ms}}\nsinks:\n  - url: {}\n  - url: {}\n",
        trusted.url("/chains"),
        untrusted.url("/chains")
    ));
    let daemon = Daemon::start(
        &[("SSL_CERT_FILE", good.ca.to_str().unwrap())],
        &["--notify-config", config.to_str().unwrap(), "--no-log-file"],
    );
    let project = tmp.path().join("project");
    std::fs::create_dir_all(&project).unwrap();
    let cy = project.join("cloud.yaml");
    std::fs::write(&cy, "provider: local\nrepo:\n  url: /srv/repo.git\n").unwrap();
    let out = daemon.ctl(&project, &[], &["register", "--every", "1h", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let key = Run::from_output(&out).decode::<RegisterResponse>().key;
    std::fs::remove_file(&cy).unwrap();
    let out = daemon.ctl(&project, &[], &["tick", &key, "--json"]);
    let tick = Run::from_output(&out).try_decode::<TickRecord>();
    assert_eq!(tick.map(|t| t.event), Some(TickEvent::Error), "{out:?}");

    assert!(
        wait_until(Duration::from_secs(60), || trusted.accepted().len() == 1),
        "the trusted https receiver got {:?}",
        trusted.events()
    );
    let n = trusted.accepted()[0]
        .notification()
        .expect("the body is a notification");
    assert_eq!(n.event, NotificationEvent::TicksFailing, "{n:?}");
    assert_eq!(n.key, key);
    // The untrusted one: both attempts fail in the handshake, so no request ever arrives.
    let outbox = || {
        let out = daemon.ctl(&project, &[], &["notifications", "--all", "--json"]);
        Run::from_output(&out)
            .try_decode::<Vec<OutboxRow>>()
            .unwrap_or_default()
    };
    assert!(
        wait_until(Duration::from_secs(60), || outbox()
            .iter()
            .any(|r| r.status == "failed")),
        "{:#?}",
        outbox()
    );
    let rows = outbox();
    let failed: Vec<&OutboxRow> = rows.iter().filter(|r| r.status == "failed").collect();
    assert_eq!(failed.len(), 1, "{rows:#?}");
    assert!(
        failed[0].sink.contains(&untrusted.port.to_string()),
        "{rows:#?}"
    );
    let why = failed[0].last_error.clone().unwrap().to_lowercase();
    assert!(why.contains("certificate"), "{why}");
    assert!(untrusted.received().is_empty());
}

/// Issue 21 item 2: 200 registrations notify a receiver that accepts and never answers, one
/// notifies a healthy receiver. The dead sink's 200 rows are queued first (the lowest ids), yet
/// the healthy notification is delivered: the dead sink holds exactly its cap of 4 connections
/// and never more. When the dead receiver starts hanging up, its breaker opens after 3 failures
/// in a row, `notifications` says so, its rows stay pending (deferred, not failed), and while
/// it is open nothing more is sent to it, while a later healthy notification still arrives.
/// Needs no runner: each registration's cloud.yaml is removed, so its tick fails at once and
/// the first failure (`failed_ticks: 1`) notifies.
#[test]
fn a_dead_receiver_never_holds_back_a_healthy_one() {
    use megaplan_cloud_e2e::Daemon;
    const DEAD: usize = 200;
    let dead = Receiver::start_blackhole();
    let healthy = Receiver::start();
    // A delivery's own timeout is an hour: the dead receiver's connections stay held for the
    // whole test unless it hangs up.
    let (_g, config) = notify_config(
        "failed_ticks: 1\nmax_in_flight_per_sink: 4\nbreaker_after: 3\nbreaker_cooldown: 1h\n\
         retry: {max_attempts: 10, initial_delay: 100ms, max_delay: 200ms, timeout: 1h}\n",
    );
    let daemon = Daemon::start(
        &[],
        &["--notify-config", config.to_str().unwrap(), "--no-log-file"],
    );
    let tmp = tempfile::tempdir().unwrap();
    // Register a cloud.yaml notifying `url`, remove the file, tick it: one `ticks_failing`.
    let failing = |name: &str, url: &str| {
        let project = tmp.path().join(name);
        std::fs::create_dir_all(&project).unwrap();
        let cy = project.join("cloud.yaml");
        std::fs::write(&cy, "provider: local\nrepo:\n  url: /srv/repo.git\n").unwrap();
        let args = ["register", "--every", "1h", "--notify-url", url, "--json"];
        let out = daemon.ctl(&project, &[], &args);
        assert!(out.status.success(), "{out:?}");
        let key = Run::from_output(&out).decode::<RegisterResponse>().key;
        std::fs::remove_file(&cy).unwrap();
        let out = daemon.ctl(&project, &[], &["tick", &key, "--json"]);
        let tick = Run::from_output(&out).try_decode::<TickRecord>();
        assert_eq!(tick.map(|t| t.event), Some(TickEvent::Error), "{out:?}");
    };
    let dead_url = dead.url("/hook");
    std::thread::scope(|s| {
        for part in 0..4 {
            let (failing, dead_url) = (&failing, &dead_url);
            s.spawn(move || {
                for i in (part..DEAD).step_by(4) {
                    failing(&format!("dead-{i}"), dead_url);
                }
            });
        }
    });
    let outbox = || {
        let out = daemon.ctl(
            tmp.path(),
            &[],
            &["notifications", "--all", "--limit", "1000", "--json"],
        );
        Run::from_output(&out)
            .try_decode::<Vec<OutboxRow>>()
            .unwrap_or_default()
    };
    let of = |rows: &[OutboxRow], port: u16| -> Vec<OutboxRow> {
        rows.iter()
            .filter(|r| r.sink.contains(&format!(":{port}/")))
            .cloned()
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(60), || of(&outbox(), dead.port).len()
            == DEAD),
        "{} dead rows queued",
        of(&outbox(), dead.port).len()
    );
    // The dead receiver ties up deliveries that never get an answer.
    assert!(
        wait_until(Duration::from_secs(60), || dead.held() > 0),
        "the dead receiver holds {} connections",
        dead.held()
    );

    failing("healthy-1", &healthy.url("/hook"));
    assert!(
        wait_until(Duration::from_secs(60), || healthy.accepted().len() == 1),
        "the healthy receiver got {} notifications while the dead one held {} connections",
        healthy.accepted().len(),
        dead.held()
    );
    assert_eq!(healthy.events(), ["ticks_failing"]);
    // The dead sink is saturated at its cap and never had more: 4 requests in all, all held.
    assert!(
        wait_until(Duration::from_secs(60), || dead.held() == 4),
        "the dead receiver holds {} connections",
        dead.held()
    );
    assert_eq!(dead.max_held(), 4);
    assert_eq!(dead.received().len(), 4);
    let rows = outbox();
    let dead_rows = of(&rows, dead.port);
    assert_eq!(dead_rows.len(), DEAD);
    assert!(
        dead_rows.iter().all(|r| r.status == "pending"),
        "{dead_rows:#?}"
    );
    let b = &dead_rows[0].breaker;
    assert_eq!(b.sink, format!("http://127.0.0.1:{}", dead.port), "{b:?}");
    assert_eq!(b.in_flight, 4, "{b:?}");
    assert_eq!(b.state, BreakerState::Closed, "{b:?}");
    let healthy_rows = of(&rows, healthy.port);
    assert_eq!(healthy_rows.len(), 1);
    assert_eq!(healthy_rows[0].status, "delivered");

    // The dead receiver starts hanging up without an answer: every delivery to it fails.
    dead.hang_up();
    let dead_breaker = || of(&outbox(), dead.port).first().map(|r| r.breaker.clone());
    assert!(
        wait_until(Duration::from_secs(60), || {
            dead_breaker().is_some_and(|b| b.state == BreakerState::Open && b.in_flight == 0)
        }),
        "{:#?}",
        dead_breaker()
    );
    let b = dead_breaker().expect("the dead sink's breaker");
    assert!(b.consecutive_failures >= 3, "{b:?}");
    assert!(b.open_until.is_some(), "{b:?}");
    // Slots freed before the third failure may have been refilled once each: at most 4 + 2.
    let sent = dead.received().len();
    assert!(
        (4..=6).contains(&sent),
        "{sent} requests reached the dead receiver"
    );
    // Deferred, not failed: every dead row is still pending.
    let dead_rows = of(&outbox(), dead.port);
    assert_eq!(dead_rows.len(), DEAD);
    assert!(
        dead_rows.iter().all(|r| r.status == "pending"),
        "{dead_rows:#?}"
    );
    // While it is open the dead sink gets nothing more; the healthy one still gets its next.
    failing("healthy-2", &healthy.url("/hook"));
    assert!(
        wait_until(Duration::from_secs(60), || healthy.accepted().len() == 2),
        "the healthy receiver got {}",
        healthy.accepted().len()
    );
    assert_eq!(dead.received().len(), sent);
}

/// Issue 24 item 1: a runner's change is told at once, not at the next scheduled tick. The
/// registration's schedule never fires during the test (once a year, on 1 January); after one
/// manual tick (which sets up the runner watch), the driver is killed on the runner: the
/// daemon ticks by itself (`trigger: event`), restarts the runner and the receiver gets the
/// notification. Judged by what happened, never by how fast.
/// Issue 24 item 1: the log's stop is an event. With a schedule that fires once a year, a
/// running chain whose log stops growing is told as `stalled` after `stall_after`, by an event
/// tick the runner watch caused, not at the next scheduled tick.
#[test]
fn a_log_that_stops_growing_is_told_by_the_watch_without_waiting_for_the_schedule() {
    let receiver = Receiver::start();
    let Some((rig, _cfg)) = SshRig::start_notifying(
        "",
        &format!(
            "stall_after: 20s\nsinks:\n  - url: {}\n",
            receiver.url("/s")
        ),
        &[],
    ) else {
        return;
    };
    rig.launch_stalled(&["m1", "m2"]);
    rig.wait_runner_alive();
    rig.ctl(&["register", "--cron", "0 0 1 1 *"]).ok();
    let t = rig.ctl(&["tick"]).ok();
    assert_ne!(
        t.tick().report.stalled,
        Some(true),
        "the first tick came too late to see the log still fresh: {}",
        t.stdout
    );
    assert!(
        wait_until(Duration::from_secs(120), || receiver.count("stalled") >= 1),
        "no stalled notification; got {:?}; ticks {:#?}\n{}",
        receiver.events(),
        rig.ticks(500),
        rig.daemon.log_text()
    );
    let all = rig.ticks(500);
    assert!(
        all.iter()
            .any(|t| t.trigger == "event" && t.report.stalled == Some(true)),
        "no event tick reported the stall: {all:#?}"
    );
    assert!(
        all.iter().all(|t| t.trigger != "schedule"),
        "a scheduled tick ran: {all:#?}"
    );
    assert!(
        rig.daemon
            .log_text()
            .contains("the chain log stopped growing"),
        "{}",
        rig.daemon.log_text()
    );
}

#[test]
fn a_killed_driver_is_told_at_once_without_waiting_for_the_schedule() {
    let receiver = Receiver::start();
    let Some((rig, _cfg)) =
        SshRig::start_notifying("", "retry: {initial_delay: 200ms, max_delay: 1s}\n", &[])
    else {
        return;
    };
    rig.launch_stalled(&["m1", "m2"]);
    rig.wait_runner_alive();
    let url = receiver.url("/hook");
    rig.ctl(&["register", "--cron", "0 0 1 1 *", "--notify-url", &url])
        .ok();
    let t = rig.ctl(&["tick"]).ok();
    assert_eq!(t.tick().event, TickEvent::Tick, "{}", t.stdout);
    assert!(!t.tick().acted, "{}", t.stdout);
    let before = rig.ticks(500).len();

    rig.container
        .exec_ok("tmux kill-session -t =megaplan-chain");
    let event_ticks = || -> Vec<TickRecord> {
        rig.ticks(500)
            .into_iter()
            .filter(|t| t.trigger == "event")
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(60), || event_ticks()
            .iter()
            .any(|t| t.event == TickEvent::Restarted)),
        "no event tick restarted the runner; ticks: {:#?}\n{}",
        rig.ticks(500),
        rig.daemon.log_text()
    );
    assert!(
        wait_until(Duration::from_secs(60), || receiver
            .count("supervisor_acted")
            >= 1),
        "the receiver was not told; got {:?}",
        receiver.events()
    );
    let all = rig.ticks(500);
    assert!(
        all.iter().all(|t| t.trigger != "schedule"),
        "a scheduled tick ran: {all:#?}"
    );
    assert!(all.len() > before);
    // The restarted runner is live again, and one driver runs.
    rig.wait_runner_alive();
}
