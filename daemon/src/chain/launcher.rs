//! Which launcher runs the megaplan core on a runner (the `megaplan.launcher` key,
//! docs/configuration.md).
//!
//! `megaplan.launcher` set: used as written. Unset: the runner is asked which of
//! [`CORE_MODULES`] its Python can import (the observation does it in its own round trip; other
//! commands ask once with [`probe_script`]), the answer is remembered per runner in
//! [`LauncherCache`], and forgotten when a core command fails with "No module named" so the
//! next command probes again.

use crate::chain::error::ChainError;
use crate::cloud_yaml::{CORE_MODULES, CloudSpec};
use std::collections::HashMap;
use std::sync::Mutex;

pub use crate::runner::probe::{PROBE_PREFIX, probe_script};

/// The launcher for an importable module under an interpreter.
pub fn launcher_for(python: &str, module: &str) -> String {
    format!("{python} -m {module}")
}

/// Parse [`probe_script`]'s output into a launcher.
pub fn parse_probe(stdout: &str) -> Result<String, ChainError> {
    let line = stdout
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix(PROBE_PREFIX.trim_end()))
        .map(str::trim)
        .ok_or(ChainError::NoProbeAnswer)?;
    let mut words = line.split_whitespace();
    match (words.next(), words.next()) {
        (Some(py), Some(module)) if CORE_MODULES.contains(&module) => Ok(launcher_for(py, module)),
        _ => Err(ChainError::NoCore),
    }
}

/// Whether a core command's output says the launcher's module is missing.
pub fn says_module_missing(text: &str) -> bool {
    text.contains("No module named")
}

/// Probed launchers, per runner (the cloud.yaml key). Memory only.
#[derive(Default)]
pub struct LauncherCache {
    known: Mutex<HashMap<String, String>>,
}

impl LauncherCache {
    pub fn get(&self, key: &str) -> Option<String> {
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    pub fn remember(&self, key: &str, launcher: &str) {
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.to_string(), launcher.to_string());
    }

    pub fn forget(&self, key: &str) {
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

/// The launcher when the operator set one; `None` means "probe".
pub fn configured(spec: &CloudSpec) -> Option<&str> {
    spec.megaplan.launcher.as_deref()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn run_probe(pythonpath: &std::path::Path) -> String {
        let out = Command::new("sh")
            .arg("-c")
            .arg(probe_script())
            .env("PYTHONPATH", pythonpath)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    fn package(root: &std::path::Path, dotted: &str) {
        let mut dir = root.to_path_buf();
        for part in dotted.split('.') {
            dir = dir.join(part);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("__init__.py"), "").unwrap();
        }
    }

    #[test]
    fn probe_finds_the_installed_module_and_prefers_arnold_pipelines() {
        let none = tempfile::tempdir().unwrap();
        let e = parse_probe(&run_probe(none.path())).unwrap_err();
        assert_eq!(e, ChainError::NoCore);
        let e = e.to_string();
        assert!(
            e.contains("arnold_pipelines.megaplan")
                && e.contains("arnold.pipelines.megaplan")
                && e.contains("megaplan.launcher"),
            "{e}"
        );

        let old = tempfile::tempdir().unwrap();
        package(old.path(), "arnold.pipelines.megaplan");
        let l = parse_probe(&run_probe(old.path())).unwrap();
        assert!(l.ends_with(" -m arnold.pipelines.megaplan"), "{l}");

        let both = tempfile::tempdir().unwrap();
        package(both.path(), "arnold.pipelines.megaplan");
        package(both.path(), "arnold_pipelines.megaplan");
        let l = parse_probe(&run_probe(both.path())).unwrap();
        assert!(l.ends_with(" -m arnold_pipelines.megaplan"), "{l}");
    }

    #[test]
    fn probe_output_parsing() {
        assert_eq!(
            parse_probe("motd\nMEGAPLAN_CORE python3 arnold_pipelines.megaplan\n").unwrap(),
            "python3 -m arnold_pipelines.megaplan"
        );
        assert!(parse_probe("MEGAPLAN_CORE python -\n").is_err());
        assert!(parse_probe("MEGAPLAN_CORE python evil;rm\n").is_err());
        assert!(parse_probe("").is_err());
        assert!(says_module_missing(
            "/usr/bin/python: No module named arnold.pipelines.megaplan"
        ));
    }

    #[test]
    fn cache_remembers_and_forgets() {
        let c = LauncherCache::default();
        assert_eq!(c.get("k"), None);
        c.remember("k", "python -m x");
        assert_eq!(c.get("k").as_deref(), Some("python -m x"));
        c.forget("k");
        assert_eq!(c.get("k"), None);
    }
}
