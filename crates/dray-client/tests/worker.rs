//! The worker runtime against an in-process server: throughput and ack batching, retries to the
//! dead-letter queue and redrive, panics, checkpoints, heartbeats, lease loss, cancel, and
//! graceful shutdown. Handlers report through channels; waits are bounded (`common::WAIT_MAX`).
//! Trace context from producer to worker is in `trace/`.

mod common;
mod trace;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{server, spawn, wait_job, wait_state, within};
use dray_client::api::{DeadAction, DeadReason, JobQuery, LeaseRequest, State};
use dray_client::{CancelReason, Enqueue, HandlerResult, JobContext, JobError, SHUTDOWN_ERROR};
use serde_json::json;
use tokio::sync::mpsc;

fn raw_lease(queue: &str, lease_ms: Option<u64>) -> LeaseRequest {
    LeaseRequest {
        queues: vec![queue.into()],
        worker: "raw".into(),
        count: Some(1),
        lease_ms,
        wait_ms: Some(common::WAIT_MAX.as_millis() as u64 / 2),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_runs_jobs_of_two_queues_to_completion_with_batched_acks() {
    const JOBS: u64 = 400;
    let server = server().await;
    let c = &server.client;
    let jobs = (0..JOBS).map(|i| Enqueue::new(if i.is_multiple_of(2) { "even" } else { "odd" }, &i).unwrap()).collect();
    let ids: HashSet<u64> = c.enqueue_batch(jobs).await.unwrap().jobs.iter().map(|j| j.id).collect();

    let (done_tx, mut done) = mpsc::unbounded_channel();
    let handler = move |ctx: JobContext| {
        let done_tx = done_tx.clone();
        async move {
            let i: u64 = ctx.payload()?;
            assert_eq!(ctx.queue(), if i.is_multiple_of(2) { "even" } else { "odd" });
            done_tx.send(ctx.id()).unwrap();
            Ok(Some(json!({ "double": i * 2 })))
        }
    };
    let worker = spawn(server.worker().queues(["even", "odd"], handler).concurrency(32).build().unwrap());
    let mut seen = HashSet::new();
    while seen.len() < ids.len() {
        seen.insert(within(done.recv()).await.unwrap());
    }
    assert_eq!(seen, ids);
    // Every completion is acked before `run` returns.
    let report = worker.stop().await;
    assert_eq!(report.jobs_completed, JOBS, "{report:?}");
    assert_eq!(report.acks_refused, 0, "{report:?}");
    // Batched on the wire: far fewer ack calls than jobs.
    assert!(report.ack_requests * 4 <= JOBS, "{report:?}");
    assert!(report.lease_requests < JOBS / 4, "leases in batches too: {report:?}");

    let any = *ids.iter().next().unwrap();
    let job = c.job(any).await.unwrap();
    assert_eq!(job.state, State::Completed);
    let i: u64 = serde_json::from_str(job.payload.get()).unwrap();
    assert_eq!(job.result.unwrap().get(), format!(r#"{{"double":{}}}"#, i * 2));
    server.stop().await;
}

#[tokio::test]
async fn failures_retry_until_dead_and_redrive_brings_the_job_back() {
    let server = server().await;
    let c = &server.client;
    let id = c.enqueue(Enqueue::new("flaky", &"x").unwrap().attempts_max(3)).await.unwrap().id;

    let healthy = Arc::new(AtomicBool::new(false));
    let (attempts_tx, mut attempts) = mpsc::unbounded_channel();
    let handler = {
        let healthy = healthy.clone();
        move |ctx: JobContext| {
            let (healthy, attempts_tx) = (healthy.clone(), attempts_tx.clone());
            async move {
                attempts_tx.send(ctx.attempt()).unwrap();
                if healthy.load(Ordering::SeqCst) {
                    Ok(None)
                } else {
                    Err(JobError::retryable(format!("downstream down (attempt {})", ctx.attempt()))
                        .retry_after(Duration::ZERO))
                }
            }
        }
    };
    let worker = spawn(server.worker().queue("flaky", handler).build().unwrap());
    for expected in 1..=3 {
        assert_eq!(within(attempts.recv()).await, Some(expected));
    }
    let dead = wait_state(c, id, State::Dead).await;
    assert_eq!(dead.dead_reason, Some(DeadReason::Failed));
    assert_eq!(dead.last_error.as_deref(), Some("downstream down (attempt 3)"));
    let listed = c.dead(JobQuery { queue: Some("flaky".into()), ..Default::default() }).await.unwrap();
    assert_eq!(listed.jobs.iter().map(|j| j.id).collect::<Vec<_>>(), [id]);

    healthy.store(true, Ordering::SeqCst);
    let redriven = c.dead_redrive(DeadAction { ids: Some(vec![id]), ..Default::default() }).await.unwrap();
    assert_eq!(redriven.ids, [id]);
    assert_eq!(within(attempts.recv()).await, Some(1), "attempts restart at 1 after a redrive");
    wait_state(c, id, State::Completed).await;
    let report = worker.stop().await;
    assert_eq!((report.jobs_failed, report.jobs_completed), (3, 1), "{report:?}");
    server.stop().await;
}

#[tokio::test]
async fn a_fatal_error_goes_straight_to_the_dead_letter_queue() {
    let server = server().await;
    let c = &server.client;
    let id = c.enqueue(Enqueue::new("strict", &"not a number").unwrap().attempts_max(5)).await.unwrap().id;
    let handler = |ctx: JobContext| async move {
        let n: u64 = ctx.payload().map_err(JobError::fatal)?;
        Ok(Some(json!(n)))
    };
    let worker = spawn(server.worker().queue("strict", handler).build().unwrap());
    let dead = wait_state(c, id, State::Dead).await;
    assert_eq!((dead.dead_reason, dead.attempt), (Some(DeadReason::NonRetryable), 1));
    assert!(dead.last_error.unwrap().contains("payload"));
    worker.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn a_handler_panic_is_a_failed_attempt() {
    let server = server().await;
    let c = &server.client;
    let id = c.enqueue(Enqueue::new("fragile", &"x").unwrap()).await.unwrap().id;
    let handler = |ctx: JobContext| async move {
        if ctx.attempt() == 1 {
            panic!("kaboom in attempt {}", ctx.attempt());
        }
        Ok(Some(json!("survived")))
    };
    let worker = spawn(server.worker().queue("fragile", handler).build().unwrap());
    // The panic's retry waits out the queue's backoff (at most 1 s for a first retry).
    let job = wait_state(c, id, State::Completed).await;
    assert_eq!(job.attempt, 2);
    let failed = job.history.iter().find(|h| h.event == "failed").expect("a failed attempt in the history");
    assert_eq!(failed.error.as_deref(), Some("handler panicked: kaboom in attempt 1"));
    let report = worker.stop().await;
    assert_eq!((report.jobs_failed, report.jobs_completed), (1, 1), "{report:?}");
    server.stop().await;
}

#[tokio::test]
async fn a_checkpoint_saved_by_one_attempt_is_handed_to_the_next() {
    let server = server().await;
    let c = &server.client;
    let id = c.enqueue(Enqueue::new("long", &10).unwrap()).await.unwrap().id;
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let handler = move |ctx: JobContext| {
        let seen_tx = seen_tx.clone();
        async move {
            let resumed: Option<u32> = ctx.checkpoint()?;
            seen_tx.send((ctx.attempt(), resumed)).unwrap();
            if ctx.attempt() == 1 {
                for step in 1..=3u32 {
                    ctx.save_checkpoint(&step)?;
                }
                ctx.progress(&json!({ "step": 3 }))?;
                assert_eq!(ctx.checkpoint::<u32>()?, Some(3), "the newest checkpoint, saved or not");
                // No flush: the failure must carry the unsent checkpoint to the server first.
                return Err(JobError::retryable("crashed after step 3").retry_after(Duration::ZERO));
            }
            Ok(Some(json!({ "resumed_from": resumed })))
        }
    };
    let worker = spawn(server.worker().queue("long", handler).build().unwrap());
    assert_eq!(within(seen.recv()).await, Some((1, None)));
    assert_eq!(within(seen.recv()).await, Some((2, Some(3))));
    let job = wait_state(c, id, State::Completed).await;
    assert_eq!(job.result.unwrap().get(), r#"{"resumed_from":3}"#);
    worker.stop().await;
    server.stop().await;
}

/// A handler that ended the attempt in its own transaction (`acked_in_transaction`): the worker
/// sends no ack and no more heartbeats. Here no transaction completed it (the embedded server has
/// none), so the silence shows: the 1 s lease expires and the job comes back for attempt 2.
#[tokio::test]
async fn a_job_acked_in_the_handlers_transaction_gets_no_ack_and_no_heartbeat() {
    let server = server().await;
    let c = &server.client;
    let id = c.enqueue(Enqueue::new("tx", &"x").unwrap().lease(Duration::from_secs(1))).await.unwrap().id;
    let handler = |ctx: JobContext| async move {
        if ctx.attempt() == 1 {
            ctx.acked_in_transaction();
            // Longer than the lease: a heartbeat now would keep the job.
            tokio::time::sleep(Duration::from_millis(1_500)).await;
        }
        Ok(None)
    };
    let worker = spawn(server.worker().queue("tx", handler).build().unwrap());
    let job = wait_state(c, id, State::Completed).await;
    assert_eq!(job.attempt, 2);
    // Whether maintenance or the lease promotes the retry depends on timing: not the point here.
    let events: Vec<&str> = job.history.iter().map(|h| h.event.as_str()).filter(|e| *e != "promoted").collect();
    assert_eq!(events, ["enqueued", "leased", "expired", "leased", "completed"], "{:#?}", job.history);
    let report = worker.stop().await;
    assert_eq!((report.jobs_acked_in_transaction, report.jobs_completed, report.acks_refused), (1, 1, 0), "{report:?}");
    server.stop().await;
}

#[tokio::test]
async fn heartbeats_keep_a_job_longer_than_its_lease_and_carry_progress() {
    let server = server().await;
    let c = &server.client;
    let id = c.enqueue(Enqueue::new("slow", &"x").unwrap().lease(Duration::from_secs(1))).await.unwrap().id;
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let (release_tx, release) = tokio::sync::watch::channel(false);
    let handler = move |ctx: JobContext| {
        let (started_tx, mut release) = (started_tx.clone(), release.clone());
        async move {
            ctx.progress(&json!({ "pct": 50 }))?;
            started_tx.send(()).unwrap();
            release.wait_for(|r| *r).await?;
            Ok(None)
        }
    };
    let worker = spawn(server.worker().queue("slow", handler).build().unwrap());
    within(started.recv()).await;
    // Four distinct deadlines (the first plus three heartbeats about a third of a lease apart) take
    // longer than one 1 s lease: the job must still be running in its first attempt.
    let mut deadlines = HashSet::new();
    let job = wait_job(c, id, "heartbeaten three times", |job| {
        if let Some(lease) = &job.lease {
            deadlines.insert(lease.deadline.clone());
        }
        deadlines.len() >= 4
    })
    .await;
    assert_eq!((job.state, job.attempt), (State::Running, 1));
    assert_eq!(job.progress.unwrap().get(), r#"{"pct":50}"#);
    release_tx.send(true).unwrap();
    let job = wait_state(c, id, State::Completed).await;
    assert_eq!(job.attempt, 1);
    assert!(job.history.iter().all(|h| h.event != "expired"), "{:#?}", job.history);
    worker.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn a_worker_that_stops_heartbeating_loses_the_job_to_another() {
    let server = server().await;
    let c = &server.client;
    let id = c.enqueue(Enqueue::new("handoff", &"x").unwrap()).await.unwrap().id;
    // The first "worker" leases for the shortest lease and then goes silent.
    let zombie = c.lease(raw_lease("handoff", Some(1_000))).await.unwrap().jobs.remove(0);
    assert_eq!((zombie.id, zombie.attempt), (id, 1));

    let (attempts_tx, mut attempts) = mpsc::unbounded_channel();
    let handler = move |ctx: JobContext| {
        let attempts_tx = attempts_tx.clone();
        async move {
            attempts_tx.send((ctx.attempt(), ctx.fencing_token())).unwrap();
            Ok(None)
        }
    };
    let worker = spawn(server.worker().queue("handoff", handler).build().unwrap());
    let (attempt, token) = within(attempts.recv()).await.unwrap();
    assert_eq!(attempt, 2, "the expired lease counted as attempt 1");
    assert!(token > zombie.fencing_token, "fencing tokens only go up");
    wait_state(c, id, State::Completed).await;
    // The zombie wakes up and tries to complete: refused, nothing changes.
    let late = dray_client::api::CompleteRequest { lease_id: zombie.lease_id.clone(), result: None };
    let err = c.complete(id, late).await.unwrap_err();
    assert!(err.is_conflict(), "{err}");
    worker.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn cancelling_a_running_job_fires_its_cancellation_signal() {
    let server = server().await;
    let c = &server.client;
    // A short lease heartbeats often, so the cancel is seen within about a second.
    let id = c.enqueue(Enqueue::new("cancellable", &"x").unwrap().lease(Duration::from_secs(2))).await.unwrap().id;
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let handler = move |ctx: JobContext| {
        let events_tx = events_tx.clone();
        async move {
            events_tx.send(None).unwrap();
            let reason = ctx.cancelled().await;
            assert!(ctx.is_cancelled());
            events_tx.send(Some(reason)).unwrap();
            Err(JobError::retryable("stopped on request"))
        }
    };
    let worker = spawn(server.worker().queue("cancellable", handler).build().unwrap());
    assert_eq!(within(events.recv()).await, Some(None), "started");
    assert_eq!(c.cancel(id).await.unwrap().state, State::Running, "a running job is asked to stop");
    assert_eq!(within(events.recv()).await, Some(Some(CancelReason::Requested)));
    wait_state(c, id, State::Cancelled).await;
    worker.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn graceful_shutdown_hands_back_a_job_still_running() {
    let server = server().await;
    let c = &server.client;
    let id = c.enqueue(Enqueue::new("stubborn", &"x").unwrap()).await.unwrap().id;
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let handler = move |ctx: JobContext| {
        let started_tx = started_tx.clone();
        async move {
            ctx.save_checkpoint(&"halfway")?;
            started_tx.send(()).unwrap();
            // Never finishes (and ignores cancellation): only the grace period ends it.
            std::future::pending::<()>().await;
            Ok(None)
        }
    };
    let worker =
        spawn(server.worker().queue("stubborn", handler).shutdown_grace(Duration::from_millis(200)).build().unwrap());
    within(started.recv()).await;
    let report = worker.stop().await;
    assert_eq!((report.jobs_handed_back, report.jobs_failed), (1, 1), "{report:?}");

    // Available again at once (retry_after 0), not after the 30 s lease, with its checkpoint.
    let again = within(c.lease(raw_lease("stubborn", None))).await.unwrap().jobs.remove(0);
    assert_eq!((again.id, again.attempt), (id, 2));
    assert_eq!(again.checkpoint.unwrap().get(), r#""halfway""#);
    let job = c.job(id).await.unwrap();
    let failed = job.history.iter().find(|h| h.event == "failed").unwrap();
    assert_eq!(failed.error.as_deref(), Some(SHUTDOWN_ERROR));
    server.stop().await;
}

#[tokio::test]
async fn graceful_shutdown_lets_a_handler_finish_within_the_grace_period() {
    let server = server().await;
    let c = &server.client;
    let id = c.enqueue(Enqueue::new("polite", &"x").unwrap()).await.unwrap().id;
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let (release_tx, release) = tokio::sync::watch::channel(false);
    let handler = move |_ctx: JobContext| {
        let (started_tx, mut release) = (started_tx.clone(), release.clone());
        async move {
            started_tx.send(()).unwrap();
            release.wait_for(|r| *r).await?;
            Ok(None)
        }
    };
    let worker = server.worker().queue("polite", handler).build().unwrap();
    // The shutdown future tells the test when it resolves: from then on the worker is stopping.
    let (stop_tx, stop) = tokio::sync::oneshot::channel::<()>();
    let (stopping_tx, stopping) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(worker.run(async move {
        let _ = stop.await;
        let _ = stopping_tx.send(());
    }));
    within(started.recv()).await;
    stop_tx.send(()).unwrap();
    within(stopping).await.unwrap();
    // Shutting down while the handler runs; now let it finish: it completes, nothing handed back.
    release_tx.send(true).unwrap();
    let report = within(run).await.unwrap().unwrap();
    assert_eq!((report.jobs_completed, report.jobs_handed_back), (1, 0), "{report:?}");
    assert_eq!(c.job(id).await.unwrap().state, State::Completed);
    server.stop().await;
}

#[tokio::test]
async fn a_worker_rides_out_a_server_restart_and_gives_up_a_lease_it_could_not_extend() {
    let mut server = server().await;
    let id =
        server.client.enqueue(Enqueue::new("sturdy", &"x").unwrap().lease(Duration::from_secs(1))).await.unwrap().id;
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let handler = move |ctx: JobContext| {
        let events_tx = events_tx.clone();
        async move {
            events_tx.send((ctx.attempt(), None)).unwrap();
            if ctx.attempt() == 1 {
                let reason = ctx.cancelled().await;
                events_tx.send((ctx.attempt(), Some(reason))).unwrap();
                return Err(JobError::retryable("lost the lease"));
            }
            Ok(None)
        }
    };
    let worker = spawn(server.worker().queue("sturdy", handler).build().unwrap());
    assert_eq!(within(events.recv()).await, Some((1, None)));
    server.down().await;
    // No heartbeat gets through: when the lease runs out on the worker's clock, the handler is
    // told to stop.
    assert_eq!(within(events.recv()).await, Some((1, Some(CancelReason::LeaseLost))));
    server.up().await;
    // The worker finds the server again; the expired lease makes the job come back.
    assert_eq!(within(events.recv()).await, Some((2, None)));
    let job = wait_state(&server.client, id, State::Completed).await;
    assert_eq!(job.attempt, 2);
    let report = worker.stop().await;
    assert_eq!(report.jobs_completed, 1, "{report:?}");
    assert_eq!(report.acks_refused, 1, "the first attempt's failure came too late: {report:?}");
    server.stop().await;
}

async fn unused(_: JobContext) -> HandlerResult {
    Ok(None)
}

#[tokio::test]
async fn a_lease_the_server_refuses_stops_the_worker_with_the_error() {
    let server = server().await;
    let worker = server.worker().queue("not a queue name", unused).build().unwrap();
    let err = within(worker.run(std::future::pending())).await.unwrap_err();
    assert_eq!(err.status(), Some(422), "{err}");
    server.stop().await;
}

/// `ctx.step`: a retried attempt gets the steps the first one recorded without running them again
/// (the closure runs once per step across both attempts), runs the rest, and every step is on
/// the job; a second call of a step in one attempt is memoized too; a step's own error records
/// nothing; a step past its bounds is a fatal error.
#[tokio::test]
async fn steps_run_once_per_job_across_attempts() {
    use std::collections::HashMap;
    use std::sync::Mutex;

    let server = server().await;
    let c = &server.client;
    let id = c.enqueue(Enqueue::new("agent", &3u32).unwrap().attempts_max(3)).await.unwrap().id;
    let runs: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let (done_tx, mut done) = mpsc::unbounded_channel();
    let handler = {
        let runs = runs.clone();
        move |ctx: JobContext| {
            let (runs, done_tx) = (runs.clone(), done_tx.clone());
            async move {
                let count = |name: &str| *runs.lock().unwrap().entry(name.to_owned()).or_default() += 1;
                let mut results = Vec::new();
                for i in 0..5u32 {
                    let name = format!("call {i}");
                    let value: u32 = ctx
                        .step(&name, || async {
                            count(&name);
                            // The first attempt crashes at call 3, before recording it.
                            if ctx.attempt() == 1 && i == 3 {
                                return Err(JobError::retryable("crashed at call 3").retry_after(Duration::ZERO));
                            }
                            Ok(i * 10 + ctx.attempt())
                        })
                        .await?;
                    results.push(value);
                }
                // Memoized within the attempt too.
                let again: u32 =
                    ctx.step("call 0", || async { Err::<u32, JobError>(JobError::fatal("ran twice")) }).await?;
                let names = ctx.step_names();
                done_tx.send((ctx.attempt(), again, names)).unwrap();
                Ok(Some(json!(results)))
            }
        }
    };
    let worker = spawn(server.worker().queue("agent", handler).build().unwrap());
    let (attempt, again, names) = within(done.recv()).await.unwrap();
    assert_eq!((attempt, again), (2, 1));
    assert_eq!(names, ["call 0", "call 1", "call 2", "call 3", "call 4"]);
    let job = wait_state(c, id, State::Completed).await;
    // Calls 0-2 ran in attempt 1 and were handed to attempt 2; calls 3 and 4 ran in attempt 2.
    assert_eq!(job.result.unwrap().get(), "[1,11,21,32,42]");
    let runs = runs.lock().unwrap().clone();
    let expected: HashMap<String, u32> =
        [("call 0", 1), ("call 1", 1), ("call 2", 1), ("call 3", 2), ("call 4", 1)].map(|(n, k)| (n.into(), k)).into();
    assert_eq!(runs, expected, "each recorded step ran once; call 3 failed before its record, so it ran again");
    let steps: Vec<(&str, u32)> = job.steps.iter().map(|s| (s.name.as_str(), s.attempt)).collect();
    assert_eq!(steps, [("call 0", 1), ("call 1", 1), ("call 2", 1), ("call 3", 2), ("call 4", 2)]);
    worker.stop().await;

    // A step the server refuses for its content fails the job for good.
    let id = c.enqueue(Enqueue::new("too-big", &0u32).unwrap().attempts_max(3)).await.unwrap().id;
    let handler = |ctx: JobContext| async move {
        let big: String = ctx.step("big", || async { Ok::<_, JobError>("x".repeat(300 * 1024)) }).await?;
        Ok(Some(json!(big.len())))
    };
    let worker = spawn(server.worker().queue("too-big", handler).build().unwrap());
    let dead = wait_state(c, id, State::Dead).await;
    assert_eq!(dead.dead_reason, Some(DeadReason::NonRetryable));
    assert!(dead.last_error.as_deref().is_some_and(|e| e.contains("result") && e.contains("262144")), "{dead:?}");
    worker.stop().await;
    server.stop().await;
}

/// A step under a lease the server no longer honours (here: the job was completed behind the
/// worker's back) fails like a heartbeat would: the attempt learns its lease is lost.
#[tokio::test]
async fn a_step_under_a_lost_lease_fails_and_cancels_the_attempt() {
    let server = server().await;
    let c = server.client.clone();
    let id = c.enqueue(Enqueue::new("lost", &0u32).unwrap()).await.unwrap().id;
    let (done_tx, mut done) = mpsc::unbounded_channel();
    let handler = move |ctx: JobContext| {
        let (c, done_tx) = (c.clone(), done_tx.clone());
        async move {
            let request = dray_client::api::CompleteRequest { lease_id: ctx.lease_id().to_owned(), result: None };
            c.complete(ctx.id(), request).await.unwrap();
            let ran = Arc::new(AtomicBool::new(false));
            let step = ctx
                .step("after", || {
                    let ran = ran.clone();
                    async move {
                        ran.store(true, Ordering::SeqCst);
                        Ok::<_, JobError>(1u32)
                    }
                })
                .await;
            done_tx.send((step.map_err(|e| e.to_string()), ctx.cancel_reason(), ran.load(Ordering::SeqCst))).unwrap();
            Ok(None)
        }
    };
    let worker = spawn(server.worker().queue("lost", handler).build().unwrap());
    let (step, reason, ran) = within(done.recv()).await.unwrap();
    assert!(ran, "the closure ran: the record is what the lease guards");
    let error = step.unwrap_err();
    assert!(error.contains("409"), "{error}");
    assert_eq!(reason, Some(CancelReason::LeaseLost));
    assert_eq!(c_job_steps(&server, id).await, 0, "nothing was recorded under the lost lease");
    worker.stop().await;
    server.stop().await;
}

async fn c_job_steps(server: &common::TestServer, id: u64) -> usize {
    server.client.job(id).await.unwrap().steps.len()
}
