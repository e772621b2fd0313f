//! The end-to-end tests: one test binary, one module per area (pueue's `tests/daemon_tests.rs`
//! layout). Shared helpers live in the rig (`tests/src/`, crate `megaplan_cloud_e2e`), never in
//! a module. Run one test: `cargo test -p megaplan-cloud-e2e --test e2e -- module::name`.

mod agent_auth;
mod bench_smoke;
mod core_contact;
mod ctl_offline;
mod ctl_protocol;
mod ctl_terminal;
mod daemon_logs;
mod daemon_service;
mod dashboard;
mod entrypoint;
mod faults;
mod fencing;
mod liveness;
mod migrate_python;
mod notifications;
mod notify;
mod provider_kubernetes;
mod provider_local;
mod provider_railway;
mod provider_ssh;
mod secrets_at_rest;
mod security;
mod service_files;
mod supervisor_ssh;
mod workflow_local;
mod workflow_railway;
mod workflow_ssh;
