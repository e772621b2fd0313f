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

/// Hand the URL to the desktop's opener. The child is not waited for (the browser lives on
/// its own), and a missing opener only means the person clicks the printed link.
fn open_browser(url: &str) {
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    let started = std::process::Command::new(opener)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    if let Err(e) = started {
        eprintln!("dashboard: could not start {opener} ({e}); open the link above yourself");
    }
}

/// Serve until the daemon ends the stream (idle timeout, shutdown) or the process is stopped;
/// the exit code is the daemon's `result` frame's, 3 when the stream just ended.
pub async fn run(client: &DaemonClient, port: u16, no_open: bool) -> Result<i32, ClientError> {
    let body = serde_json::to_value(DashboardRequest { port }).unwrap_or_default();
    let mut code = 3;
    let mut opened = no_open || !desktop();
    client
        .stream(
            routes::DASHBOARD,
            &body,
            |line| match serde_json::from_str::<Frame>(line) {
                Ok(Frame::Stdout { data }) => {
                    let mut o = std::io::stdout().lock();
                    let _ = o.write_all(data.as_bytes());
                    let _ = o.flush();
                    if !opened {
                        opened = true;
                        open_browser(data.trim());
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
        )
        .await?;
    if code == 3 {
        eprintln!("dashboard: the daemon closed the dashboard (it stopped or restarted)");
    }
    Ok(code)
}
