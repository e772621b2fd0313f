//! Docker engine start-up and the runner image build (debootstrap rootfs → `docker import` → stand-ins layer).
//!
//! Everything is offline except debootstrap, which only talks to the Debian mirror. The stand-in layer is added
//! with `docker create` + `docker cp` + `docker commit`, so no image builder (BuildKit/buildx) is needed.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::bench_dir;
use crate::util::{FileLock, run, run_ok, wait_until};

/// Machine-wide cache and lock directory of the bench.
pub const CACHE_DIR: &str = "/var/tmp/megaplan-e2e";
const DOCKERD: &str = "/usr/sbin/dockerd";
const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
/// Bump when the rootfs post-processing below changes, so cached tarballs are rebuilt.
const ROOTFS_RECIPE: &str =
    "rootfs-v1: debootstrap minbase bookworm; python -> python3; apt caches removed";
const IMAGE_PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Makes sure the engine answers and the runner image exists; returns its tag.
pub fn ensure_bench() -> Result<String, String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("the e2e bench needs root (dockerd, sshd as root, debootstrap)".to_owned());
    }
    fs::create_dir_all(CACHE_DIR).map_err(|e| format!("cannot create {CACHE_DIR}: {e}"))?;
    ensure_engine()?;
    let bench = bench_dir();
    let tag = format!("megaplan-e2e:{}", content_hash(&bench)?);
    if image_exists(&tag) {
        return Ok(tag);
    }
    let _lock = FileLock::acquire(&Path::new(CACHE_DIR).join("build.lock"))?;
    if image_exists(&tag) {
        return Ok(tag);
    }
    let packages = read_packages(&bench.join("packages.txt"))?;
    let base = ensure_base_image(&packages)?;
    build_standin_layer(&base, &bench, &tag)?;
    Ok(tag)
}

fn docker_answers() -> bool {
    Command::new("docker")
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Starts `/usr/sbin/dockerd` detached (own session, so it outlives the test process) when the engine is down.
pub fn ensure_engine() -> Result<(), String> {
    if docker_answers() {
        return Ok(());
    }
    let _lock = FileLock::acquire(&Path::new(CACHE_DIR).join("dockerd.lock"))?;
    if docker_answers() {
        return Ok(());
    }
    if !Path::new(DOCKERD).exists() {
        return Err(format!(
            "the docker engine is not answering and {DOCKERD} is missing (apt-get install docker.io)"
        ));
    }
    let log_path = Path::new(CACHE_DIR).join("dockerd.log");
    let log = fs::File::options()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
    let log_err = log
        .try_clone()
        .map_err(|e| format!("cannot dup dockerd log handle: {e}"))?;
    let mut cmd = Command::new(DOCKERD);
    cmd.stdin(Stdio::null()).stdout(log).stderr(log_err);
    // SAFETY: setsid is async-signal-safe and runs in the forked child before exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    cmd.spawn()
        .map_err(|e| format!("cannot start {DOCKERD}: {e}"))?;
    if wait_until(Duration::from_secs(60), docker_answers) {
        Ok(())
    } else {
        Err(format!(
            "started {DOCKERD} but `docker info` still fails after 60 s; see {}",
            log_path.display()
        ))
    }
}

pub fn image_exists(tag: &str) -> bool {
    Command::new("docker")
        .args(["image", "inspect", tag])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Every file under `dir` except Python byte-code, sorted by relative path.
fn bench_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = fs::read_dir(&d).map_err(|e| format!("cannot list {}: {e}", d.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("cannot list {}: {e}", d.display()))?;
            let path = entry.path();
            let name = entry.file_name();
            if name == "__pycache__" || path.extension().is_some_and(|x| x == "pyc") {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// First 12 hex of sha256 over the rootfs recipe and every bench file (path, exec bit, content).
pub fn content_hash(dir: &Path) -> Result<String, String> {
    let mut hasher = Sha256::new();
    hasher.update(ROOTFS_RECIPE.as_bytes());
    for path in bench_files(dir)? {
        let rel = path.strip_prefix(dir).unwrap_or(&path);
        let meta =
            fs::metadata(&path).map_err(|e| format!("cannot stat {}: {e}", path.display()))?;
        let content =
            fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        hasher.update(rel.to_string_lossy().as_bytes());
        hasher.update([0, u8::from(meta.permissions().mode() & 0o111 != 0)]);
        hasher.update((content.len() as u64).to_le_bytes());
        hasher.update(&content);
    }
    Ok(hex::encode(hasher.finalize())[..12].to_owned())
}

fn read_packages(path: &Path) -> Result<Vec<String>, String> {
    let text =
        fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect())
}

/// `megaplan-e2e-base:<key>` imported from the cached debootstrap tarball (debootstrapping it when missing).
fn ensure_base_image(packages: &[String]) -> Result<String, String> {
    let mut hasher = Sha256::new();
    hasher.update(ROOTFS_RECIPE.as_bytes());
    hasher.update(packages.join(",").as_bytes());
    let key = hex::encode(hasher.finalize())[..12].to_owned();
    let base = format!("megaplan-e2e-base:{key}");
    if image_exists(&base) {
        return Ok(base);
    }
    let tarball = Path::new(CACHE_DIR).join(format!("rootfs-{key}.tar"));
    if !tarball.exists() {
        debootstrap_tarball(packages, &key, &tarball)?;
    }
    run_ok(Command::new("docker").args([
        "import",
        "--change",
        &format!("ENV {IMAGE_PATH_ENV}"),
        "--change",
        "ENV LANG=C.UTF-8",
        "--change",
        "CMD [\"bash\"]",
        &tarball.to_string_lossy(),
        &base,
    ]))?;
    Ok(base)
}

fn debootstrap_tarball(packages: &[String], key: &str, tarball: &Path) -> Result<(), String> {
    if !Path::new("/usr/sbin/debootstrap").exists() {
        return Err("debootstrap is not installed (apt-get install debootstrap)".to_owned());
    }
    let root = Path::new(CACHE_DIR).join(format!("rootfs-{key}.d"));
    if root.exists() {
        fs::remove_dir_all(&root).map_err(|e| format!("cannot clear {}: {e}", root.display()))?;
    }
    let mirror =
        std::env::var("MEGAPLAN_E2E_DEBIAN_MIRROR").unwrap_or_else(|_| DEFAULT_MIRROR.to_owned());
    eprintln!(
        "megaplan-e2e: debootstrapping the runner rootfs into {} (once per machine)",
        root.display()
    );
    let out = run(Command::new("debootstrap").args([
        "--variant=minbase",
        &format!("--include={}", packages.join(",")),
        "bookworm",
        &root.to_string_lossy(),
        &mirror,
    ]))?;
    if !out.status.success() {
        let log = fs::read_to_string(root.join("debootstrap/debootstrap.log")).unwrap_or_default();
        return Err(format!(
            "debootstrap failed ({}): {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            log.lines().rev().take(30).collect::<Vec<_>>().join("\n")
        ));
    }
    // The remote launcher is `python -m ...`; Debian only ships `python3`.
    let python = root.join("usr/bin/python");
    if !python.exists() {
        std::os::unix::fs::symlink("python3", &python)
            .map_err(|e| format!("cannot create {}: {e}", python.display()))?;
    }
    for cache in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        if let Ok(entries) = fs::read_dir(root.join(cache)) {
            for entry in entries.flatten() {
                if entry.path().is_file() {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
    }
    let partial = tarball.with_extension("tar.partial");
    run_ok(Command::new("tar").args([
        "--numeric-owner",
        "-C",
        &root.to_string_lossy(),
        "-cf",
        &partial.to_string_lossy(),
        ".",
    ]))?;
    fs::rename(&partial, tarball).map_err(|e| format!("cannot move {}: {e}", partial.display()))?;
    let _ = fs::remove_dir_all(&root);
    Ok(())
}

fn copy_tree(src: &Path, dst: &Path) -> Result<(), String> {
    fs::create_dir_all(dst).map_err(|e| format!("cannot create {}: {e}", dst.display()))?;
    for entry in fs::read_dir(src).map_err(|e| format!("cannot list {}: {e}", src.display()))? {
        let entry = entry.map_err(|e| format!("cannot list {}: {e}", src.display()))?;
        let path = entry.path();
        let name = entry.file_name();
        if name == "__pycache__" || path.extension().is_some_and(|x| x == "pyc") {
            continue;
        }
        let target = dst.join(&name);
        if path.is_dir() {
            copy_tree(&path, &target)?;
        } else {
            fs::copy(&path, &target).map_err(|e| format!("cannot copy {}: {e}", path.display()))?;
        }
    }
    Ok(())
}

/// Stages the stand-ins as a root-relative tree and commits them on top of `base` as `tag`.
fn build_standin_layer(base: &str, bench: &Path, tag: &str) -> Result<(), String> {
    let staging = tempfile::Builder::new()
        .prefix("megaplan-e2e-layer")
        .tempdir_in(CACHE_DIR)
        .map_err(|e| format!("cannot create a staging dir: {e}"))?;
    let root = staging.path();
    let bin_dir = root.join("usr/local/bin");
    copy_tree(&bench.join("image/bin"), &bin_dir)?;
    for entry in
        fs::read_dir(&bin_dir).map_err(|e| format!("cannot list {}: {e}", bin_dir.display()))?
    {
        let path = entry.map_err(|e| e.to_string())?.path();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("cannot chmod {}: {e}", path.display()))?;
    }
    copy_tree(
        &bench.join("standin"),
        &root.join("usr/lib/python3/dist-packages"),
    )?;
    fs::create_dir_all(root.join("var/lib/gh-standin")).map_err(|e| e.to_string())?;
    set_dir_modes(root)?;

    let created =
        run_ok(Command::new("docker").args(["create", "--network", "none", base, "true"]))?;
    let id = String::from_utf8_lossy(&created.stdout).trim().to_owned();
    let result = run_ok(Command::new("docker").args([
        "cp",
        &format!("{}/.", root.display()),
        &format!("{id}:/"),
    ]))
    .and_then(|_| {
        run_ok(Command::new("docker").args([
            "commit",
            "--change",
            "CMD [\"sleep\", \"infinity\"]",
            &id,
            tag,
        ]))
    });
    let _ = Command::new("docker")
        .args(["rm", "-f", &id])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    result.map(|_| ())
}

/// Directories 0755 and plain files 0644 (executables keep 0755) so `docker cp` installs sane modes.
fn set_dir_modes(dir: &Path) -> Result<(), String> {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("cannot chmod {}: {e}", dir.display()))?;
    for entry in fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))? {
        let path = entry.map_err(|e| e.to_string())?.path();
        if path.is_dir() {
            set_dir_modes(&path)?;
        } else {
            let meta = fs::metadata(&path).map_err(|e| e.to_string())?;
            let mode = if meta.permissions().mode() & 0o111 != 0 {
                0o755
            } else {
                0o644
            };
            fs::set_permissions(&path, fs::Permissions::from_mode(mode))
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_hash_tracks_content_exec_bit_and_ignores_bytecode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        fs::create_dir_all(root.join("standin/__pycache__")).expect("mkdir");
        fs::write(root.join("standin/a.py"), "print(1)\n").expect("write");
        let h1 = content_hash(root).expect("hash");
        assert_eq!(h1.len(), 12);
        fs::write(root.join("standin/__pycache__/a.cpython-311.pyc"), "junk").expect("write");
        assert_eq!(
            content_hash(root).expect("hash"),
            h1,
            "byte-code is ignored"
        );
        fs::set_permissions(root.join("standin/a.py"), fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let h2 = content_hash(root).expect("hash");
        assert_ne!(h2, h1, "exec bit matters");
        fs::write(root.join("standin/a.py"), "print(2)\n").expect("write");
        assert_ne!(content_hash(root).expect("hash"), h2, "content matters");
    }

    #[test]
    fn package_list_skips_blanks_and_comments() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("packages.txt");
        fs::write(&path, "# runner\nbash\n\n  git  \n").expect("write");
        assert_eq!(read_packages(&path).expect("read"), ["bash", "git"]);
    }

    #[test]
    fn the_shipped_bench_has_every_standin() {
        let bench = bench_dir();
        for file in ["gh", "pip", "pip3", "codex", "npm"] {
            let meta = fs::metadata(bench.join("image/bin").join(file)).expect(file);
            assert!(
                meta.permissions().mode() & 0o111 != 0,
                "{file} must be executable"
            );
        }
        // Railway's service (the real CLI talks to it): the only railway stand-in.
        let railway =
            fs::metadata(bench.join("railway-service")).expect("railway service stand-in");
        assert!(railway.is_file() || railway.is_dir());
        // The real core's module only: a launcher hard-wired to the seed's spelling fails.
        assert!(
            bench
                .join("standin/arnold_pipelines/megaplan/__main__.py")
                .is_file()
        );
        assert!(
            bench
                .join("standin/arnold_pipelines/megaplan/chain/spec.py")
                .is_file()
        );
        assert!(!bench.join("standin/arnold").exists());
        let packages = read_packages(&bench.join("packages.txt")).expect("packages");
        for needed in ["tmux", "python3", "python3-yaml", "git"] {
            assert!(
                packages.iter().any(|p| p == needed),
                "{needed} missing from packages.txt"
            );
        }
    }
}
