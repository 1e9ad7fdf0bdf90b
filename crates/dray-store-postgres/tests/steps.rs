//! Steps in PostgreSQL mode beyond the shared contract: their rows go with their jobs (prune,
//! discard, queue delete), and a lease of jobs that never recorded a step never reads
//! `job_steps` (migration 14: the row's `steps_count` says whether to).

mod common;

use dray_core::{JobId, JobState, LeaseId, NewJob, Payload, QueueName, Timestamp, WorkerId};
use dray_store::{
    Ack, AckOutcome, DeadDiscard, DeadSelection, Error, JobAck, JobInsert, JobLease, JobStep, LeasedJob, Maintain,
    QueueConfigure, QueueDelete, Store,
};
use dray_store_postgres::PostgresStore;

use common::TestDb;

const T0: Timestamp = Timestamp(1_700_000_000_000);

fn queue(name: &str) -> QueueName {
    QueueName::new(name).unwrap()
}

async fn insert(store: &PostgresStore, queue_name: &str, n: usize) -> Vec<JobId> {
    let jobs = (0..n).map(|i| NewJob::new(queue(queue_name), Payload::new(i.to_string().into_bytes()))).collect();
    store.job_insert(JobInsert { now: T0, jobs }).await.unwrap().into_iter().map(|i| i.id).collect()
}

async fn lease(store: &PostgresStore, queue_name: &str, n: usize) -> Result<Vec<LeasedJob>, Error> {
    let worker = WorkerId::new("w").unwrap();
    store.job_lease(JobLease { now: T0, queues: vec![queue(queue_name)], count_max: n, worker, lease_ms: None }).await
}

async fn step(store: &PostgresStore, job: JobId, lease: LeaseId, name: &str) {
    let p = JobStep { now: T0, job, lease, name: name.into(), result: Payload::new(&b"{\"ok\":true}"[..]) };
    assert!(store.job_step(p).await.unwrap().recorded);
}

async fn ack(store: &PostgresStore, job: &LeasedJob, outcome: AckOutcome) {
    let acks = vec![Ack { job: job.id, lease: job.lease, outcome }];
    store.job_ack(JobAck { now: T0, acks }).await.unwrap().pop().unwrap().unwrap();
}

/// The jobs that have rows in `job_steps`, with how many.
async fn step_rows(db: &TestDb) -> Vec<(i64, i64)> {
    let client = db.client().await;
    let rows =
        client.query("SELECT job_id, count(*) FROM dray.job_steps GROUP BY job_id ORDER BY job_id", &[]).await.unwrap();
    rows.iter().map(|r| (r.get(0), r.get(1))).collect()
}

/// Every statement that deletes jobs deletes their steps: pruning past retention, discarding
/// dead jobs, deleting a queue with its finished jobs. Steps of jobs that stay, stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_go_with_their_jobs() {
    let db = TestDb::create().await;
    let store = PostgresStore::connect(db.config()).await.unwrap();
    for name in ["pruned", "gone"] {
        let mut keep = QueueConfigure::new(T0, queue(name));
        keep.retention_ms = Some(0);
        keep.retention_dead_ms = Some(3_600_000);
        store.queue_configure(keep).await.unwrap();
    }
    insert(&store, "pruned", 3).await;
    insert(&store, "gone", 1).await;
    let jobs = lease(&store, "pruned", 3).await.unwrap();
    let [completed, dead, running] = [&jobs[0], &jobs[1], &jobs[2]];
    for job in &jobs {
        step(&store, job.id, job.lease, "a").await;
        step(&store, job.id, job.lease, "b").await;
    }
    let in_gone = lease(&store, "gone", 1).await.unwrap().pop().unwrap();
    step(&store, in_gone.id, in_gone.lease, "a").await;
    ack(&store, completed, AckOutcome::Complete { result: None }).await;
    let fatal =
        AckOutcome::Fail { error: "poison".into(), retryable: false, retry_after_ms: None, rate_limited: false };
    ack(&store, dead, fatal).await;
    ack(&store, &in_gone, AckOutcome::Complete { result: None }).await;
    let sql = |id: JobId| id.0 as i64;
    assert_eq!(
        step_rows(&db).await,
        [(sql(completed.id), 2), (sql(dead.id), 2), (sql(running.id), 2), (sql(in_gone.id), 1)]
    );

    // Pruned past retention (the dead job's retention is an hour: it stays).
    let pruned = store.jobs_prune(Maintain { now: T0.add_ms(1), limit: 100 }).await.unwrap();
    assert_eq!(pruned, 2, "the completed jobs of both queues");
    assert_eq!(step_rows(&db).await, [(sql(dead.id), 2), (sql(running.id), 2)]);

    let discarded = store
        .dead_discard(DeadDiscard { now: T0, selection: DeadSelection::Ids(vec![dead.id]), dry_run: false })
        .await
        .unwrap();
    assert_eq!(discarded, [dead.id]);
    assert_eq!(step_rows(&db).await, [(sql(running.id), 2)]);

    // A queue deleted with its finished jobs takes their steps.
    insert(&store, "deleted", 1).await;
    let done = lease(&store, "deleted", 1).await.unwrap().pop().unwrap();
    step(&store, done.id, done.lease, "only").await;
    ack(&store, &done, AckOutcome::Complete { result: None }).await;
    assert_eq!(step_rows(&db).await.len(), 2);
    store.queue_delete(QueueDelete { now: T0, queue: queue("deleted") }).await.unwrap();
    assert_eq!(step_rows(&db).await, [(sql(running.id), 2)]);
    assert_eq!(store.job_get(running.id).await.unwrap().unwrap().state(), JobState::Running);
}

/// A lease reads `job_steps` only for picked jobs whose row counts steps. Proven by taking the
/// table away: leases of jobs without steps go on; the lease of a job with steps fails (so this
/// test can fail), changing nothing, and succeeds with its steps once the table is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_of_jobs_without_steps_never_reads_job_steps() {
    let db = TestDb::create().await;
    let store = PostgresStore::connect(db.config()).await.unwrap();
    let with = insert(&store, "with", 1).await[0];
    insert(&store, "without", 20).await;
    let first = lease(&store, "with", 1).await.unwrap().pop().unwrap();
    step(&store, with, first.lease, "fetch").await;
    let fail =
        AckOutcome::Fail { error: "crash".into(), retryable: true, retry_after_ms: Some(0), rate_limited: false };
    ack(&store, &first, fail).await;

    let client = db.client().await;
    client.batch_execute("ALTER TABLE dray.job_steps RENAME TO job_steps_away").await.unwrap();
    for _ in 0..4 {
        let leased = lease(&store, "without", 5).await.unwrap();
        assert_eq!(leased.len(), 5);
        assert!(leased.iter().all(|l| l.steps.is_empty()));
    }
    let refused = lease(&store, "with", 1).await;
    assert!(matches!(refused, Err(Error::Unavailable { .. })), "{refused:?}");
    client.batch_execute("ALTER TABLE dray.job_steps_away RENAME TO job_steps").await.unwrap();

    let second = lease(&store, "with", 1).await.unwrap().pop().unwrap();
    assert_eq!((second.id, second.attempt), (with, 2), "the refused lease changed nothing");
    let steps: Vec<(&str, &[u8])> = second.steps.iter().map(|s| (&*s.name, s.result.as_bytes())).collect();
    assert_eq!(steps, [("fetch", &b"{\"ok\":true}"[..])]);
}
