//! Which chain a tick or `status --chain` looks at (spec, session, workspace, log), and the one
//! remote round trip that observes it: [`look`] and [`Looked::observe`], the prelude both share.

use super::markers;
use crate::chain::observe::{self, Observation};
use crate::chain::spec::ChainSpec;
use crate::chain::summary;
use crate::cloud_yaml::{CloudSpec, Mode};
use crate::provider::resident::{EventSender, ResidentError, Residents, WatchRequest};
use crate::provider::{Provider, redact_error, remote_failure};
use crate::redact::Redactor;
use crate::runner::layout::SESSION_MARKER_DIR;
use crate::runner::layout::chain_log;
use crate::runner::observe::{ObserveRequest, observe_script, resident_script};
use crate::state::AppState;
use megaplan_cloud_api::marker::LastChainMarker;
use megaplan_cloud_api::report::ProviderConsistency;
use megaplan_cloud_api::{ErrorBody, ErrorCode};
use std::time::Duration;

pub use crate::runner::layout::CHAIN_SESSION;

/// Where the remote spec came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecSource {
    Flag,
    Marker,
    CloudYaml,
}

impl SpecSource {
    pub fn as_str(self) -> &'static str {
        match self {
            SpecSource::Flag => "--remote-spec",
            SpecSource::Marker => "last_chain marker",
            SpecSource::CloudYaml => "cloud.yaml chain.spec",
        }
    }
}

/// Remote spec precedence: `--remote-spec`, the last-chain marker, `chain.spec` when
/// `mode: chain`, else `missing_remote_spec`.
pub fn resolve_remote_spec(
    flag: Option<&str>,
    marker: Option<&LastChainMarker>,
    spec: &CloudSpec,
) -> Result<(String, SpecSource), ErrorBody> {
    if let Some(f) = flag.filter(|f| !f.trim().is_empty()) {
        return Ok((f.to_string(), SpecSource::Flag));
    }
    if let Some(m) = marker.and_then(LastChainMarker::remote_spec) {
        return Ok((m.to_string(), SpecSource::Marker));
    }
    if spec.mode == Mode::Chain
        && let Some(s) = &spec.chain.spec
    {
        return Ok((s.clone(), SpecSource::CloudYaml));
    }
    Err(ErrorBody::new(
        ErrorCode::MissingRemoteSpec,
        format!(
            "no remote chain spec for {}: pass --remote-spec, run `megaplan-cloudctl chain <spec>` first, or set mode: chain with chain.spec",
            spec.path.display()
        ),
    ))
}

/// The session, workspace and log a chain status/tick looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainTarget {
    pub spec: String,
    pub source: SpecSource,
    pub session: String,
    pub workspace: String,
    pub log_path: String,
}

/// Marker fields apply when the marker describes the spec being looked at.
pub fn chain_target(
    flag: Option<&str>,
    marker: Option<&LastChainMarker>,
    spec: &CloudSpec,
) -> Result<ChainTarget, ErrorBody> {
    let (remote_spec, source) = resolve_remote_spec(flag, marker, spec)?;
    let m = marker.filter(|m| m.describes(&remote_spec));
    let field = |f: fn(&LastChainMarker) -> Option<&str>| m.and_then(f).map(str::to_string);
    let workspace =
        field(|m| m.workspace.as_deref()).unwrap_or_else(|| spec.repo.workspace.clone());
    let log_path = field(|m| m.chain_log.as_deref()).unwrap_or_else(|| chain_log(&workspace));
    Ok(ChainTarget {
        spec: remote_spec,
        source,
        session: field(|m| m.chain_session.as_deref()).unwrap_or_else(|| CHAIN_SESSION.to_string()),
        workspace,
        log_path,
    })
}

/// What a tick and `status --chain` know before they look at the runner: the last-chain
/// marker of the cloud.yaml (and why a legacy one was skipped), the chain it points at, and
/// whether it still belongs to the provider cloud.yaml names.
pub struct Looked {
    pub marker: Option<LastChainMarker>,
    pub marker_warnings: Vec<String>,
    pub target: ChainTarget,
    pub consistency: ProviderConsistency,
}

/// The prelude of a tick and of `status --chain`: read the marker, resolve the target, check
/// the provider consistency. No remote command.
pub async fn look(
    state: &AppState,
    spec: &CloudSpec,
    key: &str,
    remote_spec: Option<&str>,
) -> Result<Looked, ErrorBody> {
    let loaded = markers::load(
        state,
        key,
        &spec.path.display().to_string(),
        remote_spec.is_none(),
    )
    .await?;
    let target = chain_target(remote_spec, loaded.marker.as_ref(), spec)?;
    let consistency = summary::provider_consistency(
        spec.provider.as_str(),
        markers::provider_identity(spec).as_deref(),
        loaded.marker.as_ref(),
    );
    Ok(Looked {
        marker: loaded.marker,
        marker_warnings: loaded.warnings,
        target,
        consistency,
    })
}

impl Looked {
    /// The one round trip (see [`observe_chain`]) through the runner's resident observer when
    /// it can run there; the launcher it found is remembered for the key. A tick passes its
    /// `events` (the observer then keeps a watch of the chain) and the sync refresh and PR
    /// probe run (`for_tick`).
    #[allow(clippy::too_many_arguments)]
    pub async fn observe(
        &self,
        state: &AppState,
        raw: &impl Provider,
        redactor: &Redactor,
        spec: &CloudSpec,
        key: &str,
        for_tick: bool,
        deadline: Duration,
        events: Option<&EventSender>,
    ) -> Result<(Observation, ChainSpec), ErrorBody> {
        let (obs, chain_spec) = observe_chain(
            raw,
            redactor,
            &self.target,
            crate::chain::launcher::configured(spec).unwrap_or(""),
            for_tick,
            Some(Resident {
                residents: state.residents(),
                key,
                deadline,
                events,
                lease_ttl: spec.supervise.lease_ttl,
                pr_poll: spec.supervise.pr_poll,
                stall_after: state.notifier().config.stall_after,
            }),
        )
        .await?;
        if let Some(l) = &obs.core_launcher {
            state.launchers().remember(key, l);
        }
        Ok((obs, chain_spec))
    }
}

/// One remote round trip: observe the chain of `target` (for ticks also the sync refresh and
/// the PR probe) and parse the remote spec. Unreadable state or spec files are errors naming
/// the remote file.
///
/// `raw` must be a provider that does not redact: the observation is one JSON line, and text
/// redaction inside it can break the JSON (the `NAME=value` rule takes the backslash of an
/// escaped quote as part of the value). The observation comes back unredacted, for the caller
/// to redact whatever it shows or stores; errors come back redacted with `redactor`.
pub async fn observe_chain(
    raw: &impl Provider,
    redactor: &Redactor,
    target: &ChainTarget,
    launcher: &str,
    for_tick: bool,
    resident: Option<Resident<'_>>,
) -> Result<(Observation, ChainSpec), ErrorBody> {
    observe_unredacted(raw, target, launcher, for_tick, resident)
        .await
        .map_err(|e| redact_error(redactor, e))
}

/// Where an observation may ask a resident observer: the daemon's observers, the marker key of
/// the cloud.yaml asking (the observer itself is per runner: every cloud.yaml observing one
/// runner shares it) and the request's deadline.
#[derive(Clone, Copy)]
pub struct Resident<'a> {
    pub residents: &'a Residents,
    pub key: &'a str,
    pub deadline: Duration,
    /// For a registration's tick: keep a watch of the chain on the runner, its events sent
    /// here (supervisor/events.rs). `None` for one-off commands (`status --chain`).
    pub events: Option<&'a EventSender>,
    /// The driver lease's time to live the watch writes (`supervise.lease_ttl`).
    pub lease_ttl: Duration,
    /// How often the watch asks whether the awaited pull request was merged
    /// (`supervise.pr_poll`).
    pub pr_poll: Duration,
    /// A running chain's log quiet this long is a stall the watch tells at once (notify.yaml
    /// `stall_after`).
    pub stall_after: Duration,
}

/// The observation through the runner's resident observer; `None` when it cannot run there
/// (the caller falls back to the one-shot script). A malformed observation is the parser's
/// error, as the one-shot script's is.
async fn ask_resident(
    p: &impl Provider,
    r: Resident<'_>,
    req: &ObserveRequest,
) -> Result<Option<Observation>, ErrorBody> {
    let launch = match p.resident_command(&resident_script(&req.launcher)).await {
        Ok(Some(launch)) => launch,
        Ok(None) => return Ok(None),
        Err(e) => {
            tracing::info!(
                key = r.key,
                "no resident observer ({e}); one-shot observation"
            );
            return Ok(None);
        }
    };
    match r
        .residents
        .observe(r.key, &launch, &req.input(SESSION_MARKER_DIR), r.deadline)
        .await
    {
        Ok(a) => {
            if let Some(events) = r.events {
                // The launcher the observation found when none is configured: the watch
                // recognises the chain's driver by its command line.
                let found = a.observation.as_ref().ok();
                let launcher = Some(req.launcher.as_str())
                    .filter(|l| !l.trim().is_empty())
                    .or_else(|| found.and_then(|o| o.core_launcher.as_deref()))
                    .unwrap_or_default();
                let watched = WatchRequest {
                    spec: req.spec.clone(),
                    session: req.session.clone(),
                    workspace: req.workspace.clone(),
                    launcher: launcher.to_string(),
                    lease_ttl_secs: r.lease_ttl.as_secs_f64(),
                    pr_poll_secs: r.pr_poll.as_secs_f64(),
                    log_path: req.log_path.clone(),
                    stall_after_secs: r.stall_after.as_secs_f64(),
                };
                // Without a watch the schedule still ticks; say why once per tick.
                if let Err(why) = r.residents.watch(r.key, &launch, &watched, events).await {
                    tracing::info!(
                        key = r.key,
                        "no runner watch ({why}); ticks follow the schedule only"
                    );
                }
            }
            a.observation.map(Some).map_err(ErrorBody::from)
        }
        Err(e @ ResidentError::Deadline(_)) => {
            Err(ErrorBody::new(ErrorCode::DeadlineExceeded, e.to_string()))
        }
        Err(e @ ResidentError::Unavailable(_)) => {
            tracing::info!(key = r.key, "{e}; one-shot observation");
            Ok(None)
        }
    }
}

async fn observe_unredacted(
    p: &impl Provider,
    target: &ChainTarget,
    launcher: &str,
    for_tick: bool,
    resident: Option<Resident<'_>>,
) -> Result<(Observation, ChainSpec), ErrorBody> {
    let req = ObserveRequest {
        spec: target.spec.clone(),
        session: target.session.clone(),
        workspace: target.workspace.clone(),
        launcher: launcher.to_string(),
        log_path: target.log_path.clone(),
        sync_refresh: for_tick,
        pr_probe: for_tick,
    };
    let answered = match resident {
        Some(r) => ask_resident(p, r, &req).await?,
        None => None,
    };
    let obs = match answered {
        Some(obs) => obs,
        None => {
            let r = p.observe(&observe_script(&req)).await?;
            observe::parse_observation(&r.stdout).map_err(|e| {
                // No observation and a failed command: the runner itself refused (container
                // stopped or gone, no shell), and its own words say why better than a guess
                // about the launcher.
                if r.code != 0 && !r.stderr.trim().is_empty() {
                    remote_failure("the chain observation in the runner", &r).into()
                } else {
                    ErrorBody::from(e)
                }
            })?
        }
    };
    if let Some(e) = &obs.state_error {
        return Err(e.clone().into());
    }
    let Some(chain_spec) = obs.spec.clone() else {
        return Err(obs
            .spec_error
            .clone()
            .map(ErrorBody::from)
            .unwrap_or_else(|| {
                ErrorBody::new(
                    ErrorCode::ProviderFailed,
                    format!("remote chain spec {} could not be read", target.spec),
                )
            }));
    };
    Ok((obs, chain_spec))
}
