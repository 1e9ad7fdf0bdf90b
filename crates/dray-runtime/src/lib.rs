//! The engine around a store: the one production clock, and the maintenance loop.
//!
//! Generic over the store (`dray_store::Store`) and the clock ([`Clock`]), so the same code runs
//! on the embedded store, on PostgreSQL, and in the deterministic simulator with a
//! [`ManualClock`]. It never speaks HTTP or JSON and never decides what an event does to a job:
//! that is `dray_core::transition`, applied by the store.

pub mod clock;
pub mod maintenance;

pub use clock::{Clock, ManualClock, SystemClock};
pub use maintenance::{Maintenance, MaintenanceConfig, TickReport};
