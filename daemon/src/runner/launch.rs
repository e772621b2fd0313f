//! The scripts of `chain`, `bootstrap`, `chains` and the plain core commands: checkout, the
//! chain preflight (collision check first), the chain start, the session listing.

use super::layout::{
    CHAIN_SESSION, EXIT_LIVE_RUNNER, EXIT_OTHER_CHAIN, SESSION_MARKER_DIR, marker_file,
};
use super::mutation::session_marker_command;
use super::observe::python_prelude;
use super::python::{driver_check_py, driver_wait_py, marker_digest_py, remove_state_py};
use crate::cloud_yaml::CloudSpec;
use crate::shell::quote;
use std::path::Path;

/// Shell that clones the repo and every extra repo when missing (idempotent).
pub fn checkout_script(spec: &CloudSpec) -> String {
    let mut s = String::from(
        "clone_if_missing() { \
           if [ -d \"$3/.git\" ]; then return 0; fi; \
           mkdir -p \"$3\" && git clone --branch \"$2\" -- \"$1\" \"$3\"; \
         }",
    );
    s.push_str(&format!(
        "; clone_if_missing {} {} {}",
        quote(&spec.repo.url),
        quote(&spec.repo.branch),
        quote(&spec.repo.workspace)
    ));
    for r in &spec.extra_repos {
        s.push_str(&format!(
            " && clone_if_missing {} {} {}",
            quote(&r.url),
            quote(&r.branch),
            quote(&r.path)
        ));
    }
    s
}

/// The preflight: collision check first, then checkout, then (with --fresh) state removal.
/// Prints `MEGAPLAN_ALREADY_RUNNING` when the live session already runs this chain.
pub fn preflight_script(
    spec: &CloudSpec,
    launcher: &str,
    session: &str,
    digest: &str,
    remote_spec: &str,
    fresh: bool,
) -> String {
    let marker = marker_file(session);
    let mut s = format!(
        "{prelude}; s={s}; m={m}; d={d}; \
         if tmux has-session -t \"=$s\" 2>/dev/null; then \
           running=$(\"$py\" -c {digest} \"$m\" 2>/dev/null); \
           if [ \"$running\" = \"$d\" ]; then echo MEGAPLAN_ALREADY_RUNNING; exit 0; fi; \
           echo \"tmux session $s is already running a different chain (marker $m); refusing to disturb it\" >&2; exit {code}; \
         fi; \
         if [ -e {spec_q} ]; then \"$py\" -c {drivers} {spec_q} {ws} {launcher_q} || exit {driven}; fi; \
         {checkout}",
        prelude = python_prelude(launcher),
        s = quote(session),
        m = quote(&marker),
        d = quote(digest),
        digest = quote(&marker_digest_py()),
        code = EXIT_OTHER_CHAIN,
        spec_q = quote(remote_spec),
        drivers = quote(&driver_check_py()),
        ws = quote(&spec.repo.workspace),
        launcher_q = quote(launcher),
        driven = EXIT_LIVE_RUNNER,
        checkout = checkout_script(spec),
    );
    if fresh {
        s.push_str(&format!(
            " && \"$py\" -c {} {}",
            quote(&remove_state_py()),
            quote(remote_spec)
        ));
    }
    s.push_str(" && echo MEGAPLAN_PREFLIGHT_OK");
    s
}

/// Write the session marker (first, so a failed start cannot leave a session without one), start
/// the chain in tmux, and report whether the session lives. The start is verified by polling
/// (`drivers.py` `wait_main`: the driver is visible, or the session is gone), never by a fixed
/// sleep.
pub fn start_script(
    spec: &CloudSpec,
    launcher: &str,
    session: &str,
    remote_spec: &str,
    log_path: &str,
    digest: &str,
    no_git_refresh: bool,
) -> String {
    let ws = &spec.repo.workspace;
    let mut inner = format!(
        "MEGAPLAN_TRUSTED_CONTAINER=1 {} chain start --spec {}",
        crate::cloud_yaml::launcher_command(launcher),
        quote(remote_spec)
    );
    if no_git_refresh {
        inner.push_str(" --no-git-refresh");
    }
    inner.push_str(&format!(" >> {} 2>&1", quote(log_path)));
    let log_dir = Path::new(log_path)
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| ws.clone());
    let marker_cmd = session_marker_command(
        &marker_file(session),
        session,
        ws,
        remote_spec,
        digest,
        "chain",
        "launch",
    );
    format!(
        "{prelude}; mkdir -p {log_dir} {mdir} && cd {ws} && \
         {marker_cmd} && \
         tmux new-session -d -s {s} -c {ws} {inner} && \
         {{ \"$py\" -c {wait} {spec_q} {ws} {launcher_q} {s} || true; }} && \
         if tmux has-session -t ={s} 2>/dev/null; then echo MEGAPLAN_SESSION_ALIVE; \
         else echo MEGAPLAN_SESSION_EXITED; tail -n 20 {log} 2>/dev/null; fi",
        prelude = python_prelude(launcher),
        log_dir = quote(&log_dir),
        mdir = quote(SESSION_MARKER_DIR),
        ws = quote(ws),
        s = quote(session),
        inner = quote(&inner),
        wait = quote(&driver_wait_py()),
        spec_q = quote(remote_spec),
        launcher_q = quote(launcher),
        log = quote(log_path),
    )
}

/// Lists `megaplan-chain*` tmux sessions and session markers in one remote round trip.
pub fn chains_script() -> String {
    format!(
        "d={dir}; \
         tmux ls -F '#{{session_name}}' 2>/dev/null | while IFS= read -r s; do \
           case \"$s\" in {prefix}*) printf 'LIVE\\t%s\\n' \"$s\";; esac; \
         done; \
         for f in \"$d\"/*.json; do [ -f \"$f\" ] || continue; \
           printf 'MARKER\\t%s\\t' \"$(basename \"$f\" .json)\"; tr -d '\\n' < \"$f\"; printf '\\n'; \
         done",
        dir = quote(SESSION_MARKER_DIR),
        prefix = quote(CHAIN_SESSION)
    )
}

/// `cd <workspace> && <launcher> <words...> [--plan P]`: one core command in the workspace
/// (`status`, a `resume` step).
pub fn core_command(workspace: &str, launcher: &str, words: &[&str], plan: Option<&str>) -> String {
    let mut cmd = format!(
        "cd {} && {}",
        quote(workspace),
        crate::cloud_yaml::launcher_command(launcher)
    );
    for w in words {
        cmd.push(' ');
        cmd.push_str(&quote(w));
    }
    if let Some(p) = plan {
        cmd.push_str(&format!(" --plan {}", quote(p)));
    }
    cmd
}

/// `bootstrap`'s core command: `cd <ws> && <launcher> init --project-dir <ws> --idea-file <idea>
/// --auto-start --robustness <r> [--name N]`.
pub fn init_command(
    workspace: &str,
    launcher: &str,
    idea_file: &str,
    robustness: &str,
    name: Option<&str>,
) -> String {
    let mut cmd = format!(
        "cd {ws} && {launcher} init --project-dir {ws} --idea-file {idea} --auto-start --robustness {rob}",
        launcher = crate::cloud_yaml::launcher_command(launcher),
        ws = quote(workspace),
        idea = quote(idea_file),
        rob = quote(robustness),
    );
    if let Some(n) = name {
        cmd.push_str(&format!(" --name {}", quote(n)));
    }
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> CloudSpec {
        crate::cloud_yaml::parse_bytes(
            b"repo: {url: \"/srv/it's repo.git\", workspace: /w/app}\nextra_repos: [{url: /srv/lib.git, path: '/w/my lib'}]\n",
            Path::new("/p/cloud.yaml"),
        )
        .unwrap()
    }

    #[test]
    fn scripts_are_valid_shell_and_quote_hostile_values() {
        let s = spec();
        for script in [
            checkout_script(&s),
            preflight_script(
                &s,
                "python -m m",
                "megaplan-chain",
                "abc",
                "/w/app/chain.yaml",
                true,
            ),
            start_script(
                &s,
                "python -m m",
                "megaplan-chain",
                "/w/app/chain.yaml",
                "/w/app/.megaplan/cloud-chain.log",
                "abc",
                true,
            ),
        ] {
            let out = std::process::Command::new("bash")
                .arg("-n")
                .arg("-c")
                .arg(&script)
                .output()
                .unwrap();
            assert!(out.status.success(), "bash -n failed: {script}\n{out:?}");
        }
        assert!(checkout_script(&s).contains("'/srv/it'\\''s repo.git'"));
        assert!(checkout_script(&s).contains("'/w/my lib'"));
    }

    #[test]
    fn checkout_clones_only_when_missing() {
        let tmp = tempfile::tempdir().unwrap();
        let origin = tmp.path().join("origin");
        let run = |args: &[&str], dir: &Path| {
            let o = std::process::Command::new("git")
                .args(args)
                .current_dir(dir)
                .output()
                .unwrap();
            assert!(o.status.success(), "{o:?}");
        };
        std::fs::create_dir(&origin).unwrap();
        run(&["init", "-q", "-b", "main"], &origin);
        std::fs::write(origin.join("README"), "x").unwrap();
        run(
            &["-c", "user.email=a@b", "-c", "user.name=a", "add", "."],
            &origin,
        );
        run(
            &[
                "-c",
                "user.email=a@b",
                "-c",
                "user.name=a",
                "commit",
                "-qm",
                "init",
            ],
            &origin,
        );
        let ws = tmp.path().join("ws space");
        let text = format!(
            "repo: {{url: '{}', workspace: '{}'}}\n",
            origin.display(),
            ws.display()
        );
        let s =
            crate::cloud_yaml::parse_bytes(text.as_bytes(), Path::new("/p/cloud.yaml")).unwrap();
        for _ in 0..2 {
            let o = std::process::Command::new("bash")
                .arg("-c")
                .arg(checkout_script(&s))
                .output()
                .unwrap();
            assert!(o.status.success(), "{o:?}");
        }
        assert!(ws.join("README").exists());
    }
}
