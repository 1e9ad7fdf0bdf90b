//! Latency quantiles over about the last minute, for the dashboard's live view.
//!
//! Prometheus histograms count from the process's start; a dashboard asking "how long do jobs
//! wait right now" needs a window. [`Recent`] keeps a small histogram per ten-second slot for the
//! last six slots, so memory is fixed (about 4 KiB, allocated on the first sample) whatever the
//! rate, and a quantile reads at most the last 50 to 60 seconds.
//!
//! Buckets are exact for 0 to 63 ms and then a quarter of an octave wide (about 19 %): a quantile
//! is the middle of its bucket, within about 9 % of the true value. Good enough to watch, not to
//! bill by; the Prometheus histograms are the record.

use std::sync::Mutex;

use dray_core::Timestamp;

/// Width of one slot.
const SLOT_MS: i64 = 10_000;
/// Slots kept: the window is the current slot plus the five before it.
const SLOTS: usize = 6;
/// Values below this many ms each have a bucket of their own.
const EXACT_MS: u64 = 64;
/// Buckets per doubling above [`EXACT_MS`].
const PER_OCTAVE: u32 = 4;
/// Doublings above [`EXACT_MS`] covered; longer values share the last bucket (2^32 ms is about
/// 50 days, longer than any lease or wait worth showing apart).
const OCTAVES: u32 = 26;
const BUCKETS: usize = EXACT_MS as usize + (PER_OCTAVE * OCTAVES) as usize;

/// A windowed histogram of millisecond durations (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct Recent {
    slots: Mutex<Option<Box<Slots>>>,
}

#[derive(Debug)]
struct Slots {
    /// The slot number (`now / SLOT_MS`) each row counts; a row with an older number is stale.
    number: [i64; SLOTS],
    counts: [[u32; BUCKETS]; SLOTS],
}

impl Recent {
    /// Counts one duration of `ms` that ended at `now`.
    pub fn record(&self, now: Timestamp, ms: u64) {
        let number = now.0.div_euclid(SLOT_MS);
        let row = number.rem_euclid(SLOTS as i64) as usize;
        let mut guard = self.slots.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let slots =
            guard.get_or_insert_with(|| Box::new(Slots { number: [i64::MIN; SLOTS], counts: [[0; BUCKETS]; SLOTS] }));
        if slots.number[row] != number {
            slots.number[row] = number;
            slots.counts[row] = [0; BUCKETS];
        }
        let count = &mut slots.counts[row][bucket(ms)];
        *count = count.saturating_add(1);
    }

    /// The `q` quantiles (0 to 1) of the durations counted in the window ending at `now`, in
    /// ms; `None` each when nothing was counted.
    pub fn quantiles<const N: usize>(&self, now: Timestamp, q: [f64; N]) -> [Option<f64>; N] {
        let current = now.0.div_euclid(SLOT_MS);
        let mut merged = [0u64; BUCKETS];
        {
            let guard = self.slots.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let Some(slots) = guard.as_ref() else {
                return [None; N];
            };
            for (number, counts) in slots.number.iter().zip(&slots.counts) {
                if current - (SLOTS as i64) < *number && *number <= current {
                    for (sum, c) in merged.iter_mut().zip(counts) {
                        *sum += u64::from(*c);
                    }
                }
            }
        }
        let total: u64 = merged.iter().sum();
        if total == 0 {
            return [None; N];
        }
        q.map(|q| {
            // Nearest rank: the smallest value with at least q of the samples at or below it.
            let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
            let mut seen = 0;
            let index = merged.iter().position(|c| {
                seen += c;
                seen >= rank
            });
            index.map(representative)
        })
    }
}

/// The bucket of a duration.
fn bucket(ms: u64) -> usize {
    if ms < EXACT_MS {
        return ms as usize;
    }
    // ms / EXACT_MS in [2^k, 2^(k+1)) with k = octave; the quarter within it from the next bits.
    let ratio = ms as f64 / EXACT_MS as f64;
    let steps = (ratio.log2() * f64::from(PER_OCTAVE)).floor() as usize;
    (EXACT_MS as usize + steps).min(BUCKETS - 1)
}

/// The value a bucket stands for: itself below [`EXACT_MS`], else its geometric middle.
fn representative(index: usize) -> f64 {
    if index < EXACT_MS as usize {
        return index as f64;
    }
    let steps = (index - EXACT_MS as usize) as f64 + 0.5;
    EXACT_MS as f64 * (steps / f64::from(PER_OCTAVE)).exp2()
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: [f64; 2] = [0.5, 0.95];

    #[test]
    fn empty_has_no_quantiles() {
        assert_eq!(Recent::default().quantiles(Timestamp(1_000), P), [None, None]);
    }

    #[test]
    fn small_values_are_exact() {
        let r = Recent::default();
        for ms in 1..=100u64 {
            r.record(Timestamp(5_000), ms % 50);
        }
        // 0..=49 twice each: the median is 24 and p95 is 47.
        assert_eq!(r.quantiles(Timestamp(5_000), P), [Some(24.0), Some(47.0)]);
    }

    #[test]
    fn large_values_are_within_a_tenth() {
        for ms in [64, 70, 500, 9_000, 120_000, 3_600_000, 86_400_000] {
            let r = Recent::default();
            r.record(Timestamp(0), ms);
            let [Some(got), _] = r.quantiles(Timestamp(0), P) else { panic!("a sample was recorded") };
            let error = (got - ms as f64).abs() / ms as f64;
            assert!(error < 0.1, "{ms} ms read back as {got}");
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn samples_leave_the_window_after_a_minute() {
        let r = Recent::default();
        r.record(Timestamp(0), 10);
        r.record(Timestamp(30_000), 20);
        assert_eq!(r.quantiles(Timestamp(59_999), [0.0, 1.0]), [Some(10.0), Some(20.0)]);
        // The first slot (0..10 s) is out of the window from 60 s on.
        assert_eq!(r.quantiles(Timestamp(60_000), [0.0, 1.0]), [Some(20.0), Some(20.0)]);
        // A new sample reuses the first slot's row and forgets what it held.
        r.record(Timestamp(60_001), 30);
        assert_eq!(r.quantiles(Timestamp(60_001), [0.0, 1.0]), [Some(20.0), Some(30.0)]);
        assert_eq!(r.quantiles(Timestamp(200_000), P), [None, None]);
    }
}
