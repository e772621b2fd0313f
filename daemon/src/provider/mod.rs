//! Providers: one trait, one file per transport. Command construction (argv and remote shell
//! strings) is pure and unit-tested; execution goes through [`crate::process`].

pub mod local;
pub mod railway;
pub mod ssh;
pub mod ssh_master;
