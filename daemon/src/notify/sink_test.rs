//! `megaplan-cloudctl notifications test` and `doctor --send-test`: one test notification sent
//! to every sink at once, now (not through the outbox: a person is waiting for the answer, and
//! a test is not worth retrying), each sink's answer reported: ok or the error, the HTTP status
//! or exit status, and how long it took. The same signing, presets and headers as a real
//! notification, so a sink that passes the test receives the real ones.

use super::config::{NotifyConfig, Sink};
use super::deliver;
use megaplan_cloud_api::notification::{Notification, SinkTestResult, TestResults};
use std::time::{Duration, Instant};

/// Where a sink comes from: `notify.yaml`, or the registration key that gave it.
pub type Sourced = (Sink, String);

/// The sinks to test: the daemon's own (`notify.yaml`) and the registrations' given, in order,
/// each sink once (the first source named).
pub fn sinks_to_test(cfg: &NotifyConfig, registrations: &[(String, Vec<Sink>)]) -> Vec<Sourced> {
    let mut out: Vec<Sourced> = Vec::new();
    let all = cfg
        .sinks
        .iter()
        .map(|s| (s.clone(), "notify.yaml".to_string()))
        .chain(
            registrations
                .iter()
                .flat_map(|(k, sinks)| sinks.iter().map(move |s| (s.clone(), k.clone()))),
        );
    for (s, src) in all {
        if !out.iter().any(|(o, _)| *o == s) {
            out.push((s, src));
        }
    }
    out
}

/// Send `n` to one sink and say how it went.
async fn send_one(
    sink: &Sink,
    source: &str,
    n: &Notification,
    timeout: Duration,
) -> SinkTestResult {
    let body = serde_json::to_string(n).unwrap_or_default();
    let started = Instant::now();
    let (preset, status, result) = match sink {
        Sink::Webhook {
            url,
            preset,
            secret_env,
        } => {
            let secret = secret_env
                .as_deref()
                .and_then(|v| std::env::var(v).ok())
                .filter(|v| !v.is_empty());
            let req = deliver::webhook_request(
                url,
                *preset,
                n,
                body.as_bytes(),
                0,
                secret.as_deref().map(str::as_bytes),
            );
            let (status, result) = deliver::send_webhook_status(&req, timeout).await;
            (
                Some(preset.as_str().to_string()),
                status.map(i64::from),
                result,
            )
        }
        Sink::Command { command } => {
            let (code, result) =
                deliver::run_command_status(command, body.as_bytes(), timeout).await;
            (None, code.map(i64::from), result)
        }
    };
    SinkTestResult {
        sink: sink.label(),
        preset,
        source: source.to_string(),
        ok: result.is_ok(),
        status,
        latency_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        error: result.err(),
    }
}

/// Send `n` to every sink at once, each bounded by `timeout`; results in the sinks' order.
pub async fn send_all(sinks: &[Sourced], n: &Notification, timeout: Duration) -> TestResults {
    let sends = sinks.iter().map(|(s, src)| send_one(s, src, n, timeout));
    TestResults {
        idempotency_key: n.idempotency_key.clone(),
        results: futures_util::future::join_all(sends).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_sink_is_tested_once_naming_where_it_comes_from() {
        let hook = |p: u16| Sink::Webhook {
            url: format!("http://127.0.0.1:{p}/h"),
            preset: super::super::config::Preset::Json,
            secret_env: None,
        };
        let cfg = NotifyConfig {
            sinks: vec![hook(1)],
            ..NotifyConfig::default()
        };
        let regs = vec![
            ("aaaa".to_string(), vec![hook(1), hook(2)]),
            ("bbbb".to_string(), vec![hook(2), hook(3)]),
        ];
        let got: Vec<(String, String)> = sinks_to_test(&cfg, &regs)
            .into_iter()
            .map(|(s, src)| (s.label(), src))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "webhook http://127.0.0.1:1/h".to_string(),
                    "notify.yaml".to_string()
                ),
                (
                    "webhook http://127.0.0.1:2/h".to_string(),
                    "aaaa".to_string()
                ),
                (
                    "webhook http://127.0.0.1:3/h".to_string(),
                    "bbbb".to_string()
                ),
            ]
        );
    }

    #[tokio::test]
    async fn a_failing_sink_is_reported_beside_a_working_one() {
        let sinks = vec![
            (
                Sink::Command {
                    command: "cat >/dev/null".into(),
                },
                "notify.yaml".to_string(),
            ),
            (
                Sink::Command {
                    command: "cat >/dev/null; exit 4".into(),
                },
                "k".to_string(),
            ),
        ];
        let n = super::super::message::test("", "", "t-1", "now");
        let r = send_all(&sinks, &n, Duration::from_secs(30)).await;
        assert_eq!(r.results.len(), 2);
        assert!(r.results[0].ok && r.results[0].status == Some(0));
        assert!(!r.results[1].ok);
        assert_eq!(r.results[1].status, Some(4));
        assert!(
            r.results[1]
                .error
                .as_deref()
                .unwrap()
                .contains("exit status: 4")
        );
    }
}
