//! Workflows: what each cloud command does, gluing cloud.yaml, providers and the chain domain.
//! [`run`] is the single entry of `POST /v1/run`; it always ends the stream with exactly one
//! `result` (or `terminal`) frame, whatever happens.

pub mod agent_auth;
pub mod chain;
pub mod ctx;
pub mod ops;
pub mod status;
pub mod supervise;

pub use crate::provider::{redact_error, remote_failure};
pub use crate::supervisor::markers;
pub use ctx::{Ctx, Done, Out, resolve_launcher};

use crate::cloud_yaml::{self, CloudSpec};
use crate::redact::Redactor;
use crate::state::AppState;
use megaplan_cloud_api::wire::{Command, Frame, RepoOverrides, RunRequest};
use megaplan_cloud_api::{ErrorBody, ErrorCode};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::mpsc;

pub async fn run(state: Arc<AppState>, req: RunRequest, tx: mpsc::Sender<Frame>) {
    let out = Out::new(tx);
    let name = req.command.name();
    let started = std::time::Instant::now();
    let result = execute(state, req, out.clone()).await;
    let (payload, exit_code) = match result.and_then(|Done { output, exit_code }| {
        let payload = output.to_payload().map_err(|e| {
            ErrorBody::new(
                ErrorCode::Internal,
                format!("cannot write the answer of `{name}`: {e}"),
            )
        })?;
        Ok((payload, exit_code))
    }) {
        Ok(done) => done,
        Err(e) => {
            out.stderr(format!("error: {}: {}\n", e.error, e.message))
                .await;
            (e.to_value(), 1)
        }
    };
    tracing::info!(
        command = name,
        exit_code,
        ms = started.elapsed().as_millis() as u64,
        "command finished"
    );
    out.frame(Frame::Result { payload, exit_code }).await;
}

fn apply_overrides(spec: &mut CloudSpec, o: &RepoOverrides) -> Result<(), ErrorBody> {
    if let Some(u) = &o.repo_url {
        spec.repo.url = u.clone();
    }
    if let Some(b) = &o.repo_branch {
        spec.repo.branch = b.clone();
    }
    if let Some(w) = &o.repo_workspace {
        if !w.starts_with('/') {
            return Err(ErrorBody::new(
                ErrorCode::InvalidArgs,
                format!("--repo-workspace must be an absolute remote path, got {w:?}"),
            ));
        }
        spec.repo.workspace = w.clone();
    }
    Ok(())
}

async fn execute(state: Arc<AppState>, req: RunRequest, out: Out) -> Result<Done, ErrorBody> {
    let path = Path::new(&req.cloud_yaml);
    if !path.is_absolute() {
        return Err(ErrorBody::new(
            ErrorCode::InvalidArgs,
            format!(
                "cloud_yaml must be an absolute path, got {:?}",
                req.cloud_yaml
            ),
        ));
    }
    let mut spec = cloud_yaml::load_async(path).await?;
    for w in &spec.warnings {
        out.stderr(format!("warning: {w}\n")).await;
    }
    match &req.command {
        Command::Bootstrap { overrides, .. } | Command::Chain { overrides, .. } => {
            apply_overrides(&mut spec, overrides)?
        }
        _ => {}
    }
    let key = spec.key();
    // A marker saved under the key of the path as typed (older clients keyed the lexical path)
    // is taken over by the resolved path's key, which is the original's.
    let aliases: Vec<String> = [Some(&req.cloud_yaml), req.cloud_yaml_as_given.as_ref()]
        .into_iter()
        .flatten()
        .map(|p| megaplan_cloud_api::paths::marker_key(Path::new(p)))
        .filter(|k| *k != key)
        .collect();
    // With --remote-spec no legacy marker file is read at all.
    let names_remote_spec = matches!(
        &req.command,
        Command::Status {
            remote_spec: Some(_),
            ..
        } | Command::Supervise {
            remote_spec: Some(_),
            ..
        }
    );
    if !aliases.is_empty() && !names_remote_spec {
        for w in markers::adopt(&state, &key, &spec.path.display().to_string(), &aliases).await? {
            out.stderr(format!("warning: {w}\n")).await;
        }
    }
    // Output is redacted line by line, so a value spanning lines could escape in pieces whose
    // lines are too short to match; the ssh/local env files cannot carry one either.
    if let Some(name) = req
        .secrets
        .iter()
        .find(|(k, v)| spec.secrets.contains(k) && v.contains(['\n', '\r']))
        .map(|(k, _)| k)
    {
        return Err(ErrorBody::new(
            ErrorCode::InvalidArgs,
            format!("secret {name} contains a line break; export a single-line value (e.g. base64-encode it)"),
        )
        .with("field", name.as_str()));
    }
    // Remember what the client handed over (memory only) so unattended ticks redact too.
    let wanted: BTreeMap<String, String> = req
        .secrets
        .iter()
        .filter(|(k, v)| spec.secrets.contains(k) && !v.is_empty())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    state.remember_secrets(&key, &wanted);
    // The strings of the agents' login files are redacted like secret values, by this command
    // and by the unattended ticks after it (memory only, as above).
    let agent_auth = req.agent_auth.clone();
    if let Some(auth) = &agent_auth {
        state.remember_secrets(&key, &agent_auth::secret_literals(auth));
    }
    let mut secrets = state.secret_values(&key, &spec.secrets);
    secrets.extend(wanted);
    let redactor = Redactor::cached(&key, &spec.secrets, &secrets);
    let ctx = Ctx {
        state,
        spec: Arc::new(spec),
        key,
        cwd: PathBuf::from(&req.cwd),
        secrets,
        redactor,
        out,
        agent_auth,
    };
    match req.command {
        Command::Build => ops::build(&ctx).await,
        Command::Deploy => ops::deploy(&ctx).await,
        Command::Exec { cmd, argv } => ops::exec(&ctx, &exec_command(&cmd, &argv)?).await,
        Command::Logs {
            follow,
            tail,
            since,
        } => ops::logs(&ctx, follow, &crate::provider::LogWindow { tail, since }).await,
        Command::Attach { session } => ops::attach(&ctx, session.as_deref()).await,
        Command::Down => ops::down(&ctx).await,
        Command::Destroy { yes } => ops::destroy(&ctx, yes).await,
        Command::Status {
            chain: true,
            remote_spec,
            ..
        } => status::chain_status(&ctx, remote_spec.as_deref()).await,
        Command::Status { all: true, .. } | Command::Chains => status::chains(&ctx).await,
        Command::Status { plan, .. } => status::plain_status(&ctx, plan.as_deref()).await,
        Command::Resume { plan } => status::resume(&ctx, plan.as_deref()).await,
        Command::Bootstrap {
            idea,
            plan_name,
            robustness,
            ..
        } => chain::bootstrap(&ctx, &idea, plan_name.as_deref(), robustness.as_deref()).await,
        Command::Chain {
            spec,
            idea_dir,
            fresh,
            no_git_refresh,
            ..
        } => {
            chain::launch(
                &ctx,
                &chain::LaunchArgs {
                    spec: PathBuf::from(spec),
                    idea_dir: idea_dir.map(PathBuf::from),
                    fresh,
                    no_git_refresh,
                },
            )
            .await
        }
        Command::Supervise {
            remote_spec,
            dry_run,
        } => supervise::cli(&ctx, remote_spec.as_deref(), dry_run).await,
    }
}

/// The shell command `exec` runs: the command string as given, or the argv words each quoted.
pub fn exec_command(cmd: &str, argv: &[String]) -> Result<String, ErrorBody> {
    match (cmd.trim().is_empty(), argv.is_empty()) {
        (false, true) => Ok(cmd.to_string()),
        (true, false) => Ok(argv
            .iter()
            .map(|w| crate::shell::quote(w))
            .collect::<Vec<_>>()
            .join(" ")),
        (true, true) => Err(ErrorBody::new(
            ErrorCode::InvalidArgs,
            "exec needs a command: `exec \"ls -la\"` or `exec -- ls -la`",
        )),
        (false, false) => Err(ErrorBody::new(
            ErrorCode::InvalidArgs,
            "exec takes a command string or words after `--`, not both",
        )),
    }
}

#[cfg(test)]
mod exec_tests {
    use super::exec_command;

    #[test]
    fn exec_runs_the_string_or_the_words_each_quoted() {
        assert_eq!(
            exec_command("ls -la | wc -l", &[]).unwrap(),
            "ls -la | wc -l"
        );
        let words = [
            "printf".to_string(),
            "%s\\n".into(),
            "a b".into(),
            "$(id)".into(),
            "it's".into(),
        ];
        assert_eq!(
            exec_command("", &words).unwrap(),
            "printf '%s\\n' 'a b' '$(id)' 'it'\\''s'"
        );
        assert!(exec_command(" ", &[]).is_err());
        assert!(exec_command("ls", &words).is_err());
    }
}
