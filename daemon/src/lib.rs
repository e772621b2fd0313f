//! megaplan-cloudd: the resident daemon behind `megaplan-cloudctl`.
//!
//! Module map, top layer first (docs/design.md, "Layers of the daemon"; a module imports only
//! from layers below it, which `tests/layers.rs` checks):
//! - [`daemon`]: start-up (socket, locks, store, stored schedules) and graceful shutdown.
//! - [`http`]: the API on the Unix socket: accept loop and limits, one file per request family,
//!   the one error answer.
//! - [`workflow`]: what each command does, one file per command family.
//! - [`supervisor`]: running ticks (lock, slots, deadline, stored report), the tick itself, the
//!   chain it observes, the last-chain markers, pauses and stall detection.
//! - [`notify`]: watching that tells a human: transitions, the outbox.
//! - [`state`]: `AppState`, the one shared object.
//! - [`chain`]: chain spec/state, observation, classification, supervise decision.
//! - [`runner`]: every script sent to a runner, and the one layout of paths and names.
//! - [`provider`]: ssh, local, railway and kubernetes transports behind one trait.
//! - [`process`]: running local processes with deadlines and redacted streaming.
//! - [`render`]: deploy-dir rendering (Dockerfile, entrypoint, compose, railway.toml).
//! - [`store`]: the SQLite store (registrations, markers, tick reports).
//! - [`scheduler`], [`settings`], [`cloud_yaml`]: due times, daemon settings, the cloud.yaml
//!   model with its defaults and validation.
//! - [`shell`], [`redact`], [`yaml`], [`ratelog`]: POSIX quoting for every remote command
//!   string, the redaction rules applied to all remote output, the only YAML parser wrapper,
//!   log lines rate-limited per kind.

pub mod chain;
pub mod cloud_yaml;
pub mod daemon;
pub mod http;
pub mod notify;
pub mod process;
pub mod provider;
pub mod ratelog;
pub mod redact;
pub mod render;
pub mod runner;
pub mod scheduler;
pub mod settings;
pub mod shell;
pub mod state;
pub mod store;
pub mod supervisor;
pub mod workflow;
pub mod yaml;
