//! How a provider reaches its runner, and the runner operations built on that once for every
//! provider: `exec`, `observe`, `upload` and `read`. A transport only says how one runner
//! command is sent (ssh through the held master into `docker exec`, `docker compose exec`,
//! `railway ssh`); checking the exit, redacting and naming the failure are written here.

use super::common::{ExecResult, base64_lines, exec_result, step_failed, upload_script};
use super::error::ProviderError;
use crate::process::Output;
use crate::redact::Redactor;

/// One way of sending commands into a runner.
#[allow(async_fn_in_trait)]
pub trait Transport {
    /// One runner command as this transport sends it (argv words, a remote string, stdin).
    type Request;

    /// Redaction of what the runner prints.
    fn redactor(&self) -> &Redactor;

    /// Send one command and capture its raw output. `retry_safe`: the command has no side
    /// effects, so a transport that lost its connection may reconnect and send it again.
    async fn send(&self, req: Self::Request, retry_safe: bool) -> Result<Output, ProviderError>;

    /// `bash -lc <script>` in the runner, bounded there by the command deadline, with `stdin`.
    fn exec_request(&self, script: &str, stdin: Option<Vec<u8>>) -> Self::Request;

    /// The commands that write `content` to `remote_path` (parents created), in order. By
    /// default one: [`upload_script`] reading the content as base64 on stdin.
    fn upload_requests(
        &self,
        remote_path: &str,
        content: &[u8],
    ) -> Result<Vec<Self::Request>, ProviderError> {
        let script = upload_script(remote_path)?;
        Ok(vec![self.exec_request(
            &script,
            Some(base64_lines(content).into_bytes()),
        )])
    }

    /// The command whose stdout carries the bytes of `remote_path`.
    fn read_request(&self, remote_path: &str) -> Self::Request;

    /// The file's bytes from a successful read's stdout (unchanged unless the transport had
    /// to encode them).
    fn decode_read(&self, _remote_path: &str, stdout: Vec<u8>) -> Result<Vec<u8>, ProviderError> {
        Ok(stdout)
    }
}

/// [`crate::provider::Provider::exec`] over `t`: a non-zero exit is a result, not an error.
pub async fn exec<T: Transport>(
    t: &T,
    script: &str,
    stdin: Option<Vec<u8>>,
) -> Result<ExecResult, ProviderError> {
    let o = t.send(t.exec_request(script, stdin), false).await?;
    Ok(exec_result(&o, t.redactor()))
}

/// [`crate::provider::Provider::observe`] over `t`: [`exec`] of a script without side effects.
pub async fn observe<T: Transport>(t: &T, script: &str) -> Result<ExecResult, ProviderError> {
    let o = t.send(t.exec_request(script, None), true).await?;
    Ok(exec_result(&o, t.redactor()))
}

/// [`crate::provider::Provider::upload`] over `t`; the first command that fails ends it.
pub async fn upload<T: Transport>(
    t: &T,
    remote_path: &str,
    content: &[u8],
) -> Result<(), ProviderError> {
    for req in t.upload_requests(remote_path, content)? {
        let o = t.send(req, false).await?;
        if o.code != 0 {
            return Err(step_failed(
                &format!("upload to {remote_path} in the runner"),
                &o,
                t.redactor(),
            ));
        }
    }
    Ok(())
}

/// [`crate::provider::Provider::read`] over `t`: the exact bytes, not redacted.
pub async fn read<T: Transport>(t: &T, remote_path: &str) -> Result<Vec<u8>, ProviderError> {
    let o = t.send(t.read_request(remote_path), true).await?;
    if o.code != 0 {
        return Err(step_failed(
            &format!("reading {remote_path} in the runner"),
            &o,
            t.redactor(),
        ));
    }
    t.decode_read(remote_path, o.stdout)
}
