//! Leases and heartbeats that wait for a lock (issue #18, defect 10). Another session holding a
//! table lock stalls a lease or a heartbeat for longer than the lease lasts; when it goes on, the
//! store must not answer as if the lease were live when it is not:
//!
//! - the deadline counts from the database's clock once the locks are held, not from the start
//!   of the transaction (a lease granted after the wait gets its whole length; a heartbeat whose
//!   lease ran out during the wait is refused as expired, changing nothing);
//! - the clock is read again just before the commit: a lease that would be born expired (its
//!   write waited) is not granted and the job stays available (the store runs the lease again);
//!   a heartbeat whose new deadline has passed by then is refused and changes nothing;
//! - `lease_left_ms` is the time actually left at the commit, never more than the lease's length.
//!
//! The waits are real lock waits, observed in `pg_stat_activity`; the tests let the database's
//! clock pass a deadline before releasing the lock, so nothing depends on how fast they run.

mod common;

use std::time::Duration;

use dray_core::{JobId, JobState, LeaseId, NewJob, Payload, QueueName, Rejection, Timestamp, WorkerId};
use dray_store::{Error, JobInsert, JobLease, LeaseExtend, LeasedJob, Store};
use dray_store_postgres::{PostgresConfig, PostgresStore, TimeSource};

use common::TestDb;

const WAIT_MAX: Duration = Duration::from_secs(30);

fn job(queue: &str) -> NewJob {
    NewJob::new(QueueName::new(queue).unwrap(), Payload::new(b"{}".to_vec()))
}

fn lease_params(queue: &str, lease_ms: u64) -> JobLease {
    JobLease {
        // Ignored: the store runs on the database's clock.
        now: Timestamp(0),
        queues: vec![QueueName::new(queue).unwrap()],
        count_max: 1,
        worker: WorkerId::new("w").unwrap(),
        lease_ms: Some(lease_ms),
    }
}

fn heartbeat(job: JobId, lease: LeaseId, extend_ms: u64) -> LeaseExtend {
    LeaseExtend { now: Timestamp(0), job, lease, extend_ms: Some(extend_ms), progress: None, checkpoint: None }
}

async fn store(db: &TestDb) -> PostgresStore {
    PostgresStore::connect(PostgresConfig { time_source: TimeSource::Database, ..db.config() }).await.unwrap()
}

async fn insert(store: &PostgresStore, queue: &str) -> JobId {
    store.job_insert(JobInsert { now: Timestamp(0), jobs: vec![job(queue)] }).await.unwrap()[0].id
}

/// The database's clock now, in whole milliseconds rounded up: "it is at least this late".
async fn db_clock(client: &tokio_postgres::Client) -> Timestamp {
    let row = client.query_one("SELECT ceil(extract(epoch FROM clock_timestamp()) * 1000)::bigint", &[]).await.unwrap();
    Timestamp(row.get(0))
}

/// The database's clock now, in whole milliseconds rounded down: "it was at most this late".
async fn db_clock_floor(client: &tokio_postgres::Client) -> Timestamp {
    let row =
        client.query_one("SELECT floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint", &[]).await.unwrap();
    Timestamp(row.get(0))
}

/// Waits until `n` sessions of this database wait for a lock.
async fn until_waiting_for_locks(client: &tokio_postgres::Client, n: i64) {
    let deadline = tokio::time::Instant::now() + WAIT_MAX;
    loop {
        let row = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap();
        if row.get::<_, i64>(0) >= n {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{n} sessions never waited for a lock");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the database's clock is past `t`.
async fn until_clock_past(client: &tokio_postgres::Client, t: Timestamp) {
    while db_clock(client).await <= t {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The stored lease deadline of `job`, if it is running.
async fn stored_deadline(store: &PostgresStore, job: JobId) -> Option<Timestamp> {
    store.job_get(job).await.unwrap().unwrap().status.lease.map(|l| l.deadline)
}

/// What a worker is told must be true when it is told: the deadline is ahead of the database's
/// clock read after the answer, and `lease_left_ms` is neither more than the lease's length nor
/// more than was left at `before`, a reading of that clock taken after the call's wait ended.
async fn assert_live(
    client: &tokio_postgres::Client,
    what: &str,
    before: Timestamp,
    (deadline, left): (Timestamp, Option<u64>),
    len: u64,
) {
    let after = db_clock(client).await;
    assert!(deadline > after, "{what}: deadline {deadline} already passed at {after}, on the database's clock");
    let left = left.unwrap_or_else(|| panic!("{what}: the store measures the time left on its clock"));
    assert!(left <= len, "{what}: {left} ms left of a {len} ms lease");
    let most = deadline.ms_since(before);
    assert!(left <= most, "{what}: {left} ms left claimed, at most {most} ms were");
}

/// Guards defect 10 as reported: a heartbeat and a lease sent while another session holds
/// `LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE` for longer than the lease. The heartbeat began
/// while its lease was live, but that lease has run out by the time the lock is released: it is
/// refused as expired (it answered 200 with a deadline in the past before). The lease is granted
/// with its whole length from the end of the wait (it answered 200 with a deadline already past).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_and_heartbeat_behind_a_table_lock_are_timed_from_the_end_of_the_wait() {
    let db = TestDb::create().await;
    let store = std::sync::Arc::new(store(&db).await);
    let client = db.client().await;
    let held = insert(&store, "locked").await;
    let first = store.job_lease(lease_params("locked", 2_000)).await.unwrap().pop().unwrap();
    assert_eq!(first.id, held);
    let waiting = insert(&store, "locked").await;

    let mut locker = db.client().await;
    let lock = locker.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE dray.jobs IN ACCESS EXCLUSIVE MODE").await.unwrap();
    let beat = tokio::spawn({
        let store = store.clone();
        async move { store.lease_extend(heartbeat(held, first.lease, 2_000)).await }
    });
    let lease = tokio::spawn({
        let store = store.clone();
        async move { store.job_lease(lease_params("locked", 1_000)).await }
    });
    until_waiting_for_locks(&client, 2).await;
    until_clock_past(&client, first.deadline.add_ms(100)).await;
    let released = db_clock_floor(&client).await;
    lock.commit().await.unwrap();

    match beat.await.unwrap() {
        Err(Error::Rejected { job, rejection: Rejection::LeaseExpired { .. } }) => assert_eq!(job, held),
        other => panic!("a heartbeat for a lease that ran out while it waited must be refused: {other:?}"),
    }
    let leased: Vec<LeasedJob> = lease.await.unwrap().unwrap();
    let [got] = leased.as_slice() else { panic!("one job leased after the wait: {leased:?}") };
    assert_eq!(got.id, waiting);
    let reply = (got.deadline, got.lease_left_ms);
    assert_live(&client, "lease granted after a lock wait", released, reply, 1_000).await;
    assert_eq!(stored_deadline(&store, waiting).await, Some(got.deadline));
}

/// Guards the check before the commit: the reads go through but the write waits
/// (`LOCK TABLE jobs IN SHARE MODE` lets `SELECT ... FOR UPDATE` pass and blocks `UPDATE`) for
/// longer than the lease. The lease that would be born expired is not granted: the store runs it
/// again after the wait and grants a live one, and the job's history shows a single grant. The
/// heartbeat whose new deadline passed while its write waited is refused, and the job keeps its
/// earlier, still live, lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_or_heartbeat_expired_by_its_commit_is_not_granted() {
    let db = TestDb::create().await;
    let store = std::sync::Arc::new(store(&db).await);
    let client = db.client().await;
    let held = insert(&store, "slow-write").await;
    let first = store.job_lease(lease_params("slow-write", 60_000)).await.unwrap().pop().unwrap();
    let waiting = insert(&store, "slow-write").await;

    let mut locker = db.client().await;
    let lock = locker.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE dray.jobs IN SHARE MODE").await.unwrap();
    let started = db_clock_floor(&client).await;
    let beat = tokio::spawn({
        let store = store.clone();
        async move { store.lease_extend(heartbeat(held, first.lease, 1_000)).await }
    });
    let lease = tokio::spawn({
        let store = store.clone();
        async move { store.job_lease(lease_params("slow-write", 1_000)).await }
    });
    until_waiting_for_locks(&client, 2).await;
    let waited = db_clock(&client).await;
    until_clock_past(&client, waited.add_ms(1_100)).await;
    let released = db_clock_floor(&client).await;
    lock.commit().await.unwrap();

    match beat.await.unwrap() {
        Err(Error::Rejected { job, rejection: Rejection::LeaseExpired { deadline } }) => {
            assert_eq!(job, held);
            assert!(deadline >= started.add_ms(1_000), "the refused extension was computed after the read");
        }
        other => panic!("a heartbeat whose extension ran out before its commit must be refused: {other:?}"),
    }
    assert_eq!(stored_deadline(&store, held).await, Some(first.deadline), "the refused heartbeat changed nothing");

    let leased: Vec<LeasedJob> = lease.await.unwrap().unwrap();
    let [got] = leased.as_slice() else { panic!("one job leased after the wait: {leased:?}") };
    assert_eq!(got.id, waiting);
    let reply = (got.deadline, got.lease_left_ms);
    assert_live(&client, "lease whose first write waited", released, reply, 1_000).await;
    let job = store.job_get(waiting).await.unwrap().unwrap();
    assert_eq!((job.status.state, job.status.attempt), (JobState::Running, 1), "one attempt, the live one");
    let grants = job.history.iter().filter(|e| e.kind == dray_core::HistoryKind::Leased).count();
    assert_eq!(grants, 1, "the expired grant was rolled back: {:?}", job.history);
}

/// Guards the reply under no contention: `lease_left_ms` is measured at the commit on the
/// database's clock, so it never claims more than the lease's length, nor more than is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_left_is_measured_at_the_commit() {
    let db = TestDb::create().await;
    let store = store(&db).await;
    let client = db.client().await;
    for _ in 0..20 {
        insert(&store, "plain").await;
    }
    for _ in 0..20 {
        let before = db_clock_floor(&client).await;
        let leased = store.job_lease(lease_params("plain", 1_000)).await.unwrap().pop().unwrap();
        assert_live(&client, "lease", before, (leased.deadline, leased.lease_left_ms), 1_000).await;
        let before = db_clock_floor(&client).await;
        let extended = store.lease_extend(heartbeat(leased.id, leased.lease, 1_000)).await.unwrap();
        assert_live(&client, "heartbeat", before, (extended.deadline, extended.lease_left_ms), 1_000).await;
    }
}
