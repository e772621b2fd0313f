//! `megaplan-cloudctl`: a thin client. It resolves paths, reads what only this machine's user
//! has (secret env values, the terminal for attach), asks the daemon, and renders the answer:
//! JSON for scripts, a renderer per command for a person, the exit code the daemon decided.
//! `run` only dispatches: each command family lives in `commands/<family>.rs` with its request
//! and its renderer.

mod agent_auth;
mod cli;
mod columns;
mod commands;
mod complete;
mod discover;
mod doctor;
mod failure;
mod jq;
mod output;
mod render;
mod target;

use clap::Parser;
use cli::{Cli, Cmd, DaemonCmd};
use commands::{chain, fleet, history, local, plan, registration, run as remote, runner};
use megaplan_cloud_api::paths;
// `crate::client` for the modules (doctor.rs) that name the library's client by that path.
use megaplan_cloudctl::client::{self, DaemonClient};

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

/// Resolve what the command is about, then hand it to its family.
async fn run(mut cli: Cli) -> i32 {
    let (socket, source) = paths::resolve_socket(cli.socket.as_deref());
    let client = DaemonClient::new(socket, source);
    let t = match target::resolve(&client, &mut cli).await {
        Ok(t) => t,
        Err(code) => return code,
    };
    let c = &client;
    match cli.command {
        Cmd::Init { force, provider } => {
            let path = discover::init_target(cli.cloud_yaml.as_deref(), &paths::current_dir());
            local::init(&path, force, provider.as_deref().unwrap_or("railway"))
        }
        Cmd::Doctor { send_test } => doctor::run(c, cli.cloud_yaml.as_deref(), send_test).await,
        Cmd::Completions { shell } => local::completions(&shell.to_string()),
        Cmd::Man { dir } => local::man(dir),
        Cmd::Version => local::version(c).await,
        Cmd::Daemon {
            what: DaemonCmd::Status,
        } => local::daemon_status(c, output::json_mode()).await,
        Cmd::Ls { watch, wide, limit } => fleet::run(c, watch, wide, limit).await,
        Cmd::Dashboard { port, no_open } => commands::dashboard::run(c, port, no_open)
            .await
            .unwrap_or_else(failure::fail),
        cmd @ (Cmd::Register { .. }
        | Cmd::Unregister { .. }
        | Cmd::Registrations { .. }
        | Cmd::Tick { .. }
        | Cmd::Pause { .. }
        | Cmd::Unpause { .. }
        | Cmd::Explain { .. }) => registration::run(c, &t, cmd).await,
        Cmd::Unquarantine { .. } => commands::quarantine::unquarantine(c, &t.key(), &t.shown())
            .await
            .unwrap_or_else(|e| failure::fail_for(e, &t.shown())),
        cmd @ (Cmd::Ticks { .. } | Cmd::Watch { .. } | Cmd::Notifications { .. }) => {
            history::run(c, &t, cmd).await
        }
        cmd @ (Cmd::Status { .. } | Cmd::Bootstrap { .. } | Cmd::Resume { .. }) => {
            remote::send(c, &t, plan::request(cmd)).await
        }
        cmd @ (Cmd::Chain { .. } | Cmd::Chains | Cmd::Supervise { .. }) => {
            remote::send(c, &t, chain::request(cmd)).await
        }
        cmd => remote::send(c, &t, runner::request(cmd, &t.shown())).await,
    }
}
