//! Leader election (`Leadership`): one leader at a time among stores sharing a database, a new
//! epoch (fencing token) for every term, a clean stop handing over at once, a vanished leader
//! replaced after its TTL, and maintenance that acts only under the current term's fence.
//!
//! Waits are bounded by outcomes (a term starts, a row changes); no test measures how fast.

mod common;

use std::time::Duration;

use dray_core::{NewJob, Payload, QueueName, Timestamp, WorkerId};
use dray_store::{JobInsert, JobLease, Maintain, Store};
use dray_store_postgres::{MAINTENANCE, PostgresConfig, PostgresStore};
use tokio::sync::watch;

use common::{TestDb, leads};

/// Bound on any wait for an election outcome (many TTLs of the short test TTL).
const WAIT_MAX: Duration = Duration::from_secs(30);
/// Short, so handovers after an expiry happen within the test; the minimum allowed.
const TTL_MS: u64 = PostgresConfig::LEADER_TTL_MS_MIN;

async fn store(db: &TestDb, ttl_ms: u64) -> PostgresStore {
    PostgresStore::connect(PostgresConfig { leader_ttl_ms: ttl_ms, ..db.config() }).await.unwrap()
}

/// `(holder, epoch, lease still running)` of the maintenance row.
async fn row(client: &tokio_postgres::Client) -> (String, i64, bool) {
    let r = client
        .query_one("SELECT holder, epoch, expires_at > now() FROM dray.leader WHERE name = $1", &[&MAINTENANCE])
        .await
        .unwrap();
    (r.get(0), r.get(1), r.get(2))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_a_new_epoch_per_term_and_a_clean_stop_hands_over() {
    let db = TestDb::create().await;
    let (a, b) = (store(&db, TTL_MS).await, store(&db, TTL_MS).await);
    let client = db.client().await;
    assert_ne!(a.leadership().holder(), b.leadership().holder());

    let (stop_a, stop_a_rx) = watch::channel(false);
    let (stop_b, stop_b_rx) = watch::channel(false);
    let (a_election, b_election) = (a.leadership().clone(), b.leadership().clone());
    let run_a = tokio::spawn(async move { a_election.run(stop_a_rx).await });
    let first = leads(&a).await;
    assert_eq!(row(&client).await, (a.leadership().holder().to_owned(), first as i64, true));

    // B joins and follows: it sees A lead in A's term, and never leads itself while A renews.
    let b_terms = b.leadership().subscribe();
    let run_b = tokio::spawn(async move { b_election.run(stop_b_rx).await });
    let mut seen = b.leadership().observed();
    let want = Some((a.leadership().holder().to_owned(), first));
    tokio::time::timeout(WAIT_MAX, seen.wait_for(|s| *s == want)).await.expect("B saw A lead").unwrap();
    assert!(!b.leadership().is_leader());
    assert!(a.leadership().is_leader(), "A stepped down while the database was fine");
    assert_eq!(row(&client).await, (a.leadership().holder().to_owned(), first as i64, true));
    assert!(!b_terms.has_changed().unwrap(), "B never had a term while A led");

    // A stops cleanly: it releases the lease, and B's next attempt takes it in a new term.
    let _ = stop_a.send(true);
    run_a.await.unwrap();
    assert!(!a.leadership().is_leader());
    let second = leads(&b).await;
    assert_eq!(second, first + 1, "a new holder means a new epoch");
    assert_eq!(row(&client).await, (b.leadership().holder().to_owned(), second as i64, true));

    let _ = stop_b.send(true);
    run_b.await.unwrap();
    let (holder, epoch, running) = row(&client).await;
    assert_eq!((holder.as_str(), epoch, running), (b.leadership().holder(), second as i64, false), "released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_leader_is_replaced_after_its_ttl() {
    let db = TestDb::create().await;
    let (a, b) = (store(&db, TTL_MS).await, store(&db, TTL_MS).await);
    let client = db.client().await;
    let (_stop, stop_rx) = watch::channel(false);
    let a_election = a.leadership().clone();
    let run_a = tokio::spawn({
        let stop = stop_rx.clone();
        async move { a_election.run(stop).await }
    });
    let first = leads(&a).await;
    // A vanishes without releasing (as a SIGKILLed process would): its lease runs out on the
    // database's clock and B takes over in a new term.
    run_a.abort();
    let _ = run_a.await;
    assert!(!a.leadership().is_leader(), "a dropped election stops claiming to lead");
    let (_, _, running) = row(&client).await;
    assert!(running, "the lease was not released");
    let b_election = b.leadership().clone();
    let run_b = tokio::spawn(async move { b_election.run(stop_rx).await });
    let second = leads(&b).await;
    assert_eq!(second, first + 1);
    let (holder, _, _) = row(&client).await;
    assert_eq!(holder, b.leadership().holder());
    run_b.abort();
}

/// The SQL fence: a node that still believes it leads (its next renewal is minutes away, with
/// the longest TTL) but whose term is over in the database acts on nothing; in its own term it
/// acts. A follower's maintenance calls act on nothing without asking the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_acts_only_in_the_current_term() {
    let db = TestDb::create().await;
    let a = store(&db, PostgresConfig::LEADER_TTL_MS_MAX).await;
    let follower = store(&db, PostgresConfig::LEADER_TTL_MS_MAX).await;
    let client = db.client().await;

    // A job leased with a 1 s lease at t0; at t0 + 1 h its lease is overdue.
    let t0 = Timestamp(1_700_000_000_000);
    let later = Timestamp(t0.0 + 3_600_000);
    let queue = QueueName::new("q").unwrap();
    let job = NewJob { lease_ms: Some(1_000), ..NewJob::new(queue.clone(), Payload::new(b"{}".to_vec())) };
    a.job_insert(JobInsert { now: t0, jobs: vec![job] }).await.unwrap();
    let leased = a
        .job_lease(JobLease {
            now: t0,
            queues: vec![queue],
            count_max: 1,
            worker: WorkerId::new("w").unwrap(),
            lease_ms: None,
        })
        .await
        .unwrap();
    assert_eq!(leased.len(), 1);
    let sweep = Maintain { now: later, limit: 100 };

    let (_stop, stop_rx) = watch::channel(false);
    let (a_election, f_election) = (a.leadership().clone(), follower.leadership().clone());
    let _run_a = tokio::spawn({
        let stop = stop_rx.clone();
        async move { a_election.run(stop).await }
    });
    let epoch = leads(&a).await as i64;
    let _run_f = tokio::spawn(async move { f_election.run(stop_rx).await });
    let mut seen = follower.leadership().observed();
    tokio::time::timeout(WAIT_MAX, seen.wait_for(Option::is_some)).await.expect("the follower saw A").unwrap();

    // The follower acts on nothing, whatever is due.
    assert!(follower.leases_expire(sweep).await.unwrap().is_empty());
    assert_eq!(follower.jobs_promote(sweep).await.unwrap(), 0);
    assert_eq!(follower.jobs_prune(sweep).await.unwrap(), 0);

    // Another node took the lease in the database (A paused past its TTL, say); A has not noticed.
    client
        .execute("UPDATE dray.leader SET holder = 'intruder', epoch = epoch + 1 WHERE name = $1", &[&MAINTENANCE])
        .await
        .unwrap();
    assert!(a.leadership().is_leader(), "A has not renewed since");
    assert!(a.leases_expire(sweep).await.unwrap().is_empty(), "a stale epoch expires nothing");
    assert_eq!(a.jobs_promote(sweep).await.unwrap(), 0);
    assert_eq!(a.jobs_prune(sweep).await.unwrap(), 0);
    let state: String = client.query_one("SELECT state FROM dray.jobs", &[]).await.unwrap().get(0);
    assert_eq!(state, "running", "the job's lease is untouched");

    // A's own term again (the intruder's ended and A's was never taken): A acts.
    client
        .execute(
            "UPDATE dray.leader SET holder = $2, epoch = $3 WHERE name = $1",
            &[&MAINTENANCE, &a.leadership().holder(), &epoch],
        )
        .await
        .unwrap();
    let expired = a.leases_expire(sweep).await.unwrap();
    assert_eq!(expired.len(), 1, "the current term expires the overdue lease");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ttl_is_validated_with_its_limit() {
    let db = TestDb::create().await;
    let config = PostgresConfig { leader_ttl_ms: 10, ..db.config() };
    let e = PostgresStore::connect(config).await.unwrap_err().to_string();
    assert_eq!(e, "leader_ttl_ms: is 10 ms; allowed is 500 ms to 600000 ms");
}
