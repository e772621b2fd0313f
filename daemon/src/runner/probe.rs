//! The core probe: which of the core's module names the runner's Python can import
//! (`crate::chain::launcher` parses the answer and remembers it per runner).

use crate::cloud_yaml::CORE_MODULES;

/// The line [`probe_script`] prints: `MEGAPLAN_CORE <python> <module or ->`.
pub const PROBE_PREFIX: &str = "MEGAPLAN_CORE ";

/// Python (3.8+) that prints the first importable module of argv[1:], or `-`. `find_spec` of a
/// submodule imports only its parent packages, never the core itself (which is slow to start).
const PROBE_PY: &str = r#"import importlib.util, sys
found = "-"
for name in sys.argv[1:]:
    try:
        if importlib.util.find_spec(name) is not None:
            found = name
            break
    except Exception:
        pass
print(found)
"#;

/// Shell that prints [`PROBE_PREFIX`] `<python> <module>`: `python` when the runner has it
/// (the original ran `python -m ...`), else `python3`.
pub fn probe_script() -> String {
    format!(
        "py=python; command -v \"$py\" >/dev/null 2>&1 || py=python3; \
         printf '{PROBE_PREFIX}%s %s\\n' \"$py\" \"$(\"$py\" -c {} {} 2>/dev/null || echo -)\"",
        crate::shell::quote(PROBE_PY),
        CORE_MODULES.join(" ")
    )
}
