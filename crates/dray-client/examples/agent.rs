//! An agent workflow of 20 steps, each a paid API call, run with `ctx.step` so that a crash costs
//! only the step it interrupted. Enqueues one agent job, then works it; the first attempt
//! "crashes" at step 14 (set `AGENT_CRASH_AT=0` to let it finish), and the retry resumes at step
//! 14 with the results of steps 1 to 13, which it never pays for again.
//!
//! ```sh
//! DRAY_SERVER=http://127.0.0.1:7700 cargo run -p dray-client --example agent
//! ```
//!
//! How the resume works:
//!
//! - `ctx.step(name, || call)` first looks the step up among the job's recorded steps. Every lease
//!   hands the worker the steps the job recorded so far (`steps` in the lease response), so a
//!   recorded step returns its result at once, without calling the closure.
//! - A step that is not recorded runs its closure, then records the result on the server (durably,
//!   before `step` returns). Recording is fenced like an ack: a worker whose lease was lost cannot
//!   record anything, and the first record of a name wins.
//! - So when an attempt dies (a crash, a deploy, a lost lease), the next attempt replays steps 1 to
//!   13 from the record and calls the API again only from step 14 on. Step 14 itself may run twice:
//!   its first call finished (or not) but its result was never recorded. Give such calls an
//!   idempotency key made of the job id and the step's name when the API takes one.

use std::time::Duration;

use dray_client::{Client, Enqueue, HandlerResult, JobContext, JobError, Worker};
use serde::{Deserialize, Serialize};
use serde_json::json;

const QUEUE: &str = "agents";
const STEPS: u32 = 20;

#[derive(Serialize, Deserialize)]
struct Task {
    goal: String,
}

/// What one model call returns (the thing we pay for).
#[derive(Serialize, Deserialize)]
struct Answer {
    step: u32,
    text: String,
    /// The attempt that paid for it: a resumed job shows 1 for the steps it did not redo.
    paid_by_attempt: u32,
}

/// Stands in for a paid model call: slow, and billed per call.
async fn call_model(ctx: &JobContext, step: u32, goal: &str, context: &str) -> Result<Answer, JobError> {
    tokio::time::sleep(Duration::from_millis(100)).await;
    tracing::info!(job = ctx.id(), attempt = ctx.attempt(), step, "calling the model (billed)");
    let crash_at: u32 = std::env::var("AGENT_CRASH_AT").ok().and_then(|s| s.parse().ok()).unwrap_or(14);
    if ctx.attempt() == 1 && step == crash_at {
        // A crash mid-call: the result is never recorded, so the next attempt calls again.
        return Err(JobError::retryable(format!("worker crashed during step {step}")).retry_after(Duration::ZERO));
    }
    let text = format!("step {step} of {goal:?}, after {} characters of context", context.len());
    Ok(Answer { step, text, paid_by_attempt: ctx.attempt() })
}

async fn agent(ctx: JobContext) -> HandlerResult {
    let task: Task = ctx.payload().map_err(JobError::fatal)?;
    let recorded = ctx.step_names().len();
    tracing::info!(
        job = ctx.id(),
        attempt = ctx.attempt(),
        recorded,
        "agent starts; recorded steps are replayed, not paid again"
    );
    let mut context = String::new();
    let mut answers = Vec::new();
    for step in 1..=STEPS {
        // Unique within the job and stable across attempts: the name is what memoizes the step.
        let name = format!("call-{step:02}");
        let answer: Answer = ctx.step(&name, || call_model(&ctx, step, &task.goal, &context)).await?;
        context.push_str(&answer.text);
        answers.push(answer);
    }
    let paid_now = answers.iter().filter(|a| a.paid_by_attempt == ctx.attempt()).count();
    tracing::info!(job = ctx.id(), attempt = ctx.attempt(), paid_now, "agent done");
    Ok(Some(json!({ "answers": answers })))
}

#[tokio::main]
async fn main() -> Result<(), dray_client::Error> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::new("info")).init();
    let url = std::env::var("DRAY_SERVER").unwrap_or_else(|_| "http://127.0.0.1:7700".into());
    let client = Client::new(url)?;
    let task = Task { goal: "a market report on solar panels".into() };
    let id = client.enqueue(Enqueue::new(QUEUE, &task)?.attempts_max(3)).await?.id;
    tracing::info!(job = id, "enqueued an agent job of {STEPS} steps");

    let worker = Worker::builder(client.clone()).queue(QUEUE, agent).lease_wait(Duration::from_secs(5)).build()?;
    let watcher = client.clone();
    // Stop once the job is finished (or on Ctrl-C).
    let report = worker
        .run(async move {
            loop {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => return,
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
                match watcher.job(id).await {
                    Ok(job) if !job.steps.is_empty() && job.finished_at.is_some() => {
                        let by_attempt: Vec<u32> = job.steps.iter().map(|s| s.attempt).collect();
                        tracing::info!(job = id, state = ?job.state, ?by_attempt, "finished; the attempt that recorded each step");
                        return;
                    }
                    _ => {}
                }
            }
        })
        .await?;
    tracing::info!(?report, "stopped");
    Ok(())
}
