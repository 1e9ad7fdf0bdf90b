//! Schedules: a rule that produces jobs, and the pure decision of what one tick pass does.
//!
//! A schedule keeps a cursor, `next_at`: the earliest tick not yet handled. A tick pass at `now`
//! takes every tick from the cursor up to `now`, decides by the misfire policy which of them
//! become jobs, and moves the cursor past `now`. Stores apply that decision together with the
//! jobs it creates, atomically, so a tick (schedule, instant) is enqueued at most once whatever
//! crashes or nodes do. Whether an earlier tick's job still runs (the overlap policy) is the
//! store's to look up; [`Overlap::decide`] says what to do with the answer.

use std::fmt;
use std::sync::Arc;

use crate::cron::Rule;
use crate::ids::{JobId, validate_name};
use crate::job::{JobState, NewJob};
use crate::limits::{Invalid, Limits, check_range};
use crate::time::Timestamp;

/// A schedule's name: unique in a store, used in URLs, metric labels and job records.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ScheduleName(Arc<str>);

impl ScheduleName {
    pub fn new(name: &str) -> Result<ScheduleName, Invalid> {
        validate_name("name", name, Limits::SCHEDULE_NAME_BYTES_MAX)?;
        Ok(ScheduleName(Arc::from(name)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ScheduleName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

impl fmt::Display for ScheduleName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The tick a job was enqueued for: which schedule, and the instant the tick stands for (for a
/// manual trigger, the instant of the trigger).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ScheduleTick {
    pub name: ScheduleName,
    pub at: Timestamp,
}

/// What a tick pass does with ticks it finds missed: due longer ago than the schedule's
/// `misfire_grace_ms` (after downtime, a paused schedule, or a clock step).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Misfire {
    /// One job for all missed ticks, standing for the latest of them.
    RunOnce,
    /// No job for missed ticks.
    Skip,
    /// A job for each missed tick, the latest `cap` of them; older ones are dropped.
    RunAll { cap: u32 },
}

impl Misfire {
    pub fn as_str(self) -> &'static str {
        match self {
            Misfire::RunOnce => "run_once",
            Misfire::Skip => "skip",
            Misfire::RunAll { .. } => "run_all",
        }
    }
}

/// What a new tick does while the job of the schedule's previous tick is still waiting or
/// running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overlap {
    /// Enqueue the new job anyway.
    Allow,
    /// Enqueue nothing for this tick.
    Skip,
    /// Cancel the previous job (a running one by request), then enqueue the new one.
    CancelPrevious,
}

/// What to do with one fire given the state of the previous tick's job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OverlapAction {
    Enqueue,
    Skip,
    CancelThenEnqueue(JobId),
}

impl Overlap {
    pub const ALL: [Overlap; 3] = [Overlap::Allow, Overlap::Skip, Overlap::CancelPrevious];

    pub fn as_str(self) -> &'static str {
        match self {
            Overlap::Allow => "allow",
            Overlap::Skip => "skip",
            Overlap::CancelPrevious => "cancel_previous",
        }
    }

    pub fn parse(s: &str) -> Option<Overlap> {
        Overlap::ALL.into_iter().find(|o| o.as_str() == s)
    }

    /// The action for a new fire, given the previous tick's job and its state (`None` when
    /// there was none, or it is gone).
    pub fn decide(self, previous: Option<(JobId, JobState)>) -> OverlapAction {
        match (self, previous) {
            (Overlap::Allow, _) | (_, None) => OverlapAction::Enqueue,
            (_, Some((_, state))) if state.is_finished() => OverlapAction::Enqueue,
            (Overlap::Skip, Some(_)) => OverlapAction::Skip,
            (Overlap::CancelPrevious, Some((id, _))) => OverlapAction::CancelThenEnqueue(id),
        }
    }
}

/// What a user sets on a schedule.
#[derive(Clone, Debug, PartialEq)]
pub struct ScheduleSpec {
    pub name: ScheduleName,
    /// The job each tick enqueues. Its `run_at`, `delay_ms` and `idempotency_key` are unset: the
    /// tick decides when the job runs and identifies it.
    pub template: NewJob,
    pub rule: Rule,
    pub misfire: Misfire,
    pub overlap: Overlap,
    /// Each tick's job runs a uniformly random 0 to `jitter_ms` after the tick.
    pub jitter_ms: u64,
    /// A tick due longer ago than this is missed, and the misfire policy decides.
    pub misfire_grace_ms: u64,
    pub paused: bool,
}

impl ScheduleSpec {
    pub fn validate(&self, now: Timestamp) -> Result<(), Invalid> {
        let in_template = |e: Invalid| Invalid { field: format!("job.{}", e.field), ..e };
        if self.template.run_at.is_some() {
            return Err(Invalid::new("job.run_at", "cannot be set: each tick decides when its job runs"));
        }
        if self.template.delay_ms.is_some() {
            return Err(Invalid::new(
                "job.delay_ms",
                "cannot be set: each tick decides when its job runs (see jitter_ms)",
            ));
        }
        if self.template.idempotency_key.is_some() {
            return Err(Invalid::new(
                "job.idempotency_key",
                "cannot be set: each tick's job is identified by the tick",
            ));
        }
        if self.template.group_key.is_some() {
            return Err(Invalid::new("job.group_key", "cannot be set on a schedule's job (not supported yet)"));
        }
        self.template.validate(now).map_err(in_template)?;
        check_range("jitter_ms", self.jitter_ms, 0, Limits::SCHEDULE_JITTER_MS_MAX, "")?;
        check_range("misfire_grace_ms", self.misfire_grace_ms, 0, Limits::MISFIRE_GRACE_MS_MAX, "")?;
        if let Misfire::RunAll { cap } = self.misfire {
            check_range("misfire_cap", cap, 1, Limits::MISFIRE_CAP_MAX, "")?;
        }
        Ok(())
    }
}

/// The last tick that enqueued a job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastTick {
    /// The tick's instant.
    pub at: Timestamp,
    pub job: JobId,
    /// When the job was enqueued.
    pub fired_at: Timestamp,
}

/// A schedule as a store keeps it.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    pub spec: ScheduleSpec,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// The earliest tick not yet handled; `None` when the rule fires no more.
    pub next_at: Option<Timestamp>,
    pub last: Option<LastTick>,
}

impl Schedule {
    /// A new schedule whose first tick is the rule's first fire after `now`.
    pub fn new(spec: ScheduleSpec, now: Timestamp) -> Schedule {
        let next_at = spec.rule.next_after(now);
        Schedule { spec, created_at: now, updated_at: now, next_at, last: None }
    }

    /// This schedule with its settings replaced by `spec`. The cursor stays where it is unless
    /// the rule changed: then it restarts after `now` (ticks of the old rule are not owed).
    pub fn replaced(&self, spec: ScheduleSpec, now: Timestamp) -> Schedule {
        let next_at = if spec.rule == self.spec.rule { self.next_at } else { spec.rule.next_after(now) };
        Schedule { spec, created_at: self.created_at, updated_at: now, next_at, last: self.last.clone() }
    }

    /// Paused or resumed. Resuming keeps the cursor: ticks missed while paused meet the misfire
    /// policy at the next pass.
    pub fn paused(&self, paused: bool, now: Timestamp) -> Schedule {
        let mut s = self.clone();
        s.spec.paused = paused;
        s.updated_at = now;
        s
    }

    /// Whether a tick pass at `now` has anything to do.
    pub fn is_due(&self, now: Timestamp) -> bool {
        !self.spec.paused && self.next_at.is_some_and(|at| at <= now)
    }

    /// The job a fire enqueues: the template, due at `at + jitter`, carrying its tick.
    /// `random` picks the jitter (any value; reduced into range here).
    pub fn job_for(&self, tick: Timestamp, now: Timestamp, random: u64) -> NewJob {
        let jitter = if self.spec.jitter_ms == 0 { 0 } else { random % (self.spec.jitter_ms + 1) };
        let run_at = tick.add_ms(jitter);
        let mut job = self.spec.template.clone();
        job.run_at = (run_at > now).then_some(run_at);
        job.schedule = Some(ScheduleTick { name: self.spec.name.clone(), at: tick });
        job
    }
}

/// One job a tick pass enqueues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fire {
    /// The tick's instant (for a `run_once` misfire, the latest missed tick).
    pub at: Timestamp,
    /// How many ticks this job stands for: 1, or for `run_once` every tick it merges.
    pub ticks: u64,
}

/// What one tick pass does to a schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TickPlan {
    pub fires: Vec<Fire>,
    /// Ticks that were missed (late past the grace), whether merged, dropped or run.
    pub missed: u64,
    /// Missed ticks that get no job of their own (skipped, merged into one, or beyond the cap).
    pub dropped: u64,
    /// The new cursor: the first tick after `now`.
    pub next_at: Option<Timestamp>,
}

/// Missed ticks a pass looks at one by one; past this many the rest are dropped without
/// enumerating them (a per-second schedule after a month away), counted as one.
pub const TICKS_SCANNED_MAX: u64 = 100_000;

/// What a tick pass at `now` does: which ticks fire, how many were missed, and where the cursor
/// goes. Nothing is due (an empty plan with the cursor unchanged) when paused or not yet due.
pub fn plan(schedule: &Schedule, now: Timestamp) -> TickPlan {
    let idle = TickPlan { fires: Vec::new(), missed: 0, dropped: 0, next_at: schedule.next_at };
    if !schedule.is_due(now) {
        return idle;
    }
    let spec = &schedule.spec;
    let rule = &spec.rule;
    // Due ticks in order; a tick is missed when it is older than the grace.
    let late_before = Timestamp(now.0.saturating_sub(i64::try_from(spec.misfire_grace_ms).unwrap_or(i64::MAX)));
    let mut missed: Vec<Timestamp> = Vec::new();
    let mut missed_uncounted = 0u64;
    let mut on_time: Vec<Timestamp> = Vec::new();
    let mut cursor = schedule.next_at;
    let mut scanned = 0u64;
    while let Some(at) = cursor {
        if at > now {
            break;
        }
        if scanned == TICKS_SCANNED_MAX && at < late_before {
            // Count no further: the missed ticks from here on are dropped uncounted (one stands
            // for them), and the scan goes on from the first tick within the grace.
            missed_uncounted = 1;
            cursor = rule.next_after(Timestamp(late_before.0 - 1));
            continue;
        }
        scanned += 1;
        if at < late_before {
            missed.push(at)
        } else {
            on_time.push(at)
        }
        cursor = rule.next_after(at);
    }
    let missed_count = missed.len() as u64 + missed_uncounted;
    let mut fires = Vec::new();
    let mut dropped = 0u64;
    if missed_count > 0 {
        match spec.misfire {
            Misfire::Skip => dropped = missed_count,
            Misfire::RunOnce => {
                // One job stands for every missed tick; on-time ticks after it fire as usual.
                let latest = *missed.last().expect("a missed tick was scanned before the count stopped");
                fires.push(Fire { at: latest, ticks: missed_count });
                dropped = missed_count - 1;
            }
            Misfire::RunAll { cap } => {
                let keep = missed.len().min(cap as usize);
                dropped = missed_count - keep as u64;
                fires.extend(missed[missed.len() - keep..].iter().map(|&at| Fire { at, ticks: 1 }));
            }
        }
    }
    fires.extend(on_time.into_iter().map(|at| Fire { at, ticks: 1 }));
    TickPlan { fires, missed: missed_count, dropped, next_at: cursor }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cron::IntervalRule;
    use crate::ids::QueueName;
    use crate::job::Payload;

    const MIN: u64 = 60_000;

    fn every_minute(misfire: Misfire) -> Schedule {
        let spec = ScheduleSpec {
            name: ScheduleName::new("s").unwrap(),
            template: NewJob::new(QueueName::new("q").unwrap(), Payload::new(*b"{}")),
            rule: Rule::Interval(IntervalRule::new(MIN, Timestamp(0)).unwrap()),
            misfire,
            overlap: Overlap::Allow,
            jitter_ms: 0,
            misfire_grace_ms: MIN / 2,
            paused: false,
        };
        Schedule::new(spec, Timestamp(10))
    }

    fn at_min(n: i64) -> Timestamp {
        Timestamp(n * MIN as i64)
    }

    #[test]
    fn an_on_time_tick_fires_once_and_moves_the_cursor() {
        let s = every_minute(Misfire::RunOnce);
        assert_eq!(s.next_at, Some(at_min(1)));
        assert_eq!(
            plan(&s, at_min(1).add_ms(1)),
            TickPlan { fires: vec![Fire { at: at_min(1), ticks: 1 }], missed: 0, dropped: 0, next_at: Some(at_min(2)) }
        );
        assert!(plan(&s, Timestamp(at_min(1).0 - 1)).fires.is_empty());
    }

    #[test]
    fn misfire_policies_after_ten_minutes_away() {
        // Ticks 1..=10 are due at 10:10 (seconds); 1..=9 are missed (older than 30 s), 10 is on time.
        let now = at_min(10).add_ms(10_000);
        let run_once = plan(&every_minute(Misfire::RunOnce), now);
        assert_eq!(run_once.fires, vec![Fire { at: at_min(9), ticks: 9 }, Fire { at: at_min(10), ticks: 1 }]);
        assert_eq!((run_once.missed, run_once.dropped, run_once.next_at), (9, 8, Some(at_min(11))));

        let skip = plan(&every_minute(Misfire::Skip), now);
        assert_eq!(skip.fires, vec![Fire { at: at_min(10), ticks: 1 }]);
        assert_eq!((skip.missed, skip.dropped), (9, 9));

        let all = plan(&every_minute(Misfire::RunAll { cap: 3 }), now);
        let ats: Vec<_> = all.fires.iter().map(|f| f.at).collect();
        assert_eq!(ats, vec![at_min(7), at_min(8), at_min(9), at_min(10)]);
        assert_eq!((all.missed, all.dropped), (9, 6));
    }

    #[test]
    fn a_paused_schedule_keeps_its_cursor_and_misses_on_resume() {
        let s = every_minute(Misfire::Skip).paused(true, Timestamp(20));
        assert_eq!(plan(&s, at_min(5)).fires, vec![]);
        let resumed = s.paused(false, at_min(5));
        let p = plan(&resumed, at_min(5).add_ms(1));
        assert_eq!(p.fires, vec![Fire { at: at_min(5), ticks: 1 }]);
        assert_eq!(p.missed, 4);
    }

    #[test]
    fn a_month_of_per_second_ticks_is_not_enumerated() {
        let mut s = every_minute(Misfire::RunOnce);
        s.spec.rule = Rule::Interval(IntervalRule::new(1_000, Timestamp(0)).unwrap());
        s.next_at = Some(Timestamp(1_000));
        let now = Timestamp(30 * 86_400_000);
        let p = plan(&s, now);
        assert_eq!(p.fires.len(), 1 + 31, "one merged job, then the on-time ticks within the 30 s grace");
        assert_eq!(p.fires[1].at, Timestamp(now.0 - 30_000));
        assert!(p.missed > TICKS_SCANNED_MAX - 30);
        assert_eq!(p.next_at, Some(now.add_ms(1_000)));
    }

    #[test]
    fn overlap_decisions() {
        let running = Some((JobId(7), JobState::Running));
        let done = Some((JobId(7), JobState::Completed));
        assert_eq!(Overlap::Skip.decide(running), OverlapAction::Skip);
        assert_eq!(Overlap::Skip.decide(done), OverlapAction::Enqueue);
        assert_eq!(Overlap::CancelPrevious.decide(running), OverlapAction::CancelThenEnqueue(JobId(7)));
        assert_eq!(Overlap::Allow.decide(running), OverlapAction::Enqueue);
        assert_eq!(Overlap::Skip.decide(None), OverlapAction::Enqueue);
    }

    #[test]
    fn jitter_stays_within_its_bound_and_the_job_carries_its_tick() {
        let mut s = every_minute(Misfire::RunOnce);
        s.spec.jitter_ms = 500;
        for random in [0, 1, 499, 500, 501, u64::MAX] {
            let job = s.job_for(at_min(1), at_min(1), random);
            let run_at = job.run_at.unwrap_or(at_min(1));
            assert!(run_at >= at_min(1) && run_at <= at_min(1).add_ms(500));
            assert_eq!(job.schedule.as_ref().unwrap().at, at_min(1));
        }
    }

    #[test]
    fn a_template_may_not_set_what_the_tick_decides() {
        let mut s = every_minute(Misfire::RunOnce);
        s.spec.template.idempotency_key = Some("k".into());
        assert_eq!(s.spec.validate(Timestamp(0)).unwrap_err().field, "job.idempotency_key");
        let mut s = every_minute(Misfire::RunAll { cap: 0 });
        assert_eq!(s.spec.validate(Timestamp(0)).unwrap_err().field, "misfire_cap");
        s.spec.misfire = Misfire::RunOnce;
        s.spec.template.priority = 5_000;
        assert_eq!(s.spec.validate(Timestamp(0)).unwrap_err().field, "job.priority");
    }
}
