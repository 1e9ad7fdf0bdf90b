//! A `dray serve` a test can kill with SIGKILL and start again on the same address: on the
//! embedded store (a data directory the test owns) or as a PostgreSQL node (a fresh database).
//! Restarts keep the address, so a client and its workers keep their URL across them.

#![allow(dead_code)] // each test binary uses a different part

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::common::{self, ServeProcess, WAIT_MAX};
use crate::pg;

pub enum Server {
    Embedded { process: Option<ServeProcess>, data: PathBuf, _dir: tempfile::TempDir },
    Postgres { node: pg::Node, _db: pg::TestDb },
}

impl Server {
    pub fn embedded() -> Server {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let data = dir.path().join("data");
        let process = ServeProcess::start(&data);
        Server::Embedded { process: Some(process), data, _dir: dir }
    }

    pub fn postgres() -> Server {
        let db = pg::TestDb::create();
        let node = pg::Node::start_with(&db.url, &["--database-leader-ttl-ms", "1000"]);
        Server::Postgres { node, _db: db }
    }

    pub fn url(&self) -> String {
        match self {
            Server::Embedded { process, .. } => process.as_ref().expect("running").url.clone(),
            Server::Postgres { node, .. } => node.url.clone(),
        }
    }

    /// `kill -9`, then the same server again on the same address.
    pub fn kill9_and_restart(&mut self) {
        match self {
            Server::Embedded { process, data, .. } => {
                let old = process.take().expect("running");
                let addr = old.addr.to_string();
                old.kill9();
                *process = Some(respawn(data, &addr));
            }
            Server::Postgres { node, .. } => node.kill_and_restart(),
        }
    }
}

/// `dray serve` on `addr` again. The old socket's teardown may still hold the port a moment and
/// nothing signals its end: retry after a short pause (as `pg::Node` does), bounded.
fn respawn(data: &Path, addr: &str) -> ServeProcess {
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        match ServeProcess::spawn(data, addr, &[]) {
            Ok(p) => return p,
            Err(e) if Instant::now() < deadline => {
                eprintln!("retrying: {e}");
                std::thread::sleep(common::POLL);
            }
            Err(e) => panic!("{e}"),
        }
    }
}
