//! Schedules across nodes, beyond the conformance suite: several stores on one database tick the
//! same schedule while the maintenance leadership moves between them, and every tick instant
//! gets exactly one job; a follower's tick acts on nothing; a leader whose term ended, before or
//! during its tick, commits nothing of it.
//!
//! Time is the tests' own (`TimeSource::Params`); waits are bounded by outcomes (a term starts,
//! a statement waits for a lock), never by a measured duration.

mod common;

use std::sync::Arc;
use std::time::Duration;

use dray_core::cron::{IntervalRule, Rule};
use dray_core::{Limits, Misfire, NewJob, Overlap, Payload, QueueName, ScheduleName, ScheduleSpec, Timestamp};
use dray_store::{SchedulePut, SchedulesTick, Store, Ticked};
use dray_store_postgres::{MAINTENANCE, PostgresConfig, PostgresStore};
use tokio::sync::watch;

use common::{TestDb, leads};

const T0: Timestamp = Timestamp(1_700_000_000_000);
const EVERY_MS: u64 = 1_000;
/// Bound on any wait for an election outcome or a lock wait.
const WAIT_MAX: Duration = Duration::from_secs(30);

fn every_second(name: &str) -> ScheduleSpec {
    ScheduleSpec {
        name: ScheduleName::new(name).unwrap(),
        template: NewJob::new(QueueName::new("q").unwrap(), Payload::new(b"{}".to_vec())),
        rule: Rule::Interval(IntervalRule::new(EVERY_MS, T0).unwrap()),
        // Never missed however late a pass comes: each instant gets a job of its own, so counting
        // jobs per instant counts ticks.
        misfire: Misfire::RunOnce,
        overlap: Overlap::Allow,
        jitter_ms: 0,
        misfire_grace_ms: Limits::MISFIRE_GRACE_MS_MAX,
        paused: false,
    }
}

async fn store(db: &TestDb, ttl_ms: u64) -> PostgresStore {
    PostgresStore::connect(PostgresConfig { leader_ttl_ms: ttl_ms, ..db.config() }).await.unwrap()
}

async fn put(store: &PostgresStore, spec: ScheduleSpec, now: Timestamp) {
    store.schedule_put(SchedulePut { now, spec, create_only: true }).await.unwrap();
}

async fn tick(store: &PostgresStore, now: Timestamp) -> Vec<Ticked> {
    let p = SchedulesTick { now, limit: Limits::SCHEDULES_MAX, seed: now.0 as u64 };
    store.schedules_tick(p).await.unwrap_or_else(|e| panic!("schedules_tick at {now}: {e:?}"))
}

/// An election of `store`, running until the returned sender says stop.
fn elect(store: &PostgresStore) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    let (stop, stop_rx) = watch::channel(false);
    let election = store.leadership().clone();
    (stop, tokio::spawn(async move { election.run(stop_rx).await }))
}

/// `(tick instant, jobs)` for every instant the schedule has jobs for, in order.
async fn jobs_per_tick(client: &tokio_postgres::Client, name: &str) -> Vec<(Timestamp, i64)> {
    let rows = client
        .query(
            "SELECT floor(extract(epoch FROM schedule_at) * 1000)::bigint, count(*) FROM dray.jobs
             WHERE schedule_name = $1 GROUP BY schedule_at ORDER BY schedule_at",
            &[&name],
        )
        .await
        .unwrap();
    rows.iter().map(|r| (Timestamp(r.get(0)), r.get(1))).collect()
}

fn fired(ticked: &[Ticked]) -> usize {
    ticked.iter().map(|t| t.fired.iter().filter(|f| f.job.is_some()).count()).sum()
}

/// Both nodes tick at `now`, concurrently; returns how many jobs each enqueued.
async fn both_tick(a: &PostgresStore, b: &PostgresStore, now: Timestamp) -> (usize, usize) {
    let (ta, tb) = tokio::join!(tick(a, now), tick(b, now));
    (fired(&ta), fired(&tb))
}

/// Two nodes tick one every-second schedule at the same instants, concurrently: first with no
/// election (both act, and the row lock alone keeps each instant to one job), then while the
/// leadership goes from A to B and back to A (the follower's ticks act on nothing). Instants
/// advance by 700 ms, so some passes find nothing due and some a tick; at the end every instant
/// from the first tick to the last pass has exactly one job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tick_instant_gets_one_job_across_nodes_and_leaders() {
    let db = TestDb::create().await;
    // Long enough that a loaded test machine never loses a term between renewals; a clean stop
    // hands over within a third of it.
    let ttl_ms = 3_000;
    let (a, b) = (store(&db, ttl_ms).await, store(&db, ttl_ms).await);
    let client = db.client().await;
    put(&a, every_second("s"), T0).await;
    let mut now = T0;
    let mut step = || {
        now = now.add_ms(700);
        now
    };

    // No election: both nodes act, racing for the row.
    for _ in 0..10 {
        both_tick(&a, &b, step()).await;
    }

    // A leads, B follows.
    let (stop_a, run_a) = elect(&a);
    leads(&a).await;
    let (stop_b, run_b) = elect(&b);
    for _ in 0..10 {
        let (_, by_b) = both_tick(&a, &b, step()).await;
        assert_eq!(by_b, 0, "a follower's tick enqueues nothing");
    }

    // A stops cleanly; B takes over.
    let _ = stop_a.send(true);
    run_a.await.unwrap();
    let b_epoch = leads(&b).await;
    let (stop_a, run_a) = elect(&a);
    let mut fired_by_b = 0;
    for _ in 0..10 {
        let (by_a, by_b) = both_tick(&a, &b, step()).await;
        assert_eq!(by_a, 0, "a former leader's tick enqueues nothing");
        fired_by_b += by_b;
    }
    assert!(fired_by_b > 0, "the new leader ticks");

    // B stops; A leads again, in a new term.
    let _ = stop_b.send(true);
    run_b.await.unwrap();
    assert!(leads(&a).await > b_epoch);
    for _ in 0..10 {
        let (_, by_b) = both_tick(&a, &b, step()).await;
        assert_eq!(by_b, 0);
    }
    let last = now;

    let got = jobs_per_tick(&client, "s").await;
    let want: Vec<(Timestamp, i64)> =
        (1..).map(|k| T0.add_ms(k * EVERY_MS)).take_while(|&at| at <= last).map(|at| (at, 1)).collect();
    assert_eq!(want.len(), 28, "40 passes of 700 ms cover 28 ticks");
    assert_eq!(got, want, "one job per tick instant");
    let s = a.schedule_get(&ScheduleName::new("s").unwrap()).await.unwrap().unwrap();
    assert_eq!(s.next_at, Some(T0.add_ms(29 * EVERY_MS)));
    assert_eq!(s.last.map(|l| l.at), Some(T0.add_ms(28 * EVERY_MS)));
    let _ = stop_a.send(true);
    run_a.await.unwrap();
}

/// The fence, before the tick: a node that still believes it leads but whose term is over in the
/// database (A paused past its TTL while another node took over) ticks nothing; back in its own
/// term it ticks. A follower ticks nothing without asking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leader_ticks_nothing() {
    let db = TestDb::create().await;
    let a = store(&db, PostgresConfig::LEADER_TTL_MS_MAX).await;
    let follower = store(&db, PostgresConfig::LEADER_TTL_MS_MAX).await;
    let client = db.client().await;
    put(&a, every_second("s"), T0).await;
    let (_stop_a, _run_a) = elect(&a);
    let epoch = leads(&a).await as i64;
    let (_stop_f, _run_f) = elect(&follower);
    let mut seen = follower.leadership().observed();
    tokio::time::timeout(WAIT_MAX, seen.wait_for(Option::is_some)).await.expect("the follower saw A").unwrap();

    let later = T0.add_ms(5 * EVERY_MS);
    assert!(tick(&follower, later).await.is_empty(), "a follower ticks nothing");

    client
        .execute("UPDATE dray.leader SET holder = 'intruder', epoch = epoch + 1 WHERE name = $1", &[&MAINTENANCE])
        .await
        .unwrap();
    assert!(a.leadership().is_leader(), "A has not renewed since");
    assert!(tick(&a, later).await.is_empty(), "a stale epoch ticks nothing");
    assert_eq!(jobs_per_tick(&client, "s").await, []);

    client
        .execute(
            "UPDATE dray.leader SET holder = $2, epoch = $3 WHERE name = $1",
            &[&MAINTENANCE, &a.leadership().holder(), &epoch],
        )
        .await
        .unwrap();
    assert_eq!(fired(&tick(&a, later).await), 5, "in its own term A ticks");
    assert_eq!(jobs_per_tick(&client, "s").await.len(), 5);
}

/// The fence, during the tick: A's tick has locked the schedule and waits to insert its job
/// (the test holds the jobs table) when another node takes the leadership. The cursor's update,
/// fenced and sent last, then matches nothing, so nothing of the tick commits: no job, the cursor
/// where it was. (The same holds for a leader killed mid-tick: its transaction never commits.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_deposed_during_its_tick_commits_nothing() {
    let db = TestDb::create().await;
    let a = Arc::new(store(&db, PostgresConfig::LEADER_TTL_MS_MAX).await);
    let client = db.client().await;
    let mut blocker = db.client().await;
    put(&a, every_second("s"), T0).await;
    let (_stop_a, _run_a) = elect(&a);
    leads(&a).await;

    let hold = blocker.transaction().await.unwrap();
    hold.batch_execute("LOCK TABLE dray.jobs IN SHARE MODE").await.unwrap();
    let ticking = tokio::spawn({
        let a = Arc::clone(&a);
        async move { a.schedules_tick(SchedulesTick { now: T0.add_ms(3 * EVERY_MS), limit: 10, seed: 1 }).await }
    });
    // Wait until the tick's insert waits for the table.
    tokio::time::timeout(WAIT_MAX, async {
        loop {
            let row = client
                .query_one("SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'dray.jobs'::regclass", &[])
                .await
                .unwrap();
            if row.get::<_, i64>(0) > 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the tick reached its insert");
    client
        .execute("UPDATE dray.leader SET holder = 'intruder', epoch = epoch + 1 WHERE name = $1", &[&MAINTENANCE])
        .await
        .unwrap();
    hold.commit().await.unwrap();

    let ticked = ticking.await.unwrap().unwrap();
    assert!(ticked.is_empty(), "{ticked:?}");
    assert_eq!(jobs_per_tick(&client, "s").await, []);
    let jobs: i64 = client.query_one("SELECT count(*) FROM dray.jobs", &[]).await.unwrap().get(0);
    assert_eq!(jobs, 0);
    let s = a.schedule_get(&ScheduleName::new("s").unwrap()).await.unwrap().unwrap();
    assert_eq!((s.next_at, s.last), (Some(T0.add_ms(EVERY_MS)), None), "the cursor did not move");
}
