//! Commands about this program and the daemon rather than a runner: `init`, `completions`,
//! `man`, `version` and `daemon status`.

use crate::cli::Cli;
use crate::failure::{fail, local_error};
use crate::{complete, output, render};
use hyper::Method;
use megaplan_cloud_api::ErrorBody;
use megaplan_cloud_api::wire::Health;
use megaplan_cloud_api::{ErrorCode, routes};
use megaplan_cloudctl::client::ClientError;
use megaplan_cloudctl::client::{self, DaemonClient};
use serde::Serialize;
use serde_json::json;
use std::path::{Path, PathBuf};

/// `init`: write the commented cloud.yaml scaffold (no daemon needed).
pub fn init(path: &Path, force: bool, provider: &str) -> i32 {
    if path.exists() && !force {
        return local_error(
            ErrorCode::InvalidArgs,
            format!(
                "{} already exists; pass --force to overwrite it",
                path.display()
            ),
        );
    }
    if let Some(dir) = path.parent()
        && let Err(e) = std::fs::create_dir_all(dir)
    {
        return local_error(
            ErrorCode::InvalidArgs,
            format!("cannot create {}: {e}", dir.display()),
        );
    }
    let Some(scaffold) = megaplan_cloud_api::cloud_yaml_scaffold(provider) else {
        return local_error(
            ErrorCode::InvalidArgs,
            format!(
                "--provider {provider:?}: choose one of {}",
                megaplan_cloud_api::SCAFFOLD_PROVIDERS.join(", ")
            ),
        );
    };
    if let Err(e) = std::fs::write(path, scaffold) {
        return local_error(
            ErrorCode::InvalidArgs,
            format!("cannot write {}: {e}", path.display()),
        );
    }
    // `cloud_yaml` is the original's field; `path` is kept for scripts written against ours.
    let shown = path.display().to_string();
    let next = format!(
        "wrote {}; edit repo.url, provider and secrets, then run `megaplan-cloudctl build`",
        path.display()
    );
    if output::json_mode() {
        // The seed's split for `init`: the document on stdout, its line on stderr.
        output::print_json_doc(&json!({"success": true, "cloud_yaml": shown, "path": shown}));
        eprintln!("{next}");
    } else {
        output::say(&next);
    }
    0
}

/// `completions SHELL`: the registration script of the dynamic completion.
pub fn completions(shell: &str) -> i32 {
    match complete::write_registration(shell) {
        Ok(code) => code,
        Err(e) => local_error(ErrorCode::InvalidArgs, e),
    }
}

/// `man [--dir DIR]`: the page of megaplan-cloudctl on stdout, or every page into DIR.
pub fn man(dir: Option<PathBuf>) -> i32 {
    let cmd = <Cli as clap::CommandFactory>::command();
    let Some(dir) = dir else {
        return match clap_mangen::Man::new(cmd).render(&mut std::io::stdout()) {
            Ok(()) => 0,
            Err(e) => local_error(
                ErrorCode::InvalidArgs,
                format!("cannot write the man page: {e}"),
            ),
        };
    };
    match std::fs::create_dir_all(&dir).and_then(|()| clap_mangen::generate_to(cmd, &dir)) {
        Ok(()) => {
            output::say(&format!("wrote the man pages into {}", dir.display()));
            0
        }
        Err(e) => local_error(
            ErrorCode::InvalidArgs,
            format!("cannot write the man pages into {}: {e}", dir.display()),
        ),
    }
}

/// `version`: this client's, and the daemon's. The client's is printed whatever happens; a
/// daemon that does not answer is said ("not reachable (why)") and the exit code is 69, as for
/// every command that needs the daemon, so a script can tell "both known" from "client only".
pub async fn version(client: &DaemonClient) -> i32 {
    let daemon = client
        .typed::<Health>(Method::GET, routes::HEALTH, None)
        .await;
    let unreachable = daemon.as_ref().err().map(|e| match e {
        ClientError::Unreachable(b) | ClientError::Api(b) => b.clone(),
    });
    let daemon = daemon.ok();
    let doc = VersionDoc {
        client: Side {
            version: megaplan_cloud_api::VERSION.to_string(),
            api_version: megaplan_cloud_api::API_VERSION,
            socket: None,
        },
        daemon: daemon.as_ref().map(|h| Side {
            version: h.version.clone(),
            api_version: h.api_version,
            socket: Some(h.socket.clone()),
        }),
        daemon_error: unreachable.clone(),
    };
    if output::json_mode() {
        output::print_json_doc(&serde_json::to_value(&doc).unwrap_or_default());
    } else {
        print!(
            "{}",
            version_text(&doc, &client.socket.display().to_string())
        );
    }
    match unreachable {
        None => 0,
        Some(body) => {
            if output::json_mode() {
                // Through a pipe the document is on stdout; stderr says the failure once.
                eprintln!("error: {}: {}", body.error, body.message);
            }
            output::EXIT_DAEMON_UNREACHABLE
        }
    }
}

/// `version --json`.
#[derive(Debug, Serialize)]
struct VersionDoc {
    client: Side,
    /// `null` when the daemon did not answer.
    daemon: Option<Side>,
    /// Why the daemon did not answer (absent when it did).
    #[serde(skip_serializing_if = "Option::is_none")]
    daemon_error: Option<ErrorBody>,
}

#[derive(Debug, Serialize)]
struct Side {
    version: String,
    api_version: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    socket: Option<String>,
}

/// Two lines: this client, and the daemon or why it is not reachable.
fn version_text(doc: &VersionDoc, socket: &str) -> String {
    let mut text = format!(
        "megaplan-cloudctl {} (API v{})\n",
        doc.client.version, doc.client.api_version
    );
    match (&doc.daemon, &doc.daemon_error) {
        // The socket on a line of its own: a path is copied whole, never wrapped.
        (Some(d), _) => text.push_str(&format!(
            "megaplan-cloudd   {} (API v{})\n  socket          {}\n",
            d.version,
            d.api_version,
            d.socket.as_deref().unwrap_or(socket)
        )),
        (None, Some(e)) => text.push_str(&format!(
            "megaplan-cloudd   not reachable ({})\n",
            output::strip_controls(&e.message)
        )),
        (None, None) => text.push_str(&format!("megaplan-cloudd   not reachable at {socket}\n")),
    }
    text
}

/// `daemon status`: the daemon's health, with a warning on an API version skew.
pub async fn daemon_status(client: &DaemonClient, json: bool) -> i32 {
    // The daemon's own document is what `--json` prints; the typed reading is what is checked
    // and rendered.
    let read = match client.json(Method::GET, routes::HEALTH, None).await {
        Ok(v) => client::parse_answer::<Health>(routes::HEALTH, v.clone()).map(|h| (v, h)),
        Err(e) => Err(e),
    };
    match read {
        Ok((v, h)) => {
            if h.api_version != megaplan_cloud_api::API_VERSION {
                eprintln!(
                    "warning: daemon speaks API v{}, this client v{}; restart megaplan-cloudd after upgrading",
                    h.api_version,
                    megaplan_cloud_api::API_VERSION
                );
            }
            if json {
                output::print_json_doc(&v);
            } else {
                render::health(&h);
            }
            0
        }
        Err(e) => fail(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_names_both_sides_or_why_the_daemon_is_not_reachable() {
        let client = Side {
            version: "1.2.3".into(),
            api_version: 1,
            socket: None,
        };
        let down = VersionDoc {
            client,
            daemon: None,
            daemon_error: Some(ErrorBody::new(
                ErrorCode::DaemonUnreachable,
                "megaplan-cloudd is not running at /run/x.sock",
            )),
        };
        assert_eq!(
            version_text(&down, "/run/x.sock"),
            "megaplan-cloudctl 1.2.3 (API v1)\nmegaplan-cloudd   not reachable (megaplan-cloudd is not running at /run/x.sock)\n"
        );
        let up = VersionDoc {
            daemon: Some(Side {
                version: "1.2.4".into(),
                api_version: 1,
                socket: Some("/run/x.sock".into()),
            }),
            daemon_error: None,
            ..down
        };
        let text = version_text(&up, "/run/x.sock");
        assert!(
            text.ends_with("megaplan-cloudd   1.2.4 (API v1)\n  socket          /run/x.sock\n"),
            "{text}"
        );
        for line in text.lines() {
            assert!(line.chars().count() <= 80, "{line:?}");
        }
    }
}
