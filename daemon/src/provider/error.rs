//! What can go wrong in a provider, in the provider's own words: [`ProviderError`]. The
//! provider layer returns it; the wire type [`ErrorBody`] is made from it in one place
//! (`impl From<ProviderError> for ErrorBody`), which picks the error code, the message and the
//! `extra` fields the api crate and the end-to-end tests pin. Callers that answer a request
//! convert with `?`; callers that decide by kind look at [`ProviderError::code`] or the variant.
//!
//! Every text a variant carries that came from a command's output is already redacted.
use crate::render::RenderError;
use megaplan_cloud_api::output::DeployStep;
use megaplan_cloud_api::{ErrorBody, ErrorCode};
use std::path::PathBuf;
use std::time::Duration;

/// A provider operation's failure.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProviderError {
    /// A CLI the provider shells out to is not on PATH (`provider_unavailable`, `binary`).
    #[error("Missing required CLI '{program}'. Install: {install_page}")]
    CliMissing {
        program: String,
        install_page: &'static str,
    },

    /// docker is installed but neither its compose plugin nor `docker-compose` is.
    #[error(
        "Missing required CLI 'docker-compose': this docker client has no compose plugin. Install the plugin or docker-compose: {}",
        super::common::install_page("docker-compose")
    )]
    ComposeMissing,

    /// A command was to run in the deploy folder, which `build` has not created yet.
    #[error("the deploy folder {dir} does not exist yet: run `megaplan-cloudctl build` first")]
    DeployFolderMissing { dir: String },

    /// A local command (ssh, docker, railway) outlived its deadline and was killed.
    #[error(
        "`{command}` did not finish within {}s and was killed; the runner may be slow or unreachable: check it, then retry",
        .after.as_secs()
    )]
    TimedOut { command: String, after: Duration },

    /// Something the provider waited for (a pod, a deletion, a log stream) did not happen in
    /// time; `reason` is what it was last waiting on, when known.
    #[error("{message}")]
    NotInTime {
        message: String,
        reason: Option<String>,
    },

    /// A command was stopped because the client that asked for it went away. `command` is the
    /// local command line when there is one.
    #[error(
        "{} was stopped because the client went away",
        .command.as_deref().map(|c| format!("`{c}`")).unwrap_or_else(|| "the command".to_string())
    )]
    ClientGone { command: Option<String> },

    /// A local command could not be started or waited for.
    #[error("`{command}` could not run: {why}")]
    CouldNotRun { command: String, why: String },

    /// A command ran and exited non-zero. `explanation` is the tail of its (redacted) stderr,
    /// else stdout; `field` names the cloud.yaml field to fix when the failure points at one.
    #[error("{what} failed (exit {code}): {explanation}")]
    CommandFailed {
        what: String,
        code: i32,
        explanation: String,
        field: Option<&'static str>,
    },

    /// A streamed command exited non-zero; its output already went to the client.
    #[error("{what} failed (exit {code}); its output is above")]
    StreamedCommandFailed { what: String, code: i32 },

    /// A deploy failed at its last step: `error` says why, `steps` what ran before.
    #[error("{error}")]
    DeployFailed {
        error: Box<ProviderError>,
        provider: &'static str,
        steps: Vec<DeployStep>,
    },

    /// The runner or its platform answered something the provider cannot use.
    #[error("{message}")]
    Failed {
        message: String,
        /// The platform's short reason (a Kubernetes status reason, a pod's waiting reason).
        reason: Option<String>,
    },

    /// No ssh connection could be opened to the runner's host.
    #[error(
        "cannot open an ssh connection to {target} (exit {code}): {why}. Check that `ssh -p {port} {destination} true` works without any prompt: the daemon needs a key file or agent (BatchMode) and the host in known_hosts"
    )]
    SshConnectFailed {
        target: String,
        host: String,
        port: u16,
        destination: String,
        code: i32,
        why: String,
    },

    /// The held ssh connection broke while a command ran (it may have completed).
    #[error(
        "the ssh connection to {target} was lost while a command ran ({said}); it may or may not have completed on the runner, so it was not retried: check the runner, then run it again"
    )]
    SshConnectionLost {
        target: String,
        host: String,
        said: String,
    },

    /// The held ssh connection ended before a streamed command started: it did not run.
    #[error(
        "the held ssh connection to {host} ended before `{remote}` started; it did not run: retry"
    )]
    SshEndedBeforeStart { host: String, remote: String },

    /// The ssh connection broke while a streamed command ran.
    #[error(
        "the ssh connection to {host} was lost while `{remote}` ran; check the host, then retry"
    )]
    SshLostWhileRunning { host: String, remote: String },

    /// The ssh server refused one more session on the held connection (its MaxSessions).
    #[error(
        "the ssh server {target} refused another session on the daemon's held connection ({said}); the command did not run and no second connection was opened. The daemon used {in_use} of the {sessions} sessions it allows itself (ssh.max_sessions: {max_sessions}); set ssh.max_sessions to the server's MaxSessions (sshd -T | grep maxsessions on the host), or end other clients of the connection (attach)"
    )]
    SshSessionRefused {
        target: String,
        host: String,
        said: String,
        in_use: usize,
        sessions: usize,
        max_sessions: u32,
    },

    /// Every ssh session the daemon allows itself on a connection stayed busy for the wait.
    #[error(
        "all {sessions} ssh sessions the daemon uses on its connection to {target} are busy ({observers} held by resident observers, {commands} by commands) and none came free within {}s; wait for long commands (logs --follow, exec) to end and try again, or raise ssh.max_sessions (now {max_sessions}) if the server's MaxSessions is higher",
        .waited.as_secs()
    )]
    SshSessionsBusy {
        target: String,
        sessions: usize,
        observers: usize,
        commands: usize,
        waited: Duration,
        max_sessions: u32,
    },

    /// The daemon is closing the ssh sessions to a host.
    #[error("the ssh sessions to {target} are closed")]
    SshSessionsClosed { target: String },

    /// The Kubernetes API server cannot be reached.
    #[error(
        "{what}: cannot reach the Kubernetes API server: {why}; check kubernetes.context and kubernetes.kubeconfig"
    )]
    KubernetesUnreachable { what: String, why: String },

    /// The Kubernetes client cannot be configured from kubernetes.kubeconfig / context.
    #[error("cannot configure the Kubernetes client: {why}")]
    KubernetesConfig { why: String },

    /// cloud.yaml does not say what this provider needs; `field` names what to fix.
    #[error("{message}")]
    InvalidConfig {
        field: &'static str,
        message: String,
    },

    /// The request's arguments cannot be carried out as given; `field` names the argument.
    #[error("{message}")]
    InvalidArgs {
        field: Option<&'static str>,
        message: String,
    },

    /// Secrets named in cloud.yaml (`file`) had no value from the client.
    #[error(
        "Missing required secrets: {}; export them in the shell that runs megaplan-cloudctl (they are listed under secrets: in {})",
        .missing.join(", "),
        .file.display()
    )]
    MissingSecrets { missing: Vec<String>, file: PathBuf },

    /// The Railway service named in cloud.yaml does not exist in the linked project.
    #[error(
        "Railway service '{service}' was not found after project link. Run this command from the deploy directory, then rerun deploy: railway add --service {service}"
    )]
    RailwayServiceMissing { service: String },

    /// A file or folder of the daemon's own could not be read or written; `action` says which
    /// ("cannot write /path").
    #[error("{action}: {why}")]
    LocalIo { action: String, why: String },

    /// The daemon's own setup cannot serve this provider (a socket path ssh cannot use, an
    /// unrendered deploy folder); the message says how to start it differently.
    #[error("{message}")]
    DaemonSetup { message: String },

    /// The deploy files could not be rendered from cloud.yaml (`crate::render`). Shown as its
    /// message, like every other variant, so `to_string()` is always the wire message.
    #[error("{0}")]
    Render(RenderError),
}

impl ProviderError {
    /// The wire error code this error is answered with.
    pub fn code(&self) -> ErrorCode {
        use ProviderError as E;
        match self {
            E::CliMissing { .. } | E::ComposeMissing => ErrorCode::ProviderUnavailable,
            E::KubernetesUnreachable { .. } | E::KubernetesConfig { .. } => {
                ErrorCode::ProviderUnavailable
            }
            E::DeployFolderMissing { .. } | E::InvalidConfig { .. } => ErrorCode::InvalidSpec,
            E::TimedOut { .. } | E::NotInTime { .. } => ErrorCode::DeadlineExceeded,
            E::ClientGone { .. } | E::LocalIo { .. } | E::DaemonSetup { .. } => ErrorCode::Internal,
            E::CouldNotRun { .. }
            | E::CommandFailed { .. }
            | E::StreamedCommandFailed { .. }
            | E::Failed { .. }
            | E::SshConnectFailed { .. }
            | E::SshConnectionLost { .. }
            | E::SshEndedBeforeStart { .. }
            | E::SshLostWhileRunning { .. }
            | E::SshSessionRefused { .. }
            | E::SshSessionsBusy { .. } => ErrorCode::ProviderFailed,
            E::SshSessionsClosed { .. } => ErrorCode::ShuttingDown,
            E::InvalidArgs { .. } => ErrorCode::InvalidArgs,
            E::MissingSecrets { .. } => ErrorCode::MissingSecrets,
            E::RailwayServiceMissing { .. } => ErrorCode::RailwayServiceMissing,
            E::DeployFailed { error, .. } => error.code(),
            E::Render(e) => e.code(),
        }
    }

    /// `body` with this error's `extra` fields, beside `error` and `message`.
    fn with_extra(&self, body: ErrorBody) -> ErrorBody {
        use ProviderError as E;
        match self {
            E::CliMissing { program, .. } => body.with("binary", program.as_str()),
            E::ComposeMissing => body.with("binary", "docker-compose"),
            E::DeployFolderMissing { dir } => body.with("deploy_dir", dir.as_str()),
            E::NotInTime { reason, .. } | E::Failed { reason, .. } => match reason {
                Some(r) => body.with("reason", r.as_str()),
                None => body,
            },
            E::CommandFailed { code, field, .. } => {
                let body = body.with("exit_code", *code);
                match field {
                    Some(f) => body.with("field", *f),
                    None => body,
                }
            }
            E::StreamedCommandFailed { code, .. } => body.with("exit_code", *code),
            E::SshConnectFailed { host, .. } | E::SshConnectionLost { host, .. } => {
                body.with("host", host.as_str())
            }
            E::SshSessionRefused { host, .. } => body
                .with("host", host.as_str())
                .with("field", "ssh.max_sessions"),
            E::SshSessionsBusy { .. } => body.with("field", "ssh.max_sessions"),
            E::KubernetesConfig { .. } => body.with("field", "kubernetes.kubeconfig"),
            E::InvalidConfig { field, .. } => body.with("field", *field),
            E::InvalidArgs { field, .. } => match field {
                Some(f) => body.with("field", *f),
                None => body,
            },
            E::MissingSecrets { missing, .. } => body.with("missing", missing.clone()),
            E::RailwayServiceMissing { service } => body.with("service", service.as_str()),
            E::TimedOut { .. }
            | E::ClientGone { .. }
            | E::CouldNotRun { .. }
            | E::SshEndedBeforeStart { .. }
            | E::SshLostWhileRunning { .. }
            | E::SshSessionsClosed { .. }
            | E::KubernetesUnreachable { .. }
            | E::LocalIo { .. }
            | E::DaemonSetup { .. }
            | E::DeployFailed { .. }
            | E::Render(_) => body,
        }
    }

    /// `provider_failed` with `message` and no further fields.
    pub fn failed(message: impl Into<String>) -> Self {
        ProviderError::Failed {
            message: message.into(),
            reason: None,
        }
    }

    /// `invalid_args` with `message`, naming no field.
    pub fn invalid_args(message: impl Into<String>) -> Self {
        ProviderError::InvalidArgs {
            field: None,
            message: message.into(),
        }
    }

    /// The CLI `program` is missing: `provider_unavailable` naming it and its install page.
    pub fn cli_missing(program: &str) -> Self {
        ProviderError::CliMissing {
            program: program.to_string(),
            install_page: super::common::install_page(program),
        }
    }
}

/// The one place a provider failure becomes a wire error: code, message and `extra` fields.
impl From<ProviderError> for ErrorBody {
    fn from(e: ProviderError) -> Self {
        match e {
            ProviderError::Render(e) => ErrorBody::from(e),
            ProviderError::DeployFailed {
                error,
                provider,
                steps,
            } => {
                let body = ErrorBody::from(*error);
                match serde_json::to_value(&steps) {
                    Ok(steps) => body.with("steps", steps).with("provider", provider),
                    Err(_) => body,
                }
            }
            e => e.with_extra(ErrorBody::new(e.code(), e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deploy_failure_keeps_its_cause_and_adds_the_steps() {
        let cause = ProviderError::CommandFailed {
            what: "docker compose up".into(),
            code: 3,
            explanation: "no space left".into(),
            field: None,
        };
        let e = ProviderError::DeployFailed {
            error: Box::new(cause),
            provider: "local",
            steps: Vec::new(),
        };
        assert_eq!(e.code(), ErrorCode::ProviderFailed);
        let body = ErrorBody::from(e);
        assert_eq!(
            body.message,
            "docker compose up failed (exit 3): no space left"
        );
        assert_eq!(body.extra["exit_code"], 3);
        assert_eq!(body.extra["provider"], "local");
        assert_eq!(body.extra["steps"], serde_json::json!([]));
    }

    #[test]
    fn a_render_error_passes_through_unchanged() {
        let inner = RenderError::BadBaseImage {
            spec_file: PathBuf::from("/p/cloud.yaml"),
            base: "a b".into(),
        };
        let body = ErrorBody::from(ProviderError::Render(inner.clone()));
        assert_eq!(body, ErrorBody::from(inner));
    }

    /// Each variant's wire error, byte for byte, as the provider files built it before this
    /// type existed (the api crate and the end-to-end tests pin these codes and fields).
    #[test]
    fn every_variant_keeps_its_wire_bytes() {
        use ErrorCode as C;
        let cases: Vec<(ProviderError, ErrorBody)> = vec![
            (
                ProviderError::cli_missing("docker"),
                ErrorBody::new(
                    C::ProviderUnavailable,
                    "Missing required CLI 'docker'. Install: https://docs.docker.com/get-docker/",
                )
                .with("binary", "docker"),
            ),
            (
                ProviderError::ComposeMissing,
                ErrorBody::new(
                    C::ProviderUnavailable,
                    "Missing required CLI 'docker-compose': this docker client has no compose plugin. Install the plugin or docker-compose: https://docs.docker.com/compose/install/",
                )
                .with("binary", "docker-compose"),
            ),
            (
                ProviderError::DeployFolderMissing { dir: "/d".into() },
                ErrorBody::new(
                    C::InvalidSpec,
                    "the deploy folder /d does not exist yet: run `megaplan-cloudctl build` first",
                )
                .with("deploy_dir", "/d"),
            ),
            (
                ProviderError::TimedOut {
                    command: "ssh h true".into(),
                    after: Duration::from_millis(7500),
                },
                ErrorBody::new(
                    C::DeadlineExceeded,
                    "`ssh h true` did not finish within 7s and was killed; the runner may be slow or unreachable: check it, then retry",
                ),
            ),
            (
                ProviderError::ClientGone {
                    command: Some("docker ps".into()),
                },
                ErrorBody::new(
                    C::Internal,
                    "`docker ps` was stopped because the client went away",
                ),
            ),
            (
                ProviderError::ClientGone { command: None },
                ErrorBody::new(
                    C::Internal,
                    "the command was stopped because the client went away",
                ),
            ),
            (
                ProviderError::CouldNotRun {
                    command: "x".into(),
                    why: "EPERM".into(),
                },
                ErrorBody::new(C::ProviderFailed, "`x` could not run: EPERM"),
            ),
            (
                ProviderError::CommandFailed {
                    what: "mkdir on h".into(),
                    code: 3,
                    explanation: "no".into(),
                    field: Some("ssh.remote_dir"),
                },
                ErrorBody::new(C::ProviderFailed, "mkdir on h failed (exit 3): no")
                    .with("exit_code", 3)
                    .with("field", "ssh.remote_dir"),
            ),
            (
                ProviderError::StreamedCommandFailed {
                    what: "docker build on h".into(),
                    code: 1,
                },
                ErrorBody::new(
                    C::ProviderFailed,
                    "docker build on h failed (exit 1); its output is above",
                )
                .with("exit_code", 1),
            ),
            (
                ProviderError::Failed {
                    message: "pod p will not become ready: ImagePullBackOff".into(),
                    reason: Some("ImagePullBackOff".into()),
                },
                ErrorBody::new(
                    C::ProviderFailed,
                    "pod p will not become ready: ImagePullBackOff",
                )
                .with("reason", "ImagePullBackOff"),
            ),
            (
                ProviderError::NotInTime {
                    message: "pod p was not ready within 9s: w".into(),
                    reason: Some("w".into()),
                },
                ErrorBody::new(C::DeadlineExceeded, "pod p was not ready within 9s: w")
                    .with("reason", "w"),
            ),
            (
                ProviderError::SshConnectFailed {
                    target: "root@h port 2".into(),
                    host: "h".into(),
                    port: 2,
                    destination: "root@h".into(),
                    code: 255,
                    why: "refused".into(),
                },
                ErrorBody::new(
                    C::ProviderFailed,
                    "cannot open an ssh connection to root@h port 2 (exit 255): refused. Check that `ssh -p 2 root@h true` works without any prompt: the daemon needs a key file or agent (BatchMode) and the host in known_hosts",
                )
                .with("host", "h"),
            ),
            (
                ProviderError::SshConnectionLost {
                    target: "h port 22".into(),
                    host: "h".into(),
                    said: "broken pipe".into(),
                },
                ErrorBody::new(
                    C::ProviderFailed,
                    "the ssh connection to h port 22 was lost while a command ran (broken pipe); it may or may not have completed on the runner, so it was not retried: check the runner, then run it again",
                )
                .with("host", "h"),
            ),
            (
                ProviderError::SshEndedBeforeStart {
                    host: "h".into(),
                    remote: "docker ps".into(),
                },
                ErrorBody::new(
                    C::ProviderFailed,
                    "the held ssh connection to h ended before `docker ps` started; it did not run: retry",
                ),
            ),
            (
                ProviderError::SshLostWhileRunning {
                    host: "h".into(),
                    remote: "docker ps".into(),
                },
                ErrorBody::new(
                    C::ProviderFailed,
                    "the ssh connection to h was lost while `docker ps` ran; check the host, then retry",
                ),
            ),
            (
                ProviderError::SshSessionRefused {
                    target: "h port 22".into(),
                    host: "h".into(),
                    said: "refused".into(),
                    in_use: 3,
                    sessions: 8,
                    max_sessions: 10,
                },
                ErrorBody::new(
                    C::ProviderFailed,
                    "the ssh server h port 22 refused another session on the daemon's held connection (refused); the command did not run and no second connection was opened. The daemon used 3 of the 8 sessions it allows itself (ssh.max_sessions: 10); set ssh.max_sessions to the server's MaxSessions (sshd -T | grep maxsessions on the host), or end other clients of the connection (attach)",
                )
                .with("host", "h")
                .with("field", "ssh.max_sessions"),
            ),
            (
                ProviderError::SshSessionsBusy {
                    target: "h port 22".into(),
                    sessions: 8,
                    observers: 6,
                    commands: 2,
                    waited: Duration::from_secs(30),
                    max_sessions: 10,
                },
                ErrorBody::new(
                    C::ProviderFailed,
                    "all 8 ssh sessions the daemon uses on its connection to h port 22 are busy (6 held by resident observers, 2 by commands) and none came free within 30s; wait for long commands (logs --follow, exec) to end and try again, or raise ssh.max_sessions (now 10) if the server's MaxSessions is higher",
                )
                .with("field", "ssh.max_sessions"),
            ),
            (
                ProviderError::SshSessionsClosed {
                    target: "h port 22".into(),
                },
                ErrorBody::new(C::ShuttingDown, "the ssh sessions to h port 22 are closed"),
            ),
            (
                ProviderError::KubernetesUnreachable {
                    what: "creating pod p".into(),
                    why: "connection refused".into(),
                },
                ErrorBody::new(
                    C::ProviderUnavailable,
                    "creating pod p: cannot reach the Kubernetes API server: connection refused; check kubernetes.context and kubernetes.kubeconfig",
                ),
            ),
            (
                ProviderError::KubernetesConfig { why: "no file".into() },
                ErrorBody::new(
                    C::ProviderUnavailable,
                    "cannot configure the Kubernetes client: no file",
                )
                .with("field", "kubernetes.kubeconfig"),
            ),
            (
                ProviderError::InvalidConfig {
                    field: "ssh.host",
                    message: "/p/cloud.yaml: add ssh.host".into(),
                },
                ErrorBody::new(C::InvalidSpec, "/p/cloud.yaml: add ssh.host")
                    .with("field", "ssh.host"),
            ),
            (
                super::super::common::since_invalid("x y"),
                ErrorBody::new(
                    C::InvalidArgs,
                    "--since \"x y\": give a duration such as 10m or 2h, or a time such as 2026-12-01T10:00:00Z",
                )
                .with("field", "since"),
            ),
            (
                ProviderError::invalid_args("drop -f"),
                ErrorBody::new(C::InvalidArgs, "drop -f"),
            ),
            (
                ProviderError::RailwayServiceMissing {
                    service: "agent".into(),
                },
                ErrorBody::new(
                    C::RailwayServiceMissing,
                    "Railway service 'agent' was not found after project link. Run this command from the deploy directory, then rerun deploy: railway add --service agent",
                )
                .with("service", "agent"),
            ),
            (
                ProviderError::LocalIo {
                    action: "cannot write /d/.env".into(),
                    why: "disk full".into(),
                },
                ErrorBody::new(C::Internal, "cannot write /d/.env: disk full"),
            ),
            (
                ProviderError::DaemonSetup {
                    message: "the deploy dir /d is empty; render it before build".into(),
                },
                ErrorBody::new(
                    C::Internal,
                    "the deploy dir /d is empty; render it before build",
                ),
            ),
        ];
        crate::cloud_yaml::error::assert_keeps_wire_bytes(cases, ProviderError::code);
    }

    #[test]
    fn the_missing_secrets_answer_lists_the_names_and_the_file() {
        let body = ErrorBody::from(ProviderError::MissingSecrets {
            missing: vec!["A".into(), "B".into()],
            file: PathBuf::from("/p/cloud.yaml"),
        });
        assert_eq!(body.error, ErrorCode::MissingSecrets);
        assert_eq!(
            body.message,
            "Missing required secrets: A, B; export them in the shell that runs megaplan-cloudctl (they are listed under secrets: in /p/cloud.yaml)"
        );
        assert_eq!(body.extra["missing"], serde_json::json!(["A", "B"]));
    }
}
