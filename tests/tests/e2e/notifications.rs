//! Notifications a person acts on (issue 24 §6): `notifications test` against two receivers
//! (one failing), one idempotency key per occurrence across a daemon restart, and the digest.
//! Receivers are the STAND-IN of `megaplan_cloud_e2e::receiver` on 127.0.0.1; the chains run
//! on the real bench (sshd + Docker runner, real daemon, real SQLite). Waits are on what the
//! receiver got, with generous safety nets; nothing asserts a duration.

use megaplan_cloud_api::notification::{NotificationEvent, TestResults};
use megaplan_cloud_api::report::EffectiveStatus;
use megaplan_cloud_e2e::pane::{assert_fits_80, in_80_columns};
use megaplan_cloud_e2e::receiver::Receiver;
use megaplan_cloud_e2e::rig::{Run, SshRig, notify_config, write_chain};
use megaplan_cloud_e2e::{Daemon, wait_until};
use serde_json::Value;
use std::time::Duration;

#[test]
fn notifications_test_reports_every_sink_a_failing_one_too() {
    let good = Receiver::start();
    let bad = Receiver::start();
    bad.fail_next(&[500]);
    let (_guard, cfg) = notify_config(&format!(
        "sinks:\n  - url: {}\n  - url: {}\n    preset: ntfy\n",
        good.url("/good"),
        bad.url("/bad")
    ));
    let d = Daemon::start(&[], &["--notify-config", cfg.to_str().unwrap()]);
    // Outside any project: every sink the daemon knows.
    let out = Run::from_output(&d.ctl(&d.dir, &[], &["notifications", "test", "--json"]));
    assert_eq!(
        out.code,
        Some(1),
        "a failing sink is exit 1\n{}\n{}",
        out.stdout,
        out.stderr
    );
    let tested: TestResults = out.decode();
    let results = &tested.results;
    assert_eq!(results.len(), 2, "{}", out.stdout);
    let ok = &results[0];
    assert!(ok.ok, "{ok:?}");
    assert_eq!(ok.status, Some(200));
    assert_eq!(ok.sink, format!("webhook {}", good.url("/good")));
    assert_eq!(ok.source, "notify.yaml");
    let failed = &results[1];
    assert!(!failed.ok, "{failed:?}");
    assert_eq!(failed.status, Some(500));
    assert_eq!(failed.preset.as_deref(), Some("ntfy"));
    assert!(
        failed.error.as_deref().unwrap_or_default().contains("500"),
        "{failed:?}"
    );
    // Each receiver got the test, with the same idempotency key in the header (and the body).
    let key = tested.idempotency_key.clone();
    let g = good.received();
    let b = bad.received();
    assert_eq!((g.len(), b.len()), (1, 1));
    let test = g[0].notification().expect("the test is a notification");
    assert_eq!(test.event, NotificationEvent::Test);
    assert_eq!(test.schema, "megaplan-cloudd/notification/v1");
    assert_eq!(test.idempotency_key, key);
    assert_eq!(g[0].header("x-idempotency-key"), Some(key.as_str()));
    assert_eq!(b[0].header("x-idempotency-key"), Some(key.as_str()));
    assert_eq!(b[0].header("priority"), Some("default"));
    assert!(b[0].header("title").unwrap_or_default().contains("test"));
    // A second run: both answer now.
    let again = Run::from_output(&d.ctl(&d.dir, &[], &["notifications", "test", "--json"]));
    assert_eq!(again.code, Some(0), "{}", again.stdout);
    // doctor --send-test asks the same route: one check per sink.
    let doc = Run::from_output(&d.ctl(&d.dir, &[], &["doctor", "--send-test", "--json"]));
    // `doctor`'s document is the client's own (no api type carries it): read as JSON.
    let sinks: Vec<&Value> = doc.json["checks"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter(|c| c["name"].as_str().unwrap_or_default().starts_with("sink "))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(sinks.len(), 2, "{}", doc.stdout);
    assert!(sinks.iter().all(|c| c["verdict"] == "ok"), "{}", doc.stdout);
    assert_eq!(good.received().len(), 3);

    // For a person: the table in a real 80-column terminal, each sink one row, the failure's
    // reason under it.
    bad.fail_next(&[503]);
    let ctl = megaplan_cloud_e2e::bin("megaplan-cloudctl");
    let pane = in_80_columns(
        &format!(
            "cd {} && {} notifications test",
            d.dir.display(),
            ctl.display()
        ),
        &[
            ("MEGAPLAN_CLOUDD_SOCKET", d.socket.to_str().unwrap()),
            ("MEGAPLAN_CLOUD_HOME", d.home.to_str().unwrap()),
        ],
    );
    assert_fits_80(&pane);
    let rows: Vec<&str> = pane.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        rows.iter()
            .any(|l| l.starts_with("RESULT") && l.contains("SINK")),
        "{pane}"
    );
    assert!(
        rows.iter()
            .any(|l| l.starts_with("ok ") && l.contains("200")),
        "{pane}"
    );
    assert!(
        rows.iter()
            .any(|l| l.starts_with("error ") && l.contains("503")),
        "{pane}"
    );
    assert!(pane.contains("1 of 2 sinks answered"), "{pane}");
}

/// A state is told once with its own key; a restart and more ticks in the same state tell
/// nothing; the next state is told once with a new key. Keys travel in the body and in
/// `X-Idempotency-Key`, and the database records each once.
#[test]
fn one_key_per_occurrence_and_a_restart_never_repeats_one() {
    let receiver = Receiver::start();
    let Some((mut rig, _cfg)) =
        SshRig::start_notifying("", "retry: {initial_delay: 200ms, max_delay: 1s}\n", &[])
    else {
        return;
    };
    rig.launch_awaiting_pr(&["m1", "m2"], 7);
    rig.wait_effective_status(60, EffectiveStatus::AwaitingPrMerge);
    let url = receiver.url("/hook");
    rig.ctl(&["register", "--every", "1h", "--notify-url", &url])
        .ok();
    rig.ctl(&["tick"]).ok();
    assert!(
        wait_until(Duration::from_secs(60), || receiver
            .count("awaiting_pr_merge")
            == 1),
        "no awaiting_pr_merge; got {:?}\n{}",
        receiver.events(),
        rig.daemon.log_text()
    );
    let first = receiver.accepted()[0].clone();
    let body = first.notification().expect("the body is a notification");
    let key = body.idempotency_key.clone();
    assert_eq!(key.len(), 32, "{body:?}");
    assert_eq!(first.header("x-idempotency-key"), Some(key.as_str()));
    // What a person acts on comes first: the chain, milestone, state, the PR, the fix.
    assert!(body.needs_person);
    assert_eq!(body.chain, "project");
    assert_eq!(
        body.milestone.as_ref().and_then(|m| m.label.as_deref()),
        Some("m1")
    );
    assert_eq!(body.pr.as_ref().map(|p| p.number), Some(7));
    assert!(
        body.fix
            .as_deref()
            .unwrap_or_default()
            .starts_with("merge PR #7"),
        "{body:?}"
    );
    let message = body.message.as_str();
    assert!(
        message.starts_with("project · milestone 1/2 (m1)"),
        "{message}"
    );
    assert!(
        message.ends_with(&rig.cloud_yaml.display().to_string()),
        "{message}"
    );

    rig.daemon.restart();
    for _ in 0..3 {
        rig.ctl(&["tick"]).ok();
    }
    // The next state: merged, so the supervisor advances (an act, told once).
    rig.container.set_pr(7, "MERGED");
    rig.ctl(&["tick"]).ok();
    assert!(
        wait_until(Duration::from_secs(60), || receiver
            .count("supervisor_acted")
            >= 1),
        "no supervisor_acted; got {:?}\n{}",
        receiver.events(),
        rig.daemon.log_text()
    );
    // The watcher reads ticks in order: the act was watched after the three ticks before it.
    assert_eq!(
        receiver.count("awaiting_pr_merge"),
        1,
        "{:?}",
        receiver.events()
    );
    let keys: Vec<String> = receiver
        .accepted()
        .iter()
        .map(|r| {
            r.notification()
                .map(|n| n.idempotency_key)
                .unwrap_or_default()
        })
        .collect();
    let mut distinct = keys.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), keys.len(), "a key was sent twice: {keys:?}");
    for r in receiver.accepted() {
        assert_eq!(
            r.header("x-idempotency-key"),
            r.notification().map(|n| n.idempotency_key).as_deref()
        );
    }
    let db = rig.daemon.home.join("cloudd.db");
    let recorded = megaplan_cloud_e2e::util::sqlite(&db, "SELECT count(*) FROM notification_keys;");
    assert_eq!(recorded.trim(), keys.len().to_string(), "{keys:?}");
}

/// With `digest:` set, what needs nobody (acts, complete) is not sent one by one: digests
/// list each chain's milestones done since the last one, and the chain's completion shows
/// up there.
#[test]
fn a_digest_replaces_one_message_per_event() {
    let receiver = Receiver::start();
    let Some((rig, _cfg)) = SshRig::start_notifying(
        "",
        &format!(
            "digest: 2s\nretry: {{initial_delay: 200ms, max_delay: 1s}}\nsinks:\n  - url: {}\n",
            receiver.url("/digest")
        ),
        &[],
    ) else {
        return;
    };
    rig.precreate_workspace();
    rig.control(r#"{"step_seconds": 0.1}"#);
    let spec = write_chain(&rig.project.join("epic"), "chain.yaml", &["m1", "m2", "m3"]);
    rig.ctl(&["chain", spec.to_str().unwrap()]).ok();
    rig.ctl(&["register", "--every", "1s"]).ok();
    let complete_digest = || {
        receiver.accepted().iter().any(|r| {
            r.notification().is_some_and(|n| {
                n.event == NotificationEvent::Digest
                    && n.digest
                        .is_some_and(|c| c.iter().any(|c| c.state == "complete"))
            })
        })
    };
    assert!(
        wait_until(Duration::from_secs(180), complete_digest),
        "no digest with the chain complete; got {:?}\n{}",
        receiver.events(),
        rig.daemon.log_text()
    );
    let got = receiver.events();
    assert!(
        got.iter().all(|e| e == "digest"),
        "only digests, no message per event: {got:?}"
    );
    let done: u64 = receiver
        .accepted()
        .iter()
        .flat_map(|r| r.notification().and_then(|n| n.digest).unwrap_or_default())
        .map(|c| u64::from(c.milestones_done))
        .sum();
    assert!(
        (1..=3).contains(&done),
        "milestones done over the digests: {done}"
    );
    let last = receiver
        .accepted()
        .last()
        .and_then(|r| r.notification())
        .expect("the last body is a notification");
    assert!(last.title.contains("milestone"), "{last:?}");
    assert!(!last.needs_person);
}
