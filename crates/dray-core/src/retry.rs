//! Retry policy: how many deliveries a job gets and how long it waits between them.

use crate::limits::{Invalid, Limits, check_range};

/// Exponential backoff with full jitter: before retry `n` (after attempt `n` failed) the job waits
/// a uniformly random time in `[0, min(cap, base * factor^(n-1))]`. Full jitter spreads a burst of
/// failures over the whole window instead of retrying them in lockstep.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    pub base_ms: u64,
    pub factor: f64,
    pub cap_ms: u64,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            base_ms: Limits::BACKOFF_BASE_MS_DEFAULT,
            factor: Limits::BACKOFF_FACTOR_DEFAULT,
            cap_ms: Limits::BACKOFF_CAP_MS_DEFAULT,
        }
    }
}

impl Backoff {
    pub fn validate(&self) -> Result<(), Invalid> {
        check_range("backoff.base_ms", self.base_ms, 1, Limits::BACKOFF_BASE_MS_MAX, "")?;
        if !self.factor.is_finite() {
            return Err(Invalid::new("backoff.factor", "must be a finite number"));
        }
        check_range("backoff.factor", self.factor, Limits::BACKOFF_FACTOR_MIN, Limits::BACKOFF_FACTOR_MAX, "")?;
        check_range("backoff.cap_ms", self.cap_ms, self.base_ms, Limits::BACKOFF_CAP_MS_MAX, "")?;
        Ok(())
    }

    /// The upper end of the jitter window after `attempt` (1-based) failed.
    pub fn window_ms(&self, attempt: u32) -> u64 {
        let exponent = attempt.saturating_sub(1).min(1_000) as i32;
        let window = self.base_ms as f64 * self.factor.powi(exponent);
        if window.is_finite() && window < self.cap_ms as f64 { window as u64 } else { self.cap_ms }
    }

    /// The delay before the next attempt, given a uniformly random `random` (any `u64`).
    pub fn delay_ms(&self, attempt: u32, random: u64) -> u64 {
        let window = self.window_ms(attempt);
        // Inclusive window: a multiply-shift maps `random` onto 0..=window without modulo bias
        // worth caring about at these sizes.
        ((random as u128 * (window as u128 + 1)) >> 64) as u64
    }
}

/// How many deliveries a job gets, and the backoff between them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Deliveries in all, lease expiries included. After this many the job is dead.
    pub attempts_max: u32,
    pub backoff: Backoff,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy { attempts_max: Limits::ATTEMPTS_MAX_DEFAULT, backoff: Backoff::default() }
    }
}

impl RetryPolicy {
    pub fn validate(&self) -> Result<(), Invalid> {
        check_range("attempts_max", self.attempts_max, 1, Limits::ATTEMPTS_MAX_MAX, "")?;
        self.backoff.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_grows_then_caps() {
        let b = Backoff { base_ms: 100, factor: 2.0, cap_ms: 1_000 };
        let windows: Vec<u64> = (1..=6).map(|a| b.window_ms(a)).collect();
        assert_eq!(windows, [100, 200, 400, 800, 1_000, 1_000]);
        assert_eq!(b.window_ms(u32::MAX), 1_000);
    }

    #[test]
    fn delay_spans_the_whole_window() {
        let b = Backoff { base_ms: 100, factor: 2.0, cap_ms: 1_000 };
        assert_eq!(b.delay_ms(1, 0), 0);
        assert_eq!(b.delay_ms(1, u64::MAX), 100);
        assert_eq!(b.delay_ms(1, u64::MAX / 2), 50);
        assert_eq!(b.delay_ms(9, u64::MAX), 1_000);
    }

    #[test]
    fn validation_names_field_and_limit() {
        let p = RetryPolicy { attempts_max: 0, ..RetryPolicy::default() };
        assert_eq!(p.validate().unwrap_err().to_string(), "attempts_max: is 0; allowed is 1 to 1000");
        let mut p = RetryPolicy::default();
        p.backoff.factor = f64::NAN;
        assert_eq!(p.validate().unwrap_err().field, "backoff.factor");
        let mut p = RetryPolicy::default();
        p.backoff.cap_ms = 10;
        assert_eq!(p.validate().unwrap_err().to_string(), "backoff.cap_ms: is 10; allowed is 1000 to 2592000000");
    }
}
