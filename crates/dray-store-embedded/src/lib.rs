//! The embedded store: Dray's default, one directory and no other service.
//!
//! Live job state is kept in memory with indexes by queue, state and time. Every change is
//! appended to a write-ahead log (records framed by length and CRC32C in segment files) and
//! acknowledged only once durable under the configured policy; concurrent operations share one
//! write and one fsync (group commit). Background snapshots let old segments go; recovery loads
//! the newest snapshot and replays the log after it. This crate never speaks HTTP or SQL.

pub mod fs;
pub mod wal;

mod codec;
mod lanes;
mod lock;
mod open;
mod schedule;
mod state;
mod store;
mod token;

pub use open::{EmbeddedConfig, OpenError};
pub use store::{EmbeddedStore, Health};
pub use wal::Durability;
