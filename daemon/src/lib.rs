//! megaplan-cloudd: the resident daemon behind `megaplan-cloudctl`.
//!
//! Module map (one job each):
//! - [`yaml`]: the only YAML parser wrapper.
//! - [`cloud_yaml`]: cloud.yaml model, defaults and validation.
//! - [`shell`]: POSIX quoting for every remote command string.
//! - [`redact`]: the redaction rules applied to all remote output.
//! - [`render`]: deploy-dir rendering (Dockerfile, entrypoint, compose, railway.toml).
//! - [`chain`]: chain spec/state, observation, classification, supervise decision.
//! - [`runner`]: every script sent to a runner, and the one layout of paths and names.
//! - [`process`]: running local processes with deadlines and redacted streaming.
//! - [`provider`]: ssh, local and railway transports behind one trait.
//! - [`store`]: the SQLite store (registrations, markers, tick reports).
//! - [`settings`], [`server`], [`daemon`], [`scheduler`], [`tick`]: the resident service.
//! - [`workflow`]: what each cloud command does.
//! - [`notify`]: watching that tells a human: transitions, stall detection, the outbox.

pub mod chain;
pub mod cloud_yaml;
pub mod daemon;
pub mod http;
pub mod notify;
pub mod process;
pub mod provider;
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
