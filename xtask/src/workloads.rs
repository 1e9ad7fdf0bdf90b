//! The measured workloads, each run in a child process of `cargo xtask bench store` (see
//! `bench_store.rs`). A child prints one `result key=value ...` line on stdout; everything else it
//! prints is for people.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use dray_core::{NewJob, Payload, QueueName, Timestamp, WorkerId};
use dray_store::{Ack, AckOutcome, JobAck, JobInsert, JobLease, Store};
use dray_store_embedded::{Durability, EmbeddedConfig, EmbeddedStore};

use crate::args::{DurabilityArg, Options};
use crate::counting_fs::CountingFs;
use crate::machine;

/// Jobs per insert while filling the store for `recover`: the largest batch the store takes.
const FILL_BATCH: usize = dray_core::Limits::BATCH_JOBS_MAX;
/// Payload of each job in `recover`.
pub const RECOVER_PAYLOAD_BYTES: usize = 1024;
/// A memory budget for `recover` well above what its jobs count against it: the default (half the
/// machine) refuses 10 million 1 KiB jobs, and the point is to measure memory, not to hit the cap.
const RECOVER_MEMORY_BUDGET_BYTES: u64 = 1 << 40;

/// The store's durability for a command-line mode. The one place that knows the store's enum.
pub fn durability(d: DurabilityArg) -> Durability {
    match d {
        DurabilityArg::Always => Durability::Always,
        DurabilityArg::IntervalMs(ms) => Durability::Interval { ms },
        DurabilityArg::Never => Durability::Never,
    }
}

/// The `result` line: ordered keys, values without spaces.
#[derive(Debug, Default)]
pub struct Report(BTreeMap<String, String>);

impl Report {
    fn set(&mut self, key: &str, value: impl Display) {
        self.0.insert(key.to_string(), value.to_string().replace(' ', "_"));
    }

    fn print(&self) {
        let line: Vec<String> = self.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("result {}", line.join(" "));
        let _ = std::io::stdout().flush();
    }

    pub fn parse(line: &str) -> Option<Report> {
        let rest = line.strip_prefix("result ")?;
        Some(Report(
            rest.split(' ').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    pub fn f64(&self, key: &str) -> f64 {
        self.get(key).and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)
    }

    /// CPU seconds per thread name, from the `cpu.<thread>` keys.
    pub fn cpu(&self) -> Vec<(String, f64)> {
        let mut v: Vec<(String, f64)> =
            self.0.iter().filter_map(|(k, s)| Some((k.strip_prefix("cpu.")?.to_string(), s.parse().ok()?))).collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        v
    }
}

/// Entry point of the hidden child subcommand.
pub fn child(workload: &str, o: &Options) -> anyhow::Result<()> {
    let report = match workload {
        "fsync" => fsync(o)?,
        "churn" => lanes(o, Kind::Churn)?,
        "enqueue" => lanes(o, Kind::Enqueue)?,
        "fill" => fill(o)?,
        "open" => open(o)?,
        "snapshot" => snapshot(o)?,
        other => bail!("unknown child workload `{other}`"),
    };
    report.print();
    Ok(())
}

fn now() -> Timestamp {
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    Timestamp::from_millis(ms)
}

fn queue() -> QueueName {
    QueueName::new("bench").expect("a valid queue name")
}

// ---------------------------------------------------------------------------------------------
// fsync: the disk's limit

/// Appends of these sizes, each followed by fdatasync: 4 KiB is the disk's fsync rate (what group
/// commit multiplies); the larger ones show what an fsync of a whole group's bytes costs.
pub const FSYNC_PROBE_BYTES: [usize; 3] = [4096, 64 * 1024, 256 * 1024];

/// Appends and fdatasync from one thread, each size for `--duration`.
fn fsync(o: &Options) -> anyhow::Result<Report> {
    use std::io::Write;
    std::fs::create_dir_all(&o.dir)?;
    let mut r = Report::default();
    for size in FSYNC_PROBE_BYTES {
        let path = o.dir.join("fsync-probe");
        let mut file = std::fs::OpenOptions::new().create(true).write(true).truncate(true).open(&path)?;
        let block = vec![0x5au8; size];
        let mut latencies_us = Vec::new();
        let deadline = Duration::from_secs_f64(o.duration_s.max(0.1));
        let started = Instant::now();
        while started.elapsed() < deadline {
            let t = Instant::now();
            file.write_all(&block)?;
            file.sync_data()?;
            latencies_us.push(t.elapsed().as_micros() as u64);
        }
        let elapsed = started.elapsed().as_secs_f64();
        drop(file);
        std::fs::remove_file(&path)?;
        latencies_us.sort_unstable();
        let at = |q: f64| latencies_us[((latencies_us.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
        // The 4 KiB figures carry plain names; larger sizes are suffixed with their KiB.
        let key = |k: &str| if size == 4096 { k.to_string() } else { format!("{k}_{}k", size / 1024) };
        let per_s = latencies_us.len() as f64 / elapsed;
        r.set(&key("fsyncs"), latencies_us.len());
        r.set(&key("elapsed_s"), format!("{elapsed:.3}"));
        r.set(&key("fsyncs_per_s"), format!("{per_s:.0}"));
        r.set(&key("mb_per_s"), format!("{:.1}", per_s * size as f64 / 1e6));
        r.set(&key("p50_ms"), format!("{:.3}", at(0.5)));
        r.set(&key("p99_ms"), format!("{:.3}", at(0.99)));
        r.set(&key("max_ms"), format!("{:.3}", at(1.0)));
    }
    Ok(r)
}

// ---------------------------------------------------------------------------------------------
// churn and enqueue: lanes of batches

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// insert a batch, lease a batch, complete it in one ack.
    Churn,
    /// insert a batch.
    Enqueue,
}

/// Counters the lanes add to; sampled at the start and end of the measured window.
#[derive(Debug, Default)]
struct LaneCounters {
    /// Completed (churn) or inserted (enqueue) jobs.
    jobs: AtomicU64,
    insert_ns: AtomicU64,
    inserts: AtomicU64,
    lease_ns: AtomicU64,
    leases: AtomicU64,
    ack_ns: AtomicU64,
    acks: AtomicU64,
}

#[derive(Clone, Copy, Debug, Default)]
struct LaneReading {
    jobs: u64,
    insert_ns: u64,
    inserts: u64,
    lease_ns: u64,
    leases: u64,
    ack_ns: u64,
    acks: u64,
}

impl LaneCounters {
    fn read(&self) -> LaneReading {
        LaneReading {
            jobs: self.jobs.load(Relaxed),
            insert_ns: self.insert_ns.load(Relaxed),
            inserts: self.inserts.load(Relaxed),
            lease_ns: self.lease_ns.load(Relaxed),
            leases: self.leases.load(Relaxed),
            ack_ns: self.ack_ns.load(Relaxed),
            acks: self.acks.load(Relaxed),
        }
    }
}

/// A JSON payload of about 100 bytes, different for every job (as requests would carry).
fn small_payload(lane: usize, seq: u64) -> Payload {
    let s = format!(
        r#"{{"lane":{lane},"seq":{seq:>10},"kind":"email.send","to":"user-{:06}@example.com","template":"welcome"}}"#,
        seq % 1_000_000
    );
    Payload::new(s.into_bytes())
}

fn elapsed_ns(t: Instant) -> u64 {
    t.elapsed().as_nanos() as u64
}

async fn lane(
    store: Arc<EmbeddedStore>,
    kind: Kind,
    lane: usize,
    batch: usize,
    stop: Arc<AtomicBool>,
    c: Arc<LaneCounters>,
) -> anyhow::Result<()> {
    let worker = WorkerId::new(&format!("lane-{lane}"))?;
    let mut seq = 0u64;
    while !stop.load(Relaxed) {
        let jobs = (0..batch)
            .map(|_| {
                seq += 1;
                NewJob::new(queue(), small_payload(lane, seq))
            })
            .collect();
        let t = Instant::now();
        let inserted = store.job_insert(JobInsert { now: now(), jobs }).await.context("job_insert")?;
        c.insert_ns.fetch_add(elapsed_ns(t), Relaxed);
        c.inserts.fetch_add(1, Relaxed);
        if kind == Kind::Enqueue {
            c.jobs.fetch_add(inserted.len() as u64, Relaxed);
            continue;
        }

        let t = Instant::now();
        let lease =
            JobLease { now: now(), queues: vec![queue()], count_max: batch, worker: worker.clone(), lease_ms: None };
        let leased = store.job_lease(lease).await.context("job_lease")?;
        c.lease_ns.fetch_add(elapsed_ns(t), Relaxed);
        c.leases.fetch_add(1, Relaxed);
        if leased.len() != batch {
            // Every lane inserts a batch before it leases one, so the queue always holds enough.
            bail!("lane {lane}: leased {} jobs, expected {batch}", leased.len());
        }

        let acks = leased
            .iter()
            .map(|j| Ack { job: j.id, lease: j.lease, outcome: AckOutcome::Complete { result: None } })
            .collect();
        let t = Instant::now();
        let results = store.job_ack(JobAck { now: now(), acks }).await.context("job_ack")?;
        c.ack_ns.fetch_add(elapsed_ns(t), Relaxed);
        c.acks.fetch_add(1, Relaxed);
        let completed = results.iter().filter(|r| r.is_ok()).count();
        if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
            bail!("lane {lane}: an ack was rejected: {e}");
        }
        c.jobs.fetch_add(completed as u64, Relaxed);
    }
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    // One worker per core, spelled out: the lanes, the store's lock and the log's writer thread
    // share these two cores.
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build()?)
}

fn lanes(o: &Options, kind: Kind) -> anyhow::Result<Report> {
    let rt = runtime()?;
    let fs = Arc::new(CountingFs::default());
    let counters = fs.counters.clone();
    let mut config = EmbeddedConfig::new(&o.dir);
    config.durability = durability(o.durability);
    let budget = config.memory_budget_bytes;
    let store = Arc::new(EmbeddedStore::open_with_fs(fs, config).context("open the store")?);
    let c = Arc::new(LaneCounters::default());
    let stop = Arc::new(AtomicBool::new(false));

    rt.block_on(async {
        let tasks: Vec<_> = (0..o.lanes)
            .map(|i| tokio::spawn(lane(store.clone(), kind, i, o.batch, stop.clone(), c.clone())))
            .collect();
        tokio::time::sleep(Duration::from_secs_f64(o.warmup_s)).await;

        let (jobs0, fs0, cpu0, snaps0, t0) =
            (c.read(), counters.read(), machine::sched_by_thread(), store.snapshots_written(), Instant::now());
        tokio::time::sleep(Duration::from_secs_f64(o.duration_s)).await;
        let (jobs1, fs1, cpu1, snaps1, elapsed) =
            (c.read(), counters.read(), machine::sched_by_thread(), store.snapshots_written(), t0.elapsed());

        stop.store(true, Relaxed);
        for t in tasks {
            t.await.context("a lane panicked")??;
        }

        let secs = elapsed.as_secs_f64();
        let jobs = jobs1.jobs - jobs0.jobs;
        let syncs = fs1.syncs - fs0.syncs;
        let mut r = Report::default();
        r.set("jobs", jobs);
        r.set("elapsed_s", format!("{secs:.3}"));
        r.set("jobs_per_s", format!("{:.0}", jobs as f64 / secs));
        r.set("fsyncs", syncs);
        r.set("fsyncs_per_s", format!("{:.0}", syncs as f64 / secs));
        r.set("fsync_busy", format!("{:.3}", (fs1.sync_s - fs0.sync_s) / secs));
        r.set("jobs_per_fsync", format!("{:.0}", jobs as f64 / syncs.max(1) as f64));
        if let Some((p50, p99, max)) = counters.latency_ms(&fs0, &fs1) {
            r.set("fsync_p50_ms", format!("{p50:.3}"));
            r.set("fsync_p99_ms", format!("{p99:.3}"));
            r.set("fsync_max_ms", format!("{max:.3}"));
        }
        r.set("dir_syncs", fs1.dir_syncs - fs0.dir_syncs);
        r.set("writes", fs1.writes - fs0.writes);
        let bytes = fs1.bytes_written - fs0.bytes_written;
        r.set("mb_written_per_s", format!("{:.1}", bytes as f64 / secs / 1e6));
        r.set("kib_per_fsync", format!("{:.0}", bytes as f64 / syncs.max(1) as f64 / 1024.0));
        r.set("bytes_per_job", format!("{:.0}", bytes as f64 / jobs.max(1) as f64));
        r.set(
            "snapshot_mb_written",
            format!("{:.1}", (fs1.snapshot_bytes_written - fs0.snapshot_bytes_written) as f64 / 1e6),
        );
        r.set("snapshots", snaps1 - snaps0);
        let ops = (jobs1.inserts - jobs0.inserts) + (jobs1.leases - jobs0.leases) + (jobs1.acks - jobs0.acks);
        r.set("ops", ops);
        r.set("ops_per_fsync", format!("{:.2}", ops as f64 / syncs.max(1) as f64));
        let mean_ms = |ns: u64, n: u64| format!("{:.3}", ns as f64 / n.max(1) as f64 / 1e6);
        r.set("insert_ms", mean_ms(jobs1.insert_ns - jobs0.insert_ns, jobs1.inserts - jobs0.inserts));
        if kind == Kind::Churn {
            r.set("lease_ms", mean_ms(jobs1.lease_ns - jobs0.lease_ns, jobs1.leases - jobs0.leases));
            r.set("ack_ms", mean_ms(jobs1.ack_ns - jobs0.ack_ns, jobs1.acks - jobs0.acks));
        }
        let sched = machine::sched_diff(&cpu0, &cpu1);
        r.set("cpu_total_s", format!("{:.2}", sched.values().map(|v| v.0).sum::<f64>()));
        r.set("runq_wait_total_s", format!("{:.2}", sched.values().map(|v| v.1).sum::<f64>()));
        for (thread, (run, wait)) in sched.iter().filter(|(_, v)| v.0 > 0.005) {
            r.set(&format!("cpu.{thread}"), format!("{run:.2}"));
            r.set(&format!("runq_wait.{thread}"), format!("{wait:.2}"));
        }
        let (rss, hwm) = machine::rss_kib();
        r.set("rss_mib", rss / 1024);
        r.set("hwm_mib", hwm / 1024);
        r.set("jobs_in_memory", store.jobs_count());
        // Completed jobs stay in memory for their queue's retention (default a day), so churn grows
        // the store: how fast it eats the memory budget is part of what a sustained rate means.
        r.set("bytes_used", store.bytes_used());
        r.set("memory_budget_bytes", budget);
        Ok::<_, anyhow::Error>(r)
    })
    .and_then(|r| {
        let store = Arc::into_inner(store).context("the store is still shared after the lanes ended")?;
        store.close().context("close the store")?;
        Ok(r)
    })
}

// ---------------------------------------------------------------------------------------------
// recover: fill, then open in a fresh process

fn recover_config(dir: &Path) -> EmbeddedConfig {
    let mut config = EmbeddedConfig::new(dir);
    config.memory_budget_bytes = RECOVER_MEMORY_BUDGET_BYTES;
    config
}

/// Inserts `--jobs` queued jobs with 1 KiB payloads, durability `never`, no background snapshot
/// (so the next open replays the whole log), then closes, which makes the log durable.
fn fill(o: &Options) -> anyhow::Result<Report> {
    let &[n] = o.jobs.as_slice() else { bail!("fill takes one --jobs count") };
    let rt = runtime()?;
    let mut config = recover_config(&o.dir);
    config.durability = Durability::Never;
    config.snapshot_log_bytes = u64::MAX;
    let store = EmbeddedStore::open(config).context("open the store")?;
    // One payload shared by every job while filling (the store keeps the `Arc`), so the filling
    // process needs memory for job records only; recovery decodes a copy per job, as after any
    // restart.
    let payload = Payload::new(vec![b'x'; RECOVER_PAYLOAD_BYTES]);
    let started = Instant::now();
    rt.block_on(async {
        let mut left = n;
        while left > 0 {
            let take = left.min(FILL_BATCH as u64) as usize;
            let jobs = (0..take).map(|_| NewJob::new(queue(), payload.clone())).collect();
            store.job_insert(JobInsert { now: now(), jobs }).await.context("job_insert")?;
            left -= take as u64;
        }
        Ok::<_, anyhow::Error>(())
    })?;
    let inserted_s = started.elapsed().as_secs_f64();
    let jobs = store.jobs_count();
    store.close().context("close the store")?;
    let total_s = started.elapsed().as_secs_f64();
    let (log, snap) = machine::dir_bytes(&o.dir);
    let mut r = Report::default();
    r.set("jobs", jobs);
    r.set("insert_s", format!("{inserted_s:.2}"));
    r.set("fill_s", format!("{total_s:.2}"));
    r.set("log_bytes", log);
    r.set("snapshot_bytes", snap);
    Ok(r)
}

/// Opens the store as a restarted server would and reports time to ready and resident memory.
fn open(o: &Options) -> anyhow::Result<Report> {
    let (rss0, _) = machine::rss_kib();
    let (user0, sys0, faults0) = machine::process_cpu();
    let started = Instant::now();
    let store = EmbeddedStore::open(recover_config(&o.dir)).context("open the store")?;
    let open_s = started.elapsed().as_secs_f64();
    let (user1, sys1, faults1) = machine::process_cpu();
    let (rss, hwm) = machine::rss_kib();
    let mut r = Report::default();
    r.set("open_s", format!("{open_s:.3}"));
    r.set("user_s", format!("{:.2}", user1 - user0));
    r.set("sys_s", format!("{:.2}", sys1 - sys0));
    r.set("minor_faults", faults1 - faults0);
    r.set("rss_kib", rss);
    r.set("hwm_kib", hwm);
    r.set("rss_before_open_kib", rss0);
    r.set("jobs", store.jobs_count());
    r.set("bytes_used", store.bytes_used());
    // Exit without freeing millions of jobs one by one; the next open will not need this one's
    // epoch record to be durable, but close() makes it so anyway.
    store.close().context("close the store")?;
    Ok(r)
}

/// Opens the store (another log-only recovery) and writes a snapshot, which lets the log go.
fn snapshot(o: &Options) -> anyhow::Result<Report> {
    let started = Instant::now();
    let store = EmbeddedStore::open(recover_config(&o.dir)).context("open the store")?;
    let open_s = started.elapsed().as_secs_f64();
    let (rss, hwm) = machine::rss_kib();
    let started = Instant::now();
    store.snapshot().context("snapshot")?;
    let snapshot_s = started.elapsed().as_secs_f64();
    store.close().context("close the store")?;
    let (log, snap) = machine::dir_bytes(&o.dir);
    let mut r = Report::default();
    r.set("open_s", format!("{open_s:.3}"));
    r.set("rss_kib", rss);
    r.set("hwm_kib", hwm);
    r.set("snapshot_s", format!("{snapshot_s:.2}"));
    r.set("log_bytes", log);
    r.set("snapshot_bytes", snap);
    Ok(r)
}
