//! Dynamic shell completion (`clap_complete::CompleteEnv`): the shell asks this binary for
//! candidates on every TAB, so flags complete past the first word and a registration argument
//! completes to the keys the daemon holds (clap's static bash script could do neither).

use clap_complete::CompletionCandidate;
use megaplan_cloud_api::paths;
use megaplan_cloud_api::routes;
use megaplan_cloud_api::wire::Registration;
use megaplan_cloudctl::client::BlockingClient;
use std::ffi::OsStr;

/// The registration keys starting with what was typed, each with its cloud.yaml as help. No
/// daemon, no candidates: a completion never prints an error into the command line.
pub fn registration_keys(current: &OsStr) -> Vec<CompletionCandidate> {
    let typed = current.to_string_lossy().to_ascii_lowercase();
    let (socket, _) = paths::resolve_socket(None);
    let Ok(client) = BlockingClient::new(socket) else {
        return Vec::new();
    };
    let regs: Vec<Registration> = client
        .typed(hyper::Method::GET, routes::CLOUDS, None)
        .unwrap_or_default();
    regs.into_iter()
        .filter(|r| r.key.starts_with(&typed))
        .map(|r| CompletionCandidate::new(r.key).help(Some(r.cloud_yaml.into())))
        .collect()
}

/// `completions <shell>`: the shell code that asks this binary (`COMPLETE=<shell>
/// megaplan-cloudctl`), written by a child run of this same binary, which is how CompleteEnv
/// writes it.
pub fn write_registration(shell: &str) -> Result<i32, String> {
    let me = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let status = std::process::Command::new(&me)
        .env("COMPLETE", shell)
        .status()
        .map_err(|e| format!("cannot run {}: {e}", me.display()))?;
    Ok(status.code().unwrap_or(1))
}
