//! The session budget of one held ssh connection. sshd opens at most `MaxSessions` sessions
//! (OpenSSH's default: 10) on one connection and refuses the next one; every remote command,
//! rsync/scp copy and resident observer run over the ControlMaster is one session. The daemon
//! therefore counts them: one budget per connection, `ssh.max_sessions` minus
//! [`RESERVED_SESSIONS`] (one for `attach`, which the client runs over the same master, and one
//! spare), at most [`MAX_BUDGET`]. Resident observers hold a session for their whole life and
//! may take all but [`COMMAND_SESSIONS`] of them, so commands always get a turn. A request that
//! finds the budget used up waits in line (a fair semaphore) for at most [`SESSION_WAIT`], then
//! fails with an error saying what holds the sessions; it never opens a second connection.

use super::error::ProviderError;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use crate::cloud_yaml::{DEFAULT_MAX_SESSIONS, MAX_MAX_SESSIONS, MIN_MAX_SESSIONS};

/// Sessions of `MaxSessions` the daemon never uses: `attach` and one spare
/// ([`MIN_MAX_SESSIONS`] is one more).
pub const RESERVED_SESSIONS: u32 = 2;

/// Sessions the resident observers always leave to commands.
pub const COMMAND_SESSIONS: usize = 2;

/// Upper bound of one connection's budget, whatever `MaxSessions` says.
pub const MAX_BUDGET: usize = 64;

/// Longest wait in line for a free session.
pub const SESSION_WAIT: Duration = Duration::from_secs(60);

/// The sessions of one connection.
#[derive(Debug)]
pub struct SessionBudget {
    /// The connection, for messages (`user@host port N`).
    what: String,
    max_sessions: u32,
    sessions: usize,
    observer_cap: usize,
    total: Arc<Semaphore>,
    observers: Arc<Semaphore>,
}

/// One session of the budget, given back when dropped.
#[derive(Debug)]
pub struct SessionLease {
    _session: OwnedSemaphorePermit,
    _observer: Option<OwnedSemaphorePermit>,
}

impl SessionBudget {
    /// The budget of a connection to a server whose `MaxSessions` is `max_sessions`.
    pub fn new(what: impl Into<String>, max_sessions: u32) -> Self {
        let usable = max_sessions.saturating_sub(RESERVED_SESSIONS).max(1);
        let sessions = usize::try_from(usable)
            .unwrap_or(MAX_BUDGET)
            .min(MAX_BUDGET);
        let observer_cap = sessions.saturating_sub(COMMAND_SESSIONS);
        SessionBudget {
            what: what.into(),
            max_sessions,
            sessions,
            observer_cap,
            total: Arc::new(Semaphore::new(sessions)),
            observers: Arc::new(Semaphore::new(observer_cap)),
        }
    }

    /// The `MaxSessions` this budget was made for.
    pub fn max_sessions(&self) -> u32 {
        self.max_sessions
    }

    /// Sessions the daemon may hold at once on this connection.
    pub fn sessions(&self) -> usize {
        self.sessions
    }

    /// How many resident observers may hold a session at once.
    pub fn observer_cap(&self) -> usize {
        self.observer_cap
    }

    /// Sessions held right now.
    pub fn in_use(&self) -> usize {
        self.sessions.saturating_sub(self.total.available_permits())
    }

    /// Sessions held by resident observers right now.
    pub fn observers_in_use(&self) -> usize {
        self.observer_cap
            .saturating_sub(self.observers.available_permits())
    }

    fn exhausted(&self, waited: Duration) -> ProviderError {
        let observers = self.observers_in_use();
        ProviderError::SshSessionsBusy {
            target: self.what.clone(),
            sessions: self.sessions,
            observers,
            commands: self.in_use().saturating_sub(observers),
            waited,
            max_sessions: self.max_sessions,
        }
    }

    async fn take(&self, wait: Duration) -> Result<OwnedSemaphorePermit, ProviderError> {
        let wait = wait.min(SESSION_WAIT);
        match tokio::time::timeout(wait, self.total.clone().acquire_owned()).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(_)) => Err(ProviderError::SshSessionsClosed {
                target: self.what.clone(),
            }),
            Err(_) => Err(self.exhausted(wait)),
        }
    }

    /// One session for a command: waits in line for at most `wait` (and [`SESSION_WAIT`]).
    pub async fn session(&self, wait: Duration) -> Result<SessionLease, ProviderError> {
        Ok(SessionLease {
            _session: self.take(wait).await?,
            _observer: None,
        })
    }

    /// One session for a resident observer, held for its life; `Ok(None)` when the observers
    /// already hold their share (the caller observes one-shot instead).
    pub async fn observer(&self, wait: Duration) -> Result<Option<SessionLease>, ProviderError> {
        let Ok(observer) = self.observers.clone().try_acquire_owned() else {
            return Ok(None);
        };
        Ok(Some(SessionLease {
            _session: self.take(wait).await?,
            _observer: Some(observer),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use megaplan_cloud_api::ErrorCode;

    #[test]
    fn the_budget_stays_below_max_sessions_and_leaves_commands_a_share() {
        let b = SessionBudget::new("h", DEFAULT_MAX_SESSIONS);
        assert_eq!((b.sessions(), b.observer_cap()), (8, 6));
        let b = SessionBudget::new("h", MIN_MAX_SESSIONS);
        assert_eq!((b.sessions(), b.observer_cap()), (1, 0));
        let b = SessionBudget::new("h", MAX_MAX_SESSIONS);
        assert_eq!(
            (b.sessions(), b.observer_cap()),
            (MAX_BUDGET, MAX_BUDGET - 2)
        );
    }

    #[tokio::test]
    async fn observers_take_their_share_and_commands_wait_in_line_then_fail_clearly() {
        let b = SessionBudget::new("root@h port 22", DEFAULT_MAX_SESSIONS);
        let mut observers = Vec::new();
        while let Some(l) = b.observer(SESSION_WAIT).await.unwrap() {
            observers.push(l);
        }
        assert_eq!(observers.len(), 6);
        assert_eq!((b.in_use(), b.observers_in_use()), (6, 6));
        let c1 = b.session(SESSION_WAIT).await.unwrap();
        let c2 = b.session(SESSION_WAIT).await.unwrap();
        assert_eq!(b.in_use(), 8);
        // Nothing free: a wait of 0 fails at once (a longer one waits in line, up to SESSION_WAIT).
        let e = megaplan_cloud_api::ErrorBody::from(b.session(Duration::ZERO).await.unwrap_err());
        assert_eq!(e.error, ErrorCode::ProviderFailed);
        assert!(e.message.contains("all 8 ssh sessions"), "{}", e.message);
        assert!(
            e.message
                .contains("6 held by resident observers, 2 by commands"),
            "{}",
            e.message
        );
        assert_eq!(e.extra["field"], "ssh.max_sessions");
        drop(c1);
        let c3 = b.session(SESSION_WAIT).await.unwrap();
        drop((c2, c3));
        observers.pop();
        assert_eq!((b.in_use(), b.observers_in_use()), (5, 5));
    }
}
