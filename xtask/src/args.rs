//! Flags of `cargo xtask bench store`, parsed with the shared loop of `flags.rs`, then checked
//! once so the workloads can trust them.

use std::path::PathBuf;

use anyhow::{Context, bail};

use crate::flags::{self, seconds};

/// The hidden subcommand a benchmark run re-executes this binary with.
pub const CHILD: &str = "__bench-child";

pub const BENCH_STORE_HELP: &str = "\
cargo xtask bench store [WORKLOAD...] [FLAGS]

Benchmarks the embedded store in-process against a fresh directory on the real disk. Each run is a
fresh child process. Workloads (default: fsync churn enqueue recover):
  churn     lanes loop: insert a batch, lease a batch, complete it in one ack; completed jobs/s
  enqueue   lanes loop: insert a batch; inserted jobs/s
  recover   fill N queued jobs with 1 KiB payloads (durability never during the fill, close()
            flushes), then open in a fresh process: time to ready and resident memory, from the
            log only and after a snapshot, with the files in the page cache and dropped from it
  fsync     the disk's limit: 4 KiB appends + fdatasync, one thread; fsyncs/s

Flags:
  --dir PATH              parent of the data directories (default target/bench-data); must not be tmpfs
  --durability MODE       always | interval=<ms> | never (default always) for churn and enqueue
  --lanes N               concurrent tokio tasks for churn and enqueue (default 4)
  --batch N               jobs per insert, lease and ack (default 500; at most 1000)
  --runs N                runs of churn, enqueue and fsync, interleaved (default 3)
  --warmup SECONDS        before measuring (default 2)
  --duration SECONDS      measured time of each churn, enqueue and fsync run (default 10)
  --jobs N[,N...]         queued jobs for recover (default 1000000); e.g. --jobs 1000000,10000000
  --no-cold               recover: skip the measurements with the files dropped from the page cache
  --keep                  keep the data directories (default: delete them after each run)
  -h, --help              this text
";

/// When the log makes a change durable, as given on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DurabilityArg {
    /// fsync before every acknowledgement (group commit).
    Always,
    /// fsync at most this many milliseconds after a change; acknowledged before.
    IntervalMs(u64),
    /// Never fsync (the OS writes back when it likes).
    Never,
}

impl DurabilityArg {
    pub fn parse(s: &str) -> anyhow::Result<DurabilityArg> {
        match s {
            "always" => Ok(DurabilityArg::Always),
            "never" => Ok(DurabilityArg::Never),
            _ => match s.strip_prefix("interval=") {
                Some(ms) => {
                    let ms: u64 = ms.trim_end_matches("ms").parse().with_context(|| format!("--durability {s}"))?;
                    if ms == 0 {
                        bail!("--durability interval=<ms> needs ms >= 1");
                    }
                    Ok(DurabilityArg::IntervalMs(ms))
                }
                None => bail!("--durability must be always, interval=<ms> or never, not `{s}`"),
            },
        }
    }

    /// As the command line spells it, so a child process gets the same mode.
    pub fn arg(self) -> String {
        match self {
            DurabilityArg::Always => "always".into(),
            DurabilityArg::IntervalMs(ms) => format!("interval={ms}"),
            DurabilityArg::Never => "never".into(),
        }
    }

    /// Printed beside every figure.
    pub fn label(self) -> String {
        match self {
            DurabilityArg::Always => "always (fsync before ack)".into(),
            DurabilityArg::IntervalMs(ms) => format!("interval={ms}ms (ack before fsync)"),
            DurabilityArg::Never => "never (no fsync)".into(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    Fsync,
    Churn,
    Enqueue,
    Recover,
}

impl Workload {
    pub const ALL: [Workload; 4] = [Workload::Fsync, Workload::Churn, Workload::Enqueue, Workload::Recover];

    pub fn name(self) -> &'static str {
        match self {
            Workload::Fsync => "fsync",
            Workload::Churn => "churn",
            Workload::Enqueue => "enqueue",
            Workload::Recover => "recover",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Options {
    pub workloads: Vec<Workload>,
    pub dir: PathBuf,
    pub durability: DurabilityArg,
    pub lanes: usize,
    pub batch: usize,
    pub runs: usize,
    pub warmup_s: f64,
    pub duration_s: f64,
    pub jobs: Vec<u64>,
    pub cold: bool,
    pub keep: bool,
}

pub const BATCH_MAX: usize = dray_core::Limits::LEASE_JOBS_MAX;

impl Options {
    pub fn parse(argv: &[&str]) -> anyhow::Result<Options> {
        let mut o = Options {
            workloads: Vec::new(),
            dir: PathBuf::from("target/bench-data"),
            durability: DurabilityArg::Always,
            lanes: 4,
            batch: 500,
            runs: 3,
            warmup_s: 2.0,
            duration_s: 10.0,
            jobs: vec![1_000_000],
            cold: true,
            keep: false,
        };
        flags::each(argv, |arg| {
            let flag = arg.flag;
            match flag {
                "--dir" => o.dir = PathBuf::from(arg.value()?),
                "--durability" => o.durability = DurabilityArg::parse(arg.value()?)?,
                "--lanes" => o.lanes = arg.number()?,
                "--batch" => o.batch = arg.number()?,
                "--runs" => o.runs = arg.number()?,
                "--warmup" => o.warmup_s = seconds(flag, arg.value()?)?,
                "--duration" => o.duration_s = seconds(flag, arg.value()?)?,
                "--jobs" => o.jobs = arg.numbers()?,
                "--no-cold" => o.cold = false,
                "--keep" => o.keep = true,
                "all" => o.workloads.extend(Workload::ALL),
                w => match Workload::ALL.into_iter().find(|k| k.name() == w) {
                    Some(k) => o.workloads.push(k),
                    None => bail!("unknown workload or flag `{}`", arg.raw),
                },
            }
            Ok(())
        })?;
        if o.workloads.is_empty() {
            o.workloads.extend(Workload::ALL);
        }
        o.workloads.dedup();
        if o.lanes == 0 || o.runs == 0 {
            bail!("--lanes and --runs must be at least 1");
        }
        if !(1..=BATCH_MAX).contains(&o.batch) {
            bail!("--batch must be 1..={BATCH_MAX} (a lease returns at most {BATCH_MAX} jobs)");
        }
        if o.jobs.contains(&0) {
            bail!("--jobs must be at least 1");
        }
        Ok(o)
    }

    /// The flags a child process needs to run `workload` the same way.
    pub fn child_args(&self) -> Vec<String> {
        vec![
            "--dir".into(),
            self.dir.display().to_string(),
            "--durability".into(),
            self.durability.arg(),
            "--lanes".into(),
            self.lanes.to_string(),
            "--batch".into(),
            self.batch.to_string(),
            "--warmup".into(),
            self.warmup_s.to_string(),
            "--duration".into(),
            self.duration_s.to_string(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_flags_and_workloads() {
        let o = Options::parse(&["churn", "--durability=interval=5", "--lanes", "2", "--jobs", "1_000,2000"]).unwrap();
        assert_eq!(o.workloads, vec![Workload::Churn]);
        assert_eq!(o.durability, DurabilityArg::IntervalMs(5));
        assert_eq!(o.lanes, 2);
        assert_eq!(o.jobs, vec![1000, 2000]);
        assert_eq!(Options::parse(&[]).unwrap().workloads.len(), 4);
        assert!(Options::parse(&["--batch", "1001"]).is_err());
        assert!(Options::parse(&["--durability", "sometimes"]).is_err());
        assert!(Options::parse(&["bogus"]).is_err());
    }
}
