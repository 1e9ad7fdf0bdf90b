//! Rate limits as pure arithmetic: a token bucket kept as one number.
//!
//! A [`Rate`] allows `limit` leases per `per_ms`, with bursts of up to `burst`. Its state is the
//! generic cell rate algorithm's "theoretical arrival time" (`tat`, nanoseconds on the server's
//! clock): each lease pushes it one emission interval (`per_ms / limit`) further, and a lease is
//! allowed while `tat` is less than `burst` intervals ahead of now. A bucket that has been idle
//! is full, so a `tat` at or before now means the same as no state at all, and a store may forget
//! it then. Integers throughout, so both stores compute the same answers.

use crate::limits::{Invalid, Limits, check_range};
use crate::time::Timestamp;

const NANOS_PER_MS: i64 = 1_000_000;

/// `limit` leases per `per_ms`, up to `burst` at once after a quiet spell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rate {
    pub limit: u32,
    pub per_ms: u64,
    pub burst: u32,
}

impl Rate {
    /// Checks each field against its limit; `field` names the option (`rate`, `group_rate`).
    pub fn validate(&self, field: &'static str) -> Result<(), Invalid> {
        let named = |e: Invalid| Invalid::new(format!("{field}.{}", e.field), e.message);
        check_range("limit", self.limit, 1, Limits::RATE_LIMIT_MAX, "").map_err(named)?;
        check_range("per_ms", self.per_ms, 1, Limits::RATE_PER_MS_MAX, "").map_err(named)?;
        check_range("burst", self.burst, 1, Limits::RATE_LIMIT_MAX, "").map_err(named)?;
        Ok(())
    }

    /// Nanoseconds between two leases at the steady rate (at least 1).
    pub fn interval_ns(&self) -> i64 {
        let ns = i128::from(self.per_ms) * i128::from(NANOS_PER_MS) / i128::from(self.limit.max(1));
        i64::try_from(ns).unwrap_or(i64::MAX).max(1)
    }

    /// How far ahead of now `tat` may be while a lease is still allowed.
    fn tolerance_ns(&self) -> i64 {
        self.interval_ns().saturating_mul(i64::from(self.burst.max(1)) - 1)
    }

    /// How many of `want` leases the bucket allows at `now`, and the bucket's state after
    /// granting them. `tat` is the current state (`None`: never used or forgotten).
    pub fn take(&self, tat: Option<i64>, now: Timestamp, want: u32) -> (u32, i64) {
        let now_ns = now.as_millis().saturating_mul(NANOS_PER_MS);
        let interval = self.interval_ns();
        let mut tat = tat.unwrap_or(now_ns).max(now_ns);
        let limit = now_ns.saturating_add(self.tolerance_ns());
        let mut granted = 0;
        while granted < want && tat <= limit {
            tat = tat.saturating_add(interval);
            granted += 1;
        }
        (granted, tat)
    }

    /// Whether one lease is allowed at `now`; when not, the first millisecond at which it is.
    pub fn ready(&self, tat: Option<i64>, now: Timestamp) -> Result<(), Timestamp> {
        let now_ns = now.as_millis().saturating_mul(NANOS_PER_MS);
        let Some(tat) = tat else { return Ok(()) };
        let free_at = tat.saturating_sub(self.tolerance_ns());
        if free_at <= now_ns {
            Ok(())
        } else {
            // Round up: a lease at the returned millisecond is allowed.
            Err(Timestamp::from_millis(free_at.saturating_add(NANOS_PER_MS - 1) / NANOS_PER_MS))
        }
    }

    /// Whether a bucket in state `tat` is full at `now`, so its state can be forgotten.
    pub fn idle(tat: i64, now: Timestamp) -> bool {
        tat <= now.as_millis().saturating_mul(NANOS_PER_MS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    #[test]
    fn a_full_bucket_allows_its_burst_then_the_steady_rate() {
        let rate = Rate { limit: 10, per_ms: 1_000, burst: 3 };
        let (granted, tat) = rate.take(None, at(0), 10);
        assert_eq!(granted, 3, "a full bucket allows exactly the burst");
        assert_eq!(rate.ready(Some(tat), at(0)), Err(at(100)), "the next token arrives one interval later");
        assert_eq!(rate.take(Some(tat), at(99), 1).0, 0);
        let (granted, tat) = rate.take(Some(tat), at(100), 5);
        assert_eq!(granted, 1, "one interval buys one lease");
        // Over a long run the rate is the limit, whatever the burst.
        let (mut tat, mut total) = (tat, 0);
        for ms in (101..=10_100).step_by(7) {
            let (g, t) = rate.take(Some(tat), at(ms), 100);
            tat = t;
            total += g;
        }
        assert!((99..=101).contains(&total), "10 per second over 10 s gave {total}");
    }

    #[test]
    fn an_idle_bucket_refills_to_its_burst_and_no_further() {
        let rate = Rate { limit: 1, per_ms: 1_000, burst: 2 };
        let (_, tat) = rate.take(None, at(0), 2);
        assert!(!Rate::idle(tat, at(1_000)));
        assert!(Rate::idle(tat, at(2_000)));
        assert_eq!(rate.take(Some(tat), at(1_000_000), 10).0, 2, "a long quiet spell still allows only the burst");
    }

    #[test]
    fn fast_rates_do_not_round_to_unlimited() {
        let rate = Rate { limit: Limits::RATE_LIMIT_MAX, per_ms: 1, burst: 1 };
        assert!(rate.interval_ns() >= 1);
        let (granted, _) = rate.take(None, at(0), 1_000);
        assert_eq!(granted, 1);
    }

    #[test]
    fn validation_names_the_option_and_the_limit() {
        let bad = Rate { limit: 0, per_ms: 1_000, burst: 1 };
        let e = bad.validate("group_rate").unwrap_err();
        assert_eq!(e.field, "group_rate.limit");
        assert!(e.message.contains("1,000,000") || e.message.contains("1000000"), "{}", e.message);
        let bad = Rate { limit: 1, per_ms: Limits::RATE_PER_MS_MAX + 1, burst: 1 };
        assert_eq!(bad.validate("rate").unwrap_err().field, "rate.per_ms");
    }
}
