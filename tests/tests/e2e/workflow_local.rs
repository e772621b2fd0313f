//! The chain workflow over the local provider: build and deploy a Compose runner from a fixture
//! Dockerfile (FROM the bench image, with the rendered entrypoint), then launch a chain and
//! follow it with status --chain, all through the daemon.

use megaplan_cloud_api::output::{Deployed, Destroyed};
use megaplan_cloud_e2e::rig::{Run, write_chain};
use megaplan_cloud_e2e::{Daemon, bench, unique_suffix, wait_until};
use std::process::Command;
use std::time::Duration;

struct ComposeCleanup {
    project: String,
    file: std::path::PathBuf,
}

impl Drop for ComposeCleanup {
    fn drop(&mut self) {
        let _ = Command::new("docker-compose")
            .arg("-p")
            .arg(&self.project)
            .arg("-f")
            .arg(&self.file)
            .args(["down", "--volumes", "--remove-orphans", "--rmi", "local"])
            .output();
    }
}

#[test]
fn build_deploy_chain_and_status_over_local_compose() {
    let Some(b) = bench() else { return };
    let d = Daemon::start(&[], &[]);
    let project = d.dir.join("project");
    std::fs::create_dir_all(&project).unwrap();
    let name = format!(
        "mpwf{}",
        unique_suffix()
            .to_lowercase()
            .replace(|c: char| !c.is_ascii_alphanumeric(), "")
    );
    std::fs::write(
        project.join("Dockerfile.fixture"),
        format!(
            "FROM {}\nCOPY entrypoint.sh health_server.py /usr/local/bin/\nRUN chmod 0755 /usr/local/bin/entrypoint.sh\nCMD [\"/usr/local/bin/entrypoint.sh\"]\n",
            b.image
        ),
    )
    .unwrap();
    let cy = project.join("cloud.yaml");
    std::fs::write(
        &cy,
        format!(
            "provider: local\nrepo: {{url: /srv/repo.git, workspace: /workspace/app}}\nlocal: {{compose_project: {name}}}\nresources: {{network: none}}\nimage: {{dockerfile: Dockerfile.fixture}}\n"
        ),
    )
    .unwrap();
    let deploy_dir = d.home.join(&name);
    let _cleanup = ComposeCleanup {
        project: name.clone(),
        file: deploy_dir.join("docker-compose.yaml"),
    };
    let run = |args: &[&str]| {
        let mut full = vec!["--cloud-yaml", cy.to_str().unwrap()];
        full.extend_from_slice(args);
        Run::from_output(&d.ctl(&project, &[], &full))
    };
    run(&["build"]).ok();
    assert!(deploy_dir.join("docker-compose.yaml").exists());
    let deployed = run(&["deploy"]).ok();
    assert!(
        deployed.decode::<Deployed>().report.success,
        "{}",
        deployed.stdout
    );

    // The runner is up; give it a repo to clone (it has no network).
    assert!(wait_until(Duration::from_secs(30), || run(&[
        "exec", "true"
    ])
    .code
        == Some(0)));
    run(&[
        "exec",
        "set -e; git init -q --bare -b main /srv/repo.git; s=$(mktemp -d); cd $s; git init -q -b main; echo hi > README; git add README; git -c user.name=t -c user.email=t@e commit -qm i; git push -q /srv/repo.git main",
    ])
    .ok();
    let spec = write_chain(&project.join("epic"), "chain.yaml", &["a", "b"]);
    run(&["chain", spec.to_str().unwrap()]).ok();
    // The workspace is the bind-mounted folder of the deploy dir.
    assert!(wait_until(Duration::from_secs(40), || run(&[
        "status", "--chain"
    ])
    .chain_complete()));
    let s = run(&["status", "--chain"]).ok();
    assert!(s.stderr.contains("Completed: a, b"), "{}", s.stderr);
    assert!(
        deploy_dir.join("workspace/chain.yaml").exists(),
        "workspace is not the bind mount"
    );
    let logs = run(&["logs", "--no-follow"]);
    assert_eq!(logs.code, Some(0), "{}", logs.stderr);
    assert!(
        logs.stdout.contains("entrypoint") || logs.stderr.contains("entrypoint"),
        "{}",
        logs.stdout
    );
    run(&["down"]).ok();
    let destroyed = run(&["destroy", "--yes"]).ok();
    assert!(
        destroyed.decode::<Destroyed>().success,
        "{}",
        destroyed.stdout
    );
    assert!(
        !deploy_dir.exists(),
        "destroy removes the persistent deploy dir"
    );
}
