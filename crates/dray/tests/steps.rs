//! Durable steps through the real binary (issue #14): an agent job of 20 steps, each a "paid
//! call" that counts its runs per step name, works through `dray serve` while the server is
//! killed with SIGKILL after step 10 is recorded (and restarted on the same address, under the
//! worker's feet), and the worker itself dies in the middle of step 14 (dropped: no ack, no
//! heartbeat, the lease runs out). A second worker takes the job over. In the end the job is
//! completed, steps 1 to 13 ran exactly once, step 14 at most twice (its first run was never
//! recorded), 15 to 20 once, and the result carries every step's value.
//!
//! Run on the embedded store and in PostgreSQL mode (`DATABASE_URL`, default the local server).

mod common;
mod pg;
mod restartable;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dray_client::api::{Backoff, State};
use dray_client::{Client, Enqueue, JobContext, JobError, Worker};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use common::WAIT_MAX;
use restartable::Server;

const QUEUE: &str = "agents";
const STEPS: u32 = 20;
/// The step after which (once its record was answered) the server is killed.
const KILL_AFTER: u32 = 10;
/// The step whose first run the worker dies in.
const CRASH_AT: u32 = 14;
/// Short, so the dead worker's lease runs out soon; long enough to outlast a server restart.
const LEASE: Duration = Duration::from_secs(4);

/// What the handler tells the test.
#[derive(Debug, PartialEq)]
enum Signal {
    /// Step `KILL_AFTER + 1` started: step `KILL_AFTER` is recorded. It waits for `resume`.
    Recorded(u32),
    /// The first attempt is inside step `CRASH_AT` and will never finish it.
    Crashing,
    /// An attempt ran every step and is about to complete the job.
    Done(u32),
}

/// The side the steps act on: runs per step name (the bill), and the test's signals.
struct Agent {
    runs: Mutex<HashMap<String, u32>>,
    signals: mpsc::UnboundedSender<Signal>,
    resume: watch::Receiver<bool>,
}

fn name(i: u32) -> String {
    format!("step-{i:02}")
}

async fn run_agent(ctx: JobContext, agent: Arc<Agent>) -> Result<Option<Value>, JobError> {
    let mut answers = Vec::new();
    for i in 1..=STEPS {
        let step = name(i);
        let answer: String = ctx
            .step(&step, || async {
                *agent.runs.lock().unwrap().entry(step.clone()).or_default() += 1;
                if ctx.attempt() == 1 && i == KILL_AFTER + 1 {
                    agent.signals.send(Signal::Recorded(KILL_AFTER)).unwrap();
                    let mut resume = agent.resume.clone();
                    resume.wait_for(|go| *go).await.unwrap();
                }
                if ctx.attempt() == 1 && i == CRASH_AT {
                    agent.signals.send(Signal::Crashing).unwrap();
                    std::future::pending::<()>().await;
                }
                Ok::<_, JobError>(format!("answer {i} from attempt {}", ctx.attempt()))
            })
            .await?;
        answers.push(answer);
    }
    agent.signals.send(Signal::Done(ctx.attempt())).unwrap();
    Ok(Some(json!(answers)))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("a blocking task")
}

async fn next(signals: &mut mpsc::UnboundedReceiver<Signal>) -> Signal {
    tokio::time::timeout(WAIT_MAX, signals.recv())
        .await
        .unwrap_or_else(|_| panic!("no signal from the agent within {WAIT_MAX:?}"))
        .expect("the agent's sender lives")
}

fn worker(client: &Client, id: &str, agent: &Arc<Agent>) -> Worker {
    let agent = agent.clone();
    Worker::builder(client.clone())
        .worker_id(id)
        .queue(QUEUE, move |ctx| run_agent(ctx, agent.clone()))
        .lease_duration(LEASE)
        .lease_wait(Duration::from_secs(1))
        .build()
        .expect("a worker")
}

async fn resume_after_a_worker_crash_and_a_server_kill(mut server: Server) {
    let client = Client::builder(server.url()).request_timeout(Duration::from_secs(10)).build().unwrap();
    let job = Enqueue::new(QUEUE, &json!({"goal": "a 20-step report"})).unwrap().attempts_max(5).backoff(Backoff {
        base_ms: 100,
        factor: 1.0,
        cap_ms: 100,
    });
    let id = client.enqueue(job).await.unwrap().id;

    let (signals_tx, mut signals) = mpsc::unbounded_channel();
    let (resume_tx, resume) = watch::channel(false);
    let agent = Arc::new(Agent { runs: Mutex::default(), signals: signals_tx, resume });
    let first = tokio::spawn(worker(&client, "agent-1", &agent).run(std::future::pending::<()>()));

    // Step 10 is recorded (answered durably): kill the server mid-job, restart it, go on.
    assert_eq!(next(&mut signals).await, Signal::Recorded(KILL_AFTER));
    server = blocking(move || {
        server.kill9_and_restart();
        server
    })
    .await;
    let job = client.job(id).await.unwrap();
    assert_eq!(job.steps.len(), KILL_AFTER as usize, "steps 1-10 survived kill -9: {:?}", job.steps);
    resume_tx.send(true).unwrap();

    // The worker dies inside step 14: dropped, it neither acks nor heartbeats any more.
    assert_eq!(next(&mut signals).await, Signal::Crashing);
    first.abort();
    let _ = first.await;
    let mid = client.job(id).await.unwrap();
    assert_eq!(mid.state, State::Running, "the dead worker's lease holds until it runs out");
    assert_eq!(mid.steps.len(), (CRASH_AT - 1) as usize, "steps 1-13 recorded, 14 not");

    // Another worker takes the job over once the lease has run out. Its graceful stop sends
    // the completion before it returns.
    let (stop_tx, stop) = tokio::sync::oneshot::channel::<()>();
    let second = tokio::spawn(worker(&client, "agent-2", &agent).run(async {
        let _ = stop.await;
    }));
    assert_eq!(next(&mut signals).await, Signal::Done(2));
    stop_tx.send(()).unwrap();
    let report = second.await.expect("the second worker's task").expect("the second worker stops cleanly");
    assert_eq!(report.jobs_completed, 1, "{report:?}");
    let done = client.job(id).await.unwrap();
    assert_eq!(done.state, State::Completed, "{done:?}");

    let runs = agent.runs.lock().unwrap().clone();
    for i in 1..=STEPS {
        let n = runs.get(&name(i)).copied().unwrap_or(0);
        match i {
            CRASH_AT => assert!((1..=2).contains(&n), "step {i} ran {n} times: {runs:?}"),
            _ => assert_eq!(n, 1, "step {i} ran {n} times: {runs:?}"),
        }
    }
    let answers: Vec<String> = serde_json::from_str(done.result.as_ref().expect("a result").get()).unwrap();
    let expected: Vec<String> =
        (1..=STEPS).map(|i| format!("answer {i} from attempt {}", if i < CRASH_AT { 1 } else { 2 })).collect();
    assert_eq!(answers, expected, "the result carries every step's value");
    let recorded: Vec<(String, u32)> = done.steps.iter().map(|s| (s.name.clone(), s.attempt)).collect();
    let want: Vec<(String, u32)> = (1..=STEPS).map(|i| (name(i), if i < CRASH_AT { 1 } else { 2 })).collect();
    assert_eq!(recorded, want);
    let entries = done.history.iter().filter(|e| e.event == "step_recorded").count();
    assert_eq!(entries, STEPS as usize, "a timeline entry per step");
    assert!(done.history.iter().any(|e| e.event == "expired"), "the dead worker's lease expired");
    // The operator's view: `dray jobs show` lists the steps and names them on the timeline.
    let (url, id_text) = (server.url(), id.to_string());
    let shown = blocking(move || {
        std::process::Command::new(common::BIN).args(["--server", &url, "jobs", "show", &id_text]).output().unwrap()
    })
    .await;
    let stdout = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.status.success(), "{shown:?}");
    for needle in ["steps:", "step-20", "answer 13 from attempt 1", "step_recorded (step-14)"] {
        assert!(stdout.contains(needle), "no {needle:?} in:\n{stdout}");
    }
    // The (restarted) server lives until here.
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_resume_after_a_worker_crash_and_a_server_kill_embedded() {
    resume_after_a_worker_crash_and_a_server_kill(Server::embedded()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_resume_after_a_worker_crash_and_a_server_kill_postgres() {
    resume_after_a_worker_crash_and_a_server_kill(Server::postgres()).await;
}
