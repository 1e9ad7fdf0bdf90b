//! Durable steps (`Store::job_step`): recorded by the attempt holding the lease, memoized (the
//! first record of a name wins), handed to every later attempt, kept through failures, expiries,
//! restarts and redrives, bounded, and written into the job's history.

use dray_core::{HistoryKind, JobId, JobState, Limits, NewJob, Rejection, Step, Timestamp};

use super::{
    BACKOFF_1MS, Ctx, Harness, after, assert_invalid, assert_job_eq, assert_not_found, assert_rejected, before,
    new_job, other_lease, payload,
};
use crate::{DeadRedrive, DeadSelection, Error, JobStep, LeasedJob, StepRecorded, Store};

impl<H: Harness> Ctx<H> {
    pub async fn try_step(
        &self,
        job: JobId,
        lease: dray_core::LeaseId,
        name: &str,
        result: &str,
    ) -> Result<StepRecorded, Error> {
        self.store().job_step(JobStep { now: self.now, job, lease, name: name.into(), result: payload(result) }).await
    }

    /// Records a step that must be accepted; returns the answer.
    pub async fn step(&self, job: JobId, lease: dray_core::LeaseId, name: &str, result: &str) -> StepRecorded {
        self.try_step(job, lease, name, result)
            .await
            .unwrap_or_else(|e| panic!("job_step({job}, {name:?}) at {}: {e:?}", self.now))
    }
}

/// A job that may run three times, retried at once.
fn retried(queue: &str) -> NewJob {
    NewJob { attempts_max: Some(3), lease_ms: Some(5_000), backoff: Some(BACKOFF_1MS), ..new_job(queue, "{}") }
}

/// The steps a lease handed out, as (name, result) text.
fn leased_steps(l: &LeasedJob) -> Vec<(String, String)> {
    l.steps.iter().map(|s| (s.name.to_string(), String::from_utf8_lossy(s.result.as_bytes()).into_owned())).collect()
}

fn pairs(steps: &[(&str, &str)]) -> Vec<(String, String)> {
    steps.iter().map(|(n, r)| (n.to_string(), r.to_string())).collect()
}

#[track_caller]
fn assert_answer(got: &StepRecorded, name: &str, result: &str, at: Timestamp, attempt: u32, recorded: bool) {
    let want = Step { name: name.into(), result: payload(result), at, attempt };
    assert_eq!((&got.step, got.recorded), (&want, recorded), "the answer to recording step {name:?}");
}

/// Steps a first attempt recorded are handed to the next attempt, in recording order, after the
/// first attempt failed; the answers say what was recorded, when and by which attempt, and the
/// job (read back whole) is exactly what the core's transitions make of it.
pub async fn step_recorded_then_leased_after_failure<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    let id = c.insert_one(retried("q")).await;
    let l1 = c.lease_one("q", id).await;
    assert!(l1.steps.is_empty(), "a first attempt gets no steps");
    c.advance(10);
    let before = c.get(id).await;
    let fetch = c.step(id, l1.lease, "fetch page", r#"{"page":1,"words":["a","b"]}"#).await;
    assert_answer(&fetch, "fetch page", r#"{"page":1,"words":["a","b"]}"#, c.now, 1, true);
    assert_eq!(fetch.queue.as_str(), "q");
    let expected = after(
        &before,
        dray_core::Event::Step { lease: l1.lease, name: "fetch page", result: fetch.step.result.clone() },
        c.now,
    );
    assert_job_eq(&c.get(id).await, &expected, "after the first step");
    let first_at = c.now;
    c.advance(10);
    c.step(id, l1.lease, "summarize", r#""short""#).await;
    c.advance(10);
    c.step(id, l1.lease, "ünïcödé step 3", "[1,2,3]").await;

    c.fail(id, l1.lease, "crashed at step 4", true, Some(0)).await.unwrap();
    let l2 = c.lease_one("q", id).await;
    assert_eq!(l2.attempt, 2);
    assert_eq!(
        leased_steps(&l2),
        pairs(&[
            ("fetch page", r#"{"page":1,"words":["a","b"]}"#),
            ("summarize", r#""short""#),
            ("ünïcödé step 3", "[1,2,3]")
        ]),
        "the next attempt gets every step, in recording order"
    );
    // The next attempt skips what is recorded (a record of it would answer the first result)
    // and records what is new.
    c.advance(10);
    let again = c.step(id, l2.lease, "fetch page", r#"{"page":2}"#).await;
    assert_answer(&again, "fetch page", r#"{"page":1,"words":["a","b"]}"#, first_at, 1, false);
    let publish = c.step(id, l2.lease, "publish", "true").await;
    assert_answer(&publish, "publish", "true", c.now, 2, true);
    let job = c.get(id).await;
    assert_eq!(job.steps.len(), 4);
    assert_eq!(job.steps.iter().map(|s| s.attempt).collect::<Vec<_>>(), [1, 1, 1, 2]);
    assert_eq!(c.complete(id, l2.lease).await.unwrap().state, JobState::Completed);
    assert_eq!(c.get(id).await.steps, job.steps, "a completed job keeps its steps");
}

/// A worker that vanished (its lease expired) leaves its steps for the next attempt.
pub async fn step_kept_after_lease_expiry<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    let id = c.insert_one(retried("q")).await;
    let l1 = c.lease_one("q", id).await;
    c.step(id, l1.lease, "a", "1").await;
    c.step(id, l1.lease, "b", "2").await;
    c.set_now(l1.deadline);
    assert_eq!(c.expire().await, 1);
    let l2 = c.lease_when_due("q", id, 1).await;
    assert_eq!(l2.attempt, 2);
    assert_eq!(leased_steps(&l2), pairs(&[("a", "1"), ("b", "2")]));
}

/// Fenced like an ack: a stale lease, an expired lease, a finished job and an unknown job are
/// refused, and a refused record changes nothing.
pub async fn step_stale_and_expired_leases_refused<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    let id = c.insert_one(retried("q")).await;
    let old = c.lease_one("q", id).await;
    c.step(id, old.lease, "kept", "1").await;
    c.set_now(old.deadline);
    let snap = c.snapshot().await;
    // The deadline has passed, not yet expired by maintenance: the lease is current but dead.
    assert_rejected(
        c.try_step(id, old.lease, "late", "2").await,
        id,
        Rejection::LeaseExpired { deadline: old.deadline },
    );
    assert_rejected(
        c.try_step(id, old.lease, "kept", "2").await,
        id,
        Rejection::LeaseExpired { deadline: old.deadline },
    );
    assert_rejected(
        c.try_step(id, other_lease(old.lease), "late", "2").await,
        id,
        Rejection::StaleLease { state: JobState::Running },
    );
    c.assert_unchanged(&snap, "after refused steps of an expired lease").await;

    assert_eq!(c.expire().await, 1);
    let new = c.lease_when_due("q", id, 1).await;
    c.advance(10);
    let snap = c.snapshot().await;
    let stale = Rejection::StaleLease { state: JobState::Running };
    assert_rejected(c.try_step(id, old.lease, "zombie", "3").await, id, stale.clone());
    assert_rejected(c.try_step(id, old.lease, "kept", "3").await, id, stale);
    let unknown = JobId(id.0 + 1_000);
    assert_not_found(c.try_step(unknown, new.lease, "x", "1").await, unknown);
    c.assert_unchanged(&snap, "after a zombie's steps").await;

    c.complete(id, new.lease).await.unwrap();
    let snap = c.snapshot().await;
    let done = Rejection::AlreadyFinished { state: JobState::Completed };
    assert_rejected(c.try_step(id, new.lease, "after", "4").await, id, done.clone());
    assert_rejected(c.try_step(id, old.lease, "kept", "4").await, id, done);
    c.assert_unchanged(&snap, "after steps of a completed job").await;
}

/// The first record of a name wins, within an attempt and across attempts: a repeat changes
/// nothing (no history entry, no new version) and answers the first result.
pub async fn step_first_write_wins<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    let id = c.insert_one(retried("q")).await;
    let l = c.lease_one("q", id).await;
    let first = c.step(id, l.lease, "charge", r#"{"charge":"ch_1"}"#).await;
    assert!(first.recorded);
    c.advance(5);
    let snap = c.snapshot().await;
    for result in [r#"{"charge":"ch_2"}"#, r#"{"charge":"ch_1"}"#, "null"] {
        let again = c.step(id, l.lease, "charge", result).await;
        assert_eq!(
            (again.step.clone(), again.recorded),
            (first.step.clone(), false),
            "a repeat answers the first record"
        );
    }
    c.assert_unchanged(&snap, "after repeated records of one name").await;
    let job = c.get(id).await;
    let entries: Vec<_> = job.history.iter().filter(|e| e.kind == HistoryKind::StepRecorded).collect();
    assert_eq!(entries.len(), 1, "one history entry for one step");
}

/// Bad steps are refused naming the field and the limit, and change nothing; the job's bounds
/// (count and bytes) hold, and a name recorded before is still answered at the bound.
pub async fn step_limits<H: Harness>(h: H) {
    let c = Ctx::open(h).await;
    let id = c.insert_one(NewJob { lease_ms: Some(Limits::LEASE_MS_MAX), ..new_job("q", "{}") }).await;
    let l = c.lease_one("q", id).await;
    let snap = c.snapshot().await;
    let long_name = "n".repeat(Limits::STEP_NAME_BYTES_MAX + 1);
    let big = format!("\"{}\"", "x".repeat(Limits::STEP_RESULT_BYTES_MAX - 1));
    let cases: [(&str, &str, &str); 6] = [
        ("", "1", "name"),
        (&long_name, "1", "name"),
        ("tab\there", "1", "name"),
        ("s", &big, "result"),
        ("s", "{not json", "result"),
        ("s", "1e400", "result"),
    ];
    for (name, result, field) in cases {
        assert_invalid(c.try_step(id, l.lease, name, result).await, field);
    }
    c.assert_unchanged(&snap, "after invalid steps").await;
    let exactly = "n".repeat(Limits::STEP_NAME_BYTES_MAX);
    assert!(c.step(id, l.lease, &exactly, "0").await.recorded, "a name at the limit is fine");

    // Bytes per job: big steps up to the bound, then one more is refused.
    let at_limit = format!("\"{}\"", "x".repeat(Limits::STEP_RESULT_BYTES_MAX - 2));
    let mut bytes = exactly.len() + 1;
    let mut i = 0;
    while bytes + at_limit.len() + 8 <= Limits::STEPS_BYTES_PER_JOB_MAX {
        let name = format!("big-{i:04}");
        c.step(id, l.lease, &name, &at_limit).await;
        bytes += name.len() + at_limit.len();
        i += 1;
    }
    let snap = c.snapshot().await;
    assert_invalid(c.try_step(id, l.lease, "big-more", &at_limit).await, "result");
    c.assert_unchanged(&snap, "after a step past the job's bytes").await;
    let job = c.get(id).await;
    assert_eq!(job.steps.bytes(), bytes);

    // Count per job: small steps up to the bound, then one more is refused; a known name is
    // still answered.
    let small = c.insert_one(NewJob { lease_ms: Some(Limits::LEASE_MS_MAX), ..new_job("small", "{}") }).await;
    let ls = c.lease_one("small", small).await;
    for i in 0..Limits::STEPS_PER_JOB_MAX {
        c.step(small, ls.lease, &format!("s{i}"), "1").await;
    }
    let snap = c.snapshot().await;
    assert_invalid(c.try_step(small, ls.lease, "one more", "1").await, "name");
    let known = c.step(small, ls.lease, "s7", "2").await;
    assert_eq!((known.recorded, known.step.result.clone()), (false, payload("1")));
    c.assert_unchanged(&snap, "at the job's step count").await;
    assert_eq!(c.get(small).await.steps.len(), Limits::STEPS_PER_JOB_MAX);
}

/// Steps are durable: after a restart the job holds them, the next attempt gets them, and a
/// record of a known name still answers the first result.
pub async fn step_survives_restart<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    let id = c.insert_one(retried("q")).await;
    let other = c.insert_one(retried("q")).await;
    let l = c.lease_one("q", id).await;
    let lo = c.lease_one("q", other).await;
    for i in 0..5 {
        c.advance(1);
        c.step(id, l.lease, &format!("step {i}"), &format!("{{\"i\":{i}}}")).await;
    }
    c.step(other, lo.lease, "other", "\"o\"").await;
    let before = c.snapshot().await;
    c.restart().await;
    c.assert_unchanged(&before, "after a restart").await;
    let again = c.step(id, l.lease, "step 2", "0").await;
    assert_eq!((again.recorded, again.step.result.clone()), (false, payload(r#"{"i":2}"#)));
    c.fail(id, l.lease, "crash", true, Some(0)).await.unwrap();
    c.restart().await;
    let l2 = c.lease_one("q", id).await;
    let want: Vec<(String, String)> = (0..5).map(|i| (format!("step {i}"), format!("{{\"i\":{i}}}"))).collect();
    assert_eq!(leased_steps(&l2), want);
    c.step(id, l2.lease, "step 5", "5").await;
    c.restart().await;
    assert_eq!(c.get(id).await.steps.len(), 6);
}

/// A dead job keeps its steps; redriven, it resumes at its first unrecorded step.
pub async fn step_kept_on_redrive<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    let id = c.insert_one(retried("q")).await;
    let l = c.lease_one("q", id).await;
    c.step(id, l.lease, "a", "1").await;
    c.fail(id, l.lease, "poison", false, None).await.unwrap();
    assert_eq!(c.get(id).await.state(), JobState::Dead);
    c.advance(10);
    let redriven = c
        .store()
        .dead_redrive(DeadRedrive { now: c.now, selection: DeadSelection::Ids(vec![id]), dry_run: false })
        .await;
    assert_eq!(redriven.unwrap().ids, [id]);
    let l2 = c.lease_one("q", id).await;
    assert_eq!(l2.attempt, 1, "a redrive gives a fresh budget");
    assert_eq!(leased_steps(&l2), pairs(&[("a", "1")]));
    assert!(!c.step(id, l2.lease, "a", "9").await.recorded);
    assert!(c.step(id, l2.lease, "b", "2").await.recorded);
}

/// Each recorded step is an entry of the job's history: kind `step_recorded`, the step's name in
/// `error`, the attempt, its token and worker, the state unchanged; a repeat adds none.
pub async fn step_history_entries<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    let id = c.insert_one(retried("q")).await;
    let l = c.lease_one("q", id).await;
    c.advance(3);
    c.step(id, l.lease, "one", "1").await;
    c.step(id, l.lease, "one", "2").await;
    c.advance(3);
    c.step(id, l.lease, "two", "2").await;
    let job = c.get(id).await;
    let steps: Vec<_> = job
        .history
        .iter()
        .filter(|e| e.kind == HistoryKind::StepRecorded)
        .map(|e| (e.error.as_deref().unwrap_or("-").to_string(), e.state, e.attempt, e.token, e.worker.clone(), e.at))
        .collect();
    let w = Some(c.worker.clone());
    assert_eq!(
        steps,
        [
            ("one".to_string(), JobState::Running, 1, Some(l.token), w.clone(), before(c.now, 3)),
            ("two".to_string(), JobState::Running, 1, Some(l.token), w, c.now),
        ]
    );
    assert_eq!(job.version as usize, job.history.len() + job.history_dropped as usize);
    assert_eq!(job.history.last().map(|e| e.kind), Some(HistoryKind::StepRecorded));
    // The steps' own record agrees with the history.
    let recorded: Vec<(String, Timestamp)> = job.steps.iter().map(|s| (s.name.to_string(), s.at)).collect();
    assert_eq!(recorded, [("one".to_string(), before(c.now, 3)), ("two".to_string(), c.now)]);
}
