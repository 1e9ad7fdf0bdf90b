//! `cargo xtask bench store`: runs each workload in a fresh child process against a fresh data
//! directory, interleaving the runs of `fsync`, `churn` and `enqueue` so slow phases of a shared
//! disk spread over all of them, then prints the median and spread of each figure with the
//! durability mode beside it, and the machine it ran on.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};

use crate::args::{CHILD, DurabilityArg, Options, Workload};
use crate::machine::{self, Machine};
use crate::workloads::{FSYNC_PROBE_BYTES, RECOVER_PAYLOAD_BYTES, Report};

/// PRODUCT.md's targets, as the report states them.
const CHURN_TARGET_JOBS_PER_S: f64 = 300_000.0;
const RECOVER_TARGET_JOBS: u64 = 10_000_000;
const RECOVER_TARGET_OPEN_S: f64 = 15.0;
const RECOVER_TARGET_RSS_PER_PAYLOAD: f64 = 2.0;

pub fn run(o: &Options) -> anyhow::Result<()> {
    std::fs::create_dir_all(&o.dir).with_context(|| format!("create {}", o.dir.display()))?;
    let (fstype, device) = machine::check_real_disk(&o.dir)?;
    let m = Machine::read();
    let exe = std::env::current_exe().context("find this binary")?;
    println!("# cargo xtask bench store");
    println!("date:     {}", m.date);
    println!("machine:  {} cpus, {}, {:.1} GiB RAM, kernel {}", m.cpus, m.cpu_model, m.memory_gib, m.kernel);
    println!("commit:   {}; store sources fingerprint {}", m.commit, machine::sources_fingerprint());
    println!("data dir: {} ({fstype} on {device})", o.dir.display());
    println!("load:     {} (1, 5, 15 min) at start", load_average());
    println!();

    let mut fsync = Vec::new();
    let mut churn = Vec::new();
    let mut enqueue = Vec::new();
    let interleaved = [Workload::Fsync, Workload::Churn, Workload::Enqueue];
    if o.workloads.iter().any(|w| interleaved.contains(w)) {
        println!(
            "lanes {} x batch {}, warm-up {} s, measured {} s per run, {} runs, durability {}",
            o.lanes,
            o.batch,
            o.warmup_s,
            o.duration_s,
            o.runs,
            o.durability.label()
        );
    }
    for run in 1..=o.runs {
        for w in interleaved.into_iter().filter(|w| o.workloads.contains(w)) {
            let dir = o.dir.join(format!("{}-{run}", w.name()));
            let r = child(&exe, w.name(), o, &dir, &[])?;
            print_run(w, run, o.durability, &r);
            match w {
                Workload::Fsync => fsync.push(r),
                Workload::Churn => churn.push(r),
                Workload::Enqueue => enqueue.push(r),
                Workload::Recover => unreachable!(),
            }
            if !o.keep {
                remove_dir(&dir)?;
            }
        }
    }

    let mut recovered = Vec::new();
    if o.workloads.contains(&Workload::Recover) {
        for &n in &o.jobs {
            recovered.extend(recover(&exe, o, n)?);
        }
    }

    println!();
    println!("## Summary");
    println!("load: {} (1, 5, 15 min) at end", load_average());
    if !(fsync.is_empty() && churn.is_empty() && enqueue.is_empty()) {
        println!("median of {} runs, [min - max]", o.runs);
        summary(o, &fsync, &churn, &enqueue);
    }
    if !recovered.is_empty() {
        recover_summary(&recovered);
    }
    Ok(())
}

pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

pub fn remove_dir(dir: &Path) -> anyhow::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("remove {}", dir.display()))
        }
        _ => Ok(()),
    }
}

/// The disk's fsync rate right now: the `fsync` workload (append + fdatasync from one thread,
/// each probe size for `seconds`) in a fresh process, in `dir`. For other benchmarks to print
/// beside figures that depend on the disk.
pub fn fsync_probe(dir: &Path, seconds: f64) -> anyhow::Result<Report> {
    let exe = std::env::current_exe().context("find this binary")?;
    let mut o = Options::parse(&["fsync"])?;
    o.duration_s = seconds;
    let r = child(&exe, Workload::Fsync.name(), &o, dir, &[]);
    remove_dir(dir)?;
    r
}

/// Runs one workload in a fresh process and returns its `result` line.
fn child(exe: &Path, workload: &str, o: &Options, dir: &Path, extra: &[String]) -> anyhow::Result<Report> {
    let mut args = o.child_args();
    let i = args.iter().position(|a| a == "--dir").expect("child args name the dir");
    args[i + 1] = dir.display().to_string();
    let out = Command::new(exe)
        .arg(CHILD)
        .arg(workload)
        .args(&args)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("start the {workload} child"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("the {workload} child failed ({}); its output:\n{stdout}", out.status);
    }
    stdout
        .lines()
        .rev()
        .find_map(Report::parse)
        .with_context(|| format!("the {workload} child printed no result:\n{stdout}"))
}

fn print_run(w: Workload, run: usize, d: DurabilityArg, r: &Report) {
    match w {
        Workload::Fsync => {
            for size in FSYNC_PROBE_BYTES {
                let k = |k: &str| if size == 4096 { k.to_string() } else { format!("{k}_{}k", size / 1024) };
                println!(
                    "run {run} fsync:   {:>9} fsyncs/s   ({:>3} KiB append + fdatasync, {} MB/s; p50 {} ms, p99 {} ms, max {} ms)",
                    r.get(&k("fsyncs_per_s")).unwrap_or("?"),
                    size / 1024,
                    r.get(&k("mb_per_s")).unwrap_or("?"),
                    r.get(&k("p50_ms")).unwrap_or("?"),
                    r.get(&k("p99_ms")).unwrap_or("?"),
                    r.get(&k("max_ms")).unwrap_or("?"),
                );
            }
        }
        _ => println!(
            "run {run} {:<8} {:>9} jobs/s   durability {}; {} fsyncs/s, {} jobs/fsync ({} KiB), fsync p50 {} ms p99 {} ms, \
             fsync busy {}, log {} MB/s ({} B/job), {} snapshots ({} MB); cpu {} s in {} s: {}; waiting for a core {} s",
            format!("{}:", w.name()),
            r.get("jobs_per_s").unwrap_or("?"),
            d.arg(),
            r.get("fsyncs_per_s").unwrap_or("?"),
            r.get("jobs_per_fsync").unwrap_or("?"),
            r.get("kib_per_fsync").unwrap_or("?"),
            r.get("fsync_p50_ms").unwrap_or("-"),
            r.get("fsync_p99_ms").unwrap_or("-"),
            r.get("fsync_busy").unwrap_or("?"),
            r.get("mb_written_per_s").unwrap_or("?"),
            r.get("bytes_per_job").unwrap_or("?"),
            r.get("snapshots").unwrap_or("?"),
            r.get("snapshot_mb_written").unwrap_or("?"),
            r.get("cpu_total_s").unwrap_or("?"),
            r.get("elapsed_s").unwrap_or("?"),
            r.cpu().iter().take(4).map(|(t, s)| format!("{t} {s:.2}")).collect::<Vec<_>>().join(", "),
            r.get("runq_wait_total_s").unwrap_or("?"),
        ),
    }
    if w != Workload::Fsync {
        let used = r.f64("bytes_used");
        let jobs = r.f64("jobs_in_memory");
        let rate = r.f64("jobs_per_s");
        let budget = r.f64("memory_budget_bytes");
        println!(
            "        memory: {} jobs held, {:.0} B each as counted against the budget; VmRSS {} MiB; at this rate the default \
             budget of {:.1} GiB is full after {:.0} s unless finished jobs are pruned sooner than their retention",
            jobs,
            used / jobs,
            r.get("rss_mib").unwrap_or("?"),
            budget / (1u64 << 30) as f64,
            budget / (used / jobs) / rate,
        );
    }
}

/// Median and range of one key over runs.
fn spread(rs: &[Report], key: &str) -> Option<(f64, f64, f64)> {
    values_spread(rs.iter().map(|r| r.f64(key)).collect())
}

pub fn values_spread(mut v: Vec<f64>) -> Option<(f64, f64, f64)> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let median = if v.len() % 2 == 1 { v[v.len() / 2] } else { (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0 };
    Some((median, v[0], v[v.len() - 1]))
}

fn fmt_spread(rs: &[Report], key: &str, decimals: usize) -> String {
    match spread(rs, key) {
        Some((med, lo, hi)) => format!("{med:.decimals$} [{lo:.decimals$} - {hi:.decimals$}]"),
        None => "-".into(),
    }
}

fn summary(o: &Options, fsync: &[Report], churn: &[Report], enqueue: &[Report]) {
    if !fsync.is_empty() {
        println!();
        println!("| disk, 1 thread: append + fdatasync | fsyncs/s | MB/s | p50 ms | p99 ms |");
        println!("|---|---|---|---|---|");
        for size in FSYNC_PROBE_BYTES {
            let k = |k: &str| if size == 4096 { k.to_string() } else { format!("{k}_{}k", size / 1024) };
            println!(
                "| {} KiB appends ({} runs x {} s) | {} | {} | {} | {} |",
                size / 1024,
                fsync.len(),
                o.duration_s,
                fmt_spread(fsync, &k("fsyncs_per_s"), 0),
                fmt_spread(fsync, &k("mb_per_s"), 1),
                fmt_spread(fsync, &k("p50_ms"), 3),
                fmt_spread(fsync, &k("p99_ms"), 3)
            );
        }
    }
    if churn.is_empty() && enqueue.is_empty() {
        return;
    }
    println!();
    println!(
        "| workload | durability | lanes x batch | jobs/s | fsyncs/s | jobs/fsync | KiB/fsync | fsync p50 / p99 ms | fsync busy | CPU s per s (of {}) | waiting for a core, s per s |",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (name, rs) in [("churn", churn), ("enqueue", enqueue)] {
        if rs.is_empty() {
            continue;
        }
        let cpu_per_s = values_spread(rs.iter().map(|r| r.f64("cpu_total_s") / r.f64("elapsed_s")).collect());
        let wait_per_s = values_spread(rs.iter().map(|r| r.f64("runq_wait_total_s") / r.f64("elapsed_s")).collect());
        println!(
            "| {name} | {} | {} x {} | {} | {} | {} | {} | {} / {} | {} | {} | {} |",
            o.durability.label(),
            o.lanes,
            o.batch,
            fmt_spread(rs, "jobs_per_s", 0),
            fmt_spread(rs, "fsyncs_per_s", 0),
            fmt_spread(rs, "jobs_per_fsync", 0),
            fmt_spread(rs, "kib_per_fsync", 0),
            spread(rs, "fsync_p50_ms").map_or("-".into(), |s| format!("{:.3}", s.0)),
            spread(rs, "fsync_p99_ms").map_or("-".into(), |s| format!("{:.3}", s.0)),
            fmt_spread(rs, "fsync_busy", 2),
            cpu_per_s.map_or("-".into(), |(m, lo, hi)| format!("{m:.2} [{lo:.2} - {hi:.2}]")),
            wait_per_s.map_or("-".into(), |(m, lo, hi)| format!("{m:.2} [{lo:.2} - {hi:.2}]")),
        );
    }
    println!();
    for (name, rs) in [("churn", churn), ("enqueue", enqueue)] {
        if let Some(r) = rs.first() {
            let threads: Vec<String> = r
                .cpu()
                .iter()
                .map(|(t, s)| {
                    format!(
                        "{t} {s:.2} s (+{} s runnable, waiting for a core)",
                        r.get(&format!("runq_wait.{t}")).unwrap_or("?")
                    )
                })
                .collect();
            println!(
                "{name} run 1, CPU by thread over {} s: {}",
                r.get("elapsed_s").unwrap_or("?"),
                threads.join(", ")
            );
        }
    }
    if let Some((med, lo, hi)) = spread(churn, "jobs_per_s") {
        let met = if lo >= CHURN_TARGET_JOBS_PER_S {
            "met in every run"
        } else if med >= CHURN_TARGET_JOBS_PER_S {
            "met by the median, not by every run"
        } else {
            "NOT met"
        };
        println!(
            "target churn >= {CHURN_TARGET_JOBS_PER_S:.0} jobs/s ({}): {med:.0} [{lo:.0} - {hi:.0}]: {met}",
            o.durability.label()
        );
        if let (Some(disk), Some(group)) = (spread(fsync, "fsyncs_per_s"), spread(churn, "jobs_per_fsync")) {
            let ops = spread(churn, "ops_per_fsync").map_or(f64::NAN, |s| s.0);
            println!(
                "physical limit (disk fsyncs/s x group size): {:.0} fsyncs/s (4 KiB probe, median) x {:.0} jobs per fsync \
                 (churn's median group: {ops:.1} operations of up to {} jobs) = {:.0} jobs/s; churn itself issued {:.0} fsyncs/s",
                disk.0,
                group.0,
                o.batch,
                disk.0 * group.0,
                spread(churn, "fsyncs_per_s").map_or(f64::NAN, |s| s.0),
            );
        }
    }
}

/// One open of a filled store.
#[derive(Debug)]
struct Recovered {
    jobs: u64,
    source: &'static str,
    cache: String,
    report: Report,
}

fn recover(exe: &Path, o: &Options, n: u64) -> anyhow::Result<Vec<Recovered>> {
    let dir: PathBuf = o.dir.join(format!("recover-{n}"));
    remove_dir(&dir)?;
    let payload_bytes = n * RECOVER_PAYLOAD_BYTES as u64;
    let available_kib = machine::meminfo_kib("MemAvailable:").unwrap_or(0);
    println!();
    println!(
        "recover {n} jobs x {RECOVER_PAYLOAD_BYTES} B payload = {:.2} GiB of payload; {:.1} GiB of memory available now",
        gib(payload_bytes),
        available_kib as f64 / (1024.0 * 1024.0)
    );
    if payload_bytes / 1024 * 2 > available_kib {
        println!("warning: the recovered store may need more memory than is available now");
    }
    let jobs = ["--jobs".to_string(), n.to_string()];
    let started = Instant::now();
    let fill = child(exe, "fill", o, &dir, &jobs)?;
    println!(
        "  fill (durability never, then close() makes it durable): {} jobs in {} s (inserts {} s); log {:.2} GiB ({:.0} s since start)",
        fill.get("jobs").unwrap_or("?"),
        fill.get("fill_s").unwrap_or("?"),
        fill.get("insert_s").unwrap_or("?"),
        gib(fill.f64("log_bytes") as u64),
        started.elapsed().as_secs_f64()
    );
    let mut out = Vec::new();
    let measure = |source: &'static str, out: &mut Vec<Recovered>| -> anyhow::Result<()> {
        let mut caches = vec!["warm"];
        if o.cold {
            caches.push("cold");
        }
        for cache in caches {
            if cache == "cold" {
                machine::drop_from_page_cache(&dir)?;
            }
            let cached = machine::cached_percent(&dir).map_or("?".into(), |p| format!("{p:.0}%"));
            let r = child(exe, "open", o, &dir, &jobs)?;
            let rss = r.f64("rss_kib") * 1024.0;
            let hwm = r.f64("hwm_kib") * 1024.0;
            println!(
                "  open ({source}, {cache}: {cached} of the files in the page cache): ready in {} s (cpu user {} s, sys {} s, \
                 {} minor faults); VmRSS {:.2} GiB = {:.2}x payload, VmHWM {:.2} GiB = {:.2}x payload; {} jobs",
                r.get("open_s").unwrap_or("?"),
                r.get("user_s").unwrap_or("?"),
                r.get("sys_s").unwrap_or("?"),
                r.get("minor_faults").unwrap_or("?"),
                gib(rss as u64),
                rss / payload_bytes as f64,
                gib(hwm as u64),
                hwm / payload_bytes as f64,
                r.get("jobs").unwrap_or("?"),
            );
            if r.get("jobs") != Some(n.to_string().as_str()) {
                bail!("recovered {} jobs, expected {n}", r.get("jobs").unwrap_or("?"));
            }
            out.push(Recovered { jobs: n, source, cache: format!("{cache} ({cached} cached)"), report: r });
        }
        Ok(())
    };
    measure("log only", &mut out)?;
    let snap = child(exe, "snapshot", o, &dir, &jobs)?;
    println!(
        "  snapshot: open (log only, again) {} s, snapshot() {} s; now log {:.2} GiB, snapshot {:.2} GiB",
        snap.get("open_s").unwrap_or("?"),
        snap.get("snapshot_s").unwrap_or("?"),
        gib(snap.f64("log_bytes") as u64),
        gib(snap.f64("snapshot_bytes") as u64),
    );
    measure("after snapshot", &mut out)?;
    if !o.keep {
        remove_dir(&dir)?;
    }
    Ok(out)
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

fn recover_summary(rs: &[Recovered]) {
    println!();
    println!(
        "| jobs (1 KiB payloads) | recovery from | page cache | ready in s | CPU user / sys s | VmRSS GiB | RSS / payload | VmHWM GiB | HWM / payload |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in rs {
        let payload = (r.jobs * RECOVER_PAYLOAD_BYTES as u64) as f64;
        let rss = r.report.f64("rss_kib") * 1024.0;
        let hwm = r.report.f64("hwm_kib") * 1024.0;
        println!(
            "| {} | {} | {} | {} | {} / {} | {:.2} | {:.2} | {:.2} | {:.2} |",
            r.jobs,
            r.source,
            r.cache,
            r.report.get("open_s").unwrap_or("?"),
            r.report.get("user_s").unwrap_or("?"),
            r.report.get("sys_s").unwrap_or("?"),
            gib(rss as u64),
            rss / payload,
            gib(hwm as u64),
            hwm / payload
        );
    }
    for r in rs.iter().filter(|r| r.jobs == RECOVER_TARGET_JOBS) {
        let payload = (r.jobs * RECOVER_PAYLOAD_BYTES as u64) as f64;
        let open_s = r.report.f64("open_s");
        let ratio = r.report.f64("rss_kib") * 1024.0 / payload;
        println!(
            "target 10M jobs ({}, {}): ready < {RECOVER_TARGET_OPEN_S} s: {} ({open_s:.1} s); RSS < {RECOVER_TARGET_RSS_PER_PAYLOAD}x payload: {} ({ratio:.2}x)",
            r.source,
            r.cache,
            if open_s < RECOVER_TARGET_OPEN_S { "met" } else { "NOT met" },
            if ratio < RECOVER_TARGET_RSS_PER_PAYLOAD { "met" } else { "NOT met" },
        );
    }
}
