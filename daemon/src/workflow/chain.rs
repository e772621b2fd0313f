//! Starting work on the runner: `bootstrap` (one plan) and `chain` (a milestone chain).
//!
//! `chain` resolves every idea file locally before touching the runner, then makes one
//! preflight round trip (collision check FIRST, so a refused launch changes nothing; then
//! clone-if-missing), uploads the ideas and the normalised spec, starts tmux session
//! `megaplan-chain`, writes the session marker, verifies the session, and stores the
//! last-chain marker (SQLite + legacy file).

use super::ctx::{Ctx, Done};
use crate::chain::spec::{self, ChainSpec};
use crate::provider::Provider;
use crate::provider::remote_failure;
use crate::runner::fence::{
    self, FenceMode, Floors, GateOutcome, GateRequest, Verdict, gate_script,
};
use crate::runner::launch::{checkout_script, init_command, preflight_script, start_script};
use crate::runner::layout::{EXIT_LIVE_RUNNER, EXIT_OTHER_CHAIN, chain_log, marker_file};
use crate::store::NewGateRefusal;
use crate::supervisor::markers;
use chrono::Utc;
use megaplan_cloud_api::marker::LastChainMarker;
use megaplan_cloud_api::output::{AgentAuthReport, Bootstrapped, CommandOutput};
use megaplan_cloud_api::status::ChainLaunched;
use megaplan_cloud_api::{ErrorBody, ErrorCode};
use serde::{Deserialize, Serialize};
use serde_json::Map;
use std::path::{Path, PathBuf};

pub use crate::runner::layout::CHAIN_SESSION;

pub struct LaunchArgs {
    pub spec: PathBuf,
    pub idea_dir: Option<PathBuf>,
    pub fresh: bool,
    pub no_git_refresh: bool,
}

/// Local candidates for a milestone's idea file, in the order they are tried:
/// `<idea-dir>/<idea relative to the workspace>`, the same under the project root, then
/// `<idea-dir>/<basename>`.
pub fn idea_candidates(
    idea: &str,
    workspace: &str,
    idea_dir: &Path,
    project_root: &Path,
) -> Vec<PathBuf> {
    let ws = format!("{}/", workspace.trim_end_matches('/'));
    let rel = idea
        .strip_prefix(&ws)
        .unwrap_or(idea)
        .trim_start_matches('/')
        .to_string();
    let mut out = vec![idea_dir.join(&rel), project_root.join(&rel)];
    if let Some(base) = Path::new(&rel).file_name() {
        out.push(idea_dir.join(base));
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|p| seen.insert(p.clone()));
    out
}

/// Where a milestone's idea goes on the runner: absolute as written, else under the workspace.
pub fn remote_idea_path(idea: &str, workspace: &str) -> String {
    if idea.starts_with('/') {
        idea.to_string()
    } else {
        format!(
            "{}/{}",
            workspace.trim_end_matches('/'),
            idea.trim_start_matches("./")
        )
    }
}

fn read_local(path: &Path, what: &str, code: ErrorCode) -> Result<Vec<u8>, ErrorBody> {
    crate::cloud_yaml::read_bounded(path, crate::cloud_yaml::MAX_INPUT_BYTES).map_err(|e| {
        ErrorBody::new(code, format!("cannot read {what} {}: {e}", path.display()))
            .with("path", path.display().to_string())
    })
}

/// `bootstrap IDEA`: checkout, upload the idea to `<ws>/idea.txt`, run remote init.
pub async fn bootstrap(
    ctx: &Ctx,
    idea: &str,
    plan_name: Option<&str>,
    robustness: Option<&str>,
) -> Result<Done, ErrorBody> {
    let content = read_local(Path::new(idea), "idea file", ErrorCode::MissingIdeaFile)?;
    let ws = ctx.spec.repo.workspace.clone();
    let p = ctx.runner()?;
    let r = p.exec(&checkout_script(&ctx.spec), None).await?;
    if r.code != 0 {
        return Err(remote_failure("repo checkout", &r).into());
    }
    let remote_idea = format!("{}/idea.txt", ws.trim_end_matches('/'));
    p.upload(&remote_idea, &content).await?;
    let robustness = robustness.unwrap_or(&ctx.spec.auto.robustness);
    let init = |launcher: &str| init_command(&ws, launcher, &remote_idea, robustness, plan_name);
    let r = ctx.core_exec(init, false).await?;
    ctx.out.stderr(r.stderr.clone()).await;
    ctx.out.stderr(r.stdout.clone()).await;
    let code = r.code;
    let init = super::status::json_in(&r.stdout);
    Ok(Done::code(
        CommandOutput::Bootstrapped(Bootstrapped {
            exit_code: code,
            idea_file: remote_idea,
            init,
            plan_name: plan_name.map(str::to_string),
            robustness: robustness.to_string(),
            success: code == 0,
            workspace: ws,
        }),
        i32::from(code != 0),
    ))
}

struct Upload {
    local: PathBuf,
    remote: String,
    content: Vec<u8>,
}

/// A milestone whose idea file was not found locally, and the paths tried (the error's
/// `missing` list).
#[derive(Debug, Serialize)]
struct MissingIdea {
    idea: String,
    index: usize,
    milestone: String,
    tried: Vec<String>,
}

/// Resolve every milestone's idea file; all misses are reported together.
fn resolve_ideas(ctx: &Ctx, chain: &ChainSpec, idea_dir: &Path) -> Result<Vec<Upload>, ErrorBody> {
    let project_root = ctx
        .spec
        .path
        .parent()
        .unwrap_or(Path::new("/"))
        .to_path_buf();
    let ws = &ctx.spec.repo.workspace;
    let mut uploads = Vec::new();
    let mut missing = Vec::new();
    for m in &chain.milestones {
        let tried = idea_candidates(&m.idea, ws, idea_dir, &project_root);
        match tried.iter().find(|p| p.is_file()) {
            Some(found) => uploads.push(Upload {
                local: found.clone(),
                remote: remote_idea_path(&m.idea, ws),
                content: read_local(found, "idea file", ErrorCode::MissingIdeaFile)?,
            }),
            None => missing.push(MissingIdea {
                idea: m.idea.clone(),
                index: m.index,
                milestone: m.label.clone(),
                tried: tried.iter().map(|p| p.display().to_string()).collect(),
            }),
        }
    }
    if missing.is_empty() {
        return Ok(uploads);
    }
    Err(missing_ideas(&missing))
}

/// The `missing_idea_file` error: every miss with the paths tried, in the message and in
/// `missing`.
fn missing_ideas(missing: &[MissingIdea]) -> ErrorBody {
    // Label and idea quoted as JSON strings, so an odd name stays readable.
    let quoted = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let detail: Vec<String> = missing
        .iter()
        .map(|m| {
            format!(
                "milestone {} idea {} not found; tried: {}",
                quoted(&m.milestone),
                quoted(&m.idea),
                m.tried.join(", ")
            )
        })
        .collect();
    ErrorBody::new(
        ErrorCode::MissingIdeaFile,
        format!(
            "{}; pass --idea-dir or fix the idea paths",
            detail.join("; ")
        ),
    )
    .with("missing", serde_json::to_value(missing).unwrap_or_default())
}

/// `chain SPEC`.
pub async fn launch(ctx: &Ctx, args: &LaunchArgs) -> Result<Done, ErrorBody> {
    let spec_text = read_local(&args.spec, "chain spec", ErrorCode::InvalidSpec)?;
    let spec_text = String::from_utf8(spec_text).map_err(|_| {
        ErrorBody::new(
            ErrorCode::InvalidSpec,
            format!("{} is not UTF-8 text", args.spec.display()),
        )
    })?;
    let chain = spec::parse_chain_spec(&spec_text, &args.spec.display().to_string())?;
    let idea_dir = args
        .idea_dir
        .clone()
        .or_else(|| args.spec.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| ctx.cwd.clone());
    // Everything local is checked before the runner is touched.
    let uploads = resolve_ideas(ctx, &chain, &idea_dir)?;
    ctx.require_secrets()?;
    // The operator's bytes (plus one `base_branch:` line when the spec names none).
    let normalised = spec::upload_text(&spec_text, &chain, &ctx.spec.repo.branch)?;
    let digest = spec::identity_digest(&normalised);
    let launcher = ctx.launcher().await?;
    let ws = ctx.spec.repo.workspace.clone();
    let remote_spec = format!("{}/chain.yaml", ws.trim_end_matches('/'));
    let log_path = chain_log(&ws);
    let session = CHAIN_SESSION;

    let p = ctx.runner()?;
    let pre = p
        .exec(
            &preflight_script(
                &ctx.spec,
                &launcher,
                session,
                &digest,
                &remote_spec,
                args.fresh,
            ),
            None,
        )
        .await?;
    if pre.code == EXIT_OTHER_CHAIN {
        return Err(ErrorBody::new(
            ErrorCode::ChainSessionCollision,
            format!(
                "tmux session {session} on the runner is running a different chain; it was left untouched. \
                 Wait for it to finish, or inspect it with `megaplan-cloudctl chains`"
            ),
        )
        .with("session", session));
    }
    if pre.code == EXIT_LIVE_RUNNER {
        let said = ctx.redactor.redact(pre.stderr.trim());
        return Err(ErrorBody::new(
            ErrorCode::ChainSessionCollision,
            format!(
                "a chain runner for {remote_spec} is already running on the runner outside tmux session {session} ({said}); \
                 it was left untouched and nothing was uploaded"
            ),
        )
        .with("session", session));
    }
    if pre.stdout.contains("MEGAPLAN_ALREADY_RUNNING") {
        ctx.out
            .stderr(format!(
                "chain already running in tmux session {session}; nothing to do\n"
            ))
            .await;
        return Ok(Done::ok(CommandOutput::Launched(Box::new(ChainLaunched {
            session: session.to_string(),
            already_running: true,
            session_alive: None,
            remote_spec: Some(remote_spec),
            milestones: None,
            current_milestone: None,
            rest: [("success".to_string(), true.into())].into_iter().collect(),
        }))));
    }
    if pre.code != 0 || !pre.stdout.contains("MEGAPLAN_PREFLIGHT_OK") {
        return Err(remote_failure("chain preflight (repo checkout)", &pre).into());
    }
    for line in pre.stdout.lines().filter(|l| l.starts_with("removed ")) {
        ctx.out.stderr(format!("fresh: {line}\n")).await;
    }
    // The agents' logins, before the chain's first agent runs.
    let agent_auth = super::agent_auth::seed(ctx, &p).await;
    for u in &uploads {
        p.upload(&u.remote, &u.content).await?;
        ctx.out
            .stderr(format!("uploaded {} -> {}\n", u.local.display(), u.remote))
            .await;
    }
    p.upload(&remote_spec, normalised.as_bytes()).await?;
    ctx.out
        .stderr(format!(
            "uploaded {} -> {remote_spec}\n",
            args.spec.display()
        ))
        .await;

    // The start goes behind the runner's gate (runner/fence.rs): a manual `chain` takes the
    // next fencing token when no driver of the chain is alive, and the preflight must pass,
    // both under the lock the start runs in.
    let expected = ctx.state.store().fence_token(&ctx.key).await?;
    let holder = fence::manual_holder();
    let gate = GateRequest::new(
        FenceMode::Take,
        expected,
        holder.clone(),
        &ws,
        &remote_spec,
        &launcher,
        Floors {
            disk_bytes: ctx.spec.preflight.min_free_disk,
            inodes: ctx.spec.preflight.min_free_inodes,
        },
    );
    let started = p
        .exec(
            &gate_script(
                &gate,
                &start_script(
                    &ctx.spec,
                    &launcher,
                    session,
                    &remote_spec,
                    &log_path,
                    &digest,
                    args.no_git_refresh,
                ),
            ),
            None,
        )
        .await?;
    let fence_token = gate_verdict(ctx, &holder, &started, session).await?;
    if started.code != 0 {
        return Err(remote_failure("starting the chain session", &started).into());
    }
    let alive = started.stdout.contains("MEGAPLAN_SESSION_ALIVE");
    if alive {
        ctx.out
            .stderr(format!(
                "chain started in tmux session {session}; log {log_path}\n"
            ))
            .await;
    } else {
        ctx.out
            .stderr(format!(
                "chain session {session} started and has already exited; see {log_path}:\n{}\n",
                started
                    .stdout
                    .lines()
                    .filter(|l| !l.starts_with("MEGAPLAN_"))
                    .collect::<Vec<_>>()
                    .join("\n")
            ))
            .await;
    }
    let marker = markers::launched(
        None,
        markers::Launch {
            remote_spec: &remote_spec,
            workspace: &ws,
            session,
            log: &log_path,
            by: markers::LaunchedBy::Chain {
                base_branch: chain
                    .base_branch
                    .clone()
                    .unwrap_or_else(|| ctx.spec.repo.branch.clone()),
                identity_digest: digest.clone(),
            },
        },
        &ctx.spec,
        Utc::now(),
    );
    markers::save(
        &ctx.state,
        &ctx.key,
        &ctx.spec.path.display().to_string(),
        &marker,
    )
    .await?;
    let provenance = LaunchProvenance {
        agent_auth,
        chain: ChainRef {
            base_branch: marker.base_branch.get().cloned(),
            milestone_count: chain.milestones.len(),
        },
        event: "cloud_chain_launched",
        launch: LaunchRef {
            fencing_token: fence_token,
            identity_digest: digest,
            session_marker: marker_file(session),
        },
        log: LogRef {
            chain_log: log_path,
        },
        marker: &marker,
        repo: RepoRef {
            branch: &ctx.spec.repo.branch,
            url: &ctx.spec.repo.url,
            workspace: &ws,
        },
        success: true,
        tmux: TmuxRef {
            session,
            status: if alive { "running" } else { "exited" },
        },
        uploaded: uploads.iter().map(|u| u.remote.clone()).collect(),
        uploaded_idea_count: uploads.len(),
    };
    let rest = serde_json::to_value(&provenance)
        .and_then(Map::deserialize)
        .map_err(|e| {
            ErrorBody::new(
                ErrorCode::Internal,
                format!("cannot write the launch report: {e}"),
            )
        })?;
    let launched = ctx.redact_typed(ChainLaunched {
        session: session.to_string(),
        already_running: false,
        session_alive: Some(alive),
        remote_spec: Some(remote_spec.clone()),
        milestones: Some(u32::try_from(chain.milestones.len()).unwrap_or(u32::MAX)),
        current_milestone: chain.milestones.first().map(|m| m.label.clone()),
        rest,
    })?;
    Ok(Done::ok(CommandOutput::Launched(Box::new(launched))))
}

/// The launch's provenance beside the answer's own fields: ours (`uploaded`, `marker`,
/// `agent_auth`, `launch`) and the original's (`_cloud_chain_launch_provenance` in its
/// cloud/cli.py: `event`, `repo`, `chain`, `tmux`, `log`, `uploaded_idea_count`), for scripts
/// that parse them. Fields in sorted order.
#[derive(Serialize)]
struct LaunchProvenance<'a> {
    agent_auth: AgentAuthReport,
    chain: ChainRef,
    event: &'static str,
    launch: LaunchRef,
    log: LogRef,
    marker: &'a LastChainMarker,
    repo: RepoRef<'a>,
    success: bool,
    tmux: TmuxRef<'a>,
    uploaded: Vec<String>,
    uploaded_idea_count: usize,
}

#[derive(Serialize)]
struct ChainRef {
    base_branch: Option<String>,
    milestone_count: usize,
}

#[derive(Serialize)]
struct LaunchRef {
    /// `null` when the gate printed no verdict.
    fencing_token: Option<u64>,
    identity_digest: String,
    session_marker: String,
}

#[derive(Serialize)]
struct LogRef {
    chain_log: String,
}

#[derive(Serialize)]
struct RepoRef<'a> {
    branch: &'a str,
    url: &'a str,
    workspace: &'a str,
}

#[derive(Serialize)]
struct TmuxRef<'a> {
    session: &'a str,
    /// `running`, or `exited` when the session was already gone after the start.
    status: &'static str,
}

/// Reads the gate's verdict of a manual start: keeps the local token current, records a refusal
/// and turns it into the error a person reads (who holds the chain, or which check failed and
/// its fix). Returns the token the launch took (None when the gate printed no verdict).
async fn gate_verdict(
    ctx: &Ctx,
    holder: &str,
    r: &crate::provider::ExecResult,
    session: &str,
) -> Result<Option<u64>, ErrorBody> {
    let Some(v) = Verdict::parse(&r.stdout) else {
        return Ok(None);
    };
    let outcome = v.outcome();
    let (token, by) = match &outcome {
        GateOutcome::Accepted { token } => (*token, Some(holder)),
        _ => (v.known_token(), v.holder.as_deref()),
    };
    ctx.state
        .store()
        .raise_fence_token(&ctx.key, token, by)
        .await?;
    let err = match &outcome {
        GateOutcome::Accepted { token } => return Ok(Some(*token)),
        GateOutcome::Refused(v) => ErrorBody::new(
            ErrorCode::ChainSessionCollision,
            format!("{}; nothing was started", v.refusal_message()),
        )
        .with("session", session)
        .with("fencing", serde_json::to_value(v).unwrap_or_default()),
        GateOutcome::PreflightFailed(checks) => {
            ErrorBody::new(ErrorCode::ProviderFailed, fence::preflight_message(checks)).with(
                "preflight",
                serde_json::to_value(checks).unwrap_or_default(),
            )
        }
    };
    let refusal = NewGateRefusal {
        source: "chain",
        reason: if matches!(outcome, GateOutcome::PreflightFailed(_)) {
            "preflight_failed"
        } else {
            v.reason.as_deref().unwrap_or("refused")
        },
        offered: v.offered,
        held: v.held,
        holder: v.holder.as_deref(),
        message: &err.message,
    };
    ctx.state
        .store()
        .record_gate_refusal(&ctx.key, &refusal)
        .await?;
    Err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn idea_candidates_order() {
        let c = idea_candidates(
            ".megaplan/briefs/m1.md",
            "/w/app",
            Path::new("/local/ideas"),
            Path::new("/local/proj"),
        );
        assert_eq!(
            c,
            vec![
                PathBuf::from("/local/ideas/.megaplan/briefs/m1.md"),
                PathBuf::from("/local/proj/.megaplan/briefs/m1.md"),
                PathBuf::from("/local/ideas/m1.md"),
            ]
        );
        let c = idea_candidates(
            "/w/app/ideas/m2.md",
            "/w/app",
            Path::new("/i"),
            Path::new("/p"),
        );
        assert_eq!(c[0], PathBuf::from("/i/ideas/m2.md"));
        assert_eq!(c[2], PathBuf::from("/i/m2.md"));
    }

    #[test]
    fn missing_ideas_keep_the_message_and_extra_of_the_json_they_replace() {
        let e = missing_ideas(&[MissingIdea {
            idea: "ideas/m \"1\".md".into(),
            index: 0,
            milestone: "m1".into(),
            tried: vec!["/i/ideas/m \"1\".md".into(), "/p/m.md".into()],
        }]);
        assert_eq!(e.error, ErrorCode::MissingIdeaFile);
        assert_eq!(
            e.message,
            r#"milestone "m1" idea "ideas/m \"1\".md" not found; tried: /i/ideas/m "1".md, /p/m.md; pass --idea-dir or fix the idea paths"#
        );
        assert_eq!(
            e.extra["missing"].to_string(),
            json!([{"milestone": "m1", "index": 0, "idea": "ideas/m \"1\".md",
                    "tried": ["/i/ideas/m \"1\".md", "/p/m.md"]}])
            .to_string()
        );
    }

    #[test]
    fn the_launch_answer_keeps_the_bytes_of_the_json_it_replaces() {
        let marker = LastChainMarker::read(json!({"remote_spec": "/w/app/chain.yaml",
            "chain_session": "megaplan-chain", "base_branch": "main", "future": 1}));
        let report = AgentAuthReport::Skipped {
            codex_auth: "apikey".into(),
            seeded: vec![],
            skipped: "megaplan.codex_auth is apikey".into(),
        };
        let provenance = LaunchProvenance {
            agent_auth: report.clone(),
            chain: ChainRef {
                base_branch: marker.base_branch.get().cloned(),
                milestone_count: 2,
            },
            event: "cloud_chain_launched",
            launch: LaunchRef {
                fencing_token: Some(7),
                identity_digest: "d1".into(),
                session_marker: "/workspace/.megaplan/cloud-sessions/megaplan-chain.json".into(),
            },
            log: LogRef {
                chain_log: "/w/app/.megaplan/cloud-chain.log".into(),
            },
            marker: &marker,
            repo: RepoRef {
                branch: "main",
                url: "git@h:r.git",
                workspace: "/w/app",
            },
            success: true,
            tmux: TmuxRef {
                session: "megaplan-chain",
                status: "running",
            },
            uploaded: vec!["/w/app/a.md".into()],
            uploaded_idea_count: 1,
        };
        let launched = ChainLaunched {
            session: "megaplan-chain".into(),
            already_running: false,
            session_alive: Some(true),
            remote_spec: Some("/w/app/chain.yaml".into()),
            milestones: Some(2),
            current_milestone: Some("m1".into()),
            rest: serde_json::to_value(&provenance)
                .and_then(Map::deserialize)
                .unwrap(),
        };
        let old = json!({
            "success": true,
            "session": "megaplan-chain",
            "session_alive": true,
            "remote_spec": "/w/app/chain.yaml",
            "milestones": 2,
            "uploaded": ["/w/app/a.md"],
            "marker": marker.to_value(),
            "event": "cloud_chain_launched",
            "current_milestone": "m1",
            "uploaded_idea_count": 1,
            "agent_auth": serde_json::to_value(&report).unwrap(),
            "repo": {"url": "git@h:r.git", "branch": "main", "workspace": "/w/app"},
            "chain": {"base_branch": "main", "milestone_count": 2},
            "tmux": {"session": "megaplan-chain", "status": "running"},
            "log": {"chain_log": "/w/app/.megaplan/cloud-chain.log"},
            "launch": {
                "fencing_token": 7,
                "identity_digest": "d1",
                "session_marker": "/workspace/.megaplan/cloud-sessions/megaplan-chain.json",
            },
        });
        let typed_old: ChainLaunched = serde_json::from_value(old).unwrap();
        let out = CommandOutput::Launched(Box::new(launched));
        assert_eq!(
            out.to_payload().unwrap().to_string(),
            CommandOutput::Launched(Box::new(typed_old))
                .to_payload()
                .unwrap()
                .to_string()
        );
        let v = out.to_payload().unwrap();
        assert_eq!(v["agent_auth"]["skipped"], "megaplan.codex_auth is apikey");
        assert_eq!(v["marker"]["future"], 1);
        assert_eq!(v["launch"]["fencing_token"], 7);
    }

    #[test]
    fn remote_idea_paths() {
        assert_eq!(
            remote_idea_path("ideas/a.md", "/w/app"),
            "/w/app/ideas/a.md"
        );
        assert_eq!(remote_idea_path("./a.md", "/w/app/"), "/w/app/a.md");
        assert_eq!(remote_idea_path("/abs/a.md", "/w/app"), "/abs/a.md");
    }
}
