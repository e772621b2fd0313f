//! Where cloud.yaml is, found the way the original `cloud` CLI finds it.
//!
//! The original (`arnold_pipelines/megaplan/cli/roots.py`, `_find_megaplan_root`) starts from
//! the resolved working directory: the git root (nearest ancestor holding `.git`) when it holds
//! `.megaplan/`, else the nearest ancestor holding `.megaplan/`, else the working directory;
//! cloud.yaml is `<that root>/cloud.yaml`. An explicit `--cloud-yaml` is `expanduser()` then
//! `resolve()`d (symlinks followed). Here, without the flag, the first of these that exists
//! wins: the project root's cloud.yaml, the git root's, `./cloud.yaml`.

use megaplan_cloud_api::paths;
use std::path::{Path, PathBuf};

/// A located cloud.yaml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// Absolute, symlinks followed: what the daemon is sent and the marker key is made of.
    pub path: PathBuf,
    /// The path as given, made absolute without following symlinks, when it differs.
    pub as_given: Option<PathBuf>,
}

fn nearest_ancestor(start: &Path, holds: impl Fn(&Path) -> bool) -> Option<PathBuf> {
    start.ancestors().find(|d| holds(d)).map(Path::to_path_buf)
}

/// The nearest ancestor of `start` holding `.git` (a folder, or a file in worktrees).
pub fn git_root(start: &Path) -> Option<PathBuf> {
    nearest_ancestor(start, |d| d.join(".git").exists())
}

/// The original's project root: the git root when it holds `.megaplan/`, else the nearest
/// ancestor holding `.megaplan/`; `None` when neither exists.
pub fn project_root(start: &Path) -> Option<PathBuf> {
    let holds_megaplan = |d: &Path| d.join(".megaplan").is_dir();
    if let Some(g) = git_root(start)
        && holds_megaplan(&g)
    {
        return Some(g);
    }
    nearest_ancestor(start, holds_megaplan)
}

/// The places looked at without `--cloud-yaml`, in order, without duplicates.
pub fn candidates(cwd: &Path) -> Vec<PathBuf> {
    let cwd = paths::resolve(cwd, Path::new("/"));
    let mut out: Vec<PathBuf> = Vec::new();
    for dir in [project_root(&cwd), git_root(&cwd), Some(cwd.clone())]
        .into_iter()
        .flatten()
    {
        let p = dir.join("cloud.yaml");
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

fn from_flag(flag: &Path, cwd: &Path) -> Located {
    let given = paths::absolutize(&paths::expand_user(flag), cwd);
    let path = paths::resolve(&given, Path::new("/"));
    Located {
        as_given: (given != path).then_some(given),
        path,
    }
}

/// The cloud.yaml a command uses, or the list of places tried when there is none.
pub fn locate(flag: Option<&Path>, cwd: &Path) -> Result<Located, Vec<PathBuf>> {
    if let Some(f) = flag {
        return Ok(from_flag(f, cwd));
    }
    let tried = candidates(cwd);
    match tried.iter().find(|p| p.is_file()) {
        Some(p) => Ok(Located {
            path: paths::resolve(p, Path::new("/")),
            as_given: None,
        }),
        None => Err(tried),
    }
}

/// Where `init` writes: `--cloud-yaml`, else the project root's cloud.yaml (the original's
/// `<project-root>/cloud.yaml`, the working directory when there is no project root).
pub fn init_target(flag: Option<&Path>, cwd: &Path) -> PathBuf {
    match flag {
        Some(f) => from_flag(f, cwd).path,
        None => {
            let cwd = paths::resolve(cwd, Path::new("/"));
            project_root(&cwd).unwrap_or(cwd).join("cloud.yaml")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    struct Tree {
        _tmp: tempfile::TempDir,
        root: PathBuf,
    }

    fn tree() -> Tree {
        let tmp = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(tmp.path()).unwrap();
        Tree { _tmp: tmp, root }
    }

    #[test]
    fn finds_cloud_yaml_at_the_project_root_from_a_subfolder() {
        let t = tree();
        let proj = t.root.join("proj");
        fs::create_dir_all(proj.join(".megaplan")).unwrap();
        fs::create_dir_all(proj.join("src/deep")).unwrap();
        fs::write(proj.join("cloud.yaml"), "").unwrap();
        let got = locate(None, &proj.join("src/deep")).unwrap();
        assert_eq!(got.path, proj.join("cloud.yaml"));
        assert_eq!(got.as_given, None);
    }

    #[test]
    fn git_root_with_megaplan_wins_over_a_nearer_megaplan_folder() {
        let t = tree();
        let repo = t.root.join("repo");
        fs::create_dir_all(repo.join(".git")).unwrap();
        fs::create_dir_all(repo.join(".megaplan")).unwrap();
        fs::create_dir_all(repo.join("pkg/.megaplan")).unwrap();
        fs::write(repo.join("cloud.yaml"), "").unwrap();
        fs::write(repo.join("pkg/cloud.yaml"), "").unwrap();
        assert_eq!(project_root(&repo.join("pkg")), Some(repo.clone()));
        assert_eq!(
            locate(None, &repo.join("pkg")).unwrap().path,
            repo.join("cloud.yaml")
        );
        // Without .megaplan at the git root, the nearest .megaplan folder is the root.
        fs::remove_dir_all(repo.join(".megaplan")).unwrap();
        assert_eq!(
            locate(None, &repo.join("pkg")).unwrap().path,
            repo.join("pkg/cloud.yaml")
        );
    }

    #[test]
    fn falls_back_to_the_git_root_then_the_working_directory() {
        let t = tree();
        let repo = t.root.join("repo");
        fs::create_dir_all(repo.join(".git")).unwrap();
        fs::create_dir_all(repo.join("a/b")).unwrap();
        fs::write(repo.join("cloud.yaml"), "").unwrap();
        assert_eq!(
            locate(None, &repo.join("a/b")).unwrap().path,
            repo.join("cloud.yaml")
        );
        fs::remove_file(repo.join("cloud.yaml")).unwrap();
        fs::write(repo.join("a/b/cloud.yaml"), "").unwrap();
        assert_eq!(
            locate(None, &repo.join("a/b")).unwrap().path,
            repo.join("a/b/cloud.yaml")
        );
    }

    #[test]
    fn nothing_found_lists_every_place_tried() {
        let t = tree();
        let repo = t.root.join("repo");
        fs::create_dir_all(repo.join(".git")).unwrap();
        fs::create_dir_all(repo.join(".megaplan")).unwrap();
        fs::create_dir_all(repo.join("sub")).unwrap();
        let tried = locate(None, &repo.join("sub")).unwrap_err();
        assert_eq!(
            tried,
            vec![repo.join("cloud.yaml"), repo.join("sub/cloud.yaml")]
        );
    }

    #[test]
    fn the_flag_is_expanded_and_resolved_through_symlinks() {
        let t = tree();
        let real = t.root.join("real");
        fs::create_dir_all(&real).unwrap();
        fs::write(real.join("cloud.yaml"), "").unwrap();
        std::os::unix::fs::symlink(&real, t.root.join("link")).unwrap();
        let got = locate(Some(Path::new("link/cloud.yaml")), &t.root).unwrap();
        assert_eq!(got.path, real.join("cloud.yaml"));
        assert_eq!(got.as_given, Some(t.root.join("link/cloud.yaml")));
        // A project reached through the symlink is found at its resolved place.
        fs::create_dir_all(real.join(".megaplan")).unwrap();
        fs::create_dir_all(real.join("sub")).unwrap();
        let got = locate(None, &t.root.join("link/sub")).unwrap();
        assert_eq!(got.path, real.join("cloud.yaml"));
    }

    #[test]
    fn init_writes_at_the_project_root() {
        let t = tree();
        let proj = t.root.join("proj");
        fs::create_dir_all(proj.join(".megaplan")).unwrap();
        fs::create_dir_all(proj.join("sub")).unwrap();
        assert_eq!(
            init_target(None, &proj.join("sub")),
            proj.join("cloud.yaml")
        );
        let lone = t.root.join("lone");
        fs::create_dir_all(&lone).unwrap();
        assert_eq!(init_target(None, &lone), lone.join("cloud.yaml"));
    }
}
