//! Maintenance against the real embedded store: time passing (on a [`ManualClock`]) promotes due
//! jobs, expires overdue leases and prunes finished jobs, and `run` stops when told to.
//!
//! Tokio's time is paused in every test: nothing here waits on the wall clock. The store's own
//! time is only ever the `now` maintenance reads from the manual clock.

use std::sync::Arc;
use std::time::Duration;

use dray_core::{Backoff, JobId, JobState, LeaseId, NewJob, Payload, QueueName, Timestamp, WorkerId};
use dray_runtime::{Clock, Maintenance, MaintenanceConfig, ManualClock, TickReport};
use dray_store::{Ack, AckOutcome, Error, JobAck, JobInsert, JobLease, LeasedJob, QueueConfigure, Store};
use dray_store_embedded::{EmbeddedConfig, EmbeddedStore};
use tokio::sync::watch;

const T0: Timestamp = Timestamp(1_700_000_000_000);

struct Fixture {
    store: Arc<EmbeddedStore>,
    clock: ManualClock,
    maintenance: Maintenance<EmbeddedStore, ManualClock>,
    queue: QueueName,
    worker: WorkerId,
    // Dropped last: the store's files live here.
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let mut config = EmbeddedConfig::new(dir.path());
        config.seed = Some(7);
        let store = Arc::new(EmbeddedStore::open(config).unwrap());
        let clock = ManualClock::new(T0);
        let maintenance = Maintenance::new(store.clone(), clock.clone(), MaintenanceConfig::default()).unwrap();
        Fixture {
            store,
            clock,
            maintenance,
            queue: QueueName::new("emails").unwrap(),
            worker: WorkerId::new("worker-1").unwrap(),
            _dir: dir,
        }
    }

    fn new_job(&self) -> NewJob {
        let mut job = NewJob::new(self.queue.clone(), Payload::new(&b"{}"[..]));
        job.attempts_max = Some(3);
        job.lease_ms = Some(1_000);
        // A fixed one-second backoff: the retry is due at most a second after the failure.
        job.backoff = Some(Backoff { base_ms: 1_000, factor: 1.0, cap_ms: 1_000 });
        job
    }

    async fn insert(&self, job: NewJob) -> JobId {
        let inserted = self.store.job_insert(JobInsert { now: self.clock.now(), jobs: vec![job] }).await.unwrap();
        inserted[0].id
    }

    async fn lease(&self) -> Vec<LeasedJob> {
        let p = JobLease {
            now: self.clock.now(),
            queues: vec![self.queue.clone()],
            count_max: 10,
            worker: self.worker.clone(),
            lease_ms: None,
        };
        self.store.job_lease(p).await.unwrap()
    }

    async fn ack(&self, job: JobId, lease: LeaseId, outcome: AckOutcome) -> Result<dray_store::Acked, Error> {
        let p = JobAck { now: self.clock.now(), acks: vec![Ack { job, lease, outcome }] };
        let mut results = self.store.job_ack(p).await.unwrap();
        assert_eq!(results.len(), 1);
        results.pop().unwrap()
    }

    async fn state(&self, id: JobId) -> Option<JobState> {
        self.store.job_get(id).await.unwrap().map(|job| job.state())
    }

    /// One tick's report, with each expiration checked against the store and then dropped so
    /// that tests compare counts.
    async fn tick(&self) -> TickReport {
        let mut report = self.maintenance.tick().await.unwrap();
        assert_eq!(report.expirations.len(), report.expired);
        for e in report.expirations.drain(..) {
            assert_eq!(self.state(e.id).await, Some(e.state), "the reported outcome of {e:?}");
        }
        report
    }
}

fn report(promoted: usize, expired: usize, pruned: usize) -> TickReport {
    TickReport { ticked: Vec::new(), promoted, expired, pruned, backlog: false, expirations: Vec::new() }
}

#[tokio::test(start_paused = true)]
async fn tick_promotes_a_due_scheduled_job_and_not_an_early_one() {
    let f = Fixture::new();
    let mut soon = f.new_job();
    soon.delay_ms = Some(1_000);
    let mut later = f.new_job();
    later.run_at = Some(T0.add_ms(5_000));
    let soon = f.insert(soon).await;
    let later = f.insert(later).await;
    assert_eq!(f.state(soon).await, Some(JobState::Scheduled));

    f.clock.set(T0.add_ms(999));
    assert_eq!(f.tick().await, report(0, 0, 0), "one millisecond early is early");
    assert_eq!(f.state(soon).await, Some(JobState::Scheduled));

    f.clock.set(T0.add_ms(1_000));
    assert_eq!(f.tick().await, report(1, 0, 0));
    assert_eq!(f.state(soon).await, Some(JobState::Available));
    assert_eq!(f.state(later).await, Some(JobState::Scheduled));

    f.clock.set(T0.add_ms(4_999));
    assert_eq!(f.tick().await, report(0, 0, 0));
    assert_eq!(f.state(later).await, Some(JobState::Scheduled));

    f.clock.set(T0.add_ms(5_000));
    assert_eq!(f.tick().await, report(1, 0, 0));
    assert_eq!(f.state(later).await, Some(JobState::Available));
}

#[tokio::test(start_paused = true)]
async fn tick_expires_an_overdue_lease_into_retrying_and_the_job_is_leased_again() {
    let f = Fixture::new();
    let id = f.insert(f.new_job()).await;
    let first = f.lease().await;
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].deadline, T0.add_ms(1_000));

    // The lease is live until its deadline.
    f.clock.advance(999);
    assert_eq!(f.tick().await, report(0, 0, 0));
    assert_eq!(f.state(id).await, Some(JobState::Running));

    f.clock.advance(1);
    assert_eq!(f.tick().await, report(0, 1, 0));
    let job = f.store.job_get(id).await.unwrap().unwrap();
    assert_eq!(job.state(), JobState::Retrying, "an expired lease is a failed attempt, retried");
    assert_eq!(job.status.attempt, 1);
    assert_eq!(job.status.last_error.as_deref(), Some("lease expired"));
    let retry_at = job.status.run_at;
    assert!(retry_at >= f.clock.now() && retry_at <= f.clock.now().add_ms(1_000), "{retry_at}");

    // The first worker comes back too late: its completion is refused.
    let late = f.ack(id, first[0].lease, AckOutcome::Complete { result: None }).await;
    assert!(matches!(late, Err(Error::Rejected { .. })), "{late:?}");

    // Once the backoff is over, maintenance makes it available and a worker gets it again.
    f.clock.set(retry_at);
    assert_eq!(f.tick().await, report(1, 0, 0));
    let second = f.lease().await;
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].id, id);
    assert_eq!(second[0].attempt, 2);
    assert!(second[0].token > first[0].token, "fencing tokens strictly increase");
    let done = f.ack(id, second[0].lease, AckOutcome::Complete { result: None }).await.unwrap();
    assert_eq!(done.state, JobState::Completed);
}

#[tokio::test(start_paused = true)]
async fn tick_prunes_finished_jobs_past_retention_only() {
    let f = Fixture::new();
    let mut configure = QueueConfigure::new(f.clock.now(), f.queue.clone());
    configure.retention_ms = Some(10_000);
    configure.retention_dead_ms = Some(20_000);
    f.store.queue_configure(configure).await.unwrap();

    let completed = f.insert(f.new_job()).await;
    let leased = f.lease().await;
    f.ack(completed, leased[0].lease, AckOutcome::Complete { result: None }).await.unwrap();
    let dead = f.insert(f.new_job()).await;
    let leased = f.lease().await;
    let poison =
        AckOutcome::Fail { error: "poison".into(), retryable: false, retry_after_ms: None, rate_limited: false };
    f.ack(dead, leased[0].lease, poison).await.unwrap();
    let waiting = f.insert(f.new_job()).await;

    f.clock.advance(9_999);
    assert_eq!(f.tick().await, report(0, 0, 0));
    assert_eq!(f.state(completed).await, Some(JobState::Completed));

    f.clock.advance(1);
    assert_eq!(f.tick().await, report(0, 0, 1));
    assert_eq!(f.state(completed).await, None, "pruned after the queue's retention");
    assert_eq!(f.state(dead).await, Some(JobState::Dead), "dead jobs are kept longer");

    f.clock.advance(10_000);
    assert_eq!(f.tick().await, report(0, 0, 1));
    assert_eq!(f.state(dead).await, None);
    assert_eq!(f.state(waiting).await, Some(JobState::Available), "unfinished jobs are never pruned");
}

#[tokio::test(start_paused = true)]
async fn run_makes_time_pass_and_stops_promptly_on_shutdown() {
    let f = Fixture::new();
    let mut job = f.new_job();
    job.delay_ms = Some(1_000);
    let id = f.insert(job).await;

    let (stop, shutdown) = watch::channel(false);
    let maintenance = Maintenance::new(f.store.clone(), f.clock.clone(), MaintenanceConfig::default()).unwrap();
    let run = tokio::spawn(maintenance.run(shutdown));

    // Several intervals pass on tokio's (paused) clock; the job is not due on the server's.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(f.state(id).await, Some(JobState::Scheduled));

    // The server's clock reaches run-at: within an interval or two the loop promotes it.
    f.clock.advance(1_000);
    let interval = Duration::from_millis(MaintenanceConfig::INTERVAL_MS_DEFAULT);
    let mut waited = 0;
    while f.state(id).await != Some(JobState::Available) {
        assert!(waited < 10, "not promoted after {waited} intervals");
        tokio::time::sleep(interval).await;
        waited += 1;
    }

    let asked = tokio::time::Instant::now();
    stop.send(true).unwrap();
    run.await.unwrap();
    assert_eq!(tokio::time::Instant::now(), asked, "stopped without waiting out the interval");
}
