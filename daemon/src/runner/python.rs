//! The runner-side Python sent as `python -c`: the layout constants, the library files
//! (`files.py`, `drivers.py`) and one entry call per small script.

use std::sync::LazyLock;

/// The Python every small runner script starts with: the layout constants, `files.py` and
/// `drivers.py`.
pub(crate) fn py_library() -> &'static str {
    static TEXT: LazyLock<String> = LazyLock::new(|| {
        format!(
            "{}{}\n{}\n",
            super::layout::python_constants(),
            include_str!("files.py"),
            include_str!("drivers.py"),
        )
    });
    &TEXT
}

/// [`py_library`] followed by one entry call, e.g. `sys.exit(check_main(sys.argv[1:]))`.
pub(crate) fn py_main(entry: &str) -> String {
    format!("{}\n{entry}\n", py_library())
}

/// Exits `EXIT_OTHER_CHAIN` unless the session marker (argv 1) is absent or names the spec
/// (argv 2).
pub fn marker_check_py() -> String {
    py_main("sys.exit(marker_check_main(sys.argv[1:]))")
}

/// Writes a session marker; argv: marker file, session, workspace, spec, digest, kind, trigger.
pub fn marker_write_py() -> String {
    py_main("sys.exit(marker_write_main(sys.argv[1:]))")
}

/// Prints the identity digest of the session marker at argv 1 (empty when none).
pub fn marker_digest_py() -> String {
    py_main("sys.exit(marker_digest_main(sys.argv[1:]))")
}

/// Removes the chain state of the spec at argv 1 (`chain --fresh`).
pub fn remove_state_py() -> String {
    py_main("sys.exit(remove_state_main(sys.argv[1:]))")
}

/// Exits `EXIT_LIVE_RUNNER` when a process drives the chain of argv `spec workspace launcher`.
pub fn driver_check_py() -> String {
    py_main("sys.exit(check_main(sys.argv[1:]))")
}

/// After a start: returns once the new runner's driver is visible or its session is gone
/// (argv `spec workspace launcher session`; polls, no fixed sleep).
pub fn driver_wait_py() -> String {
    py_main("sys.exit(wait_main(sys.argv[1:]))")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_python_script_compiles() {
        let dir = tempfile::tempdir().unwrap();
        for (i, script) in [
            marker_check_py(),
            marker_write_py(),
            marker_digest_py(),
            remove_state_py(),
            driver_check_py(),
            driver_wait_py(),
            super::super::fence::gate_py().to_string(),
            super::super::observe::observe_py().to_string(),
            super::super::observe::resident_py().to_string(),
        ]
        .iter()
        .enumerate()
        {
            let file = dir.path().join(format!("s{i}.py"));
            std::fs::write(&file, script).unwrap();
            let out = std::process::Command::new("python3")
                .args(["-m", "py_compile"])
                .arg(&file)
                .output()
                .expect("python3 must be installed to test the runner-side scripts");
            assert!(
                out.status.success(),
                "script {i}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
