//! What the PostgreSQL-mode process tests (`multinode.rs`, `failover.rs`) share: a database of
//! their own per test, `psql` for the test's own SQL, and `dray serve --database` nodes.
//!
//! The database server is `DATABASE_URL` if set, else `postgres://postgres@127.0.0.1:5432/test`.
//! With no PostgreSQL reachable a test fails, saying how to get one. Needs `mod common;` beside
//! it in the test crate.

#![allow(dead_code)] // each test binary uses a different part

use std::process::Command;
use std::time::{Duration, Instant};

use dray_client::Client;

use crate::common::ServeProcess;

const BASE_URL_DEFAULT: &str = "postgres://postgres@127.0.0.1:5432/test";

pub fn base_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| BASE_URL_DEFAULT.to_owned())
}

/// Runs `sql` with psql on `url`; returns its unaligned, tuples-only output (fields split by `,`).
pub fn psql(url: &str, sql: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .args([url, "-X", "-v", "ON_ERROR_STOP=1", "-At", "-F", ",", "-c", sql])
        .output()
        .map_err(|e| format!("cannot run psql: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[track_caller]
pub fn query(url: &str, sql: &str) -> String {
    psql(url, sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
}

#[track_caller]
pub fn count(url: &str, sql: &str) -> u64 {
    query(url, sql).trim().parse().unwrap_or_else(|e| panic!("{sql}: not a number: {e}"))
}

/// `url` with its database name replaced by `db`.
pub fn with_database(url: &str, db: &str) -> String {
    let scheme_end = url.find("://").map(|i| i + 3).expect("DATABASE_URL must be a postgres:// URL");
    let rest = &url[scheme_end..];
    let (before_query, query) = match rest.find('?') {
        Some(q) => (&rest[..q], &rest[q..]),
        None => (rest, ""),
    };
    let authority = before_query.split('/').next().unwrap_or("");
    format!("{}{authority}/{db}{query}", &url[..scheme_end])
}

/// A database of its own, dropped (with its connections) when the test ends.
pub struct TestDb {
    pub base: String,
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub fn create() -> TestDb {
        let db = TestDb::named();
        query(&db.base, &format!("CREATE DATABASE {}", db.name));
        db
    }

    /// A fresh name and its URL, without creating the database (for a test that creates it
    /// later); it is still dropped at the end.
    pub fn named() -> TestDb {
        let base = base_url();
        if let Err(e) = psql(&base, "SELECT 1") {
            panic!(
                "no PostgreSQL reachable at {base}: {e}\n\
                 These tests need one: set DATABASE_URL=postgres://USER@HOST:PORT/DB (a role that may \
                 CREATE DATABASE), or start the local cluster with `pg_ctlcluster 15 main start` \
                 (user postgres, trust authentication, database test)."
            );
        }
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        let name = format!("dray_test_{}_{nanos}", std::process::id());
        let url = with_database(&base, &name);
        TestDb { base, name, url }
    }

    pub fn terminate_all(&self) -> u64 {
        let sql = format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = '{}' AND pid <> pg_backend_pid()",
            self.name
        );
        count(&self.base, &sql)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let _ = psql(&self.base, &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
    }
}

/// A `dray serve --database` node; its data directory is unused but must exist for the helper.
pub struct Node {
    pub process: Option<ServeProcess>,
    pub url: String,
    pub addr: String,
    db: String,
    extra: Vec<String>,
    dir: tempfile::TempDir,
}

impl Node {
    pub fn start(db: &str) -> Node {
        Node::start_with(db, &[])
    }

    /// With more `dray serve` flags after the usual ones.
    pub fn start_with(db: &str, extra: &[&str]) -> Node {
        let extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        Node::start_at(db, "127.0.0.1:0", extra, tempfile::tempdir().expect("a temporary directory"))
    }

    fn start_at(db: &str, listen: &str, extra: Vec<String>, dir: tempfile::TempDir) -> Node {
        let mut flags = node_flags(db);
        flags.extend(extra.iter().map(String::as_str));
        // Restarting on the same port may race the old socket's teardown: retry a little.
        let deadline = Instant::now() + Duration::from_secs(10);
        let process = loop {
            match ServeProcess::spawn(&dir.path().join("unused"), listen, &flags) {
                Ok(p) => break p,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("retrying: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("{e}"),
            }
        };
        Node {
            url: process.url.clone(),
            addr: process.addr.to_string(),
            process: Some(process),
            db: db.to_owned(),
            extra,
            dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.process.as_ref().expect("running").pid()
    }

    pub fn client(&self) -> Client {
        Client::builder(&self.url).request_timeout(Duration::from_secs(30)).build().expect("a client")
    }

    /// SIGKILL, then a new process on the same address (clients keep their URL).
    pub fn kill_and_restart(&mut self) {
        self.process.take().expect("running").kill9();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("a temporary directory"));
        let restarted = Node::start_at(&self.db, &self.addr, self.extra.clone(), dir);
        assert_eq!(restarted.url, self.url);
        *self = restarted;
    }
}

fn node_flags(db: &str) -> Vec<&str> {
    vec!["--database", db, "--database-pool-size-max", "8", "--database-connect-timeout-ms", "2000"]
}

/// The maintenance leader's row: `(pid of the holder, epoch)` while its lease runs, from the
/// holder name `<host>:<pid>:<nonce>`.
pub fn leader(db: &str) -> Option<(u32, u64)> {
    let row = query(db, "SELECT holder, epoch FROM dray.leader WHERE name = 'maintenance' AND expires_at > now()");
    let line = row.lines().next()?;
    let (holder, epoch) = line.rsplit_once(',').expect("holder,epoch");
    let pid = holder.split(':').nth(1).and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("holder {holder:?}"));
    Some((pid, epoch.parse().expect("an epoch")))
}
