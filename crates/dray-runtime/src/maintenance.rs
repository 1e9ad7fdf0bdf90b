//! Maintenance: the loop that makes time pass for jobs at rest. Each tick fires the due ticks of
//! schedules, promotes scheduled and retrying jobs whose time has come, expires leases whose
//! deadline passed (each a failed attempt), and prunes finished jobs past their retention.
//!
//! It owns only the pacing: how often, how much per pass, when to stop. What a promotion or an
//! expiry does to a job is the core's `transition`, applied by the store; maintenance never looks
//! inside a job and never reads the clock except through its [`Clock`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use dray_core::Invalid;
use dray_core::limits::check_range;
use dray_store::{Expired, Maintain, SchedulesTick, Store, Ticked};
use tokio::sync::watch;

use crate::clock::Clock;

/// How maintenance is paced. Build it with [`MaintenanceConfig::default`] and change what you
/// need; [`Maintenance::new`] validates it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaintenanceConfig {
    /// Pause between ticks when the last tick cleared everything that was due.
    pub interval_ms: u64,
    /// Jobs one store call acts on (`Maintain::limit`).
    pub batch_max: usize,
    /// Store calls per operation per tick. A tick that hits it reports a backlog and the next tick
    /// starts at once, so one operation with a huge backlog cannot hold up the others (or
    /// shutdown) for long.
    pub batches_per_tick_max: usize,
}

impl MaintenanceConfig {
    /// A lease expires, and a due job becomes available, at most this late (plus the tick's own
    /// duration). Workers leasing through the store do not wait for it: `job_lease` promotes due
    /// jobs itself. 100 ms keeps expiries prompt at the cost of ten cheap, indexed store calls a
    /// second per operation.
    pub const INTERVAL_MS_DEFAULT: u64 = 100;
    pub const INTERVAL_MS_MIN: u64 = 1;
    pub const INTERVAL_MS_MAX: u64 = 60_000;
    /// Small enough that one call (one hold of the store's lock, one durable write) keeps the store
    /// responsive to workers in between; large enough that a burst of due jobs takes few calls.
    pub const BATCH_MAX_DEFAULT: usize = 1_000;
    pub const BATCH_MAX_MAX: usize = 100_000;
    /// With the default batch, up to 10,000 jobs per operation per tick.
    pub const BATCHES_PER_TICK_MAX_DEFAULT: usize = 10;
    pub const BATCHES_PER_TICK_MAX_MAX: usize = 1_000;

    pub fn validate(&self) -> Result<(), Invalid> {
        check_range("interval_ms", self.interval_ms, Self::INTERVAL_MS_MIN, Self::INTERVAL_MS_MAX, "")?;
        check_range("batch_max", self.batch_max, 1, Self::BATCH_MAX_MAX, "")?;
        check_range("batches_per_tick_max", self.batches_per_tick_max, 1, Self::BATCHES_PER_TICK_MAX_MAX, "")?;
        Ok(())
    }

    fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }
}

impl Default for MaintenanceConfig {
    fn default() -> MaintenanceConfig {
        MaintenanceConfig {
            interval_ms: Self::INTERVAL_MS_DEFAULT,
            batch_max: Self::BATCH_MAX_DEFAULT,
            batches_per_tick_max: Self::BATCHES_PER_TICK_MAX_DEFAULT,
        }
    }
}

/// What one tick did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TickReport {
    /// Schedules that fired (or missed) ticks, and what each did.
    pub ticked: Vec<Ticked>,
    /// Scheduled and retrying jobs made available.
    pub promoted: usize,
    /// Leases expired (each a failed attempt: retried or dead).
    pub expired: usize,
    /// Each expired lease's job and what became of it (`expired` entries).
    pub expirations: Vec<Expired>,
    /// Finished jobs deleted.
    pub pruned: usize,
    /// Some operation still had a full batch when it hit `batches_per_tick_max`: more is due now.
    pub backlog: bool,
}

/// The maintenance loop over one store, reading time from one clock.
pub struct Maintenance<S: Store, C: Clock> {
    store: Arc<S>,
    clock: C,
    config: MaintenanceConfig,
}

impl<S: Store, C: Clock> fmt::Debug for Maintenance<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Maintenance").field("config", &self.config).finish_non_exhaustive()
    }
}

/// Which store call a batch goes to.
#[derive(Clone, Copy)]
enum Operation {
    Promote,
    Expire,
    Prune,
}

impl<S: Store, C: Clock> Maintenance<S, C> {
    pub fn new(store: Arc<S>, clock: C, config: MaintenanceConfig) -> Result<Maintenance<S, C>, Invalid> {
        config.validate()?;
        Ok(Maintenance { store, clock, config })
    }

    pub fn config(&self) -> &MaintenanceConfig {
        &self.config
    }

    /// One pass: promote due jobs, expire overdue leases, prune finished jobs past retention.
    /// Each store call is repeated while it returns a full batch, at most `batches_per_tick_max`
    /// times; each call reads the clock afresh. The first store error ends the tick.
    ///
    /// Cancel safety: safe to drop at any point. Every store call is a complete, idempotent unit
    /// (a dropped call may or may not have been applied, like a lost reply), and whatever a
    /// dropped tick left undone is still due at the next tick.
    pub async fn tick(&self) -> Result<TickReport, dray_store::Error> {
        let mut report = TickReport::default();
        // Schedules first: a tick's job due now is then available in this same pass.
        let limit = self.config.batch_max.min(dray_core::Limits::SCHEDULES_MAX);
        let p = SchedulesTick { now: self.clock.now(), limit, seed: seed() };
        report.ticked = self.store.schedules_tick(p).await?;
        report.backlog |= report.ticked.len() >= limit;
        let (promoted, more) = self.repeat(Operation::Promote, &mut report.expirations).await?;
        report.promoted = promoted;
        report.backlog |= more;
        let (expired, more) = self.repeat(Operation::Expire, &mut report.expirations).await?;
        report.expired = expired;
        report.backlog |= more;
        let (pruned, more) = self.repeat(Operation::Prune, &mut report.expirations).await?;
        report.pruned = pruned;
        report.backlog |= more;
        Ok(report)
    }

    /// Runs one operation in batches until a batch comes back short or the per-tick bound is hit.
    /// Returns the jobs acted on and whether the bound cut it short; expirations go to `expired`.
    async fn repeat(
        &self,
        operation: Operation,
        expired: &mut Vec<Expired>,
    ) -> Result<(usize, bool), dray_store::Error> {
        let mut total = 0;
        for _ in 0..self.config.batches_per_tick_max {
            let p = Maintain { now: self.clock.now(), limit: self.config.batch_max };
            let done = match operation {
                Operation::Promote => self.store.jobs_promote(p).await?,
                Operation::Expire => {
                    let batch = self.store.leases_expire(p).await?;
                    let n = batch.len();
                    expired.extend(batch);
                    n
                }
                Operation::Prune => self.store.jobs_prune(p).await?,
            };
            debug_assert!(done <= p.limit, "a store acted on {done} jobs, over the limit {}", p.limit);
            total += done;
            if done < p.limit {
                return Ok((total, false));
            }
        }
        Ok((total, true))
    }

    /// Ticks until `shutdown` turns `true` (or its sender is dropped): one tick, then a pause of
    /// `interval_ms` (none if the tick left a backlog). A store error is logged and the loop goes
    /// on; the next tick retries.
    ///
    /// Shutdown is prompt: it is watched during the pause and during a tick, and a tick in progress
    /// is dropped, which is safe (see [`Maintenance::tick`]).
    ///
    /// Cancel safety: dropping the future instead of signalling shutdown is equally safe; the
    /// signal is just the tidier way to stop.
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        self.run_with(shutdown, |_| {}).await
    }

    /// [`Maintenance::run`], calling `on_tick` with the report of every successful tick: a
    /// server wakes its waiting long-polls when a tick promoted or expired jobs.
    ///
    /// Cancel safety: as for [`Maintenance::run`].
    pub async fn run_with(self, mut shutdown: watch::Receiver<bool>, mut on_tick: impl FnMut(&TickReport) + Send) {
        let interval = self.config.interval();
        loop {
            let tick = tokio::select! {
                biased;
                _ = shutdown.wait_for(|&stop| stop) => break,
                tick = self.tick() => tick,
            };
            let pause = match tick {
                Ok(report) => {
                    on_tick(&report);
                    if report != TickReport::default() {
                        tracing::debug!(
                            schedules = report.ticked.len(),
                            promoted = report.promoted,
                            expired = report.expired,
                            pruned = report.pruned,
                            backlog = report.backlog,
                            "maintenance tick"
                        );
                    }
                    if report.backlog { Duration::ZERO } else { interval }
                }
                Err(error) => {
                    tracing::warn!(%error, "maintenance tick failed; retrying after the interval");
                    interval
                }
            };
            if pause.is_zero() {
                // A backlog: tick again at once, but let other tasks run first. Shutdown is still
                // checked first thing in the next iteration.
                tokio::task::yield_now().await;
                continue;
            }
            tokio::select! {
                biased;
                _ = shutdown.wait_for(|&stop| stop) => break,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }
}

/// A fresh random seed for the jitter of one tick pass (the standard library's per-hasher random
/// keys: no generator to seed or carry).
fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new().build_hasher().finish()
}

/// The loop's mechanics (batching, bounds, errors, shutdown) against a scripted store that only
/// counts. What maintenance does to real jobs is tested against the embedded store in
/// `tests/maintenance.rs`.
#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use dray_core::{Job, JobId, JobState, QueueName, Timestamp};
    use dray_store::{
        DeadDiscard, DeadRedrive, Error, Inserted, JobAck, JobCancel, JobInsert, JobLease, JobList, JobPage,
        LeaseExtend, LeaseExtended, LeasedJob, QueueConfig, QueueConfigure, QueueStats,
    };

    use super::*;
    use crate::clock::ManualClock;

    /// What a scripted maintenance call does.
    #[derive(Clone, Copy, Debug)]
    enum Reply {
        /// Acts on this many jobs (clamped to the call's limit).
        Count(usize),
        /// Acts on a full batch.
        Full,
        Fail,
        /// Never answers: a store stuck on I/O.
        Hang,
    }

    #[derive(Default)]
    struct Scripted {
        /// Replies per operation (promote, expire, prune); an empty script acts on nothing.
        script: Mutex<[VecDeque<Reply>; 3]>,
        /// Every maintenance call: operation index and the `now` it carried.
        calls: Mutex<Vec<(usize, Timestamp)>>,
    }

    impl Scripted {
        fn with(promote: &[Reply], expire: &[Reply], prune: &[Reply]) -> Arc<Scripted> {
            let s = Scripted::default();
            *s.script.lock().unwrap() = [promote.to_vec().into(), expire.to_vec().into(), prune.to_vec().into()];
            Arc::new(s)
        }

        fn calls(&self) -> Vec<usize> {
            self.calls.lock().unwrap().iter().map(|(op, _)| *op).collect()
        }

        async fn maintain(&self, op: usize, p: Maintain) -> Result<usize, Error> {
            self.calls.lock().unwrap().push((op, p.now));
            let reply = self.script.lock().unwrap()[op].pop_front().unwrap_or(Reply::Count(0));
            match reply {
                Reply::Count(n) => Ok(n.min(p.limit)),
                Reply::Full => Ok(p.limit),
                Reply::Fail => Err(Error::Unavailable { context: "scripted failure".into(), source: None }),
                Reply::Hang => std::future::pending().await,
            }
        }
    }

    impl Store for Scripted {
        async fn jobs_promote(&self, p: Maintain) -> Result<usize, Error> {
            self.maintain(0, p).await
        }
        async fn leases_expire(&self, p: Maintain) -> Result<Vec<dray_store::Expired>, Error> {
            let n = self.maintain(1, p).await?;
            let expired = |i| dray_store::Expired {
                id: JobId(i as u64),
                queue: QueueName::new("q").unwrap(),
                attempt: 1,
                state: JobState::Retrying,
            };
            Ok((0..n).map(expired).collect())
        }
        async fn jobs_prune(&self, p: Maintain) -> Result<usize, Error> {
            self.maintain(2, p).await
        }

        async fn job_insert(&self, _: JobInsert) -> Result<Vec<Inserted>, Error> {
            panic!("maintenance must not call this: it never inserts")
        }
        async fn job_lease(&self, _: JobLease) -> Result<Vec<LeasedJob>, Error> {
            panic!("maintenance must not call this: it never leases")
        }
        async fn lease_extend(&self, _: LeaseExtend) -> Result<LeaseExtended, Error> {
            panic!("maintenance must not call this: it never extends leases")
        }
        async fn job_ack(&self, _: JobAck) -> Result<Vec<Result<dray_store::Acked, Error>>, Error> {
            panic!("maintenance must not call this: it never acks")
        }
        async fn job_step(&self, _: dray_store::JobStep) -> Result<dray_store::StepRecorded, Error> {
            panic!("maintenance must not call this: it never records steps")
        }
        async fn job_cancel(&self, _: JobCancel) -> Result<JobState, Error> {
            panic!("maintenance must not call this: it never cancels")
        }
        async fn job_promote(&self, _: dray_store::JobPromote) -> Result<JobState, Error> {
            panic!("maintenance must not call this: it promotes due jobs with jobs_promote")
        }
        async fn queue_delete(&self, _: dray_store::QueueDelete) -> Result<dray_store::QueueDeleted, Error> {
            panic!("maintenance must not call this: it never deletes queues")
        }
        async fn job_get(&self, _: JobId) -> Result<Option<Job>, Error> {
            panic!("maintenance must not call this: it never reads jobs")
        }
        async fn job_waiting(&self, _: JobId, _: Timestamp) -> Result<Option<dray_store::Waiting>, Error> {
            panic!("maintenance must not call this: it never reads jobs")
        }
        async fn job_list(&self, _: JobList) -> Result<JobPage, Error> {
            panic!("maintenance must not call this: it never lists jobs")
        }
        fn payload_check_set(&self, _: std::sync::Arc<dyn dray_store::PayloadCheck>) {}
        async fn dead_redrive(&self, _: DeadRedrive) -> Result<dray_store::Redriven, Error> {
            panic!("maintenance must not call this: it never redrives")
        }
        async fn dead_discard(&self, _: DeadDiscard) -> Result<Vec<JobId>, Error> {
            panic!("maintenance must not call this: it never discards")
        }
        async fn queue_configure(&self, _: QueueConfigure) -> Result<QueueConfig, Error> {
            panic!("maintenance must not call this: it never configures queues")
        }
        async fn queue_list(&self) -> Result<Vec<QueueStats>, Error> {
            panic!("maintenance must not call this: it never lists queues")
        }
        async fn schedules_tick(&self, _: dray_store::SchedulesTick) -> Result<Vec<dray_store::Ticked>, Error> {
            Ok(Vec::new())
        }
        async fn schedule_put(&self, _: dray_store::SchedulePut) -> Result<dray_store::ScheduleSaved, Error> {
            panic!("maintenance must not call this: it only ticks schedules")
        }
        async fn schedule_get(&self, _: &dray_core::ScheduleName) -> Result<Option<dray_core::Schedule>, Error> {
            panic!("maintenance must not call this: it only ticks schedules")
        }
        async fn schedule_list(&self) -> Result<Vec<dray_core::Schedule>, Error> {
            panic!("maintenance must not call this: it only ticks schedules")
        }
        async fn schedule_delete(&self, _: dray_store::ScheduleDelete) -> Result<(), Error> {
            panic!("maintenance must not call this: it only ticks schedules")
        }
        async fn schedule_pause(&self, _: dray_store::SchedulePause) -> Result<dray_core::Schedule, Error> {
            panic!("maintenance must not call this: it only ticks schedules")
        }
        async fn schedule_trigger(&self, _: dray_store::ScheduleTrigger) -> Result<dray_store::Ticked, Error> {
            panic!("maintenance must not call this: it only ticks schedules")
        }
        async fn queue_stats(&self, _: &QueueName) -> Result<QueueStats, Error> {
            panic!("maintenance must not call this: it never reads queue stats")
        }
        async fn breaker_force(&self, _: dray_store::BreakerForce) -> Result<dray_core::Breaker, Error> {
            panic!("maintenance must not call this: it never forces breakers")
        }
    }

    fn config(batch_max: usize, batches_per_tick_max: usize) -> MaintenanceConfig {
        MaintenanceConfig { batch_max, batches_per_tick_max, ..MaintenanceConfig::default() }
    }

    fn maintenance(store: &Arc<Scripted>, config: MaintenanceConfig) -> Maintenance<Scripted, ManualClock> {
        Maintenance::new(store.clone(), ManualClock::new(Timestamp(1_000)), config).unwrap()
    }

    #[test]
    fn defaults_are_named_and_valid() {
        let c = MaintenanceConfig::default();
        assert_eq!((c.interval_ms, c.batch_max, c.batches_per_tick_max), (100, 1_000, 10));
        c.validate().unwrap();
        let bad = MaintenanceConfig { interval_ms: 0, ..c };
        assert_eq!(bad.validate().unwrap_err().to_string(), "interval_ms: is 0; allowed is 1 to 60000");
        let bad = MaintenanceConfig { batch_max: 0, ..c };
        assert_eq!(bad.validate().unwrap_err().field, "batch_max");
    }

    #[tokio::test(start_paused = true)]
    async fn tick_repeats_full_batches_within_the_bound() {
        use Reply::*;
        let store = Scripted::with(&[Full, Full, Count(3)], &[Full, Full, Full, Full], &[Count(0)]);
        let m = maintenance(&store, config(10, 3));
        let report = m.tick().await.unwrap();
        // Promote stops at its short batch; expire is cut off by the bound and reports a backlog.
        assert_eq!(report.expirations.len(), 30, "every expiration is reported");
        assert_eq!(
            report,
            TickReport {
                ticked: Vec::new(),
                promoted: 23,
                expired: 30,
                pruned: 0,
                backlog: true,
                expirations: report.expirations.clone()
            }
        );
        assert_eq!(store.calls(), [0, 0, 0, 1, 1, 1, 2]);
        // The expire backlog is picked up by the next tick.
        let report = m.tick().await.unwrap();
        assert_eq!(report.expirations.len(), 10);
        assert_eq!(
            report,
            TickReport {
                ticked: Vec::new(),
                promoted: 0,
                expired: 10,
                pruned: 0,
                backlog: false,
                expirations: report.expirations.clone()
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn each_store_call_reads_the_clock() {
        let store = Scripted::with(&[], &[], &[]);
        let clock = ManualClock::new(Timestamp(5_000));
        let m = Maintenance::new(store.clone(), clock.clone(), config(10, 3)).unwrap();
        m.tick().await.unwrap();
        clock.advance(250);
        m.tick().await.unwrap();
        let nows: Vec<i64> = store.calls.lock().unwrap().iter().map(|(_, now)| now.as_millis()).collect();
        assert_eq!(nows, [5_000, 5_000, 5_000, 5_250, 5_250, 5_250]);
    }

    #[tokio::test(start_paused = true)]
    async fn tick_stops_at_the_first_error() {
        let store = Scripted::with(&[Reply::Count(1)], &[Reply::Fail], &[]);
        let m = maintenance(&store, config(10, 3));
        let err = m.tick().await.unwrap_err();
        assert!(matches!(err, Error::Unavailable { .. }), "{err}");
        assert_eq!(store.calls(), [0, 1]);
    }

    #[tokio::test(start_paused = true)]
    async fn run_ticks_every_interval_survives_errors_and_stops_on_shutdown() {
        let store = Scripted::with(&[Reply::Fail], &[], &[]);
        let m = maintenance(&store, config(10, 3));
        let (stop, shutdown) = watch::channel(false);
        let run = tokio::spawn(m.run(shutdown));
        // t=0: a tick that fails at promote; t=100, t=200: full ticks of three calls each.
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(store.calls(), [0, 0, 1, 2, 0, 1, 2]);
        let asked = tokio::time::Instant::now();
        stop.send(true).unwrap();
        run.await.unwrap();
        assert_eq!(tokio::time::Instant::now(), asked, "stopped without waiting out the interval");
        assert_eq!(store.calls().len(), 7);
    }

    #[tokio::test(start_paused = true)]
    async fn run_does_not_pause_while_there_is_a_backlog() {
        use Reply::*;
        let store = Scripted::with(&[Full, Full, Full, Count(1)], &[], &[]);
        let m = maintenance(&store, config(10, 2));
        let (stop, shutdown) = watch::channel(false);
        let run = tokio::spawn(m.run(shutdown));
        tokio::time::sleep(Duration::from_millis(1)).await;
        // Two ticks back to back (the first hit the bound), then the pause.
        assert_eq!(store.calls(), [0, 0, 1, 2, 0, 0, 1, 2]);
        stop.send(true).unwrap();
        run.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn run_stops_during_a_stuck_tick() {
        let store = Scripted::with(&[Reply::Hang], &[], &[]);
        let m = maintenance(&store, config(10, 3));
        let (stop, shutdown) = watch::channel(false);
        let run = tokio::spawn(m.run(shutdown));
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(store.calls(), [0]);
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_millis(1), run).await.expect("stopped promptly").unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn run_stops_when_the_shutdown_sender_is_gone() {
        let store = Scripted::with(&[], &[], &[]);
        let (stop, shutdown) = watch::channel(false);
        let run = tokio::spawn(maintenance(&store, config(10, 3)).run(shutdown));
        drop(stop);
        tokio::time::timeout(Duration::from_millis(1), run).await.expect("stopped promptly").unwrap();
    }
}
