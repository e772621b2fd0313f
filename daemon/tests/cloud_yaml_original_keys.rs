//! cloud.yaml keys the original Python tool reads (`arnold_pipelines/megaplan/cloud/spec.py`,
//! `load_spec`): `extra_repos[].workspace` is honoured; the keys megaplan-cloudd does not use
//! each get a warning naming the key and what to do instead.

use megaplan_cloudd::cloud_yaml::{ORIGINAL_ONLY_KEYS, parse_bytes};
use std::path::Path;

const BASE: &str =
    "provider: ssh\nrepo: {url: https://x/app.git, workspace: /workspace/app}\nssh: {host: box}\n";

fn load(extra: &str) -> Result<megaplan_cloudd::cloud_yaml::CloudSpec, String> {
    parse_bytes(
        format!("{BASE}{extra}").as_bytes(),
        Path::new("/p/cloud.yaml"),
    )
    .map_err(|e| e.to_string())
}

#[test]
fn extra_repos_workspace_is_where_the_repo_is_cloned() {
    // The original's form: every extra repo names its workspace.
    let s = load(
        "extra_repos:\n  - url: https://x/worker.git\n    branch: dev\n    workspace: /srv/worker\n  - {url: https://x/agent.git, workspace: /workspace/agent}\n",
    )
    .unwrap();
    assert_eq!(s.extra_repos[0].path, "/srv/worker");
    assert_eq!(s.extra_repos[0].branch, "dev");
    assert_eq!(s.extra_repos[1].path, "/workspace/agent");
    assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    // Ours (`path`) still works; both agreeing is fine; disagreeing is an error naming the field.
    let s =
        load("extra_repos: [{url: https://x/w.git, path: /srv/w, workspace: /srv/w}]\n").unwrap();
    assert_eq!(s.extra_repos[0].path, "/srv/w");
    let e = load("extra_repos: [{url: https://x/w.git, path: /srv/a, workspace: /srv/b}]\n")
        .unwrap_err();
    assert!(e.contains("extra_repos[0].workspace"), "{e}");
    // A relative workspace is refused like any remote path.
    let e = load("extra_repos: [{url: https://x/w.git, workspace: srv/w}]\n").unwrap_err();
    assert!(e.contains("extra_repos[0].workspace"), "{e}");
}

#[test]
fn colliding_workspaces_are_refused_as_the_original_refuses_them() {
    let e = load("extra_repos: [{url: https://x/w.git, workspace: /workspace/app}]\n").unwrap_err();
    assert!(e.contains("extra_repos[0].workspace"), "{e}");
    let e = load(
        "extra_repos: [{url: https://x/a.git, workspace: /w/x}, {url: https://x/b.git, workspace: /w/x/}]\n",
    )
    .unwrap_err();
    assert!(e.contains("extra_repos[1].workspace"), "{e}");
}

#[test]
fn every_original_only_key_is_a_warning_saying_what_to_do() {
    let yaml = [
        ("chain_session", "chain_session: my-slot\n"),
        ("chain.chain_session", "chain: {chain_session: my-slot}\n"),
        ("driver", "driver: {max_stall_iterations: 3}\n"),
        (
            "megaplan.repo",
            "megaplan: {repo: https://github.com/x/arnold.git}\n",
        ),
        (
            "megaplan.install_spec",
            "megaplan: {install_spec: 'arnold[agent]'}\n",
        ),
        (
            "megaplan.src_path",
            "megaplan: {src_path: /workspace/arnold}\n",
        ),
        (
            "ssh.workspace_dir",
            "ssh: {host: box, workspace_dir: /opt/w}\n",
        ),
        ("ssh.cache_dir", "ssh: {host: box, cache_dir: /opt/c}\n"),
    ];
    assert_eq!(yaml.len(), ORIGINAL_ONLY_KEYS.len());
    for (key, text) in yaml {
        // `ssh:` replaces the base's ssh section: parse the pieces without it.
        let doc = if text.starts_with("ssh:") {
            format!("provider: ssh\nrepo: {{url: https://x/app.git}}\n{text}")
        } else {
            format!("{BASE}{text}")
        };
        let s = parse_bytes(doc.as_bytes(), Path::new("/p/cloud.yaml")).unwrap();
        assert_eq!(s.warnings.len(), 1, "{key}: {:?}", s.warnings);
        let w = &s.warnings[0];
        assert!(w.starts_with(&format!("{key} in /p/cloud.yaml")), "{w}");
        assert!(w.contains("Python cloud tool only"), "{w}");
        let advice = ORIGINAL_ONLY_KEYS
            .iter()
            .find(|(k, _)| *k == key)
            .unwrap()
            .1;
        assert!(w.ends_with(advice), "{w}");
    }
}
