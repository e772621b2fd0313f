//! Read-only remote views: `status`, `status --chain`, `chains`/`status --all`, and `resume`.

use super::ctx::{Ctx, Done, typed};
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
use megaplan_cloud_api::{ErrorBody, ErrorCode};
use serde_json::{Value, json};

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
            ctx.state.settings.command_timeout,
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
        ctx.state.notifier.config.stall_after,
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
pub fn parse_chains(stdout: &str) -> Vec<Value> {
    let mut live = std::collections::BTreeSet::new();
    let mut markers = std::collections::BTreeMap::new();
    for line in stdout.lines() {
        let mut parts = line.splitn(3, '\t');
        match (parts.next(), parts.next()) {
            (Some("LIVE"), Some(s)) => {
                live.insert(s.to_string());
            }
            (Some("MARKER"), Some(s)) => {
                let m = match serde_json::from_str::<Value>(parts.next().unwrap_or_default()) {
                    Ok(v @ Value::Object(_)) => Ok(v),
                    Ok(_) => Err("the session marker is not a JSON object".to_string()),
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
            crate::chain::compat::chains_entry(
                &s,
                live.contains(&s),
                &marker_file(&s),
                markers.get(&s).cloned(),
            )
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
    let sessions = parse_chains(&r.stdout);
    if sessions.is_empty() {
        ctx.out
            .stderr("no megaplan-chain sessions on the runner\n")
            .await;
    }
    for s in &sessions {
        let m = &s["session_marker"];
        ctx.out
            .stderr(format!(
                "[{}] {}  spec={}  started={}\n",
                if s["alive"].as_bool() == Some(true) {
                    "alive"
                } else {
                    "dead"
                },
                s["session"].as_str().unwrap_or("?"),
                m["remote_spec"].as_str().unwrap_or("-"),
                m["started_at"].as_str().unwrap_or("-"),
            ))
            .await;
    }
    Ok(Done::ok(CommandOutput::Sessions(typed(ctx.redact(
        &json!({"success": true, "sessions": sessions}),
    ))?)))
}

/// The JSON object in a core command's stdout (login shells may print noise first).
pub fn json_in(stdout: &str) -> Option<Value> {
    if let Ok(v @ Value::Object(_)) = serde_json::from_str::<Value>(stdout.trim()) {
        return Some(v);
    }
    let start = stdout.find('{')?;
    let end = stdout.rfind('}')?;
    match serde_json::from_str::<Value>(stdout.get(start..=end)?) {
        Ok(v @ Value::Object(_)) => Some(v),
        _ => None,
    }
}

async fn remote_status(ctx: &Ctx, plan: Option<&str>) -> Result<Value, ErrorBody> {
    let r = ctx
        .core_exec(
            |l| core_command(&ctx.spec.repo.workspace, l, &["status"], plan),
            true,
        )
        .await?;
    match json_in(&r.stdout) {
        Some(v) => Ok(v),
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
    let v = remote_status(ctx, plan).await?;
    let state = v
        .get("state")
        .or_else(|| v.get("status"))
        .and_then(Value::as_str);
    ctx.out
        .stderr(format!(
            "plan {}: {}\n",
            v.get("plan").and_then(Value::as_str).unwrap_or("-"),
            state.unwrap_or("unknown")
        ))
        .await;
    let failed = v.get("success") == Some(&Value::Bool(false));
    if failed {
        let said = v
            .get("message")
            .or_else(|| v.get("error"))
            .and_then(Value::as_str)
            .unwrap_or("the core reported success: false");
        ctx.out.stderr(format!("status failed: {said}\n")).await;
    }
    Ok(Done::code(
        // `remote_status` only answers an object.
        CommandOutput::PlanStatus(PlanStatus(v.as_object().cloned().unwrap_or_default())),
        i32::from(failed),
    ))
}

/// `resume`: run the step the remote status names next, translated as the core's own driver
/// translates it (see `chain::resume`). No `next_step`, or one resume does not run, is
/// `invalid_status`.
pub async fn resume(ctx: &Ctx, plan: Option<&str>) -> Result<Done, ErrorBody> {
    let status = remote_status(ctx, plan).await?;
    let Some(step) = status
        .get("next_step")
        .and_then(Value::as_str)
        .filter(|s| !s.trim().is_empty())
    else {
        let state = status
            .get("state")
            .and_then(Value::as_str)
            .unwrap_or("unknown");
        return Err(ErrorBody::new(
            ErrorCode::InvalidStatus,
            format!("remote status names no next_step (plan state {state}); nothing to resume"),
        )
        .with("status", ctx.redact(&status)));
    };
    let words = crate::chain::resume::step_command(step)?;
    let plan_name = plan.map(str::to_string).or_else(|| {
        status
            .get("plan")
            .and_then(Value::as_str)
            .map(str::to_string)
    });
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
        match crate::supervisor::quarantine::clear(&ctx.state.store, &ctx.key).await {
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
        let out = "noise\nLIVE\tmegaplan-chain\nLIVE\tagent\nMARKER\tmegaplan-chain\t{\"remote_spec\":\"/w/c.yaml\"}\nMARKER\tmegaplan-chain-old\tnot json\nMARKER\tagent\t{}\n";
        let v = parse_chains(out);
        assert_eq!(v.len(), 2);
        assert_eq!(v[0]["session"], "megaplan-chain");
        assert_eq!(v[0]["alive"], true);
        assert_eq!(v[0]["status"], "running");
        assert_eq!(v[0]["session_marker"]["remote_spec"], "/w/c.yaml");
        assert_eq!(v[0]["remote_spec"], "/w/c.yaml");
        assert_eq!(
            v[0]["marker"],
            "/workspace/.megaplan/cloud-sessions/megaplan-chain.json"
        );
        assert_eq!(v[0]["marker_status"], "present");
        assert_eq!(v[1]["session"], "megaplan-chain-old");
        assert_eq!(v[1]["alive"], false);
        assert_eq!(v[1]["marker_status"], "invalid");
        assert_eq!(v[1]["session_marker"], Value::Null);
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
        assert_eq!(json_in("{\"a\":1}").unwrap()["a"], 1);
        assert_eq!(
            json_in("motd line\n{\n \"state\": \"running\"\n}\n").unwrap()["state"],
            "running"
        );
        assert!(json_in("no json here").is_none());
        assert!(json_in("[1,2]").is_none());
    }
}
