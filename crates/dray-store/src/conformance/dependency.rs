//! Job dependencies: `blocked` until every dependency finishes, released with their results,
//! cancelled in cascade when one fails (or run anyway, by policy), refused when they cannot hold.

use dray_core::{Dependency, HistoryKind, JobId, JobState, NewJob, OnDependencyFailure, Payload};

use super::{Ctx, Harness, assert_invalid, ids_of, new_job, payload, q};
use crate::{AckOutcome, DependencyResult, JobFilter, QueueConfigure};

fn after(deps: &[JobId], job: NewJob) -> NewJob {
    NewJob { depends_on: deps.iter().map(|&id| Dependency::Job(id)).collect(), ..job }
}

fn batch(positions: &[usize], job: NewJob) -> NewJob {
    NewJob { depends_on: positions.iter().map(|&i| Dependency::Batch(i)).collect(), ..job }
}

async fn complete_with<H: Harness>(c: &Ctx<H>, queue: &str, id: JobId, result: &str) {
    let leased = c.lease_one(queue, id).await;
    let outcome = AckOutcome::Complete { result: Some(payload(result)) };
    c.ack_one(id, leased.lease, outcome).await.unwrap();
}

async fn fail_for_good<H: Harness>(c: &Ctx<H>, queue: &str, id: JobId) {
    let leased = c.lease_one(queue, id).await;
    let outcome =
        AckOutcome::Fail { error: "boom".into(), retryable: false, retry_after_ms: None, rate_limited: false };
    assert_eq!(c.ack_one(id, leased.lease, outcome).await.unwrap().state, JobState::Dead);
}

async fn leasable<H: Harness>(c: &Ctx<H>, queue: &str) -> Vec<JobId> {
    c.list_ids(JobFilter { queue: Some(q(queue)), state: Some(JobState::Available), ..Default::default() }).await
}

fn result(s: &str) -> Option<Payload> {
    Some(payload(s))
}

/// A job waits `blocked` (never leased) until every dependency completed; then it becomes
/// available, its history says it was released, and its lease carries the dependencies' states
/// and results in the order it named them.
pub async fn dependency_blocks_until_every_dependency_completes<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    let a = c.insert_one(new_job("up", "a")).await;
    let b = c.insert_one(new_job("up", "b")).await;
    let inserted = c.insert(vec![after(&[b, a], new_job("down", "c"))]).await;
    let dependent = inserted[0].id;
    assert_eq!(inserted[0].state, JobState::Blocked);
    assert_eq!(c.get(dependent).await.depends_on.as_ref(), &[b, a]);
    assert_eq!(c.stats("down").await.count(JobState::Blocked), 1);
    assert!(c.lease(&["down"], 10).await.is_empty(), "a blocked job is never leased");

    complete_with(&c, "up", a, r#"{"a":1}"#).await;
    assert_eq!(c.get(dependent).await.state(), JobState::Blocked, "one dependency is not enough");
    assert!(c.lease(&["down"], 10).await.is_empty());

    c.advance(10);
    complete_with(&c, "up", b, r#"{"b":2}"#).await;
    let job = c.get(dependent).await;
    assert_eq!(job.state(), JobState::Available, "released by the last dependency's completion");
    let last = job.history.last().unwrap();
    assert_eq!((last.kind, last.state, last.at), (HistoryKind::Released, JobState::Available, c.now));

    let leased = c.lease(&["down"], 10).await;
    assert_eq!(ids_of(&leased), vec![dependent]);
    let want = vec![
        DependencyResult { id: b, state: Some(JobState::Completed), result: result(r#"{"b":2}"#) },
        DependencyResult { id: a, state: Some(JobState::Completed), result: result(r#"{"a":1}"#) },
    ];
    assert_eq!(leased[0].dependencies, want);

    // Every attempt gets them again.
    let outcome =
        AckOutcome::Fail { error: "again".into(), retryable: true, retry_after_ms: Some(0), rate_limited: false };
    c.ack_one(dependent, leased[0].lease, outcome).await.unwrap();
    c.advance(1);
    let again = c.lease_when_due("down", dependent, 10).await;
    assert_eq!(again.dependencies, want);
}

/// A whole graph in one batch: jobs name others of the batch by position (the API's client keys),
/// in any order; ids come back in the request's order; the graph survives a restart and runs in
/// dependency order.
pub async fn dependency_batch_graph_runs_in_order<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    // 0: join (after 2 and 3), 1: root, 2: left (after 1), 3: right (after 1).
    let jobs = vec![
        batch(&[2, 3], new_job("g", "join")),
        new_job("g", "root"),
        batch(&[1], new_job("g", "left")),
        batch(&[1], new_job("g", "right")),
    ];
    let inserted = c.insert(jobs).await;
    let ids: Vec<JobId> = inserted.iter().map(|i| i.id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids in the request's order: {ids:?}");
    let states: Vec<JobState> = inserted.iter().map(|i| i.state).collect();
    assert_eq!(states, [JobState::Blocked, JobState::Available, JobState::Blocked, JobState::Blocked]);
    assert_eq!(c.get(ids[0]).await.depends_on.as_ref(), &[ids[2], ids[3]]);

    c.restart().await;
    assert_eq!(leasable(&c, "g").await, vec![ids[1]]);
    complete_with(&c, "g", ids[1], "1").await;
    assert_eq!(leasable(&c, "g").await, vec![ids[2], ids[3]]);
    complete_with(&c, "g", ids[2], "2").await;
    c.restart().await;
    assert_eq!(c.get(ids[0]).await.state(), JobState::Blocked);
    complete_with(&c, "g", ids[3], "3").await;
    let leased = c.lease(&["g"], 10).await;
    assert_eq!(ids_of(&leased), vec![ids[0]]);
    let results: Vec<Option<Payload>> = leased[0].dependencies.iter().map(|d| d.result.clone()).collect();
    assert_eq!(results, vec![result("2"), result("3")]);
}

/// Contract decision: with the default policy `cancel`, a dependency that ends dead or cancelled
/// cancels its dependents at once (without waiting for their other dependencies), naming it in
/// `last_error` and history, and the cancellation cascades down the graph; with `run`, the
/// dependent runs once every dependency finished and sees their states.
pub async fn dependency_failure_cancels_in_cascade_or_runs_by_policy<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    let a = c.insert_one(new_job("up", "a")).await;
    let slow = c.insert_one(new_job("up", "slow")).await;
    let b = c.insert(vec![after(&[slow, a], new_job("down", "b"))]).await[0].id;
    let chained = c.insert(vec![after(&[b], new_job("down", "c"))]).await[0].id;
    let runs = NewJob { on_dependency_failure: OnDependencyFailure::Run, ..after(&[a, slow], new_job("down", "d")) };
    let runs = c.insert(vec![runs]).await[0].id;

    c.advance(5);
    fail_for_good(&c, "up", a).await;
    let b_job = c.get(b).await;
    assert_eq!(b_job.state(), JobState::Cancelled);
    assert_eq!(b_job.status.finished_at, Some(c.now));
    let reason = format!("dependency {a} ended dead");
    assert_eq!(b_job.status.last_error.as_deref(), Some(reason.as_str()));
    let last = b_job.history.last().unwrap();
    assert_eq!((last.kind, last.error.as_deref()), (HistoryKind::Cancelled, Some(reason.as_str())));
    let c_job = c.get(chained).await;
    assert_eq!(c_job.state(), JobState::Cancelled, "the cancellation cascades");
    assert_eq!(c_job.status.last_error.as_deref(), Some(format!("dependency {b} ended cancelled").as_str()));
    assert_eq!(c.get(runs).await.state(), JobState::Blocked, "`run` waits for every dependency");

    c.restart().await;
    complete_with(&c, "up", slow, "done").await;
    let leased = c.lease(&["down"], 10).await;
    assert_eq!(ids_of(&leased), vec![runs]);
    let want = vec![
        DependencyResult { id: a, state: Some(JobState::Dead), result: None },
        DependencyResult { id: slow, state: Some(JobState::Completed), result: result("done") },
    ];
    assert_eq!(leased[0].dependencies, want);
}

/// An operator's cancel of a blocked job ends it like any waiting job, and its dependents follow;
/// a lease that expires on the last attempt (dead) cascades the same way.
pub async fn dependency_cancel_and_expiry_cascade<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    let a = c.insert_one(new_job("up", "a")).await;
    let b = c.insert(vec![after(&[a], new_job("down", "b"))]).await[0].id;
    let d = c.insert(vec![after(&[b], new_job("down", "d"))]).await[0].id;
    assert_eq!(c.cancel(b).await.unwrap(), JobState::Cancelled);
    let d_job = c.get(d).await;
    assert_eq!(d_job.state(), JobState::Cancelled);
    assert_eq!(d_job.status.last_error.as_deref(), Some(format!("dependency {b} ended cancelled").as_str()));
    assert_eq!(c.get(a).await.state(), JobState::Available, "a dependency does not care about its dependents");

    let once = c.insert_one(NewJob { attempts_max: Some(1), ..new_job("once", "once") }).await;
    let e = c.insert(vec![after(&[once], new_job("down", "e"))]).await[0].id;
    let leased = c.lease_one("once", once).await;
    c.set_now(leased.deadline);
    assert_eq!(c.expire().await, 1);
    assert_eq!(c.get(once).await.state(), JobState::Dead);
    assert_eq!(c.get(e).await.state(), JobState::Cancelled, "an expiry into the dead-letter queue cascades");
}

/// Dependencies are checked at insert: an unknown job, a job of the batch that does not exist,
/// the job itself, a repeat and a cycle are refused naming the field, and nothing of the batch is
/// inserted. A dependency that already finished counts at once: completed releases, dead or
/// cancelled applies the policy.
pub async fn dependency_refusals_and_finished_dependencies<H: Harness>(h: H) {
    let c = Ctx::open(h).await;
    let missing = JobId(9_999_999);
    let r = c.try_insert(vec![new_job("q", "ok"), after(&[missing], new_job("q", "x"))]).await;
    assert_invalid(r, "jobs[1].depends_on[0]");
    assert_invalid(c.try_insert(vec![batch(&[0], new_job("q", "self"))]).await, "jobs[0].depends_on[0]");
    assert_invalid(c.try_insert(vec![batch(&[3], new_job("q", "out"))]).await, "jobs[0].depends_on[0]");
    let cycle = vec![batch(&[2], new_job("q", "a")), batch(&[0], new_job("q", "b")), batch(&[1], new_job("q", "c"))];
    assert_invalid(c.try_insert(cycle).await, "jobs[0].depends_on");
    let twice = vec![new_job("q", "a"), batch(&[0, 0], new_job("q", "b"))];
    assert_invalid(c.try_insert(twice).await, "jobs[1].depends_on[1]");
    let nothing = c.queue_list().await.iter().all(|s| s.config.name.as_str() != "q");
    assert!(nothing, "nothing of a refused batch was inserted");

    let done = c.insert_one(new_job("up", "done")).await;
    complete_with(&c, "up", done, "7").await;
    let dead = c.insert_one(new_job("up", "dead")).await;
    fail_for_good(&c, "up", dead).await;
    let inserted = c
        .insert(vec![
            after(&[done], new_job("q", "after done")),
            after(&[done, dead], new_job("q", "after dead")),
            NewJob { on_dependency_failure: OnDependencyFailure::Run, ..after(&[dead], new_job("q", "runs")) },
        ])
        .await;
    let states: Vec<JobState> = inserted.iter().map(|i| i.state).collect();
    assert_eq!(states, [JobState::Available, JobState::Cancelled, JobState::Available]);
    let cancelled = c.get(inserted[1].id).await;
    assert_eq!(cancelled.status.last_error.as_deref(), Some(format!("dependency {dead} ended dead").as_str()));
    let kinds: Vec<HistoryKind> = cancelled.history.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [HistoryKind::Enqueued, HistoryKind::Cancelled]);
    assert_eq!(cancelled.history[0].state, JobState::Blocked);
}

/// A released job whose run time is still ahead waits `scheduled` for it; a dependency is kept
/// past its retention while a dependent that will read its result has not finished.
pub async fn dependency_run_at_and_retention<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    c.configure(QueueConfigure { retention_ms: Some(1_000), ..QueueConfigure::new(c.now, q("up")) }).await.unwrap();
    let a = c.insert_one(new_job("up", "a")).await;
    let gate = c.insert_one(new_job("up", "gate")).await;
    let later = NewJob { run_at: Some(c.now.add_ms(60_000)), ..after(&[a, gate], new_job("down", "later")) };
    let later = c.insert(vec![later]).await[0].id;
    complete_with(&c, "up", a, "kept").await;
    c.advance(5_000);
    c.prune().await;
    assert!(c.try_get(a).await.is_some(), "a blocked dependent still needs the result");
    complete_with(&c, "up", gate, "g").await;
    let job = c.get(later).await;
    assert_eq!(job.state(), JobState::Scheduled, "released, but its run time is still ahead");
    c.advance(55_000);
    c.prune().await;
    assert!(c.try_get(a).await.is_some(), "a scheduled dependent still needs the result");
    let leased = c.lease_when_due("down", later, 1_000).await;
    assert_eq!(leased.dependencies[0].result, result("kept"));
    c.ack_one(later, leased.lease, AckOutcome::Complete { result: None }).await.unwrap();
    c.advance(2_000);
    c.prune().await;
    assert!(c.try_get(a).await.is_none(), "pruned once its dependents finished");
}
