//! The standard `process_*` metrics (the names every Prometheus client library exports, so the
//! usual dashboards and alerts work): CPU time, resident memory, open and maximum file
//! descriptors, and start time. Read from `/proc/self` at scrape time on Linux, with no
//! dependency and no `unsafe`; elsewhere, or when `/proc` is not mounted, they are left out of
//! the scrape rather than exported as zero.

use std::fmt::Write as _;

/// Clock ticks per second in `/proc/<pid>/stat` (the kernel's `USER_HZ`): 100 on every
/// architecture Dray is built for. Part of the kernel's user ABI, so it is a constant here
/// rather than a `sysconf` call (which would need `unsafe`).
const USER_HZ: f64 = 100.0;

/// What `/proc` says about this process.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct Process {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub open_fds: u64,
    pub max_fds: Option<u64>,
    pub start_time_seconds: Option<f64>,
}

impl Process {
    /// Reads `/proc/self`; `None` when it cannot (not Linux, no `/proc`).
    pub fn read() -> Option<Process> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let (cpu_ticks, start_ticks) = stat_fields(&stat)?;
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
        let max_fds = std::fs::read_to_string("/proc/self/limits").ok().and_then(|l| max_open_files(&l));
        let boot_time = std::fs::read_to_string("/proc/stat").ok().and_then(|s| boot_time(&s));
        Some(Process {
            cpu_seconds: cpu_ticks as f64 / USER_HZ,
            resident_bytes: resident_bytes(&status)?,
            open_fds,
            max_fds,
            start_time_seconds: boot_time.map(|boot| boot as f64 + start_ticks as f64 / USER_HZ),
        })
    }

    /// Appends the samples in the text format.
    pub fn render(&self, out: &mut String) {
        let mut metric = |name: &str, kind: &str, help: &str, value: &dyn std::fmt::Display| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        };
        metric(
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time spent, in seconds.",
            &self.cpu_seconds,
        );
        metric("process_resident_memory_bytes", "gauge", "Resident memory size, in bytes.", &self.resident_bytes);
        metric("process_open_fds", "gauge", "Open file descriptors.", &self.open_fds);
        if let Some(max) = self.max_fds {
            metric("process_max_fds", "gauge", "The most file descriptors the process may open.", &max);
        }
        if let Some(start) = self.start_time_seconds {
            metric(
                "process_start_time_seconds",
                "gauge",
                "Start time of the process since the Unix epoch, in seconds.",
                &start,
            );
        }
    }
}

/// `(utime + stime, starttime)` in clock ticks from `/proc/<pid>/stat`. The command name (field
/// 2) is in parentheses and may hold spaces or parentheses itself: fields are counted after the
/// last `)`.
fn stat_fields(stat: &str) -> Option<(u64, u64)> {
    let (_, rest) = stat.rsplit_once(')')?;
    // `rest` starts at field 3 (state): field N is at index N - 3.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some((field(14)? + field(15)?, field(22)?))
}

/// `VmRSS` from `/proc/<pid>/status`, in bytes.
fn resident_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kib * 1024)
}

/// The soft limit of "Max open files" in `/proc/<pid>/limits` (`None` when unlimited).
fn max_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find_map(|l| l.strip_prefix("Max open files"))?;
    line.split_whitespace().next()?.parse().ok()
}

/// `btime` (boot time, Unix seconds) from `/proc/stat`.
fn boot_time(stat: &str) -> Option<u64> {
    stat.lines().find_map(|l| l.strip_prefix("btime "))?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        // A command name with a space and a parenthesis, as a process may name itself.
        let stat = "4242 (dray (x) y) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 130 0 0 20 0 9 0 \
                    123456 1000000 2000 18446744073709551615";
        assert_eq!(stat_fields(stat), Some((380, 123456)));
        assert_eq!(stat_fields("garbage"), None);
        let status = "Name:\tdray\nVmPeak:\t  999 kB\nVmRSS:\t   20480 kB\nThreads:\t9\n";
        assert_eq!(resident_bytes(status), Some(20480 * 1024));
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             63704                63704                processes \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(max_open_files(limits), Some(1024));
        assert_eq!(max_open_files("Max open files            unlimited  unlimited  files"), None);
        assert_eq!(boot_time("cpu  1 2 3\nbtime 1790000000\nprocesses 5\n"), Some(1_790_000_000));
    }

    /// Regression (issue #18): the process metrics were missing from `/metrics`.
    #[cfg(target_os = "linux")]
    #[test]
    fn reads_this_process_and_renders_every_metric() {
        let p = Process::read().expect("/proc/self is readable on Linux");
        assert!(p.resident_bytes > 1024 * 1024, "{p:?}");
        assert!(p.open_fds >= 3 && p.max_fds.is_none_or(|max| p.open_fds <= max), "{p:?}");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        let start = p.start_time_seconds.expect("btime and starttime");
        assert!(start <= now + 1.0 && start > now - 86_400.0, "started {start}, now {now}");
        let mut out = String::new();
        p.render(&mut out);
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_start_time_seconds",
        ] {
            assert!(out.contains(&format!("\n{name} ")), "{name} in\n{out}");
        }
        assert!(out.contains("# TYPE process_cpu_seconds_total counter"), "{out}");
    }
}
