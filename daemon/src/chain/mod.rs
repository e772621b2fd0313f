//! The chain domain: spec and state parsing, the one-round-trip observation, effective-status
//! classification, the chain summary, and the supervise decision; what can go wrong in them is a
//! [`error::ChainError`]. Everything here except the
//! remote script text is a pure function of its inputs.

pub mod classify;
pub mod compat;
pub mod decide;
pub mod error;
pub mod launcher;
pub mod liveness;
pub mod observe;
pub mod resume;
pub mod spec;
pub mod state;
pub mod summary;
