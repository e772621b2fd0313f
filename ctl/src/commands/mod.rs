//! One file per command family: the request it sends and the renderer of its typed answer,
//! written for the question the person asked.

pub mod chain;
pub mod dashboard;
pub mod fleet;
pub mod history;
pub mod local;
pub mod notifications;
pub mod plan;
pub mod quarantine;
pub mod registration;
pub mod run;
pub mod runner;
