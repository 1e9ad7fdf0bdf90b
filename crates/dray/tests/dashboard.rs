//! The dashboard in a real browser: Debian's chromium, driven by `playwright-core` (npm) from
//! `tests/browser/dashboard.mjs`, against the real `dray serve` holding real jobs.
//!
//! This test sets the scene through the public API (queues with completed, dead and running jobs,
//! a worker that keeps long-polling while it holds a lease, two schedules), then hands the browser
//! script the server's address. The script opens every page, checks what it shows against the
//! scene, redrives a dead job through the confirmation dialog, pauses, resumes and runs a
//! schedule, and watches the overview update live while it enqueues jobs. Screenshots of every
//! page land in `target/test-artifacts/dashboard/`.
//!
//! What the machine needs, installed here when missing (never skipped): `/usr/bin/chromium` from
//! Debian (apt-get, serialized by `flock /tmp/dray-apt.lock`), Node 20 or later, and the npm
//! packages of `tests/browser` (`npm ci` when `node_modules` is missing or stale). Playwright never
//! downloads a browser of its own: the script launches Debian's.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use common::ServeProcess;

const CHROMIUM: &str = "/usr/bin/chromium";
/// Bound on the browser script: it opens eight pages and waits for live updates.
const SCRIPT_WAIT_MAX: Duration = Duration::from_secs(240);
/// Bound on installing chromium (apt) or the npm packages.
const INSTALL_WAIT_MAX: Duration = Duration::from_secs(900);

/// The workspace root (`tests/browser` lives there).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("the workspace root")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_pages_work_in_a_real_browser() {
    prepare_browser().await;

    let dir = tempfile::tempdir().expect("a temporary directory");
    let data = dir.path().join("data");
    let server = tokio::task::spawn_blocking(move || ServeProcess::start(&data)).await.expect("the start task");
    let api = Api { http: common::http().build().unwrap(), url: server.url.clone() };

    let scene = set_scene(&api).await;
    let poller = Poller::start(api.clone());
    // The browser checks the worker as polling: make sure a request is in flight before it looks.
    poller.wait_polling(&api).await;

    let shots = root().join("target/test-artifacts/dashboard");
    std::fs::create_dir_all(&shots).expect("the screenshot directory");
    for old in std::fs::read_dir(&shots).expect("list screenshots").flatten() {
        let _ = std::fs::remove_file(old.path());
    }
    let (url, fixture, shots_arg) = (server.url.clone(), scene.to_string(), shots.clone());
    let status = tokio::task::spawn_blocking(move || run_script(&url, &shots_arg, &fixture)).await.expect("script");
    poller.stop().await;
    assert!(status, "the browser script failed (its output is above)");

    // What the script did through the page, checked from outside it: the redriven job left the
    // dead-letter queue, and the other dead jobs are still there.
    let redriven = scene["dead_jobs"][0].as_u64().expect("a dead job id");
    let job = api.get(&format!("/v1/jobs/{redriven}")).await;
    assert_ne!(job["state"], "dead", "job {redriven} was redriven from the page: {job:#}");
    assert!(
        job["history"].as_array().unwrap().iter().any(|e| e["event"] == "redriven"),
        "job {redriven} has a redriven entry: {job:#}"
    );
    let dead = api.get("/v1/dead?queue=billing").await;
    assert_eq!(dead["jobs"].as_array().unwrap().len(), 2, "the cancelled 'redrive all' changed nothing: {dead:#}");
    for page in [
        "overview",
        "overview-1920",
        "overview-dark",
        "queue",
        "jobs",
        "job-running",
        "job-dead",
        "dead-confirm",
        "dead",
        "workers",
        "schedules",
        "schedule",
    ] {
        let file = shots.join(format!("{page}.png"));
        let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        assert!(size > 1_000, "screenshot {} missing or empty ({size} bytes)", file.display());
    }
    // The schedules the script paused, resumed and ran from the page: as they were, and the job
    // "Run now" enqueued is on their queue with their payload.
    let nightly = api.get("/v1/schedules/nightly").await;
    assert_eq!(nightly["paused"], false, "nightly was paused and resumed from the page: {nightly:#}");
    let paused = api.get("/v1/schedules/hourly-sync").await;
    assert_eq!(paused["paused"], true, "hourly-sync was resumed and paused again from the page: {paused:#}");
    let triggered = nightly["last_tick"]["job_id"].as_u64().expect("nightly ran from the page: a last tick");
    let job = api.get(&format!("/v1/jobs/{triggered}")).await;
    assert_eq!((&job["queue"], &job["payload"]), (&json!("digests"), &json!({"report": "daily"})), "{job:#}");
    eprintln!("dashboard screenshots: {}", shots.display());
    drop(server);
}

/// The browser defences of issue #10 in a real browser (`tests/browser/defences.mjs`): a page on
/// another origin tries a `text/plain` fetch, a JSON fetch, a form post and a DNS-rebound host
/// name against a server with `--auth none`, and writes or reads nothing; the dashboard of a
/// server with `--auth required` signs in with a token and pauses a queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_defences_hold_in_a_real_browser() {
    prepare_browser().await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let token = "dray-browser-test-admin-secret-0123456789";
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let (open_dir, guarded_dir) = (dir.path().join("open"), dir.path().join("guarded"));
    let open = ServeProcess::start(&open_dir);
    let file = token_file.to_str().unwrap().to_owned();
    let guarded = ServeProcess::spawn(&guarded_dir, "127.0.0.1:0", &["--admin-token-file", &file]).unwrap();

    let args = vec![open.url.clone(), guarded.url.clone(), token.to_owned()];
    let status = tokio::task::spawn_blocking(move || run_node("defences.mjs", &args, &[])).await.expect("script");
    assert!(status, "the browser defences script failed (its output is above)");
    drop((open, guarded));
}

/// Regression (issue #18, defect 1), the scenario as reported: `dray work --concurrency 4` on a
/// backlog showed "Workers polling 0" while its jobs ran, and the worker as idle. It is one busy
/// worker holding four leases, in `GET /v1/workers`, the live stream's counts and `/metrics`;
/// after it stops and hands its jobs back it holds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_running_jobs_is_busy_everywhere() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let data = dir.path().join("data");
    let server = tokio::task::spawn_blocking(move || ServeProcess::start(&data)).await.expect("the start task");
    let api = Api { http: common::http().build().unwrap(), url: server.url.clone() };
    let jobs: Vec<Value> = (0..20).map(|n| json!({"queue": "backlog", "payload": {"n": n}})).collect();
    api.post("/v1/jobs/batch", json!({ "jobs": jobs })).await;
    // Each job outlasts the test: the worker stays busy until it is stopped.
    let worker = std::process::Command::new(common::BIN)
        .args(["--server", &server.url, "work", "--queue", "backlog", "--concurrency", "4"])
        .args(["--exec", "sleep 120", "--shutdown-grace-ms", "0"])
        .stdin(Stdio::null())
        .spawn()
        .expect("dray work starts");

    let deadline = Instant::now() + common::WAIT_MAX;
    let busy = loop {
        let list = api.get("/v1/workers").await;
        let workers = list["workers"].as_array().unwrap().clone();
        if workers.len() == 1 && workers[0]["leases"].as_array().unwrap().len() == 4 {
            break workers[0].clone();
        }
        assert!(Instant::now() < deadline, "no worker with four leases: {list:#}");
        tokio::time::sleep(common::POLL).await;
    };
    assert_eq!(busy["state"], "busy", "{busy:#}");
    let id = busy["id"].as_str().unwrap().to_owned();

    // The live stream counts it as one busy worker, not as polls in flight.
    let snapshot = first_snapshot(&api).await;
    assert_eq!(
        (snapshot["workers_busy"].as_u64(), snapshot["workers_idle"].as_u64()),
        (Some(1), Some(0)),
        "{snapshot:#}"
    );
    let w = &snapshot["workers"][0];
    assert_eq!((&w["id"], &w["state"], &w["leases"]), (&json!(id), &json!("busy"), &json!(4)), "{snapshot:#}");
    let metrics = api.http.get(format!("{}/metrics", api.url)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.lines().any(|l| l == "dray_workers{state=\"busy\"} 1"), "{metrics}");

    // Stopped, it hands its four jobs back: it holds nothing any more.
    let status = tokio::task::spawn_blocking(move || common::terminate(worker)).await.expect("the stop task");
    assert!(status.success(), "dray work exited with {status}");
    let list = api.get("/v1/workers").await;
    let w = list["workers"].as_array().unwrap().iter().find(|w| w["id"] == id.as_str()).cloned();
    if let Some(w) = w {
        assert_eq!((&w["state"], &w["leases"]), (&json!("idle"), &json!([])), "{list:#}");
    }
    drop(server);
}

/// The first `snapshot` event of `GET /dashboard/events`.
async fn first_snapshot(api: &Api) -> Value {
    let mut response = api.http.get(format!("{}/dashboard/events", api.url)).send().await.expect("the stream");
    assert_eq!(response.status(), 200);
    let mut text = String::new();
    let deadline = Instant::now() + common::WAIT_MAX;
    loop {
        if let Some(at) = text.find("event: snapshot\ndata: ") {
            let rest = &text[at + "event: snapshot\ndata: ".len()..];
            if let Some(end) = rest.find("\n\n") {
                return serde_json::from_str(&rest[..end]).expect("snapshot JSON");
            }
        }
        assert!(Instant::now() < deadline, "no snapshot on the stream: {text}");
        let chunk = tokio::time::timeout(common::WAIT_MAX, response.chunk()).await.expect("a chunk in time");
        text.push_str(&String::from_utf8_lossy(&chunk.expect("the stream").expect("not ended")));
    }
}

// ---- the scene --------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Api {
    http: reqwest::Client,
    url: String,
}

impl Api {
    async fn send(&self, method: Method, path: &str, body: Option<String>) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.url)).timeout(Duration::from_secs(60));
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body);
        }
        let response = request.send().await.unwrap_or_else(|e| panic!("{path}: {e}"));
        let status = response.status().as_u16();
        let text = response.text().await.expect("a body");
        let value = if text.is_empty() { Value::Null } else { serde_json::from_str(&text).expect("JSON") };
        (status, value)
    }

    async fn get(&self, path: &str) -> Value {
        let (status, body) = self.send(Method::GET, path, None).await;
        assert_eq!(status, 200, "GET {path}: {body:#}");
        body
    }

    /// POST with a body given as JSON text (kept byte for byte: big numbers included).
    async fn post_text(&self, path: &str, body: &str) -> Value {
        let (status, reply) = self.send(Method::POST, path, Some(body.to_owned())).await;
        assert!((200..300).contains(&status), "POST {path} {body}: {status} {reply:#}");
        reply
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        self.post_text(path, &body.to_string()).await
    }

    async fn put(&self, path: &str, body: Value) -> Value {
        let (status, reply) = self.send(Method::PUT, path, Some(body.to_string())).await;
        assert_eq!(status, 200, "PUT {path}: {reply:#}");
        reply
    }

    /// PUT that creates (201).
    async fn put_new(&self, path: &str, body: Value) -> Value {
        let (status, reply) = self.send(Method::PUT, path, Some(body.to_string())).await;
        assert_eq!(status, 201, "PUT {path}: {reply:#}");
        reply
    }

    async fn lease(&self, queue: &str, worker: &str, count: usize, lease_ms: u64) -> Vec<Value> {
        let body = json!({"queues": [queue], "worker": worker, "count": count, "lease_ms": lease_ms});
        let reply = self.post("/v1/lease", body).await;
        reply["jobs"].as_array().expect("jobs").clone()
    }
}

/// Four queues, two workers and two schedules:
/// - `emails`: 6 jobs; `test-worker-1` completed 2 of them (with results);
/// - `billing`: 3 jobs with one attempt each; `test-worker-1` failed them all: dead;
/// - `reports`: 1 job that `test-worker-2` holds (a long lease, progress, a checkpoint and two
///   steps saved), and keeps long-polling for more ([`Poller`]);
/// - `digests`: no jobs; the schedules `nightly` (cron `30 2 * * *` in New York, active) and
///   `hourly-sync` (every hour, paused) enqueue there. Not on `reports`: the poller there expects
///   nothing new, and the browser runs `nightly` now.
///
/// Payloads carry markup and a number no JavaScript number can hold: the pages must show both as
/// text, exactly. Returns what the browser script checks against.
async fn set_scene(api: &Api) -> Value {
    api.put("/v1/queues/emails", json!({"attempts_max": 5, "lease_ms": 30_000})).await;
    api.put("/v1/queues/billing", json!({"attempts_max": 1})).await;
    api.put("/v1/queues/reports", json!({"lease_ms": 600_000})).await;

    let mut emails = Vec::new();
    for i in 0..6 {
        let body = format!(
            r#"{{"queue": "emails", "tags": ["welcome"], "payload": {{"to": "user{i}@example.com", "note": "<img src=x onerror=alert(1)>", "big": 123456789012345678901234567890}}}}"#
        );
        emails.push(api.post_text("/v1/jobs", &body).await["id"].as_u64().unwrap());
    }
    for job in api.lease("emails", "test-worker-1", 2, 30_000).await {
        let path = format!("/v1/jobs/{}/complete", job["id"]);
        api.post(&path, json!({"lease_id": job["lease_id"], "result": {"sent": true, "smtp": "250 ok"}})).await;
    }

    let mut dead = Vec::new();
    for i in 0..3 {
        let body = json!({"queue": "billing", "payload": {"invoice": 1000 + i}, "tags": ["monthly"]});
        dead.push(api.post("/v1/jobs", body).await["id"].as_u64().unwrap());
    }
    for job in api.lease("billing", "test-worker-1", 3, 30_000).await {
        let path = format!("/v1/jobs/{}/fail", job["id"]);
        api.post(&path, json!({"lease_id": job["lease_id"], "error": "card declined: <b>insufficient funds</b>"}))
            .await;
    }
    for id in &dead {
        let job = api.get(&format!("/v1/jobs/{id}")).await;
        assert_eq!(job["state"], "dead", "{job:#}");
    }

    let running = api.post("/v1/jobs", json!({"queue": "reports", "payload": {"report": "q3"}})).await;
    let running = running["id"].as_u64().unwrap();
    let leased = api.lease("reports", "test-worker-2", 1, 600_000).await;
    assert_eq!(leased.len(), 1, "the report job is leased");
    let path = format!("/v1/jobs/{running}/heartbeat");
    let heartbeat = json!({
        "lease_id": leased[0]["lease_id"],
        "progress": {"done": 40, "of": 100},
        "checkpoint": {"page": 7},
    });
    api.post(&path, heartbeat).await;
    // Two steps, one with markup in its result and one too long to show whole.
    let path = format!("/v1/jobs/{running}/steps");
    let lease_id = &leased[0]["lease_id"];
    api.post(&path, json!({"lease_id": lease_id, "name": "fetch", "result": {"rows": 120, "note": "<b>bold</b>"}}))
        .await;
    api.post(&path, json!({"lease_id": lease_id, "name": "render", "result": "r".repeat(500)})).await;

    api.put("/v1/queues/digests", json!({"attempts_max": 3})).await;
    let nightly = json!({
        "cron": "30 2 * * *",
        "timezone": "America/New_York",
        "job": {"queue": "digests", "payload": {"report": "daily"}},
    });
    api.put_new("/v1/schedules/nightly", nightly).await;
    // Skip: resuming it from the page enqueues nothing for the ticks it missed.
    let hourly = json!({
        "every_ms": 3_600_000,
        "job": {"queue": "digests", "payload": {"sync": "ledger"}, "tags": ["sync"]},
        "misfire": "skip",
        "overlap": "skip",
        "paused": true,
    });
    api.put_new("/v1/schedules/hourly-sync", hourly).await;

    json!({
        "queues": ["billing", "digests", "emails", "reports"],
        "schedules": {"active": "nightly", "paused": "hourly-sync", "zone": "America/New_York", "queue": "digests"},
        "emails_jobs": emails,
        "completed_jobs": 2,
        "dead_jobs": dead,
        "dead_error": "card declined: <b>insufficient funds</b>",
        "running_job": running,
        "running_token": leased[0]["fencing_token"],
        "running_worker": "test-worker-2",
        "running_steps": ["fetch", "render"],
        "idle_worker": "test-worker-1",
    })
}

/// `test-worker-2` long-polling `reports` in a loop, as a real worker between jobs, until stopped.
/// Each request waits at most 2 s, so stopping takes at most that long.
struct Poller {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Poller {
    fn start(api: Api) -> Poller {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let task = tokio::spawn(async move {
            while !stop2.load(Ordering::SeqCst) {
                let body = json!({"queues": ["reports"], "worker": "test-worker-2", "wait_ms": 2_000});
                let (status, reply) = api.send(Method::POST, "/v1/lease", Some(body.to_string())).await;
                assert_eq!(status, 200, "long-poll: {reply:#}");
                assert_eq!(reply["jobs"], json!([]), "nothing else is enqueued on reports");
            }
        });
        Poller { stop, task }
    }

    /// Until `GET /v1/workers` shows the poller's request in progress.
    async fn wait_polling(&self, api: &Api) {
        let deadline = Instant::now() + common::WAIT_MAX;
        loop {
            let list = api.get("/v1/workers").await;
            let polling = list["workers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|w| w["id"] == "test-worker-2" && w["polling"].as_u64() > Some(0));
            if polling {
                return;
            }
            assert!(Instant::now() < deadline, "test-worker-2 never showed as polling: {list:#}");
            tokio::time::sleep(common::POLL).await;
        }
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("the poller");
    }
}

// ---- the browser ------------------------------------------------------------------------------

/// Runs `node tests/browser/dashboard.mjs URL SHOTS` with the scene in `DRAY_DASHBOARD_FIXTURE`;
/// true when it exits 0. Its output goes to the test's.
fn run_script(url: &str, shots: &Path, fixture: &str) -> bool {
    let args = [url.to_owned(), shots.display().to_string()];
    run_node("dashboard.mjs", &args, &[("DRAY_DASHBOARD_FIXTURE", fixture)])
}

/// Runs `node tests/browser/SCRIPT ARGS...` with `env`, bounded by [`SCRIPT_WAIT_MAX`]; `true`
/// if it succeeded (its output goes to the test's).
fn run_node(script: &str, args: &[String], env: &[(&str, &str)]) -> bool {
    let browser = root().join("tests/browser");
    let mut child = Command::new("node")
        .arg(browser.join(script))
        .args(args)
        .envs(env.iter().copied())
        .current_dir(&browser)
        .stdin(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run node ({e}); install Node.js 20 or later"));
    finished_within(&mut child, SCRIPT_WAIT_MAX, &format!("the browser script {script}"))
}

/// Chromium and the npm packages of `tests/browser`, installed when missing.
async fn prepare_browser() {
    tokio::task::spawn_blocking(|| {
        ensure_chromium();
        ensure_node_modules();
    })
    .await
    .expect("the install task");
}

/// Runs `sh -c SCRIPT`, bounded by [`INSTALL_WAIT_MAX`]; the output goes to the test's.
fn sh(script: &str, dir: &Path) -> bool {
    let mut child = Command::new("sh")
        .args(["-c", script])
        .current_dir(dir)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run sh: {e}"));
    finished_within(&mut child, INSTALL_WAIT_MAX, &format!("`{script}`"))
}

/// Waits for `child` to exit; `true` if it succeeded. Past `wait_max` it is killed and the test
/// fails naming `what`.
fn finished_within(child: &mut std::process::Child, wait_max: Duration, what: &str) -> bool {
    let deadline = Instant::now() + wait_max;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status.success();
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {wait_max:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Installs Debian's chromium when `/usr/bin/chromium` is missing. Serialized with other test
/// processes by `flock /tmp/dray-apt.lock`; the package lists are refreshed only when the first
/// attempt fails. Fails (never skips) with the command to run by hand.
fn ensure_chromium() {
    if Path::new(CHROMIUM).exists() {
        return;
    }
    let started = Instant::now();
    // Re-checked under the lock: another test process may have installed it meanwhile.
    // fonts-dejavu-core: without any font the screenshots are boxes.
    let install = "apt-get install -y --no-install-recommends chromium fonts-dejavu-core";
    let script =
        format!("flock /tmp/dray-apt.lock sh -c 'test -x {CHROMIUM} || {install} || (apt-get update && {install})'");
    let ok = sh(&script, Path::new("/"));
    assert!(
        ok && Path::new(CHROMIUM).exists(),
        "the dashboard test needs Debian's chromium at {CHROMIUM} and could not install it; as root run:\n  \
         apt-get update && DEBIAN_FRONTEND=noninteractive {install}"
    );
    eprintln!("installed chromium in {:.1} s", started.elapsed().as_secs_f64());
}

/// Runs `npm ci` in `tests/browser` when `node_modules` is missing or holds another version of
/// playwright-core than `package-lock.json` pins; `install.sh` checks again under a lock, since
/// the browser tests run in processes of their own that start together.
fn ensure_node_modules() {
    let dir = root().join("tests/browser");
    let read = |p: &Path| -> Option<Value> { serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok() };
    let lock = read(&dir.join("package-lock.json")).expect("tests/browser/package-lock.json");
    let pinned = lock["packages"]["node_modules/playwright-core"]["version"].as_str().expect("playwright-core pinned");
    let installed = read(&dir.join("node_modules/playwright-core/package.json"));
    if installed.as_ref().and_then(|p| p["version"].as_str()) == Some(pinned) {
        return;
    }
    let started = Instant::now();
    let ok = sh("./install.sh", &dir);
    assert!(
        ok,
        "`npm ci` failed in {}: the dashboard test needs Node.js 20 or later with npm, and the npm registry",
        dir.display()
    );
    eprintln!("npm ci in {:.1} s", started.elapsed().as_secs_f64());
}
