//! `POST /v1/run`: the commands the daemon runs against a runner. The request is built by
//! each family's `request` (runner.rs, plan.rs, chain.rs); this file sends it, relays the
//! stream and hands the typed answer ([`CommandOutput`]) to that family's renderer.

use super::{chain, plan, runner};
use crate::failure::{fail, local_error};
use crate::output;
use crate::target::Target;
use crate::{agent_auth, columns};
use hyper::Method;
use megaplan_cloud_api::output::CommandOutput;
use megaplan_cloud_api::wire::{Command, Frame, RunRequest, SecretNamesResponse};
use megaplan_cloud_api::{ErrorBody, ErrorCode, paths, routes};
use megaplan_cloudctl::client::{self, ClientError, DaemonClient, enc};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};

/// Does the command's renderer say what the daemon's stderr lines say (a summary of the same
/// answer)? Then a person sees only the renderer; progress lines of other commands stay.
fn replaces_daemon_lines(command: &Command) -> bool {
    matches!(
        command,
        Command::Status { .. } | Command::Supervise { .. } | Command::Chains
    )
}

/// The answer for a person: the renderer of its type, or (a daemon whose answer does not read
/// as this client's type) the document itself, pretty-printed.
fn render(command: &Command, payload: Value) {
    let now = chrono::Utc::now();
    let style = chain::Style::of_terminal();
    let text = match CommandOutput::from_payload(command, payload.clone()) {
        Ok(CommandOutput::Streamed) => String::new(),
        Ok(
            out @ (CommandOutput::Built(_)
            | CommandOutput::Deployed(_)
            | CommandOutput::Down(_)
            | CommandOutput::Destroyed(_)),
        ) => runner::text(&out, style),
        Ok(CommandOutput::PlanStatus(s)) => plan::status_text(&s, style),
        Ok(CommandOutput::Bootstrapped(b)) => plan::bootstrapped_text(&b, style),
        Ok(CommandOutput::Resumed(r)) => plan::resumed_text(&r, style),
        Ok(CommandOutput::ChainStatus(s)) => chain::status_text(&s, now, style),
        Ok(CommandOutput::Tick(r)) => chain::tick_text(None, &r, now, style),
        Ok(CommandOutput::Sessions(s)) => {
            chain::sessions_text(&s, Some(columns::terminal_width()), style.color)
        }
        Ok(CommandOutput::Launched(l)) => chain::launched_text(&l),
        Err(e) => {
            eprintln!(
                "warning: the daemon's answer to `{}` does not read as this client's type ({e}); showing it as JSON",
                command.name()
            );
            output::print_json_doc(&payload);
            return;
        }
    };
    let mut o = std::io::stdout().lock();
    let _ = o.write_all(text.as_bytes());
    let _ = o.flush();
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

/// Send one command over `POST /v1/run` and relay its stream: stdout frames to stdout (exec,
/// logs) or stderr (progress), stderr frames to stderr, and the result through the command's
/// renderer or as JSON; the exit code is the daemon's.
pub async fn send(client: &DaemonClient, target: &Target, command: Result<Command, i32>) -> i32 {
    let command = match command {
        Ok(c) => c,
        Err(code) => return code,
    };
    let cloud_yaml = target.cloud_yaml.display().to_string();
    let cloud_yaml = cloud_yaml.as_str();
    let cloud_yaml_as_given = target.as_given.clone();
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
    // A person gets the renderer instead of the daemon's summary lines (and only their
    // warnings); scripts get the seed's split, the daemon's summary on stderr.
    let replaces_daemon_lines = !output::json_mode() && replaces_daemon_lines(&command);
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
    let command_sent = command.clone();
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
                    if !replaces_daemon_lines {
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
                        let relayed = !replaces_daemon_lines;
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
                    } else {
                        render(&command_sent, payload);
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
