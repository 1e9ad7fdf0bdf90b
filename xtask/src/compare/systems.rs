//! The processes of `bench compare`: each system under test started fresh for one run (`dray
//! serve` nodes, a `redis-server`, a PostgreSQL database), the driver process, and the CPU time
//! of both sides read from `/proc`.
//!
//! CPU of the driver is read from its `/proc/<pid>/stat` once it has exited and before it is
//! reaped (a zombie keeps the totals of all its threads), so no `unsafe` `wait4` is needed. CPU of
//! the server side is sampled while the driver runs: the `dray serve` or `redis-server`
//! processes started for the run, and on PostgreSQL the backends of the run's own database plus
//! the server's shared background processes (WAL writer, checkpointer...). Backends of other
//! databases (other people's tests on a shared server) are left out.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::bench_store::remove_dir;
use crate::compare::args::System;
use crate::http_server::Server;

/// What every run needs to start its system.
#[derive(Debug)]
pub struct Env {
    pub dray_bin: PathBuf,
    pub redis_bin: PathBuf,
    pub dir: PathBuf,
    /// The PostgreSQL server databases are created on (URL form).
    pub admin_url: String,
}

/// `dray serve` pool size when not configured: printed with the server flags.
pub const DRAY_POOL_DEFAULT: u32 = 16;

/// A system started for one run; stopped and cleaned up by [`Sut::finish`] (or when dropped).
#[derive(Debug)]
pub struct Sut {
    pub system: System,
    servers: Vec<Server>,
    redis: Option<Redis>,
    db: Option<Database>,
}

impl Sut {
    pub fn start(env: &Env, system: System, label: &str) -> anyhow::Result<Sut> {
        let mut sut = Sut { system, servers: Vec::new(), redis: None, db: None };
        if system.uses_postgres() {
            sut.db = Some(Database::create(&env.admin_url, &label.replace('-', "_"))?);
        }
        match system {
            System::Bullmq | System::BullmqAof => {
                let dir = env.dir.join(format!("compare-{label}-redis"));
                sut.redis = Some(Redis::start(&env.redis_bin, &dir, system == System::BullmqAof)?);
            }
            System::Dray => {
                let dir = env.dir.join(format!("compare-{label}"));
                sut.servers.push(Server::start_with(&env.dray_bin, &dir, &["--durability".into(), "always".into()])?);
            }
            System::DrayPg1 | System::DrayPg3 => {
                let url = sut.db.as_ref().map(|d| d.url.clone()).context("the run's database")?;
                // One after the other: the first node migrates the fresh database.
                for node in 0..system.dray_nodes() {
                    let dir = env.dir.join(format!("compare-{label}-node{node}"));
                    sut.servers.push(Server::start_with(&env.dray_bin, &dir, &["--database".into(), url.clone()])?);
                }
            }
            System::GraphileWorker | System::PgBoss => {}
        }
        Ok(sut)
    }

    /// The flags that point the driver at this system.
    pub fn driver_args(&self) -> Vec<String> {
        match self.system {
            System::Dray | System::DrayPg1 | System::DrayPg3 => {
                let urls: Vec<&str> = self.servers.iter().map(|s| s.url.as_str()).collect();
                vec!["--dray-url".into(), urls.join(",")]
            }
            System::Bullmq | System::BullmqAof => {
                vec!["--redis-url".into(), format!("redis://127.0.0.1:{}", self.redis.as_ref().map_or(0, |r| r.port))]
            }
            System::GraphileWorker | System::PgBoss => {
                vec!["--database-url".into(), self.db.as_ref().map(|d| d.url.clone()).unwrap_or_default()]
            }
        }
    }

    /// Starts counting the CPU time of the server side (see the module comment).
    pub fn cpu_watch(&self) -> CpuWatch {
        let mut sources: Vec<Source> = self.servers.iter().map(|s| Source::Pid("dray", s.pid)).collect();
        if let Some(r) = &self.redis {
            sources.push(Source::Pid("redis", r.pid));
        }
        if let Some(db) = &self.db {
            sources.push(Source::Postgres(db.name.clone()));
        }
        CpuWatch::start(sources)
    }

    /// The last lines of the servers' logs, for a failed run's message.
    pub fn log_tail(&self) -> String {
        let mut out = String::new();
        let logs = self.servers.iter().map(|s| s.log.clone()).chain(self.redis.as_ref().map(|r| r.log.clone()));
        for log in logs {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(10)..];
            if !tail.is_empty() {
                out += &format!("--- {} (last lines)\n{}\n", log.display(), tail.join("\n"));
            }
        }
        out
    }

    /// Stops the servers, deletes their directories and drops the database.
    pub fn finish(mut self) -> anyhow::Result<()> {
        for server in self.servers.drain(..) {
            server.finish(false)?;
        }
        if let Some(redis) = self.redis.take() {
            redis.finish()?;
        }
        if let Some(db) = self.db.take() {
            db.drop_now()?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL

/// Runs `f` with a connection to `url` on a runtime of its own (one statement now and then: not
/// worth a pool).
fn with_pg<T>(
    url: &str,
    f: impl AsyncFnOnce(&tokio_postgres::Client) -> Result<T, tokio_postgres::Error>,
) -> anyhow::Result<T> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .with_context(|| format!("connect to PostgreSQL at {url}"))?;
        let conn = tokio::spawn(connection);
        let result = f(&client).await.with_context(|| format!("on PostgreSQL at {url}"));
        drop(client);
        let _ = conn.await;
        result
    })
}

/// `SHOW name` of each of `names`.
pub fn pg_settings(url: &str, names: &[&str]) -> anyhow::Result<Vec<String>> {
    with_pg(url, async |c| {
        let mut out = Vec::new();
        for name in names {
            out.push(c.query_one(&format!("SHOW {name}"), &[]).await?.get::<_, String>(0));
        }
        Ok(out)
    })
}

/// `url` (a `postgres://` URL) naming database `db` instead.
pub fn with_database(url: &str, db: &str) -> anyhow::Result<String> {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        bail!("--database-url must be a postgres:// URL (the drivers take URLs), not `{url}`");
    };
    let (rest, query) = match url[scheme_end..].split_once('?') {
        Some((r, q)) => (r, format!("?{q}")),
        None => (&url[scheme_end..], String::new()),
    };
    let authority = rest.split('/').next().unwrap_or("");
    Ok(format!("{}{authority}/{db}{query}", &url[..scheme_end]))
}

/// A fresh database for one run, dropped with its connections afterwards.
#[derive(Debug)]
pub struct Database {
    admin_url: String,
    pub name: String,
    pub url: String,
}

impl Database {
    fn create(admin_url: &str, label: &str) -> anyhow::Result<Database> {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
        let name = format!("dray_compare_{label}_{}_{nanos}", std::process::id());
        let create = format!("CREATE DATABASE {name}");
        with_pg(admin_url, async |c| c.batch_execute(&create).await)?;
        let url = with_database(admin_url, &name)?;
        Ok(Database { admin_url: admin_url.to_string(), name, url })
    }

    fn drop_now(mut self) -> anyhow::Result<()> {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        self.name.clear();
        with_pg(&self.admin_url, async |c| c.batch_execute(&sql).await)
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        if !self.name.is_empty() {
            let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
            let _ = with_pg(&self.admin_url, async |c| c.batch_execute(&sql).await);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Redis

/// A `redis-server` of one run, on a port of its own, killed when dropped.
#[derive(Debug)]
pub struct Redis {
    child: Child,
    pub pid: u32,
    pub port: u16,
    dir: PathBuf,
    log: PathBuf,
}

/// The server flags of each Redis mode, printed in the report.
pub fn redis_flags(aof: bool) -> &'static [&'static str] {
    if aof {
        &["--save", "", "--appendonly", "yes", "--appendfsync", "always"]
    } else {
        &["--save", "", "--appendonly", "no"]
    }
}

impl Redis {
    fn start(bin: &Path, dir: &Path, aof: bool) -> anyhow::Result<Redis> {
        remove_dir(dir)?;
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let port = free_port()?;
        let log = dir.with_extension("log");
        let out = std::fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let mut child = Command::new(bin)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--daemonize", "no", "--protected-mode", "no"])
            .args(redis_flags(aof))
            .arg("--dir")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out.try_clone()?))
            .stderr(Stdio::from(out))
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        let pid = child.id();
        let until = Instant::now() + Duration::from_secs(10);
        while !redis_ping(port) {
            if let Ok(Some(status)) = child.try_wait() {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                bail!("redis-server exited ({status}) on port {port}:\n{text}");
            }
            if Instant::now() >= until {
                let _ = child.kill();
                let _ = child.wait();
                bail!("redis-server did not answer PING on port {port} within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Redis { child, pid, port, dir: dir.to_path_buf(), log })
    }

    fn finish(mut self) -> anyhow::Result<()> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        remove_dir(&self.dir)?;
        let _ = std::fs::remove_file(&self.log);
        Ok(())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn redis_ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let mut buf = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

/// A port nobody listens on right now (the OS's pick; the server binds it a moment later).
fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0").context("find a free port")?.local_addr()?.port())
}

// ---------------------------------------------------------------------------------------------
// CPU

/// What to count: one process, or the PostgreSQL processes serving one database.
#[derive(Clone, Debug)]
enum Source {
    Pid(&'static str, u32),
    Postgres(String),
}

/// proc(5) stat: (state, utime + stime in ticks, start time) of a process.
fn stat_of(pid: u32) -> Option<(char, u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat)
}

fn parse_stat(stat: &str) -> Option<(char, u64, u64)> {
    let after_name = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = after_name.split(' ').collect();
    // Fields 3 (state), 14 (utime), 15 (stime), 22 (starttime), counted from 1.
    let num = |i: usize| f.get(i - 3).and_then(|v| v.parse::<u64>().ok());
    Some((f.first()?.chars().next()?, num(14)? + num(15)?, num(22)?))
}

/// Whether a postgres process with this command line works for database `db`: its backends
/// (and autovacuum workers) name the database; the postmaster and the background processes
/// serve every database, so they count too.
pub fn postgres_counts(cmdline: &str, db: &str) -> bool {
    let Some(title) = cmdline.strip_prefix("postgres: ") else {
        // The postmaster: its command line is the binary's path and flags.
        return true;
    };
    const SHARED: [&str; 7] = [
        "checkpointer",
        "background writer",
        "walwriter",
        "autovacuum launcher",
        "logical replication launcher",
        "archiver",
        "stats collector",
    ];
    // A cluster name may come first: `postgres: 15/main: walwriter`.
    let title = title.rsplit(": ").next().unwrap_or(title);
    title.split_whitespace().any(|w| w == db) || SHARED.iter().any(|s| title.starts_with(s))
}

/// Per process (pid, start time): ticks at the first and the last sample.
type Samples = BTreeMap<(u32, u64), (&'static str, u64, u64)>;

/// Samples the server side's CPU time from its start until [`CpuWatch::stop`].
#[derive(Debug)]
pub struct CpuWatch {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Samples>,
}

/// Known processes are read this often, so a backend that exits loses at most this much CPU.
const SAMPLE_EVERY: Duration = Duration::from_millis(20);
/// New PostgreSQL backends are looked for this often (a scan of /proc).
const SCAN_EVERY: Duration = Duration::from_millis(250);

impl CpuWatch {
    fn start(sources: Vec<Source>) -> CpuWatch {
        let mut samples = Samples::new();
        let db = sources.iter().find_map(|s| match s {
            Source::Postgres(db) => Some(db.clone()),
            Source::Pid(..) => None,
        });
        let fixed: Vec<(&'static str, u32)> = sources
            .iter()
            .filter_map(|s| match s {
                Source::Pid(label, pid) => Some((*label, *pid)),
                Source::Postgres(_) => None,
            })
            .collect();
        // Whatever ran before this instant is not the run's: the first reading is the baseline.
        let mut pids: Vec<(&'static str, u32)> = fixed.clone();
        if let Some(db) = &db {
            pids.extend(postgres_pids(db).into_iter().map(|p| ("postgres", p)));
        }
        for &(label, pid) in &pids {
            if let Some((_, ticks, start)) = stat_of(pid) {
                samples.insert((pid, start), (label, ticks, ticks));
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut last_scan = Instant::now();
                loop {
                    let stopping = stop.load(Relaxed);
                    if let Some(db) = &db
                        && (stopping || last_scan.elapsed() >= SCAN_EVERY)
                    {
                        last_scan = Instant::now();
                        for pid in postgres_pids(db) {
                            if !pids.iter().any(|p| p.1 == pid) {
                                pids.push(("postgres", pid));
                            }
                        }
                    }
                    pids.retain(|&(label, pid)| match stat_of(pid) {
                        Some((_, ticks, start)) => {
                            // A process first seen now started during the run: all of its CPU counts.
                            samples.entry((pid, start)).or_insert((label, 0, 0)).2 = ticks;
                            true
                        }
                        None => false,
                    });
                    if stopping {
                        return samples;
                    }
                    std::thread::sleep(SAMPLE_EVERY);
                }
            })
        };
        CpuWatch { stop, thread }
    }

    /// Takes the last sample; CPU seconds per kind of process ("dray", "redis", "postgres").
    pub fn stop(self) -> BTreeMap<&'static str, f64> {
        self.stop.store(true, Relaxed);
        let samples = self.thread.join().unwrap_or_default();
        let mut out = BTreeMap::new();
        for (label, first, last) in samples.into_values() {
            *out.entry(label).or_insert(0.0) += last.saturating_sub(first) as f64 / 100.0;
        }
        out
    }
}

/// PostgreSQL processes that count for `db` (see [`postgres_counts`]).
fn postgres_pids(db: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(comm) = std::fs::read_to_string(entry.path().join("comm")) else { continue };
        if comm.trim() != "postgres" {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if postgres_counts(cmdline.trim(), db) {
            out.push(pid);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The driver process

/// A finished driver process.
#[derive(Debug)]
pub struct DriverRun {
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr_tail: Vec<String>,
    /// User + system CPU seconds of the driver over its whole life, all threads.
    pub cpu_s: f64,
    pub wall_s: f64,
    pub timed_out: bool,
}

/// Runs the driver to its end (killing it after `timeout`), passing its stderr through with
/// `prefix` and keeping its stdout.
pub fn run_driver(mut command: Command, timeout: Duration, prefix: &str) -> anyhow::Result<DriverRun> {
    let started = Instant::now();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("start the driver {command:?}"))?;
    let pid = child.id();
    let mut stdout = child.stdout.take().context("the driver's stdout")?;
    let stderr = child.stderr.take().context("the driver's stderr")?;
    let out_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let tail = Arc::new(Mutex::new(VecDeque::new()));
    let err_thread = {
        let (tail, prefix) = (tail.clone(), prefix.to_string());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("{prefix}{line}");
                let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
                if t.len() == 40 {
                    t.pop_front();
                }
                t.push_back(line);
            }
        })
    };
    // Wait for the process to exit without reaping it: a zombie still shows its CPU totals.
    let mut timed_out = false;
    let cpu_ticks = loop {
        match stat_of(pid) {
            Some(('Z' | 'X', ticks, _)) => break Some(ticks),
            Some(_) => {}
            None => break None,
        }
        if !timed_out && started.elapsed() >= timeout {
            timed_out = true;
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let status = child.wait().ok();
    let wall_s = started.elapsed().as_secs_f64();
    let stdout = out_thread.join().unwrap_or_default();
    let _ = err_thread.join();
    let stderr_tail = tail.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect();
    Ok(DriverRun {
        status,
        stdout,
        stderr_tail,
        cpu_s: cpu_ticks.map_or(f64::NAN, |t| t as f64 / 100.0),
        wall_s,
        timed_out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_survive_odd_process_names() {
        let stat = "1234 (node (main) x) Z 1 2 3 4 5 6 7 8 9 10 150 25 0 0 20 0 11 0 987654 0 0";
        assert_eq!(parse_stat(stat), Some(('Z', 175, 987654)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn postgres_processes_of_the_run() {
        let db = "dray_compare_x";
        assert!(postgres_counts("/usr/lib/postgresql/15/bin/postgres -D /var/lib/postgresql/15/main", db));
        assert!(postgres_counts("postgres: 15/main: walwriter", db));
        assert!(postgres_counts("postgres: checkpointer", db));
        assert!(postgres_counts("postgres: 15/main: postgres dray_compare_x 127.0.0.1(5123) idle", db));
        assert!(postgres_counts("postgres: autovacuum worker dray_compare_x", db));
        assert!(!postgres_counts("postgres: 15/main: postgres dray_test_1 127.0.0.1(5124) idle", db));
        assert!(!postgres_counts("postgres: postgres dray_compare_x2 127.0.0.1(5125) idle", db));
    }

    #[test]
    fn database_urls_name_the_new_database() {
        let u = |a: &str| with_database(a, "fresh").unwrap();
        assert_eq!(u("postgres://postgres@127.0.0.1:5432/test"), "postgres://postgres@127.0.0.1:5432/fresh");
        assert_eq!(u("postgresql://u:p@h/test?sslmode=disable"), "postgresql://u:p@h/fresh?sslmode=disable");
        assert_eq!(u("postgres://h:5432"), "postgres://h:5432/fresh");
        assert!(with_database("host=h dbname=test", "x").unwrap_err().to_string().contains("postgres:// URL"));
    }
}
