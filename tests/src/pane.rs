//! A real terminal for the tests that check what a person sees: a tmux pane in a tmux server
//! private to the test (`-L`), its text read with `capture-pane`, its end told by
//! `tmux wait-for` (an event, not a poll).

use crate::{unique_suffix, wait_until};
use std::process::Command;
use std::time::Duration;

/// A pane of 200x50 in a tmux server private to the test (`-L`), running `sh -c script`. Its
/// prefix is C-a, so a C-b typed into it reaches a tmux inside (the runner's).
pub struct Pane {
    server: String,
}

impl Pane {
    pub fn start(script: &str, env: &[(&str, &str)]) -> Pane {
        Pane::start_sized(script, env, 200)
    }

    /// [`Pane::start`] with a pane `columns` wide (80: what a person's terminal often is).
    pub fn start_sized(script: &str, env: &[(&str, &str)], columns: u16) -> Pane {
        let server = format!("mp-ctl-{}", unique_suffix());
        let conf = std::env::temp_dir().join(format!("{server}.conf"));
        std::fs::write(
            &conf,
            "set -g prefix C-a\nunbind C-b\nset -g history-limit 5000\n",
        )
        .unwrap();
        let mut cmd = Command::new("tmux");
        cmd.args(["-L", &server, "-f"])
            .arg(&conf)
            .args([
                "new-session",
                "-d",
                "-x",
                &columns.to_string(),
                "-y",
                "50",
                "-s",
                "t",
            ])
            .args(["sh", "-c", script])
            .env_remove("NO_COLOR")
            .env("TERM", "xterm-256color");
        for (k, v) in env {
            cmd.env(k, v);
        }
        assert!(
            cmd.status().expect("tmux runs").success(),
            "tmux new-session failed"
        );
        Pane { server }
    }

    pub fn capture(&self) -> String {
        let out = Command::new("tmux")
            .args([
                "-L",
                &self.server,
                "capture-pane",
                "-p",
                "-J",
                "-S",
                "-",
                "-t",
                "t",
            ])
            .output()
            .expect("capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn send_keys(&self, keys: &[&str]) {
        let ok = Command::new("tmux")
            .args(["-L", &self.server, "send-keys", "-t", "t"])
            .args(keys)
            .status()
            .expect("send-keys");
        assert!(ok.success());
    }

    /// Waits until a line of the pane satisfies `want`; returns the pane. For states that have
    /// no event of their own (a spinner on screen): the pane is polled, and the deadline is only
    /// a safety net against a hang, generous enough for a loaded two-core CI machine.
    pub fn wait_for(&self, what: &str, want: impl Fn(&str) -> bool) -> String {
        let seen = wait_until(PANE_SAFETY_NET, || self.capture().lines().any(&want));
        let text = self.capture();
        assert!(seen, "the pane never showed {what}:\n{text}");
        text
    }

    /// Blocks until the pane's script runs `tmux wait-for -S channel` (an event, not a poll):
    /// `tmux wait-for channel` returns when it is signalled, or at once when it already was.
    /// The safety net only ends a hung test; then the pane is shown. Returns the pane.
    pub fn wait_signal(&self, channel: &str) -> String {
        let mut waiter = Command::new("tmux")
            .args(["-L", &self.server, "wait-for", channel])
            .spawn()
            .expect("tmux wait-for runs");
        let signalled = wait_until(PANE_SAFETY_NET, || matches!(waiter.try_wait(), Ok(Some(_))));
        if !signalled {
            let _ = waiter.kill();
            let _ = waiter.wait();
        }
        let text = self.capture();
        assert!(
            signalled,
            "the pane's script never signalled {channel}:\n{text}"
        );
        text
    }
}

/// How long a pane wait may take before the test calls it hung (`wait_until` triples it: 10 min).
/// Not a speed bound: a two-core CI machine running other tests beside this one made a 5 s step
/// take minutes.
pub const PANE_SAFETY_NET: Duration = Duration::from_secs(200);

/// The script suffix that signals `channel` to [`Pane::wait_signal`] from inside the pane
/// (`$TMUX` there names the test's own server), then keeps the pane open for capture.
pub fn signal_then_hold(channel: &str) -> String {
    format!("tmux wait-for -S {channel}; sleep 600")
}

impl Drop for Pane {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.server, "kill-server"])
            .status();
    }
}

/// Runs `script` in a fresh pane and returns the pane's text once the script has finished.
pub fn in_terminal(script: &str, env: &[(&str, &str)]) -> String {
    let pane = Pane::start(&format!("{script}; {}", signal_then_hold("done")), env);
    pane.wait_signal("done")
}

/// [`in_terminal`] in a pane 80 columns wide.
pub fn in_80_columns(script: &str, env: &[(&str, &str)]) -> String {
    let pane = Pane::start_sized(&format!("{script}; {}", signal_then_hold("done")), env, 80);
    pane.wait_signal("done")
}

/// Every line of a pane captured with `-J` (wrapped lines joined) fits 80 columns: nothing
/// wrapped.
pub fn assert_fits_80(text: &str) {
    for line in text.lines() {
        assert!(
            line.chars().count() <= 80,
            "a line wider than 80 columns ({}):\n{line}\n\n{text}",
            line.chars().count()
        );
    }
}
