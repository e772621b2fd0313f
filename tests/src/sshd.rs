//! A private OpenSSH server on loopback; the "remote host" is this machine (root, with docker).
//!
//! Nothing global is touched except creating `/run/sshd` (sshd's privilege-separation directory) when missing.

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::util::{run_ok, wait_until};

const SSHD: &str = "/usr/sbin/sshd";

/// A running sshd; `Drop` kills it and every connection it serves, then removes its directory.
#[derive(Debug)]
pub struct Sshd {
    pub port: u16,
    /// Directory holding keys, configs and the log.
    pub dir: PathBuf,
    /// Private ed25519 key accepted for root.
    pub client_key: PathBuf,
    /// `known_hosts` with `[127.0.0.1]:<port>`'s host key.
    pub known_hosts: PathBuf,
    /// ssh client config for `Host 127.0.0.1` (use with `ssh -F`).
    pub ssh_config: PathBuf,
    /// sshd's own log (`-E`, LogLevel DEBUG1).
    pub log: PathBuf,
    config: PathBuf,
    /// Extra `sshd_config` lines (see [`Sshd::try_start_with`]).
    extra: String,
    child: Option<Child>,
    _tmp: tempfile::TempDir,
}

fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .map_err(|e| format!("cannot bind a loopback port: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("cannot read the bound port: {e}"))
}

fn keygen(path: &Path) -> Result<(), String> {
    run_ok(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "megaplan-e2e", "-f"])
            .arg(path),
    )
    .map(|_| ())
}

fn read_to_string(path: &Path) -> Result<String, String> {
    fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn write(path: &Path, content: &str) -> Result<(), String> {
    fs::write(path, content).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

impl Sshd {
    /// Starts a fresh sshd; panics with the reason when it cannot (see [`Sshd::try_start`]).
    pub fn start() -> Sshd {
        Sshd::try_start().unwrap_or_else(|e| panic!("cannot start the test sshd: {e}"))
    }

    /// Starts a fresh sshd on a random free loopback port with newly generated keys.
    pub fn try_start() -> Result<Sshd, String> {
        Sshd::try_start_with("")
    }

    /// [`Sshd::try_start`] with extra `sshd_config` lines appended (e.g. a `ForceCommand`).
    pub fn try_start_with(extra: &str) -> Result<Sshd, String> {
        Sshd::try_start_on(None, extra)
    }

    /// [`Sshd::try_start_with`] on a fixed loopback port (`None`: a free one).
    pub fn try_start_on(fixed_port: Option<u16>, extra: &str) -> Result<Sshd, String> {
        if !Path::new(SSHD).exists() {
            return Err(format!(
                "{SSHD} is missing (apt-get install openssh-server)"
            ));
        }
        fs::create_dir_all("/run/sshd").map_err(|e| format!("cannot create /run/sshd: {e}"))?;
        let tmp = tempfile::Builder::new()
            .prefix("megaplan-e2e-sshd")
            .tempdir()
            .map_err(|e| format!("cannot create a temp dir: {e}"))?;
        let dir = tmp.path().to_path_buf();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(|e| e.to_string())?;
        let host_key = dir.join("ssh_host_ed25519_key");
        let client_key = dir.join("id_ed25519");
        keygen(&host_key)?;
        keygen(&client_key)?;
        let authorized = dir.join("authorized_keys");
        write(
            &authorized,
            &read_to_string(&client_key.with_extension("pub"))?,
        )?;

        let mut sshd = Sshd {
            port: match fixed_port {
                Some(p) => p,
                None => free_port()?,
            },
            dir: dir.clone(),
            client_key,
            known_hosts: dir.join("known_hosts"),
            ssh_config: dir.join("ssh_config"),
            log: dir.join("sshd.log"),
            config: dir.join("sshd_config"),
            extra: extra.to_owned(),
            child: None,
            _tmp: tmp,
        };
        // A port freed by free_port() can be taken before sshd binds it: retry with another one.
        let mut last_err = String::new();
        for _ in 0..5 {
            sshd.write_configs(&host_key, &authorized)?;
            match sshd.spawn() {
                Ok(()) => return Ok(sshd),
                Err(e) => {
                    last_err = e;
                    sshd.stop();
                    if fixed_port.is_some() {
                        return Err(last_err);
                    }
                    sshd.port = free_port()?;
                }
            }
        }
        Err(last_err)
    }

    fn write_configs(&self, host_key: &Path, authorized: &Path) -> Result<(), String> {
        let dir = &self.dir;
        // The "remote" account is this machine's root; its shell would source root's dotfiles
        // (here: `pyenv init`, whose rehash lock can stall every command for 60 s when a killed
        // session leaves it behind). A private HOME keeps the bench independent of them.
        fs::create_dir_all(dir.join("remote-home"))
            .map_err(|e| format!("cannot create the remote home: {e}"))?;
        write(
            &self.config,
            &format!(
                "Port {port}\n\
                 ListenAddress 127.0.0.1\n\
                 HostKey {host_key}\n\
                 PidFile {pid}\n\
                 PermitRootLogin prohibit-password\n\
                 PubkeyAuthentication yes\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 AuthorizedKeysFile {authorized}\n\
                 StrictModes no\n\
                 UsePAM no\n\
                 LogLevel DEBUG1\n\
                 MaxStartups 100\n\
                 PrintMotd no\n\
                 X11Forwarding no\n\
                 SetEnv HOME={home}\n\
                 Subsystem sftp internal-sftp\n\
                 {extra}",
                extra = self.extra,
                home = dir.join("remote-home").display(),
                port = self.port,
                host_key = host_key.display(),
                pid = dir.join("sshd.pid").display(),
                authorized = authorized.display(),
            ),
        )?;
        let host_pub = read_to_string(&host_key.with_extension("pub"))?;
        let key_fields: Vec<&str> = host_pub.split_whitespace().take(2).collect();
        write(
            &self.known_hosts,
            &format!("[127.0.0.1]:{} {}\n", self.port, key_fields.join(" ")),
        )?;
        write(
            &self.ssh_config,
            &format!(
                "Host 127.0.0.1\n  \
                 HostName 127.0.0.1\n  \
                 Port {port}\n  \
                 User root\n  \
                 IdentityFile {key}\n  \
                 IdentitiesOnly yes\n  \
                 UserKnownHostsFile {kh}\n  \
                 GlobalKnownHostsFile /dev/null\n  \
                 StrictHostKeyChecking yes\n  \
                 BatchMode yes\n  \
                 LogLevel ERROR\n",
                port = self.port,
                key = self.client_key.display(),
                kh = self.known_hosts.display(),
            ),
        )
    }

    fn spawn(&mut self) -> Result<(), String> {
        // Readiness comes from the log, not a probe connection, which sshd would count as accepted.
        let marker = format!("Server listening on 127.0.0.1 port {}.", self.port);
        let listening_before = self.log_text().lines().filter(|l| *l == marker).count();
        let mut child = Command::new(SSHD)
            .arg("-D")
            .arg("-f")
            .arg(&self.config)
            .arg("-E")
            .arg(&self.log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run {SSHD}: {e}"))?;
        let log = self.log.clone();
        let mut exited = None;
        let up = wait_until(Duration::from_secs(10), || {
            exited = child.try_wait().ok().flatten();
            exited.is_some()
                || fs::read_to_string(&log)
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| *l == marker)
                    .count()
                    > listening_before
        });
        self.child = Some(child);
        if up && exited.is_none() {
            Ok(())
        } else {
            Err(format!(
                "sshd did not start on 127.0.0.1:{} ({}): {}",
                self.port,
                exited.map_or_else(|| "timeout".to_owned(), |s| s.to_string()),
                self.log_text()
            ))
        }
    }

    /// `-o`/`-i`/`-p` arguments equivalent to `ssh_config` (for callers that cannot pass `-F`).
    pub fn ssh_options(&self) -> Vec<String> {
        vec![
            "-p".to_owned(),
            self.port.to_string(),
            "-i".to_owned(),
            self.client_key.display().to_string(),
            "-o".to_owned(),
            "IdentitiesOnly=yes".to_owned(),
            "-o".to_owned(),
            format!("UserKnownHostsFile={}", self.known_hosts.display()),
            "-o".to_owned(),
            "GlobalKnownHostsFile=/dev/null".to_owned(),
            "-o".to_owned(),
            "StrictHostKeyChecking=yes".to_owned(),
            "-o".to_owned(),
            "BatchMode=yes".to_owned(),
        ]
    }

    /// `ssh -F <config> -p <port> root@127.0.0.1 <command>` (the command is one remote shell string).
    pub fn ssh(&self, command: &str) -> std::process::Output {
        Command::new("ssh")
            .arg("-F")
            .arg(&self.ssh_config)
            .args(["-p", &self.port.to_string(), "root@127.0.0.1", command])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run ssh: {e}"))
    }

    /// Kills the listener and every connection it serves (as a crash or reboot of the host would).
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let listener = child.id();
        let mut doomed = descendants(listener);
        doomed.push(listener);
        for pid in &doomed {
            if let Ok(pid) = i32::try_from(*pid) {
                // SAFETY: plain kill(2) on pids we just found as children of our own sshd.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
        let _ = child.wait();
        let port = self.port;
        wait_until(Duration::from_secs(5), || {
            TcpStream::connect(("127.0.0.1", port)).is_err()
        });
    }

    /// Stops and starts again on the same port with the same keys and configs.
    pub fn restart(&mut self) {
        self.stop();
        let mut last = String::new();
        for _ in 0..50 {
            match self.spawn() {
                Ok(()) => return,
                Err(e) => {
                    last = e;
                    if let Some(mut c) = self.child.take() {
                        let _ = c.kill();
                        let _ = c.wait();
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        panic!("cannot restart the test sshd on port {}: {last}", self.port);
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Number of TCP connections sshd accepted so far (its `Connection from` log lines).
    pub fn accepted_connections(&self) -> usize {
        self.log_text()
            .lines()
            .filter(|l| l.starts_with("Connection from "))
            .count()
    }

    /// Number of sessions sshd refused past its `MaxSessions` (its "no more sessions" lines).
    pub fn refused_sessions(&self) -> usize {
        self.log_text()
            .lines()
            .filter(|l| l.contains("no more sessions"))
            .count()
    }

    /// Number of `exec` channel requests (one per remote command run), from the DEBUG1 log.
    pub fn exec_requests(&self) -> usize {
        self.log_text()
            .lines()
            .filter(|l| l.contains("session_input_channel_req:") && l.ends_with(" req exec"))
            .count()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// All live descendants of `root` (from /proc/<pid>/stat parent links).
fn descendants(root: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // Format: "pid (comm) state ppid ..."; comm may hold spaces and parens, so split after the last ')'.
            let ppid = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().nth(1))
                .and_then(|s| s.parse::<u32>().ok());
            if let Some(ppid) = ppid {
                parents.push((pid, ppid));
            }
        }
    }
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let p = found[i];
        found.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == p)
                .map(|(pid, _)| *pid),
        );
        i += 1;
    }
    found.remove(0);
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descendants_include_grandchildren() {
        let mut child = Command::new("sh")
            .args(["-c", "sleep 30 & sleep 30; wait"])
            .spawn()
            .expect("spawn sh");
        let me = child.id();
        assert!(wait_until(Duration::from_secs(5), || descendants(me).len() >= 2));
        let found = descendants(me);
        assert!(!found.contains(&me));
        for pid in found {
            // SAFETY: kill(2) on our own descendants.
            unsafe {
                libc::kill(i32::try_from(pid).expect("pid fits"), libc::SIGKILL);
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}
