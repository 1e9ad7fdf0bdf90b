//! Flags of `cargo xtask bench http`, parsed by hand like those of `bench store` (`args.rs`).

use std::path::PathBuf;

use anyhow::bail;

use crate::args::DurabilityArg;
use crate::flags::{self, seconds};

pub const BENCH_HTTP_HELP: &str = "\
cargo xtask bench http [WORKLOAD...] [FLAGS]

Benchmarks the real server end to end: starts `dray serve` (the release binary) in its own
process for every run, on 127.0.0.1 with a fresh data directory on the real disk, and drives it
over HTTP from this process (tokio, 2 worker threads on a 2-core machine: the generator and the
workers share the machine with the server, as they would on one box). Workloads (default: batch
single):
  batch       producers POST /v1/jobs/batch (1000 jobs of ~100 B JSON each, the backlog capped
              at --backlog), workers POST /v1/lease (count 1000, long-poll) and complete each
              lease in one POST /v1/ack; completed jobs/s over the window, and the server's CPU
              seconds per 100k jobs. Runs twice: `raw` (dray_client::Client lease/ack calls, the
              maximum-throughput path) and `sdk` (the SDK's Worker, no-op handler)
  batch-raw   only the raw half of batch
  batch-sdk   only the SDK half of batch
  single      one job per POST /v1/jobs at a fixed offered rate (open loop: sends are paced by a
              timer thread, not by replies, up to --inflight at once); --pollers tasks long-poll
              POST /v1/lease with count 1 and complete each job with POST /v1/jobs/{id}/complete.
              Enqueue-to-start latency: from just before the enqueue is sent to the moment the
              lease reply carrying that job is received (one monotonic clock, one process)

Each run of each workload gets a fresh server; the runs go round-robin (batch-raw, batch-sdk,
single at each rate, then again), so a slow phase of the shared disk falls on all of them.

Flags:
  --durability MODE       always | interval=<ms> | never, passed to `dray serve` (default always)
  --runs N                runs of each workload (default 3)
  --warmup SECONDS        before measuring (default 2)
  --duration SECONDS      measured window of each run (default 10)
  --rate R[,R...]         offered jobs/s of `single` (default 5000,1000)
  --producers N           batch: producer tasks (default 2)
  --workers N             batch raw: lease/ack loops (default 4)
  --backlog N             batch: producers wait while this many jobs are enqueued and not yet
                          completed (default 20000)
  --sdk-concurrency N     batch sdk: the Worker's concurrency (default 256; other settings are
                          the SDK defaults: ack batches of at most 64, 2 ms linger)
  --sdk-ack-batch N       batch sdk: the Worker's ack_batch_max instead of the SDK default (64)
  --pollers N             single: concurrent long-poll lease loops (default 64)
  --inflight N            single: enqueue requests in flight at most (default 256)
  --bin PATH              the server binary (default target/release/dray; build it with
                          `cargo build --release -p dray`)
  --dir PATH              parent of the data directories (default target/bench-data); must not be tmpfs
  --no-fsync-count        do not count the server's fsyncs (they are counted with
                          `perf stat -e syscalls:sys_enter_fdatasync` when perf can)
  --perf                  also `perf record` the server (DWARF call graphs, 499 Hz) over each
                          measured window, into <dir>/perf-<workload>-<run>.data; the profiler
                          costs CPU, so figures of such runs are not comparable with others
  --keep                  keep the data directories and server logs
  -h, --help              this text
";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpWorkload {
    BatchRaw,
    BatchSdk,
    Single,
}

impl HttpWorkload {
    pub fn name(self) -> &'static str {
        match self {
            HttpWorkload::BatchRaw => "batch-raw",
            HttpWorkload::BatchSdk => "batch-sdk",
            HttpWorkload::Single => "single",
        }
    }
}

#[derive(Clone, Debug)]
pub struct HttpOptions {
    pub workloads: Vec<HttpWorkload>,
    pub durability: DurabilityArg,
    pub runs: usize,
    pub warmup_s: f64,
    pub duration_s: f64,
    pub rates: Vec<u64>,
    pub producers: usize,
    pub workers: usize,
    pub backlog: u64,
    pub sdk_concurrency: usize,
    pub sdk_ack_batch: Option<usize>,
    pub pollers: usize,
    pub inflight: usize,
    pub bin: PathBuf,
    pub dir: PathBuf,
    pub count_fsyncs: bool,
    pub perf: bool,
    pub keep: bool,
}

/// Jobs per enqueue batch, per lease and per ack in `batch`.
pub const BATCH_JOBS: usize = 1000;

impl HttpOptions {
    pub fn parse(argv: &[&str]) -> anyhow::Result<HttpOptions> {
        let mut o = HttpOptions {
            workloads: Vec::new(),
            durability: DurabilityArg::Always,
            runs: 3,
            warmup_s: 2.0,
            duration_s: 10.0,
            rates: vec![5000, 1000],
            producers: 2,
            workers: 4,
            backlog: 20_000,
            sdk_concurrency: 256,
            sdk_ack_batch: None,
            pollers: 64,
            inflight: 256,
            bin: PathBuf::from("target/release/dray"),
            dir: PathBuf::from("target/bench-data"),
            count_fsyncs: true,
            perf: false,
            keep: false,
        };
        flags::each(argv, |arg| {
            let flag = arg.flag;
            match flag {
                "--durability" => o.durability = DurabilityArg::parse(arg.value()?)?,
                "--runs" => o.runs = arg.number()?,
                "--warmup" => o.warmup_s = seconds(flag, arg.value()?)?,
                "--duration" => o.duration_s = seconds(flag, arg.value()?)?,
                "--rate" => o.rates = arg.numbers()?,
                "--producers" => o.producers = arg.number()?,
                "--workers" => o.workers = arg.number()?,
                "--backlog" => o.backlog = arg.number()?,
                "--sdk-concurrency" => o.sdk_concurrency = arg.number()?,
                "--sdk-ack-batch" => o.sdk_ack_batch = Some(arg.number()?),
                "--pollers" => o.pollers = arg.number()?,
                "--inflight" => o.inflight = arg.number()?,
                "--bin" => o.bin = PathBuf::from(arg.value()?),
                "--dir" => o.dir = PathBuf::from(arg.value()?),
                "--no-fsync-count" => o.count_fsyncs = false,
                "--perf" => o.perf = true,
                "--keep" => o.keep = true,
                "batch" => o.workloads.extend([HttpWorkload::BatchRaw, HttpWorkload::BatchSdk]),
                "batch-raw" => o.workloads.push(HttpWorkload::BatchRaw),
                "batch-sdk" => o.workloads.push(HttpWorkload::BatchSdk),
                "single" => o.workloads.push(HttpWorkload::Single),
                "all" => o.workloads.extend([HttpWorkload::BatchRaw, HttpWorkload::BatchSdk, HttpWorkload::Single]),
                _ => bail!("unknown workload or flag `{}`", arg.raw),
            }
            Ok(())
        })?;
        if o.workloads.is_empty() {
            o.workloads.extend([HttpWorkload::BatchRaw, HttpWorkload::BatchSdk, HttpWorkload::Single]);
        }
        let mut seen = Vec::new();
        o.workloads.retain(|w| {
            let new = !seen.contains(w);
            seen.push(*w);
            new
        });
        if o.runs == 0 || o.producers == 0 || o.workers == 0 || o.pollers == 0 || o.inflight == 0 {
            bail!("--runs, --producers, --workers, --pollers and --inflight must be at least 1");
        }
        if o.duration_s < 0.5 {
            bail!("--duration must be at least 0.5 s");
        }
        if o.rates.is_empty() || o.rates.contains(&0) || o.rates.iter().any(|&r| r > 1_000_000) {
            bail!("--rate must be 1 to 1000000 jobs/s");
        }
        if !(1..=dray_client::CONCURRENCY_MAX).contains(&o.sdk_concurrency) {
            bail!("--sdk-concurrency must be 1 to {}", dray_client::CONCURRENCY_MAX);
        }
        if o.sdk_ack_batch == Some(0) {
            bail!("--sdk-ack-batch must be at least 1");
        }
        if o.backlog < BATCH_JOBS as u64 {
            bail!("--backlog must be at least {BATCH_JOBS} (one batch)");
        }
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_http_flags_and_workloads() {
        let o = HttpOptions::parse(&["single", "--rate", "5_000,1000", "--durability=never", "--runs", "1"]).unwrap();
        assert_eq!(o.workloads, vec![HttpWorkload::Single]);
        assert_eq!(o.rates, vec![5000, 1000]);
        assert_eq!(o.durability, DurabilityArg::Never);
        assert_eq!(o.runs, 1);
        let o = HttpOptions::parse(&["batch", "batch-raw"]).unwrap();
        assert_eq!(o.workloads, vec![HttpWorkload::BatchRaw, HttpWorkload::BatchSdk]);
        assert_eq!(HttpOptions::parse(&[]).unwrap().workloads.len(), 3);
        assert!(HttpOptions::parse(&["--rate", "0"]).is_err());
        assert!(HttpOptions::parse(&["--sdk-concurrency", "1001"]).is_err());
        assert!(HttpOptions::parse(&["churn"]).is_err());
    }
}
