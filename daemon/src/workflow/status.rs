//! Read-only remote views: `status`, `status --chain`, `chains`/`status --all`, and `resume`.

use super::ctx::{Ctx, Done};
use crate::chain::state::lenient;
use crate::chain::summary;
use crate::provider::Provider;
use crate::provider::remote_failure;
use crate::redact::Redact;
use crate::runner::launch::{chains_script, core_command};
use crate::runner::layout::marker_file;
pub use crate::supervisor::target::{
    CHAIN_SESSION, ChainTarget, SpecSource, chain_target, look, observe_chain, resolve_remote_spec,
};
use megaplan_cloud_api::output::{CommandOutput, PlanStatus, Resumed};
use megaplan_cloud_api::status::{ChainSession, ChainSessions};
use megaplan_cloud_api::{ErrorBody, ErrorCode};
use serde::Deserialize;
use serde_json::{Map, Value};

/// `status --chain`: one observation, classified, payload on stdout, summary on stderr.
pub async fn chain_status(ctx: &Ctx, remote_spec: Option<&str>) -> Result<Done, ErrorBody> {
    let looked = look(&ctx.state, &ctx.spec, &ctx.key, remote_spec).await?;
    for w in &looked.marker_warnings {
        ctx.out.stderr(format!("warning: {w}\n")).await;
    }
    let (obs, chain_spec) = looked
        .observe(
            &ctx.state,
            &ctx.raw_runner()?,
            &ctx.redactor,
            &ctx.spec,
            &ctx.key,
            false,
            ctx.state.settings().command_timeout,
            None,
        )
        .await?;
    let (target, consistency) = (&looked.target, &looked.consistency);
    let mut payload = summary::status_payload(
        obs,
        &chain_spec,
        consistency,
        &target.session,
        &target.workspace,
    );
    payload.spec_source = Some(target.source.as_str().to_string());
    crate::supervisor::stall::annotate(
        &mut payload,
        chrono::Utc::now(),
        ctx.state.notifier().config.stall_after,
    );
    payload.redact_with(&ctx.redactor);
    for w in &payload.warnings {
        ctx.out.stderr(format!("warning: {w}\n")).await;
    }
    ctx.out.stderr(summary::summary_text(&payload)).await;
    ctx.out.stderr(summary::cloud_lines(&payload)).await;
    if let Some(age) = payload.stalled_for_secs {
        ctx.out
            .stderr(format!(
                "Stalled: the runner is alive but its log has not grown for {} (reported only; it is never restarted for this)\n",
                crate::notify::transitions::age_text(age)
            ))
            .await;
    }
    Ok(Done::ok(CommandOutput::ChainStatus(Box::new(payload))))
}

/// Parse [`chains_script`] output into one entry per session, sorted by session, in the
/// original's shape with ours beside it (see [`crate::chain::compat::chains_entry`]).
pub fn parse_chains(stdout: &str) -> Result<Vec<ChainSession>, ErrorBody> {
    let mut live = std::collections::BTreeSet::new();
    let mut markers = std::collections::BTreeMap::new();
    for line in stdout.lines() {
        let mut parts = line.splitn(3, '\t');
        match (parts.next(), parts.next()) {
            (Some("LIVE"), Some(s)) => {
                live.insert(s.to_string());
            }
            (Some("MARKER"), Some(s)) => {
                let text = parts.next().unwrap_or_default();
                let m = match serde_json::from_str::<Map<String, Value>>(text) {
                    Ok(object) => Ok(object.into()),
                    Err(e) if e.is_data() => {
                        Err("the session marker is not a JSON object".to_string())
                    }
                    Err(e) => Err(e.to_string()),
                };
                markers.insert(s.to_string(), m);
            }
            _ => {}
        }
    }
    let names: std::collections::BTreeSet<String> = live
        .iter()
        .chain(markers.keys())
        .filter(|k| k.starts_with(CHAIN_SESSION))
        .cloned()
        .collect();
    names
        .into_iter()
        .map(|s| {
            let entry = crate::chain::compat::chains_entry(
                &s,
                live.contains(&s),
                &marker_file(&s),
                markers.get(&s).cloned(),
            );
            // Only a marker field of the wrong type (`remote_spec: 5`) fails here: the file
            // is named, with how to look at it.
            ChainSession::deserialize(entry).map_err(|e| {
                let file = marker_file(&s);
                ErrorBody::new(
                    ErrorCode::ProviderFailed,
                    format!(
                        "the session marker {file} on the runner has a field of the wrong type ({e}); inspect it with `megaplan-cloudctl exec 'cat {file}'`"
                    ),
                )
                .with("file", file.as_str())
            })
        })
        .collect()
}

/// `chains` and `status --all`.
pub async fn chains(ctx: &Ctx) -> Result<Done, ErrorBody> {
    let p = ctx.runner()?;
    let r = p.observe(&chains_script()).await?;
    if r.code != 0 {
        return Err(remote_failure("listing chain sessions", &r).into());
    }
    let sessions = parse_chains(&r.stdout)?;
    if sessions.is_empty() {
        ctx.out
            .stderr("no megaplan-chain sessions on the runner\n")
            .await;
    }
    for s in &sessions {
        ctx.out
            .stderr(format!(
                "[{}] {}  spec={}  started={}\n",
                if s.alive { "alive" } else { "dead" },
                s.session,
                s.remote_spec.as_deref().unwrap_or("-"),
                s.started_at.as_deref().unwrap_or("-"),
            ))
            .await;
    }
    let listed = ChainSessions {
        sessions,
        rest: [("success".to_string(), true.into())].into_iter().collect(),
    };
    Ok(Done::ok(CommandOutput::Sessions(ctx.redact_typed(listed)?)))
}

/// What the daemon reads of the core's `megaplan status` document: `{success, step, plan,
/// state, next_step, valid_next}`, or `success: false` with a `message` (or `error`) when it
/// failed; older cores say `status` for `state`. The document itself goes out unchanged
/// ([`PlanStatus`]); here a field of the wrong type reads as absent.
#[derive(Debug, Default, PartialEq, Deserialize)]
#[serde(default)]
struct CoreStatus {
    #[serde(deserialize_with = "lenient::maybe_flag")]
    success: Option<bool>,
    #[serde(deserialize_with = "lenient::string")]
    plan: Option<String>,
    /// `Some(None)` when present but not text: `status` is not consulted then.
    #[serde(deserialize_with = "lenient::present_string")]
    state: Option<Option<String>>,
    #[serde(deserialize_with = "lenient::string")]
    status: Option<String>,
    #[serde(deserialize_with = "lenient::string")]
    next_step: Option<String>,
    /// `Some(None)` when present but not text: `error` is not consulted then.
    #[serde(deserialize_with = "lenient::present_string")]
    message: Option<Option<String>>,
    #[serde(deserialize_with = "lenient::string")]
    error: Option<String>,
}

impl CoreStatus {
    fn read(doc: &PlanStatus) -> CoreStatus {
        // Every field is lenient, so reading an object cannot fail.
        CoreStatus::deserialize(&doc.0).unwrap_or_default()
    }

    /// The plan's state: `state`, else (when there is no `state` at all) `status`.
    fn state(&self) -> Option<&str> {
        match &self.state {
            Some(state) => state.as_deref(),
            None => self.status.as_deref(),
        }
    }

    fn failed(&self) -> bool {
        self.success == Some(false)
    }

    /// What the core said when it failed: `message`, else (when there is none) `error`.
    fn said(&self) -> Option<&str> {
        match &self.message {
            Some(message) => message.as_deref(),
            None => self.error.as_deref(),
        }
    }
}

/// The JSON object in a core command's stdout (login shells may print noise first), read as
/// `T`: a type that reads only from an object (a map, or [`PlanStatus`]).
pub fn json_in<T: serde::de::DeserializeOwned>(stdout: &str) -> Option<T> {
    if let Ok(doc) = serde_json::from_str::<T>(stdout.trim()) {
        return Some(doc);
    }
    let start = stdout.find('{')?;
    let end = stdout.rfind('}')?;
    serde_json::from_str(stdout.get(start..=end)?).ok()
}

/// The core's status document, unchanged, and what the daemon reads of it.
async fn remote_status(
    ctx: &Ctx,
    plan: Option<&str>,
) -> Result<(PlanStatus, CoreStatus), ErrorBody> {
    let r = ctx
        .core_exec(
            |l| core_command(&ctx.spec.repo.workspace, l, &["status"], plan),
            true,
        )
        .await?;
    match json_in(&r.stdout) {
        Some(doc) => {
            let read = CoreStatus::read(&doc);
            Ok((doc, read))
        }
        None if r.code != 0 => Err(remote_failure("remote status", &r).into()),
        None => Err(ErrorBody::new(
            ErrorCode::ProviderFailed,
            format!(
                "remote status did not return a JSON object; it printed: {}",
                r.stdout.trim().chars().take(400).collect::<String>()
            ),
        )),
    }
}

/// `status`: the core's status JSON, unchanged; exit 1 when the core says `success: false`.
pub async fn plain_status(ctx: &Ctx, plan: Option<&str>) -> Result<Done, ErrorBody> {
    let (doc, status) = remote_status(ctx, plan).await?;
    ctx.out
        .stderr(format!(
            "plan {}: {}\n",
            status.plan.as_deref().unwrap_or("-"),
            status.state().unwrap_or("unknown")
        ))
        .await;
    let failed = status.failed();
    if failed {
        let said = status.said().unwrap_or("the core reported success: false");
        ctx.out.stderr(format!("status failed: {said}\n")).await;
    }
    Ok(Done::code(
        CommandOutput::PlanStatus(doc),
        i32::from(failed),
    ))
}

/// `resume`: run the step the remote status names next, translated as the core's own driver
/// translates it (see `chain::resume`). No `next_step`, or one resume does not run, is
/// `invalid_status`.
pub async fn resume(ctx: &Ctx, plan: Option<&str>) -> Result<Done, ErrorBody> {
    let (doc, status) = remote_status(ctx, plan).await?;
    let Some(step) = status.next_step.as_deref().filter(|s| !s.trim().is_empty()) else {
        let state = status.state.flatten();
        let state = state.as_deref().unwrap_or("unknown");
        let mut shown = doc.0;
        shown.redact_with(&ctx.redactor);
        return Err(ErrorBody::new(
            ErrorCode::InvalidStatus,
            format!("remote status names no next_step (plan state {state}); nothing to resume"),
        )
        .with("status", shown));
    };
    let words = crate::chain::resume::step_command(step)?;
    let plan_name = plan.map(str::to_string).or_else(|| status.plan.clone());
    let launcher = ctx.launcher().await?;
    let word_refs: Vec<&str> = words.iter().map(String::as_str).collect();
    let cmd = core_command(
        &ctx.spec.repo.workspace,
        &launcher,
        &word_refs,
        plan_name.as_deref(),
    );
    ctx.out
        .stderr(format!("resuming: {}\n", words.join(" ")))
        .await;
    let p = ctx.runner()?;
    let code = ctx
        .out
        .relay_to_stderr(async |tx| p.exec_streaming(&cmd, tx).await)
        .await?;
    // A person resumed the chain by hand: a crash-loop quarantine is theirs to lift, and this
    // is lifting it (issue 24 item 4), like `unquarantine`.
    let unquarantined = if code == 0 {
        match crate::supervisor::quarantine::clear(ctx.state.store(), &ctx.key).await {
            Ok(cleared) => cleared,
            Err(e) => {
                ctx.out
                    .stderr(format!(
                        "warning: the quarantine could not be cleared: {e}\n"
                    ))
                    .await;
                false
            }
        }
    } else {
        false
    };
    if unquarantined {
        ctx.out
            .stderr(
                "the chain's quarantine is cleared: the supervisor may restart it again\n"
                    .to_string(),
            )
            .await;
    }
    Ok(Done::code(
        CommandOutput::Resumed(Resumed {
            command: words,
            exit_code: code,
            next_step: step.to_string(),
            plan: plan_name,
            success: code == 0,
            unquarantined,
        }),
        i32::from(code != 0),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use megaplan_cloud_api::marker::LastChainMarker;
    use serde_json::json;
    use std::path::Path;

    fn spec(text: &str) -> crate::cloud_yaml::CloudSpec {
        crate::cloud_yaml::parse_bytes(text.as_bytes(), Path::new("/p/cloud.yaml")).unwrap()
    }

    #[test]
    fn remote_spec_precedence_has_four_outcomes() {
        let chain_mode = spec("repo: {url: /r}\nmode: chain\nchain: {spec: /w/app/c.yaml}\n");
        let idle = spec("repo: {url: /r}\n");
        let marker = LastChainMarker::read(
            json!({"remote_spec": "/w/app/chain.yaml", "chain_session": "megaplan-chain"}),
        );
        // 1. flag wins over everything.
        let (s, src) = resolve_remote_spec(Some("/x.yaml"), Some(&marker), &chain_mode).unwrap();
        assert_eq!((s.as_str(), src), ("/x.yaml", SpecSource::Flag));
        // 2. marker next.
        let (s, src) = resolve_remote_spec(None, Some(&marker), &chain_mode).unwrap();
        assert_eq!((s.as_str(), src), ("/w/app/chain.yaml", SpecSource::Marker));
        // 3. chain.spec in chain mode.
        let (s, src) = resolve_remote_spec(None, None, &chain_mode).unwrap();
        assert_eq!((s.as_str(), src), ("/w/app/c.yaml", SpecSource::CloudYaml));
        // 4. otherwise missing_remote_spec.
        let e = resolve_remote_spec(None, None, &idle).unwrap_err();
        assert_eq!(e.error, ErrorCode::MissingRemoteSpec);
        // chain.spec is ignored outside chain mode.
        let idle_with_spec = spec("repo: {url: /r}\nchain: {spec: /w/c.yaml}\n");
        assert!(resolve_remote_spec(None, None, &idle_with_spec).is_err());
    }

    #[test]
    fn target_uses_marker_fields_only_for_its_spec() {
        let s = spec("repo: {url: /r, workspace: /w/app}\n");
        let marker = LastChainMarker::read(
            json!({"remote_spec": "/w/app/chain.yaml", "chain_session": "megaplan-chain-x",
                            "workspace": "/w/other", "chain_log": "/w/other/log"}),
        );
        let t = chain_target(None, Some(&marker), &s).unwrap();
        assert_eq!(t.session, "megaplan-chain-x");
        assert_eq!(t.workspace, "/w/other");
        assert_eq!(t.log_path, "/w/other/log");
        let t = chain_target(Some("/elsewhere.yaml"), Some(&marker), &s).unwrap();
        assert_eq!(t.session, CHAIN_SESSION);
        assert_eq!(t.workspace, "/w/app");
        assert_eq!(t.log_path, "/w/app/.megaplan/cloud-chain.log");
    }

    #[test]
    fn chains_output_parses() {
        let out = "noise\nLIVE\tmegaplan-chain\nLIVE\tagent\nMARKER\tmegaplan-chain\t{\"remote_spec\":\"/w/c.yaml\",\"started_at\":\"2026-06-01T10:00:00Z\"}\nMARKER\tmegaplan-chain-old\tnot json\nMARKER\tmegaplan-chain-list\t[1]\nMARKER\tagent\t{}\n";
        let v = parse_chains(out).unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(v[0].session, "megaplan-chain");
        assert!(v[0].alive);
        assert_eq!(v[0].rest["status"], "running");
        assert_eq!(v[0].rest["session_marker"]["remote_spec"], "/w/c.yaml");
        assert_eq!(v[0].remote_spec.as_deref(), Some("/w/c.yaml"));
        assert_eq!(v[0].started_at.as_deref(), Some("2026-06-01T10:00:00Z"));
        assert_eq!(
            v[0].rest["marker"],
            "/workspace/.megaplan/cloud-sessions/megaplan-chain.json"
        );
        assert_eq!(v[0].marker_status, "present");
        assert_eq!(v[1].session, "megaplan-chain-list");
        assert_eq!(v[1].marker_status, "invalid");
        assert_eq!(
            v[1].rest["marker_error"],
            "the session marker is not a JSON object"
        );
        assert_eq!(v[2].session, "megaplan-chain-old");
        assert!(!v[2].alive);
        assert_eq!(v[2].marker_status, "invalid");
        assert_eq!(v[2].rest["session_marker"], Value::Null);
        // The answer keeps the wire shape: the entries' own fields and ours beside them.
        let listed = serde_json::to_value(ChainSessions {
            sessions: v,
            rest: [("success".to_string(), true.into())].into_iter().collect(),
        })
        .unwrap();
        assert_eq!(listed["success"], true);
        assert_eq!(listed["sessions"][0]["remote_spec"], "/w/c.yaml");
        assert_eq!(listed["sessions"][0]["alive"], true);
        assert_eq!(listed["sessions"][2]["status"], "dead");
    }

    #[test]
    fn a_marker_with_a_wrong_typed_field_is_a_clear_error() {
        let out = "MARKER\tmegaplan-chain\t{\"remote_spec\": 5}\n";
        let e = parse_chains(out).unwrap_err();
        assert_eq!(e.error, ErrorCode::ProviderFailed);
        let file = "/workspace/.megaplan/cloud-sessions/megaplan-chain.json";
        assert!(e.message.contains(file), "{e}");
        assert!(e.message.contains("wrong type"), "{e}");
        assert_eq!(e.extra["file"], file);
    }

    #[test]
    fn the_core_status_is_read_typed_and_leniently() {
        let read = |text: &str| CoreStatus::read(&json_in::<PlanStatus>(text).unwrap());
        let s = read(
            r#"{"success": true, "step": "status", "plan": "p1", "state": "finalized",
                "next_step": "execute", "valid_next": ["execute", "override replan"]}"#,
        );
        assert_eq!(s.plan.as_deref(), Some("p1"));
        assert_eq!(s.state(), Some("finalized"));
        assert_eq!(s.next_step.as_deref(), Some("execute"));
        assert!(!s.failed());
        // Older cores say `status`; a `state` that is there but not text wins over it.
        assert_eq!(read(r#"{"status": "running"}"#).state(), Some("running"));
        assert_eq!(
            read(r#"{"state": null, "status": "running"}"#).state(),
            None
        );
        // Failure: `success: false` exactly, what the core said from `message` else `error`.
        let f = read(r#"{"success": false, "error": "no plan"}"#);
        assert!(f.failed());
        assert_eq!(f.said(), Some("no plan"));
        assert_eq!(
            read(r#"{"success": false, "message": "m", "error": "e"}"#).said(),
            Some("m")
        );
        assert!(!read(r#"{"success": "false"}"#).failed());
        // Hostile: every known field of the wrong type reads as absent, never an error.
        let h = read(
            r#"{"success": 0, "plan": ["p"], "state": {"x": 1}, "next_step": 7, "message": 1,
                "error": "e"}"#,
        );
        assert_eq!(
            h,
            CoreStatus {
                success: None,
                plan: None,
                state: Some(None),
                status: None,
                next_step: None,
                message: Some(None),
                error: Some("e".into()),
            }
        );
        assert_eq!(h.said(), None);
        // The document itself is kept exactly, whatever it holds.
        let doc: PlanStatus = json_in("motd\n{\"plan\": [\"p\"], \"x\": {\"y\": null}}\n").unwrap();
        assert_eq!(doc.0["plan"][0], "p");
        assert_eq!(doc.0["x"]["y"], Value::Null);
    }

    #[test]
    fn chains_script_is_valid_sh() {
        let out = std::process::Command::new("sh")
            .arg("-n")
            .arg("-c")
            .arg(chains_script())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }

    #[test]
    fn json_in_skips_noise() {
        let doc = |text: &str| json_in::<PlanStatus>(text).map(|d| d.0);
        assert_eq!(doc("{\"a\":1}").unwrap()["a"], 1);
        assert_eq!(
            doc("motd line\n{\n \"state\": \"running\"\n}\n").unwrap()["state"],
            "running"
        );
        assert!(doc("no json here").is_none());
        assert!(doc("[1,2]").is_none());
        assert!(doc("} backwards {").is_none());
        assert!(doc("{\"a\": [1,2}").is_none());
    }
}
