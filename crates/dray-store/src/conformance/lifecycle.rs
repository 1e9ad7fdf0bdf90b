//! Conformance tests for a job's life: insert, idempotency, lease, heartbeat, ack, fail, expiry
//! and cancel. Each test opens its own store and drives it with an explicit clock.

use dray_core::{
    Backoff, DeadReason, Event, FencingToken, HistoryEntry, HistoryKind, JobId, JobState, Limits, NewJob, Payload,
    Rejection, Timestamp, WorkerId,
};

use super::{
    BACKOFF_1MS, Ctx, Harness, T0, after, assert_counts, assert_invalid, assert_job_eq, assert_not_found,
    assert_rejected, before, default_config, entries_of, expected_inserted, ids_of, kinds_unpromoted, new_job,
    other_lease, outcome, payload, q,
};
use crate::{Ack, AckOutcome, Error, JobFilter, LeaseExtend, Store};

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn keyed(queue: &str, body: &str, key: &str) -> NewJob {
    NewJob { idempotency_key: Some(key.into()), ..new_job(queue, body) }
}

// ---------------------------------------------------------------------------------------------
// Insert
// ---------------------------------------------------------------------------------------------

/// One job is stored exactly as `NewJob::into_job` describes it: available at once, with the
/// queue's default policy and one `Enqueued` history entry.
pub async fn insert_one_job<H: Harness>(h: H) {
    let c = Ctx::open(h).await;
    let mut new = new_job("emails", r#"{"to":"a@example.com"}"#);
    new.priority = 7;
    new.tags = vec!["welcome".into(), "eu".into()];
    new.traceparent = Some(TRACEPARENT.into());

    let inserted = c.insert(vec![new.clone()]).await;
    assert_eq!(inserted[0].state, JobState::Available);
    assert!(!inserted[0].duplicate);
    let id = inserted[0].id;

    let job = c.get(id).await;
    assert_eq!(job.state(), JobState::Available);
    assert_eq!(job.payload, new.payload);
    assert_eq!(job.history.len(), 1, "a new job has exactly one history entry");
    assert_eq!(job.history[0].kind, HistoryKind::Enqueued);
    assert_eq!(job.history[0].at, c.now);
    assert_eq!(job.history[0].state, JobState::Available);
    assert_job_eq(&job, &expected_inserted(&new, id, c.now), "after insert");

    let stats = c.stats("emails").await;
    assert_counts(&stats, &[(JobState::Available, 1)]);
    assert_eq!(stats.config, default_config("emails"), "a queue created by its first job has the default policy");
    assert_eq!(stats.oldest_dead_at, None);
    assert_eq!(c.list_ids(JobFilter::default()).await, vec![id]);
    assert_eq!(c.try_get(JobId(id.0.wrapping_add(1_000))).await, None, "job_get of an unknown id is None");
}

/// A batch is inserted in order: ids strictly increase along the batch and past every earlier job.
pub async fn insert_batch_ids_in_order<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    let batch: Vec<NewJob> =
        (0..5).map(|i| new_job(if i % 2 == 0 { "a" } else { "b" }, &format!(r#"{{"n":{i}}}"#))).collect();
    let inserted = c.insert(batch.clone()).await;
    for pair in inserted.windows(2) {
        assert!(pair[0].id < pair[1].id, "ids increase in batch order: {inserted:?}");
    }
    for (new, ins) in batch.iter().zip(&inserted) {
        assert!(!ins.duplicate);
        assert_eq!(ins.state, JobState::Available);
        assert_job_eq(&c.get(ins.id).await, &expected_inserted(new, ins.id, c.now), "after batch insert");
    }
    c.advance(1);
    let later = c.insert_one(new_job("a", "later")).await;
    assert!(later > inserted[4].id, "a later insert gets a larger id");
    assert_counts(&c.stats("a").await, &[(JobState::Available, 4)]);
    assert_counts(&c.stats("b").await, &[(JobState::Available, 2)]);
    let all = c.list_ids(JobFilter::default()).await;
    let mut want: Vec<JobId> = inserted.iter().map(|i| i.id).collect();
    want.push(later);
    assert_eq!(all, want);
}

/// A job with `run_at` in the future is scheduled, never leased 1 ms early, leased at exactly
/// `run_at`.
pub async fn insert_scheduled_by_run_at<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    let run_at = c.now.add_ms(5_000);
    let new = NewJob { run_at: Some(run_at), ..new_job("q", "later") };
    let inserted = c.insert(vec![new.clone()]).await;
    assert_eq!(inserted[0].state, JobState::Scheduled);
    let id = inserted[0].id;
    let job = c.get(id).await;
    assert_eq!(job.status.run_at, run_at);
    assert_eq!(job.history[0].run_at, Some(run_at), "the Enqueued entry of a scheduled job says when it is due");
    assert_job_eq(&job, &expected_inserted(&new, id, c.now), "after insert");
    assert_counts(&c.stats("q").await, &[(JobState::Scheduled, 1)]);

    c.set_now(before(run_at, 1));
    assert_eq!(c.lease(&["q"], 10).await, vec![], "a scheduled job is not leased 1 ms before run_at");
    assert_eq!(c.promote().await, 0, "a scheduled job is not promoted 1 ms before run_at");
    assert_eq!(c.get(id).await.state(), JobState::Scheduled);

    c.set_now(run_at);
    let l = c.lease_one("q", id).await;
    assert_eq!(l.attempt, 1);
    assert_eq!(c.get(id).await.state(), JobState::Running);
}

/// `delay_ms` is resolved against the insert's `now`: due at `now + delay_ms`, not 1 ms earlier.
pub async fn insert_scheduled_by_delay<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    let new = NewJob { delay_ms: Some(5_000), ..new_job("q", "later") };
    let inserted = c.insert(vec![new.clone()]).await;
    assert_eq!(inserted[0].state, JobState::Scheduled);
    let id = inserted[0].id;
    let due = c.now.add_ms(5_000);
    let job = c.get(id).await;
    assert_eq!(job.status.run_at, due);
    assert_job_eq(&job, &expected_inserted(&new, id, c.now), "after insert");

    let now_job = NewJob { delay_ms: Some(0), ..new_job("q", "now") };
    let inserted = c.insert(vec![now_job]).await;
    assert_eq!(inserted[0].state, JobState::Available, "a zero delay means available at once");
    let at_once = inserted[0].id;

    assert_eq!(ids_of(&c.lease(&["q"], 10).await), vec![at_once]);
    c.set_now(before(due, 1));
    assert_eq!(c.lease(&["q"], 10).await, vec![], "a delayed job is not leased 1 ms early");
    c.set_now(due);
    c.lease_one("q", id).await;
}

/// A `run_at` in the past makes the job available at once, keeping its `run_at` as its place in
/// line (earlier run time leases first).
pub async fn insert_run_at_in_the_past<H: Harness>(h: H) {
    let c = Ctx::open(h).await;
    let first = c.insert_one(new_job("q", "first")).await;
    let past = before(c.now, 10_000);
    let new = NewJob { run_at: Some(past), ..new_job("q", "past") };
    let inserted = c.insert(vec![new.clone()]).await;
    assert_eq!(inserted[0].state, JobState::Available);
    let id = inserted[0].id;
    let job = c.get(id).await;
    assert_eq!(job.status.run_at, past);
    assert_job_eq(&job, &expected_inserted(&new, id, c.now), "after insert");
    assert_eq!(ids_of(&c.lease(&["q"], 10).await), vec![id, first], "earlier run time leases first");
}

type Breaker = fn(&mut NewJob, Timestamp);

/// Each way a job can break a limit, and the field the error must name.
fn invalid_jobs() -> Vec<(&'static str, Breaker)> {
    vec![
        ("payload", |j, _| j.payload = Payload::new(vec![b'x'; Limits::PAYLOAD_BYTES_MAX + 1])),
        ("priority", |j, _| j.priority = Limits::PRIORITY_MAX + 1),
        ("priority", |j, _| j.priority = Limits::PRIORITY_MIN - 1),
        ("attempts_max", |j, _| j.attempts_max = Some(0)),
        ("attempts_max", |j, _| j.attempts_max = Some(Limits::ATTEMPTS_MAX_MAX + 1)),
        ("lease_ms", |j, _| j.lease_ms = Some(Limits::LEASE_MS_MIN - 1)),
        ("lease_ms", |j, _| j.lease_ms = Some(Limits::LEASE_MS_MAX + 1)),
        ("backoff.base_ms", |j, _| j.backoff = Some(Backoff { base_ms: 0, ..Backoff::default() })),
        ("backoff.factor", |j, _| j.backoff = Some(Backoff { factor: 0.5, ..Backoff::default() })),
        ("run_at", |j, now| j.run_at = Some(now.add_ms(Limits::RUN_AT_AHEAD_MS_MAX + 1))),
        ("delay_ms", |j, _| j.delay_ms = Some(Limits::RUN_AT_AHEAD_MS_MAX + 1)),
        ("delay_ms", |j, now| {
            j.run_at = Some(now.add_ms(1));
            j.delay_ms = Some(1);
        }),
        ("idempotency_key", |j, _| j.idempotency_key = Some("".into())),
        ("idempotency_key", |j, _| j.idempotency_key = Some("k".repeat(Limits::IDEMPOTENCY_KEY_BYTES_MAX + 1).into())),
        ("tags", |j, _| j.tags = (0..=Limits::TAGS_PER_JOB_MAX).map(|i| format!("t{i}").into()).collect()),
        ("tags", |j, _| j.tags = vec!["a b".into()]),
        ("traceparent", |j, _| j.traceparent = Some("not-a-traceparent".into())),
    ]
}

/// One invalid job rejects the whole batch with `Error::Invalid` naming its index and field, and
/// nothing is inserted (not even a queue appears). Jobs at exactly each limit are accepted.
pub async fn insert_invalid_job_rejects_whole_batch<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    c.insert_one(new_job("q", "baseline")).await;
    let before_all = c.snapshot().await;

    for (field, breaker) in invalid_jobs() {
        let mut bad = new_job("q", "bad");
        breaker(&mut bad, c.now);
        let single = c.try_insert(vec![bad.clone()]).await;
        assert_invalid(single, &format!("jobs[0].{field}"));
        let batch = vec![new_job("never-created", "ok 0"), new_job("q", "ok 1"), bad, new_job("q", "ok 3")];
        assert_invalid(c.try_insert(batch).await, &format!("jobs[2].{field}"));
        c.assert_unchanged(&before_all, &format!("after a batch rejected for {field}")).await;
    }

    // Every limit is inclusive.
    let edge = |f: fn(&mut NewJob, Timestamp), now: Timestamp| {
        let mut j = new_job("q", "edge");
        f(&mut j, now);
        j
    };
    let edges = vec![
        edge(|j, _| j.payload = Payload::new(vec![b'x'; Limits::PAYLOAD_BYTES_MAX]), c.now),
        edge(|j, _| j.priority = Limits::PRIORITY_MAX, c.now),
        edge(|j, _| j.priority = Limits::PRIORITY_MIN, c.now),
        edge(|j, _| j.attempts_max = Some(1), c.now),
        edge(|j, _| j.attempts_max = Some(Limits::ATTEMPTS_MAX_MAX), c.now),
        edge(|j, _| j.lease_ms = Some(Limits::LEASE_MS_MIN), c.now),
        edge(|j, _| j.lease_ms = Some(Limits::LEASE_MS_MAX), c.now),
        edge(|j, now| j.run_at = Some(now.add_ms(Limits::RUN_AT_AHEAD_MS_MAX)), c.now),
        edge(|j, _| j.delay_ms = Some(Limits::RUN_AT_AHEAD_MS_MAX), c.now),
        edge(|j, _| j.idempotency_key = Some("k".repeat(Limits::IDEMPOTENCY_KEY_BYTES_MAX).into()), c.now),
        edge(|j, _| j.tags = (0..Limits::TAGS_PER_JOB_MAX).map(|i| format!("t{i}").into()).collect(), c.now),
    ];
    let inserted = c.insert(edges.clone()).await;
    for (new, ins) in edges.iter().zip(&inserted) {
        assert_job_eq(&c.get(ins.id).await, &expected_inserted(new, ins.id, c.now), "edge job");
    }
    c.advance(1);
    assert_eq!(c.list(JobFilter::default()).await.len(), 1 + edges.len());
}

/// An empty batch, a batch over `BATCH_JOBS_MAX` jobs and one over `BATCH_BYTES_MAX` payload bytes
/// are rejected and change nothing; batches at exactly the limits are accepted.
pub async fn insert_batch_size_limits<H: Harness>(h: H) {
    let c = Ctx::open(h).await;
    c.insert_one(new_job("q", "baseline")).await;
    let snap = c.snapshot().await;
    assert_invalid(c.try_insert(vec![]).await, "jobs");
    let over: Vec<NewJob> = (0..=Limits::BATCH_JOBS_MAX).map(|i| new_job("q", &i.to_string())).collect();
    assert_invalid(c.try_insert(over).await, "jobs");
    c.assert_unchanged(&snap, "after rejected batches").await;

    // The payloads of one batch together are bounded too.
    let big = |n: usize| -> Vec<NewJob> {
        let per_job = Limits::BATCH_BYTES_MAX / n;
        assert!(per_job <= Limits::PAYLOAD_BYTES_MAX);
        (0..n)
            .map(|i| {
                let extra = if i == 0 { Limits::BATCH_BYTES_MAX % n } else { 0 };
                NewJob::new(q("q"), Payload::new(vec![b'x'; per_job + extra]))
            })
            .collect()
    };
    let mut over_bytes = big(16);
    over_bytes.push(new_job("q", "x"));
    assert_invalid(c.try_insert(over_bytes).await, "jobs");
    c.assert_unchanged(&snap, "after rejected batches").await;
    let inserted = c.insert(big(16)).await;
    assert_eq!(inserted.len(), 16, "a batch of exactly BATCH_BYTES_MAX payload bytes is accepted");

    let full: Vec<NewJob> = (0..Limits::BATCH_JOBS_MAX).map(|i| new_job("q", &i.to_string())).collect();
    let inserted = c.insert(full).await;
    for pair in inserted.windows(2) {
        assert!(pair[0].id < pair[1].id, "ids increase in batch order");
    }
    assert_counts(&c.stats("q").await, &[(JobState::Available, 17 + Limits::BATCH_JOBS_MAX as u64)]);
}

// ---------------------------------------------------------------------------------------------
// Idempotency
// ---------------------------------------------------------------------------------------------

/// The same queue, key and payload again returns the original job, marked duplicate, inserting
/// nothing; also once the original has completed (it is still within its window).
pub async fn idempotency_duplicate_returns_original<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    let id = c.insert_one(keyed("q", "p", "order-1")).await;
    let snap = c.snapshot().await;
    c.advance(1_000);
    let again = c.insert(vec![keyed("q", "p", "order-1")]).await;
    assert_eq!((again[0].id, again[0].duplicate, again[0].state), (id, true, JobState::Available));
    c.assert_unchanged(&snap, "after a duplicate insert").await;

    let l = c.lease_one("q", id).await;
    c.complete(id, l.lease).await.unwrap();
    c.advance(1_000);
    let again = c.insert(vec![keyed("q", "p", "order-1")]).await;
    assert_eq!(
        (again[0].id, again[0].duplicate, again[0].state),
        (id, true, JobState::Completed),
        "a duplicate of a completed job returns it, with its current state"
    );
    assert_eq!(c.list_ids(JobFilter::default()).await, vec![id]);
}

/// Contract decision: within one batch, a later job with the same queue, key and payload as an
/// earlier one is a duplicate of it (same id, `duplicate = true`).
pub async fn idempotency_duplicate_within_batch<H: Harness>(h: H) {
    let c = Ctx::open(h).await;
    let ins = c.insert(vec![keyed("q", "p", "k"), new_job("q", "other"), keyed("q", "p", "k")]).await;
    assert!(!ins[0].duplicate && !ins[1].duplicate);
    assert_eq!((ins[2].id, ins[2].duplicate), (ins[0].id, true), "{ins:?}");
    assert_ne!(ins[0].id, ins[1].id);
    assert_eq!(c.list_ids(JobFilter::default()).await, vec![ins[0].id, ins[1].id]);

    let ins2 = c.insert(vec![keyed("q", "p", "k"), new_job("q", "new")]).await;
    assert_eq!((ins2[0].id, ins2[0].duplicate), (ins[0].id, true));
    assert!(!ins2[1].duplicate && ins2[1].id > ins[1].id);
    assert_counts(&c.stats("q").await, &[(JobState::Available, 3)]);
}

/// Idempotency keys are durable: after a restart the same request still finds the original job.
pub async fn idempotency_survives_restart<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    let id = c.insert_one(keyed("q", "p", "k")).await;
    c.restart().await;
    c.advance(10);
    let again = c.insert(vec![keyed("q", "p", "k")]).await;
    assert_eq!((again[0].id, again[0].duplicate), (id, true));
    match c.try_insert(vec![keyed("q", "other payload", "k")]).await {
        Err(Error::IdempotencyConflict { index: 0, existing, .. }) => assert_eq!(existing, id),
        other => panic!("expected an idempotency conflict after restart, got {other:?}"),
    }
    assert_eq!(c.list_ids(JobFilter::default()).await, vec![id]);
}

/// The same key with another payload is `Error::IdempotencyConflict` naming the batch index, queue,
/// key and existing job; the whole batch is rejected.
pub async fn idempotency_conflict_different_payload<H: Harness>(h: H) {
    let c = Ctx::open(h).await;
    let id = c.insert_one(keyed("q", "p1", "k")).await;
    let snap = c.snapshot().await;

    match c.try_insert(vec![keyed("q", "p2", "k")]).await {
        Err(Error::IdempotencyConflict { index, queue, key, existing }) => {
            assert_eq!((index, queue, &*key, existing), (0, q("q"), "k", id));
        }
        other => panic!("expected an idempotency conflict, got {other:?}"),
    }
    let batch = vec![new_job("q", "fresh"), new_job("elsewhere", "x"), keyed("q", "p2", "k")];
    match c.try_insert(batch).await {
        Err(Error::IdempotencyConflict { index, existing, .. }) => assert_eq!((index, existing), (2, id)),
        other => panic!("expected an idempotency conflict at index 2, got {other:?}"),
    }
    // Two jobs of one batch that share a key but not a payload: the request itself is invalid,
    // naming the second job (no job exists yet to conflict with).
    match c.try_insert(vec![keyed("q", "a", "k2"), keyed("q", "b", "k2")]).await {
        Err(Error::Invalid(e)) => {
            assert_eq!(e.field, "jobs[1].idempotency_key");
            assert!(e.message.contains("jobs[0]"), "{e}");
        }
        other => panic!("expected the batch to be invalid at jobs[1], got {other:?}"),
    }
    c.assert_unchanged(&snap, "after idempotency conflicts").await;
}

/// A key is scoped to its queue: the same key in another queue is another job.
pub async fn idempotency_scoped_to_queue<H: Harness>(h: H) {
    let c = Ctx::open(h).await;
    let a = c.insert_one(keyed("qa", "p", "k")).await;
    let b = c.insert(vec![keyed("qb", "p", "k")]).await;
    assert!(!b[0].duplicate, "same key in another queue is not a duplicate");
    assert_ne!(b[0].id, a);
    let b2 = c.insert(vec![keyed("qb", "p", "k")]).await;
    assert_eq!((b2[0].id, b2[0].duplicate), (b[0].id, true));
    let a2 = c.insert(vec![keyed("qa", "p", "k")]).await;
    assert_eq!((a2[0].id, a2[0].duplicate), (a, true));
    assert_counts(&c.stats("qa").await, &[(JobState::Available, 1)]);
    assert_counts(&c.stats("qb").await, &[(JobState::Available, 1)]);
}

/// Contract decision: the key is kept for `IDEMPOTENCY_WINDOW_MS_DEFAULT` from the original's
/// creation, as a half-open interval like every other deadline: at `created_at + window - 1` it
/// still matches, at `created_at + window` it has ended and the same key makes a new job (even with
/// another payload). Two keys are used so the test does not depend on whether a duplicate request
/// extends the window.
pub async fn idempotency_window_ends<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    let window = Limits::IDEMPOTENCY_WINDOW_MS_DEFAULT;
    let ins = c.insert(vec![keyed("q", "p", "k1"), keyed("q", "p", "k2")]).await;
    let (k1, k2) = (ins[0].id, ins[1].id);

    c.set_now(T0.add_ms(window - 1));
    let again = c.insert(vec![keyed("q", "p", "k1")]).await;
    assert_eq!((again[0].id, again[0].duplicate), (k1, true), "1 ms before the window ends the key matches");

    c.set_now(T0.add_ms(window));
    let fresh = c.insert(vec![keyed("q", "other payload", "k2")]).await;
    assert!(!fresh[0].duplicate, "once the window ended the key makes a new job: {fresh:?}");
    assert!(fresh[0].id > k2);
    let again = c.insert(vec![keyed("q", "other payload", "k2")]).await;
    assert_eq!((again[0].id, again[0].duplicate), (fresh[0].id, true), "the new job owns the key now");
    assert_eq!(c.get(k2).await.payload, payload("p"), "the old job is untouched");
}

// ---------------------------------------------------------------------------------------------
// Lease
// ---------------------------------------------------------------------------------------------

/// Jobs lease best first across all the queues asked for: higher priority, then earlier run time,
/// then enqueue order.
pub async fn lease_order_priority_run_time_enqueue<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    let prio = |queue: &str, p: i16, name: &str| NewJob { priority: p, ..new_job(queue, name) };
    let a1 = c.insert_one(prio("qa", 0, "a1")).await;
    let a2 = c.insert_one(prio("qa", 5, "a2")).await;
    c.advance(1);
    let b1 = c.insert_one(prio("qb", 5, "b1")).await;
    let b2 = c.insert_one(NewJob { run_at: Some(before(T0, 1_000)), ..prio("qb", 0, "b2") }).await;
    c.advance(1);
    let a3 = c.insert_one(prio("qa", 0, "a3")).await;
    let b3 = c.insert_one(prio("qb", -3, "b3")).await;
    c.advance(1);
    let batch = c.insert(vec![prio("qa", 0, "a4"), prio("qa", 0, "a5")]).await;
    let (a4, a5) = (batch[0].id, batch[1].id);
    let a6 = c.insert_one(NewJob { run_at: Some(T0.add_ms(100)), ..prio("qa", 10, "a6") }).await;

    c.set_now(T0.add_ms(10));
    let names = |ids: Vec<JobId>| {
        let all = [
            (a1, "a1"),
            (a2, "a2"),
            (a3, "a3"),
            (a4, "a4"),
            (a5, "a5"),
            (a6, "a6"),
            (b1, "b1"),
            (b2, "b2"),
            (b3, "b3"),
        ];
        ids.iter().map(|id| all.iter().find(|(i, _)| i == id).map_or("?", |(_, n)| *n)).collect::<Vec<_>>()
    };
    let l = c.lease(&["qa", "qb"], 3).await;
    assert_eq!(names(ids_of(&l)), ["a2", "b1", "b2"]);
    assert_eq!(l.iter().map(|l| l.queue.as_str()).collect::<Vec<_>>(), ["qa", "qb", "qb"]);
    let l = c.lease(&["qb", "qa"], 2).await;
    assert_eq!(names(ids_of(&l)), ["a1", "a3"], "the order of the queues asked for does not matter");
    let l = c.lease(&["qb"], 10).await;
    assert_eq!(names(ids_of(&l)), ["b3"]);
    c.set_now(T0.add_ms(100));
    let l = c.lease(&["qa", "qb"], 10).await;
    assert_eq!(names(ids_of(&l)), ["a6", "a4", "a5"]);
}

/// A lease never returns more than `count_max` jobs, and never the same job twice.
pub async fn lease_count_max<H: Harness>(h: H) {
    let c = Ctx::open(h).await;
    let ids: Vec<JobId> =
        c.insert((0..5).map(|i| new_job("q", &i.to_string())).collect()).await.iter().map(|i| i.id).collect();
    let mut seen = Vec::new();
    for want in [2, 2, 1, 0] {
        let l = c.lease(&["q"], 2).await;
        assert_eq!(l.len(), want, "count_max 2 with {} jobs left", 5 - seen.len());
        seen.extend(ids_of(&l));
    }
    assert_eq!(seen, ids, "each job leased once, in enqueue order");
    assert_counts(&c.stats("q").await, &[(JobState::Running, 5)]);
}

/// A leased job carries everything the worker needs; attempt 1, distinct lease ids, increasing
/// tokens; deadline is `now + lease_ms` of the job, or of the lease call when it overrides.
pub async fn lease_fields_and_deadline<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    let j1_new = NewJob {
        priority: 3,
        attempts_max: Some(4),
        lease_ms: Some(5_000),
        traceparent: Some(TRACEPARENT.into()),
        ..new_job("q", r#"{"n":1}"#)
    };
    let j1 = c.insert_one(j1_new.clone()).await;
    let j2 = c.insert_one(new_job("q", r#"{"n":2}"#)).await;
    let before_lease = [c.get(j1).await, c.get(j2).await];
    c.advance(500);

    let l = c.lease(&["q"], 2).await;
    assert_eq!(ids_of(&l), vec![j1, j2]);
    let (l1, l2) = (&l[0], &l[1]);
    assert_eq!(l1.queue, q("q"));
    assert_eq!(l1.payload, payload(r#"{"n":1}"#));
    assert_eq!(l1.priority, 3);
    assert_eq!((l1.attempt, l1.attempts_max), (1, 4));
    assert_eq!(l1.deadline, c.now.add_ms(5_000), "deadline is now + the job's lease_ms");
    assert_eq!(l1.checkpoint, None);
    assert_eq!(l1.traceparent.as_deref(), Some(TRACEPARENT));
    assert_eq!(l1.created_at, T0);
    assert_eq!((l2.attempt, l2.attempts_max), (1, Limits::ATTEMPTS_MAX_DEFAULT));
    assert_eq!(l2.deadline, c.now.add_ms(Limits::LEASE_MS_DEFAULT), "deadline is now + the queue's default");
    assert_eq!(l2.traceparent, None);
    assert_ne!(l1.lease, l2.lease, "each lease has its own id");
    assert!(l1.token < l2.token, "fencing tokens increase with every grant");

    for (leased, prev) in l.iter().zip(&before_lease) {
        let worker = c.worker.clone();
        let event = Event::Lease { id: leased.lease, token: leased.token, worker: &worker, lease_ms: None };
        assert_job_eq(&c.get(leased.id).await, &after(prev, event, c.now), "after lease");
    }

    // The lease call's lease_ms overrides the job's.
    let j3 = c.insert_one(NewJob { lease_ms: Some(5_000), ..new_job("q", "3") }).await;
    let j4 = c.insert_one(new_job("q", "4")).await;
    c.advance(10);
    let p = crate::JobLease { lease_ms: Some(2_000), ..c.lease_params(&["q"], 10) };
    let l = c.lease_with(p).await;
    assert_eq!(ids_of(&l), vec![j3, j4]);
    for leased in &l {
        assert_eq!(leased.deadline, c.now.add_ms(2_000), "the lease call's lease_ms wins");
        assert_eq!(c.get(leased.id).await.status.lease.unwrap().deadline, c.now.add_ms(2_000));
        assert!(leased.token > l2.token);
    }
    assert_counts(&c.stats("q").await, &[(JobState::Running, 4)]);
}

/// Fencing tokens strictly increase with every grant, also across restarts (with and without
/// grants in between).
pub async fn lease_tokens_increase_across_restart<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    c.insert((0..8).map(|i| new_job("q", &i.to_string())).collect()).await;
    let mut tokens: Vec<FencingToken> = Vec::new();
    let take = |leased: Vec<crate::LeasedJob>, tokens: &mut Vec<FencingToken>| {
        for l in leased {
            if let Some(last) = tokens.last() {
                assert!(l.token > *last, "token {} after {} is not greater", l.token, last);
            }
            tokens.push(l.token);
        }
    };
    take(c.lease(&["q"], 2).await, &mut tokens);
    take(c.lease(&["q"], 2).await, &mut tokens);
    c.restart().await;
    take(c.lease(&["q"], 1).await, &mut tokens);
    c.restart().await;
    c.restart().await;
    take(c.lease(&["q"], 1).await, &mut tokens);
    // A lease that was live across the restart still fences correctly after it.
    let before_restart = c.lease(&["q"], 1).await;
    let id = before_restart[0].id;
    take(before_restart.clone(), &mut tokens);
    c.restart().await;
    let job = c.get(id).await;
    assert_eq!(job.status.lease.as_ref().map(|l| l.token), Some(before_restart[0].token));
    take(c.lease(&["q"], 1).await, &mut tokens);
    assert_eq!(tokens.len(), 8);
}

/// A lease id is never granted again to the same job, also not after a restart: otherwise a
/// zombie still holding the old id could ack the new attempt. (Regression guard: a store whose
/// lease-id generator restarts from a configured seed repeats its ids after every restart.)
pub async fn lease_ids_never_repeat_across_restart<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    let jobs: Vec<NewJob> = (0..4)
        .map(|i| NewJob {
            attempts_max: Some(5),
            lease_ms: Some(Limits::LEASE_MS_MIN),
            backoff: Some(BACKOFF_1MS),
            ..new_job("q", &i.to_string())
        })
        .collect();
    c.insert(jobs).await;
    let old = c.lease(&["q"], 4).await;
    assert_eq!(old.len(), 4);
    c.set_now(old[0].deadline);
    assert_eq!(c.expire().await, 4);
    c.restart().await;
    c.advance(1);
    let new = c.lease(&["q"], 4).await;
    assert_eq!(new.len(), 4);
    for n in &new {
        let o = old.iter().find(|o| o.id == n.id).unwrap();
        assert_ne!(n.lease, o.lease, "job {} got its pre-restart lease id again", n.id);
    }
    let snap = c.snapshot().await;
    for o in &old {
        assert_rejected(c.complete(o.id, o.lease).await, o.id, Rejection::StaleLease { state: JobState::Running });
    }
    c.assert_unchanged(&snap, "after the zombies' acks").await;
}

/// A leased job is invisible to every other lease until its deadline; after expiry it is
/// delivered again with the next attempt and a larger token.
pub async fn lease_invisible_until_deadline<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    let id = c.insert_one(NewJob { lease_ms: Some(5_000), backoff: Some(BACKOFF_1MS), ..new_job("q", "x") }).await;
    let l1 = c.lease_one("q", id).await;
    c.worker = WorkerId::new("worker-2").unwrap();
    c.set_now(before(l1.deadline, 1));
    assert_eq!(c.lease(&["q"], 10).await, vec![], "a leased job is invisible until its deadline");
    assert_eq!(c.expire().await, 0);
    c.set_now(l1.deadline);
    assert_eq!(c.expire().await, 1);
    let l2 = c.lease_when_due("q", id, 1).await;
    assert_eq!(l2.attempt, 2);
    assert!(l2.token > l1.token);
    assert_ne!(l2.lease, l1.lease);
    let job = c.get(id).await;
    let workers: Vec<_> = entries_of(&job, HistoryKind::Leased).iter().map(|e| e.worker.clone().unwrap()).collect();
    assert_eq!(workers, [WorkerId::new("worker-1").unwrap(), WorkerId::new("worker-2").unwrap()]);
}

/// A paused queue accepts jobs but leases none until resumed; the pause survives a restart.
pub async fn lease_paused_queue<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    let p1 = c.insert_one(new_job("p", "1")).await;
    let r1 = c.insert_one(new_job("r", "1")).await;
    let config = c
        .configure(crate::QueueConfigure { paused: Some(true), ..crate::QueueConfigure::new(c.now, q("p")) })
        .await
        .unwrap();
    assert_eq!(config, crate::QueueConfig { paused: true, ..default_config("p") });
    assert_eq!(ids_of(&c.lease(&["p", "r"], 10).await), vec![r1], "a paused queue leases nothing");
    let p2 = c.insert(vec![new_job("p", "2")]).await;
    assert_eq!(p2[0].state, JobState::Available, "a paused queue still accepts jobs");
    c.restart().await;
    assert!(c.stats("p").await.config.paused, "the pause survives a restart");
    assert_eq!(c.lease(&["p"], 10).await, vec![]);
    assert_counts(&c.stats("p").await, &[(JobState::Available, 2)]);
    c.configure(crate::QueueConfigure { paused: Some(false), ..crate::QueueConfigure::new(c.now, q("p")) })
        .await
        .unwrap();
    assert_eq!(ids_of(&c.lease(&["p"], 10).await), vec![p1, p2[0].id]);
}

/// Contract decision: leasing from a queue nobody has used is an empty result (workers may start
/// before producers), not an error, and does not create the queue.
pub async fn lease_unknown_queue_is_empty<H: Harness>(h: H) {
    let c = Ctx::open(h).await;
    assert_eq!(c.lease(&["never-used"], 5).await, vec![]);
    assert_eq!(c.queue_list().await, vec![], "leasing does not create a queue");
}

// ---------------------------------------------------------------------------------------------
// Heartbeat
// ---------------------------------------------------------------------------------------------

fn extend(job: JobId, lease: dray_core::LeaseId, now: Timestamp) -> LeaseExtend {
    LeaseExtend { now, job, lease, extend_ms: None, progress: None, checkpoint: None }
}

/// A heartbeat sets the deadline to `now + extend_ms` (or the job's lease_ms), adds no history
/// and keeps the job invisible until the new deadline. Contract decision: following the core
/// transition, the new deadline may also be earlier than the old one.
pub async fn heartbeat_extends_deadline<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    let id = c.insert_one(NewJob { lease_ms: Some(10_000), ..new_job("q", "x") }).await;
    let l = c.lease_one("q", id).await;
    assert_eq!(l.deadline, T0.add_ms(10_000));

    c.set_now(T0.add_ms(9_000));
    let prev = c.get(id).await;
    let progress = payload(r#"{"done":50}"#);
    let r = c
        .store()
        .lease_extend(LeaseExtend { progress: Some(progress.clone()), ..extend(id, l.lease, c.now) })
        .await
        .unwrap();
    assert_eq!(r, crate::LeaseExtended { deadline: T0.add_ms(19_000), lease_left_ms: None, cancel_requested: false });
    let event =
        Event::Heartbeat { lease: l.lease, extend_ms: None, progress: Some(progress.clone()), checkpoint: None };
    let job = c.get(id).await;
    assert_job_eq(&job, &after(&prev, event, c.now), "after heartbeat");
    assert_eq!(job.history.len(), prev.history.len(), "a heartbeat adds no history");
    assert_eq!(job.status.progress, Some(progress));

    c.set_now(T0.add_ms(12_000));
    assert_eq!(c.expire().await, 0, "the old deadline no longer counts");
    let mut other = c.lease_params(&["q"], 10);
    other.worker = WorkerId::new("worker-2").unwrap();
    assert_eq!(c.lease_with(other).await, vec![]);

    let r = c.heartbeat(id, l.lease, Some(2_000)).await.unwrap();
    assert_eq!(r.deadline, T0.add_ms(14_000), "deadline is now + extend_ms");
    c.set_now(T0.add_ms(13_999));
    assert_eq!(c.expire().await, 0);
    c.set_now(T0.add_ms(14_000));
    assert_eq!(c.expire().await, 1, "the lease ends at the deadline the last heartbeat set");
}

/// A heartbeat at or after the deadline is `LeaseExpired` and changes nothing.
pub async fn heartbeat_after_deadline_rejected<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    let id = c.insert_one(NewJob { lease_ms: Some(5_000), ..new_job("q", "x") }).await;
    let l = c.lease_one("q", id).await;
    let snap = c.snapshot().await;
    c.set_now(l.deadline);
    assert_rejected(c.heartbeat(id, l.lease, None).await, id, Rejection::LeaseExpired { deadline: l.deadline });
    c.advance(60_000);
    assert_rejected(c.heartbeat(id, l.lease, Some(10_000)).await, id, Rejection::LeaseExpired { deadline: l.deadline });
    c.assert_unchanged(&snap, "after late heartbeats").await;
}

/// A heartbeat with a lease that is not the job's current one is `StaleLease`; an unknown job is
/// `JobNotFound`. Neither changes anything.
pub async fn heartbeat_wrong_lease_rejected<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    let id = c.insert_one(new_job("q", "x")).await;
    let l = c.lease_one("q", id).await;
    let snap = c.snapshot().await;
    c.advance(1_000);
    assert_rejected(
        c.heartbeat(id, other_lease(l.lease), None).await,
        id,
        Rejection::StaleLease { state: JobState::Running },
    );
    let unknown = JobId(id.0.wrapping_add(1_000));
    assert_not_found(c.heartbeat(unknown, l.lease, None).await, unknown);
    c.assert_unchanged(&snap, "after rejected heartbeats").await;

    c.complete(id, l.lease).await.unwrap();
    assert_rejected(
        c.heartbeat(id, l.lease, None).await,
        id,
        Rejection::AlreadyFinished { state: JobState::Completed },
    );
}

/// After `job_cancel` on a running job, the next heartbeat says `cancel_requested` (and still
/// extends the lease).
pub async fn heartbeat_reports_cancel_requested<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    let id = c.insert_one(NewJob { lease_ms: Some(5_000), ..new_job("q", "x") }).await;
    let l = c.lease_one("q", id).await;
    c.advance(100);
    assert!(!c.heartbeat(id, l.lease, None).await.unwrap().cancel_requested);
    assert_eq!(c.cancel(id).await.unwrap(), JobState::Running);
    c.advance(100);
    let r = c.heartbeat(id, l.lease, None).await.unwrap();
    assert_eq!(r, crate::LeaseExtended { deadline: c.now.add_ms(5_000), lease_left_ms: None, cancel_requested: true });
    c.restart().await;
    c.advance(100);
    assert!(c.heartbeat(id, l.lease, None).await.unwrap().cancel_requested, "the request survives a restart");
}

/// A checkpoint saved by a heartbeat is kept by later heartbeats without one, and handed to the
/// next attempt (after a failure, after an expiry, and after a restart).
pub async fn heartbeat_checkpoint_goes_to_next_attempt<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    let id = c
        .insert_one(NewJob {
            attempts_max: Some(3),
            lease_ms: Some(5_000),
            backoff: Some(BACKOFF_1MS),
            ..new_job("q", "x")
        })
        .await;
    let l1 = c.lease_one("q", id).await;
    let c1 = payload(r#"{"page":1}"#);
    c.store()
        .lease_extend(LeaseExtend {
            checkpoint: Some(c1.clone()),
            progress: Some(payload("p1")),
            ..extend(id, l1.lease, c.now)
        })
        .await
        .unwrap();
    assert_eq!(c.get(id).await.status.checkpoint, Some(c1.clone()));
    c.heartbeat(id, l1.lease, None).await.unwrap();
    assert_eq!(c.get(id).await.status.checkpoint, Some(c1.clone()), "a heartbeat without a checkpoint keeps it");

    c.fail(id, l1.lease, "boom", true, Some(0)).await.unwrap();
    let l2 = c.lease_one("q", id).await;
    assert_eq!((l2.attempt, l2.checkpoint.clone()), (2, Some(c1.clone())), "the next attempt gets the checkpoint");

    let c2 = payload(r#"{"page":2}"#);
    c.store().lease_extend(LeaseExtend { checkpoint: Some(c2.clone()), ..extend(id, l2.lease, c.now) }).await.unwrap();
    c.set_now(c.get(id).await.status.lease.unwrap().deadline);
    assert_eq!(c.expire().await, 1);
    c.restart().await;
    let l3 = c.lease_when_due("q", id, 1).await;
    assert_eq!((l3.attempt, l3.checkpoint), (3, Some(c2)), "after expiry and restart too");
}

// ---------------------------------------------------------------------------------------------
// Ack
// ---------------------------------------------------------------------------------------------

/// An accepted completion is final: the job is completed with its result and never delivered
/// again, not by lease, maintenance or restart.
pub async fn complete_is_final<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    let id = c.insert_one(NewJob { lease_ms: Some(5_000), ..new_job("q", "x") }).await;
    let leased_at = c.now;
    let l = c.lease_one("q", id).await;
    assert_eq!(l.ready_at, leased_at, "a job due at enqueue is ready from then");
    c.advance(100);
    let prev = c.get(id).await;
    let result = payload(r#"{"ok":true}"#);
    let acked = c.ack_one(id, l.lease, AckOutcome::Complete { result: Some(result.clone()) }).await.unwrap();
    assert_eq!(outcome(&acked), (JobState::Completed, None));
    assert_eq!((acked.queue.as_str(), acked.attempt, acked.leased_at), ("q", 1, leased_at));
    let job = c.get(id).await;
    assert_job_eq(
        &job,
        &after(&prev, Event::Complete { lease: l.lease, result: Some(result.clone()) }, c.now),
        "after complete",
    );
    assert_eq!(job.status.result, Some(result));
    assert_eq!(job.status.finished_at, Some(c.now));
    assert_eq!(job.status.lease, None);
    let last = job.history.last().unwrap();
    assert_eq!(
        (last.kind, last.state, last.attempt, last.token),
        (HistoryKind::Completed, JobState::Completed, 1, Some(l.token))
    );

    assert_eq!(c.lease(&["q"], 10).await, vec![]);
    c.set_now(l.deadline.add_ms(60_000));
    assert_eq!(c.expire().await, 0);
    assert_eq!(c.promote().await, 0);
    assert_eq!(c.lease(&["q"], 10).await, vec![]);
    c.restart().await;
    assert_eq!(c.lease(&["q"], 10).await, vec![], "a completed job is not delivered after a restart");
    assert_job_eq(&c.get(id).await, &job, "after restart");
    assert_counts(&c.stats("q").await, &[(JobState::Completed, 1)]);
}

/// A second ack with the lease of a completed job is `AlreadyFinished` and changes nothing
/// (issue #18: it said `StaleLease`, which the docs reserve for a lease that is not current).
pub async fn complete_twice_rejected<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    let id = c.insert_one(new_job("q", "x")).await;
    let l = c.lease_one("q", id).await;
    c.complete(id, l.lease).await.unwrap();
    let snap = c.snapshot().await;
    c.advance(10);
    let stale = Rejection::AlreadyFinished { state: JobState::Completed };
    assert_rejected(c.complete(id, l.lease).await, id, stale.clone());
    assert_rejected(c.fail(id, l.lease, "late", true, None).await, id, stale.clone());
    assert_rejected(c.fail(id, l.lease, "late", false, None).await, id, stale);
    c.assert_unchanged(&snap, "after a second ack").await;
}

/// An ack at or after the deadline (before any expiry pass) is `LeaseExpired` and changes
/// nothing; the expiry pass then retries the job.
pub async fn ack_after_deadline_rejected<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    let id = c.insert_one(NewJob { lease_ms: Some(5_000), ..new_job("q", "x") }).await;
    let l = c.lease_one("q", id).await;
    let snap = c.snapshot().await;
    c.set_now(l.deadline);
    let expired = Rejection::LeaseExpired { deadline: l.deadline };
    assert_rejected(c.complete(id, l.lease).await, id, expired.clone());
    assert_rejected(c.fail(id, l.lease, "late", true, None).await, id, expired.clone());
    assert_rejected(c.fail(id, l.lease, "late", false, None).await, id, expired);
    c.assert_unchanged(&snap, "after late acks").await;
    assert_eq!(c.expire().await, 1);
    assert_eq!(c.get(id).await.state(), JobState::Retrying);
}

/// A zombie worker whose lease expired and whose job was leased again gets `StaleLease` on every
/// heartbeat, completion and failure; the new holder's lease is unaffected.
pub async fn stale_worker_rejected_after_release<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    let id = c.insert_one(NewJob { lease_ms: Some(5_000), backoff: Some(BACKOFF_1MS), ..new_job("q", "x") }).await;
    let old = c.lease_one("q", id).await;
    c.set_now(old.deadline);
    assert_eq!(c.expire().await, 1);
    c.worker = WorkerId::new("worker-2").unwrap();
    let new = c.lease_when_due("q", id, 1).await;
    assert!(new.token > old.token);

    c.advance(100);
    let snap = c.snapshot().await;
    let stale = Rejection::StaleLease { state: JobState::Running };
    assert_rejected(c.heartbeat(id, old.lease, None).await, id, stale.clone());
    assert_rejected(c.complete(id, old.lease).await, id, stale.clone());
    assert_rejected(c.fail(id, old.lease, "zombie", true, None).await, id, stale.clone());
    assert_rejected(c.fail(id, old.lease, "zombie", false, None).await, id, stale);
    c.assert_unchanged(&snap, "after the zombie's acks").await;

    let r = c.heartbeat(id, new.lease, None).await.unwrap();
    assert_eq!(r.deadline, c.now.add_ms(5_000));
    assert_eq!(c.complete(id, new.lease).await.unwrap().state, JobState::Completed);
    let job = c.get(id).await;
    assert_eq!(job.history.last().unwrap().token, Some(new.token), "the completion is the new holder's");
}

/// One `job_ack` call with accepted and rejected items answers each in order; rejected items
/// change nothing, accepted ones apply. Contract decision: items apply in order, so a second ack
/// of the same job in one call sees the first one's result.
pub async fn ack_batch_mixed<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    c.insert((0..3).map(|i| NewJob { attempts_max: Some(3), ..new_job("q", &i.to_string()) }).collect()).await;
    let l = c.lease(&["q"], 3).await;
    let (a, b, d) = (&l[0], &l[1], &l[2]);
    let unknown = JobId(d.id.0.wrapping_add(1_000));
    c.advance(100);
    let complete = AckOutcome::Complete { result: None };
    let results = c
        .ack(vec![
            Ack { job: a.id, lease: a.lease, outcome: complete.clone() },
            Ack { job: b.id, lease: other_lease(b.lease), outcome: complete.clone() },
            Ack {
                job: d.id,
                lease: d.lease,
                outcome: AckOutcome::Fail {
                    error: "boom".into(),
                    retryable: true,
                    retry_after_ms: Some(0),
                    rate_limited: false,
                },
            },
            Ack { job: unknown, lease: a.lease, outcome: complete.clone() },
            Ack { job: a.id, lease: a.lease, outcome: complete.clone() },
        ])
        .await;
    let mut results = results.into_iter();
    assert_eq!(outcome(&results.next().unwrap().unwrap()), (JobState::Completed, None));
    assert_rejected(results.next().unwrap(), b.id, Rejection::StaleLease { state: JobState::Running });
    assert_eq!(outcome(&results.next().unwrap().unwrap()), (JobState::Retrying, Some(c.now)));
    assert_not_found(results.next().unwrap(), unknown);
    assert_rejected(results.next().unwrap(), a.id, Rejection::AlreadyFinished { state: JobState::Completed });

    assert_eq!(c.get(a.id).await.state(), JobState::Completed);
    assert_eq!(c.get(d.id).await.state(), JobState::Retrying);
    let bj = c.get(b.id).await;
    assert_eq!(bj.state(), JobState::Running);
    assert_eq!(bj.status.lease.as_ref().map(|l| l.id), Some(b.lease), "a rejected ack leaves the lease alone");
    assert_eq!(kinds_unpromoted(&bj), [HistoryKind::Enqueued, HistoryKind::Leased]);
    assert_eq!(c.complete(b.id, b.lease).await.unwrap().state, JobState::Completed);
    assert_counts(&c.stats("q").await, &[(JobState::Completed, 2), (JobState::Retrying, 1)]);
}

// ---------------------------------------------------------------------------------------------
// Fail
// ---------------------------------------------------------------------------------------------

/// A retryable failure schedules the next attempt within the backoff window of that attempt (the
/// job's backoff, or the queue's default); the job is not leasable before its `run_at` and is at
/// it. Full jitter spreads retries over the window.
pub async fn fail_retryable_backoff_window<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    let backoff = Backoff { base_ms: 10_000, factor: 2.0, cap_ms: 1_000_000 };
    let id = c.insert_one(NewJob { attempts_max: Some(5), backoff: Some(backoff), ..new_job("q", "x") }).await;

    for attempt in 1..=2u32 {
        let l = c.lease_one("q", id).await;
        assert_eq!(l.attempt, attempt);
        c.advance(100);
        let error = format!("boom {attempt}");
        let acked = c.fail(id, l.lease, &error, true, None).await.unwrap();
        let window = backoff.window_ms(attempt);
        let retry_at = acked.retry_at.expect("a retried job says when");
        assert_eq!(acked.state, JobState::Retrying);
        assert!(
            retry_at >= c.now && retry_at <= c.now.add_ms(window),
            "attempt {attempt}: retry at {retry_at} outside [{}, {}]",
            c.now,
            c.now.add_ms(window)
        );
        let job = c.get(id).await;
        assert_eq!(job.state(), JobState::Retrying);
        assert_eq!(job.status.run_at, retry_at);
        assert_eq!(job.status.lease, None);
        assert_eq!(job.status.last_error.as_deref(), Some(error.as_str()));
        assert_eq!(
            job.history.last().unwrap(),
            &HistoryEntry {
                at: c.now,
                kind: HistoryKind::Failed,
                state: JobState::Retrying,
                attempt,
                token: Some(l.token),
                worker: Some(c.worker.clone()),
                error: Some(error.as_str().into()),
                run_at: Some(retry_at),
            }
        );
        assert_counts(&c.stats("q").await, &[(JobState::Retrying, 1)]);
        if retry_at > c.now {
            c.set_now(before(retry_at, 1));
            assert_eq!(c.lease(&["q"], 10).await, vec![], "not leasable before its retry time");
        }
        c.set_now(retry_at);
    }

    // The queue's default backoff when the job has none.
    let d = c.insert_one(new_job("d", "x")).await;
    let l = c.lease_one("d", d).await;
    let acked = c.fail(d, l.lease, "boom", true, None).await.unwrap();
    let window = Limits::BACKOFF_BASE_MS_DEFAULT;
    assert!(acked.retry_at.unwrap() <= c.now.add_ms(window) && acked.retry_at.unwrap() >= c.now);

    // Full jitter: twenty failures at the same instant over a 1,000,000 ms window do not all retry at
    // the same time.
    let wide = Backoff { base_ms: 1_000_000, factor: 1.0, cap_ms: 1_000_000 };
    c.insert((0..20).map(|i| NewJob { backoff: Some(wide), ..new_job("j", &i.to_string()) }).collect()).await;
    let leased = c.lease(&["j"], 20).await;
    let mut retry_ats = Vec::new();
    for l in &leased {
        let acked = c.fail(l.id, l.lease, "boom", true, None).await.unwrap();
        let at = acked.retry_at.unwrap();
        assert!(at >= c.now && at <= c.now.add_ms(1_000_000));
        retry_ats.push(at);
    }
    retry_ats.sort();
    retry_ats.dedup();
    assert!(retry_ats.len() > 1, "backoff has no jitter: 20 failures all retry at {:?}", retry_ats);
}

/// `retry_after_ms` replaces the backoff exactly (0 means due at once); on the last attempt the
/// job is dead all the same.
pub async fn fail_retry_after_exact<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    let id = c.insert_one(NewJob { attempts_max: Some(3), ..new_job("q", "x") }).await;
    let l1 = c.lease_one("q", id).await;
    c.advance(100);
    let acked = c.fail(id, l1.lease, "slow down", true, Some(7_000)).await.unwrap();
    let due = c.now.add_ms(7_000);
    assert_eq!(outcome(&acked), (JobState::Retrying, Some(due)));
    assert_eq!(c.get(id).await.status.run_at, due);
    c.set_now(before(due, 1));
    assert_eq!(c.lease(&["q"], 10).await, vec![]);
    c.set_now(due);
    let l2 = c.lease_one("q", id).await;
    assert_eq!(l2.attempt, 2);

    let acked = c.fail(id, l2.lease, "again", true, Some(0)).await.unwrap();
    assert_eq!(outcome(&acked), (JobState::Retrying, Some(c.now)));
    let l3 = c.lease_one("q", id).await;
    assert_eq!(l3.attempt, 3);

    let acked = c.fail(id, l3.lease, "last", true, Some(5_000)).await.unwrap();
    assert_eq!(outcome(&acked), (JobState::Dead, None));
    assert_eq!(c.get(id).await.status.dead_reason, Some(DeadReason::Failed));
}

/// A non-retryable failure goes straight to the dead-letter queue, whatever attempts are left.
pub async fn fail_non_retryable_dead<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    let id = c.insert_one(NewJob { attempts_max: Some(5), ..new_job("q", "x") }).await;
    let l = c.lease_one("q", id).await;
    c.advance(100);
    let acked = c.fail(id, l.lease, "bad input", false, Some(1_000)).await.unwrap();
    assert_eq!(outcome(&acked), (JobState::Dead, None));
    let job = c.get(id).await;
    assert_eq!(job.state(), JobState::Dead);
    assert_eq!(job.status.dead_reason, Some(DeadReason::NonRetryable));
    assert_eq!(job.status.attempt, 1);
    assert_eq!(job.status.finished_at, Some(c.now));
    assert_eq!(job.status.last_error.as_deref(), Some("bad input"));
    let last = job.history.last().unwrap();
    assert_eq!(
        (last.kind, last.state, last.attempt, last.token, last.error.as_deref()),
        (HistoryKind::Failed, JobState::Dead, 1, Some(l.token), Some("bad input"))
    );
    c.advance(3_600_000);
    assert_eq!(c.promote().await, 0);
    assert_eq!(c.lease(&["q"], 10).await, vec![]);
    let stats = c.stats("q").await;
    assert_counts(&stats, &[(JobState::Dead, 1)]);
    assert_eq!(stats.oldest_dead_at, job.status.finished_at);
}

/// An error longer than `ERROR_BYTES_MAX` is truncated on a character boundary, not refused:
/// refusing it would leave the job running until its lease expires.
pub async fn fail_long_error_truncated<H: Harness>(h: H) {
    let c = Ctx::open(h).await;
    let id = c.insert_one(NewJob { attempts_max: Some(2), ..new_job("q", "x") }).await;
    let l = c.lease_one("q", id).await;
    // One ASCII byte, then two-byte characters: the limit falls inside a character.
    let error = format!("a{}", "é".repeat(Limits::ERROR_BYTES_MAX));
    let want = dray_core::limits::truncate_utf8(&error, Limits::ERROR_BYTES_MAX);
    assert_eq!(want.len(), Limits::ERROR_BYTES_MAX - 1);
    let acked = c.fail(id, l.lease, &error, true, Some(0)).await.unwrap();
    assert_eq!(acked.state, JobState::Retrying);
    let job = c.get(id).await;
    assert_eq!(job.status.last_error.as_deref(), Some(want));
    assert_eq!(job.history.last().unwrap().error.as_deref(), Some(want));
}

/// After `attempts_max` deliveries the job is dead (`Failed`), with exactly `attempts_max`
/// `Leased` entries and each attempt's error in history.
pub async fn fail_attempts_exhausted_dead<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    let id = c.insert_one(NewJob { attempts_max: Some(3), backoff: Some(BACKOFF_1MS), ..new_job("q", "x") }).await;
    let mut tokens = Vec::new();
    for attempt in 1..=3u32 {
        let l = c.lease_when_due("q", id, 1).await;
        assert_eq!((l.attempt, l.attempts_max), (attempt, 3));
        tokens.push(l.token);
        c.advance(10);
        let acked = c.fail(id, l.lease, &format!("err {attempt}"), true, None).await.unwrap();
        let want = if attempt < 3 { JobState::Retrying } else { JobState::Dead };
        assert_eq!(acked.state, want, "after attempt {attempt}");
        assert_eq!(acked.retry_at.is_some(), attempt < 3);
    }
    let job = c.get(id).await;
    assert_eq!(job.state(), JobState::Dead);
    assert_eq!(job.status.dead_reason, Some(DeadReason::Failed));
    assert_eq!(job.status.attempt, 3);
    assert_eq!(job.status.finished_at, Some(c.now));
    assert_eq!(job.status.last_error.as_deref(), Some("err 3"));
    assert_eq!(entries_of(&job, HistoryKind::Leased).len(), 3, "exactly attempts_max deliveries");
    let failed: Vec<_> = entries_of(&job, HistoryKind::Failed)
        .iter()
        .map(|e| (e.attempt, e.token, e.error.as_deref().map(str::to_owned), e.state))
        .collect();
    assert_eq!(
        failed,
        [
            (1, Some(tokens[0]), Some("err 1".to_owned()), JobState::Retrying),
            (2, Some(tokens[1]), Some("err 2".to_owned()), JobState::Retrying),
            (3, Some(tokens[2]), Some("err 3".to_owned()), JobState::Dead),
        ]
    );
    c.advance(10_000);
    assert_eq!(c.lease(&["q"], 10).await, vec![]);
}

// ---------------------------------------------------------------------------------------------
// Expiry
// ---------------------------------------------------------------------------------------------

/// An expiry pass before the deadline changes nothing.
pub async fn expire_before_deadline_does_nothing<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    let id = c.insert_one(NewJob { lease_ms: Some(5_000), ..new_job("q", "x") }).await;
    let l = c.lease_one("q", id).await;
    let snap = c.snapshot().await;
    c.set_now(before(l.deadline, 1));
    assert_eq!(c.expire().await, 0);
    c.assert_unchanged(&snap, "after an early expiry pass").await;
}

/// At the deadline the lease expires: a failed attempt, retried within the backoff window of that
/// attempt, with an `Expired` history entry carrying the token.
pub async fn expire_at_deadline_retries<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    let backoff = Backoff { base_ms: 10_000, factor: 2.0, cap_ms: 1_000_000 };
    let id = c
        .insert_one(NewJob {
            attempts_max: Some(3),
            lease_ms: Some(5_000),
            backoff: Some(backoff),
            ..new_job("q", "x")
        })
        .await;
    let l = c.lease_one("q", id).await;
    c.set_now(l.deadline);
    assert_eq!(c.expire().await, 1);
    let job = c.get(id).await;
    assert_eq!(job.state(), JobState::Retrying);
    assert_eq!(job.status.attempt, 1, "the expired delivery counts as attempt 1");
    assert_eq!(job.status.lease, None);
    assert!(job.status.last_error.is_some());
    let r = job.status.run_at;
    assert!(r >= c.now && r <= c.now.add_ms(10_000), "retry at {r} outside the window of attempt 1");
    let last = job.history.last().unwrap();
    assert_eq!(
        (last.at, last.kind, last.state, last.attempt, last.token, last.run_at),
        (c.now, HistoryKind::Expired, JobState::Retrying, 1, Some(l.token), Some(r))
    );
    assert!(last.error.is_some(), "an expiry records an error");
    assert_eq!(c.expire().await, 0, "an expired lease expires once");
    assert_counts(&c.stats("q").await, &[(JobState::Retrying, 1)]);
    c.set_now(r);
    let l2 = c.lease_one("q", id).await;
    assert_eq!(l2.attempt, 2);
    assert!(l2.token > l.token);
}

/// An expiry on the last attempt kills the job with `DeadReason::LeaseExpired`.
pub async fn expire_last_attempt_dead<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    let id = c.insert_one(NewJob { attempts_max: Some(1), lease_ms: Some(5_000), ..new_job("q", "x") }).await;
    let l = c.lease_one("q", id).await;
    c.set_now(l.deadline.add_ms(1_000));
    assert_eq!(c.expire().await, 1);
    let job = c.get(id).await;
    assert_eq!(job.state(), JobState::Dead);
    assert_eq!(job.status.dead_reason, Some(DeadReason::LeaseExpired));
    assert_eq!(job.status.finished_at, Some(c.now));
    let last = job.history.last().unwrap();
    assert_eq!((last.kind, last.state, last.token), (HistoryKind::Expired, JobState::Dead, Some(l.token)));
    assert_eq!(c.lease(&["q"], 10).await, vec![]);
    let stats = c.stats("q").await;
    assert_counts(&stats, &[(JobState::Dead, 1)]);
    assert_eq!(stats.oldest_dead_at, Some(c.now));
}

/// A poison job whose every lease expires is dead after exactly `attempts_max` deliveries.
pub async fn poison_job_dead_after_attempts_max<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    let id = c
        .insert_one(NewJob {
            attempts_max: Some(4),
            lease_ms: Some(Limits::LEASE_MS_MIN),
            backoff: Some(BACKOFF_1MS),
            ..new_job("q", "poison")
        })
        .await;
    let mut tokens = Vec::new();
    for attempt in 1..=4u32 {
        let l = c.lease_when_due("q", id, 1).await;
        assert_eq!(l.attempt, attempt);
        tokens.push(l.token);
        c.set_now(l.deadline);
        assert_eq!(c.expire().await, 1);
    }
    let job = c.get(id).await;
    assert_eq!((job.state(), job.status.dead_reason), (JobState::Dead, Some(DeadReason::LeaseExpired)));
    assert_eq!(entries_of(&job, HistoryKind::Leased).len(), 4);
    let expired: Vec<_> = entries_of(&job, HistoryKind::Expired).iter().map(|e| (e.attempt, e.token)).collect();
    assert_eq!(expired, (1..=4).zip(tokens.iter().map(|t| Some(*t))).collect::<Vec<_>>());
    c.advance(10_000);
    assert_eq!(c.lease(&["q"], 10).await, vec![]);
}

// ---------------------------------------------------------------------------------------------
// Cancel
// ---------------------------------------------------------------------------------------------

/// Scheduled, available and retrying jobs are cancelled at once and never delivered; cancelling a
/// cancelled job again is a no-op that answers `Cancelled`.
pub async fn cancel_waiting_jobs<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    let s = c.insert_one(NewJob { delay_ms: Some(3_600_000), ..new_job("q", "scheduled") }).await;
    let r = c.insert_one(NewJob { priority: 1, ..new_job("q", "retrying") }).await;
    let a = c.insert_one(new_job("q", "available")).await;
    let l = c.lease_one("q", r).await;
    c.fail(r, l.lease, "boom", true, Some(3_600_000)).await.unwrap();
    c.advance(100);
    for (id, attempt) in [(s, 0), (a, 0), (r, 1)] {
        let prev = c.get(id).await;
        assert_eq!(c.cancel(id).await.unwrap(), JobState::Cancelled);
        let job = c.get(id).await;
        assert_job_eq(&job, &after(&prev, Event::Cancel, c.now), "after cancel");
        assert_eq!(job.status.finished_at, Some(c.now));
        let last = job.history.last().unwrap();
        assert_eq!((last.kind, last.state, last.attempt), (HistoryKind::Cancelled, JobState::Cancelled, attempt));
    }
    let snap = c.snapshot().await;
    c.advance(10);
    assert_eq!(c.cancel(a).await.unwrap(), JobState::Cancelled, "cancelling again answers Cancelled");
    c.assert_unchanged(&snap, "after a repeated cancel").await;
    c.advance(7_200_000);
    assert_eq!(c.promote().await, 0);
    assert_eq!(c.lease(&["q"], 10).await, vec![]);
    assert_counts(&c.stats("q").await, &[(JobState::Cancelled, 3)]);
}

/// Cancelling a running job requests it (history `CancelRequested`, the lease stays); a failure
/// then ends the job `cancelled`, not retried.
pub async fn cancel_running_then_fail<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    let id = c.insert_one(NewJob { attempts_max: Some(5), ..new_job("q", "x") }).await;
    let l = c.lease_one("q", id).await;
    c.advance(100);
    assert_eq!(c.cancel(id).await.unwrap(), JobState::Running);
    let job = c.get(id).await;
    assert_eq!(job.state(), JobState::Running);
    assert!(job.status.cancel_requested);
    assert_eq!(job.status.lease.as_ref().map(|x| x.id), Some(l.lease), "a cancel request keeps the lease");
    let last = job.history.last().unwrap();
    assert_eq!((last.kind, last.state, last.attempt), (HistoryKind::CancelRequested, JobState::Running, 1));
    c.advance(10);
    assert_eq!(c.cancel(id).await.unwrap(), JobState::Running);
    assert_eq!(c.get(id).await.history.len(), job.history.len(), "a repeated cancel request adds no history");

    c.advance(10);
    let acked = c.fail(id, l.lease, "stopping", true, None).await.unwrap();
    assert_eq!(outcome(&acked), (JobState::Cancelled, None));
    let job = c.get(id).await;
    assert_eq!(job.state(), JobState::Cancelled);
    assert_eq!(job.status.finished_at, Some(c.now));
    let last = job.history.last().unwrap();
    assert_eq!((last.kind, last.state, last.token), (HistoryKind::Failed, JobState::Cancelled, Some(l.token)));
    c.advance(3_600_000);
    assert_eq!(c.lease(&["q"], 10).await, vec![]);
    assert_counts(&c.stats("q").await, &[(JobState::Cancelled, 1)]);
}

/// A running job with a cancel request whose lease expires ends `cancelled`, not retried or dead.
pub async fn cancel_running_then_expire<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    let id = c.insert_one(NewJob { attempts_max: Some(1), lease_ms: Some(5_000), ..new_job("q", "x") }).await;
    let l = c.lease_one("q", id).await;
    assert_eq!(c.cancel(id).await.unwrap(), JobState::Running);
    c.set_now(l.deadline);
    assert_eq!(c.expire().await, 1);
    let job = c.get(id).await;
    assert_eq!((job.state(), job.status.dead_reason), (JobState::Cancelled, None));
    let last = job.history.last().unwrap();
    assert_eq!((last.kind, last.state, last.token), (HistoryKind::Expired, JobState::Cancelled, Some(l.token)));
    assert_counts(&c.stats("q").await, &[(JobState::Cancelled, 1)]);
}

/// A running job with a cancel request that completes anyway is completed: the work was done.
pub async fn cancel_running_then_complete<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    let id = c.insert_one(new_job("q", "x")).await;
    let l = c.lease_one("q", id).await;
    assert_eq!(c.cancel(id).await.unwrap(), JobState::Running);
    c.advance(10);
    let result = payload("done");
    let acked = c.ack_one(id, l.lease, AckOutcome::Complete { result: Some(result.clone()) }).await.unwrap();
    assert_eq!(acked.state, JobState::Completed);
    let job = c.get(id).await;
    assert_eq!((job.state(), job.status.result), (JobState::Completed, Some(result)));
}

/// Cancelling a completed or dead job is `AlreadyFinished` and changes nothing.
pub async fn cancel_finished_rejected<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    let done = c.insert_one(new_job("q", "done")).await;
    let l = c.lease_one("q", done).await;
    c.complete(done, l.lease).await.unwrap();
    let dead = c.insert_one(new_job("q", "dead")).await;
    let l = c.lease_one("q", dead).await;
    c.fail(dead, l.lease, "bad", false, None).await.unwrap();
    let snap = c.snapshot().await;
    c.advance(10);
    assert_rejected(c.cancel(done).await, done, Rejection::AlreadyFinished { state: JobState::Completed });
    assert_rejected(c.cancel(dead).await, dead, Rejection::AlreadyFinished { state: JobState::Dead });
    c.assert_unchanged(&snap, "after cancelling finished jobs").await;
}

/// Cancelling an unknown job is `JobNotFound`.
pub async fn cancel_unknown_not_found<H: Harness>(h: H) {
    let c = Ctx::open(h).await;
    let id = c.insert_one(new_job("q", "x")).await;
    let unknown = JobId(id.0.wrapping_add(1_000));
    assert_not_found(c.cancel(unknown).await, unknown);
    assert_eq!(c.get(id).await.state(), JobState::Available);
}
