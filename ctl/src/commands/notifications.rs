//! `megaplan-cloudctl notifications test [KEY|--cloud-yaml P]`: "do my notifications reach
//! me?" The daemon sends one test notification to every sink (its own notify.yaml sinks and
//! the registration's, or every registration's outside a project) and answers with each sink's
//! result; this prints one row per sink — result, sink, HTTP or exit status, time taken, where
//! the sink comes from — then each failure's reason. `doctor --send-test` uses the same route.

use crate::columns::{self, Cell, Column, Fit};
use crate::output;
use hyper::Method;
use megaplan_cloud_api::notification::{TestRequest, TestResults};
use megaplan_cloud_api::routes;
use megaplan_cloudctl::client::{ClientError, DaemonClient};
use std::io::Write;

const COLUMNS: [Column; 5] = [
    Column {
        header: "RESULT",
        fit: Fit::Keep,
    },
    Column {
        header: "SINK",
        fit: Fit::Cut { min: 16 },
    },
    Column {
        header: "STATUS",
        fit: Fit::Keep,
    },
    Column {
        header: "TIME",
        fit: Fit::Keep,
    },
    Column {
        header: "FROM",
        fit: Fit::Cut { min: 6 },
    },
];

/// Ask the daemon to test every sink (`cloud_yaml`: a registration key or cloud.yaml path;
/// `None`: every registration's sinks).
pub async fn send(
    client: &DaemonClient,
    cloud_yaml: Option<&str>,
) -> Result<TestResults, ClientError> {
    let req = TestRequest {
        cloud_yaml: cloud_yaml.map(str::to_string),
    };
    let body = serde_json::to_value(&req).unwrap_or_default();
    client
        .typed(Method::POST, routes::NOTIFICATIONS_TEST, Some(&body))
        .await
}

/// `1.2s`, `340ms`.
fn latency(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else {
        format!("{:.1}s", ms as f64 / 1000.0)
    }
}

/// The results for a person, fitted to `width` columns (`None`: whole).
pub fn text(r: &TestResults, width: Option<usize>, color: bool) -> String {
    if r.results.is_empty() {
        return "no notification sinks to test: add them to the daemon's notify.yaml (`sinks:`) or `register --notify-url URL`\n".to_string();
    }
    let rows: Vec<Vec<Cell>> = r
        .results
        .iter()
        .map(|s| {
            vec![
                if s.ok {
                    Cell::painted("ok", "32")
                } else {
                    Cell::painted("error", "1;31")
                },
                Cell::plain(match &s.preset {
                    Some(p) if p != "json" => format!("{} ({p})", s.sink),
                    _ => s.sink.clone(),
                }),
                Cell::plain(s.status.map_or_else(|| "-".to_string(), |c| c.to_string())),
                Cell::plain(latency(s.latency_ms)),
                Cell::plain(s.source.clone()),
            ]
        })
        .collect();
    let mut out = columns::render(&COLUMNS, &rows, width, color).join("\n");
    out.push('\n');
    let failed: Vec<_> = r.results.iter().filter(|s| !s.ok).collect();
    for s in &failed {
        let why = s.error.as_deref().unwrap_or("failed");
        for line in columns::wrap(&format!("{}: {why}", s.sink), width, "  ", "    ") {
            out.push_str(&line);
            out.push('\n');
        }
    }
    let ok = r.results.len() - failed.len();
    out.push_str(&format!(
        "{ok} of {} sink{} answered",
        r.results.len(),
        if r.results.len() == 1 { "" } else { "s" }
    ));
    if failed.is_empty() {
        out.push_str("; real notifications go the same way\n");
    } else {
        out.push_str("; check the failing URL or command\n");
    }
    out
}

/// `notifications test`: print the results (JSON for scripts, the table for a person); exit
/// 0 when every sink answered, 1 otherwise (also when there is no sink).
pub async fn test(client: &DaemonClient, cloud_yaml: Option<&str>) -> Result<i32, ClientError> {
    let r = send(client, cloud_yaml).await?;
    let code = i32::from(r.results.is_empty() || r.results.iter().any(|s| !s.ok));
    if output::json_mode() {
        output::print_json_doc(&serde_json::to_value(&r).unwrap_or_default());
        return Ok(code);
    }
    let shown = text(&r, Some(columns::terminal_width()), output::get().color);
    let mut o = std::io::stdout().lock();
    let _ = o.write_all(shown.as_bytes());
    let _ = o.flush();
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use megaplan_cloud_api::notification::SinkTestResult;

    fn result(sink: &str, ok: bool, status: Option<i64>, error: Option<&str>) -> SinkTestResult {
        SinkTestResult {
            sink: sink.into(),
            preset: Some("json".into()),
            source: "notify.yaml".into(),
            ok,
            status,
            latency_ms: 1234,
            error: error.map(str::to_string),
        }
    }

    #[test]
    fn each_sink_is_one_row_and_failures_say_why_within_80_columns() {
        let r = TestResults {
            idempotency_key: "test-1".into(),
            results: vec![
                result(
                    "webhook https://ntfy.sh/megaplan-chains-of-a-very-long-topic-name-indeed",
                    true,
                    Some(200),
                    None,
                ),
                result(
                    "webhook http://127.0.0.1:8080/hook",
                    false,
                    Some(500),
                    Some("the receiver answered HTTP 500 Internal Server Error"),
                ),
            ],
        };
        let t = text(&r, Some(80), false);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines.iter().all(|l| l.chars().count() <= 80), "{t}");
        assert!(lines[0].starts_with("RESULT"), "{t}");
        assert!(
            lines[1].starts_with("ok ") && lines[1].contains("200") && lines[1].contains("1.2s"),
            "{t}"
        );
        assert!(
            lines[2].starts_with("error") && lines[2].contains("500"),
            "{t}"
        );
        assert!(t.contains("HTTP 500"), "{t}");
        assert!(t.contains("1 of 2 sinks answered"), "{t}");
        let none = TestResults {
            idempotency_key: "t".into(),
            results: vec![],
        };
        assert!(text(&none, Some(80), false).contains("notify.yaml"));
    }
}
