//! Pauses between retries of the worker's own requests (lease, ack): exponential, capped, with
//! "equal" jitter (half fixed, half random) so that many workers that lost the server together do
//! not come back in lockstep.

use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

#[derive(Debug)]
pub(crate) struct Backoff {
    first: Duration,
    cap: Duration,
    next: Duration,
    random: RandomState,
    draws: u64,
}

impl Backoff {
    pub(crate) fn new(first: Duration, cap: Duration) -> Backoff {
        Backoff { first, cap, next: first, random: RandomState::new(), draws: 0 }
    }

    pub(crate) fn next(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.cap);
        self.draws += 1;
        // A fresh hash of a counter under a randomly keyed hasher: uniform enough for jitter,
        // without a dependency on an RNG crate.
        let r = self.random.hash_one(self.draws);
        let half = base / 2;
        let fraction = (r >> 11) as f64 / (1u64 << 53) as f64;
        half + half.mul_f64(fraction)
    }

    pub(crate) fn reset(&mut self) {
        self.next = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_jitter_in_the_upper_half() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        for base_ms in [100, 200, 400, 400] {
            let d = b.next();
            assert!(d >= Duration::from_millis(base_ms / 2) && d <= Duration::from_millis(base_ms), "{d:?}");
        }
        b.reset();
        assert!(b.next() <= Duration::from_millis(100));
    }
}
