//! `megaplan-cloudctl`: a thin client. It resolves paths, reads what only this machine's user
//! has (secret env values, the terminal for attach), asks the daemon, and renders the answer:
//! JSON on stdout, the human summary on stderr, the exit code the daemon decided.

mod cli;
mod client;
mod render;

use clap::Parser;
use cli::{Cli, Cmd, DaemonCmd, RepoOverrideArgs};
use client::{ClientError, DaemonClient, enc};
use hyper::Method;
use megaplan_cloud_api::wire::{Command, Frame, RegisterRequest, RepoOverrides, RunRequest};
use megaplan_cloud_api::{ErrorBody, ErrorCode, paths, routes};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

fn main() {
    let cli = Cli::parse();
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
    std::process::exit(code);
}

fn print_json(v: &Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
    let _ = out.flush();
}

/// Print a structured error (stdout JSON + one stderr line) and return its exit code.
fn fail(e: ClientError) -> i32 {
    match e {
        ClientError::Unreachable(body) => {
            print_json(&body.to_value());
            eprintln!("error: {}", body.message);
            2
        }
        ClientError::Api(body) => {
            print_json(&body.to_value());
            eprintln!("error: {}: {}", body.error, body.message);
            1
        }
    }
}

fn local_error(code: ErrorCode, message: impl Into<String>) -> i32 {
    fail(ClientError::Api(ErrorBody::new(code, message)))
}

fn abs(p: &Path) -> PathBuf {
    paths::absolutize(p, &paths::current_dir())
}

fn overrides(o: RepoOverrideArgs) -> RepoOverrides {
    RepoOverrides {
        repo_url: o.repo_url,
        repo_branch: o.repo_branch,
        repo_workspace: o.repo_workspace,
    }
}

async fn run(cli: Cli) -> i32 {
    let cloud_yaml = abs(&cli.cloud_yaml);
    let (socket, source) = paths::resolve_socket(cli.socket.as_deref());
    let client = DaemonClient::new(socket, source);
    let cy = cloud_yaml.display().to_string();
    let command = match cli.command {
        // `init` needs no daemon: it only writes the scaffold.
        Cmd::Init { force } => return init(&cloud_yaml, force),
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
        Cmd::Logs { no_follow } => Command::Logs { follow: !no_follow },
        Cmd::Attach { session } => Command::Attach { session },
        Cmd::Exec { cmd } => Command::Exec { cmd: cmd.join(" ") },
        Cmd::Resume { plan } => Command::Resume { plan },
        Cmd::Down => Command::Down,
        Cmd::Destroy { yes } => {
            if !yes && !confirm_destroy(&cy) {
                return local_error(
                    ErrorCode::InvalidArgs,
                    "destroy needs confirmation: answer on a terminal, or pass --yes",
                );
            }
            Command::Destroy { yes: true }
        }
        Cmd::Supervise {
            chain,
            remote_spec,
            dry_run,
        } => {
            if !chain {
                return local_error(
                    ErrorCode::InvalidArgs,
                    "supervise needs --chain (the chain supervisor is the only one)",
                );
            }
            Command::Supervise {
                remote_spec,
                dry_run,
            }
        }
        Cmd::Chains => Command::Chains,
        Cmd::Register {
            every,
            cron,
            remote_spec,
            notify,
        } => return register(&client, &cy, every, cron, remote_spec, notify).await,
        Cmd::Unregister => {
            return match client
                .json(
                    Method::DELETE,
                    &routes::cloud(&paths::marker_key(&cloud_yaml)),
                    None,
                )
                .await
            {
                Ok(v) => {
                    print_json(&v);
                    eprintln!("unregistered {cy}");
                    0
                }
                Err(e) => fail(e),
            };
        }
        Cmd::Registrations { json } => return registrations(&client, json).await,
        Cmd::Ticks {
            limit,
            all,
            json,
            filter,
        } => {
            let mut q = format!("{}?limit={limit}", routes::TICKS);
            if !all {
                q.push_str(&format!("&cloud_yaml={}", enc(&cy)));
            }
            q.push_str(&filter.query(enc));
            return match client.json(Method::GET, &q, None).await {
                Ok(v) => {
                    if json {
                        print_json(&v);
                    } else {
                        render::ticks_table(&v);
                    }
                    0
                }
                Err(e) => fail(e),
            };
        }
        Cmd::Tick => {
            return match client
                .json(
                    Method::POST,
                    &routes::cloud_tick(&paths::marker_key(&cloud_yaml)),
                    None,
                )
                .await
            {
                Ok(v) => {
                    print_json(&v);
                    if let Some(report) = v.get("report") {
                        eprintln!("{}", render::tick_line(report));
                    }
                    i32::from(v.get("success").and_then(Value::as_bool) != Some(true))
                }
                Err(e) => fail(e),
            };
        }
        Cmd::Watch {
            all,
            json,
            backlog,
            filter,
        } => {
            let mut q = format!("{}?backlog={backlog}", routes::TICKS_WATCH);
            if !all {
                q.push_str(&format!("&cloud_yaml={}", enc(&cy)));
            }
            q.push_str(&filter.query(enc));
            return watch(&client, &q, json).await;
        }
        Cmd::Pause { reason } => {
            let by = format!(
                "{}@{}",
                std::env::var("USER")
                    .or_else(|_| std::env::var("LOGNAME"))
                    .unwrap_or_else(|_| "unknown".into()),
                hostname()
            );
            let body = serde_json::to_value(megaplan_cloud_api::wire::PauseRequest { by, reason })
                .unwrap_or(Value::Null);
            let path = routes::cloud_pause(&paths::marker_key(&cloud_yaml));
            return match client.json(Method::POST, &path, Some(&body)).await {
                Ok(v) => {
                    print_json(&v);
                    eprintln!(
                        "paused {cy} (by {}, since {}): ticks observe but never mutate until `megaplan-cloudctl unpause`",
                        v["paused"]["paused_by"].as_str().unwrap_or("?"),
                        v["paused"]["since"].as_str().unwrap_or("?")
                    );
                    0
                }
                Err(e) => fail(e),
            };
        }
        Cmd::Unpause => {
            let path = routes::cloud_pause(&paths::marker_key(&cloud_yaml));
            return match client.json(Method::DELETE, &path, None).await {
                Ok(v) => {
                    print_json(&v);
                    if v["was_paused"].is_null() {
                        eprintln!("{cy} was not paused");
                    } else {
                        eprintln!("unpaused {cy}: ticks may act again");
                    }
                    0
                }
                Err(e) => fail(e),
            };
        }
        Cmd::Explain { json } => {
            let path = routes::cloud_explain(&paths::marker_key(&cloud_yaml));
            return match client.json(Method::GET, &path, None).await {
                Ok(v) => {
                    if json {
                        print_json(&v);
                    } else {
                        render::lines(&v["lines"]);
                    }
                    0
                }
                Err(e) => fail(e),
            };
        }
        Cmd::Notifications { limit, all, json } => {
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
            what: DaemonCmd::Status { json },
        } => return daemon_status(&client, json).await,
    };
    run_command(&client, &cy, command).await
}

fn init(path: &Path, force: bool) -> i32 {
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
    if let Err(e) = std::fs::write(path, megaplan_cloud_api::CLOUD_YAML_SCAFFOLD) {
        return local_error(
            ErrorCode::InvalidArgs,
            format!("cannot write {}: {e}", path.display()),
        );
    }
    print_json(&json!({"success": true, "path": path.display().to_string()}));
    eprintln!(
        "wrote {}; edit repo.url, provider and secrets, then run `megaplan-cloudctl build`",
        path.display()
    );
    0
}

fn confirm_destroy(cloud_yaml: &str) -> bool {
    if !std::io::stdin().is_terminal() {
        return false;
    }
    eprint!(
        "Destroy the runner of {cloud_yaml}, its volume and deploy dir? Type 'yes' to confirm: "
    );
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer).is_ok() && answer.trim() == "yes"
}

/// Ask the daemon which secret names the cloud.yaml lists and read their values here.
async fn secrets_for(
    client: &DaemonClient,
    cloud_yaml: &str,
) -> Result<BTreeMap<String, String>, ClientError> {
    let v = client
        .json(
            Method::GET,
            &format!("{}?cloud_yaml={}", routes::SECRET_NAMES, enc(cloud_yaml)),
            None,
        )
        .await?;
    let mut out = BTreeMap::new();
    for name in v
        .get("names")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(n) = name.as_str()
            && let Ok(val) = std::env::var(n)
            && !val.is_empty()
        {
            out.insert(n.to_string(), val);
        }
    }
    Ok(out)
}

async fn run_command(client: &DaemonClient, cloud_yaml: &str, command: Command) -> i32 {
    let secrets = match secrets_for(client, cloud_yaml).await {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let req = RunRequest {
        cloud_yaml: cloud_yaml.to_string(),
        cwd: paths::current_dir().display().to_string(),
        secrets,
        command,
    };
    let body = serde_json::to_value(&req).unwrap_or(Value::Null);
    let mut exit_code: Option<i32> = None;
    let mut terminal: Option<Vec<String>> = None;
    let streamed = client
        .stream(routes::RUN, &body, |line| {
            if line.is_empty() {
                return;
            }
            match serde_json::from_str::<Frame>(line) {
                Ok(Frame::Stdout { data }) => {
                    let mut o = std::io::stdout().lock();
                    let _ = o.write_all(data.as_bytes());
                    let _ = o.flush();
                }
                Ok(Frame::Stderr { data }) => {
                    let mut e = std::io::stderr().lock();
                    let _ = e.write_all(data.as_bytes());
                    let _ = e.flush();
                }
                Ok(Frame::Terminal { argv }) => terminal = Some(argv),
                Ok(Frame::Result {
                    payload,
                    exit_code: c,
                }) => {
                    if !payload.is_null() {
                        print_json(&payload);
                    }
                    exit_code = Some(c);
                }
                Ok(Frame::Tick { .. }) => {}
                Err(e) => eprintln!("megaplan-cloudctl: unreadable frame from the daemon ({e})"),
            }
        })
        .await;
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
    let every_secs = match every.as_deref().map(cli::parse_every).transpose() {
        Ok(v) => v,
        Err(e) => return local_error(ErrorCode::InvalidArgs, e),
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
            print_json(&v);
            for w in v
                .get("warnings")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                eprintln!("warning: {}", w.as_str().unwrap_or_default());
            }
            eprintln!(
                "registered {cloud_yaml} (key {}, schedule {})",
                v.get("key").and_then(Value::as_str).unwrap_or("?"),
                v.get("cron").and_then(Value::as_str).unwrap_or("?")
            );
            0
        }
        Err(e) => fail(e),
    }
}

async fn registrations(client: &DaemonClient, json: bool) -> i32 {
    match client.json(Method::GET, routes::CLOUDS, None).await {
        Ok(v) => {
            if json {
                print_json(&v);
            } else {
                render::registrations_table(&v);
            }
            0
        }
        Err(e) => fail(e),
    }
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
                    println!("{}", serde_json::to_string(&tick).unwrap_or_default());
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

async fn daemon_status(client: &DaemonClient, json: bool) -> i32 {
    match client.json(Method::GET, routes::HEALTH, None).await {
        Ok(v) => {
            if let Some(api) = v.get("api_version").and_then(Value::as_u64)
                && api != u64::from(megaplan_cloud_api::API_VERSION)
            {
                eprintln!(
                    "warning: daemon speaks API v{api}, this client v{}; restart megaplan-cloudd after upgrading",
                    megaplan_cloud_api::API_VERSION
                );
            }
            if json {
                print_json(&v);
            } else {
                render::health(&v);
            }
            0
        }
        Err(e) => fail(e),
    }
}
