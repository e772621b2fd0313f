//! Everything the daemon sends to a runner: every shell and Python script, built from one
//! layout of paths, names and exit codes ([`layout`]), with [`crate::shell`] quoting.
//!
//! - [`layout`]: the chain session name, the session-marker dir, the chain log, the exit codes
//!   the scripts answer with, the observation line's prefix; the same values for Python.
//! - [`observe`]: the observation script (`observe.py`), one-shot or resident (`resident.py`;
//!   `crate::provider::resident` keeps one such process per runner).
//! - [`mutation`]: the only script a supervise tick may run to act (restart or advance).
//! - [`launch`]: the scripts of `chain`, `bootstrap`, `chains`: checkout, preflight, start.
//! - [`fence`]: the launch gate: fencing tokens and the preflight, in one step with a launch.
//! - [`probe`]: which core module a runner's Python can import.
//! - [`group`]: the wrapper that runs a remote command in a process group of its own and the
//!   command that kills that group (client gone, deadline passed).
//! - [`python`]: the small Python scripts and the library they share.
//! - [`lenient`]: reading what a runner printed into types, an odd field read as absent.
//!
//! Runner-side Python lives in `.py` files here (`files.py`, `drivers.py`, `fence.py`, `observe.py`,
//! `resident.py`) and is sent as `python -c`: the layout constants first, then the files a
//! script needs, then one entry call.
//!
//! This layer calls only [`crate::shell`] and the config constants of [`crate::cloud_yaml`];
//! the chain domain, the providers and the workflows call it.

pub mod fence;
pub mod group;
pub mod launch;
pub mod layout;
pub mod lenient;
pub mod mutation;
pub mod observe;
pub mod probe;
pub mod python;
