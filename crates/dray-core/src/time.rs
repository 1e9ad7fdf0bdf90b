//! Time as plain numbers: milliseconds since the Unix epoch on the server's clock.
//!
//! The core never reads a clock. Callers pass `now`; durations are `u64` milliseconds named with
//! an `_ms` suffix. Millisecond resolution is what deadlines, backoff and run-at need; latency
//! measurements live in the runtime, not in job state.

use std::fmt;

/// An instant on the server's clock, in milliseconds since 1970-01-01T00:00:00Z.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub const ZERO: Timestamp = Timestamp(0);

    pub fn from_millis(ms: i64) -> Timestamp {
        Timestamp(ms)
    }

    pub fn as_millis(self) -> i64 {
        self.0
    }

    /// `self + ms`, saturating instead of overflowing: a far-future deadline stays far-future.
    pub fn add_ms(self, ms: u64) -> Timestamp {
        let ms = i64::try_from(ms).unwrap_or(i64::MAX);
        Timestamp(self.0.saturating_add(ms))
    }

    /// Milliseconds from `earlier` to `self`, zero if `earlier` is later.
    pub fn ms_since(self, earlier: Timestamp) -> u64 {
        u64::try_from(self.0.saturating_sub(earlier.0)).unwrap_or(0)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}
