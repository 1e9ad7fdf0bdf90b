//! `xtask bench driver`: Dray's driver for `cargo xtask bench compare`. It follows the contract
//! every driver of that comparison follows (the peers' are in `bench/peers`, whose README spells
//! the workloads out): the same flags, the same workloads measured the same way, and one JSON
//! object as the last line of stdout. It uses the Rust SDK (`dray_client::Client` to enqueue,
//! `dray_client::Worker` to work), as an application would, so its figures are Dray's as a user
//! gets them.
//!
//! Producers and workers live in this one process, so a job's payload can carry its enqueue time
//! in milliseconds and the handler can subtract it from its own start time on the same clock. The
//! orchestrator runs this as a child process and reads its CPU time from outside, as it does for
//! the Node drivers.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use dray_client::{Client, Enqueue, JobContext, Worker, WorkerReport};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::flags;

pub const BENCH_DRIVER_HELP: &str = "\
xtask bench driver [FLAGS]

Dray's driver for `cargo xtask bench compare` (which starts the servers and runs this for you).
Prints progress on stderr and one JSON object, the run's result, as the last line of stdout; exits
non-zero if a job was lost or a request failed.

Flags (those of every driver; --redis-url and --database-url are accepted and unused):
  --system dray           the only system this driver runs
  --workload W            bulk | steady | single
  --jobs N                bulk: jobs to enqueue (default 100000); single: jobs (default 2000)
  --batch N               bulk: jobs per enqueue call (default 1000)
  --concurrency N         jobs in flight at once over all workers (default 50)
  --producers N           steady: concurrent producer loops (default 4)
  --rate R                steady: offered jobs/s in total; 0 = flat out (default 0)
  --duration-ms D         steady: how long producers run (default 10000)
  --dray-url URL[,URL...] the nodes; producers and workers spread over them round-robin
  --queue NAME            default bench
  -h, --help              this text
";

/// How long a worker's lease request waits for a job on the server. Shutdown drops a waiting
/// lease at once, so this only bounds how long an idle worker holds a request open.
const LEASE_WAIT: Duration = Duration::from_secs(5);
/// After the steady window, how long the backlog may take to drain (the contract's 10 s).
const DRAIN: Duration = Duration::from_secs(10);
/// Steady and single: time for the workers' first lease requests to reach the servers before
/// the clock starts (the peers' drivers wait as long).
const WORKER_SETTLE: Duration = Duration::from_millis(250);
/// Bulk and single: the run fails when no job has started for this long while some are missing.
const STALL: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DriverWorkload {
    Bulk,
    Steady,
    Single,
}

impl DriverWorkload {
    pub fn name(self) -> &'static str {
        match self {
            DriverWorkload::Bulk => "bulk",
            DriverWorkload::Steady => "steady",
            DriverWorkload::Single => "single",
        }
    }

    pub fn parse(s: &str) -> anyhow::Result<DriverWorkload> {
        match s {
            "bulk" => Ok(DriverWorkload::Bulk),
            "steady" => Ok(DriverWorkload::Steady),
            "single" => Ok(DriverWorkload::Single),
            _ => bail!("--workload must be bulk, steady or single, not `{s}`"),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct DriverOptions {
    pub workload: DriverWorkload,
    pub jobs: u64,
    pub batch: usize,
    pub concurrency: usize,
    pub producers: usize,
    pub rate: u64,
    pub duration_ms: u64,
    pub urls: Vec<String>,
    pub queue: String,
}

impl DriverOptions {
    pub fn parse(argv: &[&str]) -> anyhow::Result<DriverOptions> {
        let (mut system, mut workload, mut jobs) = (None, None, None);
        let mut o = DriverOptions {
            workload: DriverWorkload::Bulk,
            jobs: 0,
            batch: 1000,
            concurrency: 50,
            producers: 4,
            rate: 0,
            duration_ms: 10_000,
            urls: Vec::new(),
            queue: "bench".into(),
        };
        flags::each(argv, |arg| {
            match arg.flag {
                "--system" => system = Some(arg.value()?),
                "--workload" => workload = Some(DriverWorkload::parse(arg.value()?)?),
                "--jobs" => jobs = Some(arg.number::<u64>()?),
                "--batch" => o.batch = arg.number()?,
                "--concurrency" => o.concurrency = arg.number()?,
                "--producers" => o.producers = arg.number()?,
                "--rate" => o.rate = arg.number()?,
                "--duration-ms" => o.duration_ms = arg.number()?,
                "--dray-url" => o.urls = arg.list()?.into_iter().map(|u| u.trim_end_matches('/').to_string()).collect(),
                "--queue" => o.queue = arg.value()?.to_string(),
                // Other systems' connections: part of the common command line, unused here.
                "--redis-url" | "--database-url" => {
                    arg.value()?;
                }
                _ => bail!("unknown flag `{}`", arg.raw),
            }
            Ok(())
        })?;
        match system {
            Some("dray") => {}
            Some(other) => bail!("--system {other}: this driver runs dray only (the others are in bench/peers)"),
            None => bail!("--system dray is required"),
        }
        o.workload = workload.context("--workload is required (bulk, steady or single)")?;
        o.jobs = jobs.unwrap_or(match o.workload {
            DriverWorkload::Single => 2_000,
            _ => 100_000,
        });
        if o.urls.is_empty() {
            bail!("--dray-url is required (one node URL, or several separated by commas)");
        }
        if o.jobs == 0 {
            bail!("--jobs must be at least 1");
        }
        let batch_max = dray_core::Limits::BATCH_JOBS_MAX;
        if !(1..=batch_max).contains(&o.batch) {
            bail!("--batch must be 1 to {batch_max} (the server's jobs per enqueue batch)");
        }
        let concurrency_max = dray_client::CONCURRENCY_MAX;
        if !(o.urls.len()..=concurrency_max * o.urls.len()).contains(&o.concurrency) {
            bail!(
                "--concurrency must be {} to {} (at least one job per node's worker, at most {concurrency_max} per worker)",
                o.urls.len(),
                concurrency_max * o.urls.len()
            );
        }
        if o.producers == 0 {
            bail!("--producers must be at least 1");
        }
        if o.rate > 1_000_000 {
            bail!("--rate must be at most 1000000 jobs/s (0 = flat out)");
        }
        if o.workload == DriverWorkload::Steady && o.rate > 0 && o.rate < o.producers as u64 {
            bail!("--rate {} is below --producers {}: each producer must offer at least 1 job/s", o.rate, o.producers);
        }
        if o.duration_ms < 100 {
            bail!("--duration-ms must be at least 100");
        }
        Ok(o)
    }

    /// Each node's worker gets an equal share of the concurrency (the first ones one more when
    /// it does not divide).
    fn concurrency_of(&self, node: usize) -> usize {
        let n = self.urls.len();
        self.concurrency / n + usize::from(node < self.concurrency % n)
    }
}

/// Milliseconds on a clock that reads like the wall clock but never jumps: the wall time at
/// start plus the monotonic time since. Stamps and start times use it, in one process.
#[derive(Clone, Copy, Debug)]
struct Clock {
    base: Instant,
    base_ms: f64,
}

impl Clock {
    fn new() -> Clock {
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        Clock { base: Instant::now(), base_ms: wall.as_secs_f64() * 1e3 }
    }

    fn ms(&self) -> f64 {
        self.at(Instant::now())
    }

    fn at(&self, instant: Instant) -> f64 {
        self.base_ms + instant.saturating_duration_since(self.base).as_secs_f64() * 1e3
    }
}

/// The contract's payload: the enqueue time and the job's sequence number.
fn payload(t_ms: f64, seq: u64) -> Box<RawValue> {
    RawValue::from_string(format!(r#"{{"t":{t_ms:.3},"i":{seq}}}"#)).expect("valid JSON")
}

/// (t, i) of a [`payload`].
fn payload_read(json: &str) -> Option<(f64, u64)> {
    let v: Value = serde_json::from_str(json).ok()?;
    Some((v.get("t")?.as_f64()?, v.get("i")?.as_u64()?))
}

/// What the handlers saw: each job's starts, and (start, latency) of first starts.
#[derive(Debug, Default)]
struct Seen {
    /// Starts per sequence number (saturating at 255).
    starts: Vec<u8>,
    /// (start ms, enqueue-to-start ms) of every first start.
    samples: Vec<(f64, f64)>,
    /// When the latest handler ran (ms on the run's clock).
    last_ms: f64,
    duplicates: u64,
    bad_payloads: u64,
    /// The first few payloads that were not this run's, for the error message.
    bad_examples: Vec<String>,
}

/// Shared by producers, handlers and the run's control flow.
#[derive(Debug)]
struct Record {
    clock: Clock,
    seen: Mutex<Seen>,
    /// Sequence numbers handed out (the next one).
    issued: AtomicU64,
    /// Jobs whose enqueue the server acknowledged.
    enqueued: AtomicU64,
    /// Jobs refused or whose enqueue failed (their outcome is unknown, so they count as errors).
    enqueue_failed: AtomicU64,
    /// Distinct jobs started.
    started: AtomicU64,
    /// Woken when `started` reaches `target`.
    target: AtomicU64,
    reached: Notify,
    first_error: Mutex<Option<String>>,
    /// Enqueue request latencies (ms) of single.
    requests: Mutex<Vec<f64>>,
}

impl Record {
    fn new(clock: Clock) -> Record {
        Record {
            clock,
            seen: Mutex::new(Seen::default()),
            issued: AtomicU64::new(0),
            enqueued: AtomicU64::new(0),
            enqueue_failed: AtomicU64::new(0),
            started: AtomicU64::new(0),
            target: AtomicU64::new(u64::MAX),
            reached: Notify::new(),
            first_error: Mutex::new(None),
            requests: Mutex::new(Vec::new()),
        }
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn error(&self, e: String) {
        let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            eprintln!("driver: {e}");
            *first = Some(e);
        }
    }

    /// `n` new sequence numbers.
    fn issue(&self, n: u64) -> std::ops::Range<u64> {
        let first = self.issued.fetch_add(n, Relaxed);
        first..first + n
    }

    /// A handler started the job with this payload.
    fn start(&self, json: &str) {
        let now = self.clock.ms();
        let issued = self.issued.load(Relaxed);
        let first = {
            let mut seen = self.seen();
            seen.last_ms = seen.last_ms.max(now);
            let Some((t, seq)) = payload_read(json).filter(|&(_, seq)| seq < issued) else {
                seen.bad_payloads += 1;
                if seen.bad_examples.len() < 3 {
                    seen.bad_examples.push(json.chars().take(200).collect());
                }
                return;
            };
            let i = seq as usize;
            if seen.starts.len() <= i {
                let len = (i + 1).max(seen.starts.len() * 2);
                seen.starts.resize(len, 0);
            }
            seen.starts[i] = seen.starts[i].saturating_add(1);
            if seen.starts[i] == 1 {
                seen.samples.push((now, now - t));
                true
            } else {
                seen.duplicates += 1;
                false
            }
        };
        if first {
            let started = self.started.fetch_add(1, Relaxed) + 1;
            if started >= self.target.load(Relaxed) {
                self.reached.notify_one();
            }
        }
    }

    /// Waits until `n` distinct jobs have started; `false` after `limit` in total, or once no
    /// job started for `stall`.
    async fn wait_started(&self, n: u64, limit: Duration, stall: Duration) -> bool {
        self.target.store(n, Relaxed);
        let until = Instant::now().checked_add(limit);
        let mut last = (self.started.load(Relaxed), Instant::now());
        loop {
            let started = self.started.load(Relaxed);
            if started >= n {
                return true;
            }
            if started != last.0 {
                last = (started, Instant::now());
            }
            if until.is_some_and(|u| Instant::now() >= u) || last.1.elapsed() >= stall {
                return false;
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), self.reached.notified()).await;
        }
    }

    fn backlog(&self) -> u64 {
        self.enqueued.load(Relaxed).saturating_sub(self.started.load(Relaxed))
    }

    /// First starts inside `[from, to)` (ms on the run's clock): their latencies.
    fn latencies_between(&self, from: f64, to: f64) -> Vec<f64> {
        self.seen().samples.iter().filter(|(at, _)| (from..to).contains(at)).map(|(_, l)| *l).collect()
    }
}

/// The result's `*_latency_ms` object: nearest-rank quantiles of `values` (sorted here).
pub fn latency_json(mut values: Vec<f64>) -> Value {
    values.retain(|v| v.is_finite());
    values.sort_by(f64::total_cmp);
    let q = |q: f64| quantile(&values, q).map(|v| (v * 1000.0).round() / 1000.0);
    json!({ "p50": q(0.50), "p99": q(0.99), "p999": q(0.999), "count": values.len() })
}

/// Nearest rank: the smallest value with at least `q` of the values at or below it.
pub fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    Some(sorted[i])
}

/// The workers: one SDK `Worker` per node, sharing the concurrency.
struct Workers {
    stops: Vec<tokio::sync::oneshot::Sender<()>>,
    runs: Vec<tokio::task::JoinHandle<Result<WorkerReport, dray_client::Error>>>,
}

impl Workers {
    fn start(o: &DriverOptions, clients: &[Client], record: &Arc<Record>) -> anyhow::Result<Workers> {
        let (mut stops, mut runs) = (Vec::new(), Vec::new());
        for (node, producer) in clients.iter().enumerate() {
            // A client (connection pool) of its own, as a worker in its own process would have.
            let client = Client::new(producer.base_url()).context("worker client")?;
            let record = record.clone();
            let worker = Worker::builder(client)
                .worker_id(format!("bench-driver-{node}"))
                .queue(o.queue.clone(), move |ctx: JobContext| {
                    // The no-op handler of the contract: note the start, complete.
                    record.start(ctx.payload_json().get());
                    async { Ok(None) }
                })
                .concurrency(o.concurrency_of(node))
                .lease_wait(LEASE_WAIT)
                .build()
                .context("build the SDK worker")?;
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            runs.push(tokio::spawn(worker.run(async move {
                let _ = rx.await;
            })));
            stops.push(tx);
        }
        Ok(Workers { stops, runs })
    }

    /// Stops leasing, lets the handlers finish and the acks go out, and adds up the reports.
    async fn stop(self) -> anyhow::Result<WorkerReport> {
        for tx in self.stops {
            let _ = tx.send(());
        }
        let mut total = WorkerReport::default();
        for run in self.runs {
            let report = match tokio::time::timeout(Duration::from_secs(60), run).await {
                Ok(Ok(Ok(report))) => report,
                Ok(Ok(Err(e))) => bail!("the SDK worker stopped with an error: {e}"),
                Ok(Err(e)) => bail!("the SDK worker panicked: {e}"),
                Err(_) => bail!("the SDK worker did not shut down within 60 s"),
            };
            total.lease_requests += report.lease_requests;
            total.jobs_leased += report.jobs_leased;
            total.jobs_completed += report.jobs_completed;
            total.jobs_failed += report.jobs_failed;
            total.jobs_handed_back += report.jobs_handed_back;
            total.acks_refused += report.acks_refused;
            total.ack_requests += report.ack_requests;
        }
        Ok(total)
    }
}

/// Enqueues `seqs` in one call (one job: `POST /v1/jobs`; more: `POST /v1/jobs/batch`), each
/// payload stamped with the time of the call. Counts the jobs as enqueued or failed.
async fn enqueue(client: &Client, queue: &str, seqs: std::ops::Range<u64>, record: &Record) -> bool {
    let n = seqs.end - seqs.start;
    let t = record.clock.ms();
    let result = if n == 1 {
        client.enqueue(Enqueue::from_json(queue, payload(t, seqs.start))).await.map(|_| ())
    } else {
        let jobs = seqs.map(|seq| Enqueue::from_json(queue, payload(t, seq))).collect();
        client.enqueue_batch(jobs).await.map(|_| ())
    };
    match result {
        Ok(()) => {
            record.enqueued.fetch_add(n, Relaxed);
            true
        }
        Err(e) => {
            record.enqueue_failed.fetch_add(n, Relaxed);
            record.error(format!("enqueue on {} failed: {e}", client.base_url()));
            false
        }
    }
}

/// Connects to every node and checks it answers, before anything is timed.
async fn warm_up(o: &DriverOptions, clients: &[Client]) -> anyhow::Result<()> {
    let mut checks = JoinSet::new();
    // A few requests at once per node, so the pools hold connections before the clock starts.
    for client in clients {
        for _ in 0..o.producers {
            let client = client.clone();
            checks.spawn(
                async move { client.health().await.with_context(|| format!("GET {}/healthz", client.base_url())) },
            );
        }
    }
    while let Some(done) = checks.join_next().await {
        done.context("health check task")??;
    }
    Ok(())
}

/// The result object every workload fills in part of.
fn result_template(o: &DriverOptions) -> Value {
    json!({
        "system": "dray",
        "workload": o.workload.name(),
        "version": env!("CARGO_PKG_VERSION"),
        "config": {
            "client": "dray-client (Rust SDK): Client::enqueue_batch (bulk), Client::enqueue (steady, single), Worker",
            "nodes": o.urls,
            "queue": o.queue,
            "jobs": if o.workload == DriverWorkload::Steady { Value::Null } else { json!(o.jobs) },
            "batch": if o.workload == DriverWorkload::Bulk { json!(o.batch) } else { Value::Null },
            "concurrency": o.concurrency,
            "producers": match o.workload {
                DriverWorkload::Steady => json!(o.producers),
                DriverWorkload::Single => json!(1),
                DriverWorkload::Bulk => json!(1),
            },
            "rate": if o.workload == DriverWorkload::Steady { json!(o.rate) } else { Value::Null },
            "duration_ms": if o.workload == DriverWorkload::Steady { json!(o.duration_ms) } else { Value::Null },
            "payload": "{\"t\": enqueue ms since epoch, \"i\": seq}",
            "handler": "no-op; records start_ms - t",
            "workers": o.urls.len(),
            "connections": "producers share one Client (connection pool) per node; each node's Worker has its own",
            "concurrency_per_worker": (0..o.urls.len()).map(|n| o.concurrency_of(n)).collect::<Vec<_>>(),
            "lease_wait_ms": LEASE_WAIT.as_millis() as u64,
            "ack_batch_max": dray_client::ACK_BATCH_MAX_DEFAULT,
            "ack_linger_ms": dray_client::ACK_LINGER_DEFAULT.as_millis() as u64,
        },
        "jobs": null,
        "enqueue_s": null, "process_s": null, "e2e_s": null,
        "offered_rate": null, "achieved_rate": null, "backlog_start": null, "backlog_end": null, "sustained": null,
        "latency_ms": null,
        "request_latency_ms": null,
        "errors": 0,
        "detail": {},
    })
}

fn round(v: f64, decimals: i32) -> Value {
    if v.is_finite() {
        let f = 10f64.powi(decimals);
        json!((v * f).round() / f)
    } else {
        Value::Null
    }
}

pub fn run(o: &DriverOptions) -> anyhow::Result<()> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()?;
    let outcome = rt.block_on(async {
        let clients = o
            .urls
            .iter()
            .map(|u| Client::new(u.clone()).with_context(|| format!("--dray-url {u}")))
            .collect::<Result<Vec<_>, _>>()?;
        warm_up(o, &clients).await?;
        let record = Arc::new(Record::new(Clock::new()));
        let mut result = result_template(o);
        result["config"]["runtime_threads"] = json!(threads);
        eprintln!("driver: dray {} on {}", o.workload.name(), o.urls.join(","));
        let (report, complete) = match o.workload {
            DriverWorkload::Bulk => bulk(o, &clients, &record, &mut result).await?,
            DriverWorkload::Steady => steady(o, &clients, &record, &mut result).await?,
            DriverWorkload::Single => single(o, &clients, &record, &mut result).await?,
        };
        verify(o, &clients, &record, &report, complete, &mut result).await?;
        anyhow::Ok((result, record))
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    let (result, record) = outcome?;
    println!("{result}");
    let errors = result["errors"].as_u64().unwrap_or(0);
    if errors > 0 {
        let first = record.first_error.lock().unwrap_or_else(|p| p.into_inner()).clone();
        bail!(
            "{errors} errors (jobs lost, run twice or not enqueued){}",
            first.map(|e| format!("; first: {e}")).unwrap_or_default()
        );
    }
    Ok(())
}

/// Checks every acknowledged job ran: started by a handler here, or (a steady run whose backlog
/// outlasted the drain time) still queued on the server; and that the server counts as completed
/// every job a handler ran. Sets the contract's `errors`: jobs lost, run twice, not enqueued,
/// payloads not ours, and for bulk and single jobs that did not run at all.
async fn verify(
    o: &DriverOptions,
    clients: &[Client],
    record: &Record,
    report: &WorkerReport,
    complete: bool,
    result: &mut Value,
) -> anyhow::Result<()> {
    let enqueued = record.enqueued.load(Relaxed);
    let started = record.started.load(Relaxed);
    let enqueue_failed = record.enqueue_failed.load(Relaxed);
    // Several nodes share one database: any of them counts for all.
    let queue = clients[0].queue(&o.queue).await.with_context(|| format!("GET /v1/queues/{}", o.queue))?;
    let c = &queue.counts;
    let still_queued = c.available + c.scheduled + c.retrying + c.running;
    let seen = record.seen();
    let not_run = enqueued.saturating_sub(started);
    let lost = not_run.saturating_sub(still_queued);
    // The workers have stopped and flushed their acks: every job a handler ran is completed.
    let unacked = started.saturating_sub(c.completed);
    let unfinished = if complete || o.workload == DriverWorkload::Steady { 0 } else { not_run - lost };
    let errors = lost + unacked + seen.duplicates + seen.bad_payloads + enqueue_failed + unfinished;
    if lost > 0 {
        record.error(format!("{lost} acknowledged jobs never ran and are no longer queued (lost)"));
    }
    if unacked > 0 {
        record.error(format!("the server counts {} completed jobs, the handlers ran {started}", c.completed));
    }
    if seen.duplicates > 0 {
        record.error(format!("{} jobs ran more than once", seen.duplicates));
    }
    if seen.bad_payloads > 0 {
        record.error(format!("handlers saw payloads this run did not enqueue: {:?}", seen.bad_examples));
    }
    if unfinished > 0 {
        record.error(format!("{unfinished} of {enqueued} jobs did not run (no job started for {} s)", STALL.as_secs()));
    }
    result["errors"] = json!(errors);
    let detail = &mut result["detail"];
    detail["enqueued"] = json!(enqueued);
    detail["enqueue_errors"] = json!(enqueue_failed);
    detail["started"] = json!(started);
    detail["duplicates"] = json!(seen.duplicates);
    detail["bad_payloads"] = json!(seen.bad_payloads);
    detail["not_run"] = json!(not_run);
    detail["still_queued"] = json!(still_queued);
    detail["lost"] = json!(lost);
    detail["server_completed"] = json!(c.completed);
    detail["worker"] = json!({
        "lease_requests": report.lease_requests, "jobs_leased": report.jobs_leased,
        "jobs_completed": report.jobs_completed, "acks_refused": report.acks_refused,
        "ack_requests": report.ack_requests, "jobs_handed_back": report.jobs_handed_back,
    });
    Ok(())
}

/// Bulk: one producer enqueues every batch in turn (batch k on node k mod nodes) with no worker
/// running; then the workers drain the queue.
async fn bulk(
    o: &DriverOptions,
    clients: &[Client],
    record: &Arc<Record>,
    result: &mut Value,
) -> anyhow::Result<(WorkerReport, bool)> {
    let t0 = Instant::now();
    let mut k = 0;
    while record.issued.load(Relaxed) < o.jobs {
        let n = (o.jobs - record.issued.load(Relaxed)).min(o.batch as u64);
        let seqs = record.issue(n);
        if !enqueue(&clients[k % clients.len()], &o.queue, seqs, record).await {
            break;
        }
        k += 1;
    }
    let enqueue_s = t0.elapsed().as_secs_f64();
    let enqueued = record.enqueued.load(Relaxed);
    eprintln!("driver: enqueued {enqueued} jobs in {enqueue_s:.3} s; starting the workers");

    let t1 = Instant::now();
    let workers = Workers::start(o, clients, record)?;
    let all = record.wait_started(enqueued, Duration::MAX, STALL).await;
    let last_ms = record.seen().last_ms;
    // Like the peers' drivers, processing ends with the last handler; the acks are flushed when
    // the workers stop, reported apart.
    let report = workers.stop().await?;
    let acked_s = t1.elapsed().as_secs_f64();
    let process_s = if all { (last_ms - record.clock.at(t1)) / 1e3 } else { f64::NAN };
    eprintln!("driver: processed in {process_s:.3} s (acks flushed after {acked_s:.3} s)");
    result["jobs"] = json!(record.started.load(Relaxed));
    result["enqueue_s"] = round(enqueue_s, 3);
    result["process_s"] = round(process_s, 3);
    result["e2e_s"] = round(enqueue_s + process_s, 3);
    result["detail"]["enqueue_rate"] = round(enqueued as f64 / enqueue_s, 1);
    result["detail"]["process_rate"] = round(enqueued as f64 / process_s, 1);
    result["detail"]["process_acks_flushed_s"] = round(acked_s, 3);
    Ok((report, all))
}

/// Enqueue calls one paced producer may have unanswered before it waits for one (as the peers').
const PRODUCER_OUTSTANDING_MAX: usize = 256;

/// Steady: workers running; producers offer `rate` jobs/s, one job per enqueue call, for the
/// window. Paced producers are open loop: job k of producer p is due at start + (k P + p) / rate
/// whatever the replies, with up to [`PRODUCER_OUTSTANDING_MAX`] calls unanswered; what a producer
/// could not send before the window ended is not offered. Flat out (rate 0), each producer sends
/// its next call when the last is answered.
async fn steady(
    o: &DriverOptions,
    clients: &[Client],
    record: &Arc<Record>,
    result: &mut Value,
) -> anyhow::Result<(WorkerReport, bool)> {
    result["config"]["pacing"] = json!(if o.rate == 0 {
        "flat out: each producer sends one job per call, the next when the last is answered".to_string()
    } else {
        format!(
            "open loop: job k of producer p due at start + (k*P + p)/rate, one job per call, at most {PRODUCER_OUTSTANDING_MAX} calls unanswered per producer"
        )
    });
    let workers = Workers::start(o, clients, record)?;
    // Let every worker get its first lease request to the server before the clock starts.
    tokio::time::sleep(WORKER_SETTLE).await;

    let duration = Duration::from_millis(o.duration_ms);
    let start = Instant::now() + Duration::from_millis(5);
    let end = start + duration;
    let lag_max_us = Arc::new(AtomicU64::new(0));
    let mut producers = JoinSet::new();
    for p in 0..o.producers {
        let (record, clients, queue, lag_max_us) =
            (record.clone(), clients.to_vec(), o.queue.clone(), lag_max_us.clone());
        let (rate, producers_n) = (o.rate, o.producers as u64);
        producers.spawn(async move {
            tokio::time::sleep_until(start.into()).await;
            if rate == 0 {
                let mut call = p;
                while Instant::now() < end {
                    let seqs = record.issue(1);
                    enqueue(&clients[call % clients.len()], &queue, seqs, &record).await;
                    call += 1;
                }
                return;
            }
            let outstanding = Arc::new(tokio::sync::Semaphore::new(PRODUCER_OUTSTANDING_MAX));
            let mut calls = JoinSet::new();
            let mut k = 0u64;
            loop {
                let index = k * producers_n + p as u64;
                let due = start + Duration::from_secs_f64(index as f64 / rate as f64);
                let now = Instant::now();
                if due >= end || now >= end {
                    break;
                }
                if due > now {
                    tokio::time::sleep_until(due.into()).await;
                    continue;
                }
                let Ok(permit) = outstanding.clone().try_acquire_owned() else {
                    // Wait for a call to be answered, then look at the clock again.
                    let _ = outstanding.acquire().await;
                    continue;
                };
                lag_max_us.fetch_max(now.duration_since(due).as_micros() as u64, Relaxed);
                let (record, client, queue) =
                    (record.clone(), clients[index as usize % clients.len()].clone(), queue.clone());
                calls.spawn(async move {
                    let seqs = record.issue(1);
                    enqueue(&client, &queue, seqs, &record).await;
                    drop(permit);
                });
                k += 1;
                while calls.try_join_next().is_some() {}
            }
            while calls.join_next().await.is_some() {}
        });
    }
    tokio::time::sleep_until(start.into()).await;
    let backlog_start = record.backlog();
    tokio::time::sleep_until(end.into()).await;
    let backlog_end = record.backlog();
    let issued_at_end = record.issued.load(Relaxed);
    while let Some(done) = producers.join_next().await {
        done.context("producer task")?;
    }
    let (start_ms, end_ms) = (record.clock.at(start), record.clock.at(end));
    let in_window = record.latencies_between(start_ms, end_ms);
    let secs = duration.as_secs_f64();
    let achieved = in_window.len() as f64 / secs;
    eprintln!("driver: window over: {achieved:.0} jobs/s started, backlog {backlog_end}; draining");
    let drain_start = Instant::now();
    let enqueued = record.enqueued.load(Relaxed);
    let drained = record.wait_started(enqueued, DRAIN, DRAIN).await;
    let drain_ms = drain_start.elapsed().as_secs_f64() * 1e3;
    let report = workers.stop().await?;

    result["jobs"] = json!(in_window.len());
    result["offered_rate"] = if o.rate == 0 { round(issued_at_end as f64 / secs, 1) } else { json!(o.rate) };
    result["achieved_rate"] = round(achieved, 1);
    result["backlog_start"] = json!(backlog_start);
    result["backlog_end"] = json!(backlog_end);
    result["sustained"] = match o.rate {
        0 => Value::Null,
        rate => json!(sustained(rate as f64, achieved, backlog_end)),
    };
    result["latency_ms"] = latency_json(in_window);
    let detail = &mut result["detail"];
    detail["enqueued_in_window"] = json!(issued_at_end);
    detail["enqueue_rate"] = round(enqueued as f64 / secs, 1);
    detail["producer_lag_max_ms"] = round(lag_max_us.load(Relaxed) as f64 / 1e3, 1);
    detail["drained_within_10s"] = json!(drained);
    detail["drain_ms"] = round(drain_ms, 1);
    // A backlog the system could not drain in time is not lost; `verify` checks it is queued.
    Ok((report, true))
}

/// The contract's test: achieved at least 95 % of offered, and a backlog at the end of at most
/// max(1000, half a second of offered load).
pub fn sustained(offered: f64, achieved: f64, backlog_end: u64) -> bool {
    achieved >= 0.95 * offered && backlog_end as f64 <= (offered * 0.5).max(1000.0)
}

/// Single: one producer, one job per request, each request after the previous reply.
async fn single(
    o: &DriverOptions,
    clients: &[Client],
    record: &Arc<Record>,
    result: &mut Value,
) -> anyhow::Result<(WorkerReport, bool)> {
    let workers = Workers::start(o, clients, record)?;
    tokio::time::sleep(WORKER_SETTLE).await;
    let begin = Instant::now();
    for k in 0..o.jobs as usize {
        let sent = Instant::now();
        if !enqueue(&clients[k % clients.len()], &o.queue, record.issue(1), record).await {
            break;
        }
        let ms = sent.elapsed().as_secs_f64() * 1e3;
        record.requests.lock().unwrap_or_else(|p| p.into_inner()).push(ms);
    }
    let enqueue_s = begin.elapsed().as_secs_f64();
    let enqueued = record.enqueued.load(Relaxed);
    let all = record.wait_started(enqueued, Duration::MAX, STALL).await;
    let report = workers.stop().await?;
    let latencies = record.latencies_between(f64::NEG_INFINITY, f64::INFINITY);
    let requests = std::mem::take(&mut *record.requests.lock().unwrap_or_else(|p| p.into_inner()));
    result["jobs"] = json!(record.started.load(Relaxed));
    result["latency_ms"] = latency_json(latencies);
    result["request_latency_ms"] = latency_json(requests);
    result["detail"]["enqueue_rate"] = round(enqueued as f64 / enqueue_s, 1);
    Ok((report, all))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_follow_the_contract() {
        let o = DriverOptions::parse(&[
            "--system",
            "dray",
            "--workload",
            "steady",
            "--rate=5000",
            "--dray-url",
            "http://a:1/,http://b:2",
            "--concurrency",
            "5",
            "--database-url",
            "postgres://unused",
        ])
        .unwrap();
        assert_eq!(o.workload, DriverWorkload::Steady);
        assert_eq!(o.rate, 5000);
        assert_eq!(o.urls, vec!["http://a:1", "http://b:2"]);
        assert_eq!(o.jobs, 100_000);
        assert_eq!((o.concurrency_of(0), o.concurrency_of(1)), (3, 2));
        let single = DriverOptions::parse(&["--system", "dray", "--workload", "single", "--dray-url", "http://a"]);
        assert_eq!(single.unwrap().jobs, 2000);
    }

    #[test]
    fn bad_flags_name_the_flag_and_the_limit() {
        let base = ["--system", "dray", "--workload", "bulk", "--dray-url", "http://a"];
        let err = |extra: &[&str]| {
            let argv: Vec<&str> = base.iter().chain(extra).copied().collect();
            DriverOptions::parse(&argv).unwrap_err().to_string()
        };
        assert!(err(&["--batch", "10001"]).contains("--batch must be 1 to 10000"));
        assert!(err(&["--concurrency", "0"]).contains("--concurrency must be 1 to 1000"));
        assert!(err(&["--system", "bullmq"]).contains("dray only"));
        assert!(err(&["--bogus"]).contains("unknown flag `--bogus`"));
        assert!(
            DriverOptions::parse(&["--system", "dray", "--workload", "bulk"])
                .unwrap_err()
                .to_string()
                .contains("--dray-url")
        );
        assert!(
            DriverOptions::parse(&["--system", "dray", "--dray-url", "u"])
                .unwrap_err()
                .to_string()
                .contains("--workload")
        );
    }

    #[test]
    fn payload_round_trips() {
        let p = payload(1_732_000_000_123.456, 42);
        assert_eq!(p.get(), r#"{"t":1732000000123.456,"i":42}"#);
        assert_eq!(payload_read(p.get()), Some((1_732_000_000_123.456, 42)));
        assert_eq!(payload_read(r#"{"x":1}"#), None);
    }

    #[test]
    fn quantiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=1000).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), Some(500.0));
        assert_eq!(quantile(&v, 0.99), Some(990.0));
        assert_eq!(quantile(&v, 0.999), Some(999.0));
        assert_eq!(quantile(&[], 0.5), None);
        let j = latency_json(vec![3.0, 1.0, 2.0, f64::NAN]);
        assert_eq!(j, json!({"p50": 2.0, "p99": 3.0, "p999": 3.0, "count": 3}));
        assert_eq!(latency_json(Vec::new()), json!({"p50": null, "p99": null, "p999": null, "count": 0}));
    }

    #[test]
    fn sustained_needs_the_rate_and_a_small_backlog() {
        assert!(sustained(1000.0, 960.0, 1000));
        assert!(!sustained(1000.0, 940.0, 0));
        assert!(!sustained(1000.0, 1000.0, 1001));
        assert!(sustained(20_000.0, 19_500.0, 10_000));
        assert!(!sustained(20_000.0, 19_500.0, 10_001));
    }
}
