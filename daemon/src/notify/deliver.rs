//! Delivering one notification to one sink: request/command construction (pure) apart from
//! execution. Webhooks go over HTTP/1.1 with hyper, https through rustls (ring) verifying
//! against the system's CA store (`SSL_CERT_FILE`/`SSL_CERT_DIR` honoured; Mozilla's bundle
//! when the system has none); commands run as `sh -c CMD` with the notification JSON on stdin.

use super::config::{Preset, Sink};
use crate::process::{self, Cmd, RunError};
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::Full;
use megaplan_cloud_api::notification::NotificationEvent;
use megaplan_cloud_api::notification::{IDEMPOTENCY_HEADER, Notification};
use megaplan_cloud_api::sorted::Sorted;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::time::Duration;

/// Header carrying `sha256=<hex HMAC-SHA256 of the body>` when the sink is signed.
pub const SIGNATURE_HEADER: &str = "X-Megaplan-Signature";
pub const EVENT_HEADER: &str = "X-Megaplan-Event";
pub const DELIVERY_HEADER: &str = "X-Megaplan-Delivery";

/// `sha256=<hex>` of `body` under `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        // HMAC accepts keys of any length; this arm is unreachable in practice.
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// A webhook request ready to send: method POST, these headers, this body.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookRequest {
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// ntfy's message limit (its default `message-size-limit`): a longer body is refused there.
const NTFY_MESSAGE_LIMIT: usize = 4096;
/// Slack's limits: a header block's text, a section's text.
const SLACK_HEADER_LIMIT: usize = 150;
const SLACK_SECTION_LIMIT: usize = 3000;

/// `text` cut to at most `max` bytes on a character boundary, `…` marking a cut.
fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while end > 0 && !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", text.get(..end).unwrap_or_default())
}

/// A header value as HTTP allows it: visible ASCII and spaces only.
fn header_text(text: &str) -> String {
    text.chars()
        .filter(|c| c.is_ascii() && !c.is_ascii_control())
        .collect()
}

/// ntfy's publish headers (docs.ntfy.sh/publish): `Title`, `Priority` (`high` when a person
/// is needed, so the phone rings through), `Tags` (comma-separated; `warning` shows as an
/// emoji), `Click` (opened when the notification is tapped: the PR).
pub fn ntfy_headers(n: &Notification) -> Vec<(String, String)> {
    let mut tags = vec!["megaplan".to_string(), n.event.as_str().to_string()];
    if n.needs_person {
        tags.insert(0, "warning".to_string());
    }
    let mut h = vec![
        ("Title".to_string(), header_text(&n.title)),
        (
            "Priority".to_string(),
            if n.needs_person { "high" } else { "default" }.to_string(),
        ),
        ("Tags".to_string(), tags.join(",")),
    ];
    if let Some(url) = n.pr.as_ref().and_then(|p| p.url.as_deref()) {
        h.push(("Click".to_string(), header_text(url)));
    }
    h
}

/// A Slack incoming-webhook message (Block Kit): `text` is the plain fallback Slack shows in
/// notifications. Sent with its keys sorted ([`Sorted`]), as it was before it was typed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SlackMessage {
    pub text: String,
    pub blocks: Vec<SlackBlock>,
}

/// The Block Kit blocks a notification uses.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SlackBlock {
    Header {
        text: SlackText,
    },
    Section {
        text: SlackText,
        #[serde(skip_serializing_if = "Option::is_none")]
        accessory: Option<SlackButton>,
    },
    Context {
        elements: Vec<SlackText>,
    },
}

/// A Block Kit text object.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SlackText {
    PlainText { text: String },
    Mrkdwn { text: String },
}

/// A link button (`"type": "button"`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename = "button")]
pub struct SlackButton {
    pub text: SlackText,
    pub url: String,
}

/// The Slack message of a notification: a header (the title), a section with the chain,
/// milestone, state and fix (with a link button to the PR when there is one), and a context
/// line with the cloud.yaml path.
pub fn slack_message(n: &Notification) -> SlackMessage {
    let mut head = vec![format!("*{}*", n.chain)];
    if let Some(m) = &n.milestone {
        head.push(super::message::milestone_text(m));
    }
    if let Some(s) = &n.effective_status {
        head.push(format!("`{s}`"));
    }
    let mut body = if n.chain.is_empty() {
        // A digest or a test: the message is the whole story.
        n.message.clone()
    } else {
        head.join(" · ")
    };
    if let Some(pr) = &n.pr {
        body.push_str(&match &pr.url {
            Some(u) => format!("\nPR <{u}|#{}>", pr.number),
            None => format!("\nPR #{}", pr.number),
        });
    }
    if let Some(f) = &n.fix {
        body.push_str(&format!("\n*Fix:* {f}"));
    }
    let accessory =
        n.pr.as_ref()
            .and_then(|p| p.url.as_deref().map(|u| (p.number, u)))
            .map(|(number, url)| SlackButton {
                text: SlackText::PlainText {
                    text: format!("Open PR #{number}"),
                },
                url: url.to_string(),
            });
    let mut blocks = vec![
        SlackBlock::Header {
            text: SlackText::PlainText {
                text: cut(&n.title, SLACK_HEADER_LIMIT),
            },
        },
        SlackBlock::Section {
            text: SlackText::Mrkdwn {
                text: cut(&body, SLACK_SECTION_LIMIT),
            },
            accessory,
        },
    ];
    if !n.cloud_yaml.is_empty() {
        blocks.push(SlackBlock::Context {
            elements: vec![SlackText::Mrkdwn {
                text: cut(&n.cloud_yaml, SLACK_SECTION_LIMIT),
            }],
        });
    }
    SlackMessage {
        text: n.message.clone(),
        blocks,
    }
}

/// Build the request for one notification under a preset. `stored` is the notification's JSON
/// as queued (the `json` preset sends it as it is); `secret` is the signing key when the sink
/// is signed.
pub fn webhook_request(
    url: &str,
    preset: Preset,
    notification: &Notification,
    stored: &[u8],
    delivery_id: i64,
    secret: Option<&[u8]>,
) -> WebhookRequest {
    let mut headers = vec![
        (
            EVENT_HEADER.to_string(),
            notification.event.as_str().to_string(),
        ),
        (DELIVERY_HEADER.to_string(), delivery_id.to_string()),
    ];
    if !notification.idempotency_key.is_empty() {
        headers.push((
            IDEMPOTENCY_HEADER.to_string(),
            header_text(&notification.idempotency_key),
        ));
    }
    let body: Vec<u8> = match preset {
        Preset::Json => {
            headers.push(("Content-Type".into(), "application/json".into()));
            stored.to_vec()
        }
        Preset::Ntfy => {
            headers.push(("Content-Type".into(), "text/plain; charset=utf-8".into()));
            headers.extend(ntfy_headers(notification));
            cut(&notification.message, NTFY_MESSAGE_LIMIT).into_bytes()
        }
        Preset::Slack => {
            headers.push(("Content-Type".into(), "application/json".into()));
            serde_json::to_vec(&Sorted(slack_message(notification))).unwrap_or_default()
        }
    };
    if let Some(secret) = secret {
        headers.push((SIGNATURE_HEADER.to_string(), signature(secret, &body)));
    }
    WebhookRequest {
        url: url.to_string(),
        headers,
        body,
    }
}

type WebhookClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

/// One client for the daemon's life (its connection pool and the CA store loaded once), or why
/// none could be built (then every webhook delivery fails with that reason, and is retried).
fn webhook_client() -> Result<&'static WebhookClient, String> {
    static CLIENT: std::sync::OnceLock<Result<WebhookClient, String>> = std::sync::OnceLock::new();
    let client = CLIENT.get_or_init(|| {
        use hyper_util::client::legacy::Client;
        use hyper_util::rt::TokioExecutor;
        let provider = || std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let tls = match builder.with_provider_and_native_roots(provider()) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(
                    "no usable system CA certificates ({e}); https webhooks are verified against Mozilla's bundle"
                );
                hyper_rustls::HttpsConnectorBuilder::new()
                    .with_provider_and_webpki_roots(provider())
                    .map_err(|e| format!("cannot set up TLS for webhooks: {e}"))?
            }
        };
        let connector = tls.https_or_http().enable_http1().build();
        Ok(Client::builder(TokioExecutor::new()).build(connector))
    });
    client.as_ref().map_err(Clone::clone)
}

/// Send one webhook request; `Ok` on a 2xx answer.
pub async fn send_webhook(req: &WebhookRequest, timeout: Duration) -> Result<(), String> {
    send_webhook_status(req, timeout).await.1
}

/// Send one webhook request: the HTTP status when one came back, and `Ok` on a 2xx answer.
pub async fn send_webhook_status(
    req: &WebhookRequest,
    timeout: Duration,
) -> (Option<u16>, Result<(), String>) {
    let client = match webhook_client() {
        Ok(c) => c,
        Err(e) => return (None, Err(e)),
    };
    let mut b = hyper::Request::builder()
        .method(hyper::Method::POST)
        .uri(&req.url)
        .header(
            "User-Agent",
            concat!("megaplan-cloudd/", env!("CARGO_PKG_VERSION")),
        );
    for (k, v) in &req.headers {
        b = b.header(k.as_str(), v.as_str());
    }
    let request = match b.body(Full::new(Bytes::from(req.body.clone()))) {
        Ok(r) => r,
        Err(e) => return (None, Err(format!("cannot build the request: {e}"))),
    };
    match tokio::time::timeout(timeout, client.request(request)).await {
        Err(_) => (
            None,
            Err(format!("no answer within {}s", timeout.as_secs_f64())),
        ),
        Ok(Err(e)) => (None, Err(format!("request failed: {}", with_causes(&e)))),
        Ok(Ok(resp)) if resp.status().is_success() => (Some(resp.status().as_u16()), Ok(())),
        Ok(Ok(resp)) => (
            Some(resp.status().as_u16()),
            Err(format!("the receiver answered HTTP {}", resp.status())),
        ),
    }
}

/// An error and its sources (hyper's own text hides the TLS or connect cause behind
/// "client error (connect)"), e.g. "client error (Connect): invalid peer certificate: UnknownIssuer".
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

/// Run a command sink: `sh -c CMD`, notification JSON on stdin; `Ok` on exit 0. The shell runs
/// in its own process group and a timeout kills the whole group, so `sleep 300; echo done`
/// leaves no `sleep` behind (killing only `sh` would orphan it).
pub async fn run_command(command: &str, body: &[u8], timeout: Duration) -> Result<(), String> {
    run_command_status(command, body, timeout).await.1
}

/// [`run_command`] with the exit status, when the command exited.
pub async fn run_command_status(
    command: &str,
    body: &[u8],
    timeout: Duration,
) -> (Option<i32>, Result<(), String>) {
    let cmd = Cmd::new("sh").arg("-c").arg(command).stdin(body.to_vec());
    match process::run(&cmd, timeout).await {
        Err(RunError::Timeout { .. }) => (
            None,
            Err(format!(
                "the command did not finish within {}s and was killed",
                timeout.as_secs_f64()
            )),
        ),
        Err(RunError::NotFound { .. }) => (None, Err("cannot start sh: not found".to_string())),
        Err(e) => (None, Err(format!("running the command failed: {e}"))),
        Ok(o) if o.code == 0 => (Some(0), Ok(())),
        Ok(o) if o.code < 0 => (None, Err("the command was killed by a signal".to_string())),
        Ok(o) => (
            Some(o.code),
            Err(format!("the command exited with exit status: {}", o.code)),
        ),
    }
}

/// Deliver `body` (the notification JSON text) to `sink`.
pub async fn deliver(
    sink: &Sink,
    body: &str,
    delivery_id: i64,
    timeout: Duration,
) -> Result<(), String> {
    match sink {
        Sink::Webhook {
            url,
            preset,
            secret_env,
        } => {
            let notification = parse_stored(body);
            let secret = secret_env
                .as_deref()
                .and_then(|n| std::env::var(n).ok())
                .filter(|v| !v.is_empty());
            let req = webhook_request(
                url,
                *preset,
                &notification,
                body.as_bytes(),
                delivery_id,
                secret.as_deref().map(str::as_bytes),
            );
            send_webhook(&req, timeout).await
        }
        Sink::Command { command } => run_command(command, body.as_bytes(), timeout).await,
    }
}

/// A queued body read back as the notification. A row that does not read (queued by a
/// version whose body this one cannot parse) still goes out: its JSON as it is, and for ntfy
/// and Slack its `event`, `title` and `message` as far as they can be found.
pub fn parse_stored(body: &str) -> Notification {
    if let Ok(n) = serde_json::from_str::<Notification>(body) {
        return n;
    }
    let found: Salvaged = serde_json::from_str(body).unwrap_or_default();
    let text = |t: Lenient<String>| match t {
        Lenient::Read(s) => s,
        Lenient::Other(_) => String::new(),
    };
    let event = match found.event {
        Lenient::Read(e) => e,
        Lenient::Other(_) => NotificationEvent::Test,
    };
    let mut n = super::message::test(
        "",
        "",
        &text(found.idempotency_key),
        &text(found.created_at),
    );
    n.event = event;
    n.needs_person = event.needs_person();
    n.title = text(found.title);
    n.message = text(found.message);
    n.cloud_yaml = text(found.cloud_yaml);
    n
}

/// What [`parse_stored`] salvages of a body that does not read as a notification: each field
/// it can read, every other one left out.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Salvaged {
    event: Lenient<NotificationEvent>,
    idempotency_key: Lenient<String>,
    created_at: Lenient<String>,
    title: Lenient<String>,
    message: Lenient<String>,
    cloud_yaml: Lenient<String>,
}

/// A field read as `T` when it is one, else skipped.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Lenient<T> {
    Read(T),
    Other(serde::de::IgnoredAny),
}

impl<T> Default for Lenient<T> {
    fn default() -> Self {
        Lenient::Other(serde::de::IgnoredAny)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn signature_matches_a_known_vector() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    /// A notification as the watcher makes it: awaiting PR #7 of a GitHub repository.
    fn awaiting() -> Notification {
        let mut n = crate::notify::message::test("k", "/home/op/proj/cloud.yaml", "abc123", "t");
        n.event = megaplan_cloud_api::notification::NotificationEvent::AwaitingPrMerge;
        n.needs_person = true;
        n.chain = "proj".into();
        n.milestone = Some(megaplan_cloud_api::report::ChainPosition {
            number: 1,
            count: 2,
            label: Some("m1".into()),
        });
        n.effective_status = Some("awaiting_pr_merge".into());
        n.pr = Some(megaplan_cloud_api::notification::PrLink {
            number: 7,
            url: Some("https://github.com/o/r/pull/7".into()),
        });
        n.fix = Some("merge PR #7".into());
        n.title = "proj: the chain waits for a pull request to be merged".into();
        n.message = "proj · milestone 1/2 (m1) · awaiting_pr_merge\nthe chain waits".into();
        n
    }

    fn header<'a>(r: &'a WebhookRequest, name: &str) -> Option<&'a str> {
        r.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn the_json_preset_sends_the_stored_body_signed_with_the_key_header() {
        let n = awaiting();
        let stored = serde_json::to_vec(&n).unwrap();
        let j = webhook_request(
            "http://127.0.0.1:1/h",
            Preset::Json,
            &n,
            &stored,
            7,
            Some(b"k"),
        );
        assert_eq!(j.body, stored);
        assert_eq!(
            header(&j, SIGNATURE_HEADER),
            Some(signature(b"k", &j.body).as_str())
        );
        assert_eq!(header(&j, "X-Idempotency-Key"), Some("abc123"));
        assert_eq!(header(&j, EVENT_HEADER), Some("awaiting_pr_merge"));
        assert_eq!(header(&j, DELIVERY_HEADER), Some("7"));
    }

    /// ntfy: the message as the body; Title, Priority high for a person, Tags, Click the PR.
    #[test]
    fn ntfy_gets_title_priority_tags_and_the_pr_to_click() {
        let n = awaiting();
        let r = webhook_request("http://127.0.0.1:1/h", Preset::Ntfy, &n, b"{}", 7, None);
        assert_eq!(r.body, n.message.as_bytes());
        assert_eq!(
            header(&r, "Title"),
            Some("proj: the chain waits for a pull request to be merged")
        );
        assert_eq!(header(&r, "Priority"), Some("high"));
        assert_eq!(
            header(&r, "Tags"),
            Some("warning,megaplan,awaiting_pr_merge")
        );
        assert_eq!(header(&r, "Click"), Some("https://github.com/o/r/pull/7"));
        assert_eq!(header(&r, "X-Idempotency-Key"), Some("abc123"));
        assert_eq!(header(&r, SIGNATURE_HEADER), None);
        let mut done = crate::notify::message::test("", "", "t1", "t");
        done.title = "proj: the chain is complete ✓".into();
        let r = webhook_request("http://127.0.0.1:1/h", Preset::Ntfy, &done, b"{}", 8, None);
        assert_eq!(header(&r, "Priority"), Some("default"));
        assert_eq!(header(&r, "Title"), Some("proj: the chain is complete "));
        assert_eq!(header(&r, "Click"), None);
        done.message = "x".repeat(10_000);
        let r = webhook_request("http://127.0.0.1:1/h", Preset::Ntfy, &done, b"{}", 8, None);
        assert!(r.body.len() <= NTFY_MESSAGE_LIMIT);
    }

    /// Slack: Block Kit, pinned: header, a section with the PR button, the cloud.yaml as context.
    #[test]
    fn slack_gets_block_kit_sections_with_a_link_button() {
        let n = awaiting();
        let r = webhook_request("http://127.0.0.1:1/h", Preset::Slack, &n, b"{}", 7, None);
        let got = String::from_utf8(r.body).unwrap();
        // Byte for byte what the hand-built body was (keys sorted at every level).
        assert_eq!(
            got,
            serde_json::to_string(&json!({
                "text": "proj · milestone 1/2 (m1) · awaiting_pr_merge\nthe chain waits",
                "blocks": [
                    {"type": "header", "text": {"type": "plain_text", "text": "proj: the chain waits for a pull request to be merged"}},
                    {"type": "section",
                     "text": {"type": "mrkdwn", "text": "*proj* · milestone 1/2 (m1) · `awaiting_pr_merge`\nPR <https://github.com/o/r/pull/7|#7>\n*Fix:* merge PR #7"},
                     "accessory": {"type": "button", "text": {"type": "plain_text", "text": "Open PR #7"}, "url": "https://github.com/o/r/pull/7"}},
                    {"type": "context", "elements": [{"type": "mrkdwn", "text": "/home/op/proj/cloud.yaml"}]}
                ]
            }))
            .unwrap()
        );
    }

    #[test]
    fn a_body_of_another_version_still_goes_out() {
        let n = parse_stored(r#"{"event":"complete","title":"done","message":"cloud.yaml: done"}"#);
        assert_eq!(n.title, "done");
        assert_eq!(n.message, "cloud.yaml: done");
        assert_eq!(n.event.as_str(), "complete");
        // A field of the wrong type is skipped, the rest still read.
        let n =
            parse_stored(r#"{"event":"no_such_event","title":7,"message":"m","cloud_yaml":"/c"}"#);
        assert_eq!(n.event, NotificationEvent::Test);
        assert_eq!((n.title.as_str(), n.message.as_str()), ("", "m"));
        assert_eq!(n.cloud_yaml, "/c");
        let n = parse_stored("not json");
        assert_eq!((n.title.as_str(), n.message.as_str()), ("", ""));
    }

    #[tokio::test]
    async fn a_command_gets_the_json_on_stdin_and_its_exit_status_counts() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("got");
        let cmd = format!("cat > {}", crate::shell::quote(&out.display().to_string()));
        run_command(&cmd, b"{\"event\":\"complete\"}", Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"{\"event\":\"complete\"}");
        let e = run_command("exit 3", b"", Duration::from_secs(30))
            .await
            .unwrap_err();
        assert!(e.contains("exit status: 3"), "{e}");
    }

    #[tokio::test]
    async fn an_unreachable_receiver_is_an_error_not_a_hang() {
        // Port 9 on loopback (discard) is closed here: the connection is refused.
        let req = webhook_request(
            "http://127.0.0.1:9/h",
            Preset::Json,
            &parse_stored("{}"),
            b"{}",
            1,
            None,
        );
        let e = send_webhook(&req, Duration::from_secs(30))
            .await
            .unwrap_err();
        assert!(e.contains("request failed"), "{e}");
    }
}
