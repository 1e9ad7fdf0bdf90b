//! `cargo xtask bench compare`: Dray against peer job queues (BullMQ, graphile-worker, pg-boss)
//! under the same workloads. Each run starts a fresh system, runs one driver process under the
//! contract every driver follows (Dray's is `xtask bench driver`, the peers' `node
//! bench/peers/run.mjs`), reads the driver's JSON result and both sides' CPU time, and stops the
//! system. Within a workload the systems alternate, repetition after repetition, so a slow phase of
//! the shared disk falls on all of them; the report gives median and [min–max] per figure, with
//! each system's durability beside it.
//!
//! It fails (non-zero) when a driver fails or loses a job, never because of a figure: the CI smoke
//! run checks that every system and driver works, not how fast.

pub mod args;
pub mod report;
mod systems;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

use crate::bench_driver::DriverWorkload;
use crate::bench_store::load_average;
use crate::machine::{self, Machine};
use args::{CompareOptions, System, WorkloadSpec};
use report::Run;
use systems::{DRAY_POOL_DEFAULT, Env, Sut};

/// The intro written above the markers when a document has none yet.
const INTRO: &str = "\
## Peer comparison

`cargo xtask bench compare --out docs/benchmarks.md` (source: `xtask/src/compare/`, drivers in
`xtask/src/bench_driver.rs` and `bench/peers/run.mjs`) runs Dray and its peers under the same
workloads and replaces the section below with its report. Run `cargo xtask bench compare --help`
for the systems, workloads and flags.";

/// The workspace root (xtask lives one level down).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// First line of `program args`' stdout, if it runs.
fn version_of(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    out.status.success().then(|| text.lines().next().unwrap_or("").trim().to_string())
}

/// Builds the release `dray` (xtask itself was just built by `cargo xtask`).
fn build_dray(root: &Path) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let started = Instant::now();
    eprintln!("compare: cargo build --release -p dray");
    let status = Command::new(&cargo)
        .args(["build", "--release", "-p", "dray"])
        .current_dir(root)
        .status()
        .with_context(|| format!("run {cargo} build"))?;
    if !status.success() {
        bail!("cargo build --release -p dray failed ({status})");
    }
    eprintln!("compare: release build of dray took {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// `npm ci` in bench/peers when node_modules is missing or older than the lockfile.
fn install_peers(root: &Path) -> anyhow::Result<()> {
    let peers = root.join("bench/peers");
    if !peers.join("run.mjs").is_file() {
        bail!("{} is missing: the Node drivers of the peers live there", peers.join("run.mjs").display());
    }
    let lock = peers.join("package-lock.json");
    let lock_time = std::fs::metadata(&lock)
        .and_then(|m| m.modified())
        .with_context(|| format!("{} (npm ci installs from it)", lock.display()))?;
    // npm writes node_modules/.package-lock.json on every install.
    let installed = std::fs::metadata(peers.join("node_modules/.package-lock.json")).and_then(|m| m.modified());
    if installed.is_ok_and(|t| t >= lock_time) {
        return Ok(());
    }
    eprintln!("compare: npm ci in {}", peers.display());
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(&peers)
        .status()
        .context("run npm ci (is Node.js installed?)")?;
    if !status.success() {
        bail!("npm ci in {} failed ({status})", peers.display());
    }
    Ok(())
}

/// /usr/bin/redis-server, installed from Debian's package if missing (apt serialized with the
/// other users of this machine through a lock file).
fn ensure_redis() -> anyhow::Result<PathBuf> {
    let bin = PathBuf::from("/usr/bin/redis-server");
    if bin.is_file() {
        return Ok(bin);
    }
    eprintln!("compare: {} is missing; installing Debian's redis-server", bin.display());
    let status = Command::new("flock")
        .args(["/tmp/dray-apt.lock", "sh", "-c"])
        .arg("apt-get install -y --no-install-recommends redis-server || (apt-get update && apt-get install -y --no-install-recommends redis-server)")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("run apt-get under flock")?;
    if !status.success() || !bin.is_file() {
        bail!("could not install redis-server ({status}); install it with `apt-get install redis-server`");
    }
    Ok(bin)
}

/// What the report says about each system besides its figures.
#[derive(Clone, Debug)]
struct SystemInfo {
    durability: String,
    server: String,
}

fn system_info(system: System, pg: &PgInfo) -> SystemInfo {
    let pg_durability = format!(
        "PostgreSQL commit (synchronous_commit={}, fsync={}, wal_sync_method={})",
        pg.synchronous_commit, pg.fsync, pg.wal_sync_method
    );
    let redis = |aof| {
        format!(
            "`redis-server {}` on a port of its own",
            systems::redis_flags(aof).join(" ").replace("--save  ", "--save \"\" ")
        )
    };
    match system {
        System::Dray => SystemInfo {
            durability: "fsync before every reply (`--durability always`, group commit)".into(),
            server: "`dray serve --durability always`, embedded store, fresh data directory".into(),
        },
        System::DrayPg1 | System::DrayPg3 => SystemInfo {
            durability: pg_durability,
            server: format!(
                "{} x `dray serve --database <fresh database>` (pool {DRAY_POOL_DEFAULT} connections per node + 1 for LISTEN), PostgreSQL {}",
                system.dray_nodes(),
                pg.version
            ),
        },
        System::Bullmq => {
            SystemInfo { durability: "none (Redis without AOF or snapshots)".into(), server: redis(false) }
        }
        System::BullmqAof => SystemInfo {
            durability: "Redis AOF, fsync before every reply (appendfsync always)".into(),
            server: redis(true),
        },
        System::GraphileWorker | System::PgBoss => SystemInfo {
            durability: pg_durability,
            server: format!("PostgreSQL {} at the --database-url server, fresh database", pg.version),
        },
    }
}

#[derive(Clone, Debug, Default)]
struct PgInfo {
    version: String,
    synchronous_commit: String,
    fsync: String,
    wal_sync_method: String,
}

fn pg_info(admin_url: &str) -> anyhow::Result<PgInfo> {
    let v = systems::pg_settings(admin_url, &["server_version", "synchronous_commit", "fsync", "wal_sync_method"])
        .context("PostgreSQL is needed for the dray-pg, graphile-worker and pg-boss systems: pass --database-url or set DATABASE_URL to a server where this role may CREATE DATABASE")?;
    Ok(PgInfo {
        version: v[0].clone(),
        synchronous_commit: v[1].clone(),
        fsync: v[2].clone(),
        wal_sync_method: v[3].clone(),
    })
}

pub fn run(o: &CompareOptions) -> anyhow::Result<()> {
    let started = Instant::now();
    let root = root();
    std::fs::create_dir_all(&o.dir).with_context(|| format!("create {}", o.dir.display()))?;
    let (fstype, device) = machine::check_real_disk(&o.dir)?;
    if o.build {
        build_dray(&root)?;
    }
    // Beside this binary: `cargo xtask` built it into the same target directory (wherever
    // CARGO_TARGET_DIR puts it) as `cargo build --release -p dray` puts the server.
    let exe = std::env::current_exe().context("find this binary (the Dray driver)")?;
    let dray_bin = exe.parent().map_or_else(|| root.join("target/release"), Path::to_path_buf).join("dray");
    if !dray_bin.is_file() {
        bail!(
            "{} does not exist: build it with `cargo build --release -p dray` (or drop --no-build)",
            dray_bin.display()
        );
    }
    if o.systems.iter().any(|s| matches!(s, System::DrayPg1 | System::DrayPg3)) {
        let help = Command::new(&dray_bin).args(["serve", "--help"]).output().context("run dray serve --help")?;
        if !String::from_utf8_lossy(&help.stdout).contains("--database") {
            bail!("{} serve has no --database flag: this build cannot run on PostgreSQL", dray_bin.display());
        }
    }
    if o.systems.iter().any(|s| s.is_node()) {
        install_peers(&root)?;
    }
    let redis_bin = if o.systems.iter().any(|s| matches!(s, System::Bullmq | System::BullmqAof)) {
        ensure_redis()?
    } else {
        PathBuf::from("/usr/bin/redis-server")
    };
    let pg = if o.systems.iter().any(|s| s.uses_postgres()) { pg_info(&o.database_url)? } else { PgInfo::default() };
    let env = Env { dray_bin, redis_bin: redis_bin.clone(), dir: o.dir.clone(), admin_url: o.database_url.clone() };
    let infos: Vec<(System, SystemInfo)> = o.systems.iter().map(|&s| (s, system_info(s, &pg))).collect();

    let m = Machine::read();
    let load_start = load_average();
    let mut versions = vec![
        ("dray", format!("commit {}", m.commit)),
        (
            "rustc",
            version_of("rustc", &["--version"]).map_or("?".into(), |v| v.trim_start_matches("rustc ").to_string()),
        ),
    ];
    if o.systems.iter().any(|s| s.is_node()) {
        versions.push(("node", version_of("node", &["--version"]).unwrap_or_else(|| "?".into())));
    }
    if o.systems.iter().any(|s| matches!(s, System::Bullmq | System::BullmqAof)) {
        // `Redis server v=7.0.15 sha=...`: the version alone.
        let v = version_of(&redis_bin.display().to_string(), &["--version"]).unwrap_or_else(|| "?".into());
        let v = v.split_whitespace().find_map(|w| w.strip_prefix("v=")).map_or(v.clone(), str::to_string);
        versions.push(("redis", v));
    }
    if o.systems.iter().any(|s| s.uses_postgres()) {
        versions.push(("postgresql", pg.version.clone()));
    }
    println!("# cargo xtask bench compare{}", if o.smoke { " --smoke" } else { "" });
    println!("date:     {}", m.date);
    println!("machine:  {} cpus, {}, {:.1} GiB RAM, kernel {}", m.cpus, m.cpu_model, m.memory_gib, m.kernel);
    println!("data dir: {} ({fstype} on {device}); load {load_start} (1, 5, 15 min)", o.dir.display());
    for (name, v) in &versions {
        println!("{name:<9} {v}");
    }
    for (s, info) in &infos {
        println!("system {:<16} server: {}; durability: {}", s.name(), info.server, info.durability);
    }
    println!(
        "workloads: {}; {} repetition(s), systems alternating; concurrency {}, producers {}",
        o.workloads.iter().map(|w| w.name).collect::<Vec<_>>().join(", "),
        o.repeat,
        o.concurrency,
        o.producers
    );
    println!();

    let runs_started = Instant::now();
    let mut runs: Vec<Run> = Vec::new();
    let mut configs: BTreeMap<(System, &'static str), Value> = BTreeMap::new();
    for spec in &o.workloads {
        for rep in 1..=o.repeat {
            for &system in &o.systems {
                let run = run_one(o, &env, &exe, &root, system, spec, rep);
                print_run(&run, spec, o.repeat);
                if let Some(config) = run.result.as_ref().and_then(|r| r.get("config"))
                    && !configs.contains_key(&(system, spec.name))
                {
                    println!("    config: {config}");
                    configs.insert((system, spec.name), config.clone());
                }
                runs.push(run);
            }
        }
    }

    let mut peer_versions: BTreeMap<&str, String> = BTreeMap::new();
    for r in runs.iter().filter(|r| r.system.is_node()) {
        if let Some(v) = r.result.as_ref().and_then(|x| x.get("version")).and_then(Value::as_str) {
            peer_versions.entry(r.system.driver_system()).or_insert_with(|| v.to_string());
        }
    }
    versions.extend(peer_versions);
    let ctx = ReportContext {
        smoke: o.smoke,
        repeat: o.repeat,
        machine: format!(
            "{} cpus ({}), {:.1} GiB RAM, kernel {}; data on {fstype} ({device})",
            m.cpus, m.cpu_model, m.memory_gib, m.kernel
        ),
        date: m.date.clone(),
        load: format!("{load_start} at start, {} at end", load_average()),
        minutes: runs_started.elapsed().as_secs_f64() / 60.0,
        versions: versions.iter().map(|(k, v)| format!("{k} {v}")).collect(),
        command: command_line(o),
        concurrency: o.concurrency,
        producers: o.producers,
    };
    let text = render(&ctx, &o.workloads, &infos, &runs, &configs);
    println!();
    println!("{text}");
    if let Some(out) = &o.out {
        let doc = std::fs::read_to_string(out).with_context(|| format!("read {}", out.display()))?;
        let doc = report::replace_section(&doc, &text, INTRO).with_context(|| format!("update {}", out.display()))?;
        std::fs::write(out, doc).with_context(|| format!("write {}", out.display()))?;
        println!("wrote the report into {} (between {} and {})", out.display(), report::BEGIN, report::END);
    }
    let failed: Vec<String> = runs
        .iter()
        .filter_map(|r| r.failure.as_ref().map(|f| format!("{} {} run {}: {}", r.system.name(), r.workload, r.rep, f)))
        .collect();
    if !failed.is_empty() {
        bail!("{} of {} runs failed:\n{}", failed.len(), runs.len(), failed.join("\n"));
    }
    eprintln!("compare: done in {:.1} min", started.elapsed().as_secs_f64() / 60.0);
    Ok(())
}

/// The command that reproduces this run, for the report.
fn command_line(o: &CompareOptions) -> String {
    let mut c = "cargo xtask bench compare".to_string();
    if o.smoke {
        c += " --smoke";
    }
    let all_systems = o.systems.len() == System::ALL.len();
    if !all_systems {
        c += &format!(" --systems {}", o.systems.iter().map(|s| s.name()).collect::<Vec<_>>().join(","));
    }
    let defaults: &[WorkloadSpec] = if o.smoke { &WorkloadSpec::SMOKE } else { &WorkloadSpec::FULL };
    if o.workloads.len() != defaults.len() {
        c += &format!(" --workloads {}", o.workloads.iter().map(|w| w.name).collect::<Vec<_>>().join(","));
    }
    for (flag, kind) in [
        ("--bulk-jobs", DriverWorkload::Bulk),
        ("--steady-ms", DriverWorkload::Steady),
        ("--single-jobs", DriverWorkload::Single),
    ] {
        let size = |w: &WorkloadSpec| if kind == DriverWorkload::Steady { w.duration_ms } else { w.jobs };
        let default = defaults.iter().find(|d| d.kind == kind).map(size);
        if let Some(w) = o.workloads.iter().find(|w| w.kind == kind)
            && default != Some(size(w))
        {
            c += &format!(" {flag} {}", size(w));
        }
    }
    if o.repeat != if o.smoke { 1 } else { 3 } {
        c += &format!(" --repeat {}", o.repeat);
    }
    if o.concurrency != 50 {
        c += &format!(" --concurrency {}", o.concurrency);
    }
    if o.producers != 4 {
        c += &format!(" --producers {}", o.producers);
    }
    if let Some(out) = &o.out {
        c += &format!(" --out {}", out.display());
    }
    c
}

/// One run: a fresh system, the driver, the figures, the system stopped. Never returns an
/// error: what went wrong is the run's `failure`, so one broken system does not stop the others.
fn run_one(
    o: &CompareOptions,
    env: &Env,
    exe: &Path,
    root: &Path,
    system: System,
    spec: &WorkloadSpec,
    rep: usize,
) -> Run {
    let mut run = Run {
        system,
        workload: spec.name,
        rep,
        result: None,
        failure: None,
        driver_cpu_s: f64::NAN,
        server_cpu_s: f64::NAN,
        cpu_jobs: 0.0,
        wall_s: f64::NAN,
    };
    let label = format!("{}-{}-{rep}", system.name(), spec.name);
    let sut = match Sut::start(env, system, &label) {
        Ok(sut) => sut,
        Err(e) => {
            run.failure = Some(format!("could not start the system: {e:#}"));
            return run;
        }
    };
    let mut command = if system.is_node() {
        let mut c = Command::new("node");
        c.arg(root.join("bench/peers/run.mjs"));
        c
    } else {
        let mut c = Command::new(exe);
        c.args(["bench", "driver"]);
        c
    };
    command
        .current_dir(root)
        .args(["--system", system.driver_system()])
        .args(spec.driver_args())
        .args(["--concurrency", &o.concurrency.to_string(), "--producers", &o.producers.to_string()])
        .args(["--queue", "bench"])
        .args(sut.driver_args());
    let watch = sut.cpu_watch();
    let driver =
        systems::run_driver(command, Duration::from_secs(spec.timeout_s()), &format!("    [{}] ", system.name()));
    let server_cpu = watch.stop();
    run.server_cpu_s = server_cpu.values().sum();
    let failure_logs = |sut: &Sut| sut.log_tail();
    let driver = match driver {
        Ok(d) => d,
        Err(e) => {
            run.failure = Some(format!("{e:#}\n{}", failure_logs(&sut)));
            let _ = sut.finish();
            return run;
        }
    };
    run.driver_cpu_s = driver.cpu_s;
    run.wall_s = driver.wall_s;
    let last_line = driver.stdout.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
    let result: Option<Value> = serde_json::from_str::<Value>(last_line).ok().filter(Value::is_object);
    let stderr = driver.stderr_tail.iter().rev().take(8).rev().cloned().collect::<Vec<_>>().join("\n");
    let failure = if driver.timed_out {
        Some(format!("killed after {} s (the run's time limit); its last stderr lines:\n{stderr}", spec.timeout_s()))
    } else if !driver.status.is_some_and(|s| s.success()) {
        Some(format!(
            "the driver exited with {}; its last stderr lines:\n{stderr}",
            driver.status.map_or("an unknown status".into(), |s| s.to_string())
        ))
    } else if let Some(r) = &result {
        check_result(system, spec, r).err()
    } else {
        Some(format!("the driver printed no JSON object as its last stdout line (it printed {last_line:?})"))
    };
    if let Some(r) = &result {
        run.cpu_jobs = report::cpu_jobs(spec, r);
    }
    if let Some(f) = failure {
        run.failure = Some(format!("{f}\n{}", failure_logs(&sut)).trim_end().to_string());
    }
    run.result = result;
    if let Err(e) = sut.finish() {
        eprintln!("compare: cleaning up after {label}: {e:#}");
    }
    run
}

/// A driver's result that exited 0 must still be whole: its own system and workload, no errors,
/// and every job of bulk and single done.
fn check_result(system: System, spec: &WorkloadSpec, r: &Value) -> Result<(), String> {
    let s = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("");
    if s("system") != system.driver_system() || s("workload") != spec.kind.name() {
        return Err(format!(
            "the driver reported system {:?} workload {:?}, not {} {}",
            s("system"),
            s("workload"),
            system.driver_system(),
            spec.kind.name()
        ));
    }
    let errors = r.get("errors").and_then(Value::as_u64);
    match errors {
        Some(0) => {}
        Some(n) => return Err(format!("{n} jobs lost or failed (the driver's `errors`)")),
        None => return Err("the result has no `errors` count".into()),
    }
    let jobs = r.get("jobs").and_then(Value::as_u64).unwrap_or(0);
    if matches!(spec.kind, DriverWorkload::Bulk | DriverWorkload::Single) && jobs < spec.jobs {
        return Err(format!("only {jobs} of {} jobs completed", spec.jobs));
    }
    Ok(())
}

fn print_run(run: &Run, spec: &WorkloadSpec, repeat: usize) {
    use report::{Metric, number};
    let f = |m: Metric, d: usize| run.metric(m).map_or("–".into(), |v| number(v, d));
    let head = format!("[{} {}/{repeat}] {:<16}", spec.name, run.rep, run.system.name());
    if let Some(failure) = &run.failure {
        println!("{head} FAILED: {failure}");
        return;
    }
    let figures = match (spec.kind, spec.rate) {
        (DriverWorkload::Bulk, _) => format!(
            "{} e2e jobs/s (enqueue {} jobs/s, process {} jobs/s)",
            f(Metric::E2eRate, 0),
            f(Metric::EnqueueRate, 0),
            f(Metric::ProcessRate, 0)
        ),
        (DriverWorkload::Steady, rate) => format!(
            "achieved {} jobs/s of {} offered{}, backlog at end {}; start latency p50 {} p99 {} p999 {} ms",
            f(Metric::Achieved, 0),
            if rate == 0 { "flat out".to_string() } else { number(rate as f64, 0) },
            match run.metric(Metric::Sustained) {
                Some(1.0) => " (sustained)",
                Some(_) => " (NOT sustained)",
                None => "",
            },
            f(Metric::BacklogEnd, 0),
            f(Metric::P50, 2),
            f(Metric::P99, 2),
            f(Metric::P999, 2)
        ),
        (DriverWorkload::Single, _) => format!(
            "request p50 {} p99 {} ms; start latency p50 {} p99 {} p999 {} ms",
            f(Metric::RequestP50, 2),
            f(Metric::RequestP99, 2),
            f(Metric::P50, 2),
            f(Metric::P99, 2),
            f(Metric::P999, 2)
        ),
    };
    println!(
        "{head} {figures}; CPU ms per 1k jobs: driver {}, server {}; driver ran {:.1} s",
        f(Metric::DriverCpuPer1k, 1),
        f(Metric::ServerCpuPer1k, 1),
        run.wall_s
    );
}

/// What the report's header says.
#[derive(Debug)]
struct ReportContext {
    smoke: bool,
    repeat: usize,
    machine: String,
    date: String,
    load: String,
    minutes: f64,
    versions: Vec<String>,
    command: String,
    concurrency: usize,
    producers: usize,
}

/// The whole report, markdown (printed, and written between the markers with --out).
fn render(
    ctx: &ReportContext,
    specs: &[WorkloadSpec],
    infos: &[(System, SystemInfo)],
    runs: &[Run],
    configs: &BTreeMap<(System, &'static str), Value>,
) -> String {
    let mut s = String::new();
    let kind = if ctx.smoke { "Smoke run (too short to mean anything; checks that every driver works)" } else { "Run" };
    let _ = writeln!(s, "### {kind} of {}\n", ctx.date);
    let _ = writeln!(s, "- Command: `{}` ({:.1} min, builds excluded).", ctx.command, ctx.minutes);
    let _ = writeln!(s, "- Machine: {}. Load average (1, 5, 15 min): {}.", ctx.machine, ctx.load);
    let _ = writeln!(s, "- Versions: {}.", ctx.versions.join("; "));
    let _ = writeln!(
        s,
        "- Every figure is the median and [min–max] of {} run(s); within each repetition the systems run one after \
         the other, each on a fresh server, data directory or database. Every driver runs {} jobs at once in its \
         workers and {} producer loops (bulk, steady); producers and workers share the one driver process and the \
         machine's cores with the server.",
        ctx.repeat, ctx.concurrency, ctx.producers
    );
    let _ = writeln!(
        s,
        "- CPU: the driver process (client library, producers and workers) and the server side (`dray serve`; \
         `redis-server`; for PostgreSQL, the backends of the run's database plus the server's shared background \
         processes), over the driver's whole life including its start-up, per 1,000 jobs (a steady run at a fixed \
         rate counts the jobs offered)."
    );
    let _ = writeln!(
        s,
        "- Ratios divide a row's headline figure by Dray's (embedded) and, for rows on PostgreSQL, by dray-pg-1's.\n"
    );
    let rows: Vec<Vec<String>> =
        infos.iter().map(|(sys, i)| vec![sys.name().to_string(), i.durability.clone(), i.server.clone()]).collect();
    s += &report::table(&["system", "durability", "server"], &rows);
    let durability: Vec<(System, String)> = infos
        .iter()
        .map(|(sys, _)| {
            let short = match sys {
                System::Dray => "fsync per reply",
                System::Bullmq => "none",
                System::BullmqAof => "AOF always",
                _ => "PostgreSQL commit",
            };
            (*sys, short.to_string())
        })
        .collect();
    for spec in specs {
        let _ = writeln!(s, "\n#### {}\n\n{}.\n", spec.name, spec.describe());
        s += &report::workload_table(spec, &durability, runs);
    }
    let _ = writeln!(s, "\n#### Targets\n");
    for t in report::targets(specs, runs) {
        let _ = writeln!(s, "{}", t.line());
    }
    let failed: Vec<&Run> = runs.iter().filter(|r| r.failure.is_some()).collect();
    if !failed.is_empty() {
        let _ = writeln!(s, "\n#### Failed runs (not in the figures)\n");
        for r in failed {
            let first = r.failure.as_deref().unwrap_or("").lines().next().unwrap_or("");
            let _ = writeln!(s, "- {} {} run {}: {}", r.system.name(), r.workload, r.rep, first);
        }
    }
    if !configs.is_empty() {
        let _ =
            writeln!(s, "\n<details><summary>Driver configurations (each driver's <code>config</code>)</summary>\n");
        for ((sys, workload), config) in configs {
            let _ = writeln!(s, "- {} {}: `{}`", sys.name(), workload, config);
        }
        let _ = writeln!(s, "\n</details>");
    }
    s
}
