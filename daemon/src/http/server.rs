//! The HTTP API on a Unix socket: the socket folder, single instance, peer uid, and the limits
//! that keep a flood of connections or a slow client from exhausting the daemon.
//!
//! Security model (see docs/security.md):
//! - the socket lives in a folder of our own: created 0700 by us, or an existing real directory
//!   owned by us with no group/other bits. Anything else is refused; an existing folder is never
//!   chmodded (`--socket /tmp/s.sock` must not change `/tmp`).
//! - one daemon per socket *and* per database: both are flocked.
//! - every connection's peer uid (SO_PEERCRED) must equal the daemon's uid; root is refused too,
//!   since a daemon run as another user must not be driven by root by accident. The check runs
//!   at accept and a refused connection is closed at once, before any byte is read. The warning
//!   is rate-limited so a flood cannot fill the log.
//! - at most `max_connections` connections are served at once (more are closed at accept); the
//!   request head must arrive within `header_timeout` (idle keep-alive connections too), the body
//!   within `body_timeout`, and a declared `Content-Length` over the limit is answered 413 before
//!   any body byte is read.
//! - A live socket is never unlinked; a stale one is replaced.

use super::error::ApiError;
use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use megaplan_cloud_api::{ErrorBody, ErrorCode};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// Who is on the other end of a connection (inserted into every request's extensions as
/// `ConnectInfo<Peer>`).
#[derive(Clone, Debug)]
pub struct Peer {
    pub uid: Option<u32>,
    pub pid: Option<i32>,
}

impl Peer {
    pub fn of(stream: &UnixStream) -> Peer {
        match stream.peer_cred() {
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

pub fn current_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Whether a peer may talk to us: exactly our own uid (a missing credential is refused).
pub fn peer_allowed(peer_uid: Option<u32>, me: u32) -> bool {
    peer_uid == Some(me)
}

/// A warning written at most once per `every`, with the count of the ones held back.
pub struct RateLimitedLog {
    every: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl RateLimitedLog {
    pub fn new(every: Duration) -> Self {
        RateLimitedLog {
            every,
            state: Mutex::new((None, 0)),
        }
    }

    /// `Some(n)` when a line should be written now (`n` events were held back since the last
    /// one), `None` when this event is only counted.
    pub fn admit(&self, now: Instant) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match s.0 {
            Some(last) if now.duration_since(last) < self.every => {
                s.1 += 1;
                None
            }
            _ => {
                let held = s.1;
                *s = (Some(now), 0);
                Some(held)
            }
        }
    }
}

/// Why the daemon cannot take its socket, its folders or its locks. Each message names the
/// path and the fix; start-up logs it and exits 1.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("cannot create {}: {source}", dir.display())]
    CreateDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot inspect {}: {source}", dir.display())]
    Inspect {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("{} must be {} of our own, not a symlink or anything else; {}", dir.display(), role.kind(), role.fix(dir))]
    NotADirectory { dir: PathBuf, role: Owned },
    #[error("{} is owned by uid {owner}, not by us (uid {me}); megaplan-cloudd only uses {} of its own: {}", dir.display(), role.plural(), role.fix(dir))]
    NotOurs {
        dir: PathBuf,
        owner: u32,
        me: u32,
        role: Owned,
    },
    #[error("{} is mode {mode:04o}: {}", dir.display(), role.open_to_others(dir))]
    OpenToOthers {
        dir: PathBuf,
        mode: u32,
        role: Owned,
    },
    #[error("--db {} is a symlink to {}{in_use}; megaplan-cloudd opens its database by its real path only, so that one lock covers every name of the file: pass --db {} instead", db.display(), target.display(), target.display())]
    SymlinkedDatabase {
        db: PathBuf,
        target: PathBuf,
        /// ` (megaplan-cloudd pid N is using that database)` when one is, else empty.
        in_use: String,
    },
    #[error("cannot open lock file {}: {source}", path.display())]
    OpenLock {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open database {}: {inner}; make its folder writable (remount the file system read-write, fix its permissions) or use another --db", db.display())]
    DatabaseFolder {
        db: PathBuf,
        inner: Box<SocketError>,
    },
    #[error("another megaplan-cloudd is already using the database {} ({holder}; lock {}: {source}). Two daemons on one database would tick every registration twice: stop it first, or use another --db", db.display(), lock.display())]
    DatabaseBusy {
        db: PathBuf,
        holder: String,
        lock: PathBuf,
        source: std::io::Error,
    },
    #[error("another megaplan-cloudd is already serving {} ({holder}; lock {}: {source}). Stop it first, or use another --socket", socket.display(), lock.display())]
    SocketBusy {
        socket: PathBuf,
        holder: String,
        lock: PathBuf,
        source: std::io::Error,
    },
    #[error("socket path {} is {len} bytes; Unix sockets allow about 100. Use a shorter --socket", socket.display())]
    PathTooLong { socket: PathBuf, len: usize },
    #[error("socket path {} has no folder", socket.display())]
    NoFolder { socket: PathBuf },
    #[error("{} is a live socket served by another process; stop it or use another --socket", socket.display())]
    LiveSocket { socket: PathBuf },
    /// A step of binding the socket failed (`what`: "remove stale socket", "bind", ...).
    #[error("cannot {what} {}: {source}", socket.display())]
    Socket {
        what: &'static str,
        socket: PathBuf,
        source: std::io::Error,
    },
}

/// What a path the daemon owns is for. One rule covers them all: the path is not a symlink, it
/// is of the expected type, it is owned by us, and group/others cannot write it (the socket
/// folder: cannot enter it at all). The role decides the type, the forbidden mode bits and the
/// fix a refusal names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owned {
    /// The socket's folder (and the other private folders: ssh control sockets, logs).
    SocketFolder,
    /// The state root (`$MEGAPLAN_CLOUD_HOME`, `~/.megaplan/cloud`).
    StateRoot,
    /// The folder holding the database.
    DatabaseFolder,
    /// The database file itself.
    Database,
    /// A file SQLite or the daemon keeps beside the database: `-wal`, `-shm`, `-journal`, `.lock`.
    DatabaseCompanion,
}

impl Owned {
    fn is_dir(self) -> bool {
        matches!(
            self,
            Owned::SocketFolder | Owned::StateRoot | Owned::DatabaseFolder
        )
    }

    /// Mode bits the path must not have.
    fn forbidden(self) -> u32 {
        match self {
            Owned::SocketFolder => 0o077,
            _ => 0o022,
        }
    }

    fn kind(self) -> &'static str {
        if self.is_dir() {
            "a directory"
        } else {
            "a regular file"
        }
    }

    fn plural(self) -> &'static str {
        if self.is_dir() { "folders" } else { "files" }
    }

    /// What to do instead, for a path that is not ours or not of the right type.
    fn fix(self, p: &Path) -> String {
        match self {
            Owned::SocketFolder => {
                "remove it or choose another --socket in a new folder".to_string()
            }
            Owned::StateRoot => format!(
                "set MEGAPLAN_CLOUD_HOME (or $HOME) to a folder of your own instead of {}",
                p.display()
            ),
            Owned::DatabaseFolder => {
                "choose another --db in a folder of your own (a missing one is created 0700)"
                    .to_string()
            }
            Owned::Database | Owned::DatabaseCompanion => format!(
                "move {} aside (with no megaplan-cloudd running on it) or choose another --db; a new database is created 0600",
                p.display()
            ),
        }
    }

    /// The refusal of a path whose mode lets group or others in.
    fn open_to_others(self, p: &Path) -> String {
        let p = p.display();
        match self {
            Owned::SocketFolder => format!(
                "group or others can enter it, so it cannot hold the daemon's socket or state. megaplan-cloudd never changes a folder's mode: run `chmod 700 {p}` if the folder is yours alone, or choose another --socket in a new folder (created 0700)"
            ),
            Owned::StateRoot => format!(
                "group or others can write in it, so another user could replace the daemon's files. megaplan-cloudd never changes a folder's mode: run `chmod 700 {p}` if the folder is yours alone, or set MEGAPLAN_CLOUD_HOME to a folder of your own"
            ),
            Owned::DatabaseFolder => format!(
                "group or others can write in it, so another user could plant or replace the database's files. megaplan-cloudd never changes a folder's mode: run `chmod 700 {p}` if the folder is yours alone, or choose another --db in a folder of your own (a missing one is created 0700)"
            ),
            Owned::Database | Owned::DatabaseCompanion => format!(
                "group or others can write it, so another user could change the daemon's registrations. megaplan-cloudd never changes a file's mode: run `chmod 600 {p}` if the file is yours alone, else move it aside (with no megaplan-cloudd running on it) or choose another --db; a new database is created 0600"
            ),
        }
    }
}

/// Create `dir` (and missing parents) with mode 0700, or check an existing one: a real
/// directory (not a symlink), owned by us, no group/other permission bits. Never chmods:
/// a folder we did not create is not ours to change.
pub fn ensure_private_dir(dir: &Path) -> Result<(), SocketError> {
    ensure_owned_dir(dir, Owned::SocketFolder)
}

/// Create `dir` (and missing parents) with mode 0700, or check an existing one by the rule of
/// `role` ([`check_owned`]). Never chmods.
pub fn ensure_owned_dir(dir: &Path, role: Owned) -> Result<(), SocketError> {
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            match std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
            {
                Ok(()) => {}
                // Lost a race with another creator: check what is there now.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(source) => {
                    return Err(SocketError::CreateDir {
                        dir: dir.to_path_buf(),
                        source,
                    });
                }
            }
        }
        Err(source) => {
            return Err(SocketError::Inspect {
                dir: dir.to_path_buf(),
                source,
            });
        }
        Ok(_) => {}
    }
    check_path(dir, role)
}

/// [`check_owned`] on what is at `p` now (not following a symlink).
pub fn check_path(p: &Path, role: Owned) -> Result<(), SocketError> {
    let meta = std::fs::symlink_metadata(p).map_err(|source| SocketError::Inspect {
        dir: p.to_path_buf(),
        source,
    })?;
    check_owned(p, &meta, current_uid(), role)
}

/// The one rule for "a path we own", on an existing path's facts (from lstat or fstat): not a
/// symlink, of the type `role` expects, owned by `me`, none of the mode bits `role` forbids.
pub fn check_owned(
    p: &Path,
    meta: &std::fs::Metadata,
    me: u32,
    role: Owned,
) -> Result<(), SocketError> {
    let right_type = if role.is_dir() {
        meta.is_dir()
    } else {
        meta.is_file()
    };
    if meta.file_type().is_symlink() || !right_type {
        return Err(SocketError::NotADirectory {
            dir: p.to_path_buf(),
            role,
        });
    }
    if meta.uid() != me {
        return Err(SocketError::NotOurs {
            dir: p.to_path_buf(),
            owner: meta.uid(),
            me,
            role,
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & role.forbidden() != 0 {
        return Err(SocketError::OpenToOthers {
            dir: p.to_path_buf(),
            mode,
            role,
        });
    }
    Ok(())
}

/// Holds a single-instance lock for the daemon's lifetime.
pub struct InstanceLock {
    _file: File,
    pub path: PathBuf,
}

/// flock `lock_path` (created 0600) and record our pid in it; `busy` builds the refusal from
/// the holder's record and the error.
fn take_lock(
    lock_path: &Path,
    busy: impl FnOnce(String, std::io::Error) -> SocketError,
) -> Result<InstanceLock, SocketError> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(lock_path)
        .map_err(|source| SocketError::OpenLock {
            path: lock_path.to_path_buf(),
            source,
        })?;
    if let Err(e) = file.try_lock() {
        let holder = std::fs::read_to_string(lock_path).unwrap_or_default();
        let e = match e {
            std::fs::TryLockError::Error(e) => e,
            std::fs::TryLockError::WouldBlock => {
                std::io::Error::from(std::io::ErrorKind::WouldBlock)
            }
        };
        return Err(busy(holder.trim().to_string(), e));
    }
    // Record who holds the lock, for the refusal message of the next one (through the locked
    // descriptor: the path is never followed again).
    let _ = file.set_len(0).and_then(|()| {
        (&file).write_all(
            format!(
                "pid {} version {}\n",
                std::process::id(),
                megaplan_cloud_api::VERSION
            )
            .as_bytes(),
        )
    });
    Ok(InstanceLock {
        _file: file,
        path: lock_path.to_path_buf(),
    })
}

/// `<db>.lock`: one daemon per database, whatever socket it serves.
pub fn db_lock_path(db: &Path) -> PathBuf {
    let mut name = db.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    db.with_file_name(name)
}

/// The files SQLite and the daemon keep beside the database `db`: `-wal`, `-shm`, `-journal`
/// and the `.lock` record.
pub fn db_companions(db: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = ["-wal", "-shm", "-journal"]
        .iter()
        .map(|suffix| {
            let mut name = db.as_os_str().to_os_string();
            name.push(suffix);
            PathBuf::from(name)
        })
        .collect();
    out.push(db_lock_path(db));
    out
}

/// The daemon's hold on its database for its whole life: a flock on the database file itself
/// (its inode, so a symlink or a hard link to it is the same lock), plus the `<db>.lock` record
/// naming the holder (and locked too, as daemons before the inode lock did).
///
/// The database's descriptor must stay open until the store is closed: closing any descriptor
/// of a file drops the POSIX locks SQLite holds on it in this process.
pub struct DatabaseLock {
    _db: File,
    _record: InstanceLock,
    pub path: PathBuf,
}

/// Take the database for this daemon. In order, each refusal naming the path and the fix:
/// - the database path itself is not a symlink (the lock is on the real file; the message names
///   the target to pass instead);
/// - an existing database, `-wal`, `-shm`, `-journal` and `.lock` are regular files of ours that
///   group/others cannot write (never adopted from another user, never chmodded);
/// - its folder is ours and not writable by group/others (a missing one is created 0700);
/// - a missing database is created 0600 with O_EXCL|O_NOFOLLOW; an existing one is opened with
///   O_NOFOLLOW and checked again on the open descriptor;
/// - no other process holds the inode's flock: a second daemon on the same file by any name is
///   refused with the holder's pid.
pub fn lock_database(db: &Path) -> Result<DatabaseLock, SocketError> {
    let me = current_uid();
    match std::fs::symlink_metadata(db) {
        Ok(m) if m.file_type().is_symlink() => {
            let target = std::fs::read_link(db)
                .map(|t| match db.parent() {
                    Some(parent) if t.is_relative() => {
                        megaplan_cloud_api::paths::absolutize(&t, parent)
                    }
                    _ => t,
                })
                .unwrap_or_default();
            // stat(2) follows the link without opening what it names.
            let in_use = std::fs::metadata(db)
                .ok()
                .and_then(|m| flock_holder(&m))
                .map(|pid| format!(" (megaplan-cloudd pid {pid} is using that database)"))
                .unwrap_or_default();
            return Err(SocketError::SymlinkedDatabase {
                db: db.to_path_buf(),
                target,
                in_use,
            });
        }
        Ok(m) => check_owned(db, &m, me, Owned::Database)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(SocketError::Inspect {
                dir: db.to_path_buf(),
                source,
            });
        }
    }
    for companion in db_companions(db) {
        match std::fs::symlink_metadata(&companion) {
            Ok(m) => check_owned(&companion, &m, me, Owned::DatabaseCompanion)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(SocketError::Inspect {
                    dir: companion,
                    source,
                });
            }
        }
    }
    if let Some(parent) = db.parent().filter(|p| !p.as_os_str().is_empty()) {
        ensure_owned_dir(parent, Owned::DatabaseFolder)?;
    }
    // The folder is ours and closed to others now: nobody else can add or swap files in it
    // between these checks and SQLite's opens.
    let in_folder = |e: SocketError| SocketError::DatabaseFolder {
        db: db.to_path_buf(),
        inner: Box::new(e),
    };
    let file = open_database_file(db).map_err(in_folder)?;
    let meta = file.metadata().map_err(|source| SocketError::Inspect {
        dir: db.to_path_buf(),
        source,
    })?;
    check_owned(db, &meta, me, Owned::Database)?;
    if let Err(e) = file.try_lock() {
        let source = match e {
            std::fs::TryLockError::Error(e) => e,
            std::fs::TryLockError::WouldBlock => {
                std::io::Error::from(std::io::ErrorKind::WouldBlock)
            }
        };
        let record = std::fs::read_to_string(db_lock_path(db)).unwrap_or_default();
        return Err(SocketError::DatabaseBusy {
            db: db.to_path_buf(),
            holder: holder_text(flock_holder(&meta), record.trim()),
            lock: db.to_path_buf(),
            source,
        });
    }
    let lock_path = db_lock_path(db);
    let record = take_lock(&lock_path, |holder, source| SocketError::DatabaseBusy {
        db: db.to_path_buf(),
        holder,
        lock: lock_path.clone(),
        source,
    })
    .map_err(|e| match e {
        // The lock sits beside the database: a folder that cannot hold it cannot hold the
        // database either, so say it in the database's terms, with the fix.
        e @ SocketError::OpenLock { .. } => in_folder(e),
        e => e,
    })?;
    Ok(DatabaseLock {
        _db: file,
        _record: record,
        path: db.to_path_buf(),
    })
}

/// Create the database file 0600 (O_EXCL|O_NOFOLLOW), or open the existing one without
/// following a symlink and without blocking on a FIFO (its type is checked on the descriptor).
fn open_database_file(db: &Path) -> Result<File, SocketError> {
    let created = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(db);
    match created {
        Ok(f) => Ok(f),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(db)
            .map_err(|source| SocketError::OpenLock {
                path: db.to_path_buf(),
                source,
            }),
        Err(source) => Err(SocketError::OpenLock {
            path: db.to_path_buf(),
            source,
        }),
    }
}

/// "pid N" of the holder (with the record's version when the record names the same pid), else
/// the record as written, else that the holder is unknown.
fn holder_text(pid: Option<u32>, record: &str) -> String {
    match pid {
        Some(pid) if record.starts_with(&format!("pid {pid} ")) => record.to_string(),
        Some(pid) => format!("pid {pid}"),
        None if !record.is_empty() => record.to_string(),
        None => "holder pid unknown".to_string(),
    }
}

/// The pid holding a flock on the file `meta` describes, from /proc/locks (Linux; `None`
/// elsewhere or when it cannot be read). Lines look like
/// `1: FLOCK  ADVISORY  WRITE 2967 fe:00:761888 0 EOF` (major and minor in hex).
fn flock_holder(meta: &std::fs::Metadata) -> Option<u32> {
    let text = std::fs::read_to_string("/proc/locks").ok()?;
    flock_holder_in(&text, meta.dev(), meta.ino(), std::process::id())
}

/// [`flock_holder`] on the text of /proc/locks. A line on the same inode number of another
/// device is used only when none matches the device too (stacked file systems may report the
/// lower device).
pub fn flock_holder_in(locks: &str, dev: u64, ino: u64, me: u32) -> Option<u32> {
    // Linux's dev_t encoding (glibc's gnu_dev_major/minor).
    let major = ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff);
    let minor = ((dev >> 12) & 0xffff_ff00) | (dev & 0xff);
    let mut same_inode = None;
    for line in locks.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        // Waiters are listed as `1: -> FLOCK ...`: only holders count.
        if f.get(1) != Some(&"FLOCK") {
            continue;
        }
        let (Some(pid), Some(id)) = (f.get(4).and_then(|p| p.parse::<u32>().ok()), f.get(5)) else {
            continue;
        };
        let mut parts = id.split(':');
        let (Some(maj), Some(min), Some(inode)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if pid == me || inode.parse::<u64>().ok() != Some(ino) {
            continue;
        }
        if u64::from_str_radix(maj, 16).ok() == Some(major)
            && u64::from_str_radix(min, 16).ok() == Some(minor)
        {
            return Some(pid);
        }
        same_inode.get_or_insert(pid);
    }
    same_inode
}

/// Bind the socket: private folder, single-instance flock, live-socket probe, stale unlink,
/// bind, chmod 0600. Returns a clear message on every refusal.
pub fn bind(socket: &Path) -> Result<(UnixListener, InstanceLock), SocketError> {
    let len = socket.as_os_str().len();
    if len > 100 {
        return Err(SocketError::PathTooLong {
            socket: socket.to_path_buf(),
            len,
        });
    }
    let dir = socket
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .ok_or_else(|| SocketError::NoFolder {
            socket: socket.to_path_buf(),
        })?;
    ensure_private_dir(dir)?;

    let lock_path = socket.with_extension("lock");
    let lock = take_lock(&lock_path, |holder, source| SocketError::SocketBusy {
        socket: socket.to_path_buf(),
        holder,
        lock: lock_path.clone(),
        source,
    })?;

    if socket.exists() {
        // The lock is ours, so nothing of ours is serving there; still, never unlink a socket
        // that answers (another program, or a daemon from an older layout).
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            return Err(SocketError::LiveSocket {
                socket: socket.to_path_buf(),
            });
        }
        std::fs::remove_file(socket).map_err(|source| SocketError::Socket {
            what: "remove stale socket",
            socket: socket.to_path_buf(),
            source,
        })?;
    }
    let std_listener =
        std::os::unix::net::UnixListener::bind(socket).map_err(|source| SocketError::Socket {
            what: "bind",
            socket: socket.to_path_buf(),
            source,
        })?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
        SocketError::Socket {
            what: "chmod 0600",
            socket: socket.to_path_buf(),
            source,
        }
    })?;
    std_listener
        .set_nonblocking(true)
        .map_err(|source| SocketError::Socket {
            what: "configure",
            socket: socket.to_path_buf(),
            source,
        })?;
    let listener = UnixListener::from_std(std_listener).map_err(|source| SocketError::Socket {
        what: "listen on",
        socket: socket.to_path_buf(),
        source,
    })?;
    Ok((listener, lock))
}

/// Connection and request limits of [`serve`].
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub max_body_bytes: usize,
}

/// How often each kind of refusal may be logged.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// Serve `app` on `listener` until `shutdown`, then let open connections finish their current
/// request (graceful) and return.
pub async fn serve(
    listener: UnixListener,
    app: Router,
    limits: Limits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let me = current_uid();
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let connections = TaskTracker::new();
    let refused_uid = RateLimitedLog::new(REFUSAL_LOG_EVERY);
    let refused_full = RateLimitedLog::new(REFUSAL_LOG_EVERY);
    let accept_failed = RateLimitedLog::new(REFUSAL_LOG_EVERY);
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning on the error.
                    if let Some(held) = accept_failed.admit(Instant::now()) {
                        tracing::warn!(held_back = held, "cannot accept a connection: {e}");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let peer = Peer::of(&stream);
        if !peer_allowed(peer.uid, me) {
            if let Some(held) = refused_uid.admit(Instant::now()) {
                tracing::warn!(
                    peer_uid = ?peer.uid,
                    peer_pid = ?peer.pid,
                    held_back = held,
                    "refused connection from another user (this daemon serves uid {me} only)"
                );
            }
            drop(stream);
            continue;
        }
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            if let Some(held) = refused_full.admit(Instant::now()) {
                tracing::warn!(
                    max_connections = limits.max_connections,
                    held_back = held,
                    "refused a connection: too many open connections"
                );
            }
            drop(stream);
            continue;
        };
        let app = app.clone();
        let stop = shutdown.clone();
        connections.spawn(async move {
            serve_connection(stream, peer, app, limits, stop).await;
            drop(permit);
        });
    }
    connections.close();
    connections.wait().await;
    Ok(())
}

async fn serve_connection(
    stream: UnixStream,
    peer: Peer,
    app: Router,
    limits: Limits,
    stop: CancellationToken,
) {
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let app = app.clone();
        let peer = peer.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(app, peer, limits, req).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// One request: refuse an over-long declared body at once, read the body within the body
/// timeout and size limit, then hand the buffered request to the router.
async fn handle(
    app: Router,
    peer: Peer,
    limits: Limits,
    req: hyper::Request<hyper::body::Incoming>,
) -> Response {
    let resp = read_and_route(app, peer, limits, req).await;
    if let Some(refusal) = resp.extensions().get::<RefusedEarly>() {
        super::guard::note_refusal(
            &refusal.method,
            &refusal.path,
            resp.status().as_u16(),
            resp.extensions().get::<super::guard::Refusal>(),
        );
    }
    resp
}

/// Marks an answer given before the router saw the request (413, 408, an unreadable body):
/// the router's own refusals are logged by `guard::log_refusals`.
#[derive(Clone)]
struct RefusedEarly {
    method: String,
    path: String,
}

async fn read_and_route(
    app: Router,
    peer: Peer,
    limits: Limits,
    req: hyper::Request<hyper::body::Incoming>,
) -> Response {
    let early = RefusedEarly {
        method: req.method().to_string(),
        path: req.uri().path().to_string(),
    };
    let closing = |resp: Response| {
        let mut resp = closing(resp);
        resp.extensions_mut().insert(early.clone());
        resp
    };
    if let Some(len) = declared_length(req.headers())
        && len > limits.max_body_bytes as u64
    {
        return closing(refusal(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "request body of {len} bytes is over the limit of {} bytes",
                limits.max_body_bytes
            ),
        ));
    }
    let (mut parts, body) = req.into_parts();
    let limited = http_body_util::Limited::new(body, limits.max_body_bytes);
    let bytes = match tokio::time::timeout(limits.body_timeout, limited.collect()).await {
        Err(_) => {
            return closing(refusal(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {}s",
                    limits.body_timeout.as_secs()
                ),
            ));
        }
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return closing(refusal(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "request body is over the limit of {} bytes",
                    limits.max_body_bytes
                ),
            ));
        }
        Ok(Err(e)) => {
            return closing(refusal(
                StatusCode::BAD_REQUEST,
                format!("cannot read the request body: {e}"),
            ));
        }
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    parts.extensions.insert(ConnectInfo(peer));
    let req = axum::http::Request::from_parts(parts, Body::from(bytes));
    match app.oneshot(req).await {
        Ok(resp) => resp,
        Err(never) => match never {},
    }
}

/// The `Content-Length` a request declares, if any (an unparsable one is left to hyper).
pub fn declared_length(headers: &axum::http::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn refusal(status: StatusCode, message: String) -> Response {
    ApiError::with_status(status, ErrorBody::new(ErrorCode::InvalidArgs, message)).into_response()
}

/// The connection is closed after this response: the rest of the request is never read.
fn closing(mut resp: Response) -> Response {
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_dir_is_created_0700_and_never_chmodded() {
        let tmp = tempfile::tempdir().unwrap();
        let fresh = tmp.path().join("a").join("run");
        ensure_private_dir(&fresh).unwrap();
        assert_eq!(std::fs::metadata(&fresh).unwrap().mode() & 0o777, 0o700);
        // Missing parents are ours too: private from the first mkdir.
        assert_eq!(
            std::fs::metadata(tmp.path().join("a")).unwrap().mode() & 0o777,
            0o700
        );

        let shared = tmp.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let err = ensure_private_dir(&shared).unwrap_err().to_string();
        assert!(
            err.contains("mode 1777") && err.contains("chmod 700"),
            "{err}"
        );
        // Refused, and left exactly as it was (sticky bit included).
        assert_eq!(std::fs::metadata(&shared).unwrap().mode() & 0o7777, 0o1777);

        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&fresh, &link).unwrap();
        assert!(
            ensure_private_dir(&link)
                .unwrap_err()
                .to_string()
                .contains("symlink")
        );
    }

    #[test]
    fn foreign_owner_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let meta = std::fs::symlink_metadata(tmp.path()).unwrap();
        let err = check_owned(tmp.path(), &meta, meta.uid() + 1, Owned::SocketFolder)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not by us"), "{err}");
        check_owned(tmp.path(), &meta, meta.uid(), Owned::SocketFolder).unwrap();
    }

    #[test]
    fn rate_limited_log_admits_one_line_per_period_and_counts_the_rest() {
        let log = RateLimitedLog::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(log.admit(t0), Some(0));
        let admitted = (1..20_000u64)
            .filter(|i| log.admit(t0 + Duration::from_micros(*i)).is_some())
            .count();
        assert_eq!(admitted, 0);
        assert_eq!(log.admit(t0 + Duration::from_secs(11)), Some(19_999));
    }

    #[test]
    fn only_our_uid_is_allowed() {
        assert!(peer_allowed(Some(1000), 1000));
        assert!(!peer_allowed(Some(0), 1000));
        assert!(!peer_allowed(None, 1000));
    }

    #[test]
    fn second_database_lock_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let db = tmp.path().join("state").join("cloudd.db");
        let lock = lock_database(&db).unwrap();
        assert_eq!(lock.path, db);
        assert_eq!(std::fs::metadata(&db).unwrap().mode() & 0o777, 0o600);
        assert_eq!(
            std::fs::metadata(tmp.path().join("state")).unwrap().mode() & 0o777,
            0o700
        );
        let err = lock_database(&db).err().unwrap().to_string();
        assert!(err.contains("already using the database"), "{err}");
        // A hard link is the same inode, so the same lock.
        let hard = tmp.path().join("state").join("hard.db");
        std::fs::hard_link(&db, &hard).unwrap();
        let err = lock_database(&hard).err().unwrap().to_string();
        assert!(err.contains("already using the database"), "{err}");
        // A symlink is refused, naming the real path to pass instead.
        let sym = tmp.path().join("state").join("sym.db");
        std::os::unix::fs::symlink(&db, &sym).unwrap();
        let err = lock_database(&sym).err().unwrap().to_string();
        assert!(
            err.contains("is a symlink") && err.contains(&format!("pass --db {}", db.display())),
            "{err}"
        );
        drop(lock);
        lock_database(&db).unwrap();
    }

    #[test]
    fn database_files_others_can_write_are_refused_and_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let db = tmp.path().join("x.db");
        std::fs::write(&db, b"").unwrap();
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o666)).unwrap();
        let err = lock_database(&db).err().unwrap().to_string();
        assert!(
            err.contains(&db.display().to_string()) && err.contains("chmod 600"),
            "{err}"
        );
        assert_eq!(std::fs::metadata(&db).unwrap().mode() & 0o777, 0o666);
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o600)).unwrap();
        let wal = tmp.path().join("x.db-wal");
        std::fs::write(&wal, b"").unwrap();
        std::fs::set_permissions(&wal, std::fs::Permissions::from_mode(0o622)).unwrap();
        let err = lock_database(&db).err().unwrap().to_string();
        assert!(err.contains(&wal.display().to_string()), "{err}");
        std::fs::remove_file(&wal).unwrap();
        // A folder others can write in is refused for the database too.
        let shared = tmp.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let err = lock_database(&shared.join("y.db"))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("mode 1777") && err.contains("another --db"),
            "{err}"
        );
        assert!(!shared.join("y.db").exists());
        lock_database(&db).unwrap();
    }

    #[test]
    fn the_flock_holder_is_read_from_proc_locks() {
        let locks = "1: FLOCK  ADVISORY  WRITE 2967 fe:00:761888 0 EOF\n\
                     2: -> FLOCK  ADVISORY  WRITE 4000 fe:00:42 0 EOF\n\
                     3: POSIX  ADVISORY  WRITE 4001 fe:00:42 0 EOF\n\
                     4: FLOCK  ADVISORY  WRITE 4002 08:01:42 0 EOF\n\
                     5: FLOCK  ADVISORY  WRITE 4003 fe:00:42 0 EOF\n";
        // st_dev 0xfe00 is major 0xfe, minor 0.
        assert_eq!(flock_holder_in(locks, 0xfe00, 42, 1), Some(4003));
        // Only another device has the inode: that holder is named.
        assert_eq!(flock_holder_in(locks, 0x0900, 42, 1), Some(4002));
        assert_eq!(flock_holder_in(locks, 0xfe00, 43, 1), None);
        assert_eq!(flock_holder_in(locks, 0xfe00, 761888, 2967), None);
    }

    #[tokio::test]
    async fn second_bind_is_refused_and_stale_socket_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let sock = tmp.path().join("run").join("cloudd.sock");
        let (_l, lock) = bind(&sock).unwrap();
        let err = bind(&sock).err().unwrap().to_string();
        assert!(err.contains("already serving"), "{err}");
        assert_eq!(std::fs::metadata(&sock).unwrap().mode() & 0o777, 0o600);
        drop(_l);
        drop(lock);
        // The socket file is left behind (stale); a new bind replaces it.
        assert!(sock.exists());
        let (_l2, _lock2) = bind(&sock).unwrap();
    }
}
