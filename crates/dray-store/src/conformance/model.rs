//! The model-based test: random sequences of operations against a tiny reference model, with the
//! invariants checked after every step.
//!
//! The generator is a seeded splitmix64, not proptest's runner: every store call is async and
//! runs on the test's runtime, and a hand-rolled RNG keeps the whole run replayable from one seed.
//! The seed is printed at the start and, with the failing case's operations, on failure; set
//! `DRAY_MODEL_SEED` (decimal or `0x` hex) to replay it and `DRAY_MODEL_CASES` to change the number
//! of cases.
//!
//! Operations: enqueue (batches; some jobs with an idempotency key from a small set, so duplicates
//! and conflicts happen), lease, heartbeat, complete and fail (one or two acks per call, with
//! current, old or made-up leases; some jobs carry one of three ordering keys, so the lease
//! checks strict FIFO per key; some carry one of two group keys, and in half the cases the second
//! queue has a `concurrency_max` and a `group_concurrency_max` of 1, so the lease checks limits and
//! turns), clock advance, lease expiry, cancel, redrive and discard (by ids
//! or filter, some dry runs), promotion, pause/resume, restart, and step records (one of three
//! names, with current, old or made-up leases: memoized, first record wins, kept through
//! everything).
//!
//! Each case uses two fresh queues and at most `STEPS_MAX` operations, then drains (cancels every
//! live job) so the next case starts with no live job in the store: that keeps the counts returned
//! by the store-wide maintenance passes exact. Time only moves forward, across all cases.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::fmt::Write as _;

use dray_core::{
    Backoff, DeadReason, FencingToken, HistoryKind, Job, JobId, JobState, LeaseId, NewJob, Payload, QueueName,
    Rejection, Timestamp, WorkerId,
};

use super::{Ctx, Harness, assert_job_eq, assert_not_found, assert_rejected, ids_of, other_lease, outcome, payload, q};
use crate::{
    Ack, AckOutcome, DeadDiscard, DeadRedrive, DeadSelection, Error, FlowLimits, FlowLimitsChange, Inserted, JobFilter,
    LeaseExtended, QueueConfigure, Store,
};

const CASES_DEFAULT: u64 = 64;
const STEPS_MAX: u64 = 60;
/// Short windows (100, 200, 400, 800, 1000 ms) so retries come due within a case.
const MODEL_BACKOFF: Backoff = Backoff { base_ms: 100, factor: 2.0, cap_ms: 1_000 };

/// splitmix64: tiny, fast, and good enough to pick operations.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
}

#[derive(Clone, Debug)]
struct MLease {
    id: LeaseId,
    token: FencingToken,
    deadline: Timestamp,
}

/// What the model expects of one job.
#[derive(Clone, Debug)]
struct MJob {
    id: JobId,
    queue: usize,
    priority: i16,
    attempts_max: u32,
    lease_ms: u64,
    ordering_key: Option<u8>,
    /// One of two group keys, or none.
    group_key: Option<u8>,
    state: JobState,
    attempt: u32,
    run_at: Timestamp,
    lease: Option<MLease>,
    old_leases: Vec<LeaseId>,
    cancel_requested: bool,
    dead_reason: Option<DeadReason>,
    finished_at: Option<Timestamp>,
    checkpoint: Option<Payload>,
    /// Steps recorded, in order: name, result, time, attempt.
    steps: Vec<(String, Payload, Timestamp, u32)>,
    /// History without `Promoted` entries (when a due job is promoted is the store's choice):
    /// kind, state after, attempt, token.
    history: Vec<(HistoryKind, JobState, u32, Option<FencingToken>)>,
}

impl MJob {
    fn is_due_waiting(&self, now: Timestamp) -> bool {
        matches!(self.state, JobState::Scheduled | JobState::Retrying) && self.run_at <= now
    }

    fn leasable(&self, now: Timestamp) -> bool {
        self.state == JobState::Available || self.is_due_waiting(now)
    }

    fn has_any_lease(&self) -> bool {
        self.lease.is_some() || !self.old_leases.is_empty()
    }

    /// The core's lease check: the current lease, still live.
    fn check_lease(&self, lease: LeaseId, now: Timestamp) -> Result<MLease, Rejection> {
        if self.state.is_finished() {
            return Err(Rejection::AlreadyFinished { state: self.state });
        }
        match &self.lease {
            Some(l) if self.state == JobState::Running && l.id == lease => {
                if l.deadline <= now {
                    Err(Rejection::LeaseExpired { deadline: l.deadline })
                } else {
                    Ok(l.clone())
                }
            }
            _ => Err(Rejection::StaleLease { state: self.state }),
        }
    }

    /// Where a failed attempt (failure or expiry) leads: the state, the dead reason, and for a
    /// retry the window its time must fall in.
    fn after_failure(
        &self,
        now: Timestamp,
        exhausted: DeadReason,
        retryable: bool,
        retry_after_ms: Option<u64>,
        rate_limited: bool,
    ) -> (JobState, Option<DeadReason>, Option<(Timestamp, Timestamp)>) {
        if self.cancel_requested {
            (JobState::Cancelled, None, None)
        } else if rate_limited {
            // The attempt is handed back: retried whatever the budget says.
            let window = match retry_after_ms {
                Some(ms) => (now.add_ms(ms), now.add_ms(ms)),
                None => (now, now.add_ms(MODEL_BACKOFF.window_ms(self.attempt))),
            };
            (JobState::Retrying, None, Some(window))
        } else if !retryable {
            (JobState::Dead, Some(DeadReason::NonRetryable), None)
        } else if self.attempt >= self.attempts_max {
            (JobState::Dead, Some(exhausted), None)
        } else if let Some(ms) = retry_after_ms {
            (JobState::Retrying, None, Some((now.add_ms(ms), now.add_ms(ms))))
        } else {
            (JobState::Retrying, None, Some((now, now.add_ms(MODEL_BACKOFF.window_ms(self.attempt)))))
        }
    }

    /// Ends the current attempt in `state` (the lease goes to the old ones).
    fn end_attempt(&mut self, now: Timestamp, kind: HistoryKind, state: JobState, dead_reason: Option<DeadReason>) {
        let lease = self.lease.take().expect("a running job holds a lease");
        self.old_leases.push(lease.id);
        self.state = state;
        self.dead_reason = dead_reason;
        if state.is_finished() {
            self.finished_at = Some(now);
        }
        self.history.push((kind, state, self.attempt, Some(lease.token)));
    }
}

/// The options of a job the model tracks.
#[derive(Clone, Copy, Debug)]
struct Spec {
    queue: usize,
    priority: i16,
    delay_ms: Option<u64>,
    attempts_max: u32,
    lease_ms: u64,
    /// One of three ordering keys, or none.
    ordering_key: Option<u8>,
    /// One of two group keys, or none.
    group_key: Option<u8>,
}

/// The failing case's operations, printed if the test panics.
#[derive(Debug)]
struct Trace {
    seed: u64,
    case: u64,
    ops: Vec<String>,
}

impl Drop for Trace {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut s = String::new();
            let _ = writeln!(
                s,
                "model_random_operations failed: DRAY_MODEL_SEED={:#x} (case {}, step {}). Operations of this case:",
                self.seed,
                self.case,
                self.ops.len()
            );
            for (i, op) in self.ops.iter().enumerate() {
                let _ = writeln!(s, "  {i:>3}: {op}");
            }
            eprintln!("{s}");
        }
    }
}

struct Sim<H: Harness> {
    c: Ctx<H>,
    rng: Rng,
    trace: Trace,
    queues: [QueueName; 2],
    paused: [bool; 2],
    /// Until when each queue backs off after a rate-limited failure.
    backoff_until: [Option<Timestamp>; 2],
    /// The flow limits of each queue in this case.
    limits: [FlowLimits; 2],
    /// This case's jobs, in id order.
    jobs: Vec<MJob>,
    token_max: Option<FencingToken>,
    id_max: Option<JobId>,
    completed: Vec<JobId>,
    serial: u64,
    /// Idempotency keys of this case: (queue, key) to the job and its payload.
    keys: HashMap<(usize, String), (JobId, String)>,
    /// Jobs of this case that were discarded: `job_get` must not find them.
    discarded: Vec<JobId>,
    /// How often each outcome happened: printed at the end, so a run shows what it exercised.
    tally: std::collections::BTreeMap<&'static str, u64>,
}

/// Random operation sequences against a reference model, with invariants after every step:
/// exactly the model's state per job, attempts within `attempts_max`, at most one live lease per
/// job, fencing tokens strictly increasing over all grants (also across restarts), nothing leased
/// before its run time or after completion, queue counts equal to the model's, and stale acks
/// rejected exactly when the model says so.
pub async fn model_random_operations<H: Harness>(h: H) {
    let seed = match std::env::var("DRAY_MODEL_SEED") {
        Ok(s) => parse_u64(&s).unwrap_or_else(|| panic!("DRAY_MODEL_SEED={s:?} is not a number")),
        Err(_) => {
            use std::hash::BuildHasher;
            std::collections::hash_map::RandomState::new().hash_one(0x0d2a_u64)
        }
    };
    let cases = std::env::var("DRAY_MODEL_CASES").ok().and_then(|s| parse_u64(&s)).unwrap_or(CASES_DEFAULT);
    eprintln!("model_random_operations: DRAY_MODEL_SEED={seed:#x}, {cases} cases");

    let c = Ctx::open(h).await;
    let mut sim = Sim {
        c,
        rng: Rng(seed),
        trace: Trace { seed, case: 0, ops: Vec::new() },
        queues: [q("m0-a"), q("m0-b")],
        paused: [false, false],
        backoff_until: [None, None],
        limits: [FlowLimits::default(), FlowLimits::default()],
        jobs: Vec::new(),
        token_max: None,
        id_max: None,
        completed: Vec::new(),
        serial: 0,
        keys: HashMap::new(),
        discarded: Vec::new(),
        tally: std::collections::BTreeMap::new(),
    };
    for case in 0..cases {
        sim.start_case(case).await;
        let steps = sim.rng.range(10, STEPS_MAX);
        for _ in 0..steps {
            sim.step().await;
            sim.check_all().await;
        }
        sim.drain().await;
    }
    eprintln!("model_random_operations: outcomes {:?}", sim.tally);
    // Accepted completions are final across everything that happened since.
    sim.op("final restart".into());
    sim.c.restart().await;
    for id in std::mem::take(&mut sim.completed) {
        assert_eq!(sim.c.get(id).await.state(), JobState::Completed, "completed job {id} changed state");
    }
}

fn parse_u64(s: &str) -> Option<u64> {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

impl<H: Harness> Sim<H> {
    fn op(&mut self, s: String) {
        self.trace.ops.push(format!("[t+{}] {s}", self.c.now.ms_since(super::T0)));
    }

    fn note(&mut self, s: impl AsRef<str>) {
        if let Some(last) = self.trace.ops.last_mut() {
            last.push_str(" -> ");
            last.push_str(s.as_ref());
        }
    }

    fn count(&mut self, what: &'static str, n: u64) {
        *self.tally.entry(what).or_default() += n;
    }

    fn idx(&self, id: JobId) -> usize {
        self.jobs.iter().position(|m| m.id == id).expect("job in model")
    }

    async fn start_case(&mut self, case: u64) {
        self.trace.case = case;
        self.trace.ops.clear();
        self.jobs.clear();
        self.keys.clear();
        self.discarded.clear();
        self.queues = [q(&format!("m{case}-a")), q(&format!("m{case}-b"))];
        self.paused = [false, false];
        self.backoff_until = [None, None];
        // The second queue has concurrency limits in half the cases.
        self.limits = [FlowLimits::default(), FlowLimits::default()];
        if self.rng.chance(50) {
            self.limits[1] = FlowLimits {
                concurrency_max: Some(self.rng.range(2, 3) as u32),
                group_concurrency_max: Some(1),
                ..FlowLimits::default()
            };
        }
        // Configure both queues so their stats exist before their first job.
        for qi in 0..2 {
            let name = self.queues[qi].clone();
            let l = self.limits[qi];
            let limits = FlowLimitsChange {
                concurrency_max: Some(l.concurrency_max),
                group_concurrency_max: Some(l.group_concurrency_max),
                ..FlowLimitsChange::default()
            };
            let config =
                self.c.configure(QueueConfigure { limits, ..QueueConfigure::new(self.c.now, name) }).await.unwrap();
            assert!(!config.paused);
            assert_eq!(config.limits, l);
        }
        self.op(format!("start case {case}"));
    }

    async fn step(&mut self) {
        let roll = self.rng.below(100);
        match roll {
            0..18 => self.enqueue().await,
            18..34 => self.lease().await,
            34..42 => self.heartbeat().await,
            42..56 => self.ack().await,
            56..64 => {
                let ms = self.rng.range(0, 2_000);
                self.expire(ms).await
            }
            64..69 => self.cancel_random().await,
            69..74 => self.redrive().await,
            74..84 => {
                let ms = self.rng.range(1, 2_000);
                self.op(format!("advance {ms} ms"));
                self.c.advance(ms);
            }
            84..88 => self.promote().await,
            88..90 => self.restart().await,
            90..93 => self.pause_toggle().await,
            93..96 => self.discard().await,
            _ => self.record_step().await,
        }
    }

    /// A random job for one of this case's queues, and what the model needs to know of it.
    fn random_job(&mut self) -> (NewJob, Spec) {
        self.serial += 1;
        let spec = Spec {
            queue: self.rng.below(2) as usize,
            priority: self.rng.pick(&[-1i16, 0, 0, 1, 2]),
            delay_ms: match self.rng.below(5) {
                0 => Some(self.rng.range(1, 4_000)),
                1 => Some(0),
                _ => None,
            },
            attempts_max: self.rng.range(1, 4) as u32,
            lease_ms: self.rng.pick(&[1_000u64, 3_000, 6_000]),
            ordering_key: if self.rng.chance(40) { Some(self.rng.below(3) as u8) } else { None },
            group_key: if self.rng.chance(35) { Some(self.rng.below(2) as u8) } else { None },
        };
        let new = NewJob {
            priority: spec.priority,
            delay_ms: spec.delay_ms,
            attempts_max: Some(spec.attempts_max),
            lease_ms: Some(spec.lease_ms),
            backoff: Some(MODEL_BACKOFF),
            ordering_key: spec.ordering_key.map(|k| format!("o{k}").into()),
            group_key: spec.group_key.map(|g| format!("g{g}").into()),
            ..NewJob::new(self.queues[spec.queue].clone(), payload(&format!("job-{}", self.serial)))
        };
        (new, spec)
    }

    async fn enqueue(&mut self) {
        if self.rng.chance(20) {
            return self.enqueue_keyed().await;
        }
        let n = if self.rng.chance(15) { self.rng.range(2, 3) } else { 1 };
        let (batch, specs): (Vec<NewJob>, Vec<Spec>) = (0..n).map(|_| self.random_job()).unzip();
        self.count("jobs enqueued", n);
        self.op(format!("enqueue {specs:?}"));
        let inserted = self.c.insert(batch).await;
        self.note(format!("{:?}", inserted.iter().map(|i| i.id.0).collect::<Vec<_>>()));
        for (ins, spec) in inserted.into_iter().zip(specs) {
            assert!(!ins.duplicate, "a job without an idempotency key is never a duplicate");
            self.add_job(ins, spec);
        }
    }

    /// One job with an idempotency key from a small set, and one of two payloads: duplicates and
    /// conflicts happen often.
    async fn enqueue_keyed(&mut self) {
        let (mut new, spec) = self.random_job();
        let key = format!("k{}", self.rng.below(4));
        let body = format!("p{}", self.rng.below(2));
        new.idempotency_key = Some(key.as_str().into());
        new.payload = payload(&body);
        self.op(format!("enqueue key {key} payload {body} {spec:?}"));
        let r = self.c.try_insert(vec![new]).await;
        self.note(format!("{r:?}"));
        match self.keys.get(&(spec.queue, key.clone())).cloned() {
            Some((existing, existing_body)) if existing_body == body => {
                let state = self.jobs[self.idx(existing)].state;
                let ins = r.unwrap_or_else(|e| panic!("a duplicate insert failed: {e:?}"));
                assert_eq!(ins, vec![Inserted { id: existing, state, duplicate: true }], "duplicate of job {existing}");
                self.count("duplicates", 1);
            }
            Some((existing, _)) => {
                match r {
                    Err(Error::IdempotencyConflict { index: 0, queue, key: k, existing: e })
                        if queue == self.queues[spec.queue] && *k == *key && e == existing => {}
                    other => panic!("expected an idempotency conflict with job {existing}, got {other:?}"),
                }
                self.count("idempotency conflicts", 1);
            }
            None => {
                let mut ins = r.unwrap_or_else(|e| panic!("a keyed insert failed: {e:?}"));
                assert_eq!(ins.len(), 1);
                let ins = ins.pop().unwrap();
                assert!(!ins.duplicate, "the first job with key {key} is not a duplicate");
                self.keys.insert((spec.queue, key), (ins.id, body));
                self.count("jobs enqueued", 1);
                self.add_job(ins, spec);
            }
        }
    }

    fn add_job(&mut self, ins: Inserted, spec: Spec) {
        let now = self.c.now;
        if let Some(max) = self.id_max {
            assert!(ins.id > max, "job id {} not above earlier id {max}", ins.id);
        }
        self.id_max = Some(ins.id);
        let run_at = now.add_ms(spec.delay_ms.unwrap_or(0));
        let state = if run_at > now { JobState::Scheduled } else { JobState::Available };
        assert_eq!(ins.state, state, "state of new job {}", ins.id);
        self.jobs.push(MJob {
            id: ins.id,
            queue: spec.queue,
            priority: spec.priority,
            attempts_max: spec.attempts_max,
            lease_ms: spec.lease_ms,
            ordering_key: spec.ordering_key,
            group_key: spec.group_key,
            state,
            attempt: 0,
            run_at,
            lease: None,
            old_leases: Vec::new(),
            cancel_requested: false,
            dead_reason: None,
            finished_at: None,
            checkpoint: None,
            steps: Vec::new(),
            history: vec![(HistoryKind::Enqueued, state, 0, None)],
        });
    }

    async fn lease(&mut self) {
        let qs: Vec<usize> = match self.rng.below(3) {
            0 => vec![0],
            1 => vec![1],
            _ => vec![0, 1],
        };
        let count_max = self.rng.range(1, 3) as usize;
        let lease_ms = if self.rng.chance(30) { Some(self.rng.pick(&[1_000u64, 2_500, 5_000])) } else { None };
        let worker = WorkerId::new(&format!("w{}", self.rng.below(3))).unwrap();
        let now = self.c.now;

        let mut candidates: Vec<MJob> = self
            .jobs
            .iter()
            .filter(|m| {
                qs.contains(&m.queue)
                    && !self.paused[m.queue]
                    && self.backoff_until[m.queue].is_none_or(|t| t <= now)
                    && m.leasable(now)
                    && self.key_free(m)
            })
            .cloned()
            .collect();
        candidates.sort_by_key(|m| (Reverse(m.priority), m.run_at, m.id));
        // Concurrency limits: the permits each queue and group has left.
        let running = |pred: &dyn Fn(&MJob) -> bool| {
            self.jobs.iter().filter(|m| m.state == JobState::Running && pred(m)).count() as u32
        };
        let mut queue_left = [u32::MAX; 2];
        let mut group_left: HashMap<(usize, u8), u32> = HashMap::new();
        for (qi, left) in queue_left.iter_mut().enumerate() {
            if let Some(max) = self.limits[qi].concurrency_max {
                *left = max.saturating_sub(running(&|m| m.queue == qi));
            }
            if let Some(max) = self.limits[qi].group_concurrency_max {
                for g in 0..2u8 {
                    let left = max.saturating_sub(running(&|m| m.queue == qi && m.group_key == Some(g)));
                    group_left.insert((qi, g), left);
                }
            }
        }
        // With groups, turns decide which group goes first. Across two queues of which one has
        // limits or grouped jobs, PostgreSQL serves the other first (documented): the order
        // across the queues is then not checked exactly either.
        let flow = |q: usize| {
            !self.limits[q].is_unlimited()
                || self.jobs.iter().any(|m| {
                    m.queue == q
                        && m.group_key.is_some()
                        && !matches!(m.state, JobState::Completed | JobState::Cancelled | JobState::Dead)
                })
        };
        let grouped = candidates.iter().any(|m| m.group_key.is_some()) || (qs.len() > 1 && qs.iter().any(|&q| flow(q)));
        // Without groups the lease is exact: the best jobs, within each queue's permits.
        let mut expected = Vec::new();
        if !grouped {
            let mut left = queue_left;
            for m in &candidates {
                if expected.len() < count_max && left[m.queue] > 0 {
                    left[m.queue] -= 1;
                    expected.push(m.id);
                }
            }
        }

        self.op(format!("lease queues {qs:?} count_max {count_max} lease_ms {lease_ms:?} by {worker}"));
        let p = crate::JobLease {
            now,
            queues: qs.iter().map(|&i| self.queues[i].clone()).collect(),
            count_max,
            worker,
            lease_ms,
        };
        let leased = self.c.lease_with(p).await;
        let got = ids_of(&leased);
        self.note(format!("{:?}", got.iter().map(|i| i.0).collect::<Vec<_>>()));
        if grouped {
            // Everything but the order across lanes is checked exactly.
            self.check_grouped_lease(&candidates, &got, count_max, queue_left, group_left);
        } else if got != expected {
            let line = candidates
                .iter()
                .map(|m| format!("{}(prio {}, run_at t+{})", m.id, m.priority, m.run_at.ms_since(super::T0)))
                .collect::<Vec<_>>()
                .join(", ");
            panic!("lease returned {got:?}, the model expects {expected:?}; leasable best first: [{line}]");
        }
        self.count("leases granted", leased.len() as u64);
        for l in leased {
            if let Some(max) = self.token_max {
                assert!(l.token > max, "fencing token {} not above earlier grant {max}", l.token);
            }
            self.token_max = Some(l.token);
            let i = self.idx(l.id);
            let m = &mut self.jobs[i];
            // Lease ids need only be unique per job: every ack names its job too.
            assert!(
                !m.old_leases.contains(&l.lease),
                "lease id {} granted to job {} twice: a zombie holding the old lease could ack",
                l.lease,
                m.id
            );
            assert_ne!(m.state, JobState::Completed, "completed job {} leased again", m.id);
            assert!(m.run_at <= now, "job {} leased before its run time", m.id);
            assert_eq!(l.queue, self.queues[m.queue]);
            assert_eq!(l.priority, m.priority);
            assert_eq!((l.attempt, l.attempts_max), (m.attempt + 1, m.attempts_max), "attempt of job {}", m.id);
            assert_eq!(l.deadline, now.add_ms(lease_ms.unwrap_or(m.lease_ms)), "deadline of job {}", m.id);
            assert_eq!(l.checkpoint, m.checkpoint, "checkpoint handed to job {}", m.id);
            let steps: Vec<(&str, &Payload)> = l.steps.iter().map(|s| (&*s.name, &s.result)).collect();
            let want: Vec<(&str, &Payload)> = m.steps.iter().map(|(n, r, _, _)| (n.as_str(), r)).collect();
            assert_eq!(steps, want, "steps handed to job {}", m.id);
            m.state = JobState::Running;
            m.attempt += 1;
            m.lease = Some(MLease { id: l.lease, token: l.token, deadline: l.deadline });
            m.history.push((HistoryKind::Leased, JobState::Running, m.attempt, Some(l.token)));
        }
    }

    /// A lease from queues holding grouped jobs: every job leased was leasable, no limit is
    /// exceeded, each (queue, group) lane gave its best jobs in order, and the lease took as many
    /// jobs as the limits allowed (turns across groups never leave a leasable job behind).
    fn check_grouped_lease(
        &self,
        candidates: &[MJob],
        got: &[JobId],
        count_max: usize,
        mut queue_left: [u32; 2],
        mut group_left: HashMap<(usize, u8), u32>,
    ) {
        // How many the limits allow at most.
        let mut possible = 0;
        {
            let (mut ql, mut gl) = (queue_left, group_left.clone());
            for m in candidates {
                let group_ok = m.group_key.is_none_or(|g| gl.get(&(m.queue, g)).is_none_or(|n| *n > 0));
                if ql[m.queue] > 0 && group_ok {
                    ql[m.queue] -= 1;
                    if let Some(g) = m.group_key
                        && let Some(n) = gl.get_mut(&(m.queue, g))
                    {
                        *n -= 1;
                    }
                    possible += 1;
                }
            }
        }
        assert_eq!(got.len(), possible.min(count_max), "lease of {count_max} took {got:?}; {possible} were allowed");
        let mut taken_per_lane: HashMap<(usize, Option<u8>), usize> = HashMap::new();
        for id in got {
            let m = candidates.iter().find(|m| m.id == *id).unwrap_or_else(|| panic!("job {id} was not leasable"));
            assert!(queue_left[m.queue] > 0, "job {id} leased past queue {}'s concurrency_max", m.queue);
            queue_left[m.queue] -= 1;
            if let Some(g) = m.group_key
                && let Some(n) = group_left.get_mut(&(m.queue, g))
            {
                assert!(*n > 0, "job {id} leased past group g{g}'s group_concurrency_max");
                *n -= 1;
            }
            let lane = (m.queue, m.group_key);
            let nth = taken_per_lane.entry(lane).or_default();
            let lane_best: Vec<JobId> =
                candidates.iter().filter(|c| (c.queue, c.group_key) == lane).map(|c| c.id).collect();
            assert_eq!(lane_best.get(*nth), Some(id), "lane {lane:?} gave {id} out of its order {lane_best:?}");
            *nth += 1;
        }
    }

    /// Strict FIFO per ordering key (the queues block on dead jobs, the default): a keyed job may
    /// be leased only when no earlier job of its queue and key is scheduled, available, running,
    /// retrying or dead, and none of the key's jobs runs.
    fn key_free(&self, m: &MJob) -> bool {
        let Some(key) = m.ordering_key else { return true };
        !self.jobs.iter().any(|e| {
            e.id != m.id
                && e.queue == m.queue
                && e.ordering_key == Some(key)
                && (e.state == JobState::Running
                    || (e.id < m.id && !matches!(e.state, JobState::Completed | JobState::Cancelled)))
        })
    }

    /// A lease to present for job `i`: usually its current one, sometimes an old or a made-up one.
    fn choose_lease(&mut self, i: usize) -> LeaseId {
        let m = &self.jobs[i];
        let current = m.lease.as_ref().map(|l| l.id);
        let old = m.old_leases.clone();
        let roll = self.rng.below(100);
        match (current, roll) {
            (Some(c), 0..85) => c,
            (_, 85..95) if !old.is_empty() => old[self.rng.below(old.len() as u64) as usize],
            (Some(c), _) => other_lease(c),
            (None, _) if !old.is_empty() => old[self.rng.below(old.len() as u64) as usize],
            (None, _) => LeaseId(self.rng.next()),
        }
    }

    /// Jobs a worker could ack or heartbeat: mostly running ones, sometimes any job that was ever
    /// leased (to present stale leases).
    fn jobs_with_leases(&mut self) -> Vec<usize> {
        let running: Vec<usize> = (0..self.jobs.len()).filter(|&i| self.jobs[i].state == JobState::Running).collect();
        if !running.is_empty() && self.rng.chance(80) {
            return running;
        }
        (0..self.jobs.len()).filter(|&i| self.jobs[i].has_any_lease()).collect()
    }

    async fn heartbeat(&mut self) {
        let candidates = self.jobs_with_leases();
        if candidates.is_empty() {
            return self.expire(0).await;
        }
        let i = candidates[self.rng.below(candidates.len() as u64) as usize];
        let lease = self.choose_lease(i);
        let extend_ms = if self.rng.chance(50) { None } else { Some(self.rng.pick(&[1_000u64, 2_000, 4_000])) };
        self.serial += 1;
        let checkpoint = self.rng.chance(30).then(|| payload(&format!("cp-{}", self.serial)));
        let now = self.c.now;
        let id = self.jobs[i].id;
        self.op(format!("heartbeat job {id} lease {lease} extend_ms {extend_ms:?} checkpoint {checkpoint:?}"));
        let r = self
            .c
            .store()
            .lease_extend(crate::LeaseExtend {
                now,
                job: id,
                lease,
                extend_ms,
                progress: None,
                checkpoint: checkpoint.clone(),
            })
            .await;
        self.note(format!("{r:?}"));
        let m = &mut self.jobs[i];
        match m.check_lease(lease, now) {
            Ok(_) => {
                let deadline = now.add_ms(extend_ms.unwrap_or(m.lease_ms));
                let got = r.unwrap_or_else(|e| panic!("heartbeat of job {id} with its live lease failed: {e:?}"));
                assert_eq!(got, LeaseExtended { deadline, lease_left_ms: None, cancel_requested: m.cancel_requested });
                m.lease.as_mut().unwrap().deadline = deadline;
                *self.tally.entry("heartbeats accepted").or_default() += 1;
                if checkpoint.is_some() {
                    m.checkpoint = checkpoint;
                }
            }
            Err(rejection) => {
                assert_rejected(r, id, rejection);
                *self.tally.entry("heartbeats rejected").or_default() += 1;
            }
        }
    }

    /// Records one of three step names with a fresh result, presenting a lease as an ack would.
    async fn record_step(&mut self) {
        let candidates = self.jobs_with_leases();
        if candidates.is_empty() {
            return self.lease().await;
        }
        let i = candidates[self.rng.below(candidates.len() as u64) as usize];
        let lease = self.choose_lease(i);
        let name = format!("step-{}", self.rng.below(3));
        self.serial += 1;
        let result = payload(&self.serial.to_string());
        let now = self.c.now;
        let id = self.jobs[i].id;
        self.op(format!("step job {id} lease {lease} {name} = {}", self.serial));
        let r = self
            .c
            .store()
            .job_step(crate::JobStep { now, job: id, lease, name: name.as_str().into(), result: result.clone() })
            .await;
        self.note(format!("{r:?}"));
        let m = &mut self.jobs[i];
        match m.check_lease(lease, now) {
            Ok(held) => {
                let got = r.unwrap_or_else(|e| panic!("step of job {id} with its live lease failed: {e:?}"));
                let first = m.steps.iter().find(|(n, ..)| *n == name).cloned();
                let (want, recorded) = match first {
                    Some((n, r, at, attempt)) => (dray_core::Step { name: n.into(), result: r, at, attempt }, false),
                    None => {
                        m.steps.push((name.clone(), result.clone(), now, m.attempt));
                        m.history.push((HistoryKind::StepRecorded, JobState::Running, m.attempt, Some(held.token)));
                        (dray_core::Step { name: name.into(), result, at: now, attempt: m.attempt }, true)
                    }
                };
                assert_eq!((got.step, got.recorded), (want, recorded), "the answer to a step of job {id}");
                *self.tally.entry(if recorded { "steps recorded" } else { "steps known" }).or_default() += 1;
            }
            Err(rejection) => {
                assert_rejected(r, id, rejection);
                *self.tally.entry("steps rejected").or_default() += 1;
            }
        }
    }

    async fn ack(&mut self) {
        let mut candidates = self.jobs_with_leases();
        if candidates.is_empty() {
            return self.lease().await;
        }
        let n = if candidates.len() > 1 && self.rng.chance(20) { 2 } else { 1 };
        let mut acks = Vec::new();
        let mut chosen = Vec::new();
        for _ in 0..n {
            let i = candidates.remove(self.rng.below(candidates.len() as u64) as usize);
            let lease = self.choose_lease(i);
            self.serial += 1;
            let outcome = if self.rng.chance(50) {
                AckOutcome::Complete { result: self.rng.chance(50).then(|| payload("result")) }
            } else {
                let rate_limited = self.rng.chance(10);
                AckOutcome::Fail {
                    error: format!("error-{}", self.serial),
                    retryable: rate_limited || self.rng.chance(75),
                    retry_after_ms: self.rng.chance(30).then(|| self.rng.range(0, 500)),
                    rate_limited,
                }
            };
            acks.push(Ack { job: self.jobs[i].id, lease, outcome });
            chosen.push(i);
        }
        let now = self.c.now;
        self.op(format!(
            "ack {:?}",
            acks.iter().map(|a| (a.job.0, a.lease.to_string(), &a.outcome)).collect::<Vec<_>>()
        ));
        let results = self.c.ack(acks.clone()).await;
        self.note(format!("{results:?}"));
        for ((ack, i), r) in acks.into_iter().zip(chosen).zip(results) {
            let m = &mut self.jobs[i];
            let held = match m.check_lease(ack.lease, now) {
                Ok(held) => held,
                Err(rejection) => {
                    assert_rejected(r, m.id, rejection);
                    *self.tally.entry("acks rejected").or_default() += 1;
                    continue;
                }
            };
            let acked = r.unwrap_or_else(|e| panic!("ack of job {} with its live lease failed: {e:?}", m.id));
            assert_eq!(held.id, ack.lease);
            match ack.outcome {
                AckOutcome::Complete { .. } => {
                    assert_eq!(outcome(&acked), (JobState::Completed, None));
                    m.end_attempt(now, HistoryKind::Completed, JobState::Completed, None);
                    *self.tally.entry("completions accepted").or_default() += 1;
                    self.completed.push(m.id);
                }
                AckOutcome::Fail { retryable, retry_after_ms, rate_limited, .. } => {
                    let (state, reason, window) =
                        m.after_failure(now, DeadReason::Failed, retryable, retry_after_ms, rate_limited);
                    assert_eq!(acked.state, state, "state of job {} after failure", m.id);
                    match window {
                        Some((lo, hi)) => {
                            let at = acked.retry_at.unwrap_or_else(|| panic!("retrying job {} without retry_at", m.id));
                            assert!(at >= lo && at <= hi, "job {} retries at {at}, outside [{lo}, {hi}]", m.id);
                            m.run_at = at;
                        }
                        None => assert_eq!(acked.retry_at, None),
                    }
                    m.end_attempt(now, HistoryKind::Failed, state, reason);
                    if rate_limited && state == JobState::Retrying {
                        m.attempt -= 1;
                        let until = &mut self.backoff_until[m.queue];
                        *until = Some(until.map_or(m.run_at, |t| t.max(m.run_at)));
                        *self.tally.entry("failures rate limited").or_default() += 1;
                    }
                    *self
                        .tally
                        .entry(match state {
                            JobState::Retrying => "failures retried",
                            JobState::Dead => "failures dead",
                            _ => "failures cancelled",
                        })
                        .or_default() += 1;
                }
            }
        }
    }

    async fn expire(&mut self, advance_ms: u64) {
        self.c.advance(advance_ms);
        let now = self.c.now;
        let due: Vec<usize> = (0..self.jobs.len())
            .filter(|&i| {
                let m = &self.jobs[i];
                m.state == JobState::Running && m.lease.as_ref().is_some_and(|l| l.deadline <= now)
            })
            .collect();
        self.op(format!("advance {advance_ms} ms, expire leases"));
        let expired = self.c.expire_all().await;
        let n = expired.len();
        self.note(format!("{n}"));
        for e in &expired {
            let m = self.jobs.iter().find(|m| m.id == e.id);
            assert!(
                m.is_some_and(|m| self.queues[m.queue] == e.queue && m.attempt == e.attempt),
                "leases_expire reported {e:?}, which the model does not hold as that queue and attempt"
            );
        }
        assert_eq!(
            n,
            due.len(),
            "leases_expire count (the model expects jobs {:?})",
            due.iter().map(|&i| self.jobs[i].id.0).collect::<Vec<_>>()
        );
        for i in due {
            let m = &self.jobs[i];
            let (state, reason, window) = m.after_failure(now, DeadReason::LeaseExpired, true, None, false);
            if let Some((lo, hi)) = window {
                let job = self.c.get(m.id).await;
                let at = job.status.run_at;
                assert!(at >= lo && at <= hi, "expired job {} retries at {at}, outside [{lo}, {hi}]", m.id);
                self.jobs[i].run_at = at;
            }
            self.jobs[i].end_attempt(now, HistoryKind::Expired, state, reason);
            self.count("leases expired", 1);
        }
    }

    async fn cancel_random(&mut self) {
        if self.jobs.is_empty() || self.rng.chance(5) {
            let unknown = JobId(self.id_max.map_or(0, |m| m.0) + 1_000_000);
            self.op(format!("cancel unknown job {unknown}"));
            assert_not_found(self.c.cancel(unknown).await, unknown);
            return;
        }
        let i = self.rng.below(self.jobs.len() as u64) as usize;
        self.cancel(i).await;
    }

    async fn cancel(&mut self, i: usize) {
        let now = self.c.now;
        let id = self.jobs[i].id;
        self.op(format!("cancel job {id}"));
        let r = self.c.cancel(id).await;
        self.note(format!("{r:?}"));
        let m = &mut self.jobs[i];
        match m.state {
            JobState::Scheduled | JobState::Available | JobState::Retrying | JobState::Blocked => {
                assert_eq!(r.unwrap(), JobState::Cancelled);
                m.state = JobState::Cancelled;
                m.finished_at = Some(now);
                m.history.push((HistoryKind::Cancelled, JobState::Cancelled, m.attempt, None));
            }
            JobState::Running => {
                assert_eq!(r.unwrap(), JobState::Running);
                if !m.cancel_requested {
                    m.cancel_requested = true;
                    m.history.push((HistoryKind::CancelRequested, JobState::Running, m.attempt, None));
                }
            }
            JobState::Cancelled => assert_eq!(r.unwrap(), JobState::Cancelled),
            state @ (JobState::Completed | JobState::Dead) => {
                assert_rejected(r, id, Rejection::AlreadyFinished { state })
            }
        }
    }

    /// Some of this case's dead jobs, by ids or by a queue filter with a limit (oldest first), and
    /// the ids the store should act on. `None` when no job is dead.
    fn dead_selection(&mut self) -> Option<(DeadSelection, Vec<JobId>)> {
        let dead: Vec<usize> = (0..self.jobs.len()).filter(|&i| self.jobs[i].state == JobState::Dead).collect();
        if dead.is_empty() {
            return None;
        }
        let (selection, mut expected) = if self.rng.chance(50) {
            let mut picked = vec![dead[self.rng.below(dead.len() as u64) as usize]];
            let other = dead[self.rng.below(dead.len() as u64) as usize];
            if !picked.contains(&other) && self.rng.chance(50) {
                picked.push(other);
            }
            let ids: Vec<JobId> = picked.iter().map(|&i| self.jobs[i].id).collect();
            (DeadSelection::Ids(ids.clone()), ids)
        } else {
            let qi = self.rng.below(2) as usize;
            let limit = self.rng.range(1, 3) as usize;
            let ids: Vec<JobId> =
                dead.iter().filter(|&&i| self.jobs[i].queue == qi).take(limit).map(|&i| self.jobs[i].id).collect();
            let filter = JobFilter { queue: Some(self.queues[qi].clone()), ..JobFilter::default() };
            (DeadSelection::Filter { filter, limit }, ids)
        };
        expected.sort();
        Some((selection, expected))
    }

    async fn redrive(&mut self) {
        let Some((selection, expected)) = self.dead_selection() else {
            return self.enqueue().await;
        };
        let dry_run = self.rng.chance(25);
        let now = self.c.now;
        self.op(format!("redrive {selection:?} dry_run {dry_run}"));
        let got = self
            .c
            .store()
            .dead_redrive(DeadRedrive { now, selection, dry_run })
            .await
            .unwrap_or_else(|e| panic!("dead_redrive: {e:?}"));
        self.note(format!("{got:?}"));
        assert!(got.rejected.is_empty(), "no queue of the model has a schema");
        let mut got = got.ids;
        got.sort();
        assert_eq!(got, expected, "redrive moved the wrong jobs (dry_run {dry_run})");
        if dry_run {
            return;
        }
        self.count("jobs redriven", got.len() as u64);
        for id in got {
            let i = self.idx(id);
            let m = &mut self.jobs[i];
            m.state = JobState::Available;
            m.attempt = 0;
            m.run_at = now;
            m.dead_reason = None;
            m.finished_at = None;
            m.cancel_requested = false;
            m.history.push((HistoryKind::Redriven, JobState::Available, 0, None));
        }
    }

    async fn discard(&mut self) {
        let Some((selection, expected)) = self.dead_selection() else {
            return self.enqueue().await;
        };
        let dry_run = self.rng.chance(25);
        let now = self.c.now;
        self.op(format!("discard {selection:?} dry_run {dry_run}"));
        let mut got = self
            .c
            .store()
            .dead_discard(DeadDiscard { now, selection, dry_run })
            .await
            .unwrap_or_else(|e| panic!("dead_discard: {e:?}"));
        self.note(format!("{got:?}"));
        got.sort();
        assert_eq!(got, expected, "discard removed the wrong jobs (dry_run {dry_run})");
        if dry_run {
            return;
        }
        self.count("jobs discarded", got.len() as u64);
        for id in got {
            let i = self.idx(id);
            self.jobs.remove(i);
            self.keys.retain(|_, (job, _)| *job != id);
            self.discarded.push(id);
        }
    }

    async fn promote(&mut self) {
        let now = self.c.now;
        let due: Vec<usize> = (0..self.jobs.len()).filter(|&i| self.jobs[i].is_due_waiting(now)).collect();
        self.op("promote".into());
        let n = self.c.promote().await;
        self.note(format!("{n}"));
        assert_eq!(n, due.len(), "jobs_promote count");
        for i in due {
            self.jobs[i].state = JobState::Available;
        }
    }

    async fn restart(&mut self) {
        self.count("restarts", 1);
        self.op("restart".into());
        let mut before = Vec::new();
        for m in &self.jobs {
            before.push(self.c.get(m.id).await);
        }
        let stats_before = [self.c.stats(self.queues[0].as_str()).await, self.c.stats(self.queues[1].as_str()).await];
        self.c.restart().await;
        for b in &before {
            assert_job_eq(&self.c.get(b.id).await, b, "after restart");
        }
        let stats_after = [self.c.stats(self.queues[0].as_str()).await, self.c.stats(self.queues[1].as_str()).await];
        assert_eq!(stats_after, stats_before, "queue stats after restart");
    }

    async fn pause_toggle(&mut self) {
        let qi = self.rng.below(2) as usize;
        let paused = !self.paused[qi];
        self.op(format!("queue {} paused = {paused}", self.queues[qi]));
        let p = QueueConfigure { paused: Some(paused), ..QueueConfigure::new(self.c.now, self.queues[qi].clone()) };
        let config = self.c.configure(p).await.unwrap();
        assert_eq!(config.paused, paused);
        self.paused[qi] = paused;
    }

    /// Ends the case: every live job cancelled (running ones by request, then expired), queues
    /// resumed, nothing left to lease.
    async fn drain(&mut self) {
        self.op("drain".into());
        for i in 0..self.jobs.len() {
            if !self.jobs[i].state.is_finished() {
                self.cancel(i).await;
            }
        }
        let deadline_max = self.jobs.iter().filter_map(|m| m.lease.as_ref().map(|l| l.deadline)).max();
        if let Some(d) = deadline_max
            && d > self.c.now
        {
            self.c.set_now(d);
        }
        self.expire(0).await;
        for qi in 0..2 {
            if self.paused[qi] {
                self.pause_toggle_to(qi, false).await;
            }
        }
        self.check_all().await;
        assert!(self.jobs.iter().all(|m| m.state.is_finished()), "drain left live jobs");
        let leased = self.c.lease_with(crate::JobLease {
            now: self.c.now,
            queues: self.queues.to_vec(),
            count_max: 10,
            worker: WorkerId::new("drain").unwrap(),
            lease_ms: None,
        });
        assert_eq!(leased.await, vec![], "a drained case leaves nothing to lease");
    }

    async fn pause_toggle_to(&mut self, qi: usize, paused: bool) {
        let p = QueueConfigure { paused: Some(paused), ..QueueConfigure::new(self.c.now, self.queues[qi].clone()) };
        self.c.configure(p).await.unwrap();
        self.paused[qi] = paused;
    }

    /// Every invariant, against `job_get` for each of this case's jobs and `queue_stats` for its
    /// queues.
    async fn check_all(&mut self) {
        let now = self.c.now;
        let mut counts = [[0u64; JobState::ALL.len()]; 2];
        let mut oldest_dead: [Option<Timestamp>; 2] = [None, None];
        for i in 0..self.jobs.len() {
            let job = self.c.get(self.jobs[i].id).await;
            let m = &mut self.jobs[i];
            // A due job may have been promoted by any pass or lease: the store's choice.
            if m.is_due_waiting(now) && job.state() == JobState::Available {
                m.state = JobState::Available;
            }
            check_job(m, &job, now);
            counts[m.queue][m.state.index()] += 1;
            if m.state == JobState::Dead {
                let at = m.finished_at.unwrap();
                let slot = &mut oldest_dead[m.queue];
                *slot = Some(slot.map_or(at, |o: Timestamp| o.min(at)));
            }
        }
        for &id in &self.discarded {
            assert_eq!(self.c.try_get(id).await, None, "discarded job {id} is still there");
        }
        // No two jobs of one queue and ordering key run at once.
        let mut running_keys = std::collections::HashSet::new();
        for m in self.jobs.iter().filter(|m| m.state == JobState::Running) {
            if let Some(key) = m.ordering_key {
                assert!(running_keys.insert((m.queue, key)), "two jobs of queue {} key o{key} run at once", m.queue);
            }
        }
        // No limit is ever exceeded, whatever expired, failed or was redriven.
        for qi in 0..2 {
            let running: Vec<&MJob> =
                self.jobs.iter().filter(|m| m.queue == qi && m.state == JobState::Running).collect();
            if let Some(max) = self.limits[qi].concurrency_max {
                assert!(
                    running.len() as u32 <= max,
                    "queue {qi} runs {} jobs, over its concurrency_max {max}",
                    running.len()
                );
            }
            if let Some(max) = self.limits[qi].group_concurrency_max {
                for g in 0..2u8 {
                    let n = running.iter().filter(|m| m.group_key == Some(g)).count() as u32;
                    assert!(n <= max, "group g{g} of queue {qi} runs {n} jobs, over its group_concurrency_max {max}");
                }
            }
        }
        for qi in 0..2 {
            let stats = self.c.stats(self.queues[qi].as_str()).await;
            assert_eq!(stats.counts, counts[qi], "counts of queue {} (by state index)", self.queues[qi]);
            assert_eq!(stats.oldest_dead_at, oldest_dead[qi], "oldest_dead_at of queue {}", self.queues[qi]);
            assert_eq!(stats.config.paused, self.paused[qi], "paused flag of queue {}", self.queues[qi]);
            assert_eq!(stats.backoff_until, self.backoff_until[qi], "backoff of queue {}", self.queues[qi]);
        }
    }
}

fn check_job(m: &MJob, job: &Job, now: Timestamp) {
    let id = m.id;
    assert_eq!(job.state(), m.state, "state of job {id}");
    assert_eq!(job.status.attempt, m.attempt, "attempt of job {id}");
    assert!(job.status.attempt <= job.retry.attempts_max, "job {id} is past attempts_max");
    assert_eq!(job.retry.attempts_max, m.attempts_max, "attempts_max of job {id}");
    assert_eq!(job.status.run_at, m.run_at, "run_at of job {id}");
    match (&job.status.lease, &m.lease) {
        (None, None) => {}
        (Some(l), Some(ml)) => {
            assert_eq!((l.id, l.token, l.deadline), (ml.id, ml.token, ml.deadline), "lease of job {id}")
        }
        (got, want) => panic!("lease of job {id}: got {got:?}, the model expects {want:?}"),
    }
    assert_eq!(job.status.lease.is_some(), m.state == JobState::Running, "a job holds a lease exactly while running");
    assert_eq!(job.status.cancel_requested, m.cancel_requested, "cancel_requested of job {id}");
    assert_eq!(job.status.dead_reason, m.dead_reason, "dead_reason of job {id}");
    assert_eq!(job.status.finished_at, m.finished_at, "finished_at of job {id}");
    assert_eq!(job.status.checkpoint, m.checkpoint, "checkpoint of job {id}");
    let steps: Vec<(String, Payload, Timestamp, u32)> =
        job.steps.iter().map(|s| (s.name.to_string(), s.result.clone(), s.at, s.attempt)).collect();
    assert_eq!(steps, m.steps, "steps of job {id}");
    assert_eq!(job.steps.len(), m.steps.len(), "step count of job {id}");
    let history: Vec<_> = job
        .history
        .iter()
        .filter(|e| e.kind != HistoryKind::Promoted)
        .map(|e| (e.kind, e.state, e.attempt, e.token))
        .collect();
    assert_eq!(history, m.history, "history of job {id} (kind, state, attempt, token; Promoted left out)");
    for e in &job.history {
        if e.kind == HistoryKind::Promoted {
            assert_eq!(e.state, JobState::Available, "a Promoted entry of job {id} leads to available");
        }
        assert!(e.at <= now, "history entry of job {id} in the future");
    }
    for pair in job.history.windows(2) {
        assert!(pair[0].at <= pair[1].at, "history of job {id} goes back in time");
    }
    assert_eq!(job.version as usize, job.history.len() + job.history_dropped as usize, "version of job {id}");
}
