//! The HTTP API on a Unix socket: socket-folder checks, single instance, peer-uid check.
//!
//! Security model (see docs/security.md): the socket's folder is 0700 and owned by us, the
//! socket is 0600, and every request's peer uid (SO_PEERCRED) must equal the daemon's uid —
//! root is refused too, since a daemon run as another user must not be driven by root by
//! accident. A live socket is never unlinked; a stale one is replaced.

use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Request};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::serve::IncomingStream;
use megaplan_cloud_api::{ErrorBody, ErrorCode};
use std::fs::File;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use tokio::net::UnixListener;

/// Who is on the other end of a connection.
#[derive(Clone, Debug)]
pub struct Peer {
    pub uid: Option<u32>,
    pub pid: Option<i32>,
}

impl Connected<IncomingStream<'_, UnixListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, UnixListener>) -> Self {
        match stream.io().peer_cred() {
            Ok(cred) => Peer {
                uid: Some(cred.uid()),
                pid: cred.pid(),
            },
            Err(_) => Peer {
                uid: None,
                pid: None,
            },
        }
    }
}

/// Middleware: refuse any peer whose uid is not ours (403), with one log line, no payload.
pub async fn require_same_uid(
    ConnectInfo(peer): ConnectInfo<Peer>,
    req: Request,
    next: Next,
) -> Response {
    let me = current_uid();
    if peer.uid == Some(me) {
        return next.run(req).await;
    }
    tracing::warn!(
        peer_uid = ?peer.uid,
        peer_pid = ?peer.pid,
        path = %req.uri().path(),
        "refused connection from another user"
    );
    (
        StatusCode::FORBIDDEN,
        axum::Json(
            ErrorBody::new(
                ErrorCode::InvalidArgs,
                format!(
                    "permission denied: this megaplan-cloudd serves uid {me} only; start your own daemon"
                ),
            )
            .to_value(),
        ),
    )
        .into_response()
}

pub fn current_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Create (or check) a private folder: a real directory, owned by us, no group/other bits.
/// A folder we own with looser bits is tightened; anything else is refused.
pub fn ensure_private_dir(dir: &Path) -> Result<(), String> {
    if let Err(e) = std::fs::create_dir_all(dir) {
        return Err(format!("cannot create {}: {e}", dir.display()));
    }
    let meta = std::fs::symlink_metadata(dir)
        .map_err(|e| format!("cannot inspect {}: {e}", dir.display()))?;
    if meta.file_type().is_symlink() || !meta.is_dir() {
        return Err(format!(
            "{} must be a directory, not a symlink or file; remove it or choose another --socket",
            dir.display()
        ));
    }
    if meta.uid() != current_uid() {
        return Err(format!(
            "{} is owned by uid {}, not by us (uid {}); choose another --socket",
            dir.display(),
            meta.uid(),
            current_uid()
        ));
    }
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("cannot chmod 0700 {}: {e}", dir.display()))?;
    }
    Ok(())
}

/// Holds the single-instance lock for the daemon's lifetime.
pub struct InstanceLock {
    _file: File,
    pub path: PathBuf,
}

/// Bind the socket: private folder, single-instance flock, live-socket probe, stale unlink,
/// bind, chmod 0600. Returns a clear message on every refusal.
pub fn bind(socket: &Path) -> Result<(UnixListener, InstanceLock), String> {
    let len = socket.as_os_str().len();
    if len > 100 {
        return Err(format!(
            "socket path {} is {len} bytes; Unix sockets allow about 100. Use a shorter --socket",
            socket.display()
        ));
    }
    let dir = socket
        .parent()
        .ok_or_else(|| format!("socket path {} has no folder", socket.display()))?;
    ensure_private_dir(dir)?;

    let lock_path = socket.with_extension("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&lock_path)
        .map_err(|e| format!("cannot open lock file {}: {e}", lock_path.display()))?;
    if let Err(e) = file.try_lock() {
        let holder = std::fs::read_to_string(&lock_path).unwrap_or_default();
        return Err(format!(
            "another megaplan-cloudd is already serving {} ({}; lock {}: {e}). Stop it first, or use another --socket",
            socket.display(),
            holder.trim(),
            lock_path.display()
        ));
    }
    // Record who holds the lock, for the message above.
    let _ = std::fs::write(
        &lock_path,
        format!(
            "pid {} version {}\n",
            std::process::id(),
            megaplan_cloud_api::VERSION
        ),
    );

    if socket.exists() {
        // The lock is ours, so nothing of ours is serving there; still, never unlink a socket
        // that answers (another program, or a daemon from an older layout).
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            return Err(format!(
                "{} is a live socket served by another process; stop it or use another --socket",
                socket.display()
            ));
        }
        std::fs::remove_file(socket)
            .map_err(|e| format!("cannot remove stale socket {}: {e}", socket.display()))?;
    }
    let std_listener = std::os::unix::net::UnixListener::bind(socket)
        .map_err(|e| format!("cannot bind {}: {e}", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("cannot chmod 0600 {}: {e}", socket.display()))?;
    std_listener
        .set_nonblocking(true)
        .map_err(|e| format!("cannot configure {}: {e}", socket.display()))?;
    let listener = UnixListener::from_std(std_listener)
        .map_err(|e| format!("cannot listen on {}: {e}", socket.display()))?;
    Ok((
        listener,
        InstanceLock {
            _file: file,
            path: lock_path,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_dir_is_tightened_and_symlink_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("run");
        std::fs::create_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        ensure_private_dir(&d).unwrap();
        assert_eq!(std::fs::metadata(&d).unwrap().mode() & 0o777, 0o700);
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&d, &link).unwrap();
        assert!(ensure_private_dir(&link).unwrap_err().contains("symlink"));
    }

    #[tokio::test]
    async fn second_bind_is_refused_and_stale_socket_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let sock = tmp.path().join("run").join("cloudd.sock");
        let (_l, lock) = bind(&sock).unwrap();
        let err = bind(&sock).err().unwrap();
        assert!(err.contains("already serving"), "{err}");
        assert_eq!(std::fs::metadata(&sock).unwrap().mode() & 0o777, 0o600);
        drop(_l);
        drop(lock);
        // The socket file is left behind (stale); a new bind replaces it.
        assert!(sock.exists());
        let (_l2, _lock2) = bind(&sock).unwrap();
    }
}
