//! Flags of `cargo xtask bench compare`, the systems it can run and the workloads it runs them
//! under (each a set of driver flags).

use std::path::PathBuf;

use anyhow::bail;

use crate::bench_driver::DriverWorkload;
use crate::flags;

pub const BENCH_COMPARE_HELP: &str = "\
cargo xtask bench compare [FLAGS]

Dray against peer job queues, each under the same workloads through a driver process of its own
(Dray: `xtask bench driver`, Rust SDK; the peers: `node bench/peers/run.mjs`). Builds the release
`dray` first and installs the peers with `npm ci` in bench/peers when needed. Every run gets a fresh
system: a new data directory, Redis or PostgreSQL database, dropped afterwards. Within each
workload the systems alternate (all systems for repetition 1, then repetition 2, ...), so a slow
phase of the shared disk falls on all of them; the report gives median and [min–max].

Systems (default: all):
  dray              `dray serve`, embedded store, durability always (fsync before every reply)
  dray-pg-1         one `dray serve --database` node on a fresh PostgreSQL database
  dray-pg-3         three such nodes on one fresh database, driven round-robin
  bullmq            BullMQ on a redis-server started here, no persistence
  bullmq-aof        BullMQ on a redis-server with appendonly yes, appendfsync always
  graphile-worker   graphile-worker on a fresh PostgreSQL database
  pg-boss           pg-boss on a fresh PostgreSQL database

Workloads (default: all; `steady` selects every steady one):
  bulk              30,000 jobs enqueued in batches of 1,000 with no worker running, then drained:
                    end-to-end jobs/s
  steady-1k, steady-5k, steady-20k
                    producers offer 1,000 / 5,000 / 20,000 jobs/s for 5 s with workers running:
                    achieved rate, enqueue-to-start latency, backlog
  steady-max        the same, flat out
  single            1,000 jobs, one per enqueue request, sequential: request and enqueue-to-start
                    latency
  The sizes are cut from issue #6's (100,000 bulk jobs, 10 s windows, 2,000 single jobs) so that
  three repetitions of everything fit in about 20 minutes; `--bulk-jobs 100000 --steady-ms 10000
  --single-jobs 2000` restores them (about 35 minutes).
  --smoke instead: bulk (3,000 jobs), steady-500 (500 jobs/s for 2 s), single (200 jobs), each
  system once. It fails if a driver fails or loses a job, never because of a figure.

Flags:
  --smoke                 the short run above (CI runs it)
  --systems LIST          comma-separated systems
  --workloads LIST        comma-separated workloads
  --repeat N              repetitions of every (workload, system) (default 3; 1 with --smoke)
  --bulk-jobs N           jobs of bulk (default 30000; smoke 3000)
  --steady-ms D           window of the steady workloads in ms (default 5000; smoke 2000)
  --single-jobs N         jobs of single (default 1000; smoke 200)
  --concurrency N         worker concurrency of every driver (default 50)
  --producers N           producer loops of bulk and steady (default 4)
  --out FILE              replace the section between `<!-- compare:begin -->` and
                          `<!-- compare:end -->` of FILE with the report (full runs only)
  --database-url URL      the PostgreSQL server to create databases on (default: $DATABASE_URL,
                          else postgres://postgres@127.0.0.1:5432/test?sslmode=disable)
  --dir PATH              parent of data directories (default target/bench-data); not tmpfs
  --no-build              do not build the release `dray` first
  -h, --help              this text
";

/// A system under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum System {
    Dray,
    DrayPg1,
    DrayPg3,
    Bullmq,
    BullmqAof,
    GraphileWorker,
    PgBoss,
}

impl System {
    pub const ALL: [System; 7] = [
        System::Dray,
        System::DrayPg1,
        System::DrayPg3,
        System::Bullmq,
        System::BullmqAof,
        System::GraphileWorker,
        System::PgBoss,
    ];

    pub fn name(self) -> &'static str {
        match self {
            System::Dray => "dray",
            System::DrayPg1 => "dray-pg-1",
            System::DrayPg3 => "dray-pg-3",
            System::Bullmq => "bullmq",
            System::BullmqAof => "bullmq-aof",
            System::GraphileWorker => "graphile-worker",
            System::PgBoss => "pg-boss",
        }
    }

    pub fn parse(s: &str) -> anyhow::Result<System> {
        match System::ALL.into_iter().find(|x| x.name() == s) {
            Some(x) => Ok(x),
            None => {
                let names: Vec<&str> = System::ALL.iter().map(|x| x.name()).collect();
                bail!("--systems: unknown system `{s}` (known: {})", names.join(", "))
            }
        }
    }

    /// The `--system` its driver takes.
    pub fn driver_system(self) -> &'static str {
        match self {
            System::Dray | System::DrayPg1 | System::DrayPg3 => "dray",
            System::Bullmq | System::BullmqAof => "bullmq",
            System::GraphileWorker => "graphile-worker",
            System::PgBoss => "pg-boss",
        }
    }

    /// Driven by `node bench/peers/run.mjs`.
    pub fn is_node(self) -> bool {
        self.driver_system() != "dray"
    }

    /// Runs on a fresh PostgreSQL database.
    pub fn uses_postgres(self) -> bool {
        matches!(self, System::DrayPg1 | System::DrayPg3 | System::GraphileWorker | System::PgBoss)
    }

    /// Whether an acknowledged job survives a power loss in this configuration.
    pub fn durable(self) -> bool {
        self != System::Bullmq
    }

    /// `dray serve` processes to start (0 for the peers).
    pub fn dray_nodes(self) -> usize {
        match self {
            System::Dray | System::DrayPg1 => 1,
            System::DrayPg3 => 3,
            _ => 0,
        }
    }
}

/// One workload: a name for the report and the driver flags that make it.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkloadSpec {
    pub name: &'static str,
    pub kind: DriverWorkload,
    /// bulk and single: jobs.
    pub jobs: u64,
    /// bulk: jobs per enqueue call.
    pub batch: usize,
    /// steady: offered jobs/s (0: flat out).
    pub rate: u64,
    /// steady: how long producers run.
    pub duration_ms: u64,
}

impl WorkloadSpec {
    const fn new(name: &'static str, kind: DriverWorkload, jobs: u64, rate: u64, duration_ms: u64) -> WorkloadSpec {
        WorkloadSpec { name, kind, jobs, batch: 1000, rate, duration_ms }
    }

    /// The full run. Smaller than issue #6's sizes (100,000 bulk jobs, 10 s windows, 2,000 single
    /// jobs), which take about 35 minutes for three repetitions of seven systems on this machine:
    /// most of a steady run at a rate a system cannot sustain is the 10 s its driver waits for the
    /// backlog to drain, and pg-boss drains 100,000 bulk jobs at about 1,000 jobs/s.
    pub const FULL: [WorkloadSpec; 6] = [
        WorkloadSpec::new("bulk", DriverWorkload::Bulk, 30_000, 0, 0),
        WorkloadSpec::new("steady-1k", DriverWorkload::Steady, 0, 1_000, 5_000),
        WorkloadSpec::new("steady-5k", DriverWorkload::Steady, 0, 5_000, 5_000),
        WorkloadSpec::new("steady-20k", DriverWorkload::Steady, 0, 20_000, 5_000),
        WorkloadSpec::new("steady-max", DriverWorkload::Steady, 0, 0, 5_000),
        WorkloadSpec::new("single", DriverWorkload::Single, 1_000, 0, 0),
    ];

    pub const SMOKE: [WorkloadSpec; 3] = [
        WorkloadSpec::new("bulk", DriverWorkload::Bulk, 3_000, 0, 0),
        WorkloadSpec::new("steady-500", DriverWorkload::Steady, 0, 500, 2_000),
        WorkloadSpec::new("single", DriverWorkload::Single, 200, 0, 0),
    ];

    /// The driver flags of this workload (the contract's names).
    pub fn driver_args(&self) -> Vec<String> {
        let mut a = vec!["--workload".to_string(), self.kind.name().to_string()];
        match self.kind {
            DriverWorkload::Bulk => {
                a.extend(["--jobs".into(), self.jobs.to_string(), "--batch".into(), self.batch.to_string()])
            }
            DriverWorkload::Steady => a.extend([
                "--rate".into(),
                self.rate.to_string(),
                "--duration-ms".into(),
                self.duration_ms.to_string(),
                "--batch".into(),
                self.batch.to_string(),
            ]),
            DriverWorkload::Single => a.extend(["--jobs".into(), self.jobs.to_string()]),
        }
        a
    }

    /// One line for the report: what a run of it does.
    pub fn describe(&self) -> String {
        match (self.kind, self.rate) {
            (DriverWorkload::Bulk, _) => format!(
                "{} jobs enqueued in batches of {} with no worker running, then drained by the workers; end-to-end jobs/s = jobs / (enqueue s + process s)",
                thousands(self.jobs),
                thousands(self.batch as u64)
            ),
            (DriverWorkload::Steady, 0) => format!(
                "producers enqueue flat out for {} s with the workers running; achieved = jobs completed per second in the window",
                self.duration_ms as f64 / 1000.0
            ),
            (DriverWorkload::Steady, rate) => format!(
                "producers offer {} jobs/s (open loop) for {} s with the workers running; latency = enqueue to handler start of jobs started in the window",
                thousands(rate),
                self.duration_ms as f64 / 1000.0
            ),
            (DriverWorkload::Single, _) => format!(
                "{} jobs, one per enqueue request, each sent after the previous reply, workers running",
                thousands(self.jobs)
            ),
        }
    }

    /// Headroom before a hung driver is killed: generous, it only guards against hangs.
    pub fn timeout_s(&self) -> u64 {
        match self.kind {
            DriverWorkload::Bulk => 60 + self.jobs / 100,
            DriverWorkload::Steady => 90 + self.duration_ms / 1000,
            DriverWorkload::Single => 60 + self.jobs / 20,
        }
    }
}

/// `100000` as `100,000`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[derive(Clone, Debug)]
pub struct CompareOptions {
    pub smoke: bool,
    pub systems: Vec<System>,
    pub workloads: Vec<WorkloadSpec>,
    pub repeat: usize,
    pub concurrency: usize,
    pub producers: usize,
    pub out: Option<PathBuf>,
    pub database_url: String,
    pub dir: PathBuf,
    pub build: bool,
}

/// Without TLS: the peers' Node drivers do not use it unless told to, while Dray (like libpq)
/// prefers it when the server offers it; on one machine encryption would only tax one side.
pub const DATABASE_URL_DEFAULT: &str = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable";

impl CompareOptions {
    pub fn parse(argv: &[&str]) -> anyhow::Result<CompareOptions> {
        CompareOptions::parse_with_env(argv, std::env::var("DATABASE_URL").ok())
    }

    /// [`CompareOptions::parse`] with `$DATABASE_URL` passed in, so tests do not read the
    /// environment.
    pub fn parse_with_env(argv: &[&str], database_url_env: Option<String>) -> anyhow::Result<CompareOptions> {
        let (mut smoke, mut systems, mut workloads, mut repeat) = (false, None, None, None);
        let (mut bulk_jobs, mut steady_ms, mut single_jobs) = (None, None, None);
        let mut o = CompareOptions {
            smoke: false,
            systems: Vec::new(),
            workloads: Vec::new(),
            repeat: 0,
            concurrency: 50,
            producers: 4,
            out: None,
            database_url: database_url_env.unwrap_or_else(|| DATABASE_URL_DEFAULT.into()),
            dir: PathBuf::from("target/bench-data"),
            build: true,
        };
        flags::each(argv, |arg| {
            match arg.flag {
                "--smoke" => smoke = true,
                "--systems" => systems = Some(arg.list()?),
                "--workloads" => workloads = Some(arg.list()?),
                "--repeat" => repeat = Some(arg.number::<usize>()?),
                "--bulk-jobs" => bulk_jobs = Some(arg.number::<u64>()?),
                "--steady-ms" => steady_ms = Some(arg.number::<u64>()?),
                "--single-jobs" => single_jobs = Some(arg.number::<u64>()?),
                "--concurrency" => o.concurrency = arg.number()?,
                "--producers" => o.producers = arg.number()?,
                "--out" => o.out = Some(PathBuf::from(arg.value()?)),
                "--database-url" => o.database_url = arg.value()?.to_string(),
                "--dir" => o.dir = PathBuf::from(arg.value()?),
                "--no-build" => o.build = false,
                _ => bail!("unknown flag `{}`", arg.raw),
            }
            Ok(())
        })?;
        o.smoke = smoke;
        o.repeat = repeat.unwrap_or(if smoke { 1 } else { 3 });
        o.systems = match systems {
            None => System::ALL.to_vec(),
            Some(names) => names.into_iter().map(System::parse).collect::<anyhow::Result<_>>()?,
        };
        o.systems.sort();
        o.systems.dedup();
        let known: &[WorkloadSpec] = if smoke { &WorkloadSpec::SMOKE } else { &WorkloadSpec::FULL };
        o.workloads = match workloads {
            None => known.to_vec(),
            Some(names) => {
                let mut picked = Vec::new();
                for name in names {
                    let matching: Vec<&WorkloadSpec> =
                        known.iter().filter(|w| w.name == name || w.name.split('-').next() == Some(name)).collect();
                    if matching.is_empty() {
                        let known: Vec<&str> = known.iter().map(|w| w.name).collect();
                        bail!(
                            "--workloads: unknown workload `{name}`{} (known: {})",
                            if smoke { " for --smoke" } else { "" },
                            known.join(", ")
                        );
                    }
                    picked.extend(matching.into_iter().cloned());
                }
                // In the order of the table, each once.
                known.iter().filter(|w| picked.contains(w)).cloned().collect()
            }
        };
        let sizes = [
            ("--bulk-jobs", bulk_jobs, DriverWorkload::Bulk, 100..=10_000_000),
            ("--steady-ms", steady_ms, DriverWorkload::Steady, 500..=600_000),
            ("--single-jobs", single_jobs, DriverWorkload::Single, 10..=1_000_000),
        ];
        for (flag, value, kind, range) in sizes {
            let Some(v) = value else { continue };
            if !range.contains(&v) {
                bail!("{flag} must be {} to {}", range.start(), range.end());
            }
            for w in o.workloads.iter_mut().filter(|w| w.kind == kind) {
                match kind {
                    DriverWorkload::Steady => w.duration_ms = v,
                    _ => w.jobs = v,
                }
            }
        }
        if o.systems.is_empty() || o.workloads.is_empty() {
            bail!("--systems and --workloads need at least one name each");
        }
        if !(1..=20).contains(&o.repeat) {
            bail!("--repeat must be 1 to 20");
        }
        if !(1..=1000).contains(&o.concurrency) {
            bail!("--concurrency must be 1 to 1000");
        }
        if o.systems.contains(&System::DrayPg3) && o.concurrency < 3 {
            bail!("--concurrency must be at least 3 with dray-pg-3 (one job per node's worker)");
        }
        if !(1..=64).contains(&o.producers) {
            bail!("--producers must be 1 to 64");
        }
        if smoke && o.out.is_some() {
            bail!("--out keeps a full run's figures; a --smoke run is too short to keep");
        }
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(argv: &[&str]) -> anyhow::Result<CompareOptions> {
        CompareOptions::parse_with_env(argv, None)
    }

    #[test]
    fn defaults_are_the_full_run() {
        let o = parse(&[]).unwrap();
        assert!(!o.smoke);
        assert_eq!(o.repeat, 3);
        assert_eq!(o.systems, System::ALL.to_vec());
        let names: Vec<&str> = o.workloads.iter().map(|w| w.name).collect();
        assert_eq!(names, ["bulk", "steady-1k", "steady-5k", "steady-20k", "steady-max", "single"]);
        assert_eq!(o.database_url, DATABASE_URL_DEFAULT);
        assert_eq!(
            CompareOptions::parse_with_env(&[], Some("postgres://x/y".into())).unwrap().database_url,
            "postgres://x/y"
        );
    }

    #[test]
    fn smoke_is_short_and_once() {
        let o = parse(&["--smoke", "--systems", "dray,dray-pg-1"]).unwrap();
        assert_eq!(o.repeat, 1);
        assert_eq!(o.systems, vec![System::Dray, System::DrayPg1]);
        let w: Vec<(&str, u64, u64, u64)> =
            o.workloads.iter().map(|w| (w.name, w.jobs, w.rate, w.duration_ms)).collect();
        assert_eq!(w, [("bulk", 3000, 0, 0), ("steady-500", 0, 500, 2000), ("single", 200, 0, 0)]);
        assert!(parse(&["--smoke", "--out", "docs/benchmarks.md"]).unwrap_err().to_string().contains("--out"));
    }

    #[test]
    fn workloads_by_name_or_family_in_table_order() {
        let o = parse(&["--workloads=single,steady", "--steady-ms", "10000", "--single-jobs=2000", "--repeat", "2"])
            .unwrap();
        let names: Vec<&str> = o.workloads.iter().map(|w| w.name).collect();
        assert_eq!(names, ["steady-1k", "steady-5k", "steady-20k", "steady-max", "single"]);
        assert!(o.workloads.iter().filter(|w| w.kind == DriverWorkload::Steady).all(|w| w.duration_ms == 10_000));
        assert_eq!(o.workloads[4].jobs, 2000);
        assert_eq!(parse(&["--bulk-jobs", "100000"]).unwrap().workloads[0].jobs, 100_000);
        assert_eq!(o.repeat, 2);
        let e = parse(&["--workloads", "steady-500"]).unwrap_err().to_string();
        assert!(e.contains("unknown workload `steady-500`") && e.contains("steady-1k"), "{e}");
    }

    #[test]
    fn bad_values_name_the_flag() {
        let err = |argv: &[&str]| parse(argv).unwrap_err().to_string();
        assert!(err(&["--systems", "sidekiq"]).contains("unknown system `sidekiq`"));
        assert!(err(&["--repeat", "0"]).contains("--repeat must be 1 to 20"));
        assert!(err(&["--steady-ms", "10"]).contains("--steady-ms must be 500 to 600000"));
        assert!(err(&["--bulk-jobs", "5"]).contains("--bulk-jobs must be 100 to 10000000"));
        assert!(err(&["--systems", "dray-pg-3", "--concurrency", "2"]).contains("at least 3"));
        assert!(err(&["--frobnicate"]).contains("unknown flag `--frobnicate`"));
    }

    #[test]
    fn driver_args_follow_the_contract() {
        let steady = &WorkloadSpec::FULL[2];
        assert_eq!(steady.driver_args().join(" "), "--workload steady --rate 5000 --duration-ms 5000 --batch 1000");
        assert_eq!(WorkloadSpec::FULL[0].driver_args().join(" "), "--workload bulk --jobs 30000 --batch 1000");
        assert_eq!(WorkloadSpec::SMOKE[2].driver_args().join(" "), "--workload single --jobs 200");
        assert_eq!(thousands(100_000), "100,000");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
