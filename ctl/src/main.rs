//! `megaplan-cloudctl`: a thin client. It resolves paths, reads what only this machine's user
//! has (secret env values, the terminal for attach), asks the daemon, and renders the answer:
//! JSON on stdout, the human summary on stderr, the exit code the daemon decided.

mod agent_auth;
mod cli;
mod columns;
mod commands;
mod complete;
mod discover;
mod doctor;
mod jq;
mod output;
mod render;

use clap::Parser;
use cli::{Cli, Cmd, DaemonCmd, RepoOverrideArgs};
use hyper::Method;
use megaplan_cloud_api::wire::{
    Command, Frame, Health, RegisterRequest, RegisterResponse, RepoOverrides, RunRequest,
    SecretNamesResponse, TickNowResponse,
};
use megaplan_cloud_api::{ErrorBody, ErrorCode, paths, routes};
use megaplan_cloudctl::client::{self, ClientError, DaemonClient, enc};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

fn main() {
    // `COMPLETE=<shell> megaplan-cloudctl …`: answer the shell's completion request and exit.
    clap_complete::CompleteEnv::with_factory(<Cli as clap::CommandFactory>::command).complete();
    let cli = Cli::parse();
    if let Some(expr) = &cli.jq {
        // A filter that cannot run is a usage error, said before the daemon is asked.
        if let Err(e) = jq::check(expr) {
            eprintln!("error: invalid_args: {e}");
            std::process::exit(2);
        }
        output::set_jq(expr.clone());
    }
    output::init(cli.json || cli.jq.is_some(), cli.color, cli.quiet);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("megaplan-cloudctl: cannot start: {e}");
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(run(cli));
    std::process::exit(if code == 0 && output::jq_failed() {
        1
    } else {
        code
    });
}

/// A command's result document: JSON for scripts, a summary on a terminal.
fn print_json(v: &Value) {
    output::print_result(v);
}

/// The terminal's width and colour for the chain renderers.
fn chain_style() -> commands::chain::Style {
    commands::chain::Style {
        width: columns::terminal_width(),
        color: output::get().color,
    }
}

/// Commands whose answer has a renderer of its own: the daemon's human lines on stderr (the
/// summary the Python tool printed) are not relayed, on a terminal or through a pipe.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Rendered {
    ChainStatus,
    TickReport,
    Sessions,
    Launched,
    /// build, deploy, down, destroy: the daemon's own lines (progress, then the verdict:
    /// `build: ok`, `down: runner stopped`) are the whole answer for a person.
    Said,
    Generic,
}

impl Rendered {
    /// Does the renderer say what the daemon's stderr lines say (a summary of the same
    /// answer)? Then a person sees only the renderer; progress lines of other commands stay.
    fn replaces_daemon_lines(self) -> bool {
        matches!(
            self,
            Rendered::ChainStatus | Rendered::TickReport | Rendered::Sessions
        )
    }
}

/// The result of `command` for a person: its renderer over the api type, or the daemon's
/// document pretty-printed when it does not read as that type.
fn render_result(kind: Rendered, payload: &Value) {
    let now = chrono::Utc::now();
    let text = match kind {
        Rendered::ChainStatus => {
            serde_json::from_value::<megaplan_cloud_api::status::ChainStatus>(payload.clone())
                .ok()
                .map(|s| commands::chain::status_text(&s, now, chain_style()))
        }
        Rendered::TickReport => megaplan_cloud_api::report::from_value(payload.clone())
            .ok()
            .map(|r| commands::chain::tick_text(None, &r, now, chain_style())),
        Rendered::Sessions => {
            serde_json::from_value::<megaplan_cloud_api::status::ChainSessions>(payload.clone())
                .ok()
                .map(|x| {
                    commands::chain::sessions_text(
                        &x,
                        Some(columns::terminal_width()),
                        output::get().color,
                    )
                })
        }
        Rendered::Launched => {
            serde_json::from_value::<megaplan_cloud_api::status::ChainLaunched>(payload.clone())
                .ok()
                .map(|x| commands::chain::launched_text(&x))
        }
        Rendered::Said => Some(String::new()),
        Rendered::Generic => None,
    };
    match text {
        Some(t) => {
            let mut o = std::io::stdout().lock();
            let _ = o.write_all(t.as_bytes());
            let _ = o.flush();
        }
        None => print_json(payload),
    }
}

/// Print a structured error and return its exit code. For scripts: the JSON document on
/// stdout plus one `error:` line on stderr; on a terminal: the one line on stderr only.
fn fail(e: ClientError) -> i32 {
    let (body, code) = match e {
        ClientError::Unreachable(body) => (body, output::EXIT_DAEMON_UNREACHABLE),
        ClientError::Api(body) => (body, 1),
    };
    if output::json_mode() {
        output::print_json_unfiltered(&body.to_value());
    }
    let message = output::strip_controls(&body.message);
    if code == output::EXIT_DAEMON_UNREACHABLE {
        eprintln!("{} {message}", output::paint("error:", "1;31"));
    } else {
        eprintln!(
            "{} {}: {message}",
            output::paint("error:", "1;31"),
            body.error
        );
    }
    code
}

/// [`fail`] for a command about one cloud.yaml: "not registered" names the file (the key is a
/// hash nobody recognises) and says how to register it.
fn fail_for(e: ClientError, cloud_yaml: &str) -> i32 {
    match e {
        // Named by its key: there is no file to suggest registering.
        ClientError::Api(body)
            if body.error == ErrorCode::NotRegistered && paths::is_marker_key(cloud_yaml) =>
        {
            fail(ClientError::Api(no_registration(cloud_yaml)))
        }
        ClientError::Api(body) if body.error == ErrorCode::NotRegistered => {
            let message = format!(
                "{cloud_yaml} is not registered with megaplan-cloudd; register it with `megaplan-cloudctl register --cloud-yaml {cloud_yaml}`"
            );
            let mut renamed = ErrorBody::new(ErrorCode::NotRegistered, message);
            renamed.extra = body.extra;
            fail(ClientError::Api(
                renamed.with("cloud_yaml", cloud_yaml.to_string()),
            ))
        }
        other => fail(other),
    }
}

fn no_registration(key: &str) -> ErrorBody {
    ErrorBody::new(
        ErrorCode::NotRegistered,
        format!(
            "no registration with key {key}; `megaplan-cloudctl ls` lists every registration with its key"
        ),
    )
    .with("key", key.to_string())
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

/// A bad value of a flag: the structured error, exit 2 (a usage error, as clap's own).
fn usage_error(message: impl Into<String>) -> i32 {
    local_error(ErrorCode::InvalidArgs, message);
    2
}

fn local_error(code: ErrorCode, message: impl Into<String>) -> i32 {
    fail(ClientError::Api(ErrorBody::new(code, message)))
}

fn abs(p: &Path) -> PathBuf {
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

fn overrides(o: RepoOverrideArgs) -> RepoOverrides {
    RepoOverrides {
        repo_url: o.repo_url,
        repo_branch: o.repo_branch,
        repo_workspace: o.repo_workspace,
    }
}

async fn run(cli: Cli) -> i32 {
    let (socket, source) = paths::resolve_socket(cli.socket.as_deref());
    let client = DaemonClient::new(socket, source);
    // Argument errors first: they need no cloud.yaml.
    if let Cmd::Supervise { chain: false, .. } = cli.command {
        return local_error(
            ErrorCode::InvalidArgs,
            "supervise needs --chain (the chain supervisor is the only one)",
        );
    }
    let mut cli = cli;
    // A per-registration command also takes a registration key (or a unique prefix of one) or
    // a cloud.yaml path as its argument. Resolved first: a key names one registration, so the
    // "outside any project means all" rule below never turns a wrong key into every history.
    let mut key_override: Option<String> = None;
    if let Cmd::Notifications {
        action: Some(cli::NotificationsCmd::Test { target: t }),
        target,
        ..
    } = &mut cli.command
        && target.is_none()
    {
        *target = t.take();
    }
    if let Cmd::Tick { target }
    | Cmd::Unregister { target }
    | Cmd::Ticks { target, .. }
    | Cmd::Pause { target, .. }
    | Cmd::Unpause { target }
    | Cmd::Unquarantine { target }
    | Cmd::Explain { target }
    | Cmd::Watch { target, .. }
    | Cmd::Notifications { target, .. } = &mut cli.command
        && let Some(t) = target.take()
    {
        if names_a_path(&t) {
            cli.cloud_yaml = Some(PathBuf::from(t));
        } else {
            match resolve_key(&client, &t).await {
                Ok(k) => key_override = Some(k),
                Err(code) => return code,
            }
        }
    }
    if key_override.is_none() && history_of_all(&cli) {
        match &mut cli.command {
            Cmd::Ticks { all, .. } | Cmd::Watch { all, .. } | Cmd::Notifications { all, .. } => {
                *all = true;
            }
            _ => {}
        }
    }
    let located = if key_override.is_none() && needs_cloud_yaml(&cli.command) {
        match locate(cli.cloud_yaml.as_deref()) {
            Ok(l) => Some(l),
            Err(code) => return code,
        }
    } else {
        None
    };
    let cloud_yaml = located.as_ref().map(|l| l.path.clone()).unwrap_or_default();
    let as_given = located
        .as_ref()
        .and_then(|l| l.as_given.as_ref())
        .map(|p| p.display().to_string());
    let cy = key_override
        .clone()
        .unwrap_or_else(|| cloud_yaml.display().to_string());
    let key_of_this = || {
        key_override
            .clone()
            .unwrap_or_else(|| paths::resolved_marker_key(&cloud_yaml))
    };
    let command = match cli.command {
        // `init` needs no daemon: it only writes the scaffold.
        Cmd::Init { force, provider } => {
            let target = discover::init_target(cli.cloud_yaml.as_deref(), &paths::current_dir());
            return init(&target, force, provider.as_deref().unwrap_or("railway"));
        }
        Cmd::Doctor { send_test } => {
            return doctor::run(&client, cli.cloud_yaml.as_deref(), send_test).await;
        }
        Cmd::Build => Command::Build,
        Cmd::Deploy => Command::Deploy,
        Cmd::Bootstrap {
            idea,
            plan_name,
            robustness,
            overrides: o,
        } => Command::Bootstrap {
            idea: abs(&idea).display().to_string(),
            plan_name,
            robustness,
            overrides: overrides(o),
        },
        Cmd::Chain {
            spec,
            idea_dir,
            fresh,
            no_git_refresh,
            overrides: o,
        } => Command::Chain {
            spec: abs(&spec).display().to_string(),
            idea_dir: idea_dir.map(|d| abs(&d).display().to_string()),
            fresh,
            no_git_refresh,
            overrides: overrides(o),
        },
        Cmd::Status {
            chain,
            all,
            remote_spec,
            plan,
        } => Command::Status {
            chain,
            all,
            remote_spec,
            plan,
        },
        Cmd::Logs {
            follow,
            no_follow,
            tail,
            since,
        } => {
            if let Some(bad) = since.as_deref().filter(|s| !cli::is_since(s)) {
                return usage_error(format!(
                    "--since {bad:?}: use a duration ago in h, m, s (10m, 2h, 1h30m, 48h), a date (2026-12-01) or a time (2026-12-01T10:00:00Z)"
                ));
            }
            Command::Logs {
                follow: follow && !no_follow,
                tail,
                since,
            }
        }
        Cmd::Attach { session } => {
            // The runner's tmux needs a terminal on both ends; ssh would otherwise go on without
            // one and the operator would see a broken session.
            if !std::io::stdin().is_terminal() || !std::io::stdout().is_terminal() {
                return local_error(
                    ErrorCode::InvalidArgs,
                    "attach needs a terminal (stdin and stdout are not both one): run it from an interactive shell, or use `exec` for one command",
                );
            }
            Command::Attach { session }
        }
        Cmd::Exec { command, argv } => Command::Exec {
            cmd: command.unwrap_or_default(),
            argv,
        },
        Cmd::Resume { plan } => Command::Resume { plan },
        Cmd::Down => Command::Down,
        Cmd::Destroy { yes } => {
            if !yes {
                match confirm_destroy(&cy) {
                    Confirmation::Yes => {}
                    Confirmation::NoTerminal => {
                        return local_error(
                            ErrorCode::InvalidArgs,
                            "destroy needs confirmation and there is no terminal to ask on: pass --yes",
                        );
                    }
                    Confirmation::Declined => {
                        // The operator said no: nothing failed, nothing to report but that.
                        eprintln!("aborted");
                        return 1;
                    }
                }
            }
            Command::Destroy { yes: true }
        }
        Cmd::Supervise {
            remote_spec,
            dry_run,
            ..
        } => Command::Supervise {
            remote_spec,
            dry_run,
        },
        Cmd::Chains => Command::Chains,
        Cmd::Completions { shell } => {
            return match complete::write_registration(&shell.to_string()) {
                Ok(code) => code,
                Err(e) => local_error(ErrorCode::InvalidArgs, e),
            };
        }
        Cmd::Man { dir: Some(dir) } => {
            let cmd = <Cli as clap::CommandFactory>::command();
            return match std::fs::create_dir_all(&dir)
                .and_then(|()| clap_mangen::generate_to(cmd, &dir))
            {
                Ok(()) => {
                    output::say(&format!("wrote the man pages into {}", dir.display()));
                    0
                }
                Err(e) => local_error(
                    ErrorCode::InvalidArgs,
                    format!("cannot write the man pages into {}: {e}", dir.display()),
                ),
            };
        }
        Cmd::Man { dir: None } => {
            let cmd = <Cli as clap::CommandFactory>::command();
            return match clap_mangen::Man::new(cmd).render(&mut std::io::stdout()) {
                Ok(()) => 0,
                Err(e) => local_error(
                    ErrorCode::InvalidArgs,
                    format!("cannot write the man page: {e}"),
                ),
            };
        }
        Cmd::Version => return version(&client).await,
        Cmd::Register {
            every,
            cron,
            remote_spec,
            notify,
        } => return register(&client, &cy, every, cron, remote_spec, notify).await,
        Cmd::Unregister { .. } => {
            return match client
                .json(Method::DELETE, &routes::cloud(&key_of_this()), None)
                .await
            {
                Ok(v) => {
                    if output::json_mode() {
                        output::print_json_doc(&v);
                    }
                    output::say(&format!("unregistered {cy}: it is no longer ticked"));
                    0
                }
                Err(e) => fail_for(e, &cy),
            };
        }
        Cmd::Registrations { wide, limit } => {
            return registrations(&client, table_view(wide, limit)).await;
        }
        Cmd::Dashboard { port, no_open } => {
            return commands::dashboard::run(&client, port, no_open)
                .await
                .unwrap_or_else(fail);
        }
        Cmd::Ls { watch, wide, limit } => {
            let view = commands::fleet::View {
                width: (!wide).then(columns::terminal_width),
                color: output::get().color,
                limit,
            };
            let shown = if watch {
                commands::fleet::watch(&client, view).await
            } else {
                commands::fleet::show(&client, view).await
            };
            return match shown {
                Ok(()) if watch => {
                    eprintln!(
                        "ls --watch: the daemon closed the stream (it stopped or restarted); run it again once the daemon is back"
                    );
                    3
                }
                Ok(()) => 0,
                Err(e) => fail(e),
            };
        }
        Cmd::Ticks {
            limit,
            all,
            filter,
            wide,
            ..
        } => {
            let json = output::json_mode();
            // One more than shown, to know whether older reports exist (`-n 0`: none shown).
            let asked = if json { limit } else { limit.saturating_add(1) };
            let mut q = format!("{}?limit={}", routes::TICKS, asked.max(1));
            if !all {
                q.push_str(&format!("&cloud_yaml={}", enc(&cy)));
            }
            q.push_str(&filter.query(enc));
            return match client.json(Method::GET, &q, None).await {
                Ok(v) if json => {
                    let v = match v {
                        Value::Array(mut items) => {
                            items.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
                            Value::Array(items)
                        }
                        other => other,
                    };
                    output::print_json_doc(&v);
                    0
                }
                Ok(v) => match client::parse_answer::<Vec<megaplan_cloud_api::wire::TickRecord>>(
                    routes::TICKS,
                    v,
                ) {
                    Ok(mut rows) => {
                        let keep = usize::try_from(limit).unwrap_or(usize::MAX);
                        let more = rows.len() > keep;
                        rows.truncate(keep);
                        render::ticks_table(&rows, more, table_view(wide, None));
                        0
                    }
                    Err(e) => fail(e),
                },
                Err(e) => fail(e),
            };
        }
        Cmd::Tick { .. } => {
            return match client
                .json(Method::POST, &routes::cloud_tick(&key_of_this()), None)
                .await
            {
                Ok(v) => {
                    let json = output::json_mode();
                    if json {
                        output::print_json_doc(&v);
                    }
                    match serde_json::from_value::<TickNowResponse>(v) {
                        Ok(TickNowResponse::Ran(rec)) => {
                            if !json {
                                print!(
                                    "{}",
                                    commands::chain::tick_text(
                                        Some(&rec),
                                        &rec.report,
                                        chrono::Utc::now(),
                                        chain_style()
                                    )
                                );
                            } else if !rec.success {
                                // Through a pipe stderr carries only a failure: its one line.
                                eprintln!("{}", rec.report);
                            }
                            i32::from(!rec.success)
                        }
                        Ok(TickNowResponse::Skipped(s)) => {
                            eprintln!("{}", s.message);
                            1
                        }
                        Err(e) => {
                            eprintln!(
                                "megaplan-cloudctl: the daemon's tick answer is not a tick record ({e})"
                            );
                            1
                        }
                    }
                }
                Err(e) => fail_for(e, &cy),
            };
        }
        Cmd::Watch {
            all,
            backlog,
            filter,
            ..
        } => {
            let json = output::json_mode();
            let mut q = format!("{}?backlog={backlog}", routes::TICKS_WATCH);
            if !all {
                q.push_str(&format!("&cloud_yaml={}", enc(&cy)));
            }
            q.push_str(&filter.query(enc));
            return watch(&client, &q, json).await;
        }
        Cmd::Pause { reason, .. } => {
            let by = format!("{}@{}", user_name(), hostname());
            let body = serde_json::to_value(megaplan_cloud_api::wire::PauseRequest { by, reason })
                .unwrap_or(Value::Null);
            let path = routes::cloud_pause(&key_of_this());
            return match client.json(Method::POST, &path, Some(&body)).await {
                Ok(v) => {
                    if output::json_mode() {
                        output::print_json_doc(&v);
                    }
                    let by = serde_json::from_value::<megaplan_cloud_api::wire::PauseResponse>(v)
                        .map(|r| r.paused.paused_by)
                        .unwrap_or_else(|_| "?".into());
                    output::say(&format!(
                        "paused {cy} (by {by}): ticks observe but never act until `megaplan-cloudctl unpause`"
                    ));
                    0
                }
                Err(e) => fail_for(e, &cy),
            };
        }
        Cmd::Unpause { .. } => {
            let path = routes::cloud_pause(&key_of_this());
            return match client.json(Method::DELETE, &path, None).await {
                Ok(v) => {
                    if output::json_mode() {
                        output::print_json_doc(&v);
                    }
                    let was =
                        serde_json::from_value::<megaplan_cloud_api::wire::UnpauseResponse>(v)
                            .map(|r| r.was_paused.is_some())
                            .unwrap_or(true);
                    output::say(&if was {
                        format!("unpaused {cy}: ticks may act again")
                    } else {
                        format!("{cy} was not paused")
                    });
                    0
                }
                Err(e) => fail_for(e, &cy),
            };
        }
        Cmd::Unquarantine { .. } => {
            return commands::quarantine::unquarantine(&client, &key_of_this(), &cy)
                .await
                .unwrap_or_else(|e| fail_for(e, &cy));
        }
        Cmd::Explain { .. } => {
            let json = output::json_mode();
            let path = routes::cloud_explain(&key_of_this());
            return match client.json(Method::GET, &path, None).await {
                Ok(v) => {
                    if json {
                        print_json(&v);
                    } else {
                        render::lines(&v["lines"]);
                    }
                    0
                }
                Err(e) => fail_for(e, &cy),
            };
        }
        Cmd::Notifications {
            action: Some(_),
            all,
            ..
        } => {
            let which = (!all).then_some(cy.as_str());
            return commands::notifications::test(&client, which)
                .await
                .unwrap_or_else(|e| fail_for(e, &cy));
        }
        Cmd::Notifications { limit, all, .. } => {
            let json = output::json_mode();
            let mut q = format!("{}?limit={limit}", routes::NOTIFICATIONS);
            if !all {
                q.push_str(&format!("&cloud_yaml={}", enc(&cy)));
            }
            return match client.json(Method::GET, &q, None).await {
                Ok(v) => {
                    if json {
                        print_json(&v);
                    } else {
                        render::notifications_table(&v);
                    }
                    0
                }
                Err(e) => fail(e),
            };
        }
        Cmd::Daemon {
            what: DaemonCmd::Status,
        } => return daemon_status(&client, output::json_mode()).await,
    };
    run_command(&client, &cy, as_given, command).await
}

fn init(path: &Path, force: bool, provider: &str) -> i32 {
    if path.exists() && !force {
        return local_error(
            ErrorCode::InvalidArgs,
            format!(
                "{} already exists; pass --force to overwrite it",
                path.display()
            ),
        );
    }
    if let Some(dir) = path.parent()
        && let Err(e) = std::fs::create_dir_all(dir)
    {
        return local_error(
            ErrorCode::InvalidArgs,
            format!("cannot create {}: {e}", dir.display()),
        );
    }
    let Some(scaffold) = megaplan_cloud_api::cloud_yaml_scaffold(provider) else {
        return local_error(
            ErrorCode::InvalidArgs,
            format!(
                "--provider {provider:?}: choose one of {}",
                megaplan_cloud_api::SCAFFOLD_PROVIDERS.join(", ")
            ),
        );
    };
    if let Err(e) = std::fs::write(path, scaffold) {
        return local_error(
            ErrorCode::InvalidArgs,
            format!("cannot write {}: {e}", path.display()),
        );
    }
    // `cloud_yaml` is the original's field; `path` is kept for scripts written against ours.
    let shown = path.display().to_string();
    let next = format!(
        "wrote {}; edit repo.url, provider and secrets, then run `megaplan-cloudctl build`",
        path.display()
    );
    if output::json_mode() {
        // The seed's split for `init`: the document on stdout, its line on stderr.
        output::print_json_doc(&json!({"success": true, "cloud_yaml": shown, "path": shown}));
        eprintln!("{next}");
    } else {
        output::say(&next);
    }
    0
}

enum Confirmation {
    Yes,
    Declined,
    NoTerminal,
}

fn confirm_destroy(cloud_yaml: &str) -> Confirmation {
    if !std::io::stdin().is_terminal() {
        return Confirmation::NoTerminal;
    }
    eprint!(
        "Destroy the runner of {cloud_yaml}, its volume and deploy dir? Type 'yes' to confirm: "
    );
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    if std::io::stdin().read_line(&mut answer).is_ok() && answer.trim() == "yes" {
        Confirmation::Yes
    } else {
        Confirmation::Declined
    }
}

/// What the client hands over with a command: the secret values and, when asked for, the
/// agents' login files.
struct HandedOver {
    secrets: BTreeMap<String, String>,
    agent_auth: Option<megaplan_cloud_api::wire::AgentAuth>,
}

/// Ask the daemon which secret names the cloud.yaml lists (and its `megaplan.codex_auth`) and
/// read their values here; for `deploy` and `chain` with `codex_auth: chatgpt`, also the
/// agents' login files.
async fn handed_over(
    client: &DaemonClient,
    cloud_yaml: &str,
    command: &Command,
) -> Result<HandedOver, ClientError> {
    let v = client
        .json(
            Method::GET,
            &format!("{}?cloud_yaml={}", routes::SECRET_NAMES, enc(cloud_yaml)),
            None,
        )
        .await?;
    let mut out = BTreeMap::new();
    let (names, codex_auth) = serde_json::from_value::<SecretNamesResponse>(v)
        .map(|r| (r.names, r.codex_auth))
        .unwrap_or_default();
    for n in names {
        if let Ok(val) = std::env::var(&n)
            && !val.is_empty()
        {
            out.insert(n, val);
        }
    }
    // An older daemon does not say: it cannot seed, so nothing is read.
    let seeds = matches!(command, Command::Deploy | Command::Chain { .. })
        && codex_auth.as_deref() == Some("chatgpt");
    Ok(HandedOver {
        secrets: out,
        agent_auth: seeds.then(|| agent_auth::read(&paths::home_dir())),
    })
}

async fn run_command(
    client: &DaemonClient,
    cloud_yaml: &str,
    cloud_yaml_as_given: Option<String>,
    command: Command,
) -> i32 {
    let HandedOver {
        secrets,
        agent_auth,
    } = match handed_over(client, cloud_yaml, &command).await {
        Ok(h) => h,
        Err(e) => return fail(e),
    };
    // Only `exec` and `logs` print the runner's own output as their result; for every other
    // command (build, deploy, …) what the provider prints is progress, so it goes to stderr and
    // stdout stays one JSON document.
    let stdout_is_result = matches!(command, Command::Exec { .. } | Command::Logs { .. });
    let rendered = match command {
        Command::Status { chain: true, .. } => Rendered::ChainStatus,
        Command::Supervise { .. } => Rendered::TickReport,
        Command::Status { all: true, .. } | Command::Chains => Rendered::Sessions,
        Command::Chain { .. } => Rendered::Launched,
        Command::Build | Command::Deploy | Command::Down | Command::Destroy { .. } => {
            Rendered::Said
        }
        _ => Rendered::Generic,
    };
    // Operations that can sit silent for a while (connecting the ssh master, a build, a
    // deploy) show a spinner on stderr, on a terminal only; streamed lines print above it.
    let spinner = (!stdout_is_result
        && !matches!(command, Command::Attach { .. })
        && std::io::stderr().is_terminal())
    .then(|| {
        let pb = indicatif::ProgressBar::new_spinner();
        pb.set_message(format!(
            "{}: waiting for megaplan-cloudd and the runner",
            command.name()
        ));
        pb.enable_steady_tick(std::time::Duration::from_millis(120));
        pb
    });
    let to_stderr = |data: &str| {
        let write = || {
            let mut e = std::io::stderr().lock();
            let _ = e.write_all(data.as_bytes());
            let _ = e.flush();
        };
        match &spinner {
            Some(pb) => pb.suspend(write),
            None => write(),
        }
    };
    let req = RunRequest {
        cloud_yaml: cloud_yaml.to_string(),
        cloud_yaml_as_given,
        cwd: paths::current_dir().display().to_string(),
        secrets,
        agent_auth,
        command,
    };
    let body = serde_json::to_value(&req).unwrap_or(Value::Null);
    let mut exit_code: Option<i32> = None;
    let mut terminal: Option<Vec<String>> = None;
    let mut stderr_seen = String::new();
    let streamed = client
        .stream(routes::RUN, &body, |line| {
            if line.is_empty() {
                return;
            }
            match serde_json::from_str::<Frame>(line) {
                Ok(Frame::Stdout { data }) if stdout_is_result => {
                    let mut o = std::io::stdout().lock();
                    let _ = o.write_all(data.as_bytes());
                    let _ = o.flush();
                }
                Ok(Frame::Stdout { data }) => to_stderr(&data),
                Ok(Frame::Stderr { data }) => {
                    stderr_seen.push_str(&data);
                    // Scripts get the seed's split (the daemon's summary on stderr); a person
                    // gets the renderer instead, and only the warnings from here.
                    if !rendered.replaces_daemon_lines() || output::json_mode() {
                        to_stderr(&data);
                    } else {
                        for line in data.lines().filter(|l| l.starts_with("warning:")) {
                            to_stderr(&format!("{line}\n"));
                        }
                    }
                }
                Ok(Frame::Terminal { argv }) => terminal = Some(argv),
                Ok(Frame::Result {
                    payload,
                    exit_code: c,
                }) => {
                    if let Some(pb) = &spinner {
                        pb.finish_and_clear();
                    }
                    let is_error = payload.get("success") == Some(&Value::Bool(false))
                        && payload.get("error").is_some();
                    if is_error && !output::json_mode() {
                        // On a terminal an error is said once, on stderr: the daemon's own
                        // line when it streamed one, else the error's.
                        let message = payload["message"].as_str().unwrap_or_default();
                        let relayed = !rendered.replaces_daemon_lines() || output::json_mode();
                        if message.is_empty() || !relayed || !stderr_seen.contains(message) {
                            eprintln!(
                                "{} {}: {}",
                                output::paint("error:", "1;31"),
                                payload["error"].as_str().unwrap_or("error"),
                                output::strip_controls(message)
                            );
                        }
                    } else if payload.is_null() {
                        // exec and logs: their output was the answer.
                    } else if output::json_mode() {
                        output::print_json_doc(&payload);
                    } else if !payload.is_null() {
                        render_result(rendered, &payload);
                    }
                    exit_code = Some(c);
                }
                Ok(Frame::Tick { .. }) => {}
                Err(e) => eprintln!("megaplan-cloudctl: unreadable frame from the daemon ({e})"),
            }
        })
        .await;
    if let Some(pb) = &spinner {
        pb.finish_and_clear();
    }
    if let Err(e) = streamed {
        return fail(e);
    }
    if let Some(argv) = terminal {
        return run_terminal(&argv);
    }
    match exit_code {
        Some(c) => c,
        None => fail(ClientError::Api(ErrorBody::new(
            ErrorCode::ProtocolError,
            "the daemon closed the stream without a result (did it stop?); check its log",
        ))),
    }
}

/// `attach`: run the daemon-provided argv on this terminal (raw PTY; not redacted by design).
fn run_terminal(argv: &[String]) -> i32 {
    let Some((prog, args)) = argv.split_first() else {
        return local_error(ErrorCode::ProtocolError, "empty attach command");
    };
    if let Err(e) = client::check_attach_argv(argv) {
        return local_error(ErrorCode::ProtocolError, e);
    }
    match std::process::Command::new(prog).args(args).status() {
        Ok(s) => s.code().unwrap_or(1),
        Err(e) => local_error(
            ErrorCode::ProviderUnavailable,
            format!("cannot run {prog}: {e}"),
        ),
    }
}

async fn register(
    client: &DaemonClient,
    cloud_yaml: &str,
    every: Option<String>,
    cron: Option<String>,
    remote_spec: Option<String>,
    notify: cli::NotifyArgs,
) -> i32 {
    // A value the client can tell is wrong is a usage error (exit 2, like clap's), said before
    // the daemon is asked.
    let every_secs = match every.as_deref().map(cli::parse_every).transpose() {
        Ok(v) => v,
        Err(e) => return usage_error(e),
    };
    let cron = match cron.as_deref().map(cli::normalise_cron).transpose() {
        Ok(v) => v,
        Err(e) => return usage_error(e),
    };
    let req = RegisterRequest {
        cloud_yaml: cloud_yaml.to_string(),
        every_secs,
        cron,
        remote_spec,
        notify_urls: notify.notify_urls,
        notify_command: notify.notify_command,
        notify_preset: notify.notify_preset,
        no_notify: notify.no_notify,
    };
    let body = serde_json::to_value(&req).unwrap_or(Value::Null);
    match client.json(Method::POST, routes::CLOUDS, Some(&body)).await {
        Ok(v) => {
            if output::json_mode() {
                output::print_json_doc(&v);
                return 0;
            }
            match serde_json::from_value::<RegisterResponse>(v) {
                Ok(r) => {
                    // The warnings are part of the answer: printed once, with it.
                    let width = columns::terminal_width();
                    for w in &r.warnings {
                        let lines = columns::wrap(&format!("warning: {w}"), Some(width), "", "  ");
                        for (i, l) in lines.iter().enumerate() {
                            match l.strip_prefix("warning:").filter(|_| i == 0) {
                                Some(rest) => println!("{}{rest}", output::paint("warning:", "33")),
                                None => println!("{l}"),
                            }
                        }
                    }
                    let now = chrono::Utc::now();
                    // The next runs as `systemd-analyze calendar` shows them: local time and
                    // how far away.
                    let runs: Vec<String> = r
                        .next_runs
                        .iter()
                        .filter_map(|at| chrono::DateTime::parse_from_rfc3339(at).ok())
                        .map(|t| {
                            format!(
                                "{} ({})",
                                t.with_timezone(&chrono::Local)
                                    .format("%a %Y-%m-%d %H:%M:%S %Z"),
                                render::relative(&t.to_rfc3339(), now)
                            )
                        })
                        .collect();
                    let mut text = format!(
                        "registered {cloud_yaml}\n  key        {}\n  schedule   {} (UTC)",
                        r.key,
                        render::schedule_text(&r.schedule)
                    );
                    for (i, run) in runs.iter().enumerate() {
                        let label = if i == 0 { "next ticks" } else { "" };
                        text.push_str(&format!("\n  {label:<10} {run}"));
                    }
                    output::say(&text);
                }
                Err(e) => output::say(&format!(
                    "registered {cloud_yaml} (the daemon's answer does not read as a registration: {e})"
                )),
            }
            0
        }
        Err(e) => fail(e),
    }
}

fn table_view(wide: bool, limit: Option<usize>) -> render::TableView {
    render::TableView {
        width: (!wide).then(columns::terminal_width),
        color: output::get().color,
        limit,
    }
}

async fn registrations(client: &DaemonClient, view: render::TableView) -> i32 {
    match client.json(Method::GET, routes::CLOUDS, None).await {
        Ok(v) if output::json_mode() => {
            output::print_json_doc(&v);
            0
        }
        Ok(v) => match client::parse_answer::<Vec<megaplan_cloud_api::wire::RegistrationListed>>(
            routes::CLOUDS,
            v,
        ) {
            Ok(rows) => {
                render::registrations_table(&rows, view);
                0
            }
            Err(e) => fail(e),
        },
        Err(e) => fail(e),
    }
}

/// Who pauses: `$USER` or `$LOGNAME`, else the password database's name of this uid (a
/// service or `sudo -i` shell may set neither), else `uid<n>`; never "unknown".
fn user_name() -> String {
    for var in ["USER", "LOGNAME"] {
        if let Ok(name) = std::env::var(var)
            && !name.is_empty()
        {
            return name;
        }
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    // SAFETY: `passwd` is plain data (integers and pointers); all-zero is a valid value that
    // getpwuid_r overwrites.
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: getpwuid_r writes only into `entry` and `buf` (whose length it is given) and
    // points `found` at `entry` or leaves it null; both outlive the call and the read below.
    let rc = unsafe { libc::getpwuid_r(uid, &mut entry, buf.as_mut_ptr(), buf.len(), &mut found) };
    if rc == 0 && !found.is_null() && !entry.pw_name.is_null() {
        // SAFETY: pw_name points at a NUL-terminated string inside `buf`, alive here.
        let name = unsafe { std::ffi::CStr::from_ptr(entry.pw_name) };
        let name = name.to_string_lossy().into_owned();
        if !name.is_empty() {
            return name;
        }
    }
    format!("uid{uid}")
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

async fn watch(client: &DaemonClient, q: &str, json: bool) -> i32 {
    if !json {
        eprintln!("watching tick reports (Ctrl-C to stop)");
    }
    let r = client
        .stream_get(q, |line| match serde_json::from_str::<Frame>(line) {
            Ok(Frame::Tick { tick }) => {
                if json {
                    output::print_json_line(&serde_json::to_value(&tick).unwrap_or_default());
                } else {
                    println!("{}", render::tick_record_line(&tick));
                }
                let _ = std::io::stdout().flush();
            }
            Ok(Frame::Stderr { data }) => eprint!("{data}"),
            _ => {}
        })
        .await;
    // The stream only ends when the daemon goes away (or drops this watcher): say so.
    match r {
        Ok(()) => {
            eprintln!(
                "watch: the daemon closed the stream (it stopped or restarted); run `megaplan-cloudctl watch` again once it is back"
            );
            3
        }
        Err(e) => {
            eprintln!("watch: lost the daemon");
            fail(e)
        }
    }
}

/// `version`: this client's, and the daemon's when one answers (its absence is not an error:
/// the client's version is still worth knowing).
async fn version(client: &DaemonClient) -> i32 {
    let daemon: Option<Health> = client.typed(Method::GET, routes::HEALTH, None).await.ok();
    let v = json!({
        "client": {
            "version": megaplan_cloud_api::VERSION,
            "api_version": megaplan_cloud_api::API_VERSION,
        },
        "daemon": daemon.as_ref().map(|h| json!({
            "version": h.version,
            "api_version": h.api_version,
            "socket": h.socket,
        })),
    });
    if output::json_mode() {
        output::print_json_doc(&v);
    } else {
        println!(
            "megaplan-cloudctl {} (API v{})",
            megaplan_cloud_api::VERSION,
            megaplan_cloud_api::API_VERSION
        );
        match &daemon {
            Some(h) => println!(
                "megaplan-cloudd   {} (API v{}) at {}",
                h.version, h.api_version, h.socket
            ),
            None => println!(
                "megaplan-cloudd   not reachable at {}",
                client.socket.display()
            ),
        }
    }
    0
}

async fn daemon_status(client: &DaemonClient, json: bool) -> i32 {
    // The daemon's own document is what `--json` prints; the typed reading is what is checked
    // and rendered.
    let read = match client.json(Method::GET, routes::HEALTH, None).await {
        Ok(v) => client::parse_answer::<Health>(routes::HEALTH, v.clone()).map(|h| (v, h)),
        Err(e) => Err(e),
    };
    match read {
        Ok((v, h)) => {
            if h.api_version != megaplan_cloud_api::API_VERSION {
                eprintln!(
                    "warning: daemon speaks API v{}, this client v{}; restart megaplan-cloudd after upgrading",
                    h.api_version,
                    megaplan_cloud_api::API_VERSION
                );
            }
            if json {
                output::print_json_doc(&v);
            } else {
                render::health(&h);
            }
            0
        }
        Err(e) => fail(e),
    }
}
