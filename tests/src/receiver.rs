//! STAND-IN for a webhook receiver (what a notification sink is in real life: an ntfy server,
//! a Slack incoming webhook, or an operator's own endpoint), because none can exist offline.
//!
//! A plain HTTP/1.1 server on `127.0.0.1:<random port>` that records every request and answers
//! with a scripted status. Facts it follows, from ntfy's publish endpoint
//! (repository binwiederhier/ntfy, docs/publish.md): messages are published with `POST` (or
//! `PUT`) to `/<topic>`, the body is the message, `Title`/`Tags` headers carry the title and
//! tags, a published message is answered `200` with a JSON body; and what it refuses: other
//! methods on a topic (`405` here) and message bodies above its 4096-byte message limit
//! (`413`). Every connection carries one request (`Connection: close`). [`Receiver::start_tls`]
//! serves the same over TLS (rustls) with a given certificate, as ntfy.sh and Slack do: a
//! client that does not trust the certificate's CA never gets to send its request.
//! [`Receiver::start_blackhole`] is the failure the fleet tests need: a receiver whose server
//! accepts the TCP connection and then never answers (a hung ntfy or proxy), so a client only
//! learns of it from its own timeout.
//! [`Receiver::start_blackhole`] is the dead receiver of issue 21: it accepts every connection,
//! reads the request and never answers (until [`Receiver::hang_up`]).

use megaplan_cloud_api::notification::Notification;
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// The message limit of the real receiver this stands in for (ntfy's default).
pub const MESSAGE_LIMIT: usize = 4096;

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The status this request was answered with.
    pub status: u16,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The body decoded as the daemon's notification (`api::notification::Notification`);
    /// `None` for any other body (a preset's text, a request that is not one).
    pub fn notification(&self) -> Option<Notification> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The notification's event name; `?` when the body is not a notification.
    pub fn event(&self) -> String {
        self.notification()
            .map_or_else(|| "?".to_string(), |n| n.event.to_string())
    }
}

#[derive(Default)]
struct Shared {
    received: Vec<Received>,
    /// Statuses for the next requests (then 200).
    script: VecDeque<u16>,
    /// Blackhole: never answer.
    blackhole: bool,
    /// Blackhole: drop the held connections, and every later one right after its request.
    hung_up: bool,
    /// Blackhole: connections held open now, and the most ever held at once.
    held: usize,
    max_held: usize,
}

/// A running receiver; stops accepting when dropped.
pub struct Receiver {
    pub port: u16,
    tls: bool,
    shared: Arc<Mutex<Shared>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Receiver {
    pub fn start() -> Receiver {
        Receiver::serve_with(None)
    }

    /// A receiver that accepts every connection, reads its request (recorded with status 0)
    /// and never answers: the connection stays open until the client closes it or
    /// [`Receiver::hang_up`].
    pub fn start_blackhole() -> Receiver {
        let r = Receiver::serve_with(None);
        r.shared.lock().unwrap_or_else(|p| p.into_inner()).blackhole = true;
        r
    }

    /// Blackhole: close the connections held open, and from now on close each connection
    /// right after reading its request, still without an answer.
    pub fn hang_up(&self) {
        self.shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .hung_up = true;
    }

    /// Blackhole: connections held open (request read, no answer) right now.
    pub fn held(&self) -> usize {
        self.shared.lock().unwrap_or_else(|p| p.into_inner()).held
    }

    /// Blackhole: the most connections ever held open at once.
    pub fn max_held(&self) -> usize {
        self.shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .max_held
    }

    /// The receiver over TLS, presenting `cert` (PEM chain) with `key` (PEM); see
    /// [`crate::tls::server_cert`].
    pub fn start_tls(cert: &std::path::Path, key: &std::path::Path) -> Receiver {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .and_then(|i| i.collect::<Result<_, _>>())
            .unwrap_or_else(|e| panic!("read {}: {e}", cert.display()));
        let key = PrivateKeyDer::from_pem_file(key)
            .unwrap_or_else(|e| panic!("read {}: {e}", key.display()));
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .unwrap_or_else(|e| panic!("TLS server config: {e}"));
        Receiver::serve_with(Some(Arc::new(config)))
    }

    fn serve_with(tls: Option<Arc<rustls::ServerConfig>>) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the receiver on loopback");
        let port = listener.local_addr().expect("receiver address").port();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (sh, st) = (shared.clone(), stop.clone());
        let is_tls = tls.is_some();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                if let Ok(c) = conn {
                    let sh = sh.clone();
                    let tls = tls.clone();
                    std::thread::spawn(move || {
                        let _ = c.set_read_timeout(Some(std::time::Duration::from_secs(30)));
                        match tls {
                            None => {
                                let handle = c.try_clone().ok();
                                serve(c, &sh, handle.as_ref())
                            }
                            Some(cfg) => {
                                let Ok(session) = rustls::ServerConnection::new(cfg) else {
                                    return;
                                };
                                serve(rustls::StreamOwned::new(session, c), &sh, None);
                            }
                        }
                    });
                }
            }
        });
        Receiver {
            port,
            tls: is_tls,
            shared,
            stop,
        }
    }

    /// `http://127.0.0.1:<port><path>` (`https://` for [`Receiver::start_tls`]).
    pub fn url(&self, path: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}{path}", self.port)
    }

    /// Answer the next requests with these statuses (e.g. `[500, 500, 500]`), then 200.
    pub fn fail_next(&self, statuses: &[u16]) {
        let mut s = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        s.script.extend(statuses.iter().copied());
    }

    /// Forget the scripted failures still queued: answer 200 from now on.
    pub fn succeed_from_now(&self) {
        self.shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .script
            .clear();
    }

    /// Every request so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .received
            .clone()
    }

    /// Requests answered 2xx.
    pub fn accepted(&self) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| (200..300).contains(&r.status))
            .collect()
    }

    /// The event names of the notifications answered 2xx, in arrival order.
    pub fn events(&self) -> Vec<String> {
        self.accepted().iter().map(Received::event).collect()
    }

    /// How many notifications of `event` were answered 2xx.
    pub fn count(&self, event: &str) -> usize {
        self.events().iter().filter(|e| *e == event).count()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Blackhole: hold the connection without answering until the client closes it or the
/// receiver hangs up. `tcp` is the plain socket (its read timeout lets the wait look up).
fn hold<S: Read>(reader: &mut BufReader<S>, shared: &Mutex<Shared>, tcp: Option<&TcpStream>) {
    {
        let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
        s.held += 1;
        s.max_held = s.max_held.max(s.held);
    }
    if let Some(t) = tcp {
        let _ = t.set_read_timeout(Some(std::time::Duration::from_millis(100)));
    }
    loop {
        if shared.lock().unwrap_or_else(|p| p.into_inner()).hung_up {
            break;
        }
        let mut byte = [0u8; 1];
        match reader.read(&mut byte) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    shared.lock().unwrap_or_else(|p| p.into_inner()).held -= 1;
}

/// Keeps `request` for the test to read.
fn record(shared: &Mutex<Shared>, request: Received) {
    shared
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .received
        .push(request);
}

fn serve<S: Read + Write>(conn: S, shared: &Mutex<Shared>, tcp: Option<&TcpStream>) {
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    let mut length = 0usize;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 {
            break;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            let k = k.trim().to_ascii_lowercase();
            let v = v.trim().to_string();
            if k == "content-length" {
                length = v.parse().unwrap_or(0);
            }
            headers.push((k, v));
        }
    }
    let mut body = vec![0u8; length.min(1 << 20)];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let (blackhole, hung_up) = {
        let s = shared.lock().unwrap_or_else(|p| p.into_inner());
        (s.blackhole, s.hung_up)
    };
    if blackhole {
        record(
            shared,
            Received {
                method,
                path,
                headers,
                body,
                status: 0,
            },
        );
        if !hung_up {
            hold(&mut reader, shared, tcp);
        }
        // Closed without an answer.
        return;
    }
    let status = if method != "POST" && method != "PUT" {
        405
    } else if body.len() > MESSAGE_LIMIT {
        413
    } else {
        let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
        s.script.pop_front().unwrap_or(200)
    };
    let answer = if status == 200 {
        r#"{"id":"standin","event":"message"}"#
    } else {
        r#"{"code":1,"error":"scripted failure"}"#
    };
    record(
        shared,
        Received {
            method,
            path,
            headers,
            body,
            status,
        },
    );
    let mut conn = reader.into_inner();
    let _ = write!(
        conn,
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
        answer.len()
    );
    let _ = conn.flush();
}
