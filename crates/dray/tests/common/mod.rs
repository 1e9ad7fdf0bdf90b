//! What the `dray` binary's integration tests share: the real `dray serve` as a child process on a
//! free port, started on a data directory the test owns (so a test can restart it there), stopped
//! with SIGTERM (and checked) or killed with SIGKILL. Every wait is bounded by [`WAIT_MAX`].
//!
//! Blocking (std threads and processes): async tests call it from `spawn_blocking`.

#![allow(dead_code)] // each test binary uses a different part

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_dray");
/// Bound on any one wait: the server's start, a job's progress, a process's exit.
pub const WAIT_MAX: Duration = Duration::from_secs(30);
/// Between two looks at something that is expected to change soon.
pub const POLL: Duration = Duration::from_millis(25);

/// A running `dray serve`. Dropping it kills the process (SIGKILL) and reaps it.
#[derive(Debug)]
pub struct ServeProcess {
    child: Option<Child>,
    /// Where it listens (the port the OS picked for `127.0.0.1:0`).
    pub addr: SocketAddr,
    /// `http://ADDR`.
    pub url: String,
}

impl ServeProcess {
    /// `dray serve --listen 127.0.0.1:0 --data-dir DATA_DIR`; panics if it does not come up.
    pub fn start(data_dir: &Path) -> ServeProcess {
        ServeProcess::spawn(data_dir, "127.0.0.1:0", &[]).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `dray serve --listen LISTEN --data-dir DATA_DIR EXTRA...`, once it printed its address. An
    /// `Err` (with the exit status) if it stopped before that, e.g. when the port is taken.
    pub fn spawn(data_dir: &Path, listen: &str, extra: &[&str]) -> Result<ServeProcess, String> {
        ServeProcess::spawn_wrapped(&[], data_dir, listen, extra)
    }

    /// [`ServeProcess::spawn`] through a program that execs `dray` in the same process, e.g.
    /// `["prlimit", "--nofile=512:512", "--"]`.
    pub fn spawn_wrapped(
        wrapper: &[&str],
        data_dir: &Path,
        listen: &str,
        extra: &[&str],
    ) -> Result<ServeProcess, String> {
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(BIN);
                command
            }
            None => Command::new(BIN),
        };
        let mut child = command
            .args(["serve", "--listen", listen, "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("dray serve starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = tx.send(line);
            // Keep draining so the server never blocks on a full pipe.
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        let line = match rx.recv_timeout(WAIT_MAX) {
            Ok(line) => line,
            Err(err) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("dray serve printed no address within {WAIT_MAX:?}: {err}");
            }
        };
        if line.is_empty() {
            // Stdout closed without the address: the process is exiting.
            let status = wait_exit(&mut child, "its stdout closed");
            return Err(format!("dray serve --listen {listen} stopped before listening: {status}"));
        }
        let url = line
            .trim()
            .strip_prefix("dray listening on ")
            .unwrap_or_else(|| panic!("unexpected first line from dray serve: {line:?}"))
            .to_owned();
        let addr = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("not http(s)://IP:PORT: {url:?}"));
        Ok(ServeProcess { child: Some(child), addr, url })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGTERM, then waits (bounded) for the exit: the caller checks the status.
    pub fn terminate(mut self) -> ExitStatus {
        terminate(self.child.take().expect("running"))
    }

    /// `kill -9`, and reaps it: no graceful anything.
    pub fn kill9(mut self) {
        let mut child = self.child.take().expect("running");
        signal(&child, "-KILL");
        let status = wait_exit(&mut child, "SIGKILL");
        assert!(!status.success(), "SIGKILL cannot end in a clean exit: {status}");
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `kill SIGNAL PID`, with kill(1) as an operator would.
fn signal(child: &Child, signal: &str) {
    let status = Command::new("kill").args([signal, &child.id().to_string()]).status().expect("kill(1) runs");
    assert!(status.success(), "kill {signal} {} failed", child.id());
}

/// Sends SIGTERM to `child` and waits (bounded) for it to exit.
pub fn terminate(mut child: Child) -> ExitStatus {
    signal(&child, "-TERM");
    wait_exit(&mut child, "SIGTERM")
}

/// Waits at most [`WAIT_MAX`] for `child` to exit; kills it and panics past that.
fn wait_exit(child: &mut Child, after: &str) -> ExitStatus {
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("process {} did not exit within {WAIT_MAX:?} of {after}", child.id());
        }
        std::thread::sleep(POLL);
    }
}

/// A raw reqwest client builder. reqwest is built with rustls (through dray-client's `tls`
/// feature) and without a crypto provider of its own: a client built without one installed
/// panics ("no process-level CryptoProvider"), so this installs rustls's ring provider first,
/// once per test process.
pub fn http() -> reqwest::ClientBuilder {
    static PROVIDER: std::sync::Once = std::sync::Once::new();
    PROVIDER.call_once(|| {
        #[allow(deprecated)] // ring: see dray-server's tls.rs
        let provider = rustls::crypto::ring::default_provider();
        // Err only when another provider is installed already: that one serves as well.
        let _ = provider.install_default();
    });
    reqwest::Client::builder()
}

/// The test certificates (see `crates/dray-server/tests/fixtures/tls/make.sh`).
pub fn tls_fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../dray-server/tests/fixtures/tls").join(name)
}
