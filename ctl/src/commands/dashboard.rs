//! `megaplan-cloudctl dashboard`: ask the daemon to serve the dashboard on 127.0.0.1, print its
//! URL (with the access token) as the first line of stdout, open a browser on a desktop, and
//! hold the request open until Ctrl-C: the daemon closes the listener when this stream ends.

use megaplan_cloud_api::routes;
use megaplan_cloud_api::wire::{DashboardRequest, Frame};
use megaplan_cloudctl::client::{ClientError, DaemonClient};
use std::io::Write;

/// Is there a desktop to open a browser on? A display on Linux; macOS always has one.
fn desktop() -> bool {
    cfg!(target_os = "macos")
        || ["DISPLAY", "WAYLAND_DISPLAY"]
            .iter()
            .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()))
}

/// Hand the URL to the desktop's opener, through a private file: an opener's and a browser's
/// argv can be read by every local user (`ps`), so the token must not be in it. The file (0600,
/// created new, never followed through a link) only redirects to the URL; it is removed when
/// the command ends, and a copy left by a killed command names a token whose listener is gone.
fn open_browser(url: &str) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::OpenOptionsExt;
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    let page = std::env::temp_dir().join(format!("megaplan-dashboard-{}.html", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&page)
        .and_then(|mut f| {
            writeln!(
                f,
                "<!doctype html><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"0;url={url}\"><a href=\"{url}\">megaplan-cloudd dashboard</a>"
            )
        });
    if let Err(e) = written {
        eprintln!(
            "dashboard: could not write {} ({e}); open the link above yourself",
            page.display()
        );
        return None;
    }
    let started = std::process::Command::new(opener)
        .arg(&page)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    if let Err(e) = started {
        eprintln!("dashboard: could not start {opener} ({e}); open the link above yourself");
    }
    Some(page)
}

/// Serve until Ctrl-C (exit 0) or the daemon ends the stream (idle timeout, shutdown); then the
/// exit code is the daemon's `result` frame's, 3 when the stream just ended.
pub async fn run(client: &DaemonClient, port: u16, no_open: bool) -> Result<i32, ClientError> {
    let body = serde_json::to_value(DashboardRequest { port }).unwrap_or_default();
    let mut code = 3;
    let mut opened = no_open || !desktop();
    let mut redirect_page = None;
    let serving = client.stream(
        routes::DASHBOARD,
        &body,
        |line| match serde_json::from_str::<Frame>(line) {
            Ok(Frame::Stdout { data }) => {
                let mut o = std::io::stdout().lock();
                let _ = o.write_all(data.as_bytes());
                let _ = o.flush();
                if !opened {
                    opened = true;
                    redirect_page = open_browser(data.trim());
                }
            }
            Ok(Frame::Stderr { data }) => {
                if !data.is_empty() {
                    eprint!("{data}");
                }
            }
            Ok(Frame::Result { payload, exit_code }) => {
                code = exit_code;
                if let Some(why) = payload.get("closed").and_then(|w| w.as_str()) {
                    eprintln!("dashboard: {why}");
                }
            }
            Ok(_) => {}
            Err(e) => eprintln!("dashboard: unreadable frame from the daemon ({e})"),
        },
    );
    // Ctrl-C ends the request (and so the listener) and this command, cleanly.
    let served = tokio::select! {
        r = serving => Some(r),
        _ = tokio::signal::ctrl_c() => None,
    };
    if let Some(page) = redirect_page {
        let _ = std::fs::remove_file(page);
    }
    let Some(served) = served else {
        eprintln!("dashboard: stopped");
        return Ok(0);
    };
    served?;
    if code == 3 {
        eprintln!("dashboard: the daemon closed the dashboard (it stopped or restarted)");
    }
    Ok(code)
}
