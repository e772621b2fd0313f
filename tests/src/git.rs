//! Tiny git remotes usable as `repo.url`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::container::Container;
use crate::util::run_ok;

const IDENTITY: [&str; 4] = [
    "-c",
    "user.name=megaplan-e2e",
    "-c",
    "user.email=e2e@example.invalid",
];

fn git(cwd: &Path, args: &[&str]) {
    run_ok(
        Command::new("git")
            .args(IDENTITY)
            .args(args)
            .current_dir(cwd),
    )
    .unwrap_or_else(|e| panic!("{e}"));
}

/// A bare repo `<dir>/repo.git` with one commit (a README) on branch `main`; returns its path.
pub fn git_bare_repo(dir: &Path) -> PathBuf {
    let bare = dir.join("repo.git");
    let work = dir.join("repo-seed");
    fs::create_dir_all(&work).unwrap_or_else(|e| panic!("cannot create {}: {e}", work.display()));
    git(
        dir,
        &[
            "init",
            "-q",
            "--bare",
            "-b",
            "main",
            &bare.to_string_lossy(),
        ],
    );
    git(&work, &["init", "-q", "-b", "main"]);
    fs::write(work.join("README.md"), "# e2e fixture repo\n")
        .unwrap_or_else(|e| panic!("cannot write the fixture README: {e}"));
    git(&work, &["add", "README.md"]);
    git(&work, &["commit", "-q", "-m", "initial commit"]);
    git(&work, &["push", "-q", &bare.to_string_lossy(), "main"]);
    let _ = fs::remove_dir_all(&work);
    bare
}

/// Creates the same fixture as [`git_bare_repo`] at `/srv/repo.git` inside the container; returns that path.
pub fn repo_in_container(c: &Container) -> String {
    c.exec_ok(
        "set -e
         git init -q --bare -b main /srv/repo.git
         seed=$(mktemp -d)
         cd \"$seed\"
         git init -q -b main
         printf '# e2e fixture repo\\n' > README.md
         git add README.md
         git -c user.name=megaplan-e2e -c user.email=e2e@example.invalid commit -q -m 'initial commit'
         git push -q /srv/repo.git main
         cd / && rm -rf \"$seed\"",
    );
    "/srv/repo.git".to_owned()
}
