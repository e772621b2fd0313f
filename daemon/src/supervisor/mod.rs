//! The supervisor: running ticks (one lock per registration, bounded concurrency, deadline,
//! the stored and published report), the tick itself (observe → decide → act), the chain a
//! tick looks at, and the last-chain markers it reads and writes.

pub mod events;
pub mod markers;
pub mod pause;
pub mod stall;
pub mod supervise;
pub mod target;
pub mod tick;
