//! `cargo xtask bench http`: the real `dray serve` binary, one fresh process and data directory
//! per run, driven over HTTP from this process. Runs go round-robin over the workloads so a slow
//! phase of the shared disk falls on all of them; the summary gives median and [min - max] of
//! each figure with the durability mode beside it, and the machine it ran on.

use std::path::Path;

use anyhow::{Context, bail};

use crate::bench_store::{self, load_average, values_spread};
use crate::http_args::{BATCH_JOBS, HttpOptions, HttpWorkload};
use crate::http_load::{self, RunResult};
use crate::http_server::{self, Server};
use crate::machine::{self, Machine};
use crate::workloads::Report;

/// Seconds per size of the fsync probe before each round (4, 64 and 256 KiB appends).
const FSYNC_PROBE_S: f64 = 1.0;

/// PRODUCT.md's targets.
const BATCH_TARGET_JOBS_PER_S: f64 = 100_000.0;
const SINGLE_TARGET_RATE: u64 = 5_000;
const SINGLE_TARGET_P50_MS: f64 = 1.0;
const SINGLE_TARGET_P99_MS: f64 = 5.0;

/// One measured run.
#[derive(Debug)]
struct Run {
    workload: HttpWorkload,
    /// Offered jobs/s of `single`.
    rate: Option<u64>,
    result: RunResult,
}

pub fn run(o: &HttpOptions) -> anyhow::Result<()> {
    std::fs::create_dir_all(&o.dir).with_context(|| format!("create {}", o.dir.display()))?;
    let (fstype, device) = machine::check_real_disk(&o.dir)?;
    if !o.bin.is_file() {
        bail!("{} does not exist: build it with `cargo build --release -p dray` (or pass --bin)", o.bin.display());
    }
    let m = Machine::read();
    let mut o = o.clone();
    if o.count_fsyncs && !http_server::fsync_counting_works() {
        println!("note: `perf stat -e syscalls:sys_enter_fdatasync` does not work here; fsyncs are not counted");
        o.count_fsyncs = false;
    }
    println!("# cargo xtask bench http");
    println!("date:     {}", m.date);
    println!("machine:  {} cpus, {}, {:.1} GiB RAM, kernel {}", m.cpus, m.cpu_model, m.memory_gib, m.kernel);
    println!("commit:   {}; sources fingerprint {}", m.commit, machine::sources_fingerprint());
    println!("server:   {} ({})", o.bin.display(), binary_age(&o.bin));
    println!("data dir: {} ({fstype} on {device})", o.dir.display());
    println!("load:     {} (1, 5, 15 min) at start", load_average());
    println!(
        "durability {}; {} runs; warm-up {} s, measured {} s per run; generator and workers in this process (tokio, {} threads)",
        o.durability.label(),
        o.runs,
        o.warmup_s,
        o.duration_s,
        m.cpus
    );
    if o.perf {
        println!("--perf: the server is profiled during every window; these figures include the profiler's cost");
    }
    println!();

    let mut runs: Vec<Run> = Vec::new();
    let mut disk: Vec<Report> = Vec::new();
    for run in 1..=o.runs {
        // The disk changes regime within minutes (see the store benchmark): probe it before each
        // round, so the latencies can be read against the fsync time of the moment.
        let probe = bench_store::fsync_probe(&o.dir.join("http-fsync-probe"), FSYNC_PROBE_S)?;
        println!(
            "run {run} disk:       4 KiB append + fdatasync: {} fsyncs/s, p50 {} ms, p99 {} ms ({FSYNC_PROBE_S} s, one thread, before the round)",
            probe.get("fsyncs_per_s").unwrap_or("?"),
            probe.get("p50_ms").unwrap_or("?"),
            probe.get("p99_ms").unwrap_or("?"),
        );
        disk.push(probe);
        for &w in &o.workloads {
            let rates: Vec<Option<u64>> =
                if w == HttpWorkload::Single { o.rates.iter().copied().map(Some).collect() } else { vec![None] };
            for rate in rates {
                let label = match rate {
                    Some(rate) => format!("{}-{rate}", w.name()),
                    None => w.name().to_string(),
                };
                let server = Server::start(&o.bin, &o.dir.join(format!("http-{label}-{run}")), o.durability)?;
                let load = load_average();
                let profile = o.perf.then(|| o.dir.join(format!("perf-{label}-{run}.data")));
                let profile = profile.as_deref();
                let result = match (w, rate) {
                    (HttpWorkload::BatchRaw, _) => http_load::batch(&server, &o, false, profile),
                    (HttpWorkload::BatchSdk, _) => http_load::batch(&server, &o, true, profile),
                    (HttpWorkload::Single, Some(rate)) => http_load::single(&server, &o, rate, profile),
                    (HttpWorkload::Single, None) => unreachable!("single always has a rate"),
                };
                let result = match result {
                    Ok(r) => r,
                    Err(e) => {
                        let log = std::fs::read_to_string(&server.log).unwrap_or_default();
                        let tail: Vec<&str> = log.lines().rev().take(20).collect();
                        let tail: Vec<&str> = tail.into_iter().rev().collect();
                        return Err(e.context(format!(
                            "{label} run {run} failed; the server's last log lines:\n{}",
                            tail.join("\n")
                        )));
                    }
                };
                server.finish(o.keep)?;
                print_run(&o, run, w, rate, &result, &load);
                if let Some(profile) = profile {
                    println!("        profile of the server: {} (`perf report -i` it)", profile.display());
                }
                runs.push(Run { workload: w, rate, result });
            }
        }
    }

    println!();
    println!("## Summary");
    println!("load: {} (1, 5, 15 min) at end", load_average());
    println!("median of {} runs, [min - max]; durability {}", o.runs, o.durability.label());
    if let Some((med, lo, hi)) = values_spread(disk.iter().map(|r| r.f64("p50_ms")).collect()) {
        let rate = values_spread(disk.iter().map(|r| r.f64("fsyncs_per_s")).collect());
        println!(
            "disk before each round (4 KiB append + fdatasync, one thread): p50 {med:.3} [{lo:.3} - {hi:.3}] ms, {} fsyncs/s",
            rate.map_or("-".into(), |(m, l, h)| format!("{m:.0} [{l:.0} - {h:.0}]"))
        );
    }
    summary(&o, &runs);
    Ok(())
}

/// How long ago the server binary was built, so a stale binary shows.
fn binary_age(bin: &Path) -> String {
    let modified = std::fs::metadata(bin).and_then(|m| m.modified());
    match modified.map(|t| t.elapsed()) {
        Ok(Ok(age)) => format!("built {:.0} min ago", age.as_secs_f64() / 60.0),
        _ => "build time unknown".into(),
    }
}

fn f(v: f64, decimals: usize) -> String {
    if v.is_finite() { format!("{v:.decimals$}") } else { "-".into() }
}

fn threads(r: &RunResult, n: usize) -> String {
    r.server_threads
        .iter()
        .filter(|t| t.1 >= 0.005)
        .take(n)
        .map(|(name, run, wait)| format!("{name} {run:.2} (+{wait:.2} waiting)"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn print_run(o: &HttpOptions, run: usize, w: HttpWorkload, rate: Option<u64>, r: &RunResult, load: &str) {
    let common = format!(
        "server cpu {} s/s (of which system {}; +{} s/s waiting for a core), generator cpu {} s/s (+{} waiting); fsyncs {}/s; server RSS {} MiB; rest of the machine {} cpu s/s; load {load}",
        f(r.get("server_cpu_per_s"), 2),
        f(r.get("server_sys_per_s"), 2),
        f(r.get("server_waiting_per_s"), 2),
        f(r.get("generator_cpu_per_s"), 2),
        f(r.get("generator_waiting_per_s"), 2),
        f(r.get("fsyncs_per_s"), 0),
        f(r.get("server_rss_mib"), 0),
        f(r.get("rest_cpu_per_s"), 2),
    );
    match w {
        HttpWorkload::BatchRaw | HttpWorkload::BatchSdk => {
            let detail = if w == HttpWorkload::BatchRaw {
                format!(
                    "{} jobs/lease, lease {} ms, ack {} ms, enqueue batch {} ms; {} acks refused",
                    f(r.get("jobs_per_lease"), 0),
                    f(r.get("lease_ms"), 2),
                    f(r.get("ack_ms"), 2),
                    f(r.get("enqueue_batch_ms"), 2),
                    f(r.get("acks_refused"), 0),
                )
            } else {
                format!(
                    "concurrency {}, ack batches of at most {}, {} jobs/lease, {} jobs/ack, enqueue batch {} ms; {} acks refused",
                    o.sdk_concurrency,
                    o.sdk_ack_batch.unwrap_or(dray_client::ACK_BATCH_MAX_DEFAULT),
                    f(r.get("sdk_jobs_per_lease"), 0),
                    f(r.get("sdk_jobs_per_ack"), 1),
                    f(r.get("enqueue_batch_ms"), 2),
                    f(r.get("sdk_acks_refused"), 0),
                )
            };
            println!(
                "run {run} {:<10} {:>8} jobs/s completed ({} s of server cpu per 100k jobs, {} jobs/fsync); {detail}",
                format!("{}:", w.name()),
                f(r.get("jobs_per_s"), 0),
                f(r.get("server_cpu_s_per_100k"), 2),
                f(r.get("jobs_per_fsync"), 0),
            );
        }
        HttpWorkload::Single => println!(
            "run {run} single@{}: enqueue-to-start p50 {} ms, p99 {} ms, p999 {} ms, max {} ms; achieved {} jobs/s accepted, {} started, {} completed; \
             enqueue round trip p50 {} ms p99 {} ms; {} lease replies/s ({} empty); {} not started, {} enqueue errors; pacer late max {} ms",
            rate.unwrap_or(0),
            f(r.get("p50_ms"), 3),
            f(r.get("p99_ms"), 3),
            f(r.get("p999_ms"), 3),
            f(r.get("max_ms"), 3),
            f(r.get("accepted_per_s"), 0),
            f(r.get("started_per_s"), 0),
            f(r.get("completed_per_s"), 0),
            f(r.get("enqueue_rtt_p50_ms"), 3),
            f(r.get("enqueue_rtt_p99_ms"), 3),
            f(r.get("lease_replies_per_s"), 0),
            f(r.get("empty_lease_replies_per_s"), 0),
            f(r.get("not_started"), 0),
            f(r.get("enqueue_errors"), 0),
            f(r.get("pacer_late_max_ms"), 2),
        ),
    }
    println!("        {common}");
    println!("        server threads over the window, cpu s: {}", threads(r, 6));
}

fn spread(runs: &[&Run], key: &str) -> Option<(f64, f64, f64)> {
    values_spread(runs.iter().map(|r| r.result.get(key)).collect())
}

fn fmt_spread(runs: &[&Run], key: &str, decimals: usize) -> String {
    match spread(runs, key) {
        Some((med, lo, hi)) => format!("{med:.decimals$} [{lo:.decimals$} - {hi:.decimals$}]"),
        None => "-".into(),
    }
}

fn summary(o: &HttpOptions, runs: &[Run]) {
    let of = |w: HttpWorkload, rate: Option<u64>| -> Vec<&Run> {
        runs.iter().filter(|r| r.workload == w && r.rate == rate).collect()
    };
    let batch: Vec<(HttpWorkload, Vec<&Run>)> = [HttpWorkload::BatchRaw, HttpWorkload::BatchSdk]
        .into_iter()
        .map(|w| (w, of(w, None)))
        .filter(|(_, rs)| !rs.is_empty())
        .collect();
    if !batch.is_empty() {
        println!();
        println!(
            "| batch ({BATCH_JOBS} jobs per enqueue, lease, ack) | durability | completed jobs/s | server CPU s per 100k jobs | generator + workers CPU s per 100k jobs | server CPU s/s | server waiting for a core s/s | rest of the machine CPU s/s | fsyncs/s | jobs/fsync |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|");
        for (w, rs) in &batch {
            let how = match w {
                HttpWorkload::BatchRaw => {
                    format!("raw Client lease/ack, {} producers, {} workers", o.producers, o.workers)
                }
                _ => format!(
                    "SDK Worker, concurrency {}, ack batches <= {}, {} producers",
                    o.sdk_concurrency,
                    o.sdk_ack_batch.unwrap_or(dray_client::ACK_BATCH_MAX_DEFAULT),
                    o.producers
                ),
            };
            println!(
                "| {how} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                o.durability.label(),
                fmt_spread(rs, "jobs_per_s", 0),
                fmt_spread(rs, "server_cpu_s_per_100k", 2),
                fmt_spread(rs, "generator_cpu_s_per_100k", 2),
                fmt_spread(rs, "server_cpu_per_s", 2),
                fmt_spread(rs, "server_waiting_per_s", 2),
                fmt_spread(rs, "rest_cpu_per_s", 2),
                fmt_spread(rs, "fsyncs_per_s", 0),
                fmt_spread(rs, "jobs_per_fsync", 0),
            );
        }
    }
    let singles: Vec<(u64, Vec<&Run>)> = o
        .rates
        .iter()
        .map(|&rate| (rate, of(HttpWorkload::Single, Some(rate))))
        .filter(|(_, rs)| !rs.is_empty())
        .collect();
    if !singles.is_empty() {
        println!();
        println!(
            "| single (1 job per request), offered jobs/s | durability | achieved jobs/s (started) | p50 ms | p99 ms | p999 ms | max ms | enqueue round trip p50 / p99 ms | server CPU ms per job | generator + worker CPU ms per job | server CPU s/s | server waiting for a core s/s | rest of the machine CPU s/s | fsyncs/s |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        for (rate, rs) in &singles {
            println!(
                "| {rate} | {} | {} | {} | {} | {} | {} | {} / {} | {} | {} | {} | {} | {} | {} |",
                o.durability.label(),
                fmt_spread(rs, "started_per_s", 0),
                fmt_spread(rs, "p50_ms", 3),
                fmt_spread(rs, "p99_ms", 3),
                fmt_spread(rs, "p999_ms", 3),
                fmt_spread(rs, "max_ms", 3),
                spread(rs, "enqueue_rtt_p50_ms").map_or("-".into(), |s| format!("{:.3}", s.0)),
                spread(rs, "enqueue_rtt_p99_ms").map_or("-".into(), |s| format!("{:.3}", s.0)),
                fmt_spread(rs, "server_cpu_ms_per_job", 3),
                fmt_spread(rs, "generator_cpu_ms_per_job", 3),
                fmt_spread(rs, "server_cpu_per_s", 2),
                fmt_spread(rs, "server_waiting_per_s", 2),
                fmt_spread(rs, "rest_cpu_per_s", 2),
                fmt_spread(rs, "fsyncs_per_s", 0),
            );
        }
    }

    println!();
    for (w, rs) in &batch {
        if let Some((med, lo, hi)) = spread(rs, "jobs_per_s") {
            println!(
                "target {} >= {BATCH_TARGET_JOBS_PER_S:.0} jobs/s end to end ({}): {med:.0} [{lo:.0} - {hi:.0}]: {}",
                w.name(),
                o.durability.label(),
                verdict(lo >= BATCH_TARGET_JOBS_PER_S, med >= BATCH_TARGET_JOBS_PER_S),
            );
        }
    }
    for (rate, rs) in &singles {
        if *rate != SINGLE_TARGET_RATE {
            continue;
        }
        for (key, target) in [("p50_ms", SINGLE_TARGET_P50_MS), ("p99_ms", SINGLE_TARGET_P99_MS)] {
            if let Some((med, lo, hi)) = spread(rs, key) {
                println!(
                    "target single@{rate} {} < {target} ms ({}): {med:.3} [{lo:.3} - {hi:.3}]: {}",
                    key.trim_end_matches("_ms"),
                    o.durability.label(),
                    verdict(hi < target, med < target),
                );
            }
        }
    }
}

fn verdict(every_run: bool, median: bool) -> &'static str {
    if every_run {
        "met in every run"
    } else if median {
        "met by the median, not by every run"
    } else {
        "NOT met"
    }
}
