//! Random event sequences pushed through [`transition`] and [`Job::apply`], checked step by step
//! against a tiny reference model written from the delivery contract (PRODUCT.md), not from the
//! core's code.
//!
//! The model predicts, for each event, whether the core accepts it and the state the job ends in.
//! After every step the harness also checks invariants that hold whatever the model says: attempts
//! within budget, exactly one lease while running, fencing tokens strictly increasing, nothing
//! leased before it is due, a completed job never leased again, `version` counting history, and
//! steps (`Event::Step`) memoized: the first result recorded for a name is the one every later
//! record of it gets back, and every step stays through retries, expiries and redrives.

use dray_core::{
    Backoff, Event, FencingToken, HistoryKind, Job, JobId, JobState, LeaseId, Limits, NewJob, Payload, QueueName,
    RetryPolicy, Timestamp, WorkerId, transition,
};
use proptest::prelude::*;

/// Every job's lease duration. Clock steps are drawn around it so leases both survive and expire.
const LEASE_MS: u64 = 1_000;
/// Backoff with an integer-friendly factor, so the model can compute its window independently.
const BACKOFF_BASE_MS: u64 = 100;
const BACKOFF_CAP_MS: u64 = 1_000;
const JOBS_MAX: usize = 4;
const START: Timestamp = Timestamp(1_700_000_000_000);

/// Which lease a worker presents.
#[derive(Clone, Copy, Debug)]
enum LeaseChoice {
    /// The last lease the job was granted (current if it is running, stale otherwise).
    Latest,
    /// An earlier lease of the same job, if it had one: a zombie worker.
    Earlier,
    /// A lease id never granted.
    Bogus,
}

#[derive(Clone, Debug)]
enum Op {
    Enqueue {
        offset_ms: i64,
        attempts_max: u32,
        blocked: bool,
    },
    Promote(usize),
    /// Every dependency finished: a blocked job may run.
    Release(usize),
    /// A dependency failed under the `cancel` policy.
    DependencyFailed(usize),
    Lease(usize),
    Heartbeat(usize, LeaseChoice),
    Complete(usize, LeaseChoice),
    Fail {
        job: usize,
        lease: LeaseChoice,
        retryable: bool,
        retry_after_ms: Option<u64>,
        rate_limited: bool,
    },
    Expire(usize),
    Cancel(usize),
    Redrive(usize),
    /// Record step `name` (one of a few, so names repeat) with a fresh result.
    Step {
        job: usize,
        lease: LeaseChoice,
        name: u8,
    },
    Advance(u64),
}

fn lease_choice() -> impl Strategy<Value = LeaseChoice> {
    prop_oneof![
        6 => Just(LeaseChoice::Latest),
        2 => Just(LeaseChoice::Earlier),
        1 => Just(LeaseChoice::Bogus),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let job = 0..JOBS_MAX;
    prop_oneof![
        1 => (prop_oneof![Just(0i64), Just(-50), 1..3_000i64], 1..=3u32, prop::bool::weighted(0.3))
            .prop_map(|(offset_ms, attempts_max, blocked)| Op::Enqueue { offset_ms, attempts_max, blocked }),
        1 => job.clone().prop_map(Op::Release),
        1 => job.clone().prop_map(Op::DependencyFailed),
        3 => job.clone().prop_map(Op::Promote),
        4 => job.clone().prop_map(Op::Lease),
        2 => (job.clone(), lease_choice()).prop_map(|(j, l)| Op::Heartbeat(j, l)),
        2 => (job.clone(), lease_choice()).prop_map(|(j, l)| Op::Complete(j, l)),
        3 => (
            job.clone(),
            lease_choice(),
            prop::bool::weighted(0.8),
            prop::option::weighted(0.3, prop_oneof![0..2_000u64, Just(u64::MAX)]),
            prop::bool::weighted(0.15),
        )
            .prop_map(|(job, lease, retryable, retry_after_ms, rate_limited)| Op::Fail {
                job,
                lease,
                retryable,
                retry_after_ms,
                rate_limited
            }),
        2 => job.clone().prop_map(Op::Expire),
        1 => job.clone().prop_map(Op::Cancel),
        1 => job.clone().prop_map(Op::Redrive),
        3 => (job.clone(), lease_choice(), 0..4u8).prop_map(|(job, lease, name)| Op::Step { job, lease, name }),
        4 => prop_oneof![Just(0u64), 1..400u64, Just(LEASE_MS - 1), Just(LEASE_MS), 400..2_500u64]
            .prop_map(Op::Advance),
    ]
}

/// The reference model of one job: the contract's view, nothing more.
#[derive(Clone, Debug)]
struct Model {
    state: JobState,
    /// When a scheduled or retrying job becomes due.
    due_at: i64,
    attempt: u32,
    attempts_max: u32,
    /// The current lease and its deadline, while running.
    lease: Option<(u64, i64)>,
    cancel_requested: bool,
    /// Every lease id the job was granted, oldest first.
    leases: Vec<u64>,
    ever_completed: bool,
    /// Steps recorded, in order: the name and the first result recorded for it.
    steps: Vec<(u8, u64)>,
}

/// What the model expects of one event.
#[derive(Debug, PartialEq)]
enum Expect {
    Reject,
    /// Accepted; the job ends in this state.
    Accept(JobState),
    /// Accepted into `retrying`, due within `[from, to]` (full jitter makes the exact time random).
    Retry {
        from: i64,
        to: i64,
    },
}

impl Model {
    fn new(now: i64, due_at: i64, attempts_max: u32, blocked: bool) -> Model {
        let state = if blocked {
            JobState::Blocked
        } else if due_at > now {
            JobState::Scheduled
        } else {
            JobState::Available
        };
        Model {
            state,
            due_at,
            attempt: 0,
            attempts_max,
            lease: None,
            cancel_requested: false,
            leases: Vec::new(),
            ever_completed: false,
            steps: Vec::new(),
        }
    }

    /// The backoff window after attempt `n` failed: base doubled per earlier attempt, capped.
    fn window_ms(n: u32) -> u64 {
        let mut window = BACKOFF_BASE_MS;
        for _ in 1..n {
            window = (window * 2).min(BACKOFF_CAP_MS);
        }
        window.min(BACKOFF_CAP_MS)
    }

    /// Acks and heartbeats need the current lease, still live on the server's clock.
    fn holds(&self, lease: u64, now: i64) -> bool {
        self.state == JobState::Running && matches!(self.lease, Some((id, deadline)) if id == lease && now < deadline)
    }

    /// A failed attempt (a reported failure or an expired lease).
    /// A rate-limited failure hands the attempt back: it is retried whatever the budget says.
    fn after_failure(&self, now: i64, retryable: bool, retry_after_ms: Option<u64>, rate_limited: bool) -> Expect {
        if self.cancel_requested {
            Expect::Accept(JobState::Cancelled)
        } else if !rate_limited && (!retryable || self.attempt >= self.attempts_max) {
            Expect::Accept(JobState::Dead)
        } else if let Some(ms) = retry_after_ms {
            let at = now.saturating_add(ms.min(Limits::RETRY_AFTER_MS_MAX) as i64);
            Expect::Retry { from: at, to: at }
        } else {
            Expect::Retry { from: now, to: now + Self::window_ms(self.attempt) as i64 }
        }
    }

    fn predict(&self, op: &Op, lease: u64, now: i64) -> Expect {
        use JobState::*;
        match *op {
            Op::Promote(_) => match self.state {
                Scheduled | Retrying if now >= self.due_at => Expect::Accept(Available),
                _ => Expect::Reject,
            },
            Op::Lease(_) => match self.state {
                Available => Expect::Accept(Running),
                _ => Expect::Reject,
            },
            Op::Heartbeat(..) | Op::Step { .. } if self.holds(lease, now) => Expect::Accept(Running),
            Op::Complete(..) if self.holds(lease, now) => Expect::Accept(Completed),
            Op::Fail { retryable, retry_after_ms, rate_limited, .. } if self.holds(lease, now) => {
                self.after_failure(now, retryable, retry_after_ms, rate_limited)
            }
            Op::Heartbeat(..) | Op::Complete(..) | Op::Fail { .. } | Op::Step { .. } => Expect::Reject,
            Op::Expire(_) => match self.lease {
                Some((_, deadline)) if self.state == Running && now >= deadline => {
                    self.after_failure(now, true, None, false)
                }
                _ => Expect::Reject,
            },
            Op::Release(_) => match self.state {
                Blocked if self.due_at > now => Expect::Accept(Scheduled),
                Blocked => Expect::Accept(Available),
                _ => Expect::Reject,
            },
            Op::DependencyFailed(_) => match self.state {
                Blocked => Expect::Accept(Cancelled),
                _ => Expect::Reject,
            },
            Op::Cancel(_) => match self.state {
                Scheduled | Available | Retrying | Cancelled | Blocked => Expect::Accept(Cancelled),
                Running => Expect::Accept(Running),
                Completed | Dead => Expect::Reject,
            },
            Op::Redrive(_) => match self.state {
                Dead => Expect::Accept(Available),
                _ => Expect::Reject,
            },
            Op::Enqueue { .. } | Op::Advance(_) => unreachable!("not an event on a job"),
        }
    }

    /// Moves the model as the accepted event says. `retry_at` is the core's choice within the
    /// predicted window (checked by the caller).
    fn accept(&mut self, op: &Op, expect: &Expect, lease: u64, now: i64, retry_at: i64) {
        let state = match *expect {
            Expect::Accept(state) => state,
            Expect::Retry { .. } => JobState::Retrying,
            Expect::Reject => unreachable!(),
        };
        match op {
            Op::Lease(_) => {
                self.attempt += 1;
                self.lease = Some((lease, now + LEASE_MS as i64));
                self.leases.push(lease);
            }
            Op::Heartbeat(..) => {
                let (id, _) = self.lease.expect("running");
                self.lease = Some((id, now + LEASE_MS as i64));
            }
            Op::Cancel(_) if self.state == JobState::Running => self.cancel_requested = true,
            Op::Fail { rate_limited: true, .. } if state == JobState::Retrying => self.attempt -= 1,
            Op::Redrive(_) => {
                self.attempt = 0;
                self.cancel_requested = false;
                self.due_at = now;
            }
            Op::Release(_) if state == JobState::Available => self.due_at = now,
            _ => {}
        }
        if state != JobState::Running {
            self.lease = None;
        }
        if state == JobState::Retrying {
            self.due_at = retry_at;
        }
        if state == JobState::Completed {
            self.ever_completed = true;
        }
        self.state = state;
    }
}

struct Harness {
    now: Timestamp,
    jobs: Vec<(Job, Model)>,
    /// Fencing tokens and lease ids both come from here: strictly increasing, never reused.
    counter: u64,
    worker: WorkerId,
    queue: QueueName,
    /// Step results are this counter's values: each record sends a result never sent before.
    results: u64,
}

impl Harness {
    fn new() -> Harness {
        Harness {
            now: START,
            jobs: Vec::new(),
            counter: 0,
            worker: WorkerId::new("model-worker").unwrap(),
            queue: QueueName::new("model").unwrap(),
            results: 0,
        }
    }

    fn enqueue(&mut self, offset_ms: i64, attempts_max: u32, blocked: bool) {
        if self.jobs.len() >= JOBS_MAX {
            return;
        }
        let now = self.now.as_millis();
        let mut new = NewJob::new(self.queue.clone(), Payload::new(&b"{}"[..]));
        new.run_at = Some(Timestamp(now + offset_ms));
        new.attempts_max = Some(attempts_max);
        new.backoff = Some(Backoff { base_ms: BACKOFF_BASE_MS, factor: 2.0, cap_ms: BACKOFF_CAP_MS });
        new.validate(self.now).expect("the harness enqueues valid jobs");
        let id = JobId(self.jobs.len() as u64 + 1);
        let mut job = new.into_job(id, self.now, RetryPolicy::default(), LEASE_MS);
        if blocked {
            job = job.with_dependencies(Box::new([JobId(u64::MAX)]), true);
        }
        let model = Model::new(now, now + offset_ms, attempts_max, blocked);
        assert_eq!(job.state(), model.state, "enqueue with run_at {offset_ms} ms from now");
        self.jobs.push((job, model));
    }

    fn step(&mut self, op: &Op, random: u64) -> Result<(), TestCaseError> {
        let index = match *op {
            Op::Enqueue { offset_ms, attempts_max, blocked } => {
                self.enqueue(offset_ms, attempts_max, blocked);
                return Ok(());
            }
            Op::Advance(ms) => {
                self.now = self.now.add_ms(ms);
                return Ok(());
            }
            Op::Promote(j) | Op::Lease(j) | Op::Heartbeat(j, _) | Op::Complete(j, _) => j,
            Op::Fail { job, .. } => job,
            Op::Expire(j) | Op::Cancel(j) | Op::Redrive(j) | Op::Release(j) | Op::DependencyFailed(j) => j,
            Op::Step { job, .. } => job,
        };
        let index = index % self.jobs.len();
        let now = self.now;
        let choice = match op {
            Op::Heartbeat(_, c) | Op::Complete(_, c) | Op::Fail { lease: c, .. } | Op::Step { lease: c, .. } => {
                Some(*c)
            }
            _ => None,
        };
        let (job, model) = &mut self.jobs[index];
        // The lease id the event carries: fresh for a grant, else the worker's choice.
        let lease = match choice {
            None if matches!(op, Op::Lease(_)) => {
                self.counter += 1;
                self.counter
            }
            None => 0,
            Some(LeaseChoice::Latest) => model.leases.last().copied().unwrap_or(u64::MAX),
            Some(LeaseChoice::Earlier) => match model.leases.len() {
                0 | 1 => u64::MAX,
                n => model.leases[n - 2],
            },
            Some(LeaseChoice::Bogus) => u64::MAX,
        };
        self.results += 1;
        let result = self.results;
        let step_name = match *op {
            Op::Step { name, .. } => format!("step-{name}"),
            _ => String::new(),
        };
        let event = match *op {
            Op::Promote(_) => Event::Promote,
            Op::Lease(_) => {
                Event::Lease { id: LeaseId(lease), token: FencingToken(lease), worker: &self.worker, lease_ms: None }
            }
            Op::Heartbeat(..) => {
                Event::Heartbeat { lease: LeaseId(lease), extend_ms: None, progress: None, checkpoint: None }
            }
            Op::Complete(..) => Event::Complete { lease: LeaseId(lease), result: None },
            Op::Fail { retryable, retry_after_ms, rate_limited, .. } => {
                Event::Fail { lease: LeaseId(lease), error: "model failure", retryable, retry_after_ms, rate_limited }
            }
            Op::Expire(_) => Event::Expire,
            Op::Cancel(_) => Event::Cancel,
            Op::Redrive(_) => Event::Redrive,
            Op::Release(_) => Event::Release,
            Op::DependencyFailed(_) => {
                Event::DependencyFailed { dependency: JobId(u64::MAX), state: Some(JobState::Dead) }
            }
            Op::Step { .. } => Event::Step {
                lease: LeaseId(lease),
                name: &step_name,
                result: Payload::new(result.to_string().into_bytes()),
            },
            Op::Enqueue { .. } | Op::Advance(_) => unreachable!(),
        };

        let expect = model.predict(op, lease, now.as_millis());
        let before = job.clone();
        let outcome = transition(job, event, now, random);
        let context = || format!("job {index} at {now}: {op:?}\nmodel: {model:?}\njob: {:?}", before.status);
        match (&expect, outcome) {
            (Expect::Reject, Err(_)) => {}
            (Expect::Reject, Ok(t)) => {
                return Err(TestCaseError::fail(format!(
                    "core accepted, model rejects; core went to {}\n{}",
                    t.status.state,
                    context()
                )));
            }
            (_, Err(rejection)) => {
                return Err(TestCaseError::fail(format!(
                    "model expects {expect:?}, core rejected: {rejection}\n{}",
                    context()
                )));
            }
            (_, Ok(t)) => {
                if let Op::Lease(_) = op {
                    // The contract's "never delivered early": a lease is granted only once the
                    // job's time has come, on the server's clock.
                    prop_assert!(before.status.run_at <= now, "leased before run_at\n{}", context());
                    prop_assert!(!model.ever_completed, "a completed job was leased again\n{}", context());
                }
                if let Op::Promote(_) = op {
                    prop_assert!(before.status.run_at <= now, "promoted before run_at\n{}", context());
                }
                let mut new_step = None;
                if let Op::Step { name, .. } = *op {
                    // First write wins: a new name records this result, a known one answers
                    // with the result recorded first.
                    let first = model.steps.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
                    let (step, recorded) =
                        t.step().ok_or_else(|| TestCaseError::fail("a step event without its step"))?;
                    prop_assert_eq!(
                        recorded,
                        first.is_none(),
                        "recorded a known name, or not a new one\n{}",
                        context()
                    );
                    let answered = first.unwrap_or(result).to_string();
                    prop_assert_eq!(step.result.as_bytes(), answered.as_bytes(), "the answer is the first result");
                    prop_assert_eq!(t.history.is_some(), recorded, "a history entry exactly for a new step");
                    if recorded {
                        new_step = Some((name, result));
                    }
                }
                let retry_at = t.status.run_at.as_millis();
                if let Expect::Retry { from, to } = expect {
                    prop_assert!(
                        (from..=to).contains(&retry_at),
                        "retry at {retry_at} outside [{from}, {to}]\n{}",
                        context()
                    );
                }
                job.apply(t);
                model.accept(op, &expect, lease, now.as_millis(), retry_at);
                model.steps.extend(new_step);
            }
        }
        let (job, model) = &self.jobs[index];
        check_job(job, model).map_err(|e| TestCaseError::fail(format!("{e}\nafter {op:?} at {now}")))?;
        Ok(())
    }
}

/// Invariants of one job, whatever happened to it.
fn check_job(job: &Job, model: &Model) -> Result<(), String> {
    let s = &job.status;
    let fail = |what: &str| Err(format!("job {}: {what}\nmodel: {model:?}\nstatus: {s:?}", job.id));
    if s.state != model.state {
        return fail("state differs from the model");
    }
    if s.attempt != model.attempt {
        return fail("attempt differs from the model");
    }
    if s.cancel_requested != model.cancel_requested && !s.state.is_finished() {
        return fail("cancel_requested differs from the model");
    }
    if s.attempt > job.retry.attempts_max {
        return fail("more attempts than attempts_max");
    }
    match (&s.lease, model.lease) {
        (Some(l), Some((id, deadline))) if s.state == JobState::Running => {
            if l.id != LeaseId(id) || l.deadline != Timestamp(deadline) {
                return fail("lease differs from the model");
            }
        }
        (None, None) if s.state != JobState::Running => {}
        _ => return fail("a running job holds exactly one lease, any other job none"),
    }
    if matches!(s.state, JobState::Scheduled | JobState::Retrying) && s.run_at.as_millis() != model.due_at {
        return fail("due time differs from the model");
    }
    // Fencing: grants carry strictly increasing tokens; every other entry that names a token
    // names the latest grant's.
    let mut latest: Option<FencingToken> = None;
    for entry in &job.history {
        match (entry.kind, entry.token) {
            (HistoryKind::Leased, Some(token)) => {
                if latest.is_some_and(|l| token <= l) {
                    return fail("fencing tokens in history not strictly increasing");
                }
                latest = Some(token);
            }
            (HistoryKind::Leased, None) => return fail("a lease grant without a token"),
            (_, Some(token)) if latest != Some(token) => {
                return fail("an entry names a token other than the latest grant's");
            }
            _ => {}
        }
    }
    if job.version as usize != job.history.len() + job.history_dropped as usize {
        return fail("version does not count history entries");
    }
    if job.history.last().map(|e| e.state) != Some(s.state) {
        return fail("the last history entry does not record the current state");
    }
    // Steps are never lost nor changed, whatever happened to the job.
    let steps: Vec<(String, String)> = job
        .steps
        .iter()
        .map(|s| (s.name.to_string(), String::from_utf8_lossy(s.result.as_bytes()).into_owned()))
        .collect();
    let expected: Vec<(String, String)> =
        model.steps.iter().map(|(n, v)| (format!("step-{n}"), v.to_string())).collect();
    if steps != expected || job.steps.len() != expected.len() {
        return fail("steps differ from the model");
    }
    Ok(())
}

proptest! {
    // 512 cases by default (a fraction of a second); `PROPTEST_CASES` overrides it for a long run.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512),
        ..ProptestConfig::default()
    })]

    #[test]
    fn core_matches_reference_model(
        first in (prop_oneof![Just(0i64), 1..3_000i64], 1..=3u32),
        ops in prop::collection::vec((op(), any::<u64>()), 1..80),
    ) {
        let mut h = Harness::new();
        h.enqueue(first.0, first.1, false);
        for (op, random) in &ops {
            h.step(op, *random)?;
        }
    }
}

/// A poison job is dead after exactly `attempts_max` deliveries, lease expiries included, and a
/// stale worker's acks are rejected all along (the contract's "Retries" and "Ack" clauses).
#[test]
fn poison_job_dies_after_exactly_attempts_max_deliveries() {
    let mut h = Harness::new();
    h.enqueue(0, 3, false);
    let ops = [
        Op::Lease(0),
        Op::Advance(LEASE_MS),
        Op::Expire(0),
        Op::Advance(BACKOFF_CAP_MS),
        Op::Promote(0),
        Op::Lease(0),
        Op::Fail { job: 0, lease: LeaseChoice::Earlier, retryable: true, retry_after_ms: None, rate_limited: false },
        Op::Complete(0, LeaseChoice::Earlier),
        Op::Fail { job: 0, lease: LeaseChoice::Latest, retryable: true, retry_after_ms: Some(0), rate_limited: false },
        Op::Promote(0),
        Op::Lease(0),
        Op::Advance(LEASE_MS),
        Op::Heartbeat(0, LeaseChoice::Latest),
        Op::Expire(0),
        Op::Lease(0),
    ];
    for op in &ops {
        h.step(op, 42).unwrap();
    }
    let (job, _) = &h.jobs[0];
    assert_eq!(job.state(), JobState::Dead);
    assert_eq!(job.status.attempt, 3);
    assert_eq!(job.status.dead_reason, Some(dray_core::DeadReason::LeaseExpired));
    let leased = job.history.iter().filter(|e| e.kind == HistoryKind::Leased).count();
    assert_eq!(leased, 3);
}
