//! Which cloud.yaml or registration a command is about: a key (or a unique prefix of one), a
//! cloud.yaml path, or the cloud.yaml found from the working directory.

use crate::cli::{Cli, Cmd};
use crate::discover;
use crate::failure::{fail, no_registration};
use hyper::Method;
use megaplan_cloud_api::{ErrorBody, ErrorCode, paths, routes};
use megaplan_cloudctl::client::{ClientError, DaemonClient};
use std::path::{Path, PathBuf};

/// What a command acts on, resolved before it runs.
#[derive(Debug, Clone, Default)]
pub struct Target {
    /// The cloud.yaml, absolute and resolved (empty for commands about no cloud.yaml).
    pub cloud_yaml: PathBuf,
    /// The cloud.yaml as the operator gave it, when that differs.
    pub as_given: Option<String>,
    /// The registration named by its key on the command line.
    pub key: Option<String>,
}

impl Target {
    /// How messages name it: the key when one was given, else the cloud.yaml path.
    pub fn shown(&self) -> String {
        self.key
            .clone()
            .unwrap_or_else(|| self.cloud_yaml.display().to_string())
    }

    /// The registration key of this target.
    pub fn key(&self) -> String {
        self.key
            .clone()
            .unwrap_or_else(|| paths::resolved_marker_key(&self.cloud_yaml))
    }
}

/// Resolve the target of `cli`'s command. A per-registration command also takes a registration
/// key (or a unique prefix of one) or a cloud.yaml path as its argument; it is resolved first:
/// a key names one registration, so the "outside any project means all" rule never turns a
/// wrong key into every history.
pub async fn resolve(client: &DaemonClient, cli: &mut Cli) -> Result<Target, i32> {
    let mut target = Target::default();
    // `notifications test KEY|PATH` names its registration like `notifications KEY|PATH`.
    if let Cmd::Notifications {
        action: Some(crate::cli::NotificationsCmd::Test { target: t }),
        target,
        ..
    } = &mut cli.command
        && target.is_none()
    {
        *target = t.take();
    }
    if let Cmd::Tick { target: arg }
    | Cmd::Unregister { target: arg }
    | Cmd::Ticks { target: arg, .. }
    | Cmd::Pause { target: arg, .. }
    | Cmd::Unpause { target: arg }
    | Cmd::Unquarantine { target: arg }
    | Cmd::Explain { target: arg }
    | Cmd::Watch { target: arg, .. }
    | Cmd::Notifications { target: arg, .. } = &mut cli.command
        && let Some(t) = arg.take()
    {
        if names_a_path(&t) {
            cli.cloud_yaml = Some(PathBuf::from(t));
        } else {
            target.key = Some(resolve_key(client, &t).await?);
        }
    }
    if target.key.is_none() && history_of_all(cli) {
        match &mut cli.command {
            Cmd::Ticks { all, .. } | Cmd::Watch { all, .. } | Cmd::Notifications { all, .. } => {
                *all = true;
            }
            _ => {}
        }
    }
    if target.key.is_none() && needs_cloud_yaml(&cli.command) {
        let located = locate(cli.cloud_yaml.as_deref())?;
        target.as_given = located.as_given.map(|p| p.display().to_string());
        target.cloud_yaml = located.path;
    }
    Ok(target)
}

/// Does a command's argument name a cloud.yaml file rather than a registration key?
fn names_a_path(t: &str) -> bool {
    t.contains('/') || t.ends_with(".yaml") || t.ends_with(".yml") || Path::new(t).is_file()
}

/// The one registration whose key is `prefix` or starts with it (git's and docker's short ids).
async fn resolve_key(client: &DaemonClient, prefix: &str) -> Result<String, i32> {
    let regs: Vec<megaplan_cloud_api::wire::Registration> =
        match client.typed(Method::GET, routes::CLOUDS, None).await {
            Ok(r) => r,
            Err(e) => return Err(fail(e)),
        };
    let wanted = prefix.to_ascii_lowercase();
    let found: Vec<&str> = regs
        .iter()
        .map(|r| r.key.as_str())
        .filter(|k| !wanted.is_empty() && k.starts_with(&wanted))
        .collect();
    match found.as_slice() {
        [one] => Ok((*one).to_string()),
        [] => Err(fail(ClientError::Api(no_registration(prefix)))),
        many => Err(fail(ClientError::Api(
            ErrorBody::new(
                ErrorCode::InvalidArgs,
                format!(
                    "key prefix {prefix} matches {} registrations ({}); give more of the key",
                    many.len(),
                    many.join(", ")
                ),
            )
            .with(
                "matches",
                many.iter().map(|k| k.to_string()).collect::<Vec<_>>(),
            ),
        ))),
    }
}

pub fn abs(p: &Path) -> PathBuf {
    paths::absolutize(&paths::expand_user(p), &paths::current_dir())
}

/// The cloud.yaml of this command, or the structured error naming every place tried.
fn locate(flag: Option<&Path>) -> Result<discover::Located, i32> {
    discover::locate(flag, &paths::current_dir()).map_err(|tried| {
        let list: Vec<String> = tried.iter().map(|p| p.display().to_string()).collect();
        fail(ClientError::Api(
            ErrorBody::new(
                ErrorCode::InvalidSpec,
                format!(
                    "no cloud.yaml found; tried {}; pass --cloud-yaml PATH or run `megaplan-cloudctl init`",
                    list.join(", ")
                ),
            )
            .with("tried", list),
        ))
    })
}

/// Does this command act on one cloud.yaml (and so need to find it)?
fn needs_cloud_yaml(cmd: &Cmd) -> bool {
    !matches!(
        cmd,
        Cmd::Init { .. }
            | Cmd::Registrations { .. }
            | Cmd::Ls { .. }
            | Cmd::Dashboard { .. }
            | Cmd::Doctor { .. }
            | Cmd::Daemon { .. }
            | Cmd::Ticks { all: true, .. }
            | Cmd::Watch { all: true, .. }
            | Cmd::Notifications { all: true, .. }
            | Cmd::Completions { .. }
            | Cmd::Man { .. }
            | Cmd::Version
            // Refused before any cloud.yaml is looked for.
            | Cmd::Supervise { chain: false, .. }
    )
}

/// `ticks`/`watch`/`notifications` outside any project (no --cloud-yaml, none found): every
/// registration's, rather than an empty list for a cloud.yaml that does not exist.
fn history_of_all(cli: &Cli) -> bool {
    matches!(
        cli.command,
        Cmd::Ticks { .. } | Cmd::Watch { .. } | Cmd::Notifications { .. }
    ) && cli.cloud_yaml.is_none()
        && discover::locate(None, &paths::current_dir()).is_err()
}
