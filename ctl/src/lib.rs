//! megaplan-cloudctl's library: the client of megaplan-cloudd's HTTP API over its Unix socket
//! ([`client`]), shared by the `megaplan-cloudctl` binary, the end-to-end tests and the
//! benchmark program.

pub mod client;

pub use hyper::Method;
