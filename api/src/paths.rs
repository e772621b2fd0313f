//! The one place that decides where things live. Daemon and client both call these functions,
//! so they always agree on the socket path and the state root.
//!
//! Resolution orders (first hit wins):
//! - state root: `$MEGAPLAN_CLOUD_HOME`, else `$HOME/.megaplan/cloud`.
//! - socket: `--socket`, else `$MEGAPLAN_CLOUDD_SOCKET`, else
//!   `$XDG_RUNTIME_DIR/megaplan-cloudd/cloudd.sock`, else `<state root>/cloudd.sock`.

use sha2::{Digest, Sha256};
use std::path::{Component, Path, PathBuf};

pub const ENV_CLOUD_HOME: &str = "MEGAPLAN_CLOUD_HOME";
pub const ENV_SOCKET: &str = "MEGAPLAN_CLOUDD_SOCKET";
pub const SOCKET_FILE: &str = "cloudd.sock";
pub const RUNTIME_SUBDIR: &str = "megaplan-cloudd";

/// Where a socket path came from; `daemon status` and the unreachable error print it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketSource {
    Flag,
    Env,
    XdgRuntimeDir,
    StateRoot,
}

impl SocketSource {
    pub fn describe(self) -> &'static str {
        match self {
            SocketSource::Flag => "--socket",
            SocketSource::Env => "$MEGAPLAN_CLOUDD_SOCKET",
            SocketSource::XdgRuntimeDir => "$XDG_RUNTIME_DIR",
            SocketSource::StateRoot => "state root",
        }
    }
}

fn non_empty_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The user's home directory: `$HOME`, else the passwd entry, else `/`.
pub fn home_dir() -> PathBuf {
    if let Some(h) = non_empty_env("HOME") {
        return PathBuf::from(h);
    }
    passwd_home().unwrap_or_else(|| PathBuf::from("/"))
}

fn passwd_home() -> Option<PathBuf> {
    // SAFETY: getpwuid returns a pointer into static storage or null; we copy out at once.
    unsafe {
        let pw = libc::getpwuid(libc::geteuid());
        if pw.is_null() || (*pw).pw_dir.is_null() {
            return None;
        }
        let dir = std::ffi::CStr::from_ptr((*pw).pw_dir);
        Some(PathBuf::from(dir.to_string_lossy().into_owned()))
    }
}

/// `~/.megaplan/cloud`, or `$MEGAPLAN_CLOUD_HOME`.
pub fn cloud_home() -> PathBuf {
    match non_empty_env(ENV_CLOUD_HOME) {
        Some(p) => absolutize(Path::new(&p), &current_dir()),
        None => home_dir().join(".megaplan").join("cloud"),
    }
}

/// Resolve the socket path. `flag` is the `--socket` value when given.
pub fn resolve_socket(flag: Option<&Path>) -> (PathBuf, SocketSource) {
    let cwd = current_dir();
    if let Some(p) = flag {
        return (absolutize(p, &cwd), SocketSource::Flag);
    }
    if let Some(p) = non_empty_env(ENV_SOCKET) {
        return (absolutize(Path::new(&p), &cwd), SocketSource::Env);
    }
    if let Some(rt) = non_empty_env("XDG_RUNTIME_DIR") {
        return (
            PathBuf::from(rt).join(RUNTIME_SUBDIR).join(SOCKET_FILE),
            SocketSource::XdgRuntimeDir,
        );
    }
    (cloud_home().join(SOCKET_FILE), SocketSource::StateRoot)
}

pub fn current_dir() -> PathBuf {
    std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"))
}

/// Make `p` absolute against `base` and normalise `.` and `..` lexically, like Python's
/// `os.path.abspath`: symlinks are not followed, so the same text always gives the same key.
pub fn absolutize(p: &Path, base: &Path) -> PathBuf {
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    };
    let mut out = PathBuf::from("/");
    for comp in joined.components() {
        match comp {
            Component::RootDir | Component::Prefix(_) | Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(s) => out.push(s),
        }
    }
    out
}

/// `~` and `~/...` expanded against [`home_dir`], like Python's `Path.expanduser`.
pub fn expand_user(p: &Path) -> PathBuf {
    let text = p.to_string_lossy();
    if text == "~" {
        return home_dir();
    }
    match text.strip_prefix("~/") {
        Some(rest) => home_dir().join(rest),
        None => p.to_path_buf(),
    }
}

/// Make `p` absolute against `base` and follow symlinks, like Python's `Path.resolve()` (not
/// strict): the longest existing prefix is resolved on disk, the rest is appended with `.` and
/// `..` applied lexically. The original keys its markers by this form of the cloud.yaml path.
pub fn resolve(p: &Path, base: &Path) -> PathBuf {
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    };
    let mut out = PathBuf::from("/");
    let mut on_disk = true;
    for comp in joined.components() {
        match comp {
            Component::RootDir | Component::Prefix(_) | Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(s) => {
                out.push(s);
                if on_disk {
                    match std::fs::canonicalize(&out) {
                        Ok(real) => out = real,
                        Err(_) => on_disk = false,
                    }
                }
            }
        }
    }
    out
}

/// The marker key of the cloud.yaml at `p` as the original computes it: [`marker_key`] of the
/// [`resolve`]d path.
pub fn resolved_marker_key(p: &Path) -> String {
    marker_key(&resolve(p, &current_dir()))
}

/// The marker key of a cloud.yaml: the first 16 hex chars of sha256 of its absolute path text.
/// Callers pass the [`resolve`]d path (see [`resolved_marker_key`]); the lexical form is only
/// looked up to import markers written under it.
pub fn marker_key(abs_cloud_yaml: &Path) -> String {
    let digest = Sha256::digest(abs_cloud_yaml.to_string_lossy().as_bytes());
    hex::encode(digest)[..16].to_string()
}

/// Whether `k` has the shape of a marker key: exactly 16 lowercase hex characters.
pub fn is_marker_key(k: &str) -> bool {
    k.len() == 16
        && k.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A client-given registration reference (`{key}` in a route, `cloud_yaml=` in a query): an
/// absolute cloud.yaml path (hashed into its key) or a marker key itself. Anything else is
/// refused, so a key can never name a path (`../x`) where it is used to build one.
pub fn key_param(k: &str) -> Result<String, String> {
    if k.starts_with('/') {
        return Ok(resolved_marker_key(Path::new(k)));
    }
    if is_marker_key(k) {
        return Ok(k.to_string());
    }
    Err(format!(
        "{k:?} is neither a marker key (exactly 16 lowercase hex characters) nor an absolute cloud.yaml path; see `megaplan-cloudctl registrations` for the keys"
    ))
}

/// `<root>/markers/<key>/last_chain.json`, the legacy marker file the original tool reads.
pub fn legacy_marker_file(root: &Path, key: &str) -> PathBuf {
    root.join("markers").join(key).join("last_chain.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolutize_is_lexical() {
        let base = Path::new("/home/op/proj");
        assert_eq!(
            absolutize(Path::new("cloud.yaml"), base),
            PathBuf::from("/home/op/proj/cloud.yaml")
        );
        assert_eq!(
            absolutize(Path::new("../x/./cloud.yaml"), base),
            PathBuf::from("/home/op/x/cloud.yaml")
        );
        assert_eq!(
            absolutize(Path::new("/a/b/../../../c"), base),
            PathBuf::from("/c")
        );
    }

    #[test]
    fn marker_key_is_sha256_prefix_of_path_text() {
        // sha256("/home/op/proj/cloud.yaml"), computed independently with sha256sum.
        let key = marker_key(Path::new("/home/op/proj/cloud.yaml"));
        assert_eq!(key.len(), 16);
        assert!(key.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(key, "30fc1502dc0aac84");
    }

    #[test]
    fn key_params_are_keys_or_absolute_paths_only() {
        assert_eq!(key_param("30fc1502dc0aac84").unwrap(), "30fc1502dc0aac84");
        assert_eq!(
            key_param("/home/op/proj/cloud.yaml").unwrap(),
            "30fc1502dc0aac84"
        );
        assert_eq!(
            key_param("/home/op/x/../proj/cloud.yaml").unwrap(),
            "30fc1502dc0aac84"
        );
        for bad in [
            "",
            "../../../etc",
            "../30fc1502dc0aac",
            "30fc1502dc0aac8",
            "30fc1502dc0aac845",
            "30FC1502DC0AAC84",
            "30fc1502dc0aac8g",
            "30fc1502dc0aac8/",
            "relative/cloud.yaml",
        ] {
            let err = key_param(bad).unwrap_err();
            assert!(err.contains("16 lowercase hex"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn resolve_follows_symlinks_like_python() {
        let tmp = tempfile::tempdir().unwrap();
        let real = std::fs::canonicalize(tmp.path()).unwrap().join("real");
        std::fs::create_dir_all(real.join("proj")).unwrap();
        std::fs::write(real.join("proj/cloud.yaml"), "").unwrap();
        let link = real.parent().unwrap().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let base = Path::new("/nowhere");
        assert_eq!(
            resolve(&link.join("proj/cloud.yaml"), base),
            real.join("proj/cloud.yaml")
        );
        // A missing tail is appended lexically after the existing prefix is resolved.
        assert_eq!(
            resolve(&link.join("proj/new/../x.yaml"), base),
            real.join("proj/x.yaml")
        );
        // `..` after a symlink applies to the symlink's target, as in realpath.
        assert_eq!(resolve(&link.join("proj/.."), base), real);
        assert_eq!(
            marker_key(&resolve(&link.join("proj/cloud.yaml"), base)),
            marker_key(&real.join("proj/cloud.yaml"))
        );
        assert_ne!(
            marker_key(&link.join("proj/cloud.yaml")),
            marker_key(&real.join("proj/cloud.yaml"))
        );
    }

    #[test]
    fn legacy_marker_layout() {
        assert_eq!(
            legacy_marker_file(Path::new("/r"), "0123456789abcdef"),
            PathBuf::from("/r/markers/0123456789abcdef/last_chain.json")
        );
    }
}
