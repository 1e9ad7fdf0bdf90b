//! Fault injection and power loss on the simulated disk, at every mutating file call of a
//! deterministic workload.
//!
//! The workload (inserts in batches with idempotency keys, leases, heartbeats, acks, cancels,
//! lease expiry, redrives, discards, queue configuration, snapshots, a restart in the middle, and
//! a close at the end or not) runs once without faults on a `SimFs` that keeps a copy of the disk
//! as a power loss would leave it after each of its mutating calls: every copy is a crash point.
//! That run also records the store's whole state after each step. Then, for every call `k` and
//! each fault kind, the workload runs again with call `k` failing, the power is cut, and the
//! store recovers. At every point:
//!
//! - recovery succeeds and never panics (a torn tail is cut; there is no real corruption here);
//! - every operation that returned `Ok` is reflected (inserted jobs with their payload, completed
//!   jobs completed, failures and leases in the history, queue configuration);
//! - the recovered state lies between the state before the one operation whose outcome is unknown
//!   and the state after it, job by job, and a batch insert is all or nothing;
//! - after an `Error::Unavailable`, nothing returns `Ok` until a restart, unless the store says
//!   the failure was a resource running out (`Health::Degraded`: `NoSpace` at a write or a
//!   segment's creation, `NoFiles` opening a segment or the directory). Then the store recovers
//!   in-process at the next call (the fault was one-shot, so the resource is back): what it shows
//!   is exactly the state before the refused operation (nothing refused is visible, nothing
//!   acknowledged is lost), every later step works, and a power loss at the end keeps all of it;
//! - fencing tokens and job ids after recovery are above every one handed out before.
//!
//! `DRAY_FAULT_SWEEP=full` sweeps more seeds and a longer workload; `DRAY_FAULT_SEED=n` sweeps
//! only seed `n`.

mod common;

use common::check_history;
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use dray_core::{
    Backoff, FencingToken, HistoryKind, Job, JobId, JobState, NewJob, Payload, QueueName, RetryPolicy, Timestamp,
    WorkerId,
};
use dray_store::{
    Ack, AckOutcome, DeadDiscard, DeadRedrive, DeadSelection, Error, JobAck, JobCancel, JobFilter, JobInsert, JobLease,
    JobList, LeaseExtend, LeasedJob, Maintain, QueueConfig, QueueConfigure, Store,
};
use dray_store_embedded::fs::{Fault, Fs, FsFile, SimFs};
use dray_store_embedded::{EmbeddedConfig, EmbeddedStore, Health};

const T0: Timestamp = Timestamp(1_700_000_000_000);
/// The clock of the checks after recovery: after the workload, within the idempotency window.
const PROBE_NOW: Timestamp = Timestamp(T0.0 + 3_600_000);
const DIR: &str = "/data";
const QUEUES: [&str; 3] = ["alpha", "beta", "gamma"];
const FAULTS: [Fault; 5] = [Fault::Error, Fault::TornWrite, Fault::SyncError, Fault::NoSpace, Fault::NoFiles];
/// Steps a faulted run goes on after its first `Unavailable`, to see them all refused.
const STEPS_AFTER_FAILURE: usize = 8;
/// Problems printed in full when the sweep fails.
const PROBLEMS_SHOWN: usize = 30;

#[derive(Clone, Copy, Debug)]
struct Plan {
    seed: u64,
    steps: usize,
    close_at_end: bool,
}

fn plans() -> Vec<Plan> {
    let full = std::env::var("DRAY_FAULT_SWEEP").is_ok_and(|v| v == "full");
    let (seeds, steps) = if full { (1..=8, 400) } else { (1..=2, 250) };
    let only: Option<u64> = std::env::var("DRAY_FAULT_SEED").ok().map(|s| s.trim().parse().expect("DRAY_FAULT_SEED"));
    let seeds: Vec<u64> = match only {
        Some(seed) => vec![seed],
        None => seeds.collect(),
    };
    seeds.into_iter().map(|seed| Plan { seed, steps, close_at_end: seed % 2 == 1 }).collect()
}

fn config(seed: u64) -> EmbeddedConfig {
    let mut config = EmbeddedConfig::new(DIR);
    // Lease ids and jitter from a fixed seed (the store mixes in each open's epoch).
    config.seed = Some(seed);
    // Segments of a few records, so rotation is inside the sweep.
    config.segment_bytes_max = 2 * 1024;
    // Snapshots only where the workload asks: the background thread's timing would make the
    // sequence of file calls differ from run to run.
    config.snapshot_log_bytes = u64::MAX;
    config
}

fn queue(i: usize) -> QueueName {
    QueueName::new(QUEUES[i]).expect("a valid queue name")
}

/// splitmix64.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().build().expect("a tokio runtime")
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}

// ---------------------------------------------------------------------------------------------
// The store's state, and what was acknowledged

/// Every job and every queue's configuration.
#[derive(Clone, Debug, Default, PartialEq)]
struct Image {
    jobs: BTreeMap<JobId, Job>,
    queues: BTreeMap<QueueName, QueueConfig>,
}

async fn capture(store: &EmbeddedStore) -> Result<Image, Error> {
    let mut image = Image::default();
    let mut after = None;
    loop {
        let page =
            store.job_list(JobList { filter: JobFilter::default(), after, limit: 1_000, newest_first: false }).await?;
        for summary in &page.jobs {
            let job = store.job_get(summary.id).await?.expect("a listed job exists");
            image.jobs.insert(job.id, job);
        }
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    for stats in store.queue_list().await? {
        image.queues.insert(stats.config.name.clone(), stats.config);
    }
    Ok(image)
}

/// Everything that returned `Ok`, as the workload saw it.
#[derive(Clone, Debug, Default)]
struct Acks {
    inserted: BTreeMap<JobId, Payload>,
    /// The newest job each (queue, idempotency key) gave, and its payload.
    keys: BTreeMap<(QueueName, String), (JobId, Payload)>,
    leases: Vec<(JobId, FencingToken, u32)>,
    /// The deadline the latest heartbeat of each lease set (a heartbeat may shorten a lease).
    heartbeats: BTreeMap<(JobId, FencingToken), Timestamp>,
    completed: Vec<(JobId, FencingToken)>,
    failed: Vec<(JobId, FencingToken, JobState)>,
    cancelled: Vec<(JobId, JobState)>,
    redriven: BTreeMap<JobId, usize>,
    discarded: BTreeSet<JobId>,
    configs: BTreeMap<QueueName, QueueConfig>,
    token_max: Option<FencingToken>,
    id_max: Option<JobId>,
}

// ---------------------------------------------------------------------------------------------
// The workload

/// How one step ended, as its caller saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// No store call: a clock step, or nothing to act on.
    Idle,
    Ok,
    /// Refused for a reason other than storage (a stale lease, a conflict): nothing changed.
    Refused,
    /// A snapshot failed; the store may go on.
    SnapshotFailed,
    /// `Error::Unavailable`, or a failed open or close: the outcome is unknown.
    Unavailable,
    /// No store to call: an open or close failed earlier.
    NoStore,
}

fn outcome<T>(result: &Result<T, Error>) -> Outcome {
    match result {
        Ok(_) => Outcome::Ok,
        Err(Error::Unavailable { .. }) => Outcome::Unavailable,
        Err(_) => Outcome::Refused,
    }
}

#[derive(Debug)]
struct Workload {
    fs: Arc<dyn Fs>,
    plan: Plan,
    store: Option<EmbeddedStore>,
    rng: Rng,
    now: Timestamp,
    serial: u64,
    /// Leases the workload holds and may heartbeat or ack.
    held: Vec<LeasedJob>,
    /// Jobs inserted, for cancels.
    ids: Vec<JobId>,
    acks: Acks,
    outcomes: Vec<Outcome>,
    kinds: Vec<&'static str>,
}

impl Workload {
    fn new(fs: Arc<dyn Fs>, plan: Plan) -> Workload {
        Workload {
            fs,
            plan,
            store: None,
            rng: Rng(plan.seed),
            now: T0,
            serial: 0,
            held: Vec::new(),
            ids: Vec::new(),
            acks: Acks::default(),
            outcomes: Vec::new(),
            kinds: Vec::new(),
        }
    }

    /// Step `i`: the open first, a restart in the middle, maybe a close at the end, and random
    /// operations between.
    async fn step(&mut self, i: usize) {
        self.now = self.now.add_ms(1 + self.rng.below(20));
        let (kind, outcome) = if i == 0 {
            ("open", self.open())
        } else if i == self.plan.steps / 2 {
            ("restart", self.restart())
        } else if i + 1 == self.plan.steps && self.plan.close_at_end {
            ("close", self.close())
        } else if self.store.is_none() {
            ("none", Outcome::NoStore)
        } else {
            self.random_step().await
        };
        self.kinds.push(kind);
        self.outcomes.push(outcome);
    }

    fn open(&mut self) -> Outcome {
        match EmbeddedStore::open_with_fs(self.fs.clone(), config(self.plan.seed)) {
            Ok(store) => {
                self.store = Some(store);
                Outcome::Ok
            }
            Err(_) => Outcome::Unavailable,
        }
    }

    fn restart(&mut self) -> Outcome {
        match self.close() {
            Outcome::Ok => self.open(),
            other => other,
        }
    }

    fn close(&mut self) -> Outcome {
        match self.store.take() {
            None => Outcome::NoStore,
            Some(store) => match store.close() {
                Ok(()) => Outcome::Ok,
                Err(_) => Outcome::Unavailable,
            },
        }
    }

    async fn random_step(&mut self) -> (&'static str, Outcome) {
        match self.rng.below(100) {
            0..22 => ("insert", self.insert().await),
            22..40 => ("lease", self.lease().await),
            40..47 => ("heartbeat", self.heartbeat().await),
            47..65 => ("ack", self.ack().await),
            65..69 => ("cancel", self.cancel().await),
            69..75 => ("expire", self.expire().await),
            75..78 => ("promote", self.promote().await),
            78..82 => ("redrive", self.redrive().await),
            82..84 => ("discard", self.discard().await),
            84..88 => ("configure", self.configure().await),
            88..93 => ("snapshot", self.snapshot()),
            _ => {
                self.now = self.now.add_ms(1 + self.rng.below(300));
                ("clock", Outcome::Idle)
            }
        }
    }

    fn store(&self) -> &EmbeddedStore {
        self.store.as_ref().expect("steps run only with a store")
    }

    async fn insert(&mut self) -> Outcome {
        let size = 1 + self.rng.below(5);
        // Now and then the first job reuses a key with another payload: the whole batch is refused.
        let conflict = self.rng.below(20) == 0;
        let mut jobs = Vec::new();
        for j in 0..size {
            let changed = conflict && j == 0;
            let (q, key, payload) = if changed || self.rng.below(3) == 0 {
                let k = self.rng.below(24);
                let payload =
                    if changed { format!("{{\"key\":{k},\"changed\":true}}") } else { format!("{{\"key\":{k}}}") };
                ((k % 3) as usize, Some(format!("key-{k}")), payload)
            } else {
                self.serial += 1;
                // Some payloads span most of a segment.
                let pad = if self.rng.below(10) == 0 { 1_000 + self.rng.below(2_000) as usize } else { 0 };
                (self.rng.below(3) as usize, None, format!("{{\"n\":{},\"pad\":\"{}\"}}", self.serial, "x".repeat(pad)))
            };
            let mut job = NewJob::new(queue(q), Payload::new(payload.into_bytes()));
            job.priority = self.rng.below(3) as i16 - 1;
            job.attempts_max = Some(1 + self.rng.below(3) as u32);
            job.backoff = Some(Backoff { base_ms: 10, factor: 2.0, cap_ms: 100 });
            if self.rng.below(6) == 0 {
                job.run_at = Some(self.now.add_ms(self.rng.below(400)));
            }
            job.idempotency_key = key.map(Into::into);
            jobs.push(job);
        }
        let sent = jobs.clone();
        let result = self.store().job_insert(JobInsert { now: self.now, jobs }).await;
        if let Ok(inserted) = &result {
            for (ins, job) in inserted.iter().zip(&sent) {
                self.acks.inserted.insert(ins.id, job.payload.clone());
                self.acks.id_max = self.acks.id_max.max(Some(ins.id));
                if !ins.duplicate {
                    self.ids.push(ins.id);
                }
                if let Some(key) = &job.idempotency_key {
                    self.acks.keys.insert((job.queue.clone(), key.to_string()), (ins.id, job.payload.clone()));
                }
            }
        }
        outcome(&result)
    }

    async fn lease(&mut self) -> Outcome {
        let mut queues: Vec<QueueName> = (0..QUEUES.len()).filter(|_| self.rng.below(2) == 0).map(queue).collect();
        if queues.is_empty() {
            queues.push(queue(self.rng.below(3) as usize));
        }
        let p = JobLease {
            now: self.now,
            queues,
            count_max: 1 + self.rng.below(4) as usize,
            worker: WorkerId::new(&format!("worker-{}", self.rng.below(3))).expect("a valid worker id"),
            lease_ms: (self.rng.below(2) == 0).then(|| 1_000 + self.rng.below(2_000)),
        };
        let result = self.store().job_lease(p).await;
        if let Ok(leased) = &result {
            for job in leased {
                self.acks.leases.push((job.id, job.token, job.attempt));
                self.acks.token_max = self.acks.token_max.max(Some(job.token));
                self.held.push(job.clone());
            }
        }
        outcome(&result)
    }

    async fn heartbeat(&mut self) -> Outcome {
        if self.held.is_empty() {
            return Outcome::Idle;
        }
        let i = self.rng.below(self.held.len() as u64) as usize;
        let (id, lease, token) = (self.held[i].id, self.held[i].lease, self.held[i].token);
        let p = LeaseExtend {
            now: self.now,
            job: id,
            lease,
            extend_ms: (self.rng.below(2) == 0).then(|| 1_000 + self.rng.below(2_000)),
            progress: (self.rng.below(2) == 0).then(|| Payload::new(&b"{\"done\":0.5}"[..])),
            checkpoint: (self.rng.below(2) == 0)
                .then(|| Payload::new(format!("{{\"at\":{}}}", self.now.0).into_bytes())),
        };
        let result = self.store().lease_extend(p).await;
        match &result {
            Ok(extended) => {
                self.acks.heartbeats.insert((id, token), extended.deadline);
            }
            Err(Error::Rejected { .. }) => {
                self.held.swap_remove(i);
            }
            Err(_) => {}
        }
        outcome(&result)
    }

    async fn ack(&mut self) -> Outcome {
        if self.held.is_empty() {
            return Outcome::Idle;
        }
        let n = (1 + self.rng.below(3) as usize).min(self.held.len());
        let mut acks = Vec::new();
        let mut sent = Vec::new();
        for _ in 0..n {
            let job = self.held.swap_remove(self.rng.below(self.held.len() as u64) as usize);
            let roll = self.rng.below(10);
            let outcome = match roll {
                0..6 => AckOutcome::Complete { result: Some(Payload::new(&b"\"ok\""[..])) },
                6..9 => AckOutcome::Fail {
                    error: "failed".into(),
                    retryable: true,
                    retry_after_ms: (self.rng.below(2) == 0).then(|| self.rng.below(50)),
                    rate_limited: false,
                },
                _ => AckOutcome::Fail {
                    error: "poison".into(),
                    retryable: false,
                    retry_after_ms: None,
                    rate_limited: false,
                },
            };
            acks.push(Ack { job: job.id, lease: job.lease, outcome });
            sent.push((job.id, job.token, roll < 6));
        }
        let result = self.store().job_ack(JobAck { now: self.now, acks }).await;
        if let Ok(results) = &result {
            for (&(id, token, complete), r) in sent.iter().zip(results) {
                match r {
                    Ok(_) if complete => self.acks.completed.push((id, token)),
                    Ok(acked) => self.acks.failed.push((id, token, acked.state)),
                    Err(_) => {}
                }
            }
        }
        outcome(&result)
    }

    async fn cancel(&mut self) -> Outcome {
        if self.ids.is_empty() {
            return Outcome::Idle;
        }
        let id = self.ids[self.rng.below(self.ids.len() as u64) as usize];
        let result = self.store().job_cancel(JobCancel { now: self.now, job: id }).await;
        if let Ok(state) = &result {
            self.acks.cancelled.push((id, *state));
        }
        outcome(&result)
    }

    async fn expire(&mut self) -> Outcome {
        self.now = self.now.add_ms(1_000 + self.rng.below(1_500));
        outcome(&self.store().leases_expire(Maintain { now: self.now, limit: 100 }).await)
    }

    async fn promote(&mut self) -> Outcome {
        outcome(&self.store().jobs_promote(Maintain { now: self.now, limit: 100 }).await)
    }

    fn dead_selection(&mut self, limit_max: u64) -> DeadSelection {
        let filter = JobFilter { queue: Some(queue(self.rng.below(3) as usize)), ..JobFilter::default() };
        DeadSelection::Filter { filter, limit: 1 + self.rng.below(limit_max) as usize }
    }

    async fn redrive(&mut self) -> Outcome {
        let selection = self.dead_selection(3);
        let dry_run = self.rng.below(5) == 0;
        let result = self.store().dead_redrive(DeadRedrive { now: self.now, selection, dry_run }).await.map(|r| r.ids);
        if let Ok(ids) = &result
            && !dry_run
        {
            for id in ids {
                *self.acks.redriven.entry(*id).or_default() += 1;
            }
        }
        outcome(&result)
    }

    async fn discard(&mut self) -> Outcome {
        let selection = self.dead_selection(2);
        let dry_run = self.rng.below(5) == 0;
        let result = self.store().dead_discard(DeadDiscard { now: self.now, selection, dry_run }).await;
        if let Ok(ids) = &result
            && !dry_run
        {
            self.acks.discarded.extend(ids.iter().copied());
        }
        outcome(&result)
    }

    async fn configure(&mut self) -> Outcome {
        let mut p = QueueConfigure::new(self.now, queue(self.rng.below(3) as usize));
        p.paused = match self.rng.below(6) {
            0 => Some(true),
            1 | 2 => Some(false),
            _ => None,
        };
        if self.rng.below(3) == 0 {
            p.lease_ms = Some(1_000 + self.rng.below(4_000));
        }
        if self.rng.below(3) == 0 {
            let backoff = Backoff { base_ms: 10, factor: 2.0, cap_ms: 100 };
            p.retry = Some(RetryPolicy { attempts_max: 1 + self.rng.below(4) as u32, backoff });
        }
        let result = self.store().queue_configure(p).await;
        if let Ok(config) = &result {
            self.acks.configs.insert(config.name.clone(), config.clone());
        }
        outcome(&result)
    }

    fn snapshot(&mut self) -> Outcome {
        match self.store().snapshot() {
            Ok(()) => Outcome::Ok,
            Err(_) => Outcome::SnapshotFailed,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Crash points: a file layer that copies the disk after every mutating call

#[derive(Debug)]
struct CrashPoint {
    /// The mutating call just made, numbered as `SimFs` numbers them.
    call: u64,
    /// The workload step it was made in.
    step: usize,
    /// The disk as a power loss right after the call would leave it.
    disk: SimFs,
}

#[derive(Debug)]
struct CrashPoints {
    sim: SimFs,
    seed: u64,
    step: AtomicUsize,
    taken: Mutex<Vec<CrashPoint>>,
}

#[derive(Clone, Debug)]
struct Hooked(Arc<CrashPoints>);

impl Hooked {
    fn after<T>(&self, result: io::Result<T>) -> io::Result<T> {
        let points = &self.0;
        let call = points.sim.op_count() - 1;
        let disk = points.sim.crash_copy(points.seed.wrapping_mul(0x1_0000_0000).wrapping_add(call));
        let step = points.step.load(Ordering::SeqCst);
        points.taken.lock().expect("crash points lock").push(CrashPoint { call, step, disk });
        result
    }
}

impl Fs for Hooked {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.0.sim.create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.0.sim.list(dir)
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn io::Read + Send>> {
        self.0.sim.open_read(path)
    }

    fn file_len(&self, path: &Path) -> io::Result<u64> {
        self.0.sim.file_len(path)
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        let file = self.after(self.0.sim.create(path))?;
        Ok(Box::new(HookedFile { file, hook: self.clone() }))
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        self.after(self.0.sim.truncate(path, len))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.after(self.0.sim.rename(from, to))
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        self.after(self.0.sim.remove(path))
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.after(self.0.sim.sync_dir(dir))
    }

    fn lock(&self, path: &Path) -> io::Result<Box<dyn std::any::Any + Send + Sync>> {
        self.0.sim.lock(path)
    }
}

#[derive(Debug)]
struct HookedFile {
    file: Box<dyn FsFile>,
    hook: Hooked,
}

impl FsFile for HookedFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let result = self.file.write_all(buf);
        self.hook.after(result)
    }

    fn sync(&mut self) -> io::Result<()> {
        let result = self.file.sync();
        self.hook.after(result)
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        let result = self.file.truncate(len);
        self.hook.after(result)
    }
}

// ---------------------------------------------------------------------------------------------
// The sweep

/// The fault-free run: the state and the outcome of every step.
#[derive(Debug)]
struct Reference {
    plan: Plan,
    /// `images[i]`: the state before step `i` (`images[0]` is empty; the last is the end).
    images: Vec<Image>,
    outcomes: Vec<Outcome>,
    kinds: Vec<&'static str>,
    /// Mutating file calls the whole run made.
    calls: u64,
}

/// Runs the workload without faults, checking a power loss after each of its mutating file calls.
/// Returns the run and the number of crash points checked.
fn reference_run(plan: Plan, problems: &mut Vec<String>) -> (Reference, usize) {
    let rt = runtime();
    let sim = SimFs::new();
    let hook = Arc::new(CrashPoints {
        sim: sim.clone(),
        seed: plan.seed,
        step: AtomicUsize::new(0),
        taken: Mutex::new(Vec::new()),
    });
    let mut w = Workload::new(Arc::new(Hooked(hook.clone())), plan);
    let mut images = vec![Image::default()];
    let mut acks_before = Vec::new();
    let mut points = 0;
    for i in 0..plan.steps {
        acks_before.push(w.acks.clone());
        hook.step.store(i, Ordering::SeqCst);
        rt.block_on(w.step(i));
        let image = match &w.store {
            Some(store) => rt.block_on(capture(store)).expect("reading the store in the fault-free run"),
            None => images.last().cloned().unwrap_or_default(),
        };
        images.push(image);
        let taken = std::mem::take(&mut *hook.taken.lock().expect("crash points lock"));
        for point in taken {
            points += 1;
            let label = format!(
                "seed {}: power loss after call {} (step {}: {})",
                plan.seed, point.call, point.step, w.kinds[point.step]
            );
            let found = recover_and_check(
                &point.disk,
                plan,
                &images[point.step],
                &images[point.step + 1],
                w.kinds[point.step] == "insert",
                &acks_before[point.step],
            );
            problems.extend(found.into_iter().map(|p| format!("{label} | {p}")));
        }
    }
    for (i, o) in w.outcomes.iter().enumerate() {
        assert!(
            !matches!(o, Outcome::Unavailable | Outcome::SnapshotFailed | Outcome::NoStore),
            "seed {}: step {i} ({}) of the fault-free run: {o:?}",
            plan.seed,
            w.kinds[i]
        );
    }
    let restart = plan.steps / 2;
    assert_eq!(images[restart], images[restart + 1], "seed {}: a clean restart changed the state", plan.seed);
    let calls = sim.op_count();
    drop(w.store.take());
    let reference = Reference { plan, images, outcomes: w.outcomes, kinds: w.kinds, calls };
    (reference, points)
}

/// What one faulted run found, and whether the store recovered in-process.
struct Faulted {
    problems: Vec<String>,
    recovered: bool,
}

/// Runs the workload with mutating call `k` failing with `fault`, cuts the power and checks
/// the recovered store.
fn faulted_run(reference: &Reference, k: u64, fault: Fault) -> Faulted {
    let plan = reference.plan;
    let label = format!("seed {}: {fault:?} at call {k}", plan.seed);
    let rt = runtime();
    let sim = SimFs::new();
    sim.fail_at(k, fault);
    let mut w = Workload::new(Arc::new(sim.clone()), plan);
    let mut problems = Vec::new();
    let mut unknown: Option<usize> = None;
    // From the step where the store recovered in-process on: the state it showed after each step
    // (the run has left the reference's path: the recovery started a new epoch).
    let mut recovered: Option<(usize, Image)> = None;
    for i in 0..plan.steps {
        rt.block_on(w.step(i));
        let (got, kind) = (w.outcomes[i], w.kinds[i]);
        if let Some((at, image)) = &mut recovered {
            if matches!(got, Outcome::Unavailable | Outcome::SnapshotFailed | Outcome::NoStore) {
                problems.push(format!(
                    "{label} | step {i} ({kind}) gave {got:?} after the store recovered at step {at}: the resource \
                     is back, so it must work"
                ));
                break;
            }
            if let Some(store) = &w.store {
                match rt.block_on(capture(store)) {
                    Ok(now) => *image = now,
                    Err(e) => problems.push(format!("{label} | reading the store after step {i}: {e}")),
                }
            }
            continue;
        }
        let health = w.store.as_ref().map(EmbeddedStore::health);
        if unknown.is_none()
            && let Some(store) = &w.store
            && (store.recoveries() > 0 || (got == Outcome::Unavailable && matches!(health, Some(Health::Degraded(_)))))
        {
            // A resource ran out, so nothing acknowledged is in doubt: the store must come back
            // at the next call, showing exactly what was acknowledged.
            let expected = if got == Outcome::Unavailable { Some(&reference.images[i]) } else { None };
            match rt.block_on(capture(store)) {
                Ok(image) => {
                    if let Some(expected) = expected
                        && image != *expected
                    {
                        problems.push(format!(
                            "{label} | after step {i} ({kind}) was refused and the store recovered, it shows \
                             {} jobs, not the {} before that step: {}",
                            image.jobs.len(),
                            expected.jobs.len(),
                            first_difference(expected, &image)
                        ));
                    }
                    if store.recoveries() == 0 || store.health() != Health::Ok {
                        problems.push(format!(
                            "{label} | the store answered but did not recover: {:?}, {} recoveries",
                            store.health(),
                            store.recoveries()
                        ));
                    }
                    recovered = Some((i, image));
                }
                Err(e) => {
                    problems
                        .push(format!("{label} | step {i} ({kind}) was refused and the store did not recover: {e}"));
                    break;
                }
            }
            continue;
        }
        match unknown {
            None if got == Outcome::Unavailable => unknown = Some(i),
            None => {
                // Until the fault shows, the run repeats the fault-free one (a failed snapshot
                // aside): otherwise the points of this sweep would not be the ones it names.
                let expected = reference.outcomes[i];
                if (got, kind) != (expected, reference.kinds[i]) && got != Outcome::SnapshotFailed {
                    problems.push(format!(
                        "{label} | step {i} gave {kind} {got:?} but {} {expected:?} without the fault: the workload is \
                         not deterministic",
                        reference.kinds[i]
                    ));
                }
            }
            Some(f) => {
                if !matches!(got, Outcome::Unavailable | Outcome::NoStore | Outcome::Idle | Outcome::SnapshotFailed) {
                    problems.push(format!(
                        "{label} | step {i} ({kind}) returned {got:?} after step {f} ({}) returned Unavailable: the \
                         store must refuse everything after a storage failure",
                        w.kinds[f]
                    ));
                }
                if matches!(health, Some(Health::Ok | Health::Degraded(_))) {
                    problems.push(format!(
                        "{label} | after step {f} ({}) was refused for good, the store reports {health:?}, not Failed",
                        w.kinds[f]
                    ));
                }
                if i >= f + STEPS_AFTER_FAILURE {
                    break;
                }
            }
        }
    }
    // Power loss while the store is up, then recovery.
    sim.crash(plan.seed.wrapping_mul(31).wrapping_add(k));
    // After the crash the old store's files refuse all use, so it may go at its own pace.
    if let Some(store) = w.store.take() {
        drop(store);
    }
    let (before, after, insert) = match (&recovered, unknown) {
        // Everything after the recovery was acknowledged: all of it must survive.
        (Some((_, image)), _) => (image, image, false),
        (None, Some(f)) => (&reference.images[f], &reference.images[f + 1], w.kinds[f] == "insert"),
        (None, None) => {
            let end = reference.images.last().expect("images");
            (end, end, false)
        }
    };
    let label = match (&recovered, unknown) {
        (Some((at, _)), _) => format!("{label} (recovered in-process at step {at})"),
        (None, Some(f)) => format!("{label} (outcome of step {f}, {}, unknown)", w.kinds[f]),
        (None, None) => label,
    };
    let found = recover_and_check(&sim, plan, before, after, insert, &w.acks);
    problems.extend(found.into_iter().map(|p| format!("{label} | {p}")));
    Faulted { problems, recovered: recovered.is_some() }
}

/// The first job or queue where two images differ, for a readable report.
fn first_difference(expected: &Image, got: &Image) -> String {
    for id in expected.jobs.keys().chain(got.jobs.keys()) {
        if expected.jobs.get(id) != got.jobs.get(id) {
            return format!("job {id}: expected {:?}, got {:?}", expected.jobs.get(id), got.jobs.get(id));
        }
    }
    for name in expected.queues.keys().chain(got.queues.keys()) {
        if expected.queues.get(name) != got.queues.get(name) {
            return format!("queue {name}: expected {:?}, got {:?}", expected.queues.get(name), got.queues.get(name));
        }
    }
    "no difference".into()
}

/// Opens the store on `disk` (catching a panic) and checks it against the state before and
/// after the operation whose outcome is unknown, and against what was acknowledged.
fn recover_and_check(
    disk: &SimFs,
    plan: Plan,
    before: &Image,
    after: &Image,
    insert: bool,
    acks: &Acks,
) -> Vec<String> {
    let opened = std::panic::catch_unwind(AssertUnwindSafe(|| {
        EmbeddedStore::open_with_fs(Arc::new(disk.clone()), config(plan.seed))
    }));
    let store = match opened {
        Ok(Ok(store)) => store,
        Ok(Err(e)) => return vec![format!("recovery refused: {e}")],
        Err(panic) => return vec![format!("recovery panicked: {}", panic_message(panic.as_ref()))],
    };
    let rt = runtime();
    let checked = std::panic::catch_unwind(AssertUnwindSafe(|| {
        rt.block_on(async {
            let recovered = match capture(&store).await {
                Ok(image) => image,
                Err(e) => return vec![format!("reading the recovered store: {e}")],
            };
            let mut problems = check_between(before, after, &recovered, insert);
            problems.extend(check_acks(acks, &recovered, after));
            for job in recovered.jobs.values() {
                if let Err(e) = check_history(job, false) {
                    problems.push(format!("job {}: {e}", job.id));
                }
            }
            problems.extend(check_counts(&store, &recovered.jobs).await);
            problems.extend(probe(&store, acks, &recovered).await);
            problems
        })
    }));
    drop(store);
    checked.unwrap_or_else(|panic| {
        vec![format!("checking the recovered store panicked: {}", panic_message(panic.as_ref()))]
    })
}

#[test]
fn every_fault_and_power_loss_point_recovers_what_was_acknowledged() {
    let started = Instant::now();
    let mut problems = Vec::new();
    let mut crash_points = 0;
    let mut references = Vec::new();
    for plan in plans() {
        let (reference, points) = reference_run(plan, &mut problems);
        crash_points += points;
        references.push(reference);
    }
    // The same workload on a plain `SimFs` makes the very same calls with the same outcomes, or
    // the call numbers of the sweep would mean nothing.
    for reference in &references {
        let sim = SimFs::new();
        let mut w = Workload::new(Arc::new(sim.clone()), reference.plan);
        let rt = runtime();
        for i in 0..reference.plan.steps {
            rt.block_on(w.step(i));
        }
        drop(w.store.take());
        let seed = reference.plan.seed;
        assert_eq!(sim.op_count(), reference.calls, "seed {seed}: the workload is not deterministic");
        assert_eq!(w.outcomes, reference.outcomes, "seed {seed}: the workload is not deterministic");
    }

    let references_done = started.elapsed();
    let points: Vec<(usize, u64, Fault)> = references
        .iter()
        .enumerate()
        .flat_map(|(r, reference)| (0..reference.calls).flat_map(move |k| FAULTS.map(|f| (r, k, f))))
        .collect();
    let next = AtomicUsize::new(0);
    let found = Mutex::new(Vec::new());
    let recoveries = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(&(r, k, fault)) = points.get(i) else { return };
                    let reference = &references[r];
                    let result = std::panic::catch_unwind(AssertUnwindSafe(|| faulted_run(reference, k, fault)));
                    let mut problems = match result {
                        Ok(run) => {
                            if run.recovered {
                                recoveries.fetch_add(1, Ordering::SeqCst);
                            }
                            run.problems
                        }
                        Err(panic) => vec![format!(
                            "seed {}: {fault:?} at call {k} | the run panicked: {}",
                            reference.plan.seed,
                            panic_message(panic.as_ref())
                        )],
                    };
                    found.lock().expect("problems lock").append(&mut problems);
                }
            });
        }
    });
    problems.extend(found.into_inner().expect("problems lock"));

    let seeds: Vec<u64> = references.iter().map(|r| r.plan.seed).collect();
    let calls: u64 = references.iter().map(|r| r.calls).sum();
    println!(
        "fault sweep: {} points ({crash_points} power losses after a call, {} injected faults: {calls} calls x {} \
         kinds), seeds {seeds:?}, {:.1?} ({references_done:.1?} in the fault-free runs)",
        crash_points + points.len(),
        points.len(),
        FAULTS.len(),
        started.elapsed()
    );
    let mut done: BTreeMap<&str, usize> = BTreeMap::new();
    for reference in &references {
        for (kind, outcome) in reference.kinds.iter().zip(&reference.outcomes) {
            if *outcome == Outcome::Ok {
                *done.entry(kind).or_default() += 1;
            }
        }
    }
    println!("fault sweep: operations that succeeded in the fault-free runs: {done:?}");
    let recoveries = recoveries.into_inner();
    println!("fault sweep: {recoveries} faulted runs recovered in-process (a resource ran out and came back)");
    assert!(problems.is_empty(), "{}", report(&problems));
    // Writes, segment headers and segment creations are a good part of the calls: the
    // in-process recovery must really have been exercised, not skipped.
    assert!(recoveries as u64 > calls / 2, "only {recoveries} in-process recoveries for {calls} calls");
}

/// The problems grouped by their shape (numbers blanked), with a count and the first example
/// of each, then the first few in full.
fn report(problems: &[String]) -> String {
    let mut shapes: BTreeMap<String, (usize, &String)> = BTreeMap::new();
    for p in problems {
        // The part after the point's label, with numbers blanked.
        let what = p.split_once(" | ").map_or(p.as_str(), |(_, what)| what);
        let mut shape = String::new();
        for c in what.chars().take(120) {
            let c = if c.is_ascii_digit() { '#' } else { c };
            if !(c == '#' && shape.ends_with('#')) {
                shape.push(c);
            }
        }
        shapes.entry(shape).or_insert((0, p)).0 += 1;
    }
    let mut out = format!("{} problems of {} kinds:\n", problems.len(), shapes.len());
    for (shape, (count, first)) in &shapes {
        out += &format!("- {count} x {shape}\n    first: {first}\n");
    }
    out += &format!("The first {}:\n", PROBLEMS_SHOWN.min(problems.len()));
    for p in problems.iter().take(PROBLEMS_SHOWN) {
        out += &format!("{p}\n");
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Checks

/// Job by job, the recovered state is the state before the unknown operation, the state after
/// it, or (for an operation that changes one job twice, a promotion then a lease) in between;
/// and a batch insert is all or nothing.
fn check_between(before: &Image, after: &Image, recovered: &Image, insert: bool) -> Vec<String> {
    let mut problems = Vec::new();
    for (id, job) in &recovered.jobs {
        let ok = match (before.jobs.get(id), after.jobs.get(id)) {
            (None, None) => false,
            (None, Some(a)) => job == a,
            (Some(b), None) => job == b,
            (Some(b), Some(a)) => job == b || job == a || in_between(b, job, a),
        };
        if !ok {
            problems.push(format!(
                "job {id} recovered as {job:?}, but it was {:?} before the unknown operation and {:?} after",
                before.jobs.get(id),
                after.jobs.get(id)
            ));
        }
    }
    for id in before.jobs.keys() {
        if !recovered.jobs.contains_key(id) && after.jobs.contains_key(id) {
            problems.push(format!("job {id} is lost"));
        }
    }
    if insert {
        let new: Vec<JobId> = after.jobs.keys().filter(|id| !before.jobs.contains_key(id)).copied().collect();
        let survived = new.iter().filter(|id| recovered.jobs.contains_key(id)).count();
        if survived != 0 && survived != new.len() {
            problems.push(format!(
                "a batch insert is all or nothing, but {survived} of its {} new jobs {new:?} were recovered",
                new.len()
            ));
        }
    }
    for (name, config) in &recovered.queues {
        if before.queues.get(name) != Some(config) && after.queues.get(name) != Some(config) {
            problems.push(format!("queue {name} recovered as {config:?}, which no operation set"));
        }
    }
    for name in before.queues.keys() {
        if !recovered.queues.contains_key(name) {
            problems.push(format!("queue {name} is lost"));
        }
    }
    problems
}

/// `job` is a step of one operation from `before` to `after`: the same job, with a history that
/// extends `before`'s and is extended by `after`'s.
fn in_between(before: &Job, job: &Job, after: &Job) -> bool {
    let fixed = |j: &Job| Job { status: after.status.clone(), history: Vec::new(), version: 0, ..j.clone() };
    fixed(job) == fixed(after)
        && job.history.len() > before.history.len()
        && job.history.len() < after.history.len()
        && job.history.starts_with(&before.history)
        && after.history.starts_with(&job.history)
}

/// Every operation that returned `Ok` is reflected in the recovered state. `after` is the state
/// after the unknown operation, which may have deleted or changed what was acknowledged.
fn check_acks(acks: &Acks, recovered: &Image, after: &Image) -> Vec<String> {
    let mut problems = Vec::new();
    let gone = |id: &JobId| acks.discarded.contains(id) || !after.jobs.contains_key(id);
    let entry = |id: &JobId, kind: HistoryKind, token: FencingToken| {
        recovered.jobs.get(id).and_then(|j| j.history.iter().find(|h| h.kind == kind && h.token == Some(token)))
    };
    for (id, payload) in &acks.inserted {
        match recovered.jobs.get(id) {
            None if gone(id) => {}
            None => problems.push(format!("job {id} was acknowledged as inserted but is gone")),
            Some(job) if job.payload != *payload => {
                problems.push(format!("job {id}: payload {:?}, acknowledged with {payload:?}", job.payload))
            }
            Some(_) => {}
        }
    }
    for &(id, token, attempt) in &acks.leases {
        if recovered.jobs.contains_key(&id)
            && entry(&id, HistoryKind::Leased, token).is_none_or(|e| e.attempt != attempt)
        {
            problems
                .push(format!("job {id}: the acknowledged lease {token} (attempt {attempt}) is not in its history"));
        }
    }
    for (&(id, token), &deadline) in &acks.heartbeats {
        let lease_of = |image: &Image| image.jobs.get(&id).and_then(|j| j.status.lease.clone());
        if let Some(lease) = lease_of(recovered)
            && lease.token == token
            && lease.deadline != deadline
            && lease_of(after) != Some(lease.clone())
        {
            problems.push(format!(
                "job {id}: lease {token} ends at {}, not at {deadline} where its latest acknowledged heartbeat put it",
                lease.deadline
            ));
        }
    }
    for &(id, token) in &acks.completed {
        let Some(job) = recovered.jobs.get(&id) else { continue };
        if job.status.state != JobState::Completed || entry(&id, HistoryKind::Completed, token).is_none() {
            problems.push(format!("job {id} was acknowledged as completed under {token} but is {}", job.status.state));
        }
    }
    for &(id, token, state) in &acks.failed {
        if recovered.jobs.contains_key(&id) && entry(&id, HistoryKind::Failed, token).is_none_or(|e| e.state != state) {
            problems
                .push(format!("job {id}: the acknowledged failure under {token} (to {state}) is not in its history"));
        }
    }
    for &(id, state) in &acks.cancelled {
        let Some(job) = recovered.jobs.get(&id) else { continue };
        let reflected = match state {
            JobState::Cancelled => job.history.iter().any(|h| h.state == JobState::Cancelled),
            JobState::Running => job.history.iter().any(|h| h.kind == HistoryKind::CancelRequested),
            _ => false,
        };
        if !reflected {
            problems.push(format!("job {id}: the acknowledged cancel (it was {state}) is not in its history"));
        }
    }
    for (id, &count) in &acks.redriven {
        let Some(job) = recovered.jobs.get(id) else { continue };
        let found = job.history.iter().filter(|h| h.kind == HistoryKind::Redriven).count();
        if found < count {
            problems.push(format!("job {id}: {count} acknowledged redrives but {found} in its history"));
        }
    }
    for (name, config) in &acks.configs {
        let got = recovered.queues.get(name);
        if got != Some(config) && got != after.queues.get(name) {
            problems.push(format!("queue {name}: recovered {got:?}, acknowledged {config:?}"));
        }
    }
    problems
}

/// After recovery: a retried insert finds its job by its idempotency key, and new job ids and
/// fencing tokens are above every one handed out before.
async fn probe(store: &EmbeddedStore, acks: &Acks, recovered: &Image) -> Vec<String> {
    let mut problems = Vec::new();
    let (expected, retries): (Vec<JobId>, Vec<NewJob>) = acks
        .keys
        .iter()
        .filter(|(_, (id, _))| !acks.discarded.contains(id) && recovered.jobs.contains_key(id))
        .map(|((queue, key), (id, payload))| {
            let mut job = NewJob::new(queue.clone(), payload.clone());
            job.idempotency_key = Some(key.as_str().into());
            (*id, job)
        })
        .unzip();
    if !retries.is_empty() {
        match store.job_insert(JobInsert { now: PROBE_NOW, jobs: retries }).await {
            Ok(ins) if ins.iter().map(|i| i.id).eq(expected.iter().copied()) && ins.iter().all(|i| i.duplicate) => {}
            other => problems.push(format!("retrying keyed inserts gave {other:?}, not the jobs {expected:?}")),
        }
    }
    let tokens = recovered.jobs.values().flat_map(|j| j.history.iter().filter_map(|h| h.token));
    let token_before = tokens.chain(acks.token_max).max();
    let id_before = recovered.jobs.keys().copied().chain(acks.id_max).max();
    let probe_queue = QueueName::new("probe").expect("a valid queue name");
    let job = NewJob::new(probe_queue.clone(), Payload::new(&b"{}"[..]));
    match store.job_insert(JobInsert { now: PROBE_NOW, jobs: vec![job] }).await {
        Ok(ins) if Some(ins[0].id) > id_before => {}
        other => problems.push(format!("a new job after recovery: {other:?}; ids so far went up to {id_before:?}")),
    }
    let lease = JobLease {
        now: PROBE_NOW,
        queues: vec![probe_queue],
        count_max: 1,
        worker: WorkerId::new("probe").expect("a valid worker id"),
        lease_ms: None,
    };
    match store.job_lease(lease).await {
        Ok(leased) if leased.len() == 1 && Some(leased[0].token) > token_before => {}
        other => problems.push(format!("a lease after recovery: {other:?}; tokens so far went up to {token_before:?}")),
    }
    problems
}

/// Every job is in exactly one state: each queue's counts are a count of its jobs by state.
async fn check_counts(store: &EmbeddedStore, jobs: &BTreeMap<JobId, Job>) -> Vec<String> {
    let mut problems = Vec::new();
    let mut counted: BTreeMap<QueueName, [u64; dray_core::JobState::ALL.len()]> = BTreeMap::new();
    for job in jobs.values() {
        counted.entry(job.queue.clone()).or_default()[job.status.state.index()] += 1;
    }
    match store.queue_list().await {
        Err(e) => problems.push(format!("listing queues: {e}")),
        Ok(list) => {
            for stats in list {
                let counts = counted.remove(&stats.config.name).unwrap_or_default();
                if stats.counts != counts {
                    problems.push(format!(
                        "queue {}: stats count {:?} but its jobs are {counts:?}",
                        stats.config.name, stats.counts
                    ));
                }
            }
        }
    }
    for queue in counted.keys() {
        problems.push(format!("queue {queue} holds jobs but is not listed"));
    }
    problems
}

// ---------------------------------------------------------------------------------------------
// Resources that run out for a while, then come back

/// How long a test waits for the store to come back after the resource is back. The store
/// retries at once on a call and every half second in the background, backing off to at most a
/// second between attempts.
const RECOVERY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(20);

fn open_store(sim: &SimFs) -> EmbeddedStore {
    EmbeddedStore::open_with_fs(Arc::new(sim.clone()), config(7)).expect("open")
}

fn job(payload: &str) -> NewJob {
    NewJob::new(queue(0), Payload::new(payload.as_bytes().to_vec()))
}

async fn insert(store: &EmbeddedStore, payload: &str) -> Result<JobId, Error> {
    Ok(store.job_insert(JobInsert { now: T0, jobs: vec![job(payload)] }).await?[0].id)
}

/// Retries `f` until it succeeds or the deadline passes (then panics naming `what`).
async fn until_ok<T>(what: &str, mut f: impl AsyncFnMut() -> Result<T, Error>) -> T {
    let deadline = Instant::now() + RECOVERY_DEADLINE;
    loop {
        match f().await {
            Ok(value) => return value,
            Err(e) if Instant::now() < deadline => {
                assert!(matches!(e, Error::Unavailable { .. }), "{what}: {e}");
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(e) => panic!("{what}: still refused after {RECOVERY_DEADLINE:?}: {e}"),
        }
    }
}

/// The payloads of every job in the store.
async fn payloads(store: &EmbeddedStore) -> BTreeSet<String> {
    let image = capture(store).await.expect("read the store");
    image.jobs.values().map(|j| String::from_utf8_lossy(j.payload.as_bytes()).into_owned()).collect()
}

/// Regression guard for issue #10: on a full disk the server answered 503 and stayed 503 after
/// space was freed. Now the write is refused (nothing acknowledged), the partial write is cut
/// off, reads are refused while the store cannot come back (they would wait on a stopped log),
/// and once space returns the next call brings the store back without a restart, with every
/// acknowledged job and none of the refused ones, also across a power loss.
#[test]
fn a_full_disk_refuses_writes_until_space_returns_and_loses_nothing() {
    let rt = runtime();
    let sim = SimFs::new();
    let store = open_store(&sim);
    rt.block_on(async {
        let mut acked = BTreeSet::new();
        for i in 0..10 {
            let payload = format!("{{\"acked\":{i}}}");
            insert(&store, &payload).await.expect("insert");
            acked.insert(payload);
        }
        sim.set_space_bytes_max(Some(sim.bytes_stored()));
        let err = insert(&store, "{\"refused\":1}").await.expect_err("the disk is full");
        assert!(matches!(err, Error::Unavailable { .. }), "{err}");
        assert!(matches!(store.health(), Health::Degraded(_)), "{:?}", store.health());
        // While space is still out, the store tries to come back and cannot: refused, not stuck.
        for _ in 0..3 {
            let err = store.job_get(JobId(1)).await.expect_err("no space for a new segment");
            assert!(matches!(err, Error::Unavailable { .. }), "{err}");
            assert!(matches!(store.health(), Health::Degraded(_)), "{:?}", store.health());
        }
        // Room for a new segment's header but not for its first record: a try creates the
        // segment, cuts the record back off and removes the segment again, so failed tries
        // leave nothing behind however many there are.
        let segments = || sim.list(Path::new(DIR)).expect("list").iter().filter(|n| n.ends_with(".log")).count();
        let before = segments();
        sim.set_space_bytes_max(Some(sim.bytes_stored() + 20));
        let ops = sim.op_count();
        for _ in 0..5 {
            store.job_get(JobId(1)).await.expect_err("no space for the first record");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert!(sim.op_count() > ops + 5, "recovery was tried");
        assert_eq!(segments(), before, "failed tries leave no segment behind");
        assert!(matches!(store.health(), Health::Degraded(_)), "{:?}", store.health());
        sim.set_space_bytes_max(None);
        until_ok("an insert after space returned", async || insert(&store, "{\"after\":1}").await).await;
        acked.insert("{\"after\":1}".into());
        assert_eq!(store.health(), Health::Ok);
        assert_eq!(store.recoveries(), 1);
        assert_eq!(payloads(&store).await, acked, "exactly the acknowledged jobs");
        sim.crash(3);
        drop(store);
        let store = open_store(&sim);
        assert_eq!(payloads(&store).await, acked, "and a power loss keeps them");
    });
}

/// Regression guard for issue #10: under `prlimit --nofile=128` with idle sockets the next log
/// segment could not be opened and every request answered 503 for good. Now the write that
/// needed the segment is refused and the store comes back once descriptors are free again.
#[test]
fn out_of_file_descriptors_when_a_segment_starts_refuses_then_recovers() {
    let rt = runtime();
    let sim = SimFs::new();
    let store = open_store(&sim);
    rt.block_on(async {
        let mut acked = BTreeSet::new();
        let mut refused = None;
        sim.set_files_exhausted(true);
        // 2 KiB segments: a few of these need a new one.
        for i in 0..50 {
            let payload = format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(300));
            match insert(&store, &payload).await {
                Ok(_) => {
                    acked.insert(payload);
                }
                Err(e) => {
                    assert!(matches!(e, Error::Unavailable { .. }), "{e}");
                    refused = Some(payload);
                    break;
                }
            }
        }
        let refused = refused.expect("a new segment was needed");
        assert!(!acked.is_empty());
        assert!(matches!(store.health(), Health::Degraded(_)), "{:?}", store.health());
        let err = insert(&store, "{\"still\":1}").await.expect_err("still out of descriptors");
        assert!(matches!(err, Error::Unavailable { .. }), "{err}");
        sim.set_files_exhausted(false);
        until_ok("an insert after descriptors returned", async || insert(&store, &refused).await).await;
        acked.insert(refused);
        assert_eq!(store.health(), Health::Ok);
        assert_eq!(payloads(&store).await, acked);
        store.close().expect("close");
        let store = open_store(&sim);
        assert_eq!(payloads(&store).await, acked);
    });
}

/// Readiness comes back by itself: a node a load balancer took out of rotation gets no
/// requests, so the store must recover without one.
#[test]
fn the_store_recovers_in_the_background_without_any_request() {
    let rt = runtime();
    let sim = SimFs::new();
    let store = open_store(&sim);
    rt.block_on(async {
        insert(&store, "{\"a\":1}").await.expect("insert");
        sim.set_space_bytes_max(Some(sim.bytes_stored()));
        insert(&store, "{\"b\":1}").await.expect_err("the disk is full");
        assert!(matches!(store.health(), Health::Degraded(_)), "{:?}", store.health());
        sim.set_space_bytes_max(None);
        let deadline = Instant::now() + RECOVERY_DEADLINE;
        while store.health() != Health::Ok {
            assert!(Instant::now() < deadline, "never recovered: {:?}", store.health());
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(store.recoveries(), 1);
        assert_eq!(payloads(&store).await, BTreeSet::from(["{\"a\":1}".to_string()]));
    });
}

/// An fsync failure still stops the store until a restart (docs/semantics.md): the page cache
/// can no longer be trusted. Liveness says so, and nothing brings it back in-process.
#[test]
fn a_failed_fsync_stops_the_store_for_good_and_health_says_failed() {
    let rt = runtime();
    let sim = SimFs::new();
    let store = open_store(&sim);
    rt.block_on(async {
        insert(&store, "{\"a\":1}").await.expect("insert");
        sim.reset_op_count();
        // write (0), fsync (1).
        sim.fail_at(1, Fault::SyncError);
        insert(&store, "{\"b\":1}").await.expect_err("the fsync failed");
        assert!(matches!(store.health(), Health::Failed(_)), "{:?}", store.health());
        sim.clear_faults();
        for _ in 0..3 {
            insert(&store, "{\"c\":1}").await.expect_err("refused until restarted");
        }
        assert!(matches!(store.health(), Health::Failed(_)), "{:?}", store.health());
        assert_eq!(store.recoveries(), 0);
    });
    drop(store);
    let store = open_store(&sim);
    assert_eq!(store.health(), Health::Ok, "a restart recovers");
    assert_eq!(rt.block_on(payloads(&store)), BTreeSet::from(["{\"a\":1}".to_string()]));
}

/// A snapshot that runs out of space (or descriptors) fails alone: nothing is refused, and its
/// partial file is removed at once, or on a full disk it would hold on to the very space the
/// store needs.
#[test]
fn a_snapshot_on_a_full_disk_fails_alone_and_leaves_no_partial_file() {
    let rt = runtime();
    let sim = SimFs::new();
    let store = open_store(&sim);
    rt.block_on(async {
        for i in 0..20 {
            insert(&store, &format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(100))).await.expect("insert");
        }
        let files = || sim.list(Path::new(DIR)).expect("list");
        // Room for the new segment the snapshot starts, not for the copy.
        sim.set_space_bytes_max(Some(sim.bytes_stored() + 64));
        store.snapshot().expect_err("no space for the copy");
        assert!(files().iter().all(|n| !n.ends_with(".tmp") && !n.ends_with(".snap")), "{:?}", files());
        assert_eq!(store.health(), Health::Ok, "a failed snapshot refuses nothing");
        sim.set_space_bytes_max(None);
        insert(&store, "{\"after\":1}").await.expect("insert");
        store.snapshot().expect("snapshot");
        assert_eq!(payloads(&store).await.len(), 21);
    });
}
