//! Crash test with real processes: the store under concurrent load in a child process, killed with
//! SIGKILL at random moments and started again, over and over. Checks the delivery contract across
//! the kills: nothing acknowledged is lost, a completed job is never delivered again, fencing
//! tokens only grow (across restarts too), a job is delivered twice only after its earlier lease
//! expired or failed, and a batch insert is all or nothing.
//!
//! The child is this test binary run again for one test, [`child_workload`], with
//! `DRAY_CRASH_CHILD_DIR` set. It prints one line per acknowledged operation, written and flushed
//! only after the store returned `Ok`; the parent reads them through a pipe up to the kill and,
//! every few rounds and at the end, opens the store itself and checks them against what recovery
//! gives. Without that variable `child_workload` runs the same workload in-process for a bounded
//! number of operations and checks its acks after a clean reopen.
//!
//! `DRAY_CRASH_KILLS` sets the number of kills (default 24), `DRAY_CRASH_SEED` replays a run's
//! choices (workload seeds and kill delays; where a SIGKILL lands still depends on the machine).

mod common;

use common::check_history;
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dray_core::{
    Backoff, FencingToken, HistoryKind, Job, JobId, JobState, NewJob, Payload, QueueName, Timestamp, WorkerId,
};
use dray_store::{
    Ack, AckOutcome, Error, JobAck, JobFilter, JobInsert, JobLease, JobList, LeaseExtend, Maintain, Store,
};
use dray_store_embedded::{EmbeddedConfig, EmbeddedStore};

/// The test the child runs; must match the function's name.
const CHILD_TEST: &str = "child_workload";
const CHILD_DIR_ENV: &str = "DRAY_CRASH_CHILD_DIR";
const CHILD_SEED_ENV: &str = "DRAY_CRASH_CHILD_SEED";
const KILLS_DEFAULT: u64 = 24;
/// The parent opens and checks the store after every this many kills (and after the last).
const VERIFY_EVERY: u64 = 3;
/// How long a child runs before its SIGKILL, in ms, drawn uniformly.
const KILL_AFTER_MS_MIN: u64 = 50;
const KILL_AFTER_MS_MAX: u64 = 400;
/// Operations of the in-process run of the workload.
const IN_PROCESS_OPS: usize = 400;
/// A child the parent lost track of exits by itself after this long.
const CHILD_LIFETIME_MAX: Duration = Duration::from_secs(60);
/// Marks the child's ack lines among whatever else the test harness prints.
const MARK: &str = "@ack ";
/// Short leases, so leases abandoned by a worker (or by a killed child) expire within the run.
const LEASE_MS: u64 = 1_000;
const QUEUES: [&str; 2] = ["crash-a", "crash-b"];
/// Idempotency keys are drawn from this many, shared by every round: retries across restarts.
const KEYS: u64 = 64;
/// Producers pause while this many jobs wait or run.
const BACKLOG_MAX: u64 = 2_000;

// ---------------------------------------------------------------------------------------------
// Randomness and time

/// splitmix64: seedable, so a printed seed replays a run's choices.
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

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
}

/// The server's clock: real time, since time must move on across restarts for leases to expire.
fn now() -> Timestamp {
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).expect("the clock is after 1970").as_millis();
    Timestamp(i64::try_from(ms).expect("milliseconds fit in i64"))
}

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(value.trim().parse().unwrap_or_else(|e| panic!("{name}={value:?} is not a number: {e}")))
}

fn queue(i: usize) -> QueueName {
    QueueName::new(QUEUES[i]).expect("a valid queue name")
}

fn store_config(dir: &Path) -> EmbeddedConfig {
    let mut config = EmbeddedConfig::new(dir);
    // Small segments, so rotations happen under the kills too. Durability stays `Always`.
    config.segment_bytes_max = 64 * 1024;
    config
}

// ---------------------------------------------------------------------------------------------
// Ack lines: what the child prints, one per acknowledged operation

#[derive(Clone, Debug, PartialEq)]
enum AckLine {
    /// `I <id> <key or -> <payload>`: an insert (or an idempotent repeat) returned this id.
    Insert { id: JobId, key: Option<String>, payload: String },
    /// `L <id> <token> <attempt>`
    Lease { id: JobId, token: u64, attempt: u32 },
    /// `H <id> <token> <deadline>`
    Heartbeat { id: JobId, token: u64, deadline: i64 },
    /// `C <id> <token>`
    Complete { id: JobId, token: u64 },
    /// `F <id> <token> <state after>`
    Fail { id: JobId, token: u64, state: JobState },
}

impl AckLine {
    fn render(&self) -> String {
        match self {
            AckLine::Insert { id, key, payload } => format!("I {id} {} {payload}", key.as_deref().unwrap_or("-")),
            AckLine::Lease { id, token, attempt } => format!("L {id} {token} {attempt}"),
            AckLine::Heartbeat { id, token, deadline } => format!("H {id} {token} {deadline}"),
            AckLine::Complete { id, token } => format!("C {id} {token}"),
            AckLine::Fail { id, token, state } => format!("F {id} {token} {}", state.as_str()),
        }
    }

    /// `None` for a line that is not an ack line; a marked line that does not parse is a bug.
    fn parse(line: &str) -> Option<AckLine> {
        let (_, rest) = line.split_once(MARK)?;
        fn bad<T>(line: &str) -> T {
            panic!("a malformed ack line from the child: {line:?}")
        }
        let fields: Vec<&str> = rest.split(' ').collect();
        let num = |i: usize| -> u64 { fields.get(i).and_then(|f| f.parse().ok()).unwrap_or_else(|| bad(line)) };
        let id = JobId(num(1));
        let ack = match (fields[0], fields.len()) {
            ("I", 4) => AckLine::Insert {
                id,
                key: (fields[2] != "-").then(|| fields[2].to_string()),
                payload: fields[3].to_string(),
            },
            ("L", 4) => {
                AckLine::Lease { id, token: num(2), attempt: u32::try_from(num(3)).unwrap_or_else(|_| bad(line)) }
            }
            ("H", 4) => {
                let deadline = fields.get(3).and_then(|f| f.parse().ok()).unwrap_or_else(|| bad(line));
                AckLine::Heartbeat { id, token: num(2), deadline }
            }
            ("C", 3) => AckLine::Complete { id, token: num(2) },
            ("F", 4) => {
                AckLine::Fail { id, token: num(2), state: JobState::parse(fields[3]).unwrap_or_else(|| bad(line)) }
            }
            _ => bad(line),
        };
        Some(ack)
    }
}

/// Where the workload reports acknowledged operations.
#[derive(Clone, Debug)]
enum Sink {
    /// The child: one line per ack on stdout, for the parent.
    Stdout,
    /// The in-process run.
    Memory(Arc<Mutex<Vec<AckLine>>>),
}

impl Sink {
    fn ack(&self, line: AckLine) {
        match self {
            Sink::Stdout => {
                // One write of one whole line (a pipe write this short is atomic), flushed before
                // the task goes on: whatever the parent reads was acknowledged.
                let text = format!("{MARK}{}\n", line.render());
                let mut out = std::io::stdout().lock();
                out.write_all(text.as_bytes())
                    .and_then(|()| out.flush())
                    .expect("write an ack line (the parent is gone?)");
            }
            Sink::Memory(lines) => lines.lock().expect("ack log lock").push(line),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The workload

#[derive(Debug)]
struct Workload {
    store: Arc<EmbeddedStore>,
    sink: Sink,
    seed: u64,
    /// Operations left; `None` runs until the process is killed.
    ops_left: Option<AtomicUsize>,
}

impl Workload {
    /// Claims one more operation; false once the budget is spent.
    fn op(&self) -> bool {
        match &self.ops_left {
            None => true,
            Some(left) => left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok(),
        }
    }

    fn running(&self) -> bool {
        self.ops_left.as_ref().is_none_or(|left| left.load(Ordering::SeqCst) > 0)
    }

    fn rng(&self, task: u64) -> Rng {
        Rng(self.seed ^ task.wrapping_add(1).wrapping_mul(0xD6E8_FEB8_6659_FD93))
    }
}

/// Inserts batches, a quarter of the jobs with an idempotency key shared with every other round.
/// Unkeyed payloads name their batch and its size, so a half-written batch shows after recovery.
async fn produce(w: Arc<Workload>, producer: u64) {
    let mut rng = w.rng(producer);
    let mut batch = 0u64;
    while w.op() {
        if backlog(&w.store).await > BACKLOG_MAX {
            // Let the workers catch up: a long run's store (and every recovery) stays small.
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        batch += 1;
        let keyed: Vec<bool> = (0..rng.range(1, 12)).map(|_| rng.below(4) == 0).collect();
        let unkeyed = keyed.iter().filter(|k| !**k).count();
        let mut jobs = Vec::with_capacity(keyed.len());
        let mut sent = Vec::with_capacity(keyed.len());
        let mut index = 0;
        for is_keyed in keyed {
            let (q, key, payload) = if is_keyed {
                // A key always goes with the same queue and payload: a repeat is a retry.
                let k = rng.below(KEYS);
                ((k % 2) as usize, Some(format!("key-{k}")), format!("{{\"key\":{k}}}"))
            } else {
                index += 1;
                let payload = format!(
                    "{{\"run\":\"{:016x}\",\"p\":{producer},\"b\":{batch},\"of\":{unkeyed},\"i\":{index}}}",
                    w.seed
                );
                (rng.below(2) as usize, None, payload)
            };
            let mut job = NewJob::new(queue(q), Payload::new(payload.clone().into_bytes()));
            job.priority = rng.below(3) as i16 - 1;
            job.attempts_max = Some(rng.range(2, 4) as u32);
            job.backoff = Some(Backoff { base_ms: 20, factor: 2.0, cap_ms: 200 });
            if rng.below(8) == 0 {
                job.delay_ms = Some(rng.below(300));
            }
            job.idempotency_key = key.as_deref().map(Into::into);
            jobs.push(job);
            sent.push((key, payload));
        }
        let inserted =
            w.store.job_insert(JobInsert { now: now(), jobs }).await.unwrap_or_else(|e| panic!("insert failed: {e}"));
        for (ins, (key, payload)) in inserted.iter().zip(sent) {
            w.sink.ack(AckLine::Insert { id: ins.id, key, payload });
        }
    }
}

/// Jobs not yet finished, over both queues.
async fn backlog(store: &EmbeddedStore) -> u64 {
    let mut waiting = 0;
    for q in 0..QUEUES.len() {
        // A queue appears with its first job.
        if let Ok(stats) = store.queue_stats(&queue(q)).await {
            waiting += JobState::ALL.iter().filter(|s| !s.is_finished()).map(|s| stats.count(*s)).sum::<u64>();
        }
    }
    waiting
}

/// Leases, sometimes heartbeats, then completes, fails (retryable, short retry-after) or abandons
/// the job so that its lease expires.
async fn work(w: Arc<Workload>, worker_no: u64) {
    let mut rng = w.rng(100 + worker_no);
    let worker = WorkerId::new(&format!("worker-{worker_no}")).expect("a valid worker id");
    while w.op() {
        let p = JobLease {
            now: now(),
            queues: vec![queue(0), queue(1)],
            count_max: rng.range(1, 8) as usize,
            worker: worker.clone(),
            lease_ms: Some(LEASE_MS),
        };
        let leased = w.store.job_lease(p).await.unwrap_or_else(|e| panic!("lease failed: {e}"));
        if leased.is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        for job in &leased {
            w.sink.ack(AckLine::Lease { id: job.id, token: job.token.0, attempt: job.attempt });
        }
        let mut acks = Vec::new();
        let mut sent = Vec::new();
        for job in leased {
            if rng.below(10) == 0 {
                continue; // Abandoned: the lease expires and the job comes back.
            }
            if rng.below(5) == 0 {
                let p = LeaseExtend {
                    now: now(),
                    job: job.id,
                    lease: job.lease,
                    extend_ms: Some(LEASE_MS),
                    progress: None,
                    checkpoint: Some(Payload::new(&b"{\"step\":1}"[..])),
                };
                match w.store.lease_extend(p).await {
                    Ok(extended) => {
                        w.sink.ack(AckLine::Heartbeat { id: job.id, token: job.token.0, deadline: extended.deadline.0 })
                    }
                    // The lease ran out meanwhile.
                    Err(Error::Rejected { .. }) => continue,
                    Err(e) => panic!("heartbeat failed: {e}"),
                }
            }
            let complete = rng.below(4) != 0;
            let outcome = if complete {
                AckOutcome::Complete { result: Some(Payload::new(&b"\"done\""[..])) }
            } else {
                AckOutcome::Fail {
                    error: "crash test failure".into(),
                    retryable: true,
                    retry_after_ms: Some(rng.below(100)),
                    rate_limited: false,
                }
            };
            acks.push(Ack { job: job.id, lease: job.lease, outcome });
            sent.push((job.id, job.token.0, complete));
        }
        if acks.is_empty() {
            continue;
        }
        let results = w.store.job_ack(JobAck { now: now(), acks }).await.unwrap_or_else(|e| panic!("ack failed: {e}"));
        for ((id, token, complete), result) in sent.into_iter().zip(results) {
            match result {
                Ok(acked) if complete => {
                    assert_eq!(acked.state, JobState::Completed, "job {id}");
                    w.sink.ack(AckLine::Complete { id, token });
                }
                Ok(acked) => w.sink.ack(AckLine::Fail { id, token, state: acked.state }),
                // The lease ran out meanwhile: a stale ack changes nothing.
                Err(Error::Rejected { .. }) => {}
                Err(e) => panic!("ack of job {id} failed: {e}"),
            }
        }
    }
}

/// What the runtime's maintenance would do: expire dead leases, promote due jobs.
async fn maintain(w: Arc<Workload>) {
    while w.running() {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let m = Maintain { now: now(), limit: 1_000 };
        w.store.leases_expire(m).await.unwrap_or_else(|e| panic!("expiring leases failed: {e}"));
        w.store.jobs_promote(m).await.unwrap_or_else(|e| panic!("promoting jobs failed: {e}"));
    }
}

/// Snapshots often, so kills also land in snapshots and in segment deletion.
async fn snapshot(w: Arc<Workload>) {
    while w.running() {
        tokio::time::sleep(Duration::from_millis(120)).await;
        let store = w.store.clone();
        tokio::task::spawn_blocking(move || store.snapshot())
            .await
            .expect("the snapshot task")
            .unwrap_or_else(|e| panic!("snapshot failed: {e}"));
    }
}

async fn run_workload(w: Arc<Workload>) {
    let mut tasks = tokio::task::JoinSet::new();
    for producer in 0..2 {
        tasks.spawn(produce(w.clone(), producer));
    }
    for worker in 0..3 {
        tasks.spawn(work(w.clone(), worker));
    }
    tasks.spawn(maintain(w.clone()));
    tasks.spawn(snapshot(w.clone()));
    drop(w);
    while let Some(done) = tasks.join_next().await {
        if let Err(e) = done {
            match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(e) => panic!("a workload task failed: {e}"),
            }
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_time().build().expect("a tokio runtime")
}

/// In a child (`DRAY_CRASH_CHILD_DIR` set): runs the workload on that directory until killed.
/// Otherwise: runs it in-process for a bounded number of operations, reopens the store and
/// checks every acknowledged operation against it.
#[test]
fn child_workload() {
    match std::env::var_os(CHILD_DIR_ENV) {
        Some(dir) => child_main(Path::new(&dir)),
        None => in_process(),
    }
}

fn child_main(dir: &Path) {
    let seed = env_u64(CHILD_SEED_ENV).expect("the parent passes a seed");
    std::thread::spawn(|| {
        std::thread::sleep(CHILD_LIFETIME_MAX);
        eprintln!("crash child: never killed within {CHILD_LIFETIME_MAX:?}; exiting");
        std::process::exit(3);
    });
    let store = EmbeddedStore::open(store_config(dir)).unwrap_or_else(|e| panic!("recovery failed: {e}"));
    let w = Workload { store: Arc::new(store), sink: Sink::Stdout, seed, ops_left: None };
    runtime().block_on(run_workload(Arc::new(w)));
    unreachable!("the child workload runs until it is killed");
}

fn in_process() {
    let dir = tempfile::tempdir().expect("temp dir");
    let rt = runtime();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let store = Arc::new(EmbeddedStore::open(store_config(dir.path())).expect("open"));
    let w = Workload {
        store: store.clone(),
        sink: Sink::Memory(lines.clone()),
        seed: 0x00C0_FFEE,
        ops_left: Some(AtomicUsize::new(IN_PROCESS_OPS)),
    };
    rt.block_on(run_workload(Arc::new(w)));
    store.snapshot().expect("snapshot");
    Arc::into_inner(store).expect("the workload let go of the store").close().expect("close");
    let lines = std::mem::take(&mut *lines.lock().expect("ack log lock"));

    // Every line survives rendering and parsing: the child protocol.
    for line in &lines {
        assert_eq!(AckLine::parse(&format!("{MARK}{}", line.render())).as_ref(), Some(line));
    }
    let mut log = AckLog::default();
    log.absorb(0, &lines).unwrap_or_else(|e| panic!("in-process run: {e}"));
    let store = EmbeddedStore::open(store_config(dir.path())).expect("reopen");
    let jobs = rt.block_on(verify(&store, &log)).unwrap_or_else(|p| panic!("in-process run:\n{}", p.join("\n")));
    assert!(log.inserted.len() > 100 && log.completed.len() > 10, "the workload did little: {log:?}");
    println!(
        "in-process workload: {} acknowledged operations ({} jobs inserted, {} leases, {} completed), {jobs} jobs verified",
        log.ops,
        log.inserted.len(),
        log.leases.values().map(Vec::len).sum::<usize>(),
        log.completed.len()
    );
}

// ---------------------------------------------------------------------------------------------
// The parent

#[test]
fn kill_9_under_load_loses_nothing_acknowledged() {
    let seed = env_u64("DRAY_CRASH_SEED").unwrap_or_else(|| {
        use std::hash::{BuildHasher, RandomState};
        RandomState::new().hash_one(SystemTime::now())
    });
    let kills = env_u64("DRAY_CRASH_KILLS").unwrap_or(KILLS_DEFAULT);
    println!("crash test: seed {seed}, {kills} kills (DRAY_CRASH_SEED={seed} replays the choices)");
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("a tokio runtime");
    let mut rng = Rng(seed);
    let mut log = AckLog::default();
    let mut jobs_verified = 0;
    for round in 0..kills {
        let child_seed = rng.next();
        let kill_after = Duration::from_millis(rng.range(KILL_AFTER_MS_MIN, KILL_AFTER_MS_MAX));
        let lines = run_child(dir.path(), child_seed, kill_after)
            .unwrap_or_else(|e| panic!("seed {seed}, round {round} (child seed {child_seed}): {e}"));
        log.absorb(round, &lines)
            .unwrap_or_else(|e| panic!("seed {seed}, round {round} (child seed {child_seed}): {e}"));
        if (round + 1) % VERIFY_EVERY == 0 || round + 1 == kills {
            let store = EmbeddedStore::open(store_config(dir.path()))
                .unwrap_or_else(|e| panic!("seed {seed}, after round {round}: recovery failed: {e}"));
            jobs_verified = rt
                .block_on(verify(&store, &log))
                .unwrap_or_else(|problems| panic!("seed {seed}, after round {round}:\n{}", problems.join("\n")));
            store.close().expect("close after verifying");
        }
    }
    println!(
        "crash test: {kills} kills, {} acknowledged operations ({} jobs inserted, {} leases of which {} \
         redeliveries, {} completed), {jobs_verified} jobs verified, {:.1?} (seed {seed})",
        log.ops,
        log.inserted.len(),
        log.leases.values().map(Vec::len).sum::<usize>(),
        log.redeliveries,
        log.completed.len(),
        started.elapsed()
    );
    assert!(!log.inserted.is_empty() && !log.completed.is_empty(), "the children did no work: {log:?}");
}

/// Runs one child on `dir` for `kill_after`, SIGKILLs it and returns the ack lines it printed.
fn run_child(dir: &Path, seed: u64, kill_after: Duration) -> Result<Vec<AckLine>, String> {
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut child = Command::new(exe)
        .args(["--exact", CHILD_TEST, "--nocapture"])
        .env(CHILD_DIR_ENV, dir)
        .env(CHILD_SEED_ENV, seed.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the child");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    // Read continuously, so the child never blocks on a full pipe and nothing is lost up to the
    // kill.
    let acks = std::thread::spawn(move || read_acks(stdout));
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    std::thread::sleep(kill_after);
    let early = child.try_wait().expect("poll the child");
    if early.is_none() {
        // `Child::kill` is SIGKILL on Unix.
        child.kill().expect("SIGKILL the child");
    }
    let status = child.wait().expect("reap the child");
    let lines = acks.join().expect("the stdout reader");
    let stderr = errors.join().expect("the stderr reader");
    if let Some(status) = early {
        return Err(format!("the child exited by itself ({status}) before its kill; its stderr:\n{stderr}"));
    }
    if status.signal() != Some(9) {
        return Err(format!("the child ended with {status}, not by SIGKILL; its stderr:\n{stderr}"));
    }
    Ok(lines)
}

fn read_acks(stdout: impl Read) -> Vec<AckLine> {
    let mut reader = BufReader::new(stdout);
    let mut out = Vec::new();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) => return out,
            Ok(_) => {}
            Err(e) => panic!("reading the child's stdout: {e}"),
        }
        if buf.last() != Some(&b'\n') {
            // Cut off by the kill; an ack line is written whole, so this is not one.
            return out;
        }
        if let Some(ack) = AckLine::parse(String::from_utf8_lossy(&buf).trim_end()) {
            out.push(ack);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// What was acknowledged, across every round

#[derive(Debug, Default)]
struct AckLog {
    /// Inserted jobs and their payloads.
    inserted: BTreeMap<JobId, String>,
    /// The job each idempotency key gave.
    keys: HashMap<String, JobId>,
    /// Every acknowledged lease of each job, in the order acknowledged: (token, attempt).
    leases: BTreeMap<JobId, Vec<(u64, u32)>>,
    /// The deadline the latest heartbeat of each lease set.
    heartbeats: BTreeMap<(JobId, u64), i64>,
    /// The token of each job's acknowledged completion.
    completed: BTreeMap<JobId, u64>,
    failed: Vec<(JobId, u64, JobState)>,
    /// The largest fencing token acknowledged in the rounds absorbed so far.
    token_max: u64,
    ops: usize,
    /// Leases of a job that had been leased before: deliveries after an expiry or a failure.
    redeliveries: usize,
}

impl AckLog {
    /// Adds one round's lines, checking what can be checked from the lines alone: fencing tokens
    /// above every token of earlier rounds and increasing per job, no lease of a completed job,
    /// one job per idempotency key.
    fn absorb(&mut self, round: u64, lines: &[AckLine]) -> Result<(), String> {
        let before = self.token_max;
        for line in lines {
            self.ops += 1;
            match line {
                AckLine::Insert { id, key, payload } => {
                    if let Some(old) = self.inserted.insert(*id, payload.clone())
                        && old != *payload
                    {
                        return Err(format!("job {id} was acknowledged with payload {old} and later with {payload}"));
                    }
                    if let Some(key) = key {
                        let first = *self.keys.entry(key.clone()).or_insert(*id);
                        if first != *id {
                            return Err(format!("idempotency key {key} gave job {first} and later job {id}"));
                        }
                    }
                }
                AckLine::Lease { id, token, attempt } => {
                    if *token <= before {
                        return Err(format!(
                            "round {round}: job {id} was leased with token {token}, not above {before}, the largest \
                             token acknowledged before this restart"
                        ));
                    }
                    if let Some(done) = self.completed.get(id) {
                        return Err(format!(
                            "job {id}, completed under token {done}, was delivered again (token {token}, attempt {attempt})"
                        ));
                    }
                    let held = self.leases.entry(*id).or_default();
                    if let Some(&(last, _)) = held.last() {
                        if last >= *token {
                            return Err(format!("job {id}: lease token {token} came after token {last}"));
                        }
                        self.redeliveries += 1;
                    }
                    held.push((*token, *attempt));
                    self.token_max = self.token_max.max(*token);
                }
                AckLine::Heartbeat { id, token, deadline } => {
                    self.lease_known(*id, *token)?;
                    self.heartbeats.insert((*id, *token), *deadline);
                }
                AckLine::Complete { id, token } => {
                    self.lease_known(*id, *token)?;
                    if let Some(first) = self.completed.insert(*id, *token) {
                        return Err(format!("job {id} was completed twice, under tokens {first} and {token}"));
                    }
                }
                AckLine::Fail { id, token, state } => {
                    self.lease_known(*id, *token)?;
                    if !matches!(state, JobState::Retrying | JobState::Dead | JobState::Cancelled) {
                        return Err(format!("job {id}: a failure under token {token} left it {state}"));
                    }
                    self.failed.push((*id, *token, *state));
                }
            }
        }
        Ok(())
    }

    fn lease_known(&self, id: JobId, token: u64) -> Result<(), String> {
        let known = self.leases.get(&id).is_some_and(|l| l.iter().any(|&(t, _)| t == token));
        if known {
            Ok(())
        } else {
            Err(format!("job {id}: an ack under token {token}, which no acknowledged lease gave"))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Checking a recovered store

async fn all_jobs(store: &EmbeddedStore) -> BTreeMap<JobId, Job> {
    let mut out = BTreeMap::new();
    let mut after = None;
    loop {
        let page = store
            .job_list(JobList { filter: JobFilter::default(), after, limit: 1_000, newest_first: false })
            .await
            .expect("list jobs");
        for summary in &page.jobs {
            let job = store.job_get(summary.id).await.expect("get a job").expect("a listed job exists");
            out.insert(job.id, job);
        }
        match page.next {
            Some(next) => after = Some(next),
            None => return out,
        }
    }
}

async fn ids_in_state(store: &EmbeddedStore, state: JobState) -> Vec<JobId> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let filter = JobFilter { state: Some(state), ..JobFilter::default() };
        let page =
            store.job_list(JobList { filter, after, limit: 1_000, newest_first: false }).await.expect("list jobs");
        out.extend(page.jobs.iter().filter(|s| s.state == state).map(|s| s.id));
        match page.next {
            Some(next) => after = Some(next),
            None => return out,
        }
    }
}

/// Checks the recovered store against everything acknowledged; returns the number of jobs.
async fn verify(store: &EmbeddedStore, log: &AckLog) -> Result<usize, Vec<String>> {
    let jobs = all_jobs(store).await;
    let mut problems = Vec::new();
    let has = |job: &Job, kind: HistoryKind, token: u64| {
        job.history.iter().find(|h| h.kind == kind && h.token == Some(FencingToken(token))).cloned()
    };

    // Accepted means durable.
    for (id, payload) in &log.inserted {
        match jobs.get(id) {
            None => problems.push(format!("job {id} was acknowledged as inserted but is gone")),
            Some(job) if job.payload.as_bytes() != payload.as_bytes() => {
                problems.push(format!("job {id}: payload {:?}, acknowledged with {payload}", job.payload))
            }
            Some(_) => {}
        }
    }
    for (id, leases) in &log.leases {
        let Some(job) = jobs.get(id) else {
            problems.push(format!("job {id} was leased but is gone"));
            continue;
        };
        for &(token, attempt) in leases {
            match has(job, HistoryKind::Leased, token) {
                Some(entry) if entry.attempt == attempt => {}
                found => problems.push(format!(
                    "job {id}: the acknowledged lease with token {token} (attempt {attempt}) is not in its history \
                     as such ({found:?})"
                )),
            }
        }
    }
    for (&(id, token), &deadline) in &log.heartbeats {
        if let Some(lease) = jobs.get(&id).and_then(|j| j.status.lease.as_ref())
            && lease.token.0 == token
            && lease.deadline.0 < deadline
        {
            problems.push(format!(
                "job {id}: lease {token} ends at {}, before the acknowledged heartbeat's deadline {deadline}",
                lease.deadline
            ));
        }
    }
    // An accepted completion is final.
    for (&id, &token) in &log.completed {
        let Some(job) = jobs.get(&id) else { continue };
        if job.status.state != JobState::Completed || has(job, HistoryKind::Completed, token).is_none() {
            problems.push(format!(
                "job {id} was acknowledged as completed under token {token} but is {} with history {:?}",
                job.status.state, job.history
            ));
        }
    }
    for &(id, token, state) in &log.failed {
        let Some(job) = jobs.get(&id) else { continue };
        match has(job, HistoryKind::Failed, token) {
            Some(entry) if entry.state == state => {}
            found => problems.push(format!(
                "job {id}: the acknowledged failure under token {token} (to {state}) is not in its history ({found:?})"
            )),
        }
    }
    // Each job's history is a legal life, so a second delivery follows an expiry or a failure.
    for job in jobs.values() {
        if let Err(e) = check_history(job, true) {
            problems.push(format!("job {}: {e}", job.id));
        }
    }
    // A batch insert is all or nothing: count the unkeyed jobs of each batch.
    let mut batches: HashMap<String, (u64, u64)> = HashMap::new();
    for job in jobs.values() {
        if let Some((batch, of)) = batch_of(job.payload.as_bytes()) {
            batches.entry(batch).or_insert((of, 0)).1 += 1;
        }
    }
    for (batch, (of, found)) in batches {
        if of != found {
            problems.push(format!("batch {batch} held {of} unkeyed jobs but {found} were recovered"));
        }
    }
    problems.extend(check_counts(store, &jobs).await);
    if problems.is_empty() { Ok(jobs.len()) } else { Err(problems) }
}

/// Every job is in exactly one state: the per-state listings partition the jobs, and each
/// queue's counts are a count of its jobs by state.
async fn check_counts(store: &EmbeddedStore, jobs: &BTreeMap<JobId, Job>) -> Vec<String> {
    let mut problems = Vec::new();
    let mut counted: BTreeMap<QueueName, [u64; dray_core::JobState::ALL.len()]> = BTreeMap::new();
    for job in jobs.values() {
        counted.entry(job.queue.clone()).or_default()[job.status.state.index()] += 1;
    }
    for stats in store.queue_list().await.expect("list queues") {
        let counts = counted.remove(&stats.config.name).unwrap_or_default();
        if stats.counts != counts {
            problems.push(format!(
                "queue {}: stats count {:?} but its jobs are {counts:?}",
                stats.config.name, stats.counts
            ));
        }
    }
    for queue in counted.keys() {
        problems.push(format!("queue {queue} holds jobs but is not listed"));
    }
    for state in JobState::ALL {
        let listed = ids_in_state(store, state).await;
        let expected: Vec<JobId> = jobs.values().filter(|j| j.status.state == state).map(|j| j.id).collect();
        if listed != expected {
            problems
                .push(format!("listing {state} jobs gives {listed:?}, but the jobs in that state are {expected:?}"));
        }
    }
    problems
}

/// `(batch, size)` from an unkeyed payload: `{"run":"..","p":0,"b":3,"of":5,"i":2}`.
fn batch_of(payload: &[u8]) -> Option<(String, u64)> {
    let text = std::str::from_utf8(payload).ok()?.strip_prefix('{')?.strip_suffix('}')?;
    let field = |name: &str| {
        text.split(',').find_map(|kv| kv.strip_prefix(&format!("\"{name}\":"))).map(|v| v.trim_matches('"'))
    };
    let batch = format!("{}/{}/{}", field("run")?, field("p")?, field("b")?);
    Some((batch, field("of")?.parse().ok()?))
}
