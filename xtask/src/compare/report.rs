//! The report of `bench compare`, built from the runs as data: figures per run from the drivers'
//! JSON, median and [min–max] over the repetitions, one markdown table per workload with ratios
//! to Dray, the targets as MET / NOT MET, and the replacement of the marked section of a
//! document. Everything here is pure, so it is tested without running anything.

use serde_json::Value;

use crate::bench_driver::DriverWorkload;
use crate::compare::args::{System, WorkloadSpec, thousands};

pub const BEGIN: &str = "<!-- compare:begin -->";
pub const END: &str = "<!-- compare:end -->";

/// One driver run, finished or failed.
#[derive(Clone, Debug)]
pub struct Run {
    pub system: System,
    pub workload: &'static str,
    pub rep: usize,
    /// The driver's result object, when it printed one.
    pub result: Option<Value>,
    /// Why the run does not count (driver exit status, lost jobs...); `None` for a good run.
    pub failure: Option<String>,
    /// CPU seconds of the driver process over its whole life.
    pub driver_cpu_s: f64,
    /// CPU seconds of the server side over the driver's life.
    pub server_cpu_s: f64,
    /// Jobs the CPU is divided by (see [`cpu_jobs`]).
    pub cpu_jobs: f64,
    /// How long the driver process ran, start-up included.
    pub wall_s: f64,
}

impl Run {
    pub fn ok(&self) -> bool {
        self.failure.is_none() && self.result.is_some()
    }

    fn field(&self, path: &[&str]) -> Option<f64> {
        let mut v = self.result.as_ref()?;
        for key in path {
            v = v.get(key)?;
        }
        match v {
            Value::Bool(b) => Some(f64::from(u8::from(*b))),
            v => v.as_f64(),
        }
    }

    /// A figure of this run by name; `None` when the driver did not report what it needs.
    pub fn metric(&self, metric: Metric) -> Option<f64> {
        let jobs = self.field(&["jobs"]);
        let per = |secs: Option<f64>| match (jobs, secs) {
            (Some(j), Some(s)) if s > 0.0 => Some(j / s),
            _ => None,
        };
        let per_1k = |cpu_s: f64| (self.cpu_jobs > 0.0).then(|| cpu_s * 1e6 / self.cpu_jobs);
        match metric {
            Metric::E2eRate => per(self.field(&["e2e_s"])),
            Metric::EnqueueRate => per(self.field(&["enqueue_s"])),
            Metric::ProcessRate => per(self.field(&["process_s"])),
            Metric::Achieved => self.field(&["achieved_rate"]),
            Metric::Sustained => self.field(&["sustained"]),
            Metric::BacklogEnd => self.field(&["backlog_end"]),
            Metric::P50 => self.field(&["latency_ms", "p50"]),
            Metric::P99 => self.field(&["latency_ms", "p99"]),
            Metric::P999 => self.field(&["latency_ms", "p999"]),
            Metric::RequestP50 => self.field(&["request_latency_ms", "p50"]),
            Metric::RequestP99 => self.field(&["request_latency_ms", "p99"]),
            Metric::DriverCpuPer1k => per_1k(self.driver_cpu_s),
            Metric::ServerCpuPer1k => per_1k(self.server_cpu_s),
        }
    }
}

/// The jobs a run's CPU time is divided by: those the driver reports, except for a steady run
/// at a fixed rate, where the driver's CPU also covers jobs enqueued in its window and drained
/// after it, so the jobs offered (rate x window) are the fairer count.
pub fn cpu_jobs(spec: &WorkloadSpec, result: &Value) -> f64 {
    let jobs = result.get("jobs").and_then(Value::as_f64).unwrap_or(0.0);
    match spec.kind {
        DriverWorkload::Steady if spec.rate > 0 => jobs.max(spec.rate as f64 * spec.duration_ms as f64 / 1000.0),
        _ => jobs,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    E2eRate,
    EnqueueRate,
    ProcessRate,
    Achieved,
    Sustained,
    BacklogEnd,
    P50,
    P99,
    P999,
    RequestP50,
    RequestP99,
    DriverCpuPer1k,
    ServerCpuPer1k,
}

/// Median and range of a figure over runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Spread {
    /// Of the finite values; `None` if there are none. The median of an even count is the mean
    /// of the two middle values.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Spread> {
        let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
        Some(Spread { median, min: v[0], max: v[n - 1], n })
    }

    /// `median [min–max]`, or the value alone for one run.
    pub fn show(&self, decimals: usize) -> String {
        let f = |v: f64| number(v, decimals);
        if self.n == 1 { f(self.median) } else { format!("{} [{}–{}]", f(self.median), f(self.min), f(self.max)) }
    }
}

/// A figure with thousands separators when it has no decimals.
pub fn number(v: f64, decimals: usize) -> String {
    if !v.is_finite() {
        return "–".into();
    }
    if decimals == 0 && v.abs() >= 1000.0 {
        let s = thousands(v.abs().round() as u64);
        return if v < 0.0 { format!("-{s}") } else { s };
    }
    format!("{v:.decimals$}")
}

/// `this ÷ reference` as `0.12x`, with two significant digits below 10.
pub fn ratio(value: f64, reference: f64) -> String {
    if !(value.is_finite() && reference.is_finite() && reference > 0.0) {
        return "–".into();
    }
    let r = value / reference;
    // Two significant digits, decided after rounding (0.999 reads 1.0x, not 1.00x).
    let decimals = if r >= 9.95 {
        0
    } else if r >= 0.995 {
        1
    } else if r >= 0.0995 {
        2
    } else {
        3
    };
    format!("{r:.decimals$}x")
}

/// A markdown table.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = format!("| {} |\n|{}\n", headers.join(" | "), "---|".repeat(headers.len()));
    for row in rows {
        out += &format!("| {} |\n", row.join(" | "));
    }
    out
}

/// The figure a workload is judged on, and whether more is better.
pub fn headline(spec: &WorkloadSpec) -> (Metric, &'static str, bool) {
    match (spec.kind, spec.rate) {
        (DriverWorkload::Bulk, _) => (Metric::E2eRate, "e2e jobs/s", true),
        (DriverWorkload::Steady, 0) => (Metric::Achieved, "achieved jobs/s", true),
        (DriverWorkload::Steady, _) => (Metric::P99, "p99 ms", false),
        (DriverWorkload::Single, _) => (Metric::P50, "start p50 ms", false),
    }
}

/// The good runs of one (system, workload).
fn good<'r>(runs: &'r [Run], system: System, workload: &str) -> Vec<&'r Run> {
    runs.iter().filter(|r| r.system == system && r.workload == workload && r.ok()).collect()
}

pub fn spread(runs: &[Run], system: System, workload: &str, metric: Metric) -> Option<Spread> {
    Spread::of(good(runs, system, workload).iter().filter_map(|r| r.metric(metric)))
}

fn cell(runs: &[Run], system: System, workload: &str, metric: Metric, decimals: usize) -> String {
    spread(runs, system, workload, metric).map_or("–".into(), |s| s.show(decimals))
}

/// One workload's table: a row per system, the workload's figures, and the headline figure as a
/// ratio to Dray (embedded) and, for the rows on PostgreSQL, to dray-pg-1.
pub fn workload_table(spec: &WorkloadSpec, systems: &[(System, String)], runs: &[Run]) -> String {
    let (head, head_label, _) = headline(spec);
    let w = spec.name;
    let reference = |s: System| spread(runs, s, w, head).map(|x| x.median);
    let (dray, dray_pg) = (reference(System::Dray), reference(System::DrayPg1));
    let ratio_dray_label = format!("{head_label} ÷ dray");
    let ratio_pg_label = format!("{head_label} ÷ dray-pg-1");
    let mut headers: Vec<&str> = vec!["system", "durability"];
    let columns: Vec<(&str, Metric, usize)> = match (spec.kind, spec.rate) {
        (DriverWorkload::Bulk, _) => vec![
            ("e2e jobs/s", Metric::E2eRate, 0),
            ("enqueue jobs/s", Metric::EnqueueRate, 0),
            ("process jobs/s", Metric::ProcessRate, 0),
        ],
        (DriverWorkload::Steady, rate) => {
            let mut c = vec![("achieved jobs/s", Metric::Achieved, 0)];
            if rate > 0 {
                c.push(("backlog at end", Metric::BacklogEnd, 0));
            }
            c.extend([("p50 ms", Metric::P50, 2), ("p99 ms", Metric::P99, 2), ("p999 ms", Metric::P999, 2)]);
            c
        }
        (DriverWorkload::Single, _) => vec![
            ("request p50 ms", Metric::RequestP50, 2),
            ("request p99 ms", Metric::RequestP99, 2),
            ("start p50 ms", Metric::P50, 2),
            ("start p99 ms", Metric::P99, 2),
            ("start p999 ms", Metric::P999, 2),
        ],
    };
    headers.extend(columns.iter().map(|c| c.0));
    let sustained_col = spec.kind == DriverWorkload::Steady && spec.rate > 0;
    if sustained_col {
        headers.push("sustained");
    }
    headers.extend([ratio_dray_label.as_str(), ratio_pg_label.as_str()]);
    headers.extend(["driver CPU ms / 1k jobs", "server CPU ms / 1k jobs", "good runs"]);

    let mut rows = Vec::new();
    for (system, durability) in systems {
        let all = runs.iter().filter(|r| r.system == *system && r.workload == w).count();
        if all == 0 {
            continue;
        }
        let ok = good(runs, *system, w);
        let mut row = vec![system.name().to_string(), durability.clone()];
        row.extend(columns.iter().map(|(_, m, d)| cell(runs, *system, w, *m, *d)));
        if sustained_col {
            let yes = ok.iter().filter(|r| r.metric(Metric::Sustained) == Some(1.0)).count();
            row.push(format!("{yes}/{}", ok.len()));
        }
        let mine = spread(runs, *system, w, head).map(|x| x.median);
        let r = |reference: Option<f64>| match (mine, reference) {
            (Some(v), Some(r)) => ratio(v, r),
            _ => "–".into(),
        };
        row.push(r(dray));
        row.push(if system.uses_postgres() { r(dray_pg) } else { "–".into() });
        row.push(cell(runs, *system, w, Metric::DriverCpuPer1k, 1));
        row.push(cell(runs, *system, w, Metric::ServerCpuPer1k, 1));
        row.push(format!("{}/{all}", ok.len()));
        rows.push(row);
    }
    table(&headers, &rows)
}

/// A target and whether it was met (`None`: not enough runs to tell).
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub met: Option<bool>,
    pub text: String,
}

impl Target {
    pub fn line(&self) -> String {
        let verdict = match self.met {
            Some(true) => "MET",
            Some(false) => "NOT MET",
            None => "NOT CHECKED",
        };
        format!("- **{verdict}**: {}", self.text)
    }
}

fn median(runs: &[Run], system: System, workload: &str, metric: Metric) -> Option<f64> {
    spread(runs, system, workload, metric).map(|s| s.median)
}

/// `ours >= factor x theirs` on bulk end-to-end jobs/s (medians).
fn times_faster(runs: &[Run], ours: System, theirs: System, factor: f64, label: &str) -> Target {
    let bulk = "bulk";
    match (median(runs, ours, bulk, Metric::E2eRate), median(runs, theirs, bulk, Metric::E2eRate)) {
        (Some(a), Some(b)) => Target {
            met: Some(a >= factor * b),
            text: format!(
                "{label}: {} {} vs {} {} e2e jobs/s (bulk medians) = {}",
                ours.name(),
                number(a, 0),
                theirs.name(),
                number(b, 0),
                ratio(a, b)
            ),
        },
        _ => Target {
            met: None,
            text: format!("{label}: no good bulk runs of both {} and {}", ours.name(), theirs.name()),
        },
    }
}

/// The targets of issue #6, checked on the medians.
pub fn targets(specs: &[WorkloadSpec], runs: &[Run]) -> Vec<Target> {
    let mut out = vec![
        times_faster(runs, System::Dray, System::Bullmq, 10.0, "Dray embedded >= 10x BullMQ end to end"),
        times_faster(runs, System::DrayPg1, System::GraphileWorker, 3.0, "Dray on PostgreSQL >= 3x graphile-worker"),
        times_faster(runs, System::DrayPg1, System::PgBoss, 3.0, "Dray on PostgreSQL >= 3x pg-boss"),
    ];
    // Dray's durable row against every peer row that is not durable, workload by workload.
    let mut checks = Vec::new();
    let mut all_beat = true;
    for spec in specs {
        let (metric, label, higher_better) = headline(spec);
        for peer in System::ALL.into_iter().filter(|s| !s.durable()) {
            let (Some(ours), Some(theirs)) =
                (median(runs, System::Dray, spec.name, metric), median(runs, peer, spec.name, metric))
            else {
                continue;
            };
            let beats = if higher_better { ours > theirs } else { ours < theirs };
            all_beat &= beats;
            checks.push(format!(
                "{} {label} {} vs {} {} ({})",
                spec.name,
                number(ours, if higher_better { 0 } else { 2 }),
                peer.name(),
                number(theirs, if higher_better { 0 } else { 2 }),
                if beats { "beats" } else { "does not beat" }
            ));
        }
    }
    let label = "Dray's durable row (embedded, fsync before every reply) beats every peer's non-durable row";
    out.push(if checks.is_empty() {
        Target {
            met: None,
            text: format!("{label}: no good runs of dray and of a non-durable peer in the same workload"),
        }
    } else {
        Target { met: Some(all_beat), text: format!("{label}: {}", checks.join("; ")) }
    });
    out
}

/// `doc` with the text between [`BEGIN`] and [`END`] replaced by `body`; when the markers are
/// absent, `intro` and the marked body are appended at the end. One marker alone, or the end
/// before the begin, is an error: the document was edited by hand and a guess could eat it.
pub fn replace_section(doc: &str, body: &str, intro: &str) -> anyhow::Result<String> {
    let body = body.trim_end();
    match (doc.find(BEGIN), doc.find(END)) {
        (Some(b), Some(e)) if b < e => {
            if doc[b + BEGIN.len()..].contains(BEGIN) || doc[e + END.len()..].contains(END) {
                anyhow::bail!("the document has the {BEGIN} / {END} markers more than once");
            }
            Ok(format!("{}{BEGIN}\n{body}\n{}", &doc[..b], &doc[e..]))
        }
        (None, None) => {
            let sep = if doc.is_empty() || doc.ends_with("\n\n") {
                ""
            } else if doc.ends_with('\n') {
                "\n"
            } else {
                "\n\n"
            };
            Ok(format!("{doc}{sep}{}\n\n{BEGIN}\n{body}\n{END}\n", intro.trim_end()))
        }
        _ => anyhow::bail!("the document has only one of the {BEGIN} / {END} markers, or them in the wrong order"),
    }
}

#[cfg(test)]
mod tests {
    use expect_test::expect;
    use serde_json::json;

    use super::*;

    #[test]
    fn spread_is_median_and_range() {
        let s = Spread::of([3.0, 1.0, 2.0, f64::NAN]).unwrap();
        assert_eq!(s, Spread { median: 2.0, min: 1.0, max: 3.0, n: 3 });
        assert_eq!(Spread::of([4.0, 1.0, 2.0, 10.0]).unwrap().median, 3.0);
        assert_eq!(Spread::of([f64::INFINITY]), None);
        assert_eq!(Spread::of([12_345.6, 9_000.0, 15_000.0]).unwrap().show(0), "12,346 [9,000–15,000]");
        assert_eq!(Spread::of([1.234]).unwrap().show(2), "1.23");
    }

    #[test]
    fn ratios_keep_two_significant_digits() {
        assert_eq!(ratio(50.0, 2.0), "25x");
        assert_eq!(ratio(3.0, 2.0), "1.5x");
        assert_eq!(ratio(1.0, 4.0), "0.25x");
        assert_eq!(ratio(1.0, 400.0), "0.003x");
        assert_eq!(ratio(0.999, 1.0), "1.0x");
        assert_eq!(ratio(9.97, 1.0), "10x");
        assert_eq!(ratio(1.0, 0.0), "–");
        assert_eq!(number(-1234.0, 0), "-1,234");
        assert_eq!(number(999.4, 0), "999");
    }

    fn bulk(system: System, rep: usize, e2e_s: f64, failure: Option<&str>) -> Run {
        let result =
            json!({"jobs": 1000, "enqueue_s": e2e_s / 2.0, "process_s": e2e_s / 2.0, "e2e_s": e2e_s, "errors": 0});
        Run {
            system,
            workload: "bulk",
            rep,
            result: Some(result),
            failure: failure.map(str::to_string),
            driver_cpu_s: 0.5,
            server_cpu_s: 1.0,
            cpu_jobs: 1000.0,
            wall_s: 1.0,
        }
    }

    fn single(system: System, p50: f64) -> Run {
        let result = json!({"jobs": 200, "latency_ms": {"p50": p50, "p99": p50 * 3.0, "p999": null, "count": 200},
            "request_latency_ms": {"p50": 0.5, "p99": 1.0, "p999": 2.0, "count": 200}, "errors": 0});
        Run {
            system,
            workload: "single",
            rep: 1,
            result: Some(result),
            failure: None,
            driver_cpu_s: 0.1,
            server_cpu_s: 0.2,
            cpu_jobs: 200.0,
            wall_s: 1.0,
        }
    }

    fn systems() -> Vec<(System, String)> {
        [System::Dray, System::DrayPg1, System::Bullmq, System::PgBoss]
            .into_iter()
            .map(|s| (s, if s.durable() { "durable".to_string() } else { "none".to_string() }))
            .collect()
    }

    #[test]
    fn bulk_table_has_ratios_to_dray_and_to_dray_pg() {
        let runs = vec![
            bulk(System::Dray, 1, 0.1, None),
            bulk(System::Dray, 2, 0.2, None),
            bulk(System::DrayPg1, 1, 0.5, None),
            bulk(System::Bullmq, 1, 1.0, None),
            bulk(System::PgBoss, 1, 2.0, None),
            bulk(System::PgBoss, 2, 0.1, Some("lost 3 jobs")),
        ];
        let spec = &WorkloadSpec::SMOKE[0];
        expect![[r#"
            | system | durability | e2e jobs/s | enqueue jobs/s | process jobs/s | e2e jobs/s ÷ dray | e2e jobs/s ÷ dray-pg-1 | driver CPU ms / 1k jobs | server CPU ms / 1k jobs | good runs |
            |---|---|---|---|---|---|---|---|---|---|
            | dray | durable | 7,500 [5,000–10,000] | 15,000 [10,000–20,000] | 15,000 [10,000–20,000] | 1.0x | – | 500.0 [500.0–500.0] | 1000.0 [1000.0–1000.0] | 2/2 |
            | dray-pg-1 | durable | 2,000 | 4,000 | 4,000 | 0.27x | 1.0x | 500.0 | 1000.0 | 1/1 |
            | bullmq | none | 1,000 | 2,000 | 2,000 | 0.13x | – | 500.0 | 1000.0 | 1/1 |
            | pg-boss | durable | 500 | 1,000 | 1,000 | 0.067x | 0.25x | 500.0 | 1000.0 | 1/2 |
        "#]]
        .assert_eq(&workload_table(spec, &systems(), &runs));
    }

    #[test]
    fn single_table_compares_start_latency() {
        let runs = vec![single(System::Dray, 2.0), single(System::Bullmq, 0.5)];
        expect![[r#"
            | system | durability | request p50 ms | request p99 ms | start p50 ms | start p99 ms | start p999 ms | start p50 ms ÷ dray | start p50 ms ÷ dray-pg-1 | driver CPU ms / 1k jobs | server CPU ms / 1k jobs | good runs |
            |---|---|---|---|---|---|---|---|---|---|---|---|
            | dray | durable | 0.50 | 1.00 | 2.00 | 6.00 | – | 1.0x | – | 500.0 | 1000.0 | 1/1 |
            | bullmq | none | 0.50 | 1.00 | 0.50 | 1.50 | – | 0.25x | – | 500.0 | 1000.0 | 1/1 |
        "#]]
        .assert_eq(&workload_table(&WorkloadSpec::SMOKE[2], &systems(), &runs));
    }

    #[test]
    fn targets_are_checked_on_medians() {
        let runs = vec![
            bulk(System::Dray, 1, 0.1, None),
            bulk(System::Bullmq, 1, 1.0, None),
            bulk(System::DrayPg1, 1, 0.5, None),
            bulk(System::PgBoss, 1, 1.0, None),
            single(System::Dray, 2.0),
            single(System::Bullmq, 0.5),
        ];
        let t = targets(&WorkloadSpec::SMOKE, &runs);
        let lines: Vec<String> = t.iter().map(Target::line).collect();
        expect![[r#"
            - **MET**: Dray embedded >= 10x BullMQ end to end: dray 10,000 vs bullmq 1,000 e2e jobs/s (bulk medians) = 10x
            - **NOT CHECKED**: Dray on PostgreSQL >= 3x graphile-worker: no good bulk runs of both dray-pg-1 and graphile-worker
            - **NOT MET**: Dray on PostgreSQL >= 3x pg-boss: dray-pg-1 2,000 vs pg-boss 1,000 e2e jobs/s (bulk medians) = 2.0x
            - **NOT MET**: Dray's durable row (embedded, fsync before every reply) beats every peer's non-durable row: bulk e2e jobs/s 10,000 vs bullmq 1,000 (beats); single start p50 ms 2.00 vs bullmq 0.50 (does not beat)"#]]
        .assert_eq(&lines.join("\n"));
        // A failed run does not count.
        let runs = vec![bulk(System::Dray, 1, 0.1, Some("driver exited with 1")), bulk(System::Bullmq, 1, 1.0, None)];
        assert_eq!(targets(&WorkloadSpec::SMOKE, &runs)[0].met, None);
    }

    #[test]
    fn steady_cpu_is_per_offered_job() {
        let spec = &WorkloadSpec::SMOKE[1];
        assert_eq!(cpu_jobs(spec, &json!({"jobs": 900})), 1000.0);
        assert_eq!(cpu_jobs(spec, &json!({"jobs": 1010})), 1010.0);
        assert_eq!(cpu_jobs(&WorkloadSpec::SMOKE[0], &json!({"jobs": 3000})), 3000.0);
    }

    #[test]
    fn section_between_markers_is_replaced() {
        let doc = format!("# T\n\nintro\n\n{BEGIN}\nold\nlines\n{END}\n\nafter\n");
        assert_eq!(
            replace_section(&doc, "new\n", "unused").unwrap(),
            format!("# T\n\nintro\n\n{BEGIN}\nnew\n{END}\n\nafter\n")
        );
        // Absent: appended with the intro, whatever the document's last newline.
        for doc in ["# T\n", "# T", "# T\n\n"] {
            assert_eq!(
                replace_section(doc, "body", "## Intro").unwrap(),
                format!("# T\n\n## Intro\n\n{BEGIN}\nbody\n{END}\n"),
                "{doc:?}"
            );
        }
        assert!(replace_section(&format!("{END}\n{BEGIN}\n"), "b", "i").is_err());
        assert!(replace_section(&format!("{BEGIN}\n"), "b", "i").is_err());
        assert!(replace_section(&format!("{BEGIN}\n{END}\n{BEGIN}\n{END}\n"), "b", "i").is_err());
    }
}
