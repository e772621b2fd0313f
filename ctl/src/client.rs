//! HTTP/1.1 over the daemon's Unix socket. All transport code lives here, so replacing
//! hyperlocal (quiet since 2024) is a change to this file only.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyperlocal::{UnixClientExt, UnixConnector, Uri};
use megaplan_cloud_api::paths::SocketSource;
use megaplan_cloud_api::{ErrorBody, ErrorCode};
use serde_json::Value;
use std::path::PathBuf;

pub struct DaemonClient {
    pub socket: PathBuf,
    pub source: SocketSource,
    http: Client<UnixConnector, Full<Bytes>>,
}

/// What went wrong talking to the daemon.
pub enum ClientError {
    /// The socket did not answer: exit code 69 (EX_UNAVAILABLE) with how to start the daemon.
    Unreachable(ErrorBody),
    /// The daemon answered with a structured error.
    Api(ErrorBody),
}

impl DaemonClient {
    pub fn new(socket: PathBuf, source: SocketSource) -> Self {
        DaemonClient {
            socket,
            source,
            http: Client::unix(),
        }
    }

    fn unreachable(&self, why: impl std::fmt::Display) -> ClientError {
        ClientError::Unreachable(
            ErrorBody::new(
                ErrorCode::DaemonUnreachable,
                format!(
                    "cannot reach megaplan-cloudd at {} (from {}): {why}. Start it with `megaplan-cloudd` \
                     (or `systemctl --user start megaplan-cloudd`), or point --socket / $MEGAPLAN_CLOUDD_SOCKET at a running daemon",
                    self.socket.display(),
                    self.source.describe()
                ),
            )
            .with("socket", self.socket.display().to_string()),
        )
    }

    async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<&Value>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let uri: hyper::Uri = Uri::new(&self.socket, path_and_query).into();
        let bytes = match body {
            Some(v) => Bytes::from(serde_json::to_vec(v).unwrap_or_default()),
            None => Bytes::new(),
        };
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(bytes))
            .map_err(|e| self.unreachable(e))?;
        self.http
            .request(req)
            .await
            .map_err(|e| self.unreachable(error_chain(&e)))
    }

    /// A request whose whole answer is one JSON document.
    pub async fn json(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let resp = self.send(method, path_and_query, body).await?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| self.unreachable(e))?
            .to_bytes();
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
            ClientError::Api(ErrorBody::new(
                ErrorCode::ProtocolError,
                format!("the daemon answered HTTP {status} with something that is not JSON ({e}); is it the same version as this client?"),
            ))
        })?;
        if status.is_success() {
            Ok(value)
        } else {
            Err(ClientError::Api(as_error(value, status)))
        }
    }

    /// A streaming request: each NDJSON line is handed to `on_line` as it arrives.
    pub async fn stream(
        &self,
        path_and_query: &str,
        body: &Value,
        mut on_line: impl FnMut(&str),
    ) -> Result<(), ClientError> {
        let resp = self.send(Method::POST, path_and_query, Some(body)).await?;
        self.read_lines(resp, &mut on_line).await
    }

    pub async fn stream_get(
        &self,
        path_and_query: &str,
        mut on_line: impl FnMut(&str),
    ) -> Result<(), ClientError> {
        let resp = self.send(Method::GET, path_and_query, None).await?;
        self.read_lines(resp, &mut on_line).await
    }

    async fn read_lines(
        &self,
        resp: hyper::Response<hyper::body::Incoming>,
        on_line: &mut impl FnMut(&str),
    ) -> Result<(), ClientError> {
        let status = resp.status();
        let mut body = resp.into_body();
        if !status.is_success() {
            let bytes = body
                .collect()
                .await
                .map_err(|e| self.unreachable(e))?
                .to_bytes();
            let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            return Err(ClientError::Api(as_error(v, status)));
        }
        let mut buf: Vec<u8> = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| self.unreachable(format!("the stream broke: {e}")))?;
            if let Some(data) = frame.data_ref() {
                buf.extend_from_slice(data);
                while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=pos).collect();
                    on_line(String::from_utf8_lossy(&line).trim_end());
                }
            }
        }
        if !buf.is_empty() {
            on_line(String::from_utf8_lossy(&buf).trim_end());
        }
        Ok(())
    }
}

fn as_error(v: Value, status: StatusCode) -> ErrorBody {
    serde_json::from_value::<ErrorBody>(v.clone()).unwrap_or_else(|_| {
        ErrorBody::new(
            ErrorCode::ProtocolError,
            format!("the daemon answered HTTP {status}: {v}"),
        )
    })
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Percent-encode a query value.
pub fn enc(v: &str) -> String {
    let mut out = String::new();
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
