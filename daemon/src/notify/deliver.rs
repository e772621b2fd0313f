//! Delivering one notification to one sink: request/command construction (pure) apart from
//! execution. Webhooks go over HTTP/1.1 with hyper, https through rustls (ring) verifying
//! against the system's CA store (`SSL_CERT_FILE`/`SSL_CERT_DIR` honoured; Mozilla's bundle
//! when the system has none); commands run as `sh -c CMD` with the notification JSON on stdin.

use super::config::{Preset, Sink};
use crate::process::{self, Cmd, RunError};
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::Full;
use serde_json::Value;
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

/// Build the request for `notification` (the documented JSON) under a preset.
/// `secret` is the signing key when the sink is signed.
pub fn webhook_request(
    url: &str,
    preset: Preset,
    notification: &Value,
    delivery_id: i64,
    secret: Option<&[u8]>,
) -> WebhookRequest {
    let text = |k: &str| {
        notification
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let event = text("event");
    let mut headers = vec![
        (EVENT_HEADER.to_string(), event.clone()),
        (DELIVERY_HEADER.to_string(), delivery_id.to_string()),
    ];
    let body: Vec<u8> = match preset {
        Preset::Json => {
            headers.push(("Content-Type".into(), "application/json".into()));
            serde_json::to_vec(notification).unwrap_or_default()
        }
        Preset::Ntfy => {
            headers.push(("Content-Type".into(), "text/plain; charset=utf-8".into()));
            // ntfy reads Title/Tags headers; header values must be visible ASCII.
            let title: String = text("title")
                .chars()
                .filter(|c| c.is_ascii() && !c.is_ascii_control())
                .collect();
            headers.push(("Title".into(), title));
            headers.push(("Tags".into(), format!("megaplan,{event}")));
            text("message").into_bytes()
        }
        Preset::Slack => {
            headers.push(("Content-Type".into(), "application/json".into()));
            serde_json::to_vec(&serde_json::json!({"text": text("message")})).unwrap_or_default()
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
    let client = webhook_client()?;
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
    let request = b
        .body(Full::new(Bytes::from(req.body.clone())))
        .map_err(|e| format!("cannot build the request: {e}"))?;
    match tokio::time::timeout(timeout, client.request(request)).await {
        Err(_) => Err(format!("no answer within {}s", timeout.as_secs_f64())),
        Ok(Err(e)) => Err(format!("request failed: {}", with_causes(&e))),
        Ok(Ok(resp)) if resp.status().is_success() => Ok(()),
        Ok(Ok(resp)) => Err(format!("the receiver answered HTTP {}", resp.status())),
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
    let cmd = Cmd::new("sh").arg("-c").arg(command).stdin(body.to_vec());
    match process::run(&cmd, timeout).await {
        Err(RunError::Timeout { .. }) => Err(format!(
            "the command did not finish within {}s and was killed",
            timeout.as_secs_f64()
        )),
        Err(RunError::NotFound { .. }) => Err("cannot start sh: not found".to_string()),
        Err(e) => Err(format!("running the command failed: {e}")),
        Ok(o) if o.code == 0 => Ok(()),
        Ok(o) if o.code < 0 => Err("the command was killed by a signal".to_string()),
        Ok(o) => Err(format!("the command exited with exit status: {}", o.code)),
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
            let notification: Value = serde_json::from_str(body).unwrap_or(Value::Null);
            let secret = secret_env
                .as_deref()
                .and_then(|n| std::env::var(n).ok())
                .filter(|v| !v.is_empty());
            let req = webhook_request(
                url,
                *preset,
                &notification,
                delivery_id,
                secret.as_deref().map(str::as_bytes),
            );
            send_webhook(&req, timeout).await
        }
        Sink::Command { command } => run_command(command, body.as_bytes(), timeout).await,
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

    #[test]
    fn presets_shape_the_body_and_the_signature_covers_it() {
        let n = json!({"event": "complete", "title": "the chain is complete", "message": "cloud.yaml: the chain is complete"});
        let j = webhook_request("http://127.0.0.1:1/h", Preset::Json, &n, 7, Some(b"k"));
        assert_eq!(serde_json::from_slice::<Value>(&j.body).unwrap(), n);
        let sig = j
            .headers
            .iter()
            .find(|(k, _)| k == SIGNATURE_HEADER)
            .unwrap();
        assert_eq!(sig.1, signature(b"k", &j.body));
        let ntfy = webhook_request("http://127.0.0.1:1/h", Preset::Ntfy, &n, 7, None);
        assert_eq!(ntfy.body, b"cloud.yaml: the chain is complete");
        assert!(
            ntfy.headers
                .iter()
                .any(|(k, v)| k == "Title" && v == "the chain is complete")
        );
        assert!(!ntfy.headers.iter().any(|(k, _)| k == SIGNATURE_HEADER));
        let slack = webhook_request("http://127.0.0.1:1/h", Preset::Slack, &n, 7, None);
        assert_eq!(
            serde_json::from_slice::<Value>(&slack.body).unwrap(),
            json!({"text": "cloud.yaml: the chain is complete"})
        );
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
        let req = webhook_request("http://127.0.0.1:9/h", Preset::Json, &json!({}), 1, None);
        let e = send_webhook(&req, Duration::from_secs(30))
            .await
            .unwrap_err();
        assert!(e.contains("request failed"), "{e}");
    }
}
