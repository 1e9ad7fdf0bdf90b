//! Flow limits across nodes, beyond the conformance suite: two stores on one database leasing
//! from one queue at once never run more than its `concurrency_max`, never two jobs of a group
//! whose `group_concurrency_max` is 1, and together grant no more than its rate allows. Time is
//! the database's (`TimeSource::Database`), as in production.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dray_core::{JobId, NewJob, Payload, QueueName, Rate, Timestamp, WorkerId};
use dray_store::{Ack, AckOutcome, FlowLimitsChange, JobAck, JobInsert, JobLease, QueueConfigure, Store};
use dray_store_postgres::{PostgresConfig, PostgresStore, TimeSource};

use common::TestDb;

/// A `now` for the parameters; under `TimeSource::Database` the stores read the database's clock.
const T0: Timestamp = Timestamp(1_700_000_000_000);

async fn stores(db: &TestDb) -> (Arc<PostgresStore>, Arc<PostgresStore>) {
    let config = PostgresConfig { time_source: TimeSource::Database, ..db.config() };
    let a = PostgresStore::connect(config.clone()).await.unwrap();
    let b = PostgresStore::connect(config).await.unwrap();
    (Arc::new(a), Arc::new(b))
}

fn q() -> QueueName {
    QueueName::new("q").unwrap()
}

async fn limit(store: &PostgresStore, limits: FlowLimitsChange) {
    store.queue_configure(QueueConfigure { limits, ..QueueConfigure::new(T0, q()) }).await.unwrap();
}

/// Inserts `per_group` jobs for each of `groups` groups (`None`: ungrouped jobs); returns each
/// job's group.
async fn insert(store: &PostgresStore, groups: usize, per_group: usize) -> HashMap<JobId, usize> {
    let mut jobs = Vec::new();
    let mut group_of = Vec::new();
    for i in 0..per_group {
        for g in 0..groups {
            let key = format!("g{g}");
            jobs.push(NewJob {
                group_key: Some(key.into()),
                ..NewJob::new(q(), Payload::new(format!("{i}").into_bytes()))
            });
            group_of.push(g);
        }
    }
    let mut out = HashMap::new();
    for (chunk, groups) in jobs.chunks(100).zip(group_of.chunks(100)) {
        let inserted = store.job_insert(JobInsert { now: T0, jobs: chunk.to_vec() }).await.unwrap();
        for (i, g) in inserted.iter().zip(groups) {
            out.insert(i.id, *g);
        }
    }
    out
}

fn lease(count_max: usize) -> JobLease {
    JobLease { now: T0, queues: vec![q()], count_max, worker: WorkerId::new("w").unwrap(), lease_ms: None }
}

async fn complete(store: &PostgresStore, job: JobId, lease: dray_core::LeaseId) {
    let ack = Ack { job, lease, outcome: AckOutcome::Complete { result: None } };
    let acked = store.job_ack(JobAck { now: T0, acks: vec![ack] }).await.unwrap();
    assert!(acked[0].is_ok(), "{acked:?}");
}

/// What the database says runs now: jobs running in all, and the most running in one group.
async fn running(client: &tokio_postgres::Client) -> (i64, i64) {
    let row = client
        .query_one(
            "SELECT coalesce(sum(n), 0)::bigint, coalesce(max(n), 0) FROM (
                 SELECT count(*) AS n FROM dray.jobs WHERE queue = 'q' AND state = 'running' GROUP BY group_key) g",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// Two nodes lease from one queue with `concurrency_max` 5 and `group_concurrency_max` 1 over
/// 40 groups until every job is done. After each lease, both what the workers hold (a job
/// leaves this set before its completion is sent, so the set is always a subset of the running
/// jobs) and the database's own count stay within the limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limits_hold_across_two_nodes() {
    let db = TestDb::create().await;
    let (a, b) = stores(&db).await;
    limit(
        &a,
        FlowLimitsChange { concurrency_max: Some(Some(5)), group_concurrency_max: Some(Some(1)), ..Default::default() },
    )
    .await;
    let group_of = Arc::new(insert(&a, 40, 5).await);
    let total = group_of.len();
    let held: Arc<Mutex<HashMap<JobId, usize>>> = Arc::default();
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));

    let mut workers = Vec::new();
    for (n, store) in [a.clone(), b.clone(), a.clone(), b.clone()].into_iter().enumerate() {
        let (held, done, group_of) = (held.clone(), done.clone(), group_of.clone());
        let client = db.client().await;
        workers.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut mine = Vec::new();
            while done.load(std::sync::atomic::Ordering::SeqCst) < total {
                assert!(Instant::now() < deadline, "worker {n}: the queue did not drain");
                let leased = store.job_lease(lease(3)).await.unwrap();
                {
                    let mut held = held.lock().unwrap();
                    for job in &leased {
                        let group = group_of[&job.id];
                        assert!(!held.values().any(|g| *g == group), "two jobs of group {group} run at once");
                        held.insert(job.id, group);
                    }
                    assert!(held.len() <= 5, "{} jobs run at once", held.len());
                }
                let (all, per_group) = running(&client).await;
                assert!(all <= 5, "the database runs {all} jobs of the queue");
                assert!(per_group <= 1, "the database runs {per_group} jobs of one group");
                let got_none = leased.is_empty();
                mine.extend(leased.into_iter().map(|j| (j.id, j.lease)));
                // Hold a job over to the next lease while getting more, so that leases meet
                // running jobs of both nodes; finish the oldest when holding two or getting none.
                if mine.len() >= 2 || (got_none && !mine.is_empty()) {
                    let (job, lease) = mine.remove(0);
                    held.lock().unwrap().remove(&job);
                    complete(&store, job, lease).await;
                    done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                } else if got_none {
                    tokio::task::yield_now().await;
                }
            }
            assert!(mine.is_empty(), "worker {n} still holds {mine:?} with every job done");
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(done.load(std::sync::atomic::Ordering::SeqCst), total);
}

/// Two nodes leasing as fast as they can from one queue with a rate: together they are granted
/// no more than the burst plus the rate over the time that passed on the database's clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_holds_across_two_nodes() {
    let db = TestDb::create().await;
    let (a, b) = stores(&db).await;
    let rate = Rate { limit: 40, per_ms: 1_000, burst: 5 };
    limit(&a, FlowLimitsChange { rate: Some(Some(rate)), ..Default::default() }).await;
    insert(&a, 1, 500).await;
    let client = db.client().await;
    let clock = || async {
        let row = client.query_one("SELECT floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint", &[]).await;
        row.unwrap().get::<_, i64>(0)
    };

    let start_ms = clock().await;
    let run = |store: Arc<PostgresStore>| async move {
        let until = Instant::now() + Duration::from_millis(1_500);
        let mut granted = 0;
        while Instant::now() < until {
            for job in store.job_lease(lease(10)).await.unwrap() {
                complete(&store, job.id, job.lease).await;
                granted += 1;
            }
        }
        granted
    };
    let (ga, gb) = tokio::join!(tokio::spawn(run(a.clone())), tokio::spawn(run(b.clone())));
    let end_ms = clock().await;
    let granted = ga.unwrap() + gb.unwrap();
    let elapsed = u64::try_from(end_ms - start_ms).unwrap();
    // One more token may have arrived within the millisecond the clock rounds down.
    let allowed = u64::from(rate.burst) + elapsed * u64::from(rate.limit) / rate.per_ms + 1;
    assert!(granted <= allowed, "{granted} leases in {elapsed} ms, the rate allows {allowed}");
    assert!(granted >= u64::from(rate.burst), "{granted} leases in {elapsed} ms: the burst was not granted");
}

/// A group's rate bucket is a row while it is not full; the prune pass deletes the rows of full
/// buckets (at most its limit per pass), so a queue whose jobs used a million group keys does
/// not keep a million rows. A bucket not yet full is kept, and a deleted one behaves as full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_rate_buckets_are_pruned() {
    let db = TestDb::create().await;
    let store = PostgresStore::connect(db.config()).await.unwrap();
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    let election = store.leadership().clone();
    tokio::spawn(async move { election.run(stop_rx).await });
    common::leads(&store).await;
    let rate = Rate { limit: 1, per_ms: 60_000, burst: 1 };
    limit(&store, FlowLimitsChange { group_rate: Some(Some(rate)), ..FlowLimitsChange::default() }).await;
    insert(&store, 30, 2).await;
    let leased = store.job_lease(lease(100)).await.unwrap();
    assert_eq!(leased.len(), 30, "one job per group: the second waits a minute for its token");
    let client = db.client().await;
    let rows =
        async || -> i64 { client.query_one("SELECT count(*) FROM dray.rate_buckets", &[]).await.unwrap().get(0) };
    assert_eq!(rows().await, 30, "one bucket row per group that leased");

    let sweep = |now: Timestamp, limit| dray_store::Maintain { now, limit };
    store.jobs_prune(sweep(T0.add_ms(59_999), 100)).await.unwrap();
    assert_eq!(rows().await, 30, "buckets not full yet are kept");
    store.jobs_prune(sweep(T0.add_ms(60_000), 20)).await.unwrap();
    assert_eq!(rows().await, 10, "at most the pass's limit");
    store.jobs_prune(sweep(T0.add_ms(60_000), 20)).await.unwrap();
    assert_eq!(rows().await, 0, "every full bucket is gone");

    let later = JobLease { now: T0.add_ms(60_000), ..lease(100) };
    assert_eq!(store.job_lease(later).await.unwrap().len(), 30, "a deleted bucket is a full one");
    assert_eq!(rows().await, 30);
}
