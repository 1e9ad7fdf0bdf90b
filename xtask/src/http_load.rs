//! The workloads of `cargo xtask bench http`: load generators and workers that run in this
//! process (tokio, one worker thread per core) and talk to a `dray serve` process over HTTP with
//! the project's own SDK (`dray_client`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use dray_client::api::{AckBatch, AckItem, AckOutcome, CompleteRequest, LeaseRequest};
use dray_client::{Client, Enqueue, JobContext, Worker};
use serde_json::value::RawValue;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::http_args::{BATCH_JOBS, HttpOptions};
use crate::http_server::{Profile, Server};
use crate::machine;

/// The one queue every workload uses.
pub const QUEUE: &str = "bench";
/// Long-poll wait of every lease request.
const LEASE_WAIT_MS: u64 = 1_000;
/// After the window of `single`, how long to wait for the jobs sent in it to start.
const SINGLE_DRAIN: Duration = Duration::from_secs(5);

/// What one run measured: named figures, and the server's threads over the window.
#[derive(Debug, Default)]
pub struct RunResult {
    pub figures: BTreeMap<&'static str, f64>,
    /// (thread name, CPU seconds, seconds runnable but waiting for a core), most CPU first.
    pub server_threads: Vec<(String, f64, f64)>,
}

impl RunResult {
    fn set(&mut self, key: &'static str, value: f64) {
        self.figures.insert(key, value);
    }

    pub fn get(&self, key: &str) -> f64 {
        self.figures.get(key).copied().unwrap_or(f64::NAN)
    }
}

/// One tokio worker thread per core: the generator, the workers and the server share the cores.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build()?)
}

fn client(server: &Server) -> anyhow::Result<Client> {
    Client::new(server.url.clone()).context("client")
}

/// A small JSON payload (~100 B) that is different for every job, carrying `seq` first.
fn payload(seq: u64, lane: usize) -> Box<RawValue> {
    let s = format!(
        r#"{{"seq":{seq},"lane":{lane},"kind":"email.send","to":"user-{:06}@example.com","template":"welcome"}}"#,
        seq % 1_000_000
    );
    RawValue::from_string(s).expect("valid JSON")
}

/// The `seq` of a payload built by [`payload`], read without a JSON parser.
fn payload_seq(payload: &RawValue) -> Option<u64> {
    let rest = payload.get().strip_prefix(r#"{"seq":"#)?;
    let end = rest.find(|c: char| !c.is_ascii_digit())?;
    rest[..end].parse().ok()
}

/// CPU and thread readings of the server and of this process at one instant.
struct Probe {
    at: Instant,
    server_cpu_s: f64,
    server_sys_s: f64,
    server_threads: BTreeMap<String, (f64, f64)>,
    server_waiting_s: f64,
    generator_cpu_s: f64,
    generator_waiting_s: f64,
    machine_busy_s: f64,
}

fn probe(server: &Server) -> Probe {
    let server_threads = server.threads();
    let generator = machine::sched_by_thread();
    let (user, sys, _) = machine::process_cpu();
    let (server_user, server_sys) = server.cpu_user_sys_s();
    Probe {
        at: Instant::now(),
        server_cpu_s: server_user + server_sys,
        server_sys_s: server_sys,
        server_waiting_s: server_threads.values().map(|v| v.1).sum(),
        server_threads,
        generator_cpu_s: user + sys,
        generator_waiting_s: generator.values().map(|v| v.1).sum(),
        machine_busy_s: machine::machine_busy_s(),
    }
}

/// The figures every workload reports about its window; returns the window's length in seconds.
fn window(r: &mut RunResult, server: &Server, p0: &Probe, p1: &Probe, fsyncs: Option<u64>) -> f64 {
    let secs = p1.at.duration_since(p0.at).as_secs_f64();
    r.set("elapsed_s", secs);
    r.set("server_cpu_s", p1.server_cpu_s - p0.server_cpu_s);
    r.set("server_cpu_per_s", (p1.server_cpu_s - p0.server_cpu_s) / secs);
    r.set("server_sys_per_s", (p1.server_sys_s - p0.server_sys_s) / secs);
    r.set("server_waiting_per_s", (p1.server_waiting_s - p0.server_waiting_s) / secs);
    r.set("generator_cpu_per_s", (p1.generator_cpu_s - p0.generator_cpu_s) / secs);
    r.set("generator_waiting_per_s", (p1.generator_waiting_s - p0.generator_waiting_s) / secs);
    let busy = (p1.machine_busy_s - p0.machine_busy_s) / secs;
    r.set("machine_busy_per_s", busy);
    let ours = (p1.server_cpu_s - p0.server_cpu_s + p1.generator_cpu_s - p0.generator_cpu_s) / secs;
    r.set("rest_cpu_per_s", (busy - ours).max(0.0));
    r.set("server_rss_mib", server.rss_kib() as f64 / 1024.0);
    if let Some(n) = fsyncs {
        r.set("fsyncs", n as f64);
        r.set("fsyncs_per_s", n as f64 / secs);
    }
    let mut threads: Vec<(String, f64, f64)> = machine::sched_diff(&p0.server_threads, &p1.server_threads)
        .into_iter()
        .map(|(name, (run, wait))| (name, run, wait))
        .collect();
    threads.sort_by(|a, b| b.1.total_cmp(&a.1));
    r.server_threads = threads;
    secs
}

/// Waits for the perf counter started at the window's start (it ends with the window).
async fn fsyncs_of(count: Option<crate::http_server::FsyncCount>) -> Option<u64> {
    let count = count?;
    tokio::task::spawn_blocking(move || count.finish()).await.ok().flatten()
}

fn profile_start(server: &Server, o: &HttpOptions, out: Option<&Path>) -> anyhow::Result<Option<Profile>> {
    out.map(|out| server.record_profile(Duration::from_secs_f64(o.duration_s), out)).transpose()
}

async fn profile_end(profile: Option<Profile>) -> anyhow::Result<()> {
    match profile {
        Some(p) => tokio::task::spawn_blocking(move || p.finish()).await.context("wait for perf")?,
        None => Ok(()),
    }
}

/// Completed jobs of the queue, as the server counts them.
async fn server_completed(client: &Client) -> anyhow::Result<u64> {
    Ok(client.queue(QUEUE).await.context("GET /v1/queues/bench")?.counts.completed)
}

// ---------------------------------------------------------------------------------------------
// batch

/// Counters of the batch workload; sampled at the start and end of the window.
#[derive(Debug, Default)]
struct BatchCounters {
    enqueued: AtomicU64,
    /// Completions the server accepted (raw) or handler calls (sdk): what frees backlog.
    done: AtomicU64,
    enqueue_ns: AtomicU64,
    enqueues: AtomicU64,
    lease_ns: AtomicU64,
    leases: AtomicU64,
    leased: AtomicU64,
    ack_ns: AtomicU64,
    acks: AtomicU64,
    refused: AtomicU64,
    error: Mutex<Option<String>>,
}

impl BatchCounters {
    fn fail(&self, stop: &AtomicBool, e: anyhow::Error) {
        let mut error = self.error.lock().unwrap_or_else(|p| p.into_inner());
        error.get_or_insert_with(|| format!("{e:#}"));
        stop.store(true, Relaxed);
    }

    fn error(&self) -> Option<String> {
        self.error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

fn ns_since(t: Instant) -> u64 {
    t.elapsed().as_nanos() as u64
}

async fn producer(client: Client, lane: usize, backlog: u64, c: Arc<BatchCounters>, stop: Arc<AtomicBool>) {
    let mut seq = 0u64;
    while !stop.load(Relaxed) {
        // A closed loop around the backlog: enqueue no faster than jobs are done, so the window
        // measures a steady state instead of a queue that grows.
        if c.enqueued.load(Relaxed).saturating_sub(c.done.load(Relaxed)) >= backlog {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        let jobs: Vec<Enqueue> = (0..BATCH_JOBS)
            .map(|_| {
                seq += 1;
                Enqueue::from_json(QUEUE, payload(seq, lane))
            })
            .collect();
        let t = Instant::now();
        match client.enqueue_batch(jobs).await {
            Ok(r) => {
                c.enqueue_ns.fetch_add(ns_since(t), Relaxed);
                c.enqueues.fetch_add(1, Relaxed);
                c.enqueued.fetch_add(r.jobs.len() as u64, Relaxed);
            }
            Err(e) => return c.fail(&stop, anyhow::Error::new(e).context("POST /v1/jobs/batch")),
        }
    }
}

/// The maximum-throughput worker: lease up to 1000, complete them all in one ack, repeat.
async fn raw_worker(client: Client, lane: usize, c: Arc<BatchCounters>, stop: Arc<AtomicBool>) {
    let worker = format!("bench-raw-{lane}");
    while !stop.load(Relaxed) {
        let request = LeaseRequest {
            queues: vec![QUEUE.into()],
            worker: worker.clone(),
            count: Some(BATCH_JOBS),
            lease_ms: None,
            wait_ms: Some(LEASE_WAIT_MS),
        };
        let t = Instant::now();
        let leased = match client.lease(request).await {
            Ok(r) => r.jobs,
            Err(e) => return c.fail(&stop, anyhow::Error::new(e).context("POST /v1/lease")),
        };
        c.lease_ns.fetch_add(ns_since(t), Relaxed);
        c.leases.fetch_add(1, Relaxed);
        c.leased.fetch_add(leased.len() as u64, Relaxed);
        if leased.is_empty() {
            continue;
        }
        let acks: Vec<AckItem> = leased
            .into_iter()
            .map(|j| AckItem {
                job: j.id,
                lease_id: j.lease_id,
                outcome: AckOutcome::Complete,
                result: None,
                error: None,
                retryable: None,
                retry_after_ms: None,
                rate_limited: false,
            })
            .collect();
        let n = acks.len() as u64;
        let t = Instant::now();
        match client.ack(AckBatch { acks }).await {
            Ok(r) => {
                c.ack_ns.fetch_add(ns_since(t), Relaxed);
                c.acks.fetch_add(1, Relaxed);
                let ok = r.results.iter().filter(|r| r.acked.is_some()).count() as u64;
                c.done.fetch_add(ok, Relaxed);
                c.refused.fetch_add(n - ok, Relaxed);
            }
            Err(e) => return c.fail(&stop, anyhow::Error::new(e).context("POST /v1/ack")),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct BatchReading {
    enqueued: u64,
    done: u64,
    enqueue_ns: u64,
    enqueues: u64,
    lease_ns: u64,
    leases: u64,
    leased: u64,
    ack_ns: u64,
    acks: u64,
    refused: u64,
}

impl BatchCounters {
    fn read(&self) -> BatchReading {
        BatchReading {
            enqueued: self.enqueued.load(Relaxed),
            done: self.done.load(Relaxed),
            enqueue_ns: self.enqueue_ns.load(Relaxed),
            enqueues: self.enqueues.load(Relaxed),
            lease_ns: self.lease_ns.load(Relaxed),
            leases: self.leases.load(Relaxed),
            leased: self.leased.load(Relaxed),
            ack_ns: self.ack_ns.load(Relaxed),
            acks: self.acks.load(Relaxed),
            refused: self.refused.load(Relaxed),
        }
    }
}

/// `batch`: producers of 1000-job batches and either raw lease/ack loops or the SDK's Worker.
pub fn batch(server: &Server, o: &HttpOptions, sdk: bool, profile: Option<&Path>) -> anyhow::Result<RunResult> {
    let rt = runtime()?;
    let c = Arc::new(BatchCounters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let result = rt.block_on(async {
        let client = client(server)?;
        let mut tasks = JoinSet::new();
        for lane in 0..o.producers {
            tasks.spawn(producer(client.clone(), lane, o.backlog, c.clone(), stop.clone()));
        }
        let mut sdk_worker = None;
        if sdk {
            let done = c.clone();
            let mut builder = Worker::builder(client.clone());
            if let Some(n) = o.sdk_ack_batch {
                builder = builder.ack_batch_max(n);
            }
            let worker = builder
                .worker_id("bench-sdk")
                .queue(QUEUE, move |ctx: JobContext| {
                    let done = done.clone();
                    async move {
                        drop(ctx);
                        done.done.fetch_add(1, Relaxed);
                        Ok(None)
                    }
                })
                .concurrency(o.sdk_concurrency)
                .lease_wait(Duration::from_millis(LEASE_WAIT_MS))
                .build()
                .context("build the SDK worker")?;
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let run = tokio::spawn(worker.run(async move {
                let _ = rx.await;
            }));
            sdk_worker = Some((tx, run));
        } else {
            for lane in 0..o.workers {
                tasks.spawn(raw_worker(client.clone(), lane, c.clone(), stop.clone()));
            }
        }

        tokio::time::sleep(Duration::from_secs_f64(o.warmup_s)).await;
        let (completed0, r0, p0) = (server_completed(&client).await?, c.read(), probe(server));
        let fsyncs = if o.count_fsyncs { server.count_fsyncs(Duration::from_secs_f64(o.duration_s)) } else { None };
        let profile = profile_start(server, o, profile)?;
        tokio::time::sleep(Duration::from_secs_f64(o.duration_s)).await;
        let (completed1, r1, p1) = (server_completed(&client).await?, c.read(), probe(server));
        let fsyncs = fsyncs_of(fsyncs).await;
        profile_end(profile).await?;

        stop.store(true, Relaxed);
        let mut sdk_report = None;
        if let Some((tx, run)) = sdk_worker {
            let _ = tx.send(());
            match tokio::time::timeout(Duration::from_secs(15), run).await {
                Ok(Ok(Ok(report))) => sdk_report = Some(report),
                Ok(Ok(Err(e))) => bail!("the SDK worker stopped with an error: {e}"),
                Ok(Err(e)) => bail!("the SDK worker panicked: {e}"),
                Err(_) => bail!("the SDK worker did not shut down within 15 s"),
            }
        }
        // Raw workers may sit in a long-poll; the server is killed next, so nothing to clean up.
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        if let Some(e) = c.error() {
            bail!("{e}");
        }

        let mut r = RunResult::default();
        let secs = window(&mut r, server, &p0, &p1, fsyncs);
        let completed = completed1.saturating_sub(completed0) as f64;
        r.set("jobs", completed);
        r.set("jobs_per_s", completed / secs);
        r.set("server_cpu_s_per_100k", (p1.server_cpu_s - p0.server_cpu_s) / completed * 100_000.0);
        r.set("generator_cpu_s_per_100k", (p1.generator_cpu_s - p0.generator_cpu_s) / completed * 100_000.0);
        r.set("enqueued_per_s", (r1.enqueued - r0.enqueued) as f64 / secs);
        if let Some(f) = fsyncs {
            r.set("jobs_per_fsync", completed / (f.max(1) as f64));
        }
        let mean_ms = |ns: u64, n: u64| ns as f64 / n.max(1) as f64 / 1e6;
        r.set("enqueue_batch_ms", mean_ms(r1.enqueue_ns - r0.enqueue_ns, r1.enqueues - r0.enqueues));
        if sdk {
            r.set("handled_per_s", (r1.done - r0.done) as f64 / secs);
            if let Some(report) = sdk_report {
                r.set("sdk_lease_requests", report.lease_requests as f64);
                r.set("sdk_jobs_per_lease", report.jobs_leased as f64 / report.lease_requests.max(1) as f64);
                r.set("sdk_jobs_per_ack", report.jobs_completed as f64 / report.ack_requests.max(1) as f64);
                r.set("sdk_acks_refused", report.acks_refused as f64);
            }
        } else {
            r.set("local_completed_per_s", (r1.done - r0.done) as f64 / secs);
            r.set("lease_ms", mean_ms(r1.lease_ns - r0.lease_ns, r1.leases - r0.leases));
            r.set("jobs_per_lease", (r1.leased - r0.leased) as f64 / (r1.leases - r0.leases).max(1) as f64);
            r.set("ack_ms", mean_ms(r1.ack_ns - r0.ack_ns, r1.acks - r0.acks));
            r.set("acks_refused", (r1.refused - r0.refused) as f64);
        }
        Ok(r)
    });
    // Open connections and long-polls go with the runtime.
    rt.shutdown_timeout(Duration::from_secs(1));
    result
}

// ---------------------------------------------------------------------------------------------
// single

/// Instants of each job of `single`, in nanoseconds since the run's base instant plus one (0:
/// not yet), indexed by the job's sequence number.
struct Stamps {
    sent: Vec<AtomicU64>,
    replied: Vec<AtomicU64>,
    started: Vec<AtomicU64>,
}

impl Stamps {
    fn new(n: usize) -> Stamps {
        let v = || (0..n).map(|_| AtomicU64::new(0)).collect();
        Stamps { sent: v(), replied: v(), started: v() }
    }
}

/// In `Stamps::replied`: the enqueue failed.
const FAILED: u64 = u64::MAX;

fn stamp(base: Instant) -> u64 {
    base.elapsed().as_nanos() as u64 + 1
}

#[derive(Debug, Default)]
struct SingleCounters {
    enqueue_errors: AtomicU64,
    leases: AtomicU64,
    leases_empty: AtomicU64,
    started: AtomicU64,
    redelivered: AtomicU64,
    completed: AtomicU64,
    error: Mutex<Option<String>>,
}

async fn poller(client: Client, lane: usize, base: Instant, stamps: Arc<Stamps>, c: Arc<SingleCounters>) {
    let worker = format!("bench-poller-{lane}");
    loop {
        let request = LeaseRequest {
            queues: vec![QUEUE.into()],
            worker: worker.clone(),
            count: Some(1),
            lease_ms: None,
            wait_ms: Some(LEASE_WAIT_MS),
        };
        let jobs = match client.lease(request).await {
            Ok(r) => r.jobs,
            Err(e) => {
                c.error.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_with(|| format!("POST /v1/lease: {e}"));
                return;
            }
        };
        let at = stamp(base);
        c.leases.fetch_add(1, Relaxed);
        if jobs.is_empty() {
            c.leases_empty.fetch_add(1, Relaxed);
        }
        for job in jobs {
            match payload_seq(&job.payload).and_then(|s| stamps.started.get(s as usize)) {
                Some(slot) => {
                    if slot.compare_exchange(0, at, Relaxed, Relaxed).is_ok() {
                        c.started.fetch_add(1, Relaxed);
                    } else {
                        c.redelivered.fetch_add(1, Relaxed);
                    }
                }
                None => {
                    c.error.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_with(|| {
                        format!("job {} has a payload without a known seq: {}", job.id, job.payload.get())
                    });
                    return;
                }
            }
            // Completed in a task of its own, so the poller is back in a long-poll at once and the
            // ack's fsync does not hold up the next start.
            let (client, c) = (client.clone(), c.clone());
            tokio::spawn(async move {
                match client.complete(job.id, CompleteRequest { lease_id: job.lease_id, result: None }).await {
                    Ok(_) => {
                        c.completed.fetch_add(1, Relaxed);
                    }
                    Err(e) => {
                        c.error
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get_or_insert_with(|| format!("POST /v1/jobs/{}/complete: {e}", job.id));
                    }
                }
            });
        }
    }
}

/// Value at quantile `q` of sorted values.
fn quantile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64
}

/// `single`: one job per request at `rate` jobs/s, open loop; enqueue-to-start latency.
pub fn single(server: &Server, o: &HttpOptions, rate: u64, profile: Option<&Path>) -> anyhow::Result<RunResult> {
    let rt = runtime()?;
    let handle = rt.handle().clone();
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let first_measured = (o.warmup_s * rate as f64).ceil() as usize;
    let total = ((o.warmup_s + o.duration_s) * rate as f64).ceil() as usize;
    let stamps = Arc::new(Stamps::new(total));
    let c = Arc::new(SingleCounters::default());
    let client = rt.block_on(async { client(server) })?;

    // Pollers first, so that they are waiting when the first job comes.
    let mut pollers = JoinSet::new();
    let base = Instant::now();
    for lane in 0..o.pollers {
        pollers.spawn_on(poller(client.clone(), lane, base, stamps.clone(), c.clone()), &handle);
    }
    rt.block_on(async { tokio::time::sleep(Duration::from_millis(200)).await });

    // The pacer: a plain thread that sleeps until each job's due instant and hands the send to
    // the runtime. Due instants do not depend on replies (open loop); only the cap on requests
    // in flight can hold it back, and then it counts how late it was.
    let inflight = Arc::new(Semaphore::new(o.inflight));
    let start = Instant::now() + Duration::from_millis(50);
    let pacer = {
        let (stamps, c, client, handle) = (stamps.clone(), c.clone(), client.clone(), handle.clone());
        std::thread::Builder::new().name("bench-pacer".into()).spawn(move || {
            let mut late_max = Duration::ZERO;
            let mut late_1ms = 0u64;
            for seq in 0..total {
                let due = start + interval * seq as u32;
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                let permit = match inflight.clone().try_acquire_owned() {
                    Ok(p) => p,
                    Err(_) => handle.block_on(inflight.clone().acquire_owned()).expect("never closed"),
                };
                let late = Instant::now().saturating_duration_since(due);
                if seq >= first_measured {
                    late_max = late_max.max(late);
                    late_1ms += u64::from(late > Duration::from_millis(1));
                }
                let (stamps, c, client) = (stamps.clone(), c.clone(), client.clone());
                handle.spawn(async move {
                    let job = Enqueue::from_json(QUEUE, payload(seq as u64, 0));
                    stamps.sent[seq].store(stamp(base), Relaxed);
                    match client.enqueue(job).await {
                        Ok(_) => stamps.replied[seq].store(stamp(base), Relaxed),
                        Err(_) => {
                            stamps.replied[seq].store(FAILED, Relaxed);
                            c.enqueue_errors.fetch_add(1, Relaxed);
                        }
                    }
                    drop(permit);
                });
            }
            (late_max, late_1ms)
        })?
    };

    let result = rt.block_on(async {
        let window_start = start + Duration::from_secs_f64(o.warmup_s);
        tokio::time::sleep_until(window_start.into()).await;
        let (leases0, empty0, started0, completed0, p0) = (
            c.leases.load(Relaxed),
            c.leases_empty.load(Relaxed),
            c.started.load(Relaxed),
            c.completed.load(Relaxed),
            probe(server),
        );
        let fsyncs = if o.count_fsyncs { server.count_fsyncs(Duration::from_secs_f64(o.duration_s)) } else { None };
        let profile = profile_start(server, o, profile)?;
        tokio::time::sleep_until((window_start + Duration::from_secs_f64(o.duration_s)).into()).await;
        let (leases1, empty1, started1, completed1, p1) = (
            c.leases.load(Relaxed),
            c.leases_empty.load(Relaxed),
            c.started.load(Relaxed),
            c.completed.load(Relaxed),
            probe(server),
        );
        let fsyncs = fsyncs_of(fsyncs).await;
        profile_end(profile).await?;
        let (late_max, late_1ms) = tokio::task::spawn_blocking(move || pacer.join())
            .await
            .context("join the pacer")?
            .map_err(|_| anyhow::anyhow!("the pacer thread panicked"))?;

        // Let the jobs sent in the window start.
        let drain_until = Instant::now() + SINGLE_DRAIN;
        loop {
            let waiting = (first_measured..total)
                .any(|i| stamps.started[i].load(Relaxed) == 0 && stamps.replied[i].load(Relaxed) != FAILED);
            if !waiting || Instant::now() >= drain_until {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        pollers.abort_all();
        while pollers.join_next().await.is_some() {}
        if let Some(e) = c.error.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            bail!("{e}");
        }

        let mut r = RunResult::default();
        let secs = window(&mut r, server, &p0, &p1, fsyncs);
        let (mut latencies, mut rtts) = (Vec::new(), Vec::new());
        let (mut accepted, mut not_started, mut first_sent, mut last_sent) = (0u64, 0u64, u64::MAX, 0u64);
        for i in first_measured..total {
            let sent = stamps.sent[i].load(Relaxed);
            let replied = stamps.replied[i].load(Relaxed);
            let started = stamps.started[i].load(Relaxed);
            if sent == 0 {
                continue;
            }
            first_sent = first_sent.min(sent);
            last_sent = last_sent.max(sent);
            if replied != 0 && replied != FAILED {
                accepted += 1;
                rtts.push(replied - sent);
            }
            if started != 0 {
                latencies.push(started.saturating_sub(sent));
            } else if replied != FAILED {
                not_started += 1;
            }
        }
        latencies.sort_unstable();
        rtts.sort_unstable();
        let span_s = (last_sent.saturating_sub(first_sent)) as f64 / 1e9;
        let ms = |ns: f64| ns / 1e6;
        r.set("offered_per_s", rate as f64);
        r.set("jobs", (total - first_measured) as f64);
        r.set("accepted_per_s", accepted.saturating_sub(1) as f64 / span_s.max(1e-9));
        r.set("started_per_s", (started1 - started0) as f64 / secs);
        r.set("completed_per_s", (completed1 - completed0) as f64 / secs);
        r.set("enqueue_errors", c.enqueue_errors.load(Relaxed) as f64);
        r.set("not_started", not_started as f64);
        r.set("redelivered", c.redelivered.load(Relaxed) as f64);
        r.set("p50_ms", ms(quantile(&latencies, 0.50)));
        r.set("p99_ms", ms(quantile(&latencies, 0.99)));
        r.set("p999_ms", ms(quantile(&latencies, 0.999)));
        r.set("max_ms", ms(quantile(&latencies, 1.0)));
        r.set("enqueue_rtt_p50_ms", ms(quantile(&rtts, 0.50)));
        r.set("enqueue_rtt_p99_ms", ms(quantile(&rtts, 0.99)));
        r.set("pacer_late_max_ms", late_max.as_secs_f64() * 1e3);
        r.set("pacer_late_over_1ms", late_1ms as f64);
        let leases = (leases1 - leases0) as f64;
        r.set("lease_replies_per_s", leases / secs);
        r.set("empty_lease_replies_per_s", (empty1 - empty0) as f64 / secs);
        let started = (started1 - started0).max(1) as f64;
        r.set("server_cpu_ms_per_job", (p1.server_cpu_s - p0.server_cpu_s) / started * 1e3);
        r.set("generator_cpu_ms_per_job", (p1.generator_cpu_s - p0.generator_cpu_s) / started * 1e3);
        if let Some(f) = fsyncs {
            r.set("jobs_per_fsync", rate as f64 * secs / f.max(1) as f64);
        }
        Ok(r)
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_carries_its_seq() {
        let p = payload(123_456, 3);
        assert_eq!(payload_seq(&p), Some(123_456));
        let v: serde_json::Value = serde_json::from_str(p.get()).unwrap();
        assert_eq!(v["lane"], 3);
        assert!(p.get().len() < 120, "{}", p.get());
        assert_eq!(payload_seq(&RawValue::from_string(r#"{"x":1}"#.into()).unwrap()), None);
    }

    #[test]
    fn quantiles_pick_the_value_at_or_above() {
        let v: Vec<u64> = (1..=1000).collect();
        assert_eq!(quantile(&v, 0.5), 500.0);
        assert_eq!(quantile(&v, 0.99), 990.0);
        assert_eq!(quantile(&v, 0.999), 999.0);
        assert_eq!(quantile(&v, 1.0), 1000.0);
        assert!(quantile(&[], 0.5).is_nan());
    }
}
