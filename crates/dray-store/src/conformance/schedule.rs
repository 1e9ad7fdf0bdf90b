//! Schedules: stored, ticked once per (schedule, instant) across restarts, with the misfire and
//! overlap policies decided by the store at tick time.

use dray_core::cron::{CronRule, IntervalRule, Rule};
use dray_core::{JobState, Limits, Misfire, NewJob, Overlap, Schedule, ScheduleName, ScheduleSpec, Timestamp};

use super::{Ctx, Harness, T0, new_job};
use crate::{
    Error, JobFilter, JobList, ScheduleDelete, SchedulePause, SchedulePut, ScheduleTrigger, SchedulesTick, Store,
    Ticked,
};

const MIN: u64 = 60_000;

fn name(s: &str) -> ScheduleName {
    ScheduleName::new(s).expect("test schedule names are valid")
}

/// A schedule firing every minute on the minute of the suite's clock, into queue `q`.
fn every_minute(n: &str) -> ScheduleSpec {
    ScheduleSpec {
        name: name(n),
        template: new_job("q", &format!("{{\"schedule\":\"{n}\"}}")),
        rule: Rule::Interval(IntervalRule::new(MIN, T0).unwrap()),
        misfire: Misfire::RunOnce,
        overlap: Overlap::Allow,
        jitter_ms: 0,
        misfire_grace_ms: MIN / 2,
        paused: false,
    }
}

fn minute(n: i64) -> Timestamp {
    Timestamp(T0.0 + n * MIN as i64)
}

impl<H: Harness> Ctx<H> {
    async fn put(&self, spec: ScheduleSpec) -> Schedule {
        let p = SchedulePut { now: self.now, spec, create_only: false };
        self.store().schedule_put(p).await.unwrap_or_else(|e| panic!("schedule_put: {e:?}")).schedule
    }

    async fn tick(&self) -> Vec<Ticked> {
        let p = SchedulesTick { now: self.now, limit: Limits::SCHEDULES_MAX, seed: self.now.0 as u64 };
        self.store().schedules_tick(p).await.unwrap_or_else(|e| panic!("schedules_tick at {}: {e:?}", self.now))
    }

    async fn schedule(&self, n: &str) -> Schedule {
        let got = self.store().schedule_get(&name(n)).await.unwrap_or_else(|e| panic!("schedule_get: {e:?}"));
        got.unwrap_or_else(|| panic!("schedule {n} not found"))
    }

    /// Every job of queue `q`, in enqueue order, with the tick each stands for.
    async fn ticks_enqueued(&self) -> Vec<(Timestamp, JobState)> {
        let filter = JobFilter { queue: Some(super::q("q")), ..JobFilter::default() };
        let page = self.store().job_list(JobList { filter, after: None, limit: 1_000, newest_first: false }).await;
        let mut out = Vec::new();
        for summary in page.unwrap().jobs {
            let job = self.get(summary.id).await;
            let tick = job.schedule.unwrap_or_else(|| panic!("job {} carries no schedule tick", job.id));
            out.push((tick.at, job.status.state));
        }
        out
    }
}

fn fired_ats(ticked: &[Ticked]) -> Vec<Timestamp> {
    ticked.iter().flat_map(|t| t.fired.iter().filter(|f| f.job.is_some()).map(|f| f.fire.at)).collect()
}

pub async fn schedule_put_get_list_delete<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    let created = c.put(every_minute("b")).await;
    assert_eq!((created.created_at, created.next_at, created.last.clone()), (T0, Some(minute(1)), None));
    c.put(every_minute("a")).await;

    let again = c.store().schedule_put(SchedulePut { now: c.now, spec: every_minute("a"), create_only: true }).await;
    assert!(matches!(&again, Err(Error::ScheduleExists(n)) if n.as_str() == "a"), "{again:?}");

    // Replacing with the same rule keeps the cursor and the creation time; a new rule restarts it.
    c.advance(90_000);
    let mut spec = every_minute("b");
    spec.jitter_ms = 5;
    let replaced = c.put(spec.clone()).await;
    assert_eq!((replaced.created_at, replaced.updated_at, replaced.next_at), (T0, c.now, Some(minute(1))));
    spec.rule = Rule::Interval(IntervalRule::new(10 * MIN, T0).unwrap());
    assert_eq!(c.put(spec).await.next_at, Some(minute(10)));

    c.restart().await;
    let names: Vec<String> = c.store().schedule_list().await.unwrap().iter().map(|s| s.spec.name.to_string()).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(c.schedule("b").await.spec.jitter_ms, 5, "a replaced schedule survives a restart as replaced");

    c.store().schedule_delete(ScheduleDelete { now: c.now, name: name("a") }).await.unwrap();
    assert_eq!(c.store().schedule_get(&name("a")).await.unwrap(), None);
    let gone = c.store().schedule_delete(ScheduleDelete { now: c.now, name: name("a") }).await;
    assert!(matches!(gone, Err(Error::ScheduleNotFound(_))), "{gone:?}");
    c.restart().await;
    assert_eq!(c.store().schedule_list().await.unwrap().len(), 1, "a delete survives a restart");
}

pub async fn schedule_put_validates<H: Harness>(h: H) {
    let c = Ctx::open(h).await;
    let mut spec = every_minute("s");
    spec.template = NewJob { idempotency_key: Some("k".into()), ..spec.template };
    let err = c.store().schedule_put(SchedulePut { now: c.now, spec, create_only: false }).await;
    assert!(matches!(&err, Err(Error::Invalid(e)) if e.field == "job.idempotency_key"), "{err:?}");
    let mut spec = every_minute("s");
    spec.jitter_ms = Limits::SCHEDULE_JITTER_MS_MAX + 1;
    let err = c.store().schedule_put(SchedulePut { now: c.now, spec, create_only: false }).await;
    assert!(matches!(&err, Err(Error::Invalid(e)) if e.field == "jitter_ms"), "{err:?}");
    assert!(c.store().schedule_list().await.unwrap().is_empty(), "a refused put stores nothing");
}

pub async fn schedule_ticks_once_per_instant_across_restarts<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    c.put(every_minute("s")).await;
    c.set_now(minute(1));
    let ticked = c.tick().await;
    assert_eq!(fired_ats(&ticked), [minute(1)]);
    assert_eq!(ticked[0].next_at, Some(minute(2)));
    assert!(c.tick().await.is_empty(), "a second pass at the same time fires nothing");
    c.restart().await;
    c.advance(10_000);
    assert!(c.tick().await.is_empty(), "nor does one after a restart");

    c.set_now(minute(2).add_ms(5));
    assert_eq!(fired_ats(&c.tick().await), [minute(2)]);
    let s = c.schedule("s").await;
    assert_eq!(s.next_at, Some(minute(3)));
    let last = s.last.expect("the last tick is recorded");
    assert_eq!((last.at, last.fired_at), (minute(2), minute(2).add_ms(5)));
    assert_eq!(c.ticks_enqueued().await, [(minute(1), JobState::Available), (minute(2), JobState::Available)]);
    let job = c.get(last.job).await;
    assert_eq!(job.schedule.as_ref().map(|t| t.name.as_str()), Some("s"));
    assert_eq!(job.payload.as_bytes(), br#"{"schedule":"s"}"#);
}

pub async fn schedule_misfire_policies<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    let with = |n: &str, misfire| ScheduleSpec { misfire, ..every_minute(n) };
    c.put(with("once", Misfire::RunOnce)).await;
    c.put(with("skip", Misfire::Skip)).await;
    c.put(with("all", Misfire::RunAll { cap: 3 })).await;
    // Away for ten minutes: ticks 1 to 9 are missed (older than the 30 s grace), 10 is on time.
    c.set_now(minute(10).add_ms(10_000));
    let ticked = c.tick().await;
    let of = |n: &str| ticked.iter().find(|t| t.name.as_str() == n).unwrap_or_else(|| panic!("{n} ticked"));
    assert_eq!(fired_ats(std::slice::from_ref(of("once"))), [minute(9), minute(10)]);
    assert_eq!((of("once").missed, of("once").dropped), (9, 8));
    assert_eq!(of("once").fired[0].fire.ticks, 9, "the one job stands for every missed tick");
    assert_eq!(fired_ats(std::slice::from_ref(of("skip"))), [minute(10)]);
    assert_eq!((of("skip").missed, of("skip").dropped), (9, 9));
    assert_eq!(fired_ats(std::slice::from_ref(of("all"))), [minute(7), minute(8), minute(9), minute(10)]);
    assert_eq!(of("all").dropped, 6);
    for n in ["once", "skip", "all"] {
        assert_eq!(c.schedule(n).await.next_at, Some(minute(11)), "{n}: the cursor moves past now");
    }
    assert!(c.tick().await.is_empty());
}

pub async fn schedule_overlap_policies<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    let with =
        |n: &str, overlap| ScheduleSpec { overlap, template: new_job(&format!("q-{n}"), "{}"), ..every_minute(n) };
    c.put(with("allow", Overlap::Allow)).await;
    c.put(with("skip", Overlap::Skip)).await;
    c.put(with("cancel", Overlap::CancelPrevious)).await;
    c.set_now(minute(1));
    c.tick().await;
    let skip_first = c_last(&c, "skip").await;
    let cancel_first = c_last(&c, "cancel").await;
    // The cancel schedule's first job is running when the second tick comes.
    let leased = c.lease(&["q-cancel"], 1).await;
    assert_eq!(leased[0].id, cancel_first);

    c.set_now(minute(2));
    let ticked = c.tick().await;
    let of = |n: &str| ticked.iter().find(|t| t.name.as_str() == n).unwrap().fired[0].clone();
    assert!(of("allow").job.is_some());
    assert_eq!(of("skip").job, None, "skip: the first job still waits, so nothing is enqueued");
    assert_eq!(c_last(&c, "skip").await, skip_first, "a skipped tick leaves the last tick alone");
    assert_eq!(of("cancel").cancelled, Some(cancel_first));
    assert!(of("cancel").job.is_some());
    let cancelled = c.get(cancel_first).await;
    assert!(cancelled.status.cancel_requested, "a running previous job is asked to stop");

    // Once the skipped schedule's job is done, its next tick enqueues again.
    let leased = c.lease(&["q-skip"], 1).await;
    c.ack_one(leased[0].id, leased[0].lease, crate::AckOutcome::Complete { result: None }).await.unwrap();
    c.set_now(minute(3));
    let ticked = c.tick().await;
    assert!(ticked.iter().find(|t| t.name.as_str() == "skip").unwrap().fired[0].job.is_some());
}

async fn c_last<H: Harness>(c: &Ctx<H>, n: &str) -> dray_core::JobId {
    c.schedule(n).await.last.unwrap_or_else(|| panic!("{n} has fired")).job
}

pub async fn schedule_pause_resume_trigger<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    c.put(ScheduleSpec { misfire: Misfire::Skip, ..every_minute("s") }).await;
    let paused = c.store().schedule_pause(SchedulePause { now: c.now, name: name("s"), paused: true }).await.unwrap();
    assert!(paused.spec.paused);
    c.set_now(minute(3));
    assert!(c.tick().await.is_empty(), "a paused schedule does not tick");

    // A trigger enqueues now, paused or not, and leaves the cursor alone.
    c.advance(1_000);
    let triggered =
        c.store().schedule_trigger(ScheduleTrigger { now: c.now, name: name("s"), random: 0 }).await.unwrap();
    assert_eq!(triggered.fired.len(), 1);
    assert_eq!(triggered.fired[0].fire.at, c.now);
    assert_eq!(c.schedule("s").await.next_at, Some(minute(1)));
    let unknown = c.store().schedule_trigger(ScheduleTrigger { now: c.now, name: name("nope"), random: 0 }).await;
    assert!(matches!(unknown, Err(Error::ScheduleNotFound(_))), "{unknown:?}");

    c.restart().await;
    assert!(c.schedule("s").await.spec.paused, "pausing survives a restart");
    c.set_now(minute(5).add_ms(1_000));
    c.store().schedule_pause(SchedulePause { now: c.now, name: name("s"), paused: false }).await.unwrap();
    let ticked = c.tick().await;
    // Ticks 1 to 4 were missed while paused (skip drops them); 5 is within the grace.
    assert_eq!(fired_ats(&ticked), [minute(5)]);
    assert_eq!(ticked[0].missed, 4);
}

pub async fn schedule_jitter_delays_within_bound<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    c.put(ScheduleSpec { jitter_ms: 20_000, ..every_minute("s") }).await;
    let mut delays = Vec::new();
    for n in 1..=8 {
        c.set_now(minute(n));
        let ticked = c.tick().await;
        let id = ticked[0].fired[0].job.unwrap();
        let job = c.get(id).await;
        let delay = job.status.run_at.ms_since(minute(n));
        assert!(delay <= 20_000, "jitter {delay} ms past its bound");
        assert_eq!(job.status.state, if delay > 0 { JobState::Scheduled } else { JobState::Available });
        delays.push(delay);
    }
    delays.dedup();
    assert!(delays.len() > 1, "jitter varies between ticks: {delays:?}");
}

pub async fn schedule_cron_rule_in_a_zone<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    // 2023-11-14T22:13:20Z is T0; 09:00 in Berlin (CET, +01:00) on the 15th is 08:00Z.
    let rule = Rule::Cron(CronRule::parse("0 9 * * *", "Europe/Berlin").unwrap());
    c.put(ScheduleSpec { rule, ..every_minute("daily") }).await;
    let at = Timestamp(1_700_035_200_000);
    assert_eq!(c.schedule("daily").await.next_at, Some(at));
    c.restart().await;
    c.set_now(at);
    assert_eq!(fired_ats(&c.tick().await), [at]);
    assert_eq!(c.schedule("daily").await.next_at, Some(Timestamp(at.0 + 86_400_000)));
}

/// The server's clock stepping: forward, the ticks jumped over are missed and meet the misfire
/// policy (one job for `run_once`, counted, never a burst); backward, nothing fires again until
/// the clock passes the cursor, so no instant is enqueued twice.
pub async fn schedule_clock_steps_neither_burst_nor_double_fire<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    c.put(every_minute("s")).await;
    c.set_now(minute(1));
    assert_eq!(fired_ats(&c.tick().await), [minute(1)]);

    // Forward two hours in one step.
    c.set_now(minute(121).add_ms(1_000));
    let ticked = c.tick().await;
    assert_eq!(fired_ats(&ticked), [minute(120), minute(121)], "one job for the missed ticks, then the due one");
    assert_eq!((ticked[0].missed, ticked[0].dropped), (119, 118));
    assert_eq!(ticked[0].next_at, Some(minute(122)));

    // Back an hour: the cursor stays ahead; nothing fires until the clock is past it again.
    c.now = minute(61);
    assert!(c.tick().await.is_empty(), "a backward step fires nothing");
    c.restart().await;
    c.set_now(minute(100));
    assert!(c.tick().await.is_empty(), "nor after a restart on the earlier clock");
    assert_eq!(c.schedule("s").await.next_at, Some(minute(122)));
    c.set_now(minute(122));
    assert_eq!(fired_ats(&c.tick().await), [minute(122)]);

    let ats: Vec<Timestamp> = c.ticks_enqueued().await.into_iter().map(|(at, _)| at).collect();
    assert_eq!(ats, [minute(1), minute(120), minute(121), minute(122)], "every instant once");
}
