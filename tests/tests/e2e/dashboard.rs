//! The dashboard in a real headless Chromium (driven through chromedriver's WebDriver API):
//! `megaplan-cloudctl dashboard --no-open` prints the URL first, the page shows the chain and
//! its state, a change shows up without a reload (Server-Sent Events), and the listener refuses
//! what it must (no token, a foreign Host or Origin, an action without the token), is bound to
//! 127.0.0.1, and closes when the command ends.

use megaplan_cloud_api::wire::TickRecord;
use megaplan_cloud_e2e::rig::{SshRig, write_chain};
use megaplan_cloud_e2e::{skip_or_panic, wait_until};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// The browser flags: headless, no sandbox (root), nothing that reaches the network by itself.
fn browser_args(profile: &Path) -> Vec<String> {
    [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1200,760",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("--user-data-dir={}", profile.display())])
    .collect()
}

/// A child killed (and reaped) when the test ends, however it ends.
struct Owned(Child);

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `megaplan-cloudctl dashboard` from `cmd` and reads the first line it prints (the
/// URL, trimmed); the process is owned (killed on drop).
fn start_dashboard(cmd: &mut Command) -> (Owned, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .expect("megaplan-cloudctl dashboard starts");
    let stdout = child.stdout.take().expect("stdout");
    let child = Owned(child);
    let mut first = String::new();
    BufReader::new(stdout)
        .read_line(&mut first)
        .expect("the first line");
    (child, first.trim().to_string())
}

/// Whether something accepts connections on `127.0.0.1:port`.
fn listening(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// One plain HTTP/1.1 exchange with `127.0.0.1:port`: (status, head, body).
fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: 127.0.0.1:{port}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).expect("send");
    // Read the head, then exactly Content-Length bytes: chromedriver keeps the connection open.
    let mut r = BufReader::new(s);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let length = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok());
    let mut out = Vec::new();
    match length {
        Some(n) => {
            out.resize(n, 0);
            r.read_exact(&mut out).expect("the body");
        }
        None => {
            let _ = r.read_to_end(&mut out);
        }
    }
    let body = String::from_utf8_lossy(&out).into_owned();
    let head = head.trim_end().to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head, body)
}

/// A WebDriver session of chromedriver over a real Chromium.
struct Browser {
    port: u16,
    session: String,
    _driver: Owned,
}

impl Browser {
    fn start(profile: &Path) -> Browser {
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let driver = Owned(driver);
        assert!(
            wait_until(Duration::from_secs(20), || listening(port)),
            "chromedriver never listened"
        );
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": browser_args(profile)}
        }}});
        let (status, _, body) = http(
            port,
            "POST",
            "/session",
            &[("Content-Type", "application/json")],
            &caps.to_string(),
        );
        // WebDriver's own answers (W3C shapes, no api type): read as JSON.
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let session = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session (HTTP {status}): {body}"))
            .to_string();
        Browser {
            port,
            session,
            _driver: driver,
        }
    }

    fn call(&self, method: &str, what: &str, body: Value) -> Value {
        let path = format!("/session/{}/{what}", self.session);
        let (status, _, text) = http(
            self.port,
            method,
            &path,
            &[("Content-Type", "application/json")],
            &body.to_string(),
        );
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        assert_eq!(status, 200, "WebDriver {method} {what}: {text}");
        v["value"].clone()
    }

    fn go(&self, url: &str) {
        self.call("POST", "url", json!({"url": url}));
    }

    fn script(&self, js: &str) -> Value {
        self.call("POST", "execute/sync", json!({"script": js, "args": []}))
    }

    fn live_html(&self) -> String {
        self.script("var l = document.getElementById('live'); return l ? l.outerHTML : document.documentElement.outerHTML;")
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = http(
            self.port,
            "DELETE",
            &format!("/session/{}", self.session),
            &[],
            "",
        );
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The local addresses listening on TCP `port` (from /proc/net/tcp and tcp6), as hex.
fn listening_addresses(port: u16) -> Vec<String> {
    let mut out = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(st)) = (cols.get(1), cols.get(3)) else {
                continue;
            };
            if *st != "0A" {
                continue;
            }
            if let Some((addr, p)) = local.split_once(':')
                && u16::from_str_radix(p, 16).ok() == Some(port)
            {
                out.push(addr.to_string());
            }
        }
    }
    out
}

fn browser_available() -> bool {
    if Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists() {
        return true;
    }
    skip_or_panic(&format!(
        "the dashboard test needs {CHROMIUM} and {CHROMEDRIVER} (Debian packages chromium, chromium-driver; test.sh installs them)"
    ));
    false
}

#[test]
fn the_dashboard_shows_the_fleet_live_in_a_real_browser_and_refuses_strangers() {
    if !browser_available() {
        return;
    }
    let Some(rig) = SshRig::start("", &[]) else {
        return;
    };
    rig.precreate_workspace();
    rig.control(r#"{"step_seconds": 30}"#);
    let spec = write_chain(&rig.project.join("epic"), "chain.yaml", &["m1", "m2"]);
    rig.ctl(&["chain", spec.to_str().unwrap()]).ok();
    rig.ctl(&["register", "--every", "1h"]).ok();
    let key = rig.registrations()[0].registration.key.clone();
    // One stored tick, so the page has a state, a milestone and a timeline to show.
    rig.ctl(&["tick"]).ok();

    let (dashboard, url) = start_dashboard(
        rig.daemon
            .ctl_command(&rig.project, &["dashboard", "--no-open"])
            .stderr(Stdio::piped()),
    );
    let rest = url
        .strip_prefix("http://127.0.0.1:")
        .unwrap_or_else(|| panic!("the first line is the URL on 127.0.0.1: {url:?}"));
    let (port, query) = rest.split_once("/?token=").expect("URL carries the token");
    let port: u16 = port.parse().expect("a port");
    let token = query.to_string();
    assert!(
        token.len() >= 32 && token.chars().all(|c| c.is_ascii_hexdigit()),
        "{token}"
    );

    // Bound to 127.0.0.1 only (7F000001, little-endian in /proc), never a wildcard or tcp6.
    assert_eq!(listening_addresses(port), vec!["0100007F".to_string()]);

    // Refusals.
    let (s, _, _) = http(port, "GET", "/", &[], "");
    assert_eq!(s, 403, "no token");
    let (s, _, _) = http(
        port,
        "GET",
        &format!("/?token={token}"),
        &[("Host", "evil.example")],
        "",
    );
    assert_eq!(s, 403, "foreign Host");
    let (s, _, _) = http(
        port,
        "GET",
        &format!("/?token={token}"),
        &[("Host", &format!("evil.example:{port}"))],
        "",
    );
    assert_eq!(s, 403, "foreign Host with our port");
    let (s, _, _) = http(port, "GET", &format!("/?token={}", "0".repeat(64)), &[], "");
    assert_eq!(s, 403, "wrong token");
    let cookie = format!("megaplan_dashboard={token}");
    let (s, _, _) = http(
        port,
        "GET",
        "/",
        &[("Cookie", &cookie), ("Origin", "http://evil.example")],
        "",
    );
    assert_eq!(s, 403, "foreign Origin");
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let (s, _, _) = http(
        port,
        "POST",
        &format!("/chain/{key}/pause"),
        &form,
        "reason=x",
    );
    assert_eq!(s, 403, "POST without any token");
    let (s, _, _) = http(
        port,
        "POST",
        &format!("/chain/{key}/pause"),
        &[form[0], ("Cookie", &cookie)],
        "reason=x",
    );
    assert_eq!(s, 403, "POST with the cookie but without the form's token");
    let regs = rig.registrations();
    assert!(
        regs[0].paused.is_none(),
        "a refused POST changed nothing: {regs:#?}"
    );
    // The token in the query becomes an HttpOnly SameSite=Strict cookie.
    let (s, head, _) = http(port, "GET", &format!("/?token={token}"), &[], "");
    assert_eq!(s, 200, "{head}");
    let head = head.to_ascii_lowercase();
    assert!(
        head.contains("set-cookie: megaplan_dashboard=")
            && head.contains("httponly")
            && head.contains("samesite=strict"),
        "{head}"
    );
    assert!(!head.contains("access-control-allow-origin"), "{head}");

    // The fleet page in a real browser.
    let profile = tempfile::tempdir().expect("browser profile");
    let browser = Browser::start(profile.path());
    browser.go(&url);
    let mut page = String::new();
    assert!(
        wait_until(Duration::from_secs(30), || {
            page = browser.live_html();
            page.contains(&format!("data-key=\"{key}\""))
        }),
        "the fleet page never showed the registration: {page}"
    );
    assert!(page.contains("project"), "the chain's name: {page}");
    assert!(!page.contains("data-state=\"paused\""), "{page}");
    assert!(page.contains("/2"), "milestone n/2: {page}");
    assert!(
        page.contains("runner-live"),
        "the runner's liveness: {page}"
    );
    assert_eq!(
        browser.script("return window.location.search;"),
        json!(""),
        "the token left the address bar once it was in the cookie"
    );

    // A change without a reload: a mark set in the page survives, the state changes.
    browser.script("window.__notReloaded = true; return true;");
    // A pause from the CLI reaches the open page by itself (the daemon publishes it), no tick.
    rig.ctl(&["pause", "--reason", "dashboard test"]).ok();
    assert!(
        wait_until(Duration::from_secs(30), || {
            page = browser.live_html();
            page.contains("data-state=\"paused\"")
        }),
        "the page never showed the pause: {page}"
    );
    assert_eq!(
        browser.script("return window.__notReloaded === true;"),
        json!(true),
        "the page reloaded"
    );

    // The chain page: the timeline, the explanation, the actions.
    browser.go(&format!("http://127.0.0.1:{port}/chain/{key}"));
    assert!(
        wait_until(Duration::from_secs(30), || {
            page = browser.live_html();
            page.contains("<svg") && page.contains("tick #") && page.contains("action-unpause")
        }),
        "the chain page: {page}"
    );
    // The chain log's last lines, as the last tick read them (no extra round trip).
    let log = browser
        .script("var p = document.querySelector('pre.log'); return p ? p.textContent : null;");
    assert!(
        log.as_str().is_some_and(|t| !t.trim().is_empty()),
        "the chain page shows no chain log lines ({log}): {page}"
    );
    // Unpause from the page (the confirmation accepted), recorded by the daemon.
    browser.script("window.confirm = function () { return true; }; document.getElementById('action-unpause').click(); return true;");
    assert!(
        wait_until(Duration::from_secs(30), || {
            rig.registrations()[0].paused.is_none()
        }),
        "the page's unpause never reached the daemon"
    );
    // Pause from the page: recorded with the actor `dashboard`.
    assert!(
        wait_until(Duration::from_secs(30), || {
            browser.script("return document.getElementById('action-pause') !== null;")
                == json!(true)
        }),
        "the chain page offers Pause once unpaused: {}",
        browser.live_html()
    );
    browser.script("window.confirm = function () { return true; }; document.getElementById('action-pause').click(); return true;");
    assert!(
        wait_until(Duration::from_secs(30), || {
            rig.registrations()[0]
                .paused
                .as_ref()
                .is_some_and(|p| p.paused_by == "dashboard")
        }),
        "the page's pause is recorded with actor dashboard"
    );
    // Tick now from the page: one more stored tick, which the open page then shows.
    let stored = || {
        rig.ctl(&["ticks", "--json", "--limit", "500"])
            .ok()
            .decode::<Vec<TickRecord>>()
            .len()
    };
    let before = stored();
    assert!(
        wait_until(Duration::from_secs(30), || {
            browser.script("return document.getElementById('action-tick') !== null;") == json!(true)
        }),
        "the chain page offers Tick now"
    );
    browser.script("window.confirm = function () { return true; }; document.getElementById('action-tick').click(); return true;");
    assert!(
        wait_until(Duration::from_secs(30), || stored() > before),
        "the page's tick now never ran a tick"
    );
    assert!(
        wait_until(Duration::from_secs(30), || {
            page = browser.live_html();
            page.contains(&format!("tick #{}", before + 1))
        }),
        "the chain page never showed the new tick: {page}"
    );
    let chain_shot = profile.path().join("dashboard-chain.png");

    // A screenshot by Chromium itself, for docs/dashboard.md.
    let shot = profile.path().join("dashboard.png");
    let shot_profile = tempfile::tempdir().expect("profile");
    let mut args = browser_args(shot_profile.path());
    args.push(format!("--screenshot={}", shot.display()));
    args.push(url.clone());
    let out = Command::new(CHROMIUM)
        .args(&args)
        .output()
        .expect("chromium --screenshot");
    assert!(
        shot.exists(),
        "no screenshot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // And one of the chain page (the token in the query works on any page).
    let chain_profile = tempfile::tempdir().expect("profile");
    let mut args = browser_args(chain_profile.path());
    args.push(format!("--screenshot={}", chain_shot.display()));
    args.push(format!("http://127.0.0.1:{port}/chain/{key}?token={token}"));
    let out = Command::new("timeout")
        .args(["-k", "5", "300", CHROMIUM])
        .args(&args)
        .output()
        .expect("chromium --screenshot");
    assert!(
        chain_shot.exists(),
        "no screenshot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    if let Some(keep) = std::env::var_os("MEGAPLAN_DASHBOARD_SCREENSHOT") {
        let keep = PathBuf::from(keep);
        std::fs::copy(&shot, &keep).expect("copy the screenshot");
        std::fs::copy(&chain_shot, keep.with_file_name("dashboard-chain.png"))
            .expect("copy the screenshot");
    }

    // A port already in use is refused, naming the field and the fix.
    let taken = rig.daemon.ctl(
        &rig.project,
        &[],
        &["dashboard", "--no-open", "--port", &port.to_string()],
    );
    let err = String::from_utf8_lossy(&taken.stderr);
    assert_eq!(taken.status.code(), Some(1), "{err}");
    assert!(err.contains("port") && err.contains("--port 0"), "{err}");

    // The listener closes with the command.
    drop(browser);
    drop(dashboard);
    assert!(
        wait_until(Duration::from_secs(30), || !listening(port)),
        "the listener outlived megaplan-cloudctl dashboard"
    );
}

/// On a desktop the client opens the browser through a private file that redirects to the URL:
/// the token is in no argv (every local user can read those). The opener is a stand-in
/// `xdg-open` that records what it was given (there is no desktop here). Ctrl-C ends the command
/// with 0, removes the file and closes the listener.
#[test]
fn on_a_desktop_the_browser_is_opened_without_the_token_in_any_argv_and_ctrl_c_cleans_up() {
    use megaplan_cloud_e2e::Daemon;
    use std::os::unix::fs::PermissionsExt;
    let daemon = Daemon::start(&[], &[]);
    let stubs = tempfile::tempdir().expect("stub dir");
    let record = stubs.path().join("opened");
    let opener = stubs.path().join("xdg-open");
    std::fs::write(
        &opener,
        "#!/bin/sh\n# STAND-IN for a desktop's xdg-open: records its argv, the file's mode and text.\nprintf '%s\\n' \"$@\" > \"$OPENER_RECORD.argv\"\nstat -c %a \"$1\" > \"$OPENER_RECORD.mode\"\ncat \"$1\" > \"$OPENER_RECORD.page\"\ntouch \"$OPENER_RECORD\"\n",
    )
    .expect("stub");
    std::fs::set_permissions(&opener, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let path = format!(
        "{}:{}",
        stubs.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let (mut child, url) = start_dashboard(
        daemon
            .ctl_command(&daemon.dir, &["dashboard"])
            .env("PATH", path)
            .env("DISPLAY", ":0")
            .env("OPENER_RECORD", &record)
            .stderr(Stdio::null()),
    );
    let token = url
        .split_once("?token=")
        .expect("the URL carries the token")
        .1
        .to_string();
    assert!(
        wait_until(Duration::from_secs(30), || record.exists()),
        "the opener was never started"
    );
    let argv = std::fs::read_to_string(record.with_extension("argv")).expect("argv");
    assert!(!argv.contains(&token), "the token reached an argv: {argv}");
    let page_path = PathBuf::from(argv.lines().next().expect("one argument"));
    assert_eq!(
        std::fs::read_to_string(record.with_extension("mode"))
            .expect("mode")
            .trim(),
        "600"
    );
    let page = std::fs::read_to_string(record.with_extension("page")).expect("page");
    assert!(page.contains(&format!("url={url}")), "{page}");
    let port: u16 = url
        .trim_start_matches("http://127.0.0.1:")
        .split('/')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a port");

    // Ctrl-C: exit 0, the file removed, the listener closed.
    // SAFETY: kill has no memory preconditions; the pid is our own child's.
    unsafe { libc::kill(child.0.id() as i32, libc::SIGINT) };
    let status = child.0.wait().expect("the command ends");
    assert_eq!(status.code(), Some(0));
    assert!(
        !page_path.exists(),
        "{} was left behind",
        page_path.display()
    );
    assert!(
        wait_until(Duration::from_secs(30), || !listening(port)),
        "the listener outlived megaplan-cloudctl dashboard"
    );
}
