//! Parameters and results of the schedule operations.

use dray_core::schedule::{Fire, TickPlan};
use dray_core::{Invalid, JobId, Limits, Schedule, ScheduleName, ScheduleSpec, Timestamp, limits::check_range};

/// Create or replace a schedule.
#[derive(Clone, Debug)]
pub struct SchedulePut {
    pub now: Timestamp,
    pub spec: ScheduleSpec,
    /// Refuse with [`crate::Error::ScheduleExists`] instead of replacing.
    pub create_only: bool,
}

/// A schedule as a put left it, and whether it is new.
#[derive(Clone, Debug, PartialEq)]
pub struct ScheduleSaved {
    pub schedule: Schedule,
    pub created: bool,
}

/// Delete a schedule. Jobs it enqueued stay.
#[derive(Clone, Debug)]
pub struct ScheduleDelete {
    pub now: Timestamp,
    pub name: ScheduleName,
}

/// Pause or resume a schedule.
#[derive(Clone, Debug)]
pub struct SchedulePause {
    pub now: Timestamp,
    pub name: ScheduleName,
    pub paused: bool,
}

/// Enqueue a schedule's job now, outside its rule (an operator's "run now"). It ignores the
/// overlap policy and pausing, and leaves the cursor alone.
#[derive(Clone, Debug)]
pub struct ScheduleTrigger {
    pub now: Timestamp,
    pub name: ScheduleName,
    /// Picks the jitter.
    pub random: u64,
}

/// A tick pass over every due schedule: at most `limit` schedules are handled.
#[derive(Clone, Copy, Debug)]
pub struct SchedulesTick {
    pub now: Timestamp,
    pub limit: usize,
    /// Seeds the jitter of the jobs enqueued ([`jitter_random`]).
    pub seed: u64,
}

impl SchedulesTick {
    pub fn validate(&self) -> Result<(), Invalid> {
        check_range("limit", self.limit, 1, Limits::SCHEDULES_MAX, "")
    }
}

/// One fire of a tick pass (or a trigger) and what became of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TickFired {
    pub fire: Fire,
    /// The job enqueued; `None` when the overlap policy skipped it.
    pub job: Option<JobId>,
    /// A previous tick's job cancelled (`cancel_previous`) before this one was enqueued.
    pub cancelled: Option<JobId>,
}

/// What a tick pass (or a trigger) did to one schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ticked {
    pub name: ScheduleName,
    pub now: Timestamp,
    pub fired: Vec<TickFired>,
    /// Missed ticks: late past the grace (see [`TickPlan::missed`]).
    pub missed: u64,
    /// Missed ticks that got no job of their own.
    pub dropped: u64,
    pub next_at: Option<Timestamp>,
    /// Why a fire enqueued nothing, when it was refused (the template no longer matches its
    /// queue's schema).
    pub error: Option<String>,
}

impl Ticked {
    /// The outcome of `plan` before any job is enqueued.
    pub fn of(name: ScheduleName, now: Timestamp, plan: &TickPlan) -> Ticked {
        Ticked {
            name,
            now,
            fired: Vec::new(),
            missed: plan.missed,
            dropped: plan.dropped,
            next_at: plan.next_at,
            error: None,
        }
    }
}

/// The random value for the `i`-th job of a tick pass seeded with `seed` (splitmix64: a
/// different, well-spread value per job from one seed).
pub fn jitter_random(seed: u64, i: u64) -> u64 {
    let mut z = seed.wrapping_add(i.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
