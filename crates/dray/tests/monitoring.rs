//! The monitoring Dray ships in `deploy/` (Prometheus alerting rules with their unit tests, an
//! example Prometheus configuration, a Grafana dashboard), checked with Prometheus's own `promtool`
//! and against real scrapes of `dray serve`: every metric a panel or an alert reads must exist in
//! what the server exposes, and every metric the server exposes must be shown somewhere.
//!
//! `promtool` comes from `PROMTOOL` (a path) or `PATH`; when it is missing the test installs
//! Debian's `prometheus` package (as root, serialised with other installs by a lock file) and
//! fails, saying how to get it, when that does not work. Nothing here skips silently.
//!
//! The PostgreSQL scrape uses its own database (`dray_monitoring_<pid>_<nanos>`), created on
//! `DATABASE_URL` or `postgres://postgres@127.0.0.1:5432/test` and dropped at the end.

mod common;
mod pg;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::{POLL, ServeProcess, WAIT_MAX};

/// Metrics only the PostgreSQL store has (its connection pool): absent in embedded mode.
const POSTGRES_ONLY: &[&str] = &["dray_store_pool_connections", "dray_store_pool_connections_max"];
/// Metrics only the embedded store has (its log): absent in PostgreSQL mode.
const EMBEDDED_ONLY: &[&str] = &[
    "dray_store_append_seconds",
    "dray_store_fsync_seconds",
    "dray_store_group_commit_operations",
    "dray_memory_used_bytes",
    "dray_memory_budget_bytes",
];
/// Besides Dray's own (`dray_`), the standard process metrics every Prometheus client exports.
const PREFIXES: &[&str] = &["dray_", "process_"];

fn ours(name: &str) -> bool {
    PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Where the monitoring files live, from the repository root.
const ALERTS: &str = "deploy/prometheus/alerts.yml";
const ALERTS_TEST: &str = "deploy/prometheus/alerts_test.yml";
const PROMETHEUS_CONFIG: &str = "deploy/prometheus/prometheus.yml";
const DASHBOARD: &str = "deploy/grafana/dray.json";

/// The alerts docs/operations.md documents; each must exist, fire in a unit test and stay quiet
/// in another.
const ALERT_NAMES: &[&str] = &[
    "DrayDeadLettersGrowing",
    "DrayDeadLetterOld",
    "DrayQueueWaitHigh",
    "DrayLeaseExpirySpike",
    "DrayQueueNotPolled",
    "DrayFsyncSlow",
    "DrayMemoryBudgetHigh",
    "DrayScheduleLate",
    "DrayQueueAtConcurrencyLimit",
    "DrayNodeDown",
    "DrayQueueBreakerOpen",
];

/// The dashboard's template variable every query runs on.
const DATASOURCE_VARIABLE: &str = "${datasource}";

// ---- promtool ---------------------------------------------------------------------------------

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("the repository root exists")
}

fn repo_file(relative: &str) -> PathBuf {
    repo_root().join(relative)
}

/// `promtool`, found or installed once per process (nextest runs each test in its own process;
/// the lock file serialises their installs).
fn promtool() -> &'static Path {
    static PROMTOOL: OnceLock<PathBuf> = OnceLock::new();
    PROMTOOL.get_or_init(|| {
        if let Some(path) = find_promtool() {
            return path;
        }
        let started = Instant::now();
        let installed = install_promtool();
        eprintln!("installing Debian's prometheus package took {:.1} s", started.elapsed().as_secs_f64());
        match (installed, find_promtool()) {
            (Ok(()), Some(path)) => path,
            (result, _) => {
                let why = result.err().unwrap_or_else(|| "the install succeeded but promtool is not on PATH".into());
                panic!(
                    "these tests need Prometheus's promtool and could not install it: {why}\n\
                     Install it with `apt-get install --no-install-recommends prometheus` (Debian, as \
                     root), or put promtool (from any Prometheus 2.x release) on PATH, or set \
                     PROMTOOL=/path/to/promtool."
                )
            }
        }
    })
}

/// `$PROMTOOL`, else `promtool` on `PATH`, if it runs.
fn find_promtool() -> Option<PathBuf> {
    let candidates: Vec<PathBuf> = match std::env::var_os("PROMTOOL") {
        Some(path) => vec![PathBuf::from(path)],
        None => std::env::var_os("PATH")
            .map(|path| std::env::split_paths(&path).map(|dir| dir.join("promtool")).collect())
            .unwrap_or_default(),
    };
    candidates
        .into_iter()
        .find(|path| Command::new(path).arg("--version").output().map(|out| out.status.success()).unwrap_or(false))
}

/// Installs Debian's `prometheus` package (promtool comes with it). The lock file keeps
/// concurrent test processes (and other tests that install packages the same way) from running
/// apt at once; the package list is refreshed only when the package is unknown or the install
/// fails. `policy-rc.d` (created only if the machine has none, removed after) keeps the
/// package's postinst from starting a Prometheus server on this machine.
fn install_promtool() -> Result<(), String> {
    const SCRIPT: &str = r#"
set -eu
export DEBIAN_FRONTEND=noninteractive
if command -v promtool >/dev/null 2>&1; then exit 0; fi
made_policy=
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    made_policy=1
fi
trap 'if [ -n "$made_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi' EXIT
install() {
    apt-get install -y --no-install-recommends -o DPkg::Lock::Timeout=600 prometheus </dev/null
}
if ! apt-cache show prometheus >/dev/null 2>&1 || ! install; then
    apt-get update -o DPkg::Lock::Timeout=600 </dev/null
    install
fi
"#;
    eprintln!("promtool not found: installing Debian's prometheus package");
    let out = Command::new("timeout")
        .args(["1200", "flock", "-w", "900", "/tmp/dray-apt.lock", "sh", "-c", SCRIPT])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run timeout/flock/sh: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "apt-get exited with {}:\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// `promtool ARGS...` in the repository root, with `stdin` on its standard input.
fn promtool_run(args: &[&str], stdin: Option<&Path>) -> Output {
    let stdin = match stdin {
        Some(path) => Stdio::from(std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))),
        None => Stdio::null(),
    };
    Command::new(promtool())
        .args(args)
        .current_dir(repo_root())
        .stdin(stdin)
        .output()
        .unwrap_or_else(|e| panic!("promtool {args:?} does not run: {e}"))
}

/// Asserts `promtool ARGS...` succeeded (exit 0), showing everything it printed if not.
#[track_caller]
fn promtool_ok(args: &[&str], stdin: Option<&Path>) -> String {
    let out = promtool_run(args, stdin);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?} failed ({}):\n{stdout}\n{stderr}", out.status);
    format!("{stdout}{stderr}")
}

// ---- the rules and the configuration ----------------------------------------------------------

#[test]
fn alert_rules_are_valid() {
    let said = promtool_ok(&["check", "rules", ALERTS], None);
    assert!(said.contains(&format!("SUCCESS: {} rules found", ALERT_NAMES.len())), "{said}");
}

#[test]
fn alert_rules_pass_their_unit_tests() {
    promtool_ok(&["test", "rules", ALERTS_TEST], None);
}

#[test]
fn example_prometheus_config_is_valid() {
    // Also loads and checks the rule files it names.
    let said = promtool_ok(&["check", "config", PROMETHEUS_CONFIG], None);
    assert!(said.contains("SUCCESS: 1 rule files found"), "the example config must load alerts.yml:\n{said}");
}

/// One rule of alerts.yml, read line by line (promtool checks the YAML itself; this checks what
/// an operator relies on in each rule).
#[derive(Debug, Default)]
struct AlertRule {
    name: String,
    /// The rule's lines, from `- alert:` to the next rule.
    text: String,
}

fn alert_rules() -> Vec<AlertRule> {
    let text = read(ALERTS);
    let mut rules: Vec<AlertRule> = Vec::new();
    for line in text.lines() {
        if let Some(name) = line.trim_start().strip_prefix("- alert:") {
            rules.push(AlertRule { name: name.trim().to_owned(), text: String::new() });
        } else if line.trim_start().starts_with("- record:") {
            panic!("{ALERTS} is for alerts; recording rules belong elsewhere: {line}");
        }
        if let Some(rule) = rules.last_mut() {
            rule.text.push_str(line);
            rule.text.push('\n');
        }
    }
    rules
}

#[test]
fn every_alert_has_a_duration_a_severity_and_a_runbook() {
    let rules = alert_rules();
    let names: Vec<&str> = rules.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ALERT_NAMES, "the alerts in {ALERTS}");
    for rule in &rules {
        let has = |key: &str| rule.text.lines().any(|l| l.trim_start().starts_with(key));
        for key in ["for:", "severity:", "summary:", "description:", "runbook:"] {
            assert!(has(key), "{} has no `{key}`:\n{}", rule.name, rule.text);
        }
        let severity = rule.text.lines().find_map(|l| l.trim_start().strip_prefix("severity:")).unwrap().trim();
        assert!(["critical", "warning", "info"].contains(&severity), "{}: severity {severity:?}", rule.name);
        let runbook = rule.text.lines().find_map(|l| l.trim_start().strip_prefix("runbook:")).unwrap();
        assert!(
            runbook.trim_start_matches([' ', '"', '\'']).starts_with("dray "),
            "{}: the runbook must start with the dray command to run: {runbook}",
            rule.name
        );
    }
}

#[test]
fn every_alert_has_a_firing_and_a_quiet_unit_test() {
    // In alerts_test.yml, each `alertname:` is followed by its `exp_alerts:`; `[]` means "must not
    // fire at this time".
    let text = read(ALERTS_TEST);
    let mut cases: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("alertname:") {
            current = Some(name.trim().to_owned());
        } else if let Some(expected) = line.strip_prefix("exp_alerts:") {
            let name = current.take().unwrap_or_else(|| panic!("exp_alerts without an alertname in {ALERTS_TEST}"));
            let (firing, quiet) = cases.entry(name).or_default();
            if expected.trim() == "[]" {
                *quiet += 1;
            } else {
                *firing += 1;
            }
        }
    }
    for name in ALERT_NAMES {
        let (firing, quiet) = cases.get(*name).copied().unwrap_or_default();
        assert!(firing > 0, "{ALERTS_TEST} has no case where {name} fires");
        assert!(quiet > 0, "{ALERTS_TEST} has no case where {name} must not fire");
    }
    let unknown: Vec<&String> = cases.keys().filter(|n| !ALERT_NAMES.contains(&n.as_str())).collect();
    assert!(unknown.is_empty(), "{ALERTS_TEST} tests alerts that do not exist: {unknown:?}");
}

// ---- the dashboard ----------------------------------------------------------------------------

fn read(relative: &str) -> String {
    let path = repo_file(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn dashboard() -> Value {
    serde_json::from_str(&read(DASHBOARD)).unwrap_or_else(|e| panic!("{DASHBOARD} is not JSON: {e}"))
}

/// Every panel, rows' collapsed children included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut all = Vec::new();
    for panel in dashboard["panels"].as_array().expect("the dashboard has panels") {
        all.push(panel);
        all.extend(panel["panels"].as_array().into_iter().flatten());
    }
    all
}

/// Every PromQL expression of the dashboard: panel targets, and the series selector of each
/// template variable's `label_values(SELECTOR, LABEL)` (Grafana's, not PromQL).
fn dashboard_exprs(dashboard: &Value) -> Vec<String> {
    let mut exprs = Vec::new();
    for panel in panels(dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(target["expr"].as_str().unwrap_or_else(|| panic!("a target with no expr: {target}")).to_owned());
        }
    }
    for variable in dashboard["templating"]["list"].as_array().into_iter().flatten() {
        if variable["type"] == "query" {
            let definition = variable["definition"].as_str().expect("a query variable has a definition");
            let selector = definition
                .strip_prefix("label_values(")
                .and_then(|args| args.strip_suffix(')'))
                .and_then(|args| args.rsplit_once(','))
                .map(|(selector, _label)| selector)
                .unwrap_or_else(|| panic!("not label_values(SELECTOR, LABEL): {definition}"));
            exprs.push(selector.to_owned());
        }
    }
    exprs
}

#[test]
fn dashboard_imports_as_is_with_any_prometheus_datasource() {
    let dashboard = dashboard();
    assert!(dashboard.get("__inputs").is_none(), "__inputs makes Grafana ask for values at import");
    assert!(dashboard["id"].is_null(), "an exported id would clash with the importing Grafana's");
    assert_eq!(dashboard["uid"], "dray");
    let schema = dashboard["schemaVersion"].as_u64().expect("schemaVersion");
    assert!((36..=41).contains(&schema), "schemaVersion {schema}");

    let variables = dashboard["templating"]["list"].as_array().expect("template variables");
    let variable = |name: &str| {
        variables.iter().find(|v| v["name"] == name).unwrap_or_else(|| panic!("no template variable {name}"))
    };
    let datasource = variable("datasource");
    assert_eq!(datasource["type"], "datasource");
    assert_eq!(datasource["query"], "prometheus");
    for name in ["job", "queue"] {
        let v = variable(name);
        assert_eq!(v["type"], "query", "{name}");
        assert_eq!(v["datasource"]["uid"], DATASOURCE_VARIABLE, "{name}");
        let definition = v["definition"].as_str().unwrap_or_default();
        assert!(definition.starts_with("label_values("), "{name}: {definition}");
        assert_eq!(v["query"]["query"], definition, "{name}: query and definition differ");
    }

    let mut ids = BTreeSet::new();
    let mut areas: Vec<(&str, [u64; 4])> = Vec::new();
    let mut rows = Vec::new();
    for panel in panels(&dashboard) {
        let title = panel["title"].as_str().unwrap_or_default();
        let id = panel["id"].as_u64().unwrap_or_else(|| panic!("panel {title:?} has no id"));
        assert!(ids.insert(id), "panel id {id} ({title:?}) is used twice");
        let pos = &panel["gridPos"];
        let [h, w, x, y] = ["h", "w", "x", "y"]
            .map(|k| pos[k].as_u64().unwrap_or_else(|| panic!("panel {title:?}: gridPos.{k} missing")));
        assert!(h > 0 && w > 0 && x + w <= 24, "panel {title:?}: gridPos {pos}");
        for &(other, [oh, ow, ox, oy]) in &areas {
            let overlap = x < ox + ow && ox < x + w && y < oy + oh && oy < y + h;
            assert!(!overlap, "panels {title:?} and {other:?} overlap");
        }
        areas.push((title, [h, w, x, y]));
        if panel["type"] == "row" {
            rows.push(title);
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], DATASOURCE_VARIABLE, "panel {title:?}");
        let targets = panel["targets"].as_array().unwrap_or_else(|| panic!("panel {title:?} has no targets"));
        assert!(!targets.is_empty(), "panel {title:?} has no targets");
        let mut ref_ids = BTreeSet::new();
        for target in targets {
            assert_eq!(target["datasource"]["uid"], DATASOURCE_VARIABLE, "panel {title:?}: {target}");
            assert!(ref_ids.insert(target["refId"].as_str().unwrap_or_default()), "panel {title:?}: refId twice");
            let expr = target["expr"].as_str().unwrap_or_default();
            assert!(expr.contains(r#"job=~"$job""#), "panel {title:?} ignores the job variable: {expr}");
        }
    }
    assert_eq!(
        rows,
        [
            "Overview",
            "Queues",
            "Dead letters",
            "Leases & workers",
            "Store",
            "HTTP",
            "Process",
            "Schedules",
            "Flow control",
            "Circuit breakers"
        ]
    );
}

/// The dashboard's queries, with Grafana's variables replaced, as recording rules: `promtool
/// check rules` then parses every one of them as PromQL.
#[test]
fn dashboard_queries_are_valid_promql() {
    let exprs = dashboard_exprs(&dashboard());
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in exprs.iter().enumerate() {
        let expr = expr.replace("$__rate_interval", "1m").replace("$job", "dray").replace("$queue", ".*");
        assert!(!expr.contains('$'), "an unknown Grafana variable in {expr}");
        rules.push_str(&format!("      - record: dashboard:query_{i}\n        expr: {}\n", json!(expr)));
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("dashboard_rules.yml");
    std::fs::write(&path, rules).expect("write the rules");
    let said = promtool_ok(&["check", "rules", path.to_str().unwrap()], None);
    assert!(said.contains(&format!("SUCCESS: {} rules found", exprs.len())), "{said}");
}

// ---- metric names in PromQL -------------------------------------------------------------------

/// Words of PromQL that look like metric names but are not: aggregations (which may be followed
/// by `by (...)` instead of a parenthesis), binary operators and modifiers, and the number words.
const PROMQL_WORDS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "atan2",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
];
/// Keywords followed by a list of label names (which are not metric names).
const LABEL_LIST_WORDS: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];

/// The metric names an expression selects, as written (`dray_x_bucket` stays so): identifiers that
/// are not functions (followed by `(`), PromQL words, label names (in `{...}` or after `by` and
/// the like), strings, numbers, durations or Grafana variables.
fn metric_names_written(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    // Skips from an opening bracket to its matching close, strings included.
    let skip_group = |mut i: usize, open: char, close: char| -> usize {
        let mut depth = 0;
        while i < chars.len() {
            match chars[i] {
                '"' | '\'' | '`' => i = skip_string(&chars, i),
                c if c == open => depth += 1,
                c if c == close => {
                    depth -= 1;
                    if depth == 0 {
                        return i + 1;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        i
    };
    let mut skip_label_list = false;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(&chars, i) + 1;
        } else if c == '{' {
            i = skip_group(i, '{', '}');
        } else if c == '[' {
            i = skip_group(i, '[', ']');
        } else if c == '(' && skip_label_list {
            skip_label_list = false;
            i = skip_group(i, '(', ')');
        } else if c.is_ascii_digit() || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) {
            // A number (1e3, 0x1f, 0.5) or a duration (5m): never a name.
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.' || chars[i] == '_') {
                i += 1;
            }
        } else if c == '$' {
            // A Grafana variable outside a string ($__rate_interval is inside brackets already).
            i += 1;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = chars[i..].iter().find(|c| !c.is_whitespace());
            if LABEL_LIST_WORDS.contains(&word.as_str()) {
                skip_label_list = next == Some(&'(');
            } else if !PROMQL_WORDS.contains(&word.as_str()) && next != Some(&'(') {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// The index of the quote closing the string that starts at `start`.
fn skip_string(chars: &[char], start: usize) -> usize {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() && chars[i] != quote {
        if chars[i] == '\\' && quote != '`' {
            i += 1;
        }
        i += 1;
    }
    i
}

/// A written metric name without the suffix a histogram's series add.
fn family(name: &str) -> &str {
    ["_bucket", "_count", "_sum"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name)
}

#[test]
fn metric_names_leave_out_functions_labels_and_keywords() {
    let cases: &[(&str, &[&str])] = &[
        ("up{job=\"dray\"} == 0", &["up"]),
        (
            r#"sum by (queue) (increase(dray_jobs_dead_total[15m])) > 0 and on (queue) max by (queue) (dray_queue_jobs{state="dead"}) > 0"#,
            &["dray_jobs_dead_total", "dray_queue_jobs"],
        ),
        (
            r#"histogram_quantile(0.95, sum by (le, queue) (rate(dray_job_wait_seconds_bucket{job=~"$job", queue=~"a|b{2}"}[$__rate_interval]))) > 60"#,
            &["dray_job_wait_seconds_bucket"],
        ),
        ("time() - max without (instance) (x_seconds > 0) unless on(q) group_left(z) y == 1", &["x_seconds", "y"]),
        ("count(m == 0) or vector(0) + 7 * 86400 + 1e3 + .5 offset 5m", &["m"]),
        ("sum(rate(a_sum[5m])) / sum(rate(a_count[5m]))", &["a_count", "a_sum"]),
    ];
    for (expr, expected) in cases {
        let names = metric_names_written(expr);
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        assert_eq!(&names, expected, "{expr}");
    }
    assert_eq!(family("dray_job_wait_seconds_bucket"), "dray_job_wait_seconds");
    assert_eq!(family("dray_jobs_enqueued_total"), "dray_jobs_enqueued_total");
}

/// What the monitoring reads: metric family → whether some expression reads its `_bucket` series
/// (so it must be a histogram, not a summary).
fn monitoring_metrics() -> BTreeMap<String, bool> {
    let mut exprs = dashboard_exprs(&dashboard());
    exprs.extend(alert_exprs());
    let mut metrics: BTreeMap<String, bool> = BTreeMap::new();
    for expr in &exprs {
        for name in metric_names_written(expr) {
            if name == "up" {
                continue; // Prometheus's own, per scrape target.
            }
            assert!(ours(&name), "{name:?} (in {expr}) is not one of Dray's metrics");
            *metrics.entry(family(&name).to_owned()).or_default() |= name.ends_with("_bucket");
        }
    }
    assert!(metrics.len() >= 20, "too few metrics found in the dashboard and alerts: {metrics:?}");
    for name in POSTGRES_ONLY.iter().chain(EMBEDDED_ONLY) {
        assert!(metrics.contains_key(*name), "{name} is exempted from a scrape below but no longer used");
    }
    metrics
}

/// The `expr:` of every rule in alerts.yml (inline, or a `|` block of more indented lines).
fn alert_exprs() -> Vec<String> {
    let text = read(ALERTS);
    let lines: Vec<&str> = text.lines().collect();
    let mut exprs = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        i += 1;
        let Some(rest) = line.trim_start().strip_prefix("expr:") else { continue };
        let rest = rest.trim();
        if !rest.starts_with(['|', '>']) {
            exprs.push(rest.trim_matches(['"', '\'']).to_owned());
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let mut block = String::new();
        while i < lines.len() && (lines[i].trim().is_empty() || lines[i].len() - lines[i].trim_start().len() > indent) {
            block.push_str(lines[i].trim());
            block.push('\n');
            i += 1;
        }
        exprs.push(block);
    }
    assert_eq!(exprs.len(), ALERT_NAMES.len(), "one expr per alert in {ALERTS}");
    exprs
}

// ---- scrapes ----------------------------------------------------------------------------------

/// One sample of a scrape in the Prometheus text format.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed scrape: its samples and the `# TYPE` of each family.
#[derive(Debug)]
struct Scrape {
    text: String,
    samples: Vec<Sample>,
    types: BTreeMap<String, String>,
}

impl Scrape {
    fn parse(text: String) -> Scrape {
        let mut samples = Vec::new();
        let mut types = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap_or_else(|| panic!("bad TYPE line: {line}"));
                types.insert(name.to_owned(), kind.trim().to_owned());
            } else if !line.starts_with('#') && !line.trim().is_empty() {
                samples.push(parse_sample(line));
            }
        }
        Scrape { text, samples, types }
    }

    /// Whether `family` has a sample (a histogram's through its `_bucket`, `_count`, `_sum`).
    fn has(&self, metric: &str) -> bool {
        let histogram = self.types.get(metric).is_some_and(|t| t == "histogram");
        self.samples.iter().any(|s| s.name == metric || (histogram && family(&s.name) == metric))
    }

    /// The value of the one sample of `name` whose labels include `labels`.
    #[track_caller]
    /// The one sample's value, 0 when there is none.
    fn value_or_zero(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let has = |s: &&Sample| {
            s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        };
        if self.samples.iter().any(|s| has(&s)) { self.value(name, labels) } else { 0.0 }
    }

    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let matching: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
            .collect();
        match matching.as_slice() {
            [one] => one.value,
            [] => panic!("no sample {name}{labels:?} in the scrape:\n{}", self.text),
            many => panic!("{} samples {name}{labels:?}: {many:?}", many.len()),
        }
    }

    /// `promtool check metrics` on the scrape, saved to `dir`: every lint problem fails the test
    /// (promtool reports naming and help-text problems alike, and exits 3 on any).
    fn check_with_promtool(&self, dir: &Path) {
        let path = dir.join("metrics.prom");
        std::fs::write(&path, &self.text).expect("write the scrape");
        let out = promtool_run(&["check", "metrics"], Some(&path));
        assert!(
            out.status.success(),
            "promtool check metrics found problems in the scrape (saved at {}; exit {}):\n{}{}",
            path.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
    }

    /// Every metric the monitoring reads, less `exempt`, has samples, and those read as
    /// histograms are histograms; every Dray metric the server exposes is read somewhere.
    fn check_against_monitoring(&self, exempt: &[&str]) {
        let used = monitoring_metrics();
        let missing: Vec<&String> = used.keys().filter(|m| !exempt.contains(&m.as_str()) && !self.has(m)).collect();
        assert!(
            missing.is_empty(),
            "metrics read by {DASHBOARD} or {ALERTS} but not in the scrape: {missing:?}\nscrape:\n{}",
            self.text
        );
        for (metric, bucketed) in &used {
            if *bucketed && self.has(metric) {
                assert_eq!(
                    self.types.get(metric).map(String::as_str),
                    Some("histogram"),
                    "{metric} must be a histogram"
                );
            }
        }
        let exposed: BTreeSet<&str> = self.samples.iter().map(|s| s.name.as_str()).filter(|n| ours(n)).collect();
        let unshown: Vec<&&str> =
            exposed.iter().filter(|n| !used.contains_key(**n) && !used.contains_key(family(n))).collect();
        assert!(unshown.is_empty(), "metrics exposed but neither on {DASHBOARD} nor in {ALERTS}: {unshown:?}");
    }
}

/// `name{label="value",...} value [timestamp]`, with escapes in label values.
fn parse_sample(line: &str) -> Sample {
    let bad = |why: &str| -> ! { panic!("bad sample line ({why}): {line}") };
    let name_end = line.find(['{', ' ']).unwrap_or_else(|| bad("no value"));
    let name = line[..name_end].to_owned();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(mut inner) = rest.strip_prefix('{') {
        loop {
            inner = inner.trim_start_matches([',', ' ']);
            if let Some(after) = inner.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after) = inner.split_once("=\"").unwrap_or_else(|| bad("label"));
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c)) => value.push(c),
                        None => bad("escape"),
                    },
                    Some((i, '"')) => break i,
                    Some((_, c)) => value.push(c),
                    None => bad("unterminated label value"),
                }
            };
            labels.insert(key.trim().to_owned(), value);
            inner = &after[end + 1..];
        }
    }
    let value = rest.split_whitespace().next().unwrap_or_else(|| bad("no value"));
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().unwrap_or_else(|_| bad("value")),
    };
    Sample { name, labels, value }
}

/// A `dray serve` and an HTTP client for it.
struct Server {
    /// Declared first: the process dies before its directory is removed.
    process: ServeProcess,
    http: reqwest::Client,
    dir: tempfile::TempDir,
}

impl Server {
    async fn start(extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (data, extra) = (dir.path().join("data"), extra.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let process = tokio::task::spawn_blocking(move || {
            let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
            ServeProcess::spawn(&data, "127.0.0.1:0", &extra).unwrap_or_else(|e| panic!("{e}"))
        })
        .await
        .expect("the start does not panic");
        let http = common::http().timeout(Duration::from_secs(30)).build().expect("an HTTP client");
        Server { process, http, dir }
    }

    /// `METHOD PATH` with an optional JSON body; asserts the status, returns the JSON answer.
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>, status: u16) -> Value {
        let mut request = self.http.request(method.clone(), format!("{}{path}", self.process.url));
        // The server refuses a write without a JSON content type, body or not.
        request = request.header("content-type", "application/json");
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let got = response.status().as_u16();
        let text = response.text().await.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        assert_eq!(got, status, "{method} {path}: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text}"))
    }

    async fn enqueue(&self, job: Value) -> u64 {
        let answer = self.call(reqwest::Method::POST, "/v1/jobs", Some(job), 201).await;
        answer["id"].as_u64().expect("an id")
    }

    /// Leases one job of `queue`, asserting it is `id`; returns its lease id.
    async fn lease(&self, queue: &str, id: u64) -> String {
        let body = json!({ "queues": [queue], "worker": "monitoring-test", "count": 1 });
        let answer = self.call(reqwest::Method::POST, "/v1/lease", Some(body), 200).await;
        let jobs = answer["jobs"].as_array().expect("jobs");
        assert_eq!(jobs.len(), 1, "{answer:#}");
        assert_eq!(jobs[0]["id"], id, "{answer:#}");
        jobs[0]["lease_id"].as_str().expect("a lease id").to_owned()
    }

    async fn fail(&self, id: u64, lease: &str) {
        let body = json!({ "lease_id": lease, "error": "the monitoring test fails it" });
        let acked = self.call(reqwest::Method::POST, &format!("/v1/jobs/{id}/fail"), Some(body), 200).await;
        assert_eq!(acked["state"], "dead", "job {id} has one attempt: {acked:#}");
    }

    async fn wait_state(&self, id: u64, state: &str) {
        let deadline = Instant::now() + WAIT_MAX;
        loop {
            let job = self.call(reqwest::Method::GET, &format!("/v1/jobs/{id}"), None, 200).await;
            if job["state"] == state {
                return;
            }
            assert!(Instant::now() < deadline, "job {id} not {state} within {WAIT_MAX:?}: {job:#}");
            tokio::time::sleep(POLL).await;
        }
    }

    /// Drives jobs through every path the metrics count, on queues `mon` and `mon-paused`:
    /// a completion, three failures to the dead-letter queue, a lease expiry, a redrive, a
    /// discard and a pause.
    async fn drive_jobs(&self) {
        let done = self.enqueue(json!({ "queue": "mon", "payload": { "n": 1 } })).await;
        let lease = self.lease("mon", done).await;
        let body = json!({ "lease_id": lease, "result": { "ok": true } });
        let acked = self.call(reqwest::Method::POST, &format!("/v1/jobs/{done}/complete"), Some(body), 200).await;
        assert_eq!(acked["state"], "completed", "{acked:#}");

        let mut dead = Vec::new();
        for n in 2..=4 {
            let id = self.enqueue(json!({ "queue": "mon", "payload": { "n": n }, "attempts_max": 1 })).await;
            let lease = self.lease("mon", id).await;
            self.fail(id, &lease).await;
            dead.push(id);
        }

        // The shortest lease there is, never acked: maintenance expires it and the job dies.
        let id =
            self.enqueue(json!({ "queue": "mon", "payload": { "n": 5 }, "attempts_max": 1, "lease_ms": 1000 })).await;
        self.lease("mon", id).await;
        self.wait_state(id, "dead").await;

        let body = json!({ "ids": [dead[0]] });
        let redriven = self.call(reqwest::Method::POST, "/v1/dead/redrive", Some(body), 200).await;
        assert_eq!(redriven["count"], 1, "{redriven:#}");
        let body = json!({ "ids": [dead[1]] });
        let discarded = self.call(reqwest::Method::POST, "/v1/dead/discard", Some(body), 200).await;
        assert_eq!(discarded["count"], 1, "{discarded:#}");

        self.enqueue(json!({ "queue": "mon-paused", "payload": {} })).await;
        self.call(reqwest::Method::POST, "/v1/queues/mon-paused/pause", None, 200).await;

        // Flow limits: a queue with a concurrency limit and a rate exports both.
        let limits = json!({ "concurrency_max": 3, "rate": { "limit": 120, "per_ms": 60000 } });
        self.call(reqwest::Method::PUT, "/v1/queues/mon-limited", Some(limits), 200).await;

        // A circuit breaker, forced open by hand.
        let breaker = json!({ "breaker": {
            "failure_ratio": 0.5, "window_ms": 60000, "min_attempts": 10, "open_ms": 30000, "probes": 2,
        } });
        self.call(reqwest::Method::PUT, "/v1/queues/mon-breaker", Some(breaker), 200).await;
        let forced = self
            .call(reqwest::Method::POST, "/v1/queues/mon-breaker/breaker", Some(json!({ "action": "open" })), 200)
            .await;
        assert_eq!(forced["breaker"]["state"], "open", "{forced:#}");
        assert_eq!(forced["breaker"]["forced"], true, "{forced:#}");

        // A worker reports a downstream rate limit: the queue backs off for an hour.
        let id = self.enqueue(json!({ "queue": "mon-backoff", "payload": {} })).await;
        let lease = self.lease("mon-backoff", id).await;
        let body = json!({ "lease_id": lease, "error": "429", "rate_limited": true, "retry_after_ms": 3_600_000 });
        let acked = self.call(reqwest::Method::POST, &format!("/v1/jobs/{id}/fail"), Some(body), 200).await;
        assert_eq!(acked["state"], "retrying", "{acked:#}");
    }

    /// Two per-second schedules into queue `mon-sched`, which nobody works: `beat` skips a tick
    /// while its previous job waits (dropped for overlap), `late` has no grace, so every tick is
    /// missed and skipped (misfires). Returns once the scrape shows both.
    async fn drive_schedules(&self) {
        let beat = json!({ "every_ms": 1000, "job": { "queue": "mon-sched", "payload": {} }, "overlap": "skip" });
        self.call(reqwest::Method::PUT, "/v1/schedules/beat", Some(beat), 201).await;
        let late = json!({
            "every_ms": 1000, "job": { "queue": "mon-sched", "payload": {} }, "misfire": "skip", "misfire_grace_ms": 0,
        });
        self.call(reqwest::Method::PUT, "/v1/schedules/late", Some(late), 201).await;
        let deadline = Instant::now() + WAIT_MAX;
        loop {
            let scrape = self.scrape().await;
            let dropped = |schedule, reason| {
                scrape.value_or_zero("dray_schedule_ticks_dropped_total", &[("schedule", schedule), ("reason", reason)])
                    > 0.0
            };
            if dropped("beat", "overlap") && dropped("late", "misfire") {
                assert_eq!(
                    scrape.value("dray_schedule_ticks_total", &[("schedule", "beat")]),
                    1.0,
                    "one job, then skips"
                );
                assert!(scrape.value("dray_schedule_misfires_total", &[("schedule", "late")]) >= 1.0);
                assert!(scrape.value("dray_schedule_tick_lateness_seconds_count", &[]) >= 1.0);
                let next = scrape.value("dray_schedule_next_tick_timestamp_seconds", &[("schedule", "beat")]);
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
                assert!((now - 5.0..now + 5.0).contains(&next), "next tick at {next}, now {now}");
                return;
            }
            assert!(Instant::now() < deadline, "no overlap and misfire drops within {WAIT_MAX:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn scrape(&self) -> Scrape {
        let url = format!("{}/metrics", self.process.url);
        let response = self.http.get(&url).send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let status = response.status();
        let content_type =
            response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        let text = response.text().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
        assert_eq!(status, 200, "GET /metrics: {text}");
        assert!(content_type.starts_with("text/plain"), "GET /metrics: content-type {content_type:?}");
        Scrape::parse(text)
    }
}

/// What [`Server::drive_jobs`] did, as the metrics the dashboard and alerts build on must show it.
fn check_driven_counts(scrape: &Scrape) {
    let mon = [("queue", "mon")];
    for (name, expected) in [
        ("dray_jobs_enqueued_total", 5.0),
        ("dray_jobs_leased_total", 5.0),
        ("dray_jobs_completed_total", 1.0),
        ("dray_jobs_failed_total", 3.0),
        ("dray_lease_expiries_total", 1.0),
        ("dray_jobs_dead_total", 4.0),
        // A delivery each, and an ack each but for the expired lease.
        ("dray_job_wait_seconds_count", 5.0),
        ("dray_job_run_seconds_count", 4.0),
    ] {
        assert_eq!(scrape.value(name, &mon), expected, "{name}{{queue=\"mon\"}}");
    }
    assert_eq!(scrape.value("dray_jobs_redriven_total", &[]), 1.0);
    assert_eq!(scrape.value("dray_jobs_discarded_total", &[]), 1.0);
    // Of the four dead: one redriven (available again), one discarded, two left.
    assert_eq!(scrape.value("dray_queue_jobs", &[("queue", "mon"), ("state", "dead")]), 2.0);
    assert_eq!(scrape.value("dray_queue_jobs", &[("queue", "mon"), ("state", "available")]), 1.0);
    assert_eq!(scrape.value("dray_queue_jobs", &[("queue", "mon"), ("state", "completed")]), 1.0);
    assert_eq!(scrape.value("dray_queue_jobs", &[("queue", "mon-paused"), ("state", "available")]), 1.0);
    assert!(scrape.value("dray_queue_dead_oldest_age_seconds", &mon) >= 0.0);
    assert_eq!(scrape.value("dray_queue_paused", &mon), 0.0);
    assert_eq!(scrape.value("dray_queue_paused", &[("queue", "mon-paused")]), 1.0);
    // A Unix time (after 2020) where a worker asked, 0 where none ever did.
    assert!(scrape.value("dray_queue_last_poll_timestamp_seconds", &mon) > 1.6e9);
    assert_eq!(scrape.value("dray_queue_last_poll_timestamp_seconds", &[("queue", "mon-paused")]), 0.0);
    assert_eq!(scrape.value("dray_workers_polling", &mon), 0.0);
    // Open is 2; a queue without a breaker has no breaker series.
    assert_eq!(scrape.value("dray_queue_breaker_state", &[("queue", "mon-breaker")]), 2.0);
    let no_breaker =
        |s: &Sample| s.name == "dray_queue_breaker_state" && s.labels.get("queue").is_some_and(|q| q == "mon");
    assert!(!scrape.samples.iter().any(no_breaker), "queue mon has no breaker");
    let to_open = [("queue", "mon-breaker"), ("to", "open")];
    assert_eq!(scrape.value("dray_queue_breaker_transitions_total", &to_open), 1.0);
    assert_eq!(scrape.types.get("dray_queue_breaker_transitions_total").map(String::as_str), Some("counter"));
    let backoff = scrape.value("dray_queue_backoff_seconds", &[("queue", "mon-backoff")]);
    assert!(backoff > 3_500.0 && backoff <= 3_600.0, "the back-off has about an hour left: {backoff}");
    assert_eq!(scrape.value("dray_queue_backoff_seconds", &mon), 0.0);
    let enqueues = [("route", "/v1/jobs"), ("method", "POST"), ("status", "201")];
    assert_eq!(scrape.value("dray_http_requests_total", &enqueues), 7.0);
    assert!(scrape.value("dray_store_call_seconds_count", &[("call", "job_insert")]) >= 7.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_scrape_has_every_metric_the_monitoring_reads() {
    let server = Server::start(&[]).await;
    server.drive_jobs().await;
    server.drive_schedules().await;
    let scrape = server.scrape().await;
    scrape.check_with_promtool(server.dir.path());
    scrape.check_against_monitoring(POSTGRES_ONLY);
    check_driven_counts(&scrape);
    assert_eq!(scrape.value("dray_build_info", &[("store", "embedded")]), 1.0);
    assert_eq!(scrape.value("dray_queue_concurrency_max", &[("queue", "mon-limited")]), 3.0);
    assert_eq!(scrape.value("dray_queue_rate_limit_per_second", &[("queue", "mon-limited")]), 2.0);
    assert!(
        !scrape.text.contains(r#"dray_queue_concurrency_max{queue="mon""#),
        "no limit gauge for a queue without one"
    );
    assert!(scrape.value("dray_store_group_commit_operations_count", &[]) >= 1.0);
    assert!(scrape.value("dray_store_fsync_seconds_count", &[]) >= 1.0);
    // Issue #18: the memory budget and the process metrics.
    let (used, budget) = (scrape.value("dray_memory_used_bytes", &[]), scrape.value("dray_memory_budget_bytes", &[]));
    assert!(used > 0.0 && used < budget, "memory: {used} of {budget}");
    check_process_metrics(&scrape);
}

/// The standard process metrics (issue #18), read from `/proc` of the server process.
fn check_process_metrics(scrape: &Scrape) {
    assert_eq!(scrape.types.get("process_cpu_seconds_total").map(String::as_str), Some("counter"));
    assert!(scrape.value("process_cpu_seconds_total", &[]) > 0.0, "the server did some work");
    assert!(scrape.value("process_resident_memory_bytes", &[]) > 1_000_000.0);
    let (open, max) = (scrape.value("process_open_fds", &[]), scrape.value("process_max_fds", &[]));
    assert!(open >= 3.0 && open <= max, "fds: {open} of {max}");
    let started = scrape.value("process_start_time_seconds", &[]);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!(started <= now + 1.0 && started > now - 3_600.0, "started at {started}, now {now}");
    // The worker that drove the jobs acked them all: known, and not busy.
    assert_eq!(scrape.value("dray_workers", &[("state", "busy")]), 0.0);
}

// ---- PostgreSQL -------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_scrape_has_every_metric_the_monitoring_reads() {
    let db = pg::TestDb::create();
    let server = Server::start(&["--database", &db.url, "--database-pool-size-max", "4"]).await;
    server.drive_jobs().await;
    server.drive_schedules().await;
    let scrape = server.scrape().await;
    scrape.check_with_promtool(server.dir.path());
    scrape.check_against_monitoring(EMBEDDED_ONLY);
    check_driven_counts(&scrape);
    assert_eq!(scrape.value("dray_build_info", &[("store", "postgres")]), 1.0);
    assert_eq!(scrape.value("dray_store_pool_connections_max", &[]), 4.0);
    let in_use = scrape.value("dray_store_pool_connections", &[("state", "in_use")]);
    let idle = scrape.value("dray_store_pool_connections", &[("state", "idle")]);
    assert!(in_use + idle >= 1.0 && in_use + idle <= 4.0, "pool: {in_use} in use, {idle} idle, size 4");
    check_process_metrics(&scrape);
}
