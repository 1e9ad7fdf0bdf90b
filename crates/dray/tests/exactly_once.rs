//! Exactly-once effects under crashes (issue #19): SDK workers, each a process of its own, write
//! an effect row and complete the job in one transaction (`dray_client::outbox::complete`), and
//! are killed with SIGKILL at random moments, again and again, while two `dray serve` nodes share
//! the database and one of them is killed and restarted too. In the end every job is completed
//! and its effect row exists exactly once: a kill before the commit leaves neither (the job comes
//! back when its lease expires), a kill after it leaves nothing to redo.
//!
//! The worker processes are this test binary run again with [`WORKER_CHILD`] set. The default
//! size suits CI; the issue's full run is
//! `DRAY_EXACTLY_ONCE_JOBS=2000 DRAY_EXACTLY_ONCE_KILLS=200`, like the other process tests'
//! `DRAY_MULTINODE_JOBS`. The database is `DATABASE_URL`'s server (default the local one).

mod common;
mod pg;

use std::hash::{BuildHasher, RandomState};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dray_client::{Client, JobContext, JobError, Worker, outbox};
use tokio::sync::Mutex;

use pg::{Node, TestDb, count, query};

/// Jobs in the run; `DRAY_EXACTLY_ONCE_JOBS` overrides.
const JOBS_DEFAULT: u64 = 300;
/// Worker processes killed during the run; `DRAY_EXACTLY_ONCE_KILLS` overrides.
const KILLS_DEFAULT: u64 = 20;
const QUEUE: &str = "eo";
/// Set in a worker child: `<node url>|<database url>|<name>|<seed>`.
const WORKER_CHILD: &str = "DRAY_EXACTLY_ONCE_WORKER";
const TEST: &str = "workers_killed_mid_transaction_leave_each_effect_exactly_once";
/// Jobs a worker runs at once (each on a database connection of its own).
const WORKER_CONCURRENCY: usize = 4;
/// Short, so the leases of a killed worker come back soon.
const WORKER_LEASE: Duration = Duration::from_secs(2);
/// A worker lives this long at most (plus the time to start) before its SIGKILL.
const LIFE_MS_MAX: u64 = 300;
/// The handler pauses up to this long before each step (begin, effect, complete, commit), so
/// kills land between any two of them.
const STEP_PAUSE_MS_MAX: u64 = 6;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// A small random source (splitmix64) from a printed seed, so a failing run can be replayed.
struct Rng(AtomicU64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(AtomicU64::new(seed))
    }

    fn below(&self, n: u64) -> u64 {
        let mut z = self.0.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed).wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n.max(1)
    }
}

#[test]
fn workers_killed_mid_transaction_leave_each_effect_exactly_once() {
    if let Ok(spec) = std::env::var(WORKER_CHILD) {
        return worker_child(&spec);
    }
    let jobs = env_u64("DRAY_EXACTLY_ONCE_JOBS", JOBS_DEFAULT);
    let kills = env_u64("DRAY_EXACTLY_ONCE_KILLS", KILLS_DEFAULT);
    let seed = std::env::var("DRAY_EXACTLY_ONCE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| RandomState::new().hash_one(std::process::id()));
    eprintln!("exactly-once crash run: {jobs} jobs, {kills} worker kills, seed {seed} (DRAY_EXACTLY_ONCE_SEED)");
    let rng = Rng::new(seed);

    let db = TestDb::create();
    let started = Instant::now();
    let mut nodes = [Node::start(&db.url), Node::start(&db.url)];
    // No unique key on purpose: an effect written twice shows as two rows.
    query(&db.url, "CREATE TABLE effects (job bigint NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())");
    // Jobs numbered from..=to, enqueued through the SQL function.
    let enqueue = |from: u64, to: u64| {
        if from <= to {
            query(
                &db.url,
                &format!("SELECT count(dray.enqueue('{QUEUE}', to_jsonb(n))) FROM generate_series({from}, {to}) n"),
            );
        }
    };
    if kills == 0 {
        enqueue(1, jobs);
    }

    let completed = || count(&db.url, "SELECT count(*) FROM dray.jobs WHERE state = 'completed'");
    let node_kill_at = kills / 2;
    let mut killed = 0;
    let mut completed_at_kills = Vec::new();
    let mut node_killed = false;
    for k in 0..kills {
        // The work arrives along the run, a share per worker life, so that every kill falls while
        // work is in hand, however fast the workers are.
        enqueue(jobs * k / kills + 1, jobs * (k + 1) / kills);
        let node = &nodes[(k % 2) as usize];
        let mut child = spawn_worker(&node.url, &db.url, &format!("w{k}"), rng.below(u64::MAX));
        std::thread::sleep(Duration::from_millis(30 + rng.below(LIFE_MS_MAX)));
        child.kill().expect("SIGKILL the worker");
        let status = child.wait().expect("reap the worker");
        assert!(!status.success(), "the worker ran until killed: {status}");
        killed += 1;
        if k == node_kill_at {
            nodes[1].kill_and_restart();
            node_killed = true;
            eprintln!("node 1 killed and restarted after worker kill {k} ({:?})", started.elapsed());
        }
        if k % 10 == 0 || k + 1 == kills {
            completed_at_kills.push((k, completed()));
        }
    }
    assert_eq!(count(&db.url, "SELECT count(*) FROM dray.jobs"), jobs);
    let done_during_kills = completed();
    eprintln!(
        "{killed} workers killed in {:?}; completed by then: {done_during_kills} of {jobs} (at kill k: {completed_at_kills:?})",
        started.elapsed()
    );
    assert!(node_killed || kills == 0);
    assert!(
        done_during_kills < jobs,
        "the kills must fall while work remains ({done_during_kills} of {jobs} done): a larger run, or more kills"
    );

    // Finish with one worker per node, left alone.
    let mut finishers: Vec<Child> = nodes
        .iter()
        .enumerate()
        .map(|(i, node)| spawn_worker(&node.url, &db.url, &format!("finisher{i}"), rng.below(u64::MAX)))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let done = completed();
        if done == jobs {
            break;
        }
        assert!(Instant::now() < deadline, "only {done} of {jobs} completed");
        std::thread::sleep(Duration::from_millis(200));
    }
    let elapsed = started.elapsed();
    for f in &mut finishers {
        let _ = f.kill();
        let _ = f.wait();
    }

    // Every job completed once, and its effect exists exactly once.
    let unfinished = query(&db.url, "SELECT state, count(*) FROM dray.jobs WHERE state <> 'completed' GROUP BY state");
    assert!(unfinished.trim().is_empty(), "jobs not completed: {unfinished}");
    let twice = query(
        &db.url,
        "SELECT job_id, count(*) FROM dray.job_history WHERE kind = 'completed' GROUP BY job_id \
         HAVING count(*) <> 1 LIMIT 10",
    );
    assert!(twice.trim().is_empty(), "jobs completed more than once: {twice}");
    assert_eq!(count(&db.url, "SELECT count(*) FROM effects"), jobs, "effect rows");
    assert_eq!(count(&db.url, "SELECT count(DISTINCT job) FROM effects"), jobs, "jobs with an effect");
    let duplicated = query(&db.url, "SELECT job, count(*) FROM effects GROUP BY job HAVING count(*) > 1 LIMIT 10");
    assert!(duplicated.trim().is_empty(), "effects written twice: {duplicated}");
    let missing = count(
        &db.url,
        "SELECT count(*) FROM dray.jobs j WHERE NOT EXISTS (SELECT 1 FROM effects e WHERE e.job = j.id)",
    );
    assert_eq!(missing, 0, "completed jobs without their effect");

    // The figures: how much the kills disturbed.
    let redelivered = count(
        &db.url,
        "SELECT count(*) FROM (SELECT job_id FROM dray.job_history WHERE kind = 'leased' GROUP BY job_id \
         HAVING count(*) > 1) r",
    );
    let expired = count(&db.url, "SELECT count(*) FROM dray.job_history WHERE kind = 'expired'");
    // Transactions the database rolled back (the killed workers' open ones among them; the
    // statistics may lag by a second).
    let rolled_back = count(&db.url, "SELECT xact_rollback FROM pg_stat_database WHERE datname = current_database()");
    let failed_attempts = count(&db.url, "SELECT count(*) FROM dray.job_history WHERE kind = 'failed'");
    eprintln!(
        "exactly once: {jobs} jobs, {jobs} effect rows, each once; {killed} worker SIGKILLs, 1 node SIGKILL; \
         {redelivered} jobs delivered more than once, {expired} leases expired, {failed_attempts} failed attempts, \
         about {rolled_back} transactions rolled back; \
         {elapsed:?} in all"
    );
    assert!(kills == 0 || redelivered > 0, "some kill should have cut a job short");
}

fn spawn_worker(node: &str, db: &str, name: &str, seed: u64) -> Child {
    Command::new(std::env::current_exe().expect("the test binary"))
        .args(["--exact", TEST, "--nocapture", "--test-threads", "1"])
        .env(WORKER_CHILD, format!("{node}|{db}|{name}|{seed}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn a worker process")
}

/// A worker process: runs jobs until killed. Each job writes its effect row and completes in
/// one transaction, pausing at random between the steps.
fn worker_child(spec: &str) {
    let parts: Vec<&str> = spec.split('|').collect();
    let [node, db, name, seed] = parts[..] else { panic!("{WORKER_CHILD}={spec}") };
    let rng = Arc::new(Rng::new(seed.parse().expect("a seed")));
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(async move {
        let connector = dray_server::PostgresConfig::new(db).connector().expect("a connector");
        let mut connections = Vec::new();
        for _ in 0..WORKER_CONCURRENCY {
            let (client, connection) = connector.connect().await.expect("a database connection");
            tokio::spawn(connection);
            connections.push(Arc::new(Mutex::new(client)));
        }
        let next = Arc::new(AtomicU64::new(0));
        let worker = Worker::builder(Client::new(node).expect("a client"))
            .worker_id(name)
            .queue(QUEUE, move |ctx: JobContext| {
                let (connections, next, rng) = (connections.clone(), next.clone(), rng.clone());
                async move {
                    // At most WORKER_CONCURRENCY jobs at once: a free connection is always found.
                    let start = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let mut client = loop {
                        if let Some(c) = (0..connections.len())
                            .find_map(|i| connections[(start + i) % connections.len()].clone().try_lock_owned().ok())
                        {
                            break c;
                        }
                        tokio::task::yield_now().await;
                    };
                    let pause = || tokio::time::sleep(Duration::from_millis(rng.below(STEP_PAUSE_MS_MAX + 1)));
                    pause().await;
                    let tx = client.transaction().await?;
                    pause().await;
                    tx.execute("INSERT INTO effects (job) VALUES ($1)", &[&(ctx.id() as i64)]).await?;
                    pause().await;
                    match outbox::complete(&tx, "dray", ctx.id(), ctx.lease_id(), None).await {
                        Ok(_) => {}
                        // The lease ran out (this worker was slow): the effect rolls back with it.
                        Err(e) if e.is_lease_lost() => return Err(JobError::retryable(e)),
                        Err(e) => return Err(e.into()),
                    }
                    pause().await;
                    tx.commit().await?;
                    ctx.acked_in_transaction();
                    Ok(None)
                }
            })
            .concurrency(WORKER_CONCURRENCY)
            .lease_wait(Duration::from_secs(1))
            .lease_duration(WORKER_LEASE)
            .build()
            .expect("a worker");
        let _ = worker.run(std::future::pending::<()>()).await;
    });
}
