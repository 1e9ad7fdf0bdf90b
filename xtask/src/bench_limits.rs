//! `cargo xtask bench limits`: what flow limits cost the embedded store's lease, and what fair
//! turns buy a small group while a large one floods.
//!
//! Cost: the same jobs (`--jobs`, spread over `--groups` group keys) are leased in batches and
//! completed, once per configuration: no limits and no groups (the baseline), groups alone (the
//! turn ring), and each limiter on its own, set high enough never to bind, so the figure is the
//! limiter's bookkeeping and nothing else. Configurations alternate within each run, and each
//! run starts from a fresh store (durability `never`: the log's fsyncs would hide the lease's
//! CPU). Reported: lease-and-ack throughput, median of the runs, and its ratio to the baseline.
//!
//! Fairness: one group holds `--flood` jobs, then a small group enqueues 10; workers lease 10 at
//! a time and complete them. Reported: how many jobs started before each of the small group's,
//! and the time that took, with group keys (turns) and without (one FIFO lane).

use std::cmp::Ordering;
use std::time::Instant;

use anyhow::{Context, bail};
use dray_core::{NewJob, Payload, QueueName, Rate, Timestamp, WorkerId};
use dray_store::{Ack, AckOutcome, FlowLimitsChange, JobAck, JobInsert, JobLease, QueueConfigure, Store};
use dray_store_embedded::{Durability, EmbeddedConfig, EmbeddedStore};

pub const BENCH_LIMITS_HELP: &str = "\
cargo xtask bench limits [FLAGS]

The embedded store's lease with each flow limiter on versus off, and fairness across groups.

Flags:
  --jobs N       jobs per cost run (default 200000)
  --groups N     group keys the jobs spread over (default 10000)
  --batch N      jobs per lease and per ack (default 100)
  --runs N       runs of every configuration, alternated (default 3)
  --flood N      jobs of the large group in the fairness run (default 100000)
  --dir DIR      where the stores live (default target/bench-limits)
  --smoke        small sizes, one run: checks the benchmark works, measures nothing
";

#[derive(Debug)]
pub struct LimitsOptions {
    jobs: usize,
    groups: usize,
    batch: usize,
    runs: usize,
    flood: usize,
    dir: std::path::PathBuf,
}

impl LimitsOptions {
    pub fn parse(args: &[&str]) -> anyhow::Result<LimitsOptions> {
        let mut o = LimitsOptions {
            jobs: 200_000,
            groups: 10_000,
            batch: 100,
            runs: 3,
            flood: 100_000,
            dir: "target/bench-limits".into(),
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let mut value = || it.next().copied().with_context(|| format!("{flag} needs a value"));
            match *flag {
                "--jobs" => o.jobs = value()?.parse()?,
                "--groups" => o.groups = value()?.parse()?,
                "--batch" => o.batch = value()?.parse()?,
                "--runs" => o.runs = value()?.parse()?,
                "--flood" => o.flood = value()?.parse()?,
                "--dir" => o.dir = value()?.into(),
                "--smoke" => {
                    (o.jobs, o.groups, o.runs, o.flood) = (5_000, 500, 1, 2_000);
                }
                other => bail!("unknown flag {other}"),
            }
        }
        if o.jobs == 0 || o.groups == 0 || o.batch == 0 || o.runs == 0 || o.flood == 0 {
            bail!("--jobs, --groups, --batch, --runs and --flood must be at least 1");
        }
        Ok(o)
    }
}

/// One configuration of the cost run.
#[derive(Clone, Copy, Debug)]
struct Config {
    name: &'static str,
    grouped: bool,
    limits: FlowLimitsChange,
}

fn configs() -> Vec<Config> {
    let never_binds = Rate { limit: 1_000_000, per_ms: 1, burst: 1_000_000 };
    let none = FlowLimitsChange::default();
    vec![
        Config { name: "off (no groups, no limits)", grouped: false, limits: none },
        Config { name: "groups (turns only)", grouped: true, limits: none },
        Config {
            name: "concurrency_max",
            grouped: false,
            limits: FlowLimitsChange { concurrency_max: Some(Some(1_000_000)), ..none },
        },
        Config {
            name: "group_concurrency_max",
            grouped: true,
            limits: FlowLimitsChange { group_concurrency_max: Some(Some(1_000_000)), ..none },
        },
        Config { name: "rate", grouped: false, limits: FlowLimitsChange { rate: Some(Some(never_binds)), ..none } },
        Config {
            name: "group_rate",
            grouped: true,
            limits: FlowLimitsChange { group_rate: Some(Some(never_binds)), ..none },
        },
        Config {
            name: "all four",
            grouped: true,
            limits: FlowLimitsChange {
                concurrency_max: Some(Some(1_000_000)),
                group_concurrency_max: Some(Some(1_000_000)),
                rate: Some(Some(never_binds)),
                group_rate: Some(Some(never_binds)),
            },
        },
    ]
}

fn queue() -> QueueName {
    QueueName::new("bench").expect("a valid name")
}

fn now() -> Timestamp {
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    Timestamp::from_millis(i64::try_from(ms).unwrap_or(i64::MAX))
}

fn open(dir: &std::path::Path) -> anyhow::Result<EmbeddedStore> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("remove {}", dir.display()))?;
    }
    let mut config = EmbeddedConfig::new(dir);
    config.durability = Durability::Never;
    config.memory_budget_bytes = 8 << 30;
    EmbeddedStore::open(config).context("open the store")
}

async fn insert(store: &EmbeddedStore, jobs: Vec<NewJob>) -> anyhow::Result<()> {
    for chunk in jobs.chunks(dray_core::Limits::BATCH_JOBS_MAX) {
        store.job_insert(JobInsert { now: now(), jobs: chunk.to_vec() }).await.context("job_insert")?;
    }
    Ok(())
}

/// Leases up to `batch` and completes them; returns the ids leased.
async fn lease_and_ack(store: &EmbeddedStore, worker: &WorkerId, batch: usize) -> anyhow::Result<Vec<u64>> {
    let lease =
        JobLease { now: now(), queues: vec![queue()], count_max: batch, worker: worker.clone(), lease_ms: None };
    let leased = store.job_lease(lease).await.context("job_lease")?;
    let ids = leased.iter().map(|j| j.id.0).collect();
    let acks: Vec<Ack> = leased
        .iter()
        .map(|j| Ack { job: j.id, lease: j.lease, outcome: AckOutcome::Complete { result: None } })
        .collect();
    if !acks.is_empty() {
        for r in store.job_ack(JobAck { now: now(), acks }).await.context("job_ack")? {
            r.context("an ack was refused")?;
        }
    }
    Ok(ids)
}

/// Jobs per second through lease and ack for one configuration, on a fresh store.
async fn cost_run(o: &LimitsOptions, c: &Config, run: usize) -> anyhow::Result<f64> {
    let store = open(&o.dir.join(format!("cost-{run}")))?;
    let p = QueueConfigure { limits: c.limits, ..QueueConfigure::new(now(), queue()) };
    store.queue_configure(p).await.context("queue_configure")?;
    let payload = Payload::new(b"{}".to_vec());
    let jobs = (0..o.jobs)
        .map(|i| NewJob {
            group_key: c.grouped.then(|| format!("g{}", i % o.groups).into()),
            ..NewJob::new(queue(), payload.clone())
        })
        .collect();
    insert(&store, jobs).await?;
    let worker = WorkerId::new("bench").expect("a valid id");
    let t = Instant::now();
    let mut done = 0;
    while done < o.jobs {
        let n = lease_and_ack(&store, &worker, o.batch).await?.len();
        if n == 0 {
            bail!("{}: nothing leasable after {done} of {} jobs", c.name, o.jobs);
        }
        done += n;
    }
    Ok(done as f64 / t.elapsed().as_secs_f64())
}

/// (jobs started before each small-group job, milliseconds until the last small job started).
async fn fairness_run(o: &LimitsOptions, grouped: bool) -> anyhow::Result<(Vec<usize>, f64)> {
    let store = open(&o.dir.join(format!("fair-{grouped}")))?;
    let payload = Payload::new(b"{}".to_vec());
    let job =
        |group: &str| NewJob { group_key: grouped.then(|| group.into()), ..NewJob::new(queue(), payload.clone()) };
    insert(&store, (0..o.flood).map(|_| job("big")).collect()).await?;
    let small: Vec<u64> = store
        .job_insert(JobInsert { now: now(), jobs: (0..10).map(|_| job("small")).collect() })
        .await
        .context("job_insert")?
        .iter()
        .map(|i| i.id.0)
        .collect();
    let worker = WorkerId::new("bench").expect("a valid id");
    let t = Instant::now();
    let (mut started, mut before) = (0, Vec::new());
    while before.len() < small.len() {
        let ids = lease_and_ack(&store, &worker, 10).await?;
        if ids.is_empty() {
            bail!("the small group's jobs never started");
        }
        for id in ids {
            if small.contains(&id) {
                before.push(started);
            }
            started += 1;
        }
    }
    Ok((before, t.elapsed().as_secs_f64() * 1000.0))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(Ordering::Equal));
    v[v.len() / 2]
}

pub fn run(o: &LimitsOptions) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let m = crate::machine::Machine::read();
    println!("# cargo xtask bench limits");
    println!("date:    {}", m.date);
    println!("machine: {} cpus, {}, {:.1} GiB RAM", m.cpus, m.cpu_model, m.memory_gib);
    println!("commit:  {}", m.commit);
    println!(
        "cost: {} jobs over {} groups, lease and ack in batches of {}, {} runs alternated, durability never",
        o.jobs, o.groups, o.batch, o.runs
    );
    let configs = configs();
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
    rt.block_on(async {
        for run in 0..o.runs {
            for (i, c) in configs.iter().enumerate() {
                rates[i].push(cost_run(o, c, run).await?);
            }
        }
        anyhow::Ok(())
    })?;
    let base = median(rates[0].clone());
    println!();
    println!("| configuration | jobs/s (median) | [min - max] | vs off |");
    println!("|---|---:|---|---:|");
    for (c, r) in configs.iter().zip(&rates) {
        let (lo, hi) = r.iter().fold((f64::MAX, 0.0f64), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
        let med = median(r.clone());
        println!("| {} | {:.0} | [{:.0} - {:.0}] | {:.2}x |", c.name, med, lo, hi, med / base);
    }

    println!();
    println!("fairness: a group of {} jobs, then a group of 10; leases of 10, each completed", o.flood);
    let ((turns, turns_ms), (fifo, fifo_ms)) =
        rt.block_on(async { anyhow::Ok((fairness_run(o, true).await?, fairness_run(o, false).await?)) })?;
    println!("| lanes | jobs started before each small job | until the last small job started |");
    println!("|---|---|---:|");
    println!("| group keys (turns) | {turns:?} | {turns_ms:.1} ms |");
    println!("| no group keys (one FIFO lane) | {} .. {} | {fifo_ms:.1} ms |", fifo[0], fifo[fifo.len() - 1]);
    let _ = std::fs::remove_dir_all(&o.dir);
    Ok(())
}
