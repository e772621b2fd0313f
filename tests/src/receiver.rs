//! STAND-IN for a webhook receiver (what a notification sink is in real life: an ntfy server,
//! a Slack incoming webhook, or an operator's own endpoint), because none can exist offline.
//!
//! A plain HTTP/1.1 server on `127.0.0.1:<random port>` that records every request and answers
//! with a scripted status. Facts it follows, from ntfy's publish endpoint
//! (repository binwiederhier/ntfy, docs/publish.md): messages are published with `POST` (or
//! `PUT`) to `/<topic>`, the body is the message, `Title`/`Tags` headers carry the title and
//! tags, a published message is answered `200` with a JSON body; and what it refuses: other
//! methods on a topic (`405` here) and message bodies above its 4096-byte message limit
//! (`413`). Every connection carries one request (`Connection: close`).

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
}

#[derive(Default)]
struct Shared {
    received: Vec<Received>,
    /// Statuses for the next requests (then 200).
    script: VecDeque<u16>,
}

/// A running receiver; stops accepting when dropped.
pub struct Receiver {
    pub port: u16,
    shared: Arc<Mutex<Shared>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Receiver {
    pub fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the receiver on loopback");
        let port = listener.local_addr().expect("receiver address").port();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (sh, st) = (shared.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                if let Ok(c) = conn {
                    let sh = sh.clone();
                    std::thread::spawn(move || serve(c, &sh));
                }
            }
        });
        Receiver { port, shared, stop }
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
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
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve(conn: TcpStream, shared: &Mutex<Shared>) {
    let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(30)));
    let mut reader = BufReader::new(match conn.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
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
    shared
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .received
        .push(Received {
            method,
            path,
            headers,
            body,
            status,
        });
    let mut conn = conn;
    let _ = write!(
        conn,
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
        answer.len()
    );
    let _ = conn.flush();
}
