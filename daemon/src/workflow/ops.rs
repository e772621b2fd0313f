//! Runner lifecycle commands: build, deploy, exec, logs, attach, down, destroy.

use super::ctx::{Ctx, Done};
use crate::cloud_yaml::ProviderKind;
use crate::provider::Provider;
use crate::render;
use megaplan_cloud_api::output::{Built, CommandOutput, Deployed, Destroyed, RunnerStopped};
use megaplan_cloud_api::wire::Frame;
use megaplan_cloud_api::{ErrorBody, ErrorCode};
use std::path::PathBuf;

/// The rendered deploy dir: persistent for local/ssh, a temporary dir for railway (removed when
/// the returned guard drops).
fn deploy_dir(ctx: &Ctx) -> Result<(PathBuf, Option<tempfile::TempDir>), ErrorBody> {
    match ctx.persistent_deploy_dir() {
        Some(dir) => {
            render::write_deploy_dir(&ctx.spec, &dir)?;
            Ok((dir, None))
        }
        None => {
            let tmp = tempfile::Builder::new()
                .prefix("megaplan-cloud-deploy-")
                .tempdir()
                .map_err(|e| {
                    ErrorBody::new(
                        ErrorCode::Internal,
                        format!("cannot create a temporary deploy dir: {e}"),
                    )
                })?;
            render::write_deploy_dir(&ctx.spec, tmp.path())?;
            Ok((tmp.path().to_path_buf(), Some(tmp)))
        }
    }
}

pub async fn build(ctx: &Ctx) -> Result<Done, ErrorBody> {
    let (dir, _guard) = deploy_dir(ctx)?;
    let p = ctx.provider(dir.clone())?;
    ctx.out
        .stderr(format!(
            "building {} runner from {}\n",
            p.name(),
            dir.display()
        ))
        .await;
    ctx.out.relay(async |tx| p.build(tx).await).await?;
    ctx.out.stderr("build: ok\n").await;
    Ok(Done::ok(CommandOutput::Built(Built {
        deploy_dir: dir.display().to_string(),
        provider: p.name().to_string(),
        success: true,
    })))
}

pub async fn deploy(ctx: &Ctx) -> Result<Done, ErrorBody> {
    ctx.require_secrets()?;
    let (dir, _guard) = deploy_dir(ctx)?;
    let p = ctx.provider(dir)?;
    let report = ctx.out.relay(async |tx| p.deploy(tx).await).await?;
    ctx.out.stderr(format!("{}\n", report.verdict)).await;
    let code = i32::from(!report.success);
    // The agents' logins go onto a runner that is up (the original seeds after a deploy too).
    let agent_auth = match report.success {
        true => Some(super::agent_auth::seed(ctx, &p).await),
        false => None,
    };
    let deployed = ctx.redact_typed(Deployed { report, agent_auth })?;
    Ok(Done::code(
        CommandOutput::Deployed(Box::new(deployed)),
        code,
    ))
}

pub async fn exec(ctx: &Ctx, cmd: &str) -> Result<Done, ErrorBody> {
    let p = ctx.runner()?;
    let code = ctx
        .out
        .relay(async |tx| p.exec_streaming(cmd, tx).await)
        .await?;
    // exec relays the command's own output and exit code; no JSON payload.
    Ok(Done::code(CommandOutput::Streamed, code))
}

pub async fn logs(
    ctx: &Ctx,
    follow: bool,
    window: &crate::provider::LogWindow,
) -> Result<Done, ErrorBody> {
    let p = ctx.runner()?;
    let code = ctx
        .out
        .relay(async |tx| {
            tokio::select! {
                r = p.logs(follow, window, tx) => r,
                _ = ctx.state.hard_stop().cancelled() => Ok(0),
            }
        })
        .await?;
    Ok(Done::code(CommandOutput::Streamed, code))
}

pub async fn attach(ctx: &Ctx, session: Option<&str>) -> Result<Done, ErrorBody> {
    let p = ctx.runner()?;
    let argv = p.attach_argv(session)?;
    ctx.out.frame(Frame::Terminal { argv }).await;
    Ok(Done::ok(CommandOutput::Streamed))
}

pub async fn down(ctx: &Ctx) -> Result<Done, ErrorBody> {
    let p = ctx.runner()?;
    ctx.out.relay(async |tx| p.down(tx).await).await?;
    ctx.out.stderr("down: runner stopped\n").await;
    Ok(Done::ok(CommandOutput::Down(RunnerStopped {
        provider: p.name().to_string(),
        success: true,
    })))
}

pub async fn destroy(ctx: &Ctx, yes: bool) -> Result<Done, ErrorBody> {
    if !yes {
        return Err(ErrorBody::new(
            ErrorCode::InvalidArgs,
            "destroy needs --yes (or a confirmation on a terminal)",
        ));
    }
    let p = ctx.runner()?;
    ctx.out.relay(async |tx| p.destroy(tx).await).await?;
    let mut removed = None;
    if ctx.spec.provider != ProviderKind::Railway
        && let Some(dir) = ctx.persistent_deploy_dir()
        && dir.exists()
    {
        std::fs::remove_dir_all(&dir).map_err(|e| {
            ErrorBody::new(
                ErrorCode::Internal,
                format!("runner destroyed, but cannot remove {}: {e}", dir.display()),
            )
        })?;
        removed = Some(dir.display().to_string());
    }
    ctx.out.stderr("destroy: runner removed\n").await;
    Ok(Done::ok(CommandOutput::Destroyed(Destroyed {
        deploy_dir_removed: removed,
        provider: p.name().to_string(),
        success: true,
        volume_deleted: ctx.spec.resources.volume.clone(),
    })))
}
