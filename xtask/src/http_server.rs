//! The system under test of `bench http`: the real `dray serve` binary in a process of its own,
//! so that its CPU time, threads and fsyncs can be read apart from the load generator's.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::args::DurabilityArg;
use crate::bench_store::remove_dir;
use crate::machine;

/// A running `dray serve`, killed (SIGKILL, by its pid) when dropped: the benchmark never needs
/// its data afterwards, and a graceful stop of a store holding a million finished jobs only costs
/// time.
#[derive(Debug)]
pub struct Server {
    child: Child,
    /// Kept open so the server never writes to a closed pipe.
    _stdout: BufReader<ChildStdout>,
    pub pid: u32,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    pub dir: PathBuf,
    pub log: PathBuf,
}

impl Server {
    /// Starts `bin serve` on 127.0.0.1 with a port the OS picks and a fresh `dir`; returns once it
    /// printed the address it listens on (it then accepts connections).
    pub fn start(bin: &Path, dir: &Path, durability: DurabilityArg) -> anyhow::Result<Server> {
        Server::start_with(bin, dir, &["--durability".into(), durability.arg()])
    }

    /// [`Server::start`] with other flags for `serve` than the durability (`--database URL` for
    /// a node on PostgreSQL, whose data directory is then unused).
    pub fn start_with(bin: &Path, dir: &Path, flags: &[String]) -> anyhow::Result<Server> {
        remove_dir(dir)?;
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let log = dir.with_extension("stderr.log");
        let stderr = File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let mut command = Command::new(bin);
        command
            .arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .args(flags)
            .arg("--data-dir")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            // The server's defaults, whatever this shell has set.
            .env_remove("RUST_LOG");
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("DRAY_") {
                command.env_remove(key);
            }
        }
        let mut child = command.spawn().with_context(|| {
            format!("start {} (build it with `cargo build --release -p dray`, or pass --bin)", bin.display())
        })?;
        let pid = child.id();
        let mut stdout = BufReader::new(child.stdout.take().context("the server's stdout")?);
        let mut line = String::new();
        let read = stdout.read_line(&mut line);
        let url = match (read, line.trim().strip_prefix("dray listening on ")) {
            (Ok(_), Some(url)) => url.to_string(),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                let err = std::fs::read_to_string(&log).unwrap_or_default();
                bail!("{} serve did not start; it printed {line:?}; its stderr:\n{err}", bin.display());
            }
        };
        Ok(Server { child, _stdout: stdout, pid, url, dir: dir.to_path_buf(), log })
    }

    fn proc_dir(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}", self.pid))
    }

    /// User + system CPU seconds of the whole process so far (every thread, ended ones included).
    /// User and system CPU seconds of the whole process so far.
    pub fn cpu_user_sys_s(&self) -> (f64, f64) {
        let (user, sys, _) = machine::process_cpu_in(&self.proc_dir());
        (user, sys)
    }

    /// Per thread name: seconds on a CPU and seconds runnable but waiting for one.
    pub fn threads(&self) -> BTreeMap<String, (f64, f64)> {
        machine::sched_by_thread_in(&self.proc_dir())
    }

    /// VmRSS in KiB.
    pub fn rss_kib(&self) -> u64 {
        machine::rss_kib_in(&self.proc_dir()).0
    }

    /// Starts counting the server's fsync and fdatasync calls for `window`; `None` when perf
    /// cannot (see [`fsync_counting_works`]).
    pub fn count_fsyncs(&self, window: Duration) -> Option<FsyncCount> {
        let child = Command::new("perf")
            .args(["stat", "-x", ",", "-e", "syscalls:sys_enter_fdatasync,syscalls:sys_enter_fsync", "-p"])
            .arg(self.pid.to_string())
            .args(["--", "sleep", &format!("{:.3}", window.as_secs_f64())])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .ok()?;
        Some(FsyncCount { child })
    }

    /// Starts `perf record` of the server (call graphs from DWARF, 499 Hz) into `out` for `window`.
    pub fn record_profile(&self, window: Duration, out: &Path) -> anyhow::Result<Profile> {
        let child = Command::new("perf")
            .args(["record", "-F", "499", "--call-graph", "dwarf,16384", "-o"])
            .arg(out)
            .arg("-p")
            .arg(self.pid.to_string())
            .args(["--", "sleep", &format!("{:.3}", window.as_secs_f64())])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start perf record")?;
        Ok(Profile { child })
    }

    /// Kills the server and deletes its directory (and log) unless `keep`.
    pub fn finish(mut self, keep: bool) -> anyhow::Result<()> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !keep {
            remove_dir(&self.dir)?;
            let _ = std::fs::remove_file(&self.log);
        }
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `perf stat` counting a server's fsyncs over a window.
#[derive(Debug)]
pub struct FsyncCount {
    child: Child,
}

impl FsyncCount {
    /// fdatasync + fsync calls in the window (waits for perf to end, which it does at the end of
    /// the window it was started for).
    pub fn finish(self) -> Option<u64> {
        let out = self.child.wait_with_output().ok()?;
        parse_perf_counts(&String::from_utf8_lossy(&out.stderr))
    }
}

/// Sums the counts of `perf stat -x,` lines; `None` if none was counted.
fn parse_perf_counts(csv: &str) -> Option<u64> {
    let counts: Vec<u64> = csv
        .lines()
        .filter(|l| l.contains("syscalls:sys_enter_"))
        .filter_map(|l| l.split(',').next()?.trim().parse().ok())
        .collect();
    (!counts.is_empty()).then(|| counts.iter().sum())
}

/// Whether `perf stat` can count syscall tracepoints here (it needs perf, tracefs, and the
/// permission to trace another process).
pub fn fsync_counting_works() -> bool {
    let Ok(out) = Command::new("perf")
        .args(["stat", "-x", ",", "-e", "syscalls:sys_enter_fdatasync", "--", "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
    else {
        return false;
    };
    out.status.success() && parse_perf_counts(&String::from_utf8_lossy(&out.stderr)).is_some()
}

/// A `perf record` of a server over a window.
#[derive(Debug)]
pub struct Profile {
    child: Child,
}

impl Profile {
    /// Waits for perf to write its file (it ends with the window it was started for).
    pub fn finish(mut self) -> anyhow::Result<()> {
        let status = self.child.wait().context("wait for perf record")?;
        if !status.success() {
            bail!("perf record failed ({status})");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perf_csv_counts_are_summed() {
        let csv =
            "1549,,syscalls:sys_enter_fdatasync,2005691062,100.00,,\n3,,syscalls:sys_enter_fsync,2005691062,100.00,,\n";
        assert_eq!(parse_perf_counts(csv), Some(1552));
        assert_eq!(parse_perf_counts("<not counted>,,syscalls:sys_enter_fsync,0,100.00,,\n"), None);
        assert_eq!(parse_perf_counts("<not supported>,,syscalls:sys_enter_fdatasync,0,100.00,,"), None);
    }
}
