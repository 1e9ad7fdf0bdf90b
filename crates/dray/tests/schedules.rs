//! Schedules through the binary: `dray schedules ...` against a real `dray serve`, `dray
//! schedules preview` with no server at all, and a kill -9 loop on the embedded store in which
//! every tick instant of a per-second schedule must be enqueued exactly once.

mod common;
mod pg;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use common::{BIN, POLL, ServeProcess, WAIT_MAX};

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn dray(args: &[&str]) -> Run {
    let out = Command::new(BIN).args(args).stdin(Stdio::null()).output().expect("dray runs");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8(out.stdout).expect("UTF-8 stdout"),
        stderr: String::from_utf8(out.stderr).expect("UTF-8 stderr"),
    }
}

/// `dray --server URL --json ARGS...`, which must succeed; its stdout parsed.
fn json(url: &str, args: &[&str]) -> Value {
    let run = dray(&[&["--server", url, "--json"], args].concat());
    assert_eq!(run.code, Some(0), "dray {args:?}: {}{}", run.stdout, run.stderr);
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("dray {args:?} printed no JSON ({e}): {}", run.stdout))
}

fn millis(rfc3339: &str) -> i64 {
    let ts: jiff::Timestamp = rfc3339.parse().unwrap_or_else(|e| panic!("{rfc3339:?}: {e}"));
    ts.as_millisecond()
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// Every job of `queue` with the tick it stands for (`schedule.at`, in ms), in enqueue order.
fn ticks_of(url: &str, queue: &str) -> Vec<(u64, String, i64)> {
    let mut out = Vec::new();
    let mut after: Option<u64> = None;
    loop {
        let mut args = vec!["jobs", "list", "--queue", queue, "--limit", "1000"];
        let after_text = after.map(|a| a.to_string());
        if let Some(a) = &after_text {
            args.extend(["--after", a]);
        }
        let page = json(url, &args);
        for summary in page["jobs"].as_array().expect("jobs") {
            let id = summary["id"].as_u64().expect("id");
            let job = json(url, &["jobs", "show", &id.to_string()]);
            let tick = &job["schedule"];
            let name = tick["name"].as_str().unwrap_or_else(|| panic!("job {id} carries no schedule: {job:#}"));
            out.push((id, name.to_owned(), millis(tick["at"].as_str().expect("schedule.at"))));
        }
        match page["next"].as_u64() {
            Some(next) => after = Some(next),
            None => return out,
        }
    }
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT_MAX;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {WAIT_MAX:?}");
        std::thread::sleep(POLL);
    }
}

#[test]
fn schedules_from_the_cli() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let server = ServeProcess::start(&dir.path().join("data"));
    let url = server.url.clone();

    let created = json(
        &url,
        &[
            "schedules",
            "create",
            "beat",
            "--every-ms",
            "1000",
            "--queue",
            "beats",
            "--payload",
            r#"{"k":1}"#,
            "--misfire",
            "skip",
            "--misfire-grace-ms",
            "500",
        ],
    );
    assert_eq!(created["name"], "beat");
    assert_eq!(created["every_ms"], 1000);
    assert_eq!(created["misfire"], "skip");
    assert_eq!(created["overlap"], "allow");
    assert_eq!(created["paused"], false);
    assert_eq!(created["job"]["queue"], "beats");
    assert_eq!(created["job"]["payload"]["k"], 1);
    let next_at = millis(created["next_at"].as_str().expect("next_at"));
    assert_eq!(next_at % 1000, 0, "anchored at the epoch: whole seconds");

    // Creating it again is a conflict; bad input names its field.
    let again = dray(&["--server", &url, "schedules", "create", "beat", "--every-ms", "1000", "--queue", "beats"]);
    assert_eq!(again.code, Some(4), "{}", again.stderr);
    let bad = dray(&["--server", &url, "schedules", "create", "bad", "--cron", "61 * * * *", "--queue", "q"]);
    assert_eq!(bad.code, Some(5), "{}", bad.stderr);
    assert!(bad.stderr.contains("cron"), "{}", bad.stderr);
    let bad = dray(&[
        "--server",
        &url,
        "schedules",
        "create",
        "bad",
        "--cron",
        "0 9 * * *",
        "--timezone",
        "Mars/Base",
        "--queue",
        "q",
    ]);
    assert_eq!(bad.code, Some(5), "{}", bad.stderr);
    assert!(bad.stderr.contains("timezone"), "{}", bad.stderr);

    wait_until("two ticks enqueued", || ticks_of(&url, "beats").len() >= 2);
    let ticks = ticks_of(&url, "beats");
    for pair in ticks.windows(2) {
        assert_eq!(pair[1].2 - pair[0].2, 1000, "consecutive ticks one second apart: {ticks:?}");
    }
    assert!(ticks.iter().all(|(_, name, _)| name == "beat"));

    let shown = json(&url, &["schedules", "show", "beat", "--next", "3"]);
    let next: Vec<i64> =
        shown["next"].as_array().expect("next").iter().map(|f| millis(f["at"].as_str().unwrap())).collect();
    assert_eq!(next.len(), 3);
    assert!(next.windows(2).all(|w| w[1] - w[0] == 1000), "{next:?}");
    let last = &shown["last_tick"];
    assert!(ticks.iter().any(|(id, _, _)| Some(*id) == last["job_id"].as_u64()), "{shown:#}");
    let list = json(&url, &["schedules", "list"]);
    assert_eq!(list["schedules"].as_array().expect("schedules").len(), 1);

    // Paused, it enqueues nothing; resumed with `skip`, the ticks it missed stay missed.
    let paused = json(&url, &["schedules", "pause", "beat"]);
    assert_eq!(paused["paused"], true);
    let paused_at = now_ms();
    let before = ticks_of(&url, "beats").len();
    std::thread::sleep(Duration::from_millis(2_500));
    assert_eq!(ticks_of(&url, "beats").len(), before, "a paused schedule enqueued a job");

    // An operator's "run now" works while paused: one job, marked with the trigger's instant.
    let triggered = json(&url, &["schedules", "trigger", "beat"]);
    assert_eq!(triggered["schedule"], "beat");
    let triggered_id = triggered["job"]["id"].as_u64().expect("job id");
    let resumed_at = now_ms();
    let resumed = json(&url, &["schedules", "resume", "beat"]);
    assert_eq!(resumed["paused"], false);
    wait_until("a tick after resuming", || ticks_of(&url, "beats").len() >= before + 2);
    let ticks = ticks_of(&url, "beats");
    let trigger = ticks.iter().find(|(id, _, _)| *id == triggered_id).expect("the triggered job");
    assert!((paused_at..=resumed_at).contains(&trigger.2), "{trigger:?}");
    let in_pause: Vec<_> = ticks
        .iter()
        .filter(|(id, _, at)| *id != triggered_id && *at > paused_at + 1_000 && *at < resumed_at - 500)
        .collect();
    assert!(in_pause.is_empty(), "ticks missed while paused ran despite misfire skip: {in_pause:?}");

    let deleted = json(&url, &["schedules", "delete", "beat"]);
    assert_eq!(deleted["name"], "beat");
    let gone = dray(&["--server", &url, "schedules", "show", "beat"]);
    assert_eq!(gone.code, Some(3), "{}", gone.stderr);
    assert!(json(&url, &["schedules", "list"])["schedules"].as_array().unwrap().is_empty());
    assert!(ticks_of(&url, "beats").len() >= ticks.len(), "its jobs stay after the schedule is deleted");

    let status = server.terminate();
    assert!(status.success(), "{status}");
}

#[test]
fn preview_needs_no_server_and_follows_dst() {
    // Nothing listens there: preview must not try.
    let preview = |args: &[&str]| dray(&[&["--server", "http://127.0.0.1:9", "schedules", "preview"], args].concat());

    // New York's spring-forward day in 2026 is March 8: 02:30 does not exist and fires at 03:00 EDT.
    let run = preview(&[
        "--cron",
        "30 2 * * *",
        "--timezone",
        "America/New_York",
        "--from",
        "2026-03-07T12:00:00Z",
        "--count",
        "3",
    ]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.stdout, "2026-03-08T07:00:00Z\n2026-03-09T06:30:00Z\n2026-03-10T06:30:00Z\n");

    // The fall-back night: an interval-like rule fires at both 01:20s, a fixed time once.
    let run = preview(&[
        "--cron",
        "*/20 1 * * *",
        "--timezone",
        "America/New_York",
        "--from",
        "2026-11-01T00:00:00Z",
        "--count",
        "6",
        "--json",
    ]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let fires: Vec<String> = serde_json::from_str(&run.stdout).expect("a JSON array of strings");
    assert_eq!(
        fires,
        [
            "2026-11-01T05:00:00Z",
            "2026-11-01T05:20:00Z",
            "2026-11-01T05:40:00Z",
            "2026-11-01T06:00:00Z",
            "2026-11-01T06:20:00Z",
            "2026-11-01T06:40:00Z"
        ]
    );

    // A rule that fires every fourth year, with --json before the verb.
    let run = dray(&[
        "--json",
        "schedules",
        "preview",
        "--cron",
        "0 12 29 2 *",
        "--timezone",
        "UTC",
        "--from",
        "2026-12-07T00:00:00Z",
        "--count",
        "2",
    ]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let fires: Vec<String> = serde_json::from_str(&run.stdout).expect("a JSON array");
    assert_eq!(fires, ["2028-02-29T12:00:00Z", "2032-02-29T12:00:00Z"]);

    // Bad input: exit 5 naming the field.
    let run = preview(&["--cron", "0 9 * * MON", "--timezone", "Europe/Nowhere"]);
    assert_eq!(run.code, Some(5));
    assert!(run.stderr.contains("timezone"), "{}", run.stderr);
    let run = preview(&["--cron", "0 9 * *"]);
    assert_eq!(run.code, Some(5));
    assert!(run.stderr.contains("cron"), "{}", run.stderr);
}

/// How many kill -9 cycles the loop runs: `DRAY_SCHEDULE_KILL_CYCLES`, default 6.
fn kill_cycles() -> u64 {
    std::env::var("DRAY_SCHEDULE_KILL_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(6)
}

/// A per-second schedule with `run_all` (so downtime's ticks are all owed) on the embedded store,
/// the server killed with SIGKILL at random moments and restarted after random downtime: every
/// second from the first tick to the last is enqueued exactly once.
#[test]
fn kill_9_loop_ticks_every_instant_exactly_once() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let data = dir.path().join("data");
    let mut server = ServeProcess::start(&data);
    let first = create_per_second(&server.url);
    let mut seed = u64::try_from(now_ms()).unwrap_or(1) | 1;
    let mut random = move |low: u64, high: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        low + seed % (high - low + 1)
    };
    for cycle in 0..kill_cycles() {
        std::thread::sleep(Duration::from_millis(random(300, 2_500)));
        server.kill9();
        std::thread::sleep(Duration::from_millis(random(0, 1_500)));
        server = restart(&data, cycle);
    }
    // Let the last life tick past the downtime, then stop the schedule and look.
    assert_every_instant_once(&server.url, "sec", "ticks", first);
    let status = server.terminate();
    assert!(status.success(), "{status}");
}

/// Creates schedule `sec`: every second into queue `ticks`, `run_all` so downtime's ticks are
/// owed; returns its first tick (ms).
fn create_per_second(url: &str) -> i64 {
    let created = json(
        url,
        &[
            "schedules",
            "create",
            "sec",
            "--every-ms",
            "1000",
            "--queue",
            "ticks",
            "--misfire",
            "run_all",
            "--misfire-cap",
            "1000",
        ],
    );
    millis(created["next_at"].as_str().expect("next_at"))
}

/// Lets per-second schedule `name` tick past now, pauses it, and checks that the jobs of `queue`
/// stand for every second from `first` on exactly once.
fn assert_every_instant_once(url: &str, name: &str, queue: &str, first: i64) {
    let until = now_ms() + 1_500;
    wait_until("ticks caught up", || {
        json(url, &["schedules", "show", name])["next_at"].as_str().is_some_and(|n| millis(n) > until)
    });
    json(url, &["schedules", "pause", name]);
    let ticks = ticks_of(url, queue);
    let mut seen: BTreeMap<i64, Vec<u64>> = BTreeMap::new();
    for (id, _, at) in &ticks {
        seen.entry(*at).or_default().push(*id);
    }
    let twice: Vec<_> = seen.iter().filter(|(_, ids)| ids.len() > 1).collect();
    assert!(twice.is_empty(), "instants enqueued more than once: {twice:?}");
    let last = *seen.keys().next_back().expect("ticks");
    assert!(last + 1000 > until, "the last tick {last} is not the one before the cursor past {until}");
    let missing: Vec<i64> =
        (0..=(last - first) / 1000).map(|i| first + i * 1000).filter(|at| !seen.contains_key(at)).collect();
    assert!(missing.is_empty(), "instants never enqueued: {missing:?} (of {} ticks)", ticks.len());
    eprintln!("{} ticks of {name}, each second once", ticks.len());
}

fn restart(data: &Path, cycle: u64) -> ServeProcess {
    ServeProcess::spawn(data, "127.0.0.1:0", &[]).unwrap_or_else(|e| panic!("restart after kill {cycle}: {e}"))
}

/// How many leader kills the PostgreSQL loop runs: `DRAY_SCHEDULE_PG_KILL_CYCLES`, default 4.
fn pg_kill_cycles() -> u64 {
    std::env::var("DRAY_SCHEDULE_PG_KILL_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(4)
}

/// Three PostgreSQL nodes, the maintenance leader SIGKILLed again and again while a per-second
/// schedule ticks: whichever node leads, every second is enqueued exactly once.
#[test]
fn postgres_leader_kill_loop_ticks_every_instant_exactly_once() {
    let db = pg::TestDb::create();
    let mut nodes: Vec<pg::Node> =
        (0..3).map(|_| pg::Node::start_with(&db.url, &["--database-leader-ttl-ms", "1000"])).collect();
    let first = create_per_second(&nodes[0].url);
    let mut epochs = Vec::new();
    for cycle in 0..pg_kill_cycles() {
        let (leader, epoch) = leader_of(&db.url, &nodes);
        epochs.push(epoch);
        // Let the leader make a tick or two, then kill it mid-stride.
        std::thread::sleep(Duration::from_millis(1_200 + 400 * (cycle % 3)));
        nodes[leader].kill_and_restart();
    }
    let (_, epoch) = leader_of(&db.url, &nodes);
    epochs.push(epoch);
    assert!(epochs.windows(2).all(|w| w[1] > w[0]), "each kill made a new term: {epochs:?}");

    assert_every_instant_once(&nodes[1].url, "sec", "ticks", first);
    for node in nodes.iter_mut() {
        let status = node.process.take().expect("running").terminate();
        assert!(status.success(), "graceful shutdown: {status}");
    }
}

/// The node holding the maintenance lease, and its epoch (waits for an election).
fn leader_of(db: &str, nodes: &[pg::Node]) -> (usize, u64) {
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        if let Some((pid, epoch)) = pg::leader(db)
            && let Some(i) = nodes.iter().position(|n| n.process.is_some() && n.pid() == pid)
        {
            return (i, epoch);
        }
        assert!(Instant::now() < deadline, "no leader elected within {WAIT_MAX:?}");
        std::thread::sleep(POLL);
    }
}
