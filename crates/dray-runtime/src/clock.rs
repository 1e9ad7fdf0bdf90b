//! Where `now` comes from: the [`Clock`] trait, the one production clock that reads real time
//! ([`SystemClock`]), and a controllable one for tests and the simulator ([`ManualClock`]).
//!
//! Everything else in Dray takes `now` as a value read from a `Clock`; nothing else reads the
//! system time. This module never sleeps and never schedules anything: waiting is tokio's job.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use dray_core::Timestamp;

/// The server's clock: every deadline, run-at and lease in Dray is measured on it.
pub trait Clock: Send + Sync + 'static {
    /// The current instant. Never goes backwards within one process.
    fn now(&self) -> Timestamp;
}

/// The production clock: the wall time read once, at construction, plus the monotonic time
/// elapsed since then.
///
/// Why not read the wall clock every time: the wall clock can be stepped (an operator's `date -s`,
/// NTP correcting a large offset, a VM resumed from a snapshot). A step forward of an hour would
/// expire every live lease at once and hand running jobs to a second worker while the first is
/// still working; a step backward would keep dead leases alive and deliver scheduled jobs late.
/// [`Instant`] is monotonic, so within one process a step changes nothing: leases last exactly
/// their duration, measured the way the contract requires ("durations use a monotonic clock").
///
/// What it costs, knowingly:
/// - Readings follow the wall clock as it was at start. A step taken while running is only seen
///   after a restart; NTP's slewing (small frequency corrections) does reach [`Instant`] on Linux
///   (`CLOCK_MONOTONIC`), so slow drift stays corrected.
/// - On Linux `CLOCK_MONOTONIC` does not advance while the machine is suspended: after a laptop
///   sleeps for an hour the server's `now` is an hour behind the wall clock until restart.
///   Leases are then extended by the suspension (never cut short), and scheduled jobs run that
///   much later. For a server that is the safe side to err on.
/// - Across a restart, `now` is re-read from the wall clock. If the wall clock went backwards while
///   the server was down, deadlines stored before the restart are further away than they were:
///   leases expire late, never early.
#[derive(Clone, Copy, Debug)]
pub struct SystemClock {
    /// The wall time at `origin`, in milliseconds since the Unix epoch.
    origin_wall: Timestamp,
    origin: Instant,
}

impl SystemClock {
    /// Reads the wall clock once; every later reading adds monotonic elapsed time to it.
    pub fn new() -> SystemClock {
        let origin = Instant::now();
        // Before 1970 only on a badly broken machine; treating it as the epoch keeps time
        // monotonic from there rather than failing to start.
        let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let ms = i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX);
        SystemClock { origin_wall: Timestamp::from_millis(ms), origin }
    }
}

impl Default for SystemClock {
    fn default() -> SystemClock {
        SystemClock::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let elapsed = self.origin.elapsed().as_millis();
        self.origin_wall.add_ms(u64::try_from(elapsed).unwrap_or(u64::MAX))
    }
}

/// A clock that moves only when told to. Clones share one reading, so a test can hold a clone
/// and move the time the runtime sees.
///
/// It does not wake anything up: a task sleeping in tokio does not notice [`ManualClock::advance`].
/// Tests that also need timers pair it with tokio's paused time.
#[derive(Clone, Debug, Default)]
pub struct ManualClock {
    ms: Arc<AtomicI64>,
}

impl ManualClock {
    pub fn new(start: Timestamp) -> ManualClock {
        ManualClock { ms: Arc::new(AtomicI64::new(start.as_millis())) }
    }

    /// Sets the time, forwards or (to simulate a broken clock) backwards.
    pub fn set(&self, at: Timestamp) {
        self.ms.store(at.as_millis(), Ordering::SeqCst);
    }

    /// Moves the time forward by `ms`, saturating far in the future.
    pub fn advance(&self, ms: u64) {
        let ms = i64::try_from(ms).unwrap_or(i64::MAX);
        let _ = self.ms.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |now| Some(now.saturating_add(ms)));
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_millis(self.ms.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_clones_share_the_time() {
        let clock = ManualClock::new(Timestamp(1_000));
        let seen_by_runtime = clock.clone();
        clock.advance(250);
        assert_eq!(seen_by_runtime.now(), Timestamp(1_250));
        clock.set(Timestamp(10));
        assert_eq!(seen_by_runtime.now(), Timestamp(10));
        clock.set(Timestamp(i64::MAX - 1));
        clock.advance(u64::MAX);
        assert_eq!(seen_by_runtime.now(), Timestamp(i64::MAX));
    }

    #[test]
    fn system_clock_starts_at_wall_time_and_never_goes_back() {
        let wall = || SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
        let before = wall();
        let clock = SystemClock::new();
        let after = wall();
        let first = clock.now().as_millis();
        assert!(before <= first, "{before} <= {first}");
        // Generous: the first reading is the start time plus the (tiny) time since.
        assert!(first <= after + 1_000, "{first} <= {after} + 1s");
        let mut last = clock.now();
        for _ in 0..1_000 {
            let now = clock.now();
            assert!(now >= last);
            last = now;
        }
    }
}
