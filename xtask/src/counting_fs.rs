//! The real file system with counters: how many fsyncs the store's log issued, how long they took
//! and how many bytes it wrote (snapshot files counted apart). The store does not report its commits itself, but every byte it writes
//! goes through its public `Fs` trait, so wrapping `OsFs` counts them exactly without touching the
//! store. The cost is two clock reads per fsync, nothing per record.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use dray_store_embedded::fs::{Fs, FsFile, OsFs};

/// Fsync latencies kept per run, at most: about 8 minutes at 2,000 fsyncs/s.
const LATENCIES_MAX: usize = 1 << 20;

#[derive(Debug, Default)]
pub struct Counters {
    /// `FsFile::sync` (fdatasync) calls on log segments: the log's commits.
    pub syncs: AtomicU64,
    pub sync_ns: AtomicU64,
    /// `Fs::sync_dir` calls (segment and snapshot creation).
    pub dir_syncs: AtomicU64,
    /// Writes to log segments.
    pub writes: AtomicU64,
    pub bytes_written: AtomicU64,
    /// Bytes written to snapshot files (counted apart so the log's bytes per commit stay exact).
    pub snapshot_bytes_written: AtomicU64,
    /// Microseconds of each `sync`, for percentiles.
    latencies_us: Mutex<Vec<u32>>,
}

/// A reading of the counters at one moment.
#[derive(Clone, Copy, Debug, Default)]
pub struct Reading {
    pub syncs: u64,
    pub sync_s: f64,
    pub dir_syncs: u64,
    pub writes: u64,
    pub bytes_written: u64,
    pub snapshot_bytes_written: u64,
    /// Index into the latency list, so a window's percentiles can be taken.
    latencies_len: usize,
}

impl Counters {
    pub fn read(&self) -> Reading {
        Reading {
            syncs: self.syncs.load(Relaxed),
            sync_s: self.sync_ns.load(Relaxed) as f64 / 1e9,
            dir_syncs: self.dir_syncs.load(Relaxed),
            writes: self.writes.load(Relaxed),
            bytes_written: self.bytes_written.load(Relaxed),
            snapshot_bytes_written: self.snapshot_bytes_written.load(Relaxed),
            latencies_len: self.latencies_us.lock().map_or(0, |l| l.len()),
        }
    }

    /// Fsync latency percentiles (p50, p99, max) in ms between two readings.
    pub fn latency_ms(&self, from: &Reading, to: &Reading) -> Option<(f64, f64, f64)> {
        let all = self.latencies_us.lock().ok()?;
        let mut window: Vec<u32> = all.get(from.latencies_len..to.latencies_len)?.to_vec();
        if window.is_empty() {
            return None;
        }
        window.sort_unstable();
        let at = |q: f64| window[((window.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
        Some((at(0.5), at(0.99), at(1.0)))
    }

    fn record_sync(&self, started: Instant) {
        let ns = started.elapsed().as_nanos() as u64;
        self.syncs.fetch_add(1, Relaxed);
        self.sync_ns.fetch_add(ns, Relaxed);
        if let Ok(mut l) = self.latencies_us.lock()
            && l.len() < LATENCIES_MAX
        {
            l.push((ns / 1000).min(u64::from(u32::MAX)) as u32);
        }
    }
}

#[derive(Debug, Default)]
pub struct CountingFs {
    inner: OsFs,
    pub counters: Arc<Counters>,
}

#[derive(Debug)]
struct CountingFile {
    inner: Box<dyn FsFile>,
    counters: Arc<Counters>,
    /// A snapshot file (`snapshot-*`), not a log segment.
    snapshot: bool,
}

impl FsFile for CountingFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        if self.snapshot {
            self.counters.snapshot_bytes_written.fetch_add(buf.len() as u64, Relaxed);
        } else {
            self.counters.writes.fetch_add(1, Relaxed);
            self.counters.bytes_written.fetch_add(buf.len() as u64, Relaxed);
        }
        self.inner.write_all(buf)
    }

    fn sync(&mut self) -> io::Result<()> {
        if self.snapshot {
            return self.inner.sync();
        }
        let started = Instant::now();
        let r = self.inner.sync();
        self.counters.record_sync(started);
        r
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.inner.truncate(len)
    }
}

impl Fs for CountingFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.inner.create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.inner.list(dir)
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn io::Read + Send>> {
        self.inner.open_read(path)
    }

    fn file_len(&self, path: &Path) -> io::Result<u64> {
        self.inner.file_len(path)
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        let snapshot = path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("snapshot"));
        Ok(Box::new(CountingFile { inner: self.inner.create(path)?, counters: self.counters.clone(), snapshot }))
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        self.inner.truncate(path, len)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        self.inner.remove(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.counters.dir_syncs.fetch_add(1, Relaxed);
        self.inner.sync_dir(dir)
    }

    fn lock(&self, path: &Path) -> io::Result<Box<dyn std::any::Any + Send + Sync>> {
        self.inner.lock(path)
    }

    fn restrict(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.inner.restrict(dir)
    }
}
