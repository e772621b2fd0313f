//! The supervise tick: observe (with the sync refresh and PR probe, in ONE remote execution)
//! → classify → decide (a pure function) → at most one mutation (a second remote execution)
//! → report. Used by `supervise --chain` and by every scheduled tick.

use super::markers;
use super::target::{ChainTarget, chain_target, observe_chain};
use crate::chain::classify::Liveness;
use crate::chain::decide::{self, TickFacts};
use crate::chain::summary;
use crate::cloud_yaml::{self, CloudSpec};
use crate::provider::{self, Provider, ProviderCtx};
use crate::redact::Redactor;
use crate::runner::layout::SESSION_MARKER_DIR;
use crate::runner::mutation::{MutationTarget, mutation_script};
use crate::state::AppState;
use chrono::Utc;
use megaplan_cloud_api::ErrorBody;
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;

/// One tick for a cloud.yaml. Never fails: every problem becomes a `supervisor_error` report.
/// The report is redacted before it is returned.
pub async fn tick(state: &Arc<AppState>, cloud_yaml: &str, remote_spec: Option<&str>) -> Value {
    tick_with(state, cloud_yaml, remote_spec, false).await
}

/// [`tick`], optionally as a dry run (no mutation; `dry_run: true` in the report).
pub async fn tick_with(
    state: &Arc<AppState>,
    cloud_yaml: &str,
    remote_spec: Option<&str>,
    dry_run: bool,
) -> Value {
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
    let pause = match crate::notify::store::get_pause(&state.store, &key).await {
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
            crate::notify::stall::annotate(&mut r, Utc::now(), state.notifier.config.stall_after);
            if let Some(o) = r.as_object_mut() {
                o.insert("paused".into(), json!(pause));
                if dry_run {
                    o.insert("dry_run".into(), true.into());
                }
            }
            r
        }
        Err(e) => {
            let d = decide::status_read_failed(&e.to_string());
            let mut r = error_report(d.refused_reason.as_deref().unwrap_or_default());
            if let Some(o) = r.as_object_mut() {
                o.insert("error".into(), e.error.as_str().into());
            }
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
    mut report: Value,
    started_at: chrono::DateTime<Utc>,
    counts: Counts,
    r: &Redactor,
) -> Value {
    if let Some(o) = report.as_object_mut() {
        o.insert("started_at".into(), started_at.to_rfc3339().into());
        o.insert("finished_at".into(), Utc::now().to_rfc3339().into());
        o.insert("remote_round_trips".into(), counts.round_trips.into());
        o.insert("core_starts".into(), counts.core_starts.into());
    }
    r.redact_json(&report)
}

/// Each remote command of a tick may run this much longer than the tick itself, so a hung tick
/// always ends by the tick's own deadline (one report saying so) rather than by a race with
/// the command's; the runner-side kill of the command (see `provider::ssh`) follows moments
/// later.
const TICK_COMMAND_SLACK: std::time::Duration = std::time::Duration::from_secs(2);

async fn observe_and_act(
    state: &Arc<AppState>,
    spec: &CloudSpec,
    remote_spec: Option<&str>,
    counts: &mut Counts,
    redactor: &Redactor,
    secrets: std::collections::BTreeMap<String, String>,
    hold: Option<&decide::Hold>,
) -> Result<Value, ErrorBody> {
    let key = &spec.key();
    let loaded = markers::load(
        state,
        key,
        &spec.path.display().to_string(),
        remote_spec.is_none(),
    )
    .await?;
    let marker_warnings = loaded.warnings;
    let marker = loaded.marker;
    let target = chain_target(remote_spec, marker.as_ref(), spec)?;
    let spec_arc = Arc::new(spec.clone());
    let deploy_dir = crate::render::persistent_deploy_dir(spec, &state.settings.cloud_home)
        .unwrap_or_else(std::env::temp_dir);
    let pctx = ProviderCtx {
        spec: spec_arc,
        deploy_dir,
        secrets,
        redactor: redactor.clone(),
        deadline: state.settings.tick_timeout + TICK_COMMAND_SLACK,
    };
    // The observation is read unredacted (see observe_chain); the report is redacted
    // as a whole in `finish`.
    let raw = provider::for_spec(
        ProviderCtx {
            redactor: Redactor::none(),
            ..pctx.clone()
        },
        &state.ssh,
    )?;
    let p = provider::for_spec(pctx, &state.ssh)?;
    let consistency = summary::provider_consistency(
        spec.provider.as_str(),
        &markers::provider_identity(spec),
        marker.as_ref(),
    );
    if !p.has_exec() {
        let d = decide::decide(&TickFacts {
            effective_status: "unknown".into(),
            provider_consistency: consistency.clone(),
            has_exec: false,
            liveness: Liveness::Unknown,
            pr_number: None,
            pr_probe: None,
        });
        return Ok(report(
            &d,
            &target.spec,
            "unknown",
            &json!({}),
            consistency,
            None,
        ));
    }

    // Round trip 1: observe + sync refresh + re-observe + PR probe, in one remote script.
    counts.round_trips += 1;
    let configured = crate::chain::launcher::configured(spec);
    let (obs, chain_spec) = observe_chain(
        &raw,
        redactor,
        &target,
        configured.unwrap_or(""),
        true,
        Some(super::target::Resident {
            residents: &state.residents,
            key,
            deadline: state.settings.tick_timeout + TICK_COMMAND_SLACK,
        }),
    )
    .await?;
    counts.core_starts += obs.core_starts;
    if let Some(l) = &obs.core_launcher {
        state.launchers.remember(key, l);
    }
    let payload = summary::status_payload(
        &obs,
        &chain_spec,
        consistency.clone(),
        &target.session,
        &target.workspace,
    );
    let effective = payload
        .get("effective_status")
        .and_then(Value::as_str)
        .unwrap_or("unknown")
        .to_string();
    let chain_state = obs.state_or_default();
    let d = decide::decide(&TickFacts {
        effective_status: effective.clone(),
        provider_consistency: consistency.clone(),
        has_exec: true,
        liveness: obs.liveness,
        pr_number: chain_state.pr_number,
        pr_probe: obs.pr_probe.clone(),
    });
    let d = decide::hold(d, hold);

    let mut out = report(
        &d,
        &target.spec,
        &effective,
        &payload,
        consistency.clone(),
        obs.sync_refresh.clone(),
    );
    if let Some(kind) = d.mutation {
        // The launcher of the mutation: as configured, else what this observation found.
        let Some(launcher) = configured
            .map(str::to_string)
            .or_else(|| obs.core_launcher.clone())
        else {
            return Err(crate::chain::launcher::no_core_error());
        };
        // Round trip 2: the one mutation, from the closed set in `decide`.
        let digest = marker
            .as_ref()
            .filter(|m| m.get("remote_spec").and_then(Value::as_str) == Some(target.spec.as_str()))
            .and_then(|m| m.get("identity_digest"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let script = mutation_script(
            kind.as_str(),
            &MutationTarget {
                session: target.session.clone(),
                workspace: target.workspace.clone(),
                spec: target.spec.clone(),
                launcher,
                log_path: target.log_path.clone(),
                marker_dir: SESSION_MARKER_DIR.to_string(),
                identity_digest: digest,
            },
        );
        counts.round_trips += 1;
        let applied = match p.exec(&script, None).await {
            Ok(r) => {
                let said = if r.stderr.trim().is_empty() {
                    r.stdout.trim()
                } else {
                    r.stderr.trim()
                };
                decide::mutation_outcome(kind, Ok(r.code), said)
            }
            Err(e) => decide::mutation_outcome(kind, Err(e.message), ""),
        };
        out = report(
            &applied,
            &target.spec,
            &effective,
            &payload,
            consistency,
            obs.sync_refresh.clone(),
        );
        if applied.acted {
            // A restart or advance is a launch: keep the last-chain marker describing it.
            let updated = relaunched_marker(marker.as_ref(), &target, spec, applied.next_action);
            if let Err(e) =
                markers::save(state, key, &spec.path.display().to_string(), &updated).await
            {
                tracing::warn!(key, "tick acted but the marker could not be updated: {e}");
            }
        }
    }
    if !marker_warnings.is_empty()
        && let Some(o) = out.as_object_mut()
    {
        o.insert("warnings".into(), json!(marker_warnings));
    }
    Ok(out)
}

/// The last-chain marker after the supervisor (re)launched the runner: the previous marker's
/// fields carried over when it describes this spec, the launch fields refreshed.
fn relaunched_marker(
    previous: Option<&Value>,
    target: &ChainTarget,
    spec: &CloudSpec,
    action: &str,
) -> Value {
    let mut m = previous
        .filter(|m| m.get("remote_spec").and_then(Value::as_str) == Some(target.spec.as_str()))
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let fields = [
        ("remote_spec", json!(target.spec)),
        ("started_at", json!(Utc::now().to_rfc3339())),
        ("workspace", json!(target.workspace)),
        ("chain_session", json!(target.session)),
        ("chain_log", json!(target.log_path)),
        ("last_supervisor_action", json!(action)),
    ];
    for (k, v) in fields {
        m.insert(k.to_string(), v);
    }
    let kept_repos = m.remove("extra_repos");
    m.extend(markers::launch_fields(spec));
    if let Some(r) = kept_repos {
        m.insert("extra_repos".into(), r);
    }
    m.entry("base_branch")
        .or_insert_with(|| json!(spec.repo.branch));
    Value::Object(m)
}

fn report(
    d: &decide::Decision,
    spec: &str,
    effective_status: &str,
    payload: &Value,
    provider_consistency: Value,
    sync_refresh: Option<Value>,
) -> Value {
    let pick = |k: &str| payload.get(k).cloned().unwrap_or_else(|| json!({}));
    json!({
        "success": d.success(),
        "event": d.event,
        "spec": spec,
        "effective_status": effective_status,
        "next_action": d.next_action,
        "acted": d.acted,
        "refused_reason": d.refused_reason,
        "runner": pick("runner"),
        "sync": pick("sync"),
        "pr": pick("pr"),
        "logs": pick("logs"),
        "sync_refresh": sync_refresh,
        "provider_consistency": provider_consistency,
    })
}

/// A `supervisor_error` report (same shape as every tick report).
pub fn error_report(reason: &str) -> Value {
    json!({
        "success": false,
        "event": "supervisor_error",
        "spec": "",
        "effective_status": "unknown",
        "next_action": "none",
        "acted": false,
        "refused_reason": reason,
        "runner": {},
        "sync": {},
        "pr": {},
        "logs": {},
    })
}
