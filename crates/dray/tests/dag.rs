//! A graph of 1,000 dependent jobs through the real binary while the server is killed with
//! SIGKILL again and again (issue #14): the whole graph is submitted in one atomic batch (client
//! keys name the dependencies), two workers run it, and at seeded moments the server dies and
//! comes back on the same address under their feet. In the end every job completed; every run
//! of a job saw each of its dependencies completed with that dependency's result, and never
//! ran before them; and every dependent was released exactly once (one `released` entry in its
//! history), whatever the kills undid or replayed.
//!
//! Run on the embedded store and in PostgreSQL mode (`DATABASE_URL`, default the local server).

mod common;
mod pg;
mod restartable;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dray_client::api::{JobQuery, State};
use dray_client::{Client, Enqueue, JobContext, JobError, Worker};
use serde_json::{Value, json};

use restartable::Server;

const QUEUE: &str = "dag";
const JOBS: usize = 1_000;
/// Kill the server once this many runs have been counted, for each value (5 kills).
const KILL_AT_RUNS: [usize; 5] = [120, 300, 480, 660, 840];
/// Short, so work the kills orphaned is delivered again soon.
const LEASE: Duration = Duration::from_secs(3);
/// Bound on the whole graph's run, kills included.
const RUN_MAX: Duration = Duration::from_secs(240);

/// Job `i`'s dependencies (always earlier jobs, so the graph has no cycle): its predecessor
/// within a block of 5, a third of it, and the job 17 before. 205 levels deep, one root.
fn dependencies(i: usize) -> BTreeSet<usize> {
    let mut d = BTreeSet::new();
    if i % 5 != 0 {
        d.insert(i - 1);
    }
    if i > 0 {
        d.insert(i / 3);
    }
    if i >= 17 {
        d.insert(i - 17);
    }
    d.remove(&i);
    d
}

/// What the workers saw: runs per job, and every run that broke the rules.
#[derive(Default)]
struct Seen {
    runs: AtomicUsize,
    per_job: Mutex<HashMap<usize, usize>>,
    violations: Mutex<Vec<String>>,
}

async fn run(ctx: JobContext, seen: Arc<Seen>) -> Result<Option<Value>, JobError> {
    let payload: Value = ctx.payload().map_err(|e| JobError::fatal(e))?;
    let i = payload["i"].as_u64().expect("an index") as usize;
    let want = dependencies(i);
    let mut got = BTreeSet::new();
    for d in &ctx.leased_job().dependencies {
        let result: Option<Value> = d.result.as_ref().map(|r| serde_json::from_str(r.get()).unwrap());
        let index = result.as_ref().and_then(|r| r["i"].as_u64()).map(|n| n as usize);
        match (d.state, index) {
            (Some(State::Completed), Some(n)) => {
                got.insert(n);
            }
            other => seen.violations.lock().unwrap().push(format!("job {i} saw dependency {} as {other:?}", d.id)),
        }
    }
    if got != want {
        seen.violations.lock().unwrap().push(format!("job {i} ran with {got:?}, not {want:?}"));
    }
    *seen.per_job.lock().unwrap().entry(i).or_default() += 1;
    seen.runs.fetch_add(1, Ordering::SeqCst);
    Ok(Some(json!({ "i": i })))
}

fn worker(client: &Client, id: &str, seen: &Arc<Seen>) -> Worker {
    let seen = seen.clone();
    Worker::builder(client.clone())
        .worker_id(id)
        .queue(QUEUE, move |ctx| run(ctx, seen.clone()))
        .concurrency(8)
        .lease_duration(LEASE)
        .lease_wait(Duration::from_secs(1))
        .build()
        .expect("a worker")
}

async fn completed(client: &Client) -> u64 {
    match client.queue(QUEUE).await {
        Ok(q) => q.counts.completed,
        Err(_) => 0, // restarting
    }
}

async fn a_graph_survives_kill_9(mut server: Server) {
    let client = Client::builder(server.url()).request_timeout(Duration::from_secs(10)).build().unwrap();
    let graph: Vec<Enqueue> = (0..JOBS)
        .map(|i| {
            let mut job = Enqueue::new(QUEUE, &json!({ "i": i })).unwrap().key(format!("j{i}")).attempts_max(25);
            for d in dependencies(i) {
                job = job.after_key(format!("j{d}"));
            }
            job
        })
        .collect();
    let ids: Vec<u64> = client.enqueue_batch(graph).await.unwrap().jobs.iter().map(|j| j.id).collect();
    assert_eq!(ids.len(), JOBS);

    let seen = Arc::new(Seen::default());
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let workers: Vec<_> = ["w1", "w2"]
        .into_iter()
        .map(|id| {
            let mut stop = stop.clone();
            tokio::spawn(worker(&client, id, &seen).run(async move {
                let _ = stop.wait_for(|s| *s).await;
            }))
        })
        .collect();

    let started = Instant::now();
    let mut kills = KILL_AT_RUNS.iter().peekable();
    while completed(&client).await < JOBS as u64 {
        assert!(
            started.elapsed() < RUN_MAX,
            "the graph did not finish in {RUN_MAX:?}: {} runs",
            seen.runs.load(Ordering::SeqCst)
        );
        if kills.peek().is_some_and(|&&at| seen.runs.load(Ordering::SeqCst) >= at) {
            kills.next();
            server = tokio::task::spawn_blocking(move || {
                server.kill9_and_restart();
                server
            })
            .await
            .unwrap();
        }
        tokio::time::sleep(common::POLL).await;
    }
    assert!(kills.next().is_none(), "every planned kill happened before the graph finished");
    stop_tx.send(true).unwrap();
    for w in workers {
        w.await.expect("a worker task").expect("a worker stops cleanly");
    }

    let violations = seen.violations.lock().unwrap().clone();
    assert!(
        violations.is_empty(),
        "{} runs broke the rules: {:?}",
        violations.len(),
        &violations[..violations.len().min(10)]
    );
    let per_job = seen.per_job.lock().unwrap().clone();
    assert_eq!(per_job.len(), JOBS, "every job ran");

    // Every job completed, and each dependent was released exactly once.
    let mut listed = 0;
    let mut after = None;
    loop {
        let page = client
            .jobs(JobQuery { queue: Some(QUEUE.into()), after, limit: Some(500), ..JobQuery::default() })
            .await
            .unwrap();
        for job in &page.jobs {
            let i = ids.iter().position(|id| *id == job.id).expect("one of the graph's jobs");
            assert_eq!(job.state, State::Completed, "job {i}");
            let full = client.job(job.id).await.unwrap();
            let released = full.history.iter().filter(|e| e.event == "released").count();
            let expected = usize::from(!dependencies(i).is_empty());
            assert_eq!(released, expected, "job {i} released {released} times: {:?}", full.history);
            listed += 1;
        }
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(listed, JOBS);
    eprintln!(
        "{JOBS} jobs, {} runs, {} kills, {:?}",
        seen.runs.load(Ordering::SeqCst),
        KILL_AT_RUNS.len(),
        started.elapsed()
    );
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graph_of_1000_jobs_survives_kill_9_embedded() {
    a_graph_survives_kill_9(Server::embedded()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graph_of_1000_jobs_survives_kill_9_postgres() {
    a_graph_survives_kill_9(Server::postgres()).await;
}
