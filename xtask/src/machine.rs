//! What the figures were measured on, and the process counters they are explained with: all read
//! from `/proc`, so nothing here needs a dependency or `unsafe`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// The machine, printed above every report.
#[derive(Debug)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub memory_gib: f64,
    pub commit: String,
    pub date: String,
}

impl Machine {
    pub fn read() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string()))
            .unwrap_or_else(|| "unknown".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string());
        Machine {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model,
            kernel: kernel.unwrap_or_else(|_| "unknown".into()),
            memory_gib: meminfo_kib("MemTotal:").unwrap_or(0) as f64 / (1024.0 * 1024.0),
            commit: git_commit(),
            date: command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_else(|| "unknown".into()),
        }
    }
}

fn command_line(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The commit, and whether tracked files differ from it (read-only git commands only).
fn git_commit() -> String {
    let Some(head) = command_line("git", &["rev-parse", "--short=12", "HEAD"]) else {
        return "unknown (not a git checkout)".into();
    };
    let clean = Command::new("git").args(["diff-index", "--quiet", "HEAD", "--"]).status().is_ok_and(|s| s.success());
    if clean { head } else { format!("{head} + uncommitted changes") }
}

pub fn meminfo_kib(key: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    s.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// `VmRSS` and `VmHWM` of this process, in KiB.
pub fn rss_kib() -> (u64, u64) {
    rss_kib_in(Path::new("/proc/self"))
}

/// [`rss_kib`] of any process, given its `/proc/<pid>` directory.
pub fn rss_kib_in(proc_dir: &Path) -> (u64, u64) {
    let s = std::fs::read_to_string(proc_dir.join("status")).unwrap_or_default();
    let get = |key: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (get("VmRSS:"), get("VmHWM:"))
}

/// This process's user and system CPU seconds and minor page faults so far (proc(5) stat fields
/// 14, 15 and 10), to tell computing apart from the kernel handing out fresh memory.
pub fn process_cpu() -> (f64, f64, u64) {
    process_cpu_in(Path::new("/proc/self"))
}

/// [`process_cpu`] of any process, given its `/proc/<pid>` directory.
pub fn process_cpu_in(proc_dir: &Path) -> (f64, f64, u64) {
    let stat = std::fs::read_to_string(proc_dir.join("stat")).unwrap_or_default();
    let after_name = stat.rfind(')').map_or("", |i| &stat[i + 2..]);
    let fields: Vec<&str> = after_name.split(' ').collect();
    let field = |i: usize| fields.get(i - 3).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (field(14) as f64 / 100.0, field(15) as f64 / 100.0, field(10))
}

/// Seconds all CPUs of the machine spent busy (not idle, not waiting for I/O) since boot, from
/// the first line of `/proc/stat`. Minus the benchmark's own processes' CPU time, it is what the
/// rest of the machine took: other processes, and kernel work charged to no process (interrupts,
/// softirqs such as loopback networking, kernel threads).
pub fn machine_busy_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().next().and_then(|l| l.strip_prefix("cpu ")) else { return f64::NAN };
    let ticks: Vec<u64> = cpu.split_whitespace().map(|v| v.parse().unwrap_or(0)).collect();
    // user nice system idle iowait irq softirq steal: busy is user + nice + system + irq + softirq
    // (guest time is already in user; steal is time the hypervisor gave to someone else).
    let busy: u64 = [0, 1, 2, 5, 6].iter().filter_map(|&i| ticks.get(i)).sum();
    busy as f64 / 100.0
}

/// Per thread name of this process: seconds on a CPU and seconds runnable but waiting for one
/// (`/proc/<tid>/schedstat`). The second is what a shared machine takes away: time a thread was
/// ready to run while other processes had the cores.
pub fn sched_by_thread() -> BTreeMap<String, (f64, f64)> {
    sched_by_thread_in(Path::new("/proc/self"))
}

/// [`sched_by_thread`] of any process, given its `/proc/<pid>` directory.
pub fn sched_by_thread_in(proc_dir: &Path) -> BTreeMap<String, (f64, f64)> {
    let mut out = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(proc_dir.join("task")) else { return out };
    for task in tasks.flatten() {
        let Ok(name) = std::fs::read_to_string(task.path().join("comm")) else { continue };
        let Ok(sched) = std::fs::read_to_string(task.path().join("schedstat")) else { continue };
        let mut f = sched.split_whitespace().map(|v| v.parse::<u64>().unwrap_or(0));
        let (run_ns, wait_ns) = (f.next().unwrap_or(0), f.next().unwrap_or(0));
        let e = out.entry(name.trim().replace(' ', "_")).or_insert((0.0, 0.0));
        e.0 += run_ns as f64 / 1e9;
        e.1 += wait_ns as f64 / 1e9;
    }
    out
}

/// The per-thread-name difference `after - before`; threads that ended in between are lost,
/// which is why the workloads sample while their threads are alive.
pub fn sched_diff(
    before: &BTreeMap<String, (f64, f64)>,
    after: &BTreeMap<String, (f64, f64)>,
) -> BTreeMap<String, (f64, f64)> {
    after
        .iter()
        .map(|(k, v)| {
            let b = before.get(k).copied().unwrap_or((0.0, 0.0));
            (k.clone(), (v.0 - b.0, v.1 - b.1))
        })
        .collect()
}

/// The file system holding `dir`: (type, device), from the longest matching mount point.
pub fn fs_of(dir: &Path) -> anyhow::Result<(String, String)> {
    let dir = dir.canonicalize().with_context(|| format!("resolve {}", dir.display()))?;
    let mounts = std::fs::read_to_string("/proc/self/mounts").context("read /proc/self/mounts")?;
    let mut best: Option<(usize, String, String)> = None;
    for line in mounts.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let [device, point, fstype, ..] = f[..] else { continue };
        let point = point.replace("\\040", " ");
        if dir.starts_with(&point) && best.as_ref().is_none_or(|(len, ..)| point.len() >= *len) {
            best = Some((point.len(), fstype.to_string(), device.to_string()));
        }
    }
    best.map(|(_, t, d)| (t, d)).context("no mount point holds the data directory")
}

/// Refuses a data directory in memory: the benchmark is about a real disk's fsync.
pub fn check_real_disk(dir: &Path) -> anyhow::Result<(String, String)> {
    let (fstype, device) = fs_of(dir)?;
    if matches!(fstype.as_str(), "tmpfs" | "ramfs" | "devtmpfs") {
        bail!(
            "{} is on {fstype}: fsync there is free and the figures would mean nothing; pass --dir on a real disk",
            dir.display()
        );
    }
    Ok((fstype, device))
}

/// Bytes of the files directly in `dir`: (log segments and everything else, snapshots).
pub fn dir_bytes(dir: &Path) -> (u64, u64) {
    let (mut log, mut snap) = (0, 0);
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let len = e.metadata().map_or(0, |m| m.len());
        if e.file_name().to_string_lossy().ends_with(".snap") {
            snap += len;
        } else {
            log += len;
        }
    }
    (log, snap)
}

/// Drops the files of `dir` from the page cache (written back first), so the next open reads
/// them from the disk. Per file (`posix_fadvise(DONTNEED)` through GNU dd), so the rest of the
/// machine keeps its cache.
pub fn drop_from_page_cache(dir: &Path) -> anyhow::Result<()> {
    let files: Vec<PathBuf> = std::fs::read_dir(dir)?.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect();
    for path in files {
        std::fs::File::open(&path)?.sync_all()?;
        let status = Command::new("dd")
            .arg(format!("if={}", path.display()))
            .args(["iflag=nocache", "count=0", "status=none"])
            .status()
            .context("run dd to drop a file from the page cache")?;
        if !status.success() {
            bail!("dd iflag=nocache failed on {}", path.display());
        }
    }
    Ok(())
}

/// Percent of `dir`'s file pages that are in the page cache, from util-linux `fincore` if present.
pub fn cached_percent(dir: &Path) -> Option<f64> {
    let files: Vec<String> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .map(|p| p.display().to_string())
        .collect();
    if files.is_empty() {
        return None;
    }
    let out = Command::new("fincore")
        .args(["--bytes", "--noheadings", "--raw", "--output", "RES,SIZE"])
        .args(&files)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let (mut res, mut size) = (0u64, 0u64);
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut f = line.split_whitespace().map(|v| v.parse::<u64>().unwrap_or(0));
        res += f.next().unwrap_or(0);
        size += f.next().unwrap_or(0);
    }
    (size > 0).then(|| 100.0 * res as f64 / size as f64)
}

/// FNV-1a over the workspace's crate sources (`crates/*/src/**/*.rs`, by path), so runs on a dirty
/// tree can still be told apart: same fingerprint, same code measured.
pub fn sources_fingerprint() -> String {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    for krate in std::fs::read_dir("crates").into_iter().flatten().flatten() {
        walk(&krate.path().join("src"), &mut files);
    }
    files.sort();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for f in &files {
        let bytes = std::fs::read(f).unwrap_or_default();
        for b in f.display().to_string().bytes().chain(bytes) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x} ({} files)", files.len())
}
