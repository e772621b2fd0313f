//! `supervise --chain`: a tick now, through the supervisor (stored like scheduled ones), or a dry
//! run (not stored).

use super::ctx::{Ctx, Done};
use crate::supervisor::supervise::{self, tick_with};
use crate::supervisor::tick;
use megaplan_cloud_api::ErrorBody;
use megaplan_cloud_api::output::CommandOutput;

/// `supervise --chain`: a tick now, stored like scheduled ones; report on stdout, one line on
/// stderr, exit 0 when the tick succeeded.
pub async fn cli(ctx: &Ctx, remote_spec: Option<&str>, dry_run: bool) -> Result<Done, ErrorBody> {
    let cloud_yaml = ctx.spec.path.display().to_string();
    if dry_run {
        // A dry run is not stored (it is not what the supervisor did) and tells nobody.
        let deadline = ctx.state.settings().tick_timeout;
        let report = match tokio::time::timeout(
            deadline,
            tick_with(&ctx.state, &cloud_yaml, remote_spec, true),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => supervise::error_report(&format!(
                "dry-run tick exceeded its deadline of {}s",
                deadline.as_secs()
            )),
        };
        ctx.out.stderr(format!("{report} | dry run\n")).await;
        let code = i32::from(!report.success);
        return Ok(Done::code(CommandOutput::Tick(Box::new(report)), code));
    }
    let rec = tick::run_for_cli(&ctx.state, &ctx.key, &cloud_yaml, remote_spec).await?;
    ctx.out.stderr(format!("{}\n", rec.report)).await;
    let code = i32::from(!rec.success);
    Ok(Done::code(CommandOutput::Tick(Box::new(rec.report)), code))
}
