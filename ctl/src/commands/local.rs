//! Commands about this program and the daemon rather than a runner: `init`, `completions`,
//! `man`, `version` and `daemon status`.

use crate::cli::Cli;
use crate::failure::{fail, local_error};
use crate::{complete, output, render};
use hyper::Method;
use megaplan_cloud_api::wire::Health;
use megaplan_cloud_api::{ErrorCode, routes};
use megaplan_cloudctl::client::{self, DaemonClient};
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

/// `version`: this client's, and the daemon's when one answers (its absence is not an error:
/// the client's version is still worth knowing).
pub async fn version(client: &DaemonClient) -> i32 {
    let daemon: Option<Health> = client.typed(Method::GET, routes::HEALTH, None).await.ok();
    let v = json!({
        "client": {
            "version": megaplan_cloud_api::VERSION,
            "api_version": megaplan_cloud_api::API_VERSION,
        },
        "daemon": daemon.as_ref().map(|h| json!({
            "version": h.version,
            "api_version": h.api_version,
            "socket": h.socket,
        })),
    });
    if output::json_mode() {
        output::print_json_doc(&v);
    } else {
        println!(
            "megaplan-cloudctl {} (API v{})",
            megaplan_cloud_api::VERSION,
            megaplan_cloud_api::API_VERSION
        );
        match &daemon {
            Some(h) => println!(
                "megaplan-cloudd   {} (API v{}) at {}",
                h.version, h.api_version, h.socket
            ),
            None => println!(
                "megaplan-cloudd   not reachable at {}",
                client.socket.display()
            ),
        }
    }
    0
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
