//! A queue's circuit breaker as pure data: the policy an operator sets, the state a store keeps,
//! and the decisions both stores apply (may this queue lease, and how many jobs; what an attempt's
//! outcome does to the state).
//!
//! The states: `closed` (leases flow; outcomes are counted in a sliding window), `open` (the queue
//! leases nothing; its jobs wait without being charged an attempt), `half_open` (at most `probes`
//! trial leases in all; every probe succeeding closes the breaker, any probe failing opens it
//! again). A breaker opens when its window holds at least `min_attempts` outcomes and the failed
//! share reaches `failure_ratio`; it turns half-open `open_ms` after it opened. An operator may
//! force it open (it then stays open until closed by hand) or closed.
//!
//! The window is [`BUCKETS`] buckets of `window_ms / BUCKETS` each (rounded up): an outcome lands
//! in the bucket of its time, and the window is the newest `BUCKETS` buckets, so it slides one
//! bucket at a time and covers between nine tenths of `window_ms` and all of it.
//!
//! An outcome counts towards the state in which its attempt was leased: an attempt leased before
//! the breaker last changed state (a job that was already running when it opened, or a
//! non-probe attempt still running when it turns half-open) changes nothing when it ends.
//!
//! No I/O and no clock: `now` and the attempt's lease time are parameters.

use crate::limits::check_range;
use crate::{Invalid, Limits, Timestamp};

/// Buckets of a breaker's sliding window.
pub const BUCKETS: usize = 10;

/// A queue's breaker settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BreakerPolicy {
    /// The failed share of the window's attempts that opens the breaker: `0 < r <= 1`.
    pub failure_ratio: f64,
    pub window_ms: u64,
    /// The breaker never opens on fewer attempts in its window than this.
    pub min_attempts: u32,
    /// How long it stays open before it turns half-open.
    pub open_ms: u64,
    /// Trial leases granted while half-open.
    pub probes: u32,
}

impl BreakerPolicy {
    /// Errors name the field as `breaker.<field>` and its limits.
    pub fn validate(&self) -> Result<(), Invalid> {
        let r = self.failure_ratio;
        if !(r.is_finite() && r > 0.0 && r <= 1.0) {
            return Err(Invalid::new(
                "breaker.failure_ratio",
                format!("is {r}; allowed is greater than 0 and at most 1"),
            ));
        }
        check_range(
            "breaker.window_ms",
            self.window_ms,
            Limits::BREAKER_WINDOW_MS_MIN,
            Limits::BREAKER_WINDOW_MS_MAX,
            " ms",
        )?;
        check_range("breaker.min_attempts", self.min_attempts, 1, Limits::BREAKER_MIN_ATTEMPTS_MAX, "")?;
        check_range("breaker.open_ms", self.open_ms, Limits::BREAKER_OPEN_MS_MIN, Limits::BREAKER_OPEN_MS_MAX, " ms")?;
        check_range("breaker.probes", self.probes, 1, Limits::BREAKER_PROBES_MAX, "")?;
        Ok(())
    }

    /// The width of one window bucket.
    pub fn bucket_ms(&self) -> u64 {
        self.window_ms.div_ceil(BUCKETS as u64).max(1)
    }

    fn bucket_of(&self, t: Timestamp) -> i64 {
        t.as_millis().div_euclid(self.bucket_ms() as i64)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub const ALL: [BreakerState; 3] = [BreakerState::Closed, BreakerState::Open, BreakerState::HalfOpen];

    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    pub fn parse(s: &str) -> Option<BreakerState> {
        BreakerState::ALL.into_iter().find(|b| b.as_str() == s)
    }

    /// Position in [`BreakerState::ALL`] and in [`Breaker::transitions`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The value of the `dray_queue_breaker_state` gauge: 0 closed, 1 half-open, 2 open (the
    /// larger, the less the queue leases).
    pub fn gauge(self) -> u8 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        }
    }
}

/// One bucket of the window: outcomes counted in bucket number `start` (time / bucket width).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    pub start: i64,
    pub attempts: u32,
    pub failures: u32,
}

/// How an attempt of the queue ended, as the breaker sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerOutcome {
    /// Completed.
    Success,
    /// Failed (retryable or not) or its lease expired.
    Failure,
    /// Ended without a verdict (the job was cancelled): not counted; a probe's slot is given back.
    Void,
}

/// A breaker's state. A store keeps one per queue that has a [`BreakerPolicy`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Breaker {
    pub state: BreakerState,
    /// Opened by an operator: stays open (never turns half-open) until closed by hand.
    pub forced: bool,
    /// When it entered its state (`None`: closed since the breaker was configured).
    pub changed_at: Option<Timestamp>,
    /// Open and not forced: when it turns half-open.
    pub half_open_at: Option<Timestamp>,
    /// Half-open: trial leases granted, and how many of them succeeded.
    pub probes_granted: u32,
    pub probes_succeeded: u32,
    /// Transitions into each state ever made, indexed by [`BreakerState::index`].
    pub transitions: [u64; 3],
    /// The sliding window (closed only; empty otherwise).
    pub window: [Bucket; BUCKETS],
}

/// How many jobs a lease may take from a queue, by its breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Allowance {
    /// Closed: no limit from the breaker.
    All,
    /// Open (0) or half-open (the probes left).
    Up(u32),
}

impl Allowance {
    /// The number of jobs allowed out of `wanted`.
    pub fn of(self, wanted: usize) -> usize {
        match self {
            Allowance::All => wanted,
            Allowance::Up(n) => wanted.min(n as usize),
        }
    }
}

/// What a breaker looks like at a moment: for the API, the dashboard and metrics.
#[derive(Clone, Debug, PartialEq)]
pub struct BreakerView {
    pub state: BreakerState,
    pub forced: bool,
    pub changed_at: Option<Timestamp>,
    pub half_open_at: Option<Timestamp>,
    pub probes_granted: u32,
    pub probes_succeeded: u32,
    pub window_attempts: u64,
    pub window_failures: u64,
    pub transitions: [u64; 3],
}

impl Default for Breaker {
    fn default() -> Breaker {
        Breaker::new()
    }
}

impl Breaker {
    /// A closed breaker with an empty window.
    pub fn new() -> Breaker {
        Breaker {
            state: BreakerState::Closed,
            forced: false,
            changed_at: None,
            half_open_at: None,
            probes_granted: 0,
            probes_succeeded: 0,
            transitions: [0; 3],
            window: [Bucket::default(); BUCKETS],
        }
    }

    /// Whether `other` differs from this one only in its window (what a store need not log).
    pub fn same_but_window(&self, other: &Breaker) -> bool {
        Breaker { window: other.window, ..self.clone() } == *other
    }

    pub fn window_reset(&mut self) {
        self.window = [Bucket::default(); BUCKETS];
    }

    fn enter(&mut self, state: BreakerState, now: Timestamp) {
        self.state = state;
        self.changed_at = Some(now);
        self.half_open_at = None;
        self.probes_granted = 0;
        self.probes_succeeded = 0;
        self.transitions[state.index()] += 1;
        self.window_reset();
    }

    fn open(&mut self, policy: &BreakerPolicy, now: Timestamp) {
        self.enter(BreakerState::Open, now);
        self.forced = false;
        self.half_open_at = Some(now.add_ms(policy.open_ms));
    }

    /// Turns an open breaker whose time is up half-open. Returns whether it changed.
    pub fn tick(&mut self, now: Timestamp) -> bool {
        match (self.state, self.forced, self.half_open_at) {
            (BreakerState::Open, false, Some(at)) if at <= now => {
                self.enter(BreakerState::HalfOpen, now);
                true
            }
            _ => false,
        }
    }

    /// How many jobs a lease at `now` may take (turning an open breaker half-open first when its
    /// time is up).
    pub fn allowance(&mut self, policy: &BreakerPolicy, now: Timestamp) -> Allowance {
        self.tick(now);
        match self.state {
            BreakerState::Closed => Allowance::All,
            BreakerState::Open => Allowance::Up(0),
            BreakerState::HalfOpen => Allowance::Up(policy.probes.saturating_sub(self.probes_granted)),
        }
    }

    /// Records `n` jobs leased under the allowance: probes, while half-open.
    pub fn granted(&mut self, n: usize) {
        if self.state == BreakerState::HalfOpen {
            self.probes_granted = self.probes_granted.saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
        }
    }

    /// Counts the outcome of an attempt leased at `leased_at`, ending at `now`. Returns the state
    /// entered, if the outcome changed it.
    pub fn record(
        &mut self,
        policy: &BreakerPolicy,
        now: Timestamp,
        leased_at: Timestamp,
        outcome: BreakerOutcome,
    ) -> Option<BreakerState> {
        if self.changed_at.is_some_and(|at| leased_at < at) {
            // Leased under an earlier state: not this state's business.
            return None;
        }
        match (self.state, outcome) {
            (BreakerState::Open, _) => None,
            (BreakerState::Closed, BreakerOutcome::Void) => None,
            (BreakerState::Closed, _) => {
                let n = policy.bucket_of(now);
                let slot = n.rem_euclid(BUCKETS as i64) as usize;
                let b = &mut self.window[slot];
                if b.start != n || (b.attempts == 0 && b.failures == 0) {
                    *b = Bucket { start: n, attempts: 0, failures: 0 };
                }
                b.attempts = b.attempts.saturating_add(1);
                if outcome == BreakerOutcome::Failure {
                    b.failures = b.failures.saturating_add(1);
                }
                let (attempts, failures) = self.window_counts(policy, now);
                if attempts >= u64::from(policy.min_attempts)
                    && failures as f64 >= policy.failure_ratio * attempts as f64
                {
                    self.open(policy, now);
                    return Some(BreakerState::Open);
                }
                None
            }
            (BreakerState::HalfOpen, BreakerOutcome::Void) => {
                self.probes_granted = self.probes_granted.saturating_sub(1);
                None
            }
            (BreakerState::HalfOpen, BreakerOutcome::Failure) => {
                self.open(policy, now);
                Some(BreakerState::Open)
            }
            (BreakerState::HalfOpen, BreakerOutcome::Success) => {
                self.probes_succeeded = self.probes_succeeded.saturating_add(1);
                if self.probes_succeeded >= policy.probes {
                    self.enter(BreakerState::Closed, now);
                    return Some(BreakerState::Closed);
                }
                None
            }
        }
    }

    /// An operator's order: open (forced, until closed by hand) or closed (window emptied).
    /// Returns the state entered, if it changed.
    pub fn force(&mut self, open: bool, now: Timestamp) -> Option<BreakerState> {
        if open {
            if self.state == BreakerState::Open && self.forced {
                return None;
            }
            self.enter(BreakerState::Open, now);
            self.forced = true;
            Some(BreakerState::Open)
        } else {
            self.forced = false;
            if self.state == BreakerState::Closed {
                self.window_reset();
                return None;
            }
            self.enter(BreakerState::Closed, now);
            Some(BreakerState::Closed)
        }
    }

    /// Attempts and failures in the window ending at `now`.
    pub fn window_counts(&self, policy: &BreakerPolicy, now: Timestamp) -> (u64, u64) {
        let n = policy.bucket_of(now);
        let oldest = n - (BUCKETS as i64 - 1);
        self.window
            .iter()
            .filter(|b| b.start >= oldest && b.start <= n)
            .fold((0, 0), |(a, f), b| (a + u64::from(b.attempts), f + u64::from(b.failures)))
    }

    /// The breaker as a lease at `now` would find it (an open breaker whose time is up shows
    /// half-open: the store records that change at the queue's next lease).
    pub fn view(&self, policy: &BreakerPolicy, now: Timestamp) -> BreakerView {
        let mut b = self.clone();
        b.tick(now);
        let (window_attempts, window_failures) = b.window_counts(policy, now);
        BreakerView {
            state: b.state,
            forced: b.forced,
            changed_at: b.changed_at,
            half_open_at: b.half_open_at,
            probes_granted: b.probes_granted,
            probes_succeeded: b.probes_succeeded,
            window_attempts,
            window_failures,
            transitions: b.transitions,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use BreakerOutcome::{Failure, Success, Void};
    use BreakerState::{Closed, HalfOpen, Open};

    const POLICY: BreakerPolicy =
        BreakerPolicy { failure_ratio: 0.5, window_ms: 10_000, min_attempts: 4, open_ms: 5_000, probes: 2 };
    const T: Timestamp = Timestamp(1_000_000);

    /// Feeds outcomes (each at `now`, leased just before) and returns the state after each.
    fn check(b: &mut Breaker, now: Timestamp, outcomes: &[BreakerOutcome]) -> Vec<BreakerState> {
        outcomes
            .iter()
            .map(|&o| {
                b.record(&POLICY, now, now, o);
                b.state
            })
            .collect()
    }

    #[test]
    fn opens_at_the_ratio_only_after_min_attempts() {
        let mut b = Breaker::new();
        assert_eq!(check(&mut b, T, &[Failure, Failure, Failure]), [Closed, Closed, Closed]);
        assert_eq!(check(&mut b, T, &[Failure]), [Open], "4 attempts, all failed");
        let mut b = Breaker::new();
        assert_eq!(check(&mut b, T, &[Success, Success, Success, Failure, Failure]), [Closed; 5]);
        assert_eq!(check(&mut b, T, &[Failure]), [Open], "3 of 6 reaches 0.5");
        assert_eq!(b.half_open_at, Some(T.add_ms(5_000)));
        assert_eq!(b.window_counts(&POLICY, T), (0, 0), "the window empties when it opens");
    }

    #[test]
    fn window_slides_by_buckets() {
        let mut b = Breaker::new();
        check(&mut b, T, &[Failure, Failure, Failure]);
        assert_eq!(b.window_counts(&POLICY, T), (3, 3));
        assert_eq!(b.window_counts(&POLICY, T.add_ms(9_000)), (3, 3));
        assert_eq!(b.window_counts(&POLICY, T.add_ms(10_000)), (0, 0));
        // Old failures gone, one more failure does not open it.
        assert_eq!(check(&mut b, T.add_ms(10_000), &[Failure]), [Closed]);
    }

    #[test]
    fn half_open_probes_then_closed_or_open_again() {
        let mut b = Breaker::new();
        check(&mut b, T, &[Failure; 4]);
        assert_eq!(b.allowance(&POLICY, T.add_ms(4_999)), Allowance::Up(0));
        let t = T.add_ms(5_000);
        assert_eq!(b.allowance(&POLICY, t), Allowance::Up(2));
        assert_eq!(b.state, HalfOpen);
        b.granted(2);
        assert_eq!(b.allowance(&POLICY, t), Allowance::Up(0));
        // A late outcome of an attempt leased while it was open or closed does not count.
        assert_eq!(b.record(&POLICY, t, T, Failure), None);
        assert_eq!(b.record(&POLICY, t, t, Success), None);
        assert_eq!(b.record(&POLICY, t, t, Success), Some(Closed));
        assert_eq!(b.transitions, [1, 1, 1]);

        let mut b = Breaker::new();
        check(&mut b, T, &[Failure; 4]);
        b.allowance(&POLICY, t);
        b.granted(1);
        assert_eq!(b.record(&POLICY, t, t, Failure), Some(Open));
        assert_eq!(b.half_open_at, Some(t.add_ms(5_000)));
    }

    #[test]
    fn a_cancelled_probe_gives_its_slot_back() {
        let mut b = Breaker::new();
        check(&mut b, T, &[Failure; 4]);
        let t = T.add_ms(5_000);
        b.allowance(&POLICY, t);
        b.granted(2);
        assert_eq!(b.record(&POLICY, t, t, Void), None);
        assert_eq!(b.allowance(&POLICY, t), Allowance::Up(1));
    }

    #[test]
    fn forced_open_stays_until_closed() {
        let mut b = Breaker::new();
        assert_eq!(b.force(true, T), Some(Open));
        assert_eq!(b.allowance(&POLICY, T.add_ms(100_000_000)), Allowance::Up(0));
        assert_eq!(b.force(true, T), None);
        assert_eq!(b.force(false, T.add_ms(1)), Some(Closed));
        assert!(!b.forced);
        assert_eq!(b.allowance(&POLICY, T.add_ms(1)), Allowance::All);
    }

    #[test]
    fn validation_names_field_and_limit() {
        let bad = |f: fn(&mut BreakerPolicy), field: &str| {
            let mut p = POLICY;
            f(&mut p);
            assert_eq!(p.validate().unwrap_err().field, field);
        };
        POLICY.validate().unwrap();
        bad(|p| p.failure_ratio = 0.0, "breaker.failure_ratio");
        bad(|p| p.failure_ratio = 1.5, "breaker.failure_ratio");
        bad(|p| p.failure_ratio = f64::NAN, "breaker.failure_ratio");
        bad(|p| p.window_ms = 999, "breaker.window_ms");
        bad(|p| p.min_attempts = 0, "breaker.min_attempts");
        bad(|p| p.open_ms = Limits::BREAKER_OPEN_MS_MAX + 1, "breaker.open_ms");
        bad(|p| p.probes = 0, "breaker.probes");
    }
}
