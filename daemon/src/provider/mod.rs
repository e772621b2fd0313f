//! Providers: one trait, one file per transport. Command construction (argv and remote shell
//! strings) is pure and unit-tested; execution goes through [`crate::process`].
//!
//! Every provider returns [`ProviderError`] (`error.rs`), whose conversion to the wire
//! `ErrorBody` is the one place choosing codes and fields:
//! - a missing CLI is `provider_unavailable` naming the binary and its install page;
//! - a step that exits non-zero is `provider_failed`, quoting the step's redacted stderr (or its
//!   stdout when stderr is empty: a refused remote command often explains itself there);
//! - a deadline is `deadline_exceeded`.

pub mod budget;
pub mod common;
pub mod error;
pub mod kubernetes;
pub mod kubernetes_manifest;
pub mod local;
pub mod railway;
pub mod resident;
pub mod ssh;
pub mod ssh_master;
pub mod transport;

pub use common::*;

use crate::cloud_yaml::ProviderKind;

/// The provider chosen by cloud.yaml.
#[derive(Debug)]
pub enum AnyProvider {
    Ssh(ssh::SshProvider),
    Local(local::LocalProvider),
    Railway(railway::RailwayProvider),
    Kubernetes(kubernetes::KubernetesProvider),
}

macro_rules! delegate {
    ($self:ident, $p:ident => $e:expr) => {
        match $self {
            AnyProvider::Ssh($p) => $e,
            AnyProvider::Local($p) => $e,
            AnyProvider::Railway($p) => $e,
            AnyProvider::Kubernetes($p) => $e,
        }
    };
}

impl Provider for AnyProvider {
    fn name(&self) -> &'static str {
        delegate!(self, p => p.name())
    }
    fn has_exec(&self) -> bool {
        delegate!(self, p => p.has_exec())
    }
    fn stdin_is_private(&self) -> bool {
        delegate!(self, p => p.stdin_is_private())
    }
    async fn build(&self, out: &OutTx) -> Result<(), ProviderError> {
        delegate!(self, p => p.build(out).await)
    }
    async fn deploy(&self, out: &OutTx) -> Result<DeployReport, ProviderError> {
        delegate!(self, p => p.deploy(out).await)
    }
    async fn exec(
        &self,
        script: &str,
        stdin: Option<Vec<u8>>,
    ) -> Result<ExecResult, ProviderError> {
        delegate!(self, p => p.exec(script, stdin).await)
    }
    async fn observe(&self, script: &str) -> Result<ExecResult, ProviderError> {
        delegate!(self, p => p.observe(script).await)
    }
    async fn resident_command(
        &self,
        script: &str,
    ) -> Result<Option<resident::Launch>, ProviderError> {
        delegate!(self, p => p.resident_command(script).await)
    }
    async fn exec_streaming(&self, script: &str, out: &OutTx) -> Result<i32, ProviderError> {
        delegate!(self, p => p.exec_streaming(script, out).await)
    }
    async fn upload(&self, remote_path: &str, content: &[u8]) -> Result<(), ProviderError> {
        delegate!(self, p => p.upload(remote_path, content).await)
    }
    async fn read(&self, remote_path: &str) -> Result<Vec<u8>, ProviderError> {
        delegate!(self, p => p.read(remote_path).await)
    }
    fn attach_argv(&self, session: Option<&str>) -> Result<Vec<String>, ProviderError> {
        delegate!(self, p => p.attach_argv(session))
    }
    async fn logs(
        &self,
        follow: bool,
        window: &LogWindow,
        out: &OutTx,
    ) -> Result<i32, ProviderError> {
        delegate!(self, p => p.logs(follow, window, out).await)
    }
    async fn down(&self, out: &OutTx) -> Result<(), ProviderError> {
        delegate!(self, p => p.down(out).await)
    }
    async fn destroy(&self, out: &OutTx) -> Result<(), ProviderError> {
        delegate!(self, p => p.destroy(out).await)
    }
}

/// The provider for `ctx.spec`, after checking that its CLI is installed.
pub fn for_spec(
    ctx: ProviderCtx,
    sessions: &ssh_master::SshSessions,
) -> Result<AnyProvider, ProviderError> {
    match ctx.spec.provider {
        ProviderKind::Ssh => {
            require_cli("ssh")?;
            Ok(AnyProvider::Ssh(ssh::SshProvider::new(
                ctx,
                sessions.clone(),
            )?))
        }
        ProviderKind::Local => {
            require_cli("docker")?;
            Ok(AnyProvider::Local(local::LocalProvider::new(ctx)))
        }
        ProviderKind::Railway => {
            let p = railway::RailwayProvider::new(ctx).with_sessions(sessions.clone());
            require_cli(&p.program)?;
            Ok(AnyProvider::Railway(p))
        }
        ProviderKind::Kubernetes => Ok(AnyProvider::Kubernetes(
            kubernetes::KubernetesProvider::new(ctx)?,
        )),
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use crate::cloud_yaml::{self, CloudSpec};
    use std::path::Path;

    /// A spec parsed from YAML text, as the loader would produce it.
    pub fn spec(yaml: &str) -> CloudSpec {
        cloud_yaml::parse_bytes(yaml.as_bytes(), Path::new("/home/op/proj/cloud.yaml"))
            .unwrap_or_else(|e| panic!("test spec must parse: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::{Cmd, Output, RunError};
    use crate::redact::Redactor;
    use megaplan_cloud_api::{ErrorBody, ErrorCode};
    use std::collections::BTreeMap;
    use std::path::PathBuf;
    use std::sync::Arc;
    use std::time::Duration;
    use test_support::spec;

    #[test]
    fn debug_output_never_shows_secret_values() {
        let mut secrets = BTreeMap::new();
        secrets.insert("A_KEY".to_string(), "value-that-must-not-leak".to_string());
        let s = spec("provider: local\nrepo: {url: u}\nsecrets: [A_KEY]\n");
        let ctx = ProviderCtx {
            redactor: Redactor::new(&s.secrets, &secrets),
            spec: Arc::new(s),
            deploy_dir: PathBuf::from("/d"),
            secrets,
            deadline: Duration::from_secs(1),
        };
        let debug = format!("{:?}", local::LocalProvider::new(ctx));
        assert!(debug.contains("A_KEY"), "{debug}");
        assert!(!debug.contains("value-that-must-not-leak"), "{debug}");
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let text: String = (1..=30).map(|i| format!("l{i}\n")).collect();
        let t = tail(&text, 3);
        assert_eq!(t, "l28\nl29\nl30");
        assert_eq!(tail("", 3), "");
    }

    #[test]
    fn explanation_prefers_stderr_then_stdout() {
        assert_eq!(explanation("out", "err"), "err");
        assert_eq!(explanation("refused: busy\n", " \n"), "refused: busy");
        assert_eq!(explanation("", ""), "(no output)");
    }

    #[test]
    fn step_failed_reports_redacted_stdout_when_stderr_is_empty() {
        let mut values = BTreeMap::new();
        values.insert("TOK".to_string(), "verysecretvalue".to_string());
        let r = Redactor::new(&["TOK".to_string()], &values);
        let out = Output {
            code: 17,
            stdout: b"session busy; token verysecretvalue\n".to_vec(),
            stderr: Vec::new(),
        };
        let e = ErrorBody::from(step_failed("chain start", &out, &r));
        assert_eq!(e.error, ErrorCode::ProviderFailed);
        assert_eq!(
            e.message,
            "chain start failed (exit 17): session busy; token ***REDACTED***"
        );
        assert_eq!(e.extra["exit_code"], 17);
    }

    #[test]
    fn missing_secrets_names_each_missing_one() {
        let s = spec("repo: {url: u}\nsecrets: [A_KEY, B_KEY, C_KEY]\n");
        let mut values = BTreeMap::new();
        values.insert("A_KEY".to_string(), "x".to_string());
        values.insert("C_KEY".to_string(), String::new());
        let e = ErrorBody::from(check_secrets(&s, &values).unwrap_err());
        assert_eq!(e.error, ErrorCode::MissingSecrets);
        assert!(
            e.message
                .starts_with("Missing required secrets: B_KEY, C_KEY;"),
            "{}",
            e.message
        );
        values.insert("B_KEY".to_string(), "y".to_string());
        values.insert("C_KEY".to_string(), "z".to_string());
        assert!(check_secrets(&s, &values).is_ok());
    }

    #[test]
    fn env_file_has_port_then_secrets_in_order() {
        let s = spec("repo: {url: u}\nsecrets: [Z_KEY, A_KEY]\nresources: {port: 9000}\n");
        let mut values = BTreeMap::new();
        values.insert("A_KEY".to_string(), "a b=c'\"$x".to_string());
        values.insert("Z_KEY".to_string(), "z".to_string());
        assert_eq!(
            env_file_content(&s, &values).unwrap(),
            "PORT=9000\nZ_KEY=z\nA_KEY=a b=c'\"$x\n"
        );
        values.insert("A_KEY".to_string(), "two\nlines".to_string());
        assert_eq!(
            env_file_content(&s, &values).unwrap_err().code(),
            ErrorCode::InvalidArgs
        );
    }

    #[test]
    fn upload_script_quotes_parent_and_dest() {
        assert_eq!(
            upload_script("/workspace/app/idea.txt").unwrap(),
            "mkdir -p /workspace/app && base64 -d > /workspace/app/idea.txt"
        );
        assert_eq!(
            upload_script("/w s/it's $(x)/f`y`").unwrap(),
            "mkdir -p '/w s/it'\\''s $(x)' && base64 -d > '/w s/it'\\''s $(x)/f`y`'"
        );
        assert_eq!(
            upload_script("/top").unwrap(),
            "mkdir -p / && base64 -d > /top"
        );
        assert_eq!(
            upload_script("rel").unwrap(),
            "mkdir -p . && base64 -d > rel"
        );
        assert_eq!(
            upload_script("/").unwrap_err().code(),
            ErrorCode::InvalidArgs
        );
        assert_eq!(
            upload_script("").unwrap_err().code(),
            ErrorCode::InvalidArgs
        );
    }

    #[test]
    fn base64_round_trips_every_byte() {
        let bytes: Vec<u8> = (0..=255u8).collect();
        let text = base64_lines(&bytes);
        assert!(text.lines().all(|l| l.len() <= 76));
        assert!(text.ends_with('\n'));
        assert_eq!(decode_base64_text(text.as_bytes()).unwrap(), bytes);
        assert_eq!(base64_lines(b""), "");
    }

    #[test]
    fn upload_script_writes_the_exact_bytes_through_sh() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("a dir/with 'quote'/$(x)/file\nname");
        let dest = dest.to_string_lossy().into_owned();
        let bytes: Vec<u8> = (0..=255u8).collect();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(upload_script(&dest).unwrap())
            .stdin(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin
                    .take()
                    .unwrap()
                    .write_all(base64_lines(&bytes).as_bytes())?;
                c.wait()
            })
            .unwrap();
        assert!(out.success());
        assert_eq!(std::fs::read(&dest).unwrap(), bytes);
    }

    #[test]
    fn install_pages_per_binary() {
        assert_eq!(
            unavailable("railway").to_string(),
            "Missing required CLI 'railway'. Install: https://docs.railway.app/develop/cli"
        );
        assert_eq!(
            unavailable("docker").to_string(),
            "Missing required CLI 'docker'. Install: https://docs.docker.com/get-docker/"
        );
        assert_eq!(
            unavailable("ssh").to_string(),
            "Missing required CLI 'ssh'. Install: https://www.openssh.com/"
        );
        assert_eq!(unavailable("ssh").code(), ErrorCode::ProviderUnavailable);
    }

    #[test]
    fn run_errors_map_to_codes() {
        let cmd = Cmd::new("ssh").arg("host");
        assert_eq!(
            run_error(
                &cmd,
                RunError::Timeout {
                    after: Duration::from_secs(7)
                }
            )
            .code(),
            ErrorCode::DeadlineExceeded
        );
        assert_eq!(
            run_error(
                &cmd,
                RunError::NotFound {
                    program: "ssh".into()
                }
            )
            .code(),
            ErrorCode::ProviderUnavailable
        );
    }
}
