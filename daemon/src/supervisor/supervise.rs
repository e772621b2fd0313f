//! The supervise tick: observe (with the sync refresh and PR probe, in ONE remote execution)
//! → classify → decide (a pure function) → at most one mutation (a second remote execution)
//! → report. Used by `supervise --chain` and by every scheduled tick.

use super::markers;
use super::quarantine::{self, Gate};
use super::target::{ChainTarget, Looked, look};
use crate::chain::decide::{self, TickFacts};
use crate::chain::observe::Observation;
use crate::chain::summary;
use crate::cloud_yaml::{self, CloudSpec};
use crate::provider::{self, Provider, ProviderCtx};
use crate::redact::Redact;
use crate::redact::Redactor;
use crate::runner::fence::{
    self, FenceMode, Floors, GateOutcome, GateRequest, Verdict, gate_script,
};
use crate::runner::layout::SESSION_MARKER_DIR;
use crate::runner::mutation::{MutationTarget, mutation_script};
use crate::state::AppState;
use crate::store::NewGateRefusal;
use chrono::Utc;
use megaplan_cloud_api::liveness::Quarantine;
use megaplan_cloud_api::report::{
    self, ChainPosition, LogsInfo, NextAction, PrInfo, ProviderConsistency, ReportedStatus,
    RunnerInfo, SyncInfo, SyncRefresh, TickEvent, TickReport,
};
use megaplan_cloud_api::{ErrorBody, ErrorCode};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// One tick for a cloud.yaml. Never fails: every problem becomes a `supervisor_error` report.
/// The report is redacted before it is returned.
pub async fn tick(
    state: &Arc<AppState>,
    cloud_yaml: &str,
    remote_spec: Option<&str>,
) -> TickReport {
    tick_with(state, cloud_yaml, remote_spec, false).await
}

/// [`tick`], optionally as a dry run (no mutation; `dry_run: true` in the report).
pub async fn tick_with(
    state: &Arc<AppState>,
    cloud_yaml: &str,
    remote_spec: Option<&str>,
    dry_run: bool,
) -> TickReport {
    let started_at = Utc::now();
    let spec = match cloud_yaml::load_async(Path::new(cloud_yaml)).await {
        Ok(s) => s,
        Err(e) => {
            // The file no longer parses, so its secret names are unknown: redact with every
            // value a client last handed over for this key (a credential typed next to a
            // syntax error must not reach the stored report).
            let key = megaplan_cloud_api::paths::resolved_marker_key(Path::new(cloud_yaml));
            let known = state.secret_values(&key, &[]);
            let names: Vec<String> = known.keys().cloned().collect();
            return finish(
                error_report(&e.to_string()),
                started_at,
                Counts::default(),
                &Redactor::new(&names, &known),
            );
        }
    };
    let key = spec.key();
    let secrets = state.secret_values(&key, &spec.secrets);
    let redactor = Redactor::cached(&key, &spec.secrets, &secrets);
    let mut counts = Counts::default();
    // Pause and dry run: a separate input to the decision (decide::hold).
    let pause = match super::pause::get_pause(state.store(), &key).await {
        Ok(p) => p,
        Err(e) => {
            return finish(
                error_report(&format!("cannot read the pause state: {e}")),
                started_at,
                Counts::default(),
                &redactor,
            );
        }
    };
    let hold = if dry_run {
        Some(decide::Hold::DryRun)
    } else {
        pause.as_ref().map(|p| decide::Hold::Paused {
            by: p.paused_by.clone(),
            since: p.since.clone(),
        })
    };
    let report = match observe_and_act(
        state,
        &spec,
        remote_spec,
        &mut counts,
        &redactor,
        secrets,
        hold.as_ref(),
    )
    .await
    {
        Ok(mut r) => {
            super::stall::annotate_report(&mut r, Utc::now(), state.notifier().config.stall_after);
            r.paused = Some(pause.map(pause_for_report));
            r.dry_run = dry_run;
            r
        }
        Err(e) => {
            let d = decide::status_read_failed(&e.to_string());
            let mut r = error_report(d.refused_reason.as_deref().unwrap_or_default());
            r.error = Some(e.error.as_str().to_string());
            // Not observed: `unknown`, which never authorizes a restart or an advance.
            r.liveness = Some(not_observed(&e));
            r.rule = Some(d.rule);
            r
        }
    };
    finish(report, started_at, counts, &redactor)
}

/// What a tick cost on the runner, reported beside its outcome.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    /// Remote executions (observation, mutation).
    round_trips: u32,
    /// Imports of the megaplan core the tick caused on the runner: 0 in steady state (the
    /// resident observer holds it imported).
    core_starts: u32,
}

fn finish(
    mut report: TickReport,
    started_at: chrono::DateTime<Utc>,
    counts: Counts,
    r: &Redactor,
) -> TickReport {
    report.started_at = Some(started_at.to_rfc3339());
    report.finished_at = Some(Utc::now().to_rfc3339());
    report.remote_round_trips = Some(counts.round_trips);
    report.core_starts = Some(counts.core_starts);
    // Every free-text field; the closed vocabularies (event, action, status, liveness)
    // hold no secret and are kept as decided.
    report.redact_with(r);
    report
}

/// Each remote command of a tick may run this much longer than the tick itself, so a hung tick
/// always ends by the tick's own deadline (one report saying so) rather than by a race with
/// the command's; the runner-side kill of the command (see `provider::ssh`) follows moments
/// later.
/// The most of a pause's free-text `reason` copied into each tick report: the report refers
/// to the pause (who, since when, the start of the note); the pause itself holds the note.
pub const REPORT_PAUSE_REASON_BYTES: usize = 120;

/// The pause as a tick report carries it: its `reason` clipped to
/// [`REPORT_PAUSE_REASON_BYTES`] at a character boundary (`…` marks a cut), whatever was stored
/// (a pause saved before the limit existed may hold far more).
pub fn pause_for_report(mut p: report::Pause) -> report::Pause {
    if let Some(r) = &mut p.reason
        && r.len() > REPORT_PAUSE_REASON_BYTES
    {
        let mut end = REPORT_PAUSE_REASON_BYTES;
        while !r.is_char_boundary(end) {
            end -= 1;
        }
        r.truncate(end);
        r.push('…');
    }
    p
}

const TICK_COMMAND_SLACK: std::time::Duration = std::time::Duration::from_secs(2);

/// The deadline of a tick's observation (resident or one-shot): `--observe-timeout` when it is
/// shorter than the tick's, so a hung runner ends the tick early and says so; else the tick's
/// own (plus the slack), so the tick deadline reports first.
pub fn observe_deadline(
    observe_timeout: std::time::Duration,
    tick_timeout: std::time::Duration,
) -> std::time::Duration {
    if observe_timeout < tick_timeout {
        observe_timeout
    } else {
        tick_timeout + TICK_COMMAND_SLACK
    }
}

async fn observe_and_act(
    state: &Arc<AppState>,
    spec: &CloudSpec,
    remote_spec: Option<&str>,
    counts: &mut Counts,
    redactor: &Redactor,
    secrets: std::collections::BTreeMap<String, String>,
    hold: Option<&decide::Hold>,
) -> Result<TickReport, ErrorBody> {
    let key = &spec.key();
    let looked = look(state, spec, key, remote_spec).await?;
    let spec_arc = Arc::new(spec.clone());
    let deploy_dir = crate::render::persistent_deploy_dir(spec, &state.settings().cloud_home)
        .unwrap_or_else(std::env::temp_dir);
    let pctx = ProviderCtx {
        spec: spec_arc,
        deploy_dir,
        secrets,
        redactor: redactor.clone(),
        deadline: state.settings().tick_timeout + TICK_COMMAND_SLACK,
    };
    let observe_deadline = observe_deadline(
        state.settings().observe_timeout,
        state.settings().tick_timeout,
    );
    // The observation is read unredacted (see observe_chain); the report is redacted
    // as a whole in `finish`. Its provider carries the observation's deadline.
    let raw = provider::for_spec(
        ProviderCtx {
            redactor: Redactor::none(),
            deadline: observe_deadline,
            ..pctx.clone()
        },
        state.ssh(),
    )?;
    let p = provider::for_spec(pctx, state.ssh())?;
    if !p.has_exec() {
        let d = decide::decide_without_exec(&looked.consistency);
        return Ok(report(
            &d,
            &looked.target.spec,
            ReportedStatus::Unknown,
            None,
            looked.consistency,
        ));
    }

    // Round trip 1: observe + sync refresh + re-observe + PR probe, in one remote script.
    counts.round_trips += 1;
    let configured = crate::chain::launcher::configured(spec);
    let (obs, chain_spec) = looked
        .observe(
            state,
            &raw,
            redactor,
            spec,
            key,
            true,
            observe_deadline,
            Some(state.runner_events()),
        )
        .await?;
    counts.core_starts += obs.core_starts;
    let Looked {
        marker,
        marker_warnings,
        target,
        consistency,
    } = looked;
    let effective = summary::effective_status(&obs, &chain_spec);
    let facts = TickFacts {
        effective_status: effective,
        provider_consistency: consistency.clone(),
        has_exec: true,
        liveness: obs.liveness,
        pr_number: obs.state.as_ref().and_then(|s| s.pr_number),
        pr_probe: obs.pr_probe.clone(),
    };
    let found_launcher = obs.core_launcher.clone();
    let verdict = obs.verdict.clone();
    let observed = Observed::of(obs, &chain_spec, &target, &consistency);
    let d = decide::decide(&facts);
    let d = decide::hold(d, hold);
    // The quarantine gate, around the pure decision: a launch it wants may wait (back-off) or
    // be refused (quarantined); the follow-up tick comes by itself when something is due.
    let (d, quarantine, mut follow_up) =
        quarantine_gate(state, spec, &p, &target, redactor, counts, d).await?;
    if let Some(wait) = verdict.pending_secs() {
        // The driver is gone but its lease holds: look again right after it expires.
        follow_up = Some(Duration::from_secs_f64(wait) + LEASE_SLACK);
    }
    if let Some(after) = follow_up {
        tick_later(state, key, after);
    }

    let mut out = report(
        &d,
        &target.spec,
        effective.into(),
        Some(&observed),
        consistency.clone(),
    );
    if let Some(kind) = d.mutation {
        // The launcher of the mutation: as configured, else what this observation found.
        let Some(launcher) = configured.map(str::to_string).or(found_launcher) else {
            return Err(crate::chain::error::ChainError::NoCore.into());
        };
        // Round trip 2: the one mutation, from the closed set in `decide`.
        let digest = marker
            .as_ref()
            .filter(|m| m.describes(&target.spec))
            .and_then(|m| m.identity_digest.get().cloned());
        let mutation = MutationTarget {
            session: target.session.clone(),
            workspace: target.workspace.clone(),
            spec: target.spec.clone(),
            launcher: launcher.clone(),
            log_path: target.log_path.clone(),
            marker_dir: SESSION_MARKER_DIR.to_string(),
            identity_digest: digest,
        };
        // The launch goes behind the runner's gate: the fencing token this daemon last knew
        // (compare-and-swap), the driver check and the preflight, under one lock with the start.
        let expected = state.store().fence_token(key).await?;
        let holder = fence::daemon_holder(state.store().path());
        let mut gate = GateRequest::new(
            FenceMode::CompareAndSwap,
            expected,
            holder.clone(),
            &target.workspace,
            &target.spec,
            &launcher,
            floors(spec),
        );
        gate.marker_file = Some(mutation.marker_file());
        let script = gate_script(&gate, &mutation_script(kind.as_str(), &mutation));
        counts.round_trips += 1;
        let mut gated = None;
        let applied = match p.exec(&script, None).await {
            Ok(r) => {
                let verdict = Verdict::parse(&r.stdout);
                let stdout: Vec<&str> = r
                    .stdout
                    .lines()
                    .filter(|l| !l.starts_with(fence::GATE_PREFIX))
                    .collect();
                let stdout = stdout.join("\n");
                let said = if r.stderr.trim().is_empty() {
                    stdout.trim()
                } else {
                    r.stderr.trim()
                };
                let applied = match verdict.as_ref().map(Verdict::outcome) {
                    Some(GateOutcome::Refused(v)) => {
                        refused(report::Rule::FencedOff, &v.refusal_message())
                    }
                    Some(GateOutcome::PreflightFailed(checks)) => refused(
                        report::Rule::PreflightFailed,
                        &fence::preflight_message(&checks),
                    ),
                    _ => decide::mutation_outcome(kind, Ok(r.code), said),
                };
                if let Some(v) = verdict {
                    gate_recorded(state, key, &holder, &v, &applied).await;
                    gated = Some(v);
                }
                applied
            }
            Err(e) => decide::mutation_outcome(kind, Err(e.to_string()), ""),
        };
        out = report(
            &applied,
            &target.spec,
            effective.into(),
            Some(&observed),
            consistency,
        );
        if let Some(v) = gated {
            gate_in_report(&mut out, expected, &v);
        }
        if applied.acted && kind == decide::MutationKind::RestartRunner {
            let now = Utc::now();
            let policy = quarantine::Policy::of(
                &spec.supervise,
                state.notifier().config.quarantine_after,
                state.notifier().config.quarantine_window,
            );
            let window = chrono::Duration::from_std(policy.window).unwrap_or(chrono::Duration::MAX);
            if let Err(e) = quarantine::record_restart(state.store(), key, now, now - window).await
            {
                tracing::warn!(key, "the restart could not be recorded: {e}");
            }
        }
        if applied.acted {
            // A restart or advance is a launch: keep the last-chain marker describing it.
            let updated = markers::launched(
                marker.as_ref(),
                markers::Launch {
                    remote_spec: &target.spec,
                    workspace: &target.workspace,
                    session: &target.session,
                    log: &target.log_path,
                    by: markers::LaunchedBy::Supervisor(applied.next_action.clone()),
                },
                spec,
                Utc::now(),
            );
            if let Err(e) =
                markers::save(state, key, &spec.path.display().to_string(), &updated).await
            {
                tracing::warn!(key, "tick acted but the marker could not be updated: {e}");
            }
        }
    }
    let mut marker_warnings = marker_warnings;
    if !state.residents().watching(key) {
        // Item 1's fallback, said where a person looks (`explain`): no events from this runner.
        marker_warnings.push(
            "no watch on the runner (the resident observer cannot run there, e.g. no python, or its session was lost): this registration is ticked by its schedule only until the observer is back".to_string(),
        );
    }
    if !marker_warnings.is_empty() {
        out.warnings = Some(marker_warnings);
    }
    out.liveness = Some(verdict);
    out.quarantine = quarantine;
    Ok(out)
}

/// The liveness of a tick whose observation failed: `unknown`; `reachable: false` when the
/// runner itself did not answer (transport, container, deadline), else the evidence is the
/// error alone (the runner answered, the chain could not be read).
fn not_observed(e: &ErrorBody) -> megaplan_cloud_api::liveness::Liveness {
    use megaplan_cloud_api::liveness::{Evidence, LiveState, Liveness};
    match e.error {
        ErrorCode::ProviderUnavailable
        | ErrorCode::ProviderFailed
        | ErrorCode::DeadlineExceeded => Liveness::unreachable(&e.message),
        _ => Liveness {
            state: LiveState::Unknown,
            evidence: Evidence {
                detail: format!("the driver was not observed: {}", e.message),
                ..Evidence::default()
            },
        },
    }
}

/// A follow-up tick comes this long after the driver's lease expires (the runner's clock and
/// ours need not agree to the millisecond).
const LEASE_SLACK: Duration = Duration::from_millis(1500);

/// Lines of the driver log a quarantine keeps (and its notification carries).
pub const QUARANTINE_LOG_LINES: usize = 20;

/// A decision that applies nothing, for `reason`.
fn withheld(rule: report::Rule, reason: String) -> decide::Decision {
    decide::Decision {
        rule,
        event: TickEvent::Blocked,
        next_action: NextAction::Blocked,
        acted: false,
        refused_reason: Some(reason),
        mutation: None,
    }
}

/// The crash-loop gate (`supervisor/quarantine.rs`) of a decision that wants a launch: go,
/// wait (back-off; the returned duration is when to look again) or quarantine. Returns the
/// decision to apply, the quarantine in force and the follow-up delay.
async fn quarantine_gate(
    state: &Arc<AppState>,
    spec: &CloudSpec,
    p: &impl Provider,
    target: &ChainTarget,
    redactor: &Redactor,
    counts: &mut Counts,
    d: decide::Decision,
) -> Result<(decide::Decision, Option<Quarantine>, Option<Duration>), ErrorBody> {
    let key = spec.key();
    let store_err =
        |e: crate::store::StoreError| ErrorBody::new(ErrorCode::StorageFailed, e.message);
    let current = quarantine::get(state.store(), &key)
        .await
        .map_err(store_err)?;
    let Some(kind) = d.mutation else {
        return Ok((d, current, None));
    };
    let fix = format!("`megaplan-cloudctl unquarantine {key}` (or `resume`) clears it");
    if let Some(q) = current {
        let why = format!(
            "quarantined since {}: {}; the supervisor would {} but starts nothing; {fix}",
            q.since,
            q.reason,
            kind.as_str()
        );
        return Ok((withheld(report::Rule::Quarantined, why), Some(q), None));
    }
    let now = Utc::now();
    let cfg = &quarantine::Policy::of(
        &spec.supervise,
        state.notifier().config.quarantine_after,
        state.notifier().config.quarantine_window,
    );
    let window = chrono::Duration::from_std(cfg.window).unwrap_or(chrono::Duration::MAX);
    let recent = quarantine::recent_restarts(state.store(), &key, now - window)
        .await
        .map_err(store_err)?;
    match quarantine::gate(now, &recent, cfg, quarantine::jitter(now)) {
        Gate::Go => Ok((d, None, None)),
        Gate::Wait { until, restarts } => {
            let wait = (until - now).to_std().unwrap_or_default();
            let why = format!(
                "backing off: {restarts} restart(s) in the last {}; the next {} is due at {} (in {} s)",
                megaplan_cloud_api::duration::coarse(cfg.window.as_secs()),
                kind.as_str(),
                until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                wait.as_secs().max(1)
            );
            Ok((
                withheld(report::Rule::RestartBackoff, why),
                None,
                Some(wait + Duration::from_millis(200)),
            ))
        }
        Gate::Quarantine { restarts } => {
            counts.round_trips += 1;
            let log = crate::runner::mutation::MutationTarget {
                session: target.session.clone(),
                workspace: target.workspace.clone(),
                spec: target.spec.clone(),
                launcher: String::new(),
                log_path: target.log_path.clone(),
                marker_dir: SESSION_MARKER_DIR.to_string(),
                identity_digest: None,
            }
            .log_abs();
            let script = format!(
                "tail -n {QUARANTINE_LOG_LINES} -- {} 2>/dev/null || true",
                crate::shell::quote(&log)
            );
            let log_tail: Vec<String> = match p.exec(&script, None).await {
                Ok(r) => r.stdout.lines().map(|l| redactor.redact(l)).collect(),
                Err(e) => vec![format!("(the driver log could not be read: {e})")],
            };
            let q = Quarantine {
                key: key.clone(),
                since: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                restarts,
                reason: format!(
                    "the driver died again after each of its last {restarts} restarts within {}",
                    megaplan_cloud_api::duration::coarse(cfg.window.as_secs())
                ),
                log_tail,
            };
            quarantine::put(state.store(), &q)
                .await
                .map_err(store_err)?;
            let why = format!("quarantined: {}; {fix}", q.reason);
            Ok((withheld(report::Rule::Quarantined, why), Some(q), None))
        }
    }
}

/// Tick `key` again after `after`, through the runner-event path (coalesced with any event
/// that comes meanwhile; never beside another tick of the key).
fn tick_later(state: &Arc<AppState>, key: &str, after: Duration) {
    let events = state.runner_events().clone();
    let stop = state.shutdown().clone();
    let key = key.to_string();
    state.tasks().spawn(async move {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(after) => {}
        }
        let _ = events
            .send(crate::provider::resident::RunnerEvent {
                key,
                what: "a follow-up the last tick asked for (lease expiry or restart back-off)"
                    .into(),
                lost: false,
            })
            .await;
    });
}

/// The preflight floors of a cloud.yaml.
fn floors(spec: &CloudSpec) -> Floors {
    Floors {
        disk_bytes: spec.preflight.min_free_disk,
        inodes: spec.preflight.min_free_inodes,
    }
}

/// A launch the runner's gate refused (fenced off or stopped by the preflight): nothing was
/// launched; a person reads why in `refused_reason`.
fn refused(rule: report::Rule, reason: &str) -> decide::Decision {
    decide::Decision {
        rule,
        event: report::TickEvent::Blocked,
        next_action: NextAction::Blocked,
        acted: false,
        refused_reason: Some(reason.to_string()),
        mutation: None,
    }
}

/// Keep the local token current with what the gate showed (accepted: ours; refused: the
/// holder's, so the next tick offers it), and record a refusal in the store.
async fn gate_recorded(
    state: &Arc<AppState>,
    key: &str,
    holder: &str,
    v: &Verdict,
    applied: &decide::Decision,
) {
    let (token, by) = match v.outcome() {
        GateOutcome::Accepted { token } => (token, Some(holder)),
        _ => (v.known_token(), v.holder.as_deref()),
    };
    if let Err(e) = state.store().raise_fence_token(key, token, by).await {
        tracing::warn!(key, "cannot save the fencing token: {e}");
    }
    if matches!(v.outcome(), GateOutcome::Accepted { .. }) {
        return;
    }
    let reason = if v.verdict == "preflight_failed" {
        "preflight_failed"
    } else {
        v.reason.as_deref().unwrap_or("refused")
    };
    let refusal = NewGateRefusal {
        source: "tick",
        reason,
        offered: v.offered,
        held: v.held,
        holder: v.holder.as_deref(),
        message: applied.refused_reason.as_deref().unwrap_or_default(),
    };
    if let Err(e) = state.store().record_gate_refusal(key, &refusal).await {
        tracing::warn!(key, "cannot record a refused launch: {e}");
    }
}

/// The gate's verdict in the report: `fencing` (the token offered, the verdict, who holds the
/// chain) always; `preflight` (the failed checks) when the preflight stopped the launch.
fn gate_in_report(out: &mut TickReport, expected: u64, v: &Verdict) {
    let fencing = FencingInReport {
        expected,
        verdict: &v.verdict,
        held: v.held,
        holder: v.holder.as_deref(),
        token: v.token,
        reason: v.reason.as_deref(),
    };
    // Numbers, text and the checks' text: encoding cannot fail.
    if let Ok(fencing) = serde_json::to_value(fencing) {
        out.extra.insert("fencing".into(), fencing);
    }
    if let GateOutcome::PreflightFailed(checks) = v.outcome() {
        let preflight = PreflightInReport {
            passed: false,
            checks: &checks,
        };
        if let Ok(preflight) = serde_json::to_value(preflight) {
            out.extra.insert("preflight".into(), preflight);
        }
    }
}

/// A tick report's `fencing`: the token the tick expected, the gate's verdict and who held the
/// chain (`null` when unknown); the token taken and the refusal's reason only when there are.
#[derive(serde::Serialize)]
struct FencingInReport<'a> {
    expected: u64,
    verdict: &'a str,
    held: Option<u64>,
    holder: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

/// A tick report's `preflight` when the preflight stopped the launch: the failed checks.
#[derive(serde::Serialize)]
struct PreflightInReport<'a> {
    passed: bool,
    checks: &'a [fence::PreflightCheck],
}

/// What a tick report shows of an observation: the status payload's `runner`, `sync`, `pr`,
/// `logs` and `sync_refresh`, moved out of it, and where the chain stands.
struct Observed {
    runner: RunnerInfo,
    sync: SyncInfo,
    pr: PrInfo,
    logs: LogsInfo,
    sync_refresh: Option<SyncRefresh>,
    /// The chain state's `current_milestone_index` as observed, and the spec's labels.
    milestone_index: i64,
    labels: Vec<String>,
}

impl Observed {
    /// Where the chain stands after the tick: the observed milestone, or the next one when
    /// this tick merged-and-advanced (what the runner is now working on).
    fn position(&self, d: &decide::Decision) -> ChainPosition {
        let labels: Vec<&str> = self.labels.iter().map(String::as_str).collect();
        let advanced = d.acted && d.next_action == NextAction::Advance;
        let index = self.milestone_index.saturating_add(i64::from(advanced));
        ChainPosition::of(index, &labels)
    }

    fn of(
        obs: Observation,
        chain_spec: &crate::chain::spec::ChainSpec,
        target: &ChainTarget,
        consistency: &ProviderConsistency,
    ) -> Observed {
        let milestone_index = obs.state.as_ref().map_or(-1, |s| s.current_milestone_index);
        let status = summary::status_payload(
            obs,
            chain_spec,
            consistency,
            &target.session,
            &target.workspace,
        );
        Observed {
            runner: status.runner,
            sync: status.sync,
            pr: status.pr,
            logs: status.logs,
            sync_refresh: status.sync_refresh,
            milestone_index,
            labels: chain_spec
                .milestones
                .iter()
                .map(|m| m.label.clone())
                .collect(),
        }
    }
}

fn report(
    d: &decide::Decision,
    spec: &str,
    effective_status: ReportedStatus,
    observed: Option<&Observed>,
    provider_consistency: ProviderConsistency,
) -> TickReport {
    TickReport {
        success: d.success(),
        event: d.event.clone(),
        spec: spec.to_string(),
        effective_status,
        next_action: d.next_action.clone(),
        acted: d.acted,
        refused_reason: d.refused_reason.clone(),
        rule: Some(d.rule.clone()),
        runner: observed.map(|o| o.runner.clone()).unwrap_or_default(),
        sync: observed.map(|o| o.sync.clone()).unwrap_or_default(),
        pr: observed.map(|o| o.pr.clone()).unwrap_or_default(),
        logs: observed.map(|o| o.logs.clone()).unwrap_or_default(),
        sync_refresh: Some(observed.and_then(|o| o.sync_refresh.clone())),
        milestone: observed.map(|o| o.position(d)),
        provider_consistency: Some(provider_consistency),
        ..TickReport::error("")
    }
}

/// A `supervisor_error` report (same shape as every tick report).
pub fn error_report(reason: &str) -> TickReport {
    TickReport::error(reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The report's `fencing` and `preflight` keep their shape: `held`/`holder` always (null
    /// when unknown), `token`/`reason` only when the gate said them.
    #[test]
    fn the_gate_verdict_in_the_report_keeps_its_shape() {
        let check = fence::PreflightCheck {
            check: "disk".into(),
            field: "preflight.disk".into(),
            detail: "1 byte free".into(),
            fix: "free some space".into(),
        };
        let cases = [
            (
                Verdict {
                    verdict: "accepted".into(),
                    token: Some(4),
                    held: Some(3),
                    holder: Some("daemon@h".into()),
                    ..Verdict::default()
                },
                json!({"expected": 3, "verdict": "accepted", "held": 3, "holder": "daemon@h", "token": 4}),
                None,
            ),
            (
                Verdict {
                    verdict: "refused".into(),
                    reason: Some("stale_token".into()),
                    ..Verdict::default()
                },
                json!({"expected": 3, "verdict": "refused", "held": null, "holder": null, "reason": "stale_token"}),
                None,
            ),
            (
                Verdict {
                    verdict: "preflight_failed".into(),
                    checks: Some(vec![check.clone()]),
                    ..Verdict::default()
                },
                json!({"expected": 3, "verdict": "preflight_failed", "held": null, "holder": null}),
                Some(json!({"passed": false, "checks": [check]})),
            ),
        ];
        for (v, fencing, preflight) in cases {
            let mut out = TickReport::error("");
            gate_in_report(&mut out, 3, &v);
            assert_eq!(out.extra.get("fencing"), Some(&fencing), "{v:?}");
            assert_eq!(out.extra.get("preflight"), preflight.as_ref(), "{v:?}");
            assert_eq!(
                serde_json::to_string(&out.extra["fencing"]).unwrap(),
                fencing.to_string()
            );
        }
    }

    #[test]
    fn the_observation_deadline_is_its_own_when_shorter_else_the_ticks_plus_slack() {
        let s = Duration::from_secs;
        assert_eq!(observe_deadline(s(3), s(60)), s(3));
        assert_eq!(observe_deadline(s(60), s(600)), s(60));
        assert_eq!(observe_deadline(s(60), s(5)), s(5) + TICK_COMMAND_SLACK);
        assert_eq!(observe_deadline(s(5), s(5)), s(5) + TICK_COMMAND_SLACK);
    }

    #[test]
    fn a_report_carries_only_the_start_of_a_pause_reason() {
        let p = |reason: Option<String>| report::Pause {
            key: "k".into(),
            paused_by: "ops@box".into(),
            reason,
            since: "2026-01-01T00:00:00Z".into(),
        };
        let short = pause_for_report(p(Some("manual repair".into())));
        assert_eq!(short.reason.as_deref(), Some("manual repair"));
        assert_eq!(pause_for_report(p(None)).reason, None);
        let long = pause_for_report(p(Some("é".repeat(1024 * 1024))));
        let r = long.reason.unwrap();
        assert!(
            r.len() <= REPORT_PAUSE_REASON_BYTES + '…'.len_utf8(),
            "{}",
            r.len()
        );
        assert!(r.starts_with("éé") && r.ends_with('…'));
        assert_eq!(long.paused_by, "ops@box");
    }
}
