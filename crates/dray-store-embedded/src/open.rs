//! Opening a store: configuration, the data-directory lock, recovery (newest snapshot plus the log
//! after it), and the background snapshots that let old log segments go.
//!
//! A snapshot is fuzzy: the log is rotated to a new segment `S`, then jobs are copied out in small
//! chunks, each under the state lock for a moment, while writes go on. Replaying the log from `S`
//! over the snapshot gives the exact state, because log records carry results and job versions
//! (a change the snapshot already holds is skipped). Before a snapshot is published it waits for
//! the log to be durable up to the end of the copy, so it never holds a change the log could lose.

use std::io::{self, BufReader};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dray_core::JobId;
use dray_store::Error;

use crate::codec::{self, Names, Record};
use crate::fs::{Fs, OsFs};
use crate::state::State;
use crate::store::{EmbeddedStore, Locked};
use crate::wal::{self, Durability, Wal, WalConfig};

/// How an embedded store is opened. Start from [`EmbeddedConfig::new`].
#[derive(Clone, Debug)]
pub struct EmbeddedConfig {
    pub dir: PathBuf,
    /// When an acknowledged change is on stable storage; see `docs/semantics.md`.
    pub durability: Durability,
    /// Past this many bytes of job data, inserts fail with `OverCapacity` instead of the process
    /// running out of memory. Default: half the machine's memory (4 GiB if unknown).
    pub memory_budget_bytes: u64,
    /// Log bytes written since the last snapshot that trigger the next one, or the bytes of job
    /// data held if that is more. Default 256 MiB.
    pub snapshot_log_bytes: u64,
    /// A segment past this size is closed and a new one started. Default 64 MiB.
    pub segment_bytes_max: u64,
    /// How long an idempotency key returns the original job. Default 24 h.
    pub idempotency_window_ms: u64,
    /// Seed for backoff jitter; when set, lease ids come from it too (a predictable sequence, for
    /// tests that replay a run exactly). Default: jitter seeded from the OS, and lease ids from
    /// the OS CSPRNG (unguessable).
    pub seed: Option<u64>,
}

pub const SNAPSHOT_LOG_BYTES_DEFAULT: u64 = 256 * 1024 * 1024;
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;
/// Jobs copied per hold of the state lock while snapshotting: small enough that writers wait
/// at most a few milliseconds.
const SNAPSHOT_CHUNK_JOBS: usize = 2_048;
/// A chunk also ends once it holds this many bytes (jobs with many steps are large).
const SNAPSHOT_CHUNK_BYTES: usize = 4 * 1024 * 1024;
/// How often the background thread checks whether a snapshot is due.
const SNAPSHOT_CHECK_MS: u64 = 500;

impl EmbeddedConfig {
    pub fn new(dir: impl Into<PathBuf>) -> EmbeddedConfig {
        EmbeddedConfig {
            dir: dir.into(),
            durability: Durability::Always,
            memory_budget_bytes: memory_budget_default(),
            snapshot_log_bytes: SNAPSHOT_LOG_BYTES_DEFAULT,
            segment_bytes_max: SEGMENT_BYTES_DEFAULT,
            idempotency_window_ms: dray_core::Limits::IDEMPOTENCY_WINDOW_MS_DEFAULT,
            seed: None,
        }
    }
}

fn memory_budget_default() -> u64 {
    let total_kib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    });
    total_kib.map_or(4 << 30, |kib| kib * 1024 / 2)
}

fn seed_default() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::process::id())
}

/// Why a store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// The data is damaged somewhere other than a torn tail: refuse to guess.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Wal(#[from] wal::WalError),
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> OpenError {
    let context = context.into();
    move |source| OpenError::Io { context, source }
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub locked: Mutex<Locked>,
    pub fs: Arc<dyn Fs>,
    pub config: EmbeddedConfig,
    snapshots: Mutex<SnapshotProgress>,
    /// Held by a snapshot for its whole run and by an in-process recovery: neither may change
    /// the directory under the other.
    disk_work: Mutex<()>,
    /// In-process recovery after a recoverable log failure; `try_lock`ed, so one attempt runs at
    /// a time and everyone else is refused at once.
    pub(crate) recovering: Mutex<Recovery>,
    stop: (Mutex<bool>, Condvar),
    snapshotter: Mutex<Option<JoinHandle<()>>>,
    _dir_lock: Box<dyn std::any::Any + Send + Sync>,
    /// Checks payloads against queue schemas, once the server has set it.
    pub(crate) payload_check: std::sync::OnceLock<Arc<dyn dray_store::PayloadCheck>>,
}

#[derive(Debug, Default)]
struct SnapshotProgress {
    /// Log bytes on disk since the newest snapshot when the current log started (at open, or at
    /// the last in-process recovery): a restart does not reset the count.
    log_bytes_base: u64,
    /// `log_bytes_base + Wal::bytes_appended` when the last snapshot started.
    log_bytes_at_last: u64,
    /// Snapshots written since open.
    written: u64,
}

fn snapshot_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("snapshot-{seq:020}.snap"))
}

fn snapshot_seq(name: &str) -> Option<u64> {
    name.strip_prefix("snapshot-")?.strip_suffix(".snap")?.parse().ok()
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `config.dir` on the real file system, recovering its state.
    /// Blocking: call it at start-up or from a blocking thread.
    pub fn open(config: EmbeddedConfig) -> Result<EmbeddedStore, OpenError> {
        EmbeddedStore::open_with_fs(Arc::new(OsFs), config)
    }

    /// Opens the store through a given file layer (tests use a simulated disk).
    pub fn open_with_fs(fs: Arc<dyn Fs>, config: EmbeddedConfig) -> Result<EmbeddedStore, OpenError> {
        let dir = config.dir.clone();
        fs.create_dir_all(&dir).map_err(io_err(format!("create data directory {}", dir.display())))?;
        let dir_lock = fs.lock(&dir.join("LOCK")).map_err(io_err(format!("lock data directory {}", dir.display())))?;
        // Job payloads are the users' data: owner only, whatever the umask or an older version
        // left.
        let changed = fs.restrict(&dir).map_err(io_err(format!("restrict the permissions of {}", dir.display())))?;
        for change in changed {
            tracing::warn!(change, "made the data directory private to its owner (directory 0700, files 0600)");
        }

        let mut loaded = load(fs.as_ref(), &dir, config.seed)?;
        let first_seq = loaded.report.last_seq.map_or(loaded.from_seq, |last| last + 1).max(loaded.from_seq);
        let wal = Wal::start(
            fs.clone(),
            WalConfig { dir: dir.clone(), durability: config.durability, segment_bytes_max: config.segment_bytes_max },
            first_seq,
        )?;
        epoch_next(&mut loaded.state, &wal)?;
        tracing::info!(
            dir = %dir.display(),
            jobs = loaded.state.jobs.len(),
            queues = loaded.state.queues.len(),
            log_records = loaded.report.records,
            log_bytes_since_snapshot = loaded.log_bytes,
            epoch = loaded.state.epoch,
            "embedded store open"
        );

        let inner = Arc::new(Inner {
            locked: Mutex::new(Locked { state: loaded.state, wal: Some(wal), scratch: Vec::new() }),
            fs,
            config,
            snapshots: Mutex::new(SnapshotProgress { log_bytes_base: loaded.log_bytes, ..Default::default() }),
            disk_work: Mutex::new(()),
            recovering: Mutex::new(Recovery::default()),
            stop: (Mutex::new(false), Condvar::new()),
            snapshotter: Mutex::new(None),
            _dir_lock: dir_lock,
            payload_check: std::sync::OnceLock::new(),
        });
        let weak = Arc::downgrade(&inner);
        let handle = std::thread::Builder::new()
            .name("dray-snapshot".into())
            .spawn(move || snapshot_loop(weak))
            .map_err(io_err("start the snapshot thread"))?;
        *inner.snapshotter.lock().expect("fresh mutex") = Some(handle);
        Ok(EmbeddedStore { inner })
    }

    /// Writes a snapshot now and deletes the log segments it covers. Blocking.
    pub fn snapshot(&self) -> Result<(), OpenError> {
        write_snapshot(&self.inner)
    }

    /// Snapshots written since this store was opened.
    pub fn snapshots_written(&self) -> u64 {
        self.inner.snapshots.lock().map(|s| s.written).unwrap_or(0)
    }

    /// Bytes of log on disk since the newest snapshot: what was found at open (or at the last
    /// in-process recovery) plus what was appended since, minus what a snapshot since covered.
    pub fn log_bytes_since_snapshot(&self) -> u64 {
        log_bytes_since_snapshot(&self.inner)
    }

    /// Writes a snapshot if the log since the last one (as found on disk, across restarts) has
    /// reached the trigger: `snapshot_log_bytes`, or the bytes of job data held if that is more.
    /// What the background thread does every half second. Returns whether it wrote one.
    /// Blocking.
    pub fn snapshot_if_due(&self) -> Result<bool, OpenError> {
        snapshot_if_due(&self.inner)
    }

    /// Stops background work, writes a snapshot if worthwhile (the log since the last one is at
    /// least a quarter of the snapshot trigger, so the next start replays less and the log does
    /// not grow across restarts), makes everything logged durable and releases the data
    /// directory. Blocking. A failed snapshot is logged and does not fail the close: the log
    /// holds everything.
    pub fn close(self) -> Result<(), OpenError> {
        stop_snapshotter(&self.inner);
        let healthy = matches!(self.health(), crate::Health::Ok);
        if healthy && self.log_bytes_since_snapshot() >= snapshot_threshold(&self.inner) / 4 {
            match write_snapshot(&self.inner) {
                Ok(()) => tracing::info!("wrote a snapshot at close"),
                Err(e) => tracing::warn!(error = %e, "the snapshot at close failed; the log holds everything"),
            }
        }
        let wal = self.inner.locked.lock().ok().and_then(|mut g| g.wal.take());
        match wal.map(Wal::close) {
            // Stopped because a resource ran out: the disk holds exactly what was acknowledged,
            // so the close loses nothing and is not a failure.
            Some(Err(e)) if e.is_recoverable() => {
                tracing::warn!(error = %e, "closed a store that was waiting for a resource; nothing acknowledged is lost");
                Ok(())
            }
            Some(result) => Ok(result?),
            None => Ok(()),
        }
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        stop_snapshotter(&self.inner);
    }
}

fn stop_snapshotter(inner: &Inner) {
    let (flag, cv) = &inner.stop;
    if let Ok(mut stop) = flag.lock() {
        *stop = true;
        cv.notify_all();
    }
    let handle = inner.snapshotter.lock().ok().and_then(|mut h| h.take());
    if let Some(handle) = handle
        && handle.thread().id() != std::thread::current().id()
    {
        let _ = handle.join();
    }
}

fn log_bytes_since_snapshot(inner: &Inner) -> u64 {
    let appended = inner.locked.lock().ok().and_then(|g| g.wal.as_ref().map(Wal::bytes_appended));
    let progress = inner.snapshots.lock().map(|s| (s.log_bytes_base, s.log_bytes_at_last)).ok();
    match (appended, progress) {
        (Some(appended), Some((base, at_last))) => (base + appended).saturating_sub(at_last),
        _ => 0,
    }
}

/// The log bytes since the last snapshot that trigger the next one. At least as much log as the
/// state it would replace: a snapshot copies the whole state, so a fixed threshold makes a large
/// state cost a full copy every few hundred MiB of log (measured: a sixth of the CPU under
/// churn). Recovery then replays at most about one state's worth of log after the snapshot.
fn snapshot_threshold(inner: &Inner) -> u64 {
    let bytes_used = inner.locked.lock().map(|g| g.state.bytes_used).unwrap_or(0);
    inner.config.snapshot_log_bytes.max(bytes_used)
}

fn snapshot_if_due(inner: &Inner) -> Result<bool, OpenError> {
    if log_bytes_since_snapshot(inner) < snapshot_threshold(inner) {
        return Ok(false);
    }
    write_snapshot(inner)?;
    Ok(true)
}

fn snapshot_loop(weak: Weak<Inner>) {
    loop {
        let Some(inner) = weak.upgrade() else { return };
        {
            let (flag, cv) = &inner.stop;
            let Ok(stop) = flag.lock() else { return };
            // `_while` checks the flag before waiting: a stop signalled before this thread got
            // here is not missed (which made every close wait out a whole check interval).
            let wait = cv.wait_timeout_while(stop, Duration::from_millis(SNAPSHOT_CHECK_MS), |stop| !*stop);
            let Ok((stop, _)) = wait else { return };
            if *stop {
                return;
            }
        }
        let failure = {
            let Ok(g) = inner.locked.lock() else { return };
            let Some(wal) = &g.wal else { return };
            wal.failure()
        };
        match failure {
            // Stopped for good: only a restart helps.
            Some(e) if !e.is_recoverable() => return,
            // A resource ran out: try to come back on our own, so readiness recovers without
            // waiting for a request (a load balancer sends none to an unready node).
            Some(_) => {
                let _ = recover(&inner);
                continue;
            }
            None => {}
        }
        if let Err(e) = snapshot_if_due(&inner) {
            tracing::warn!(error = %e, "snapshot failed; the log keeps growing until one succeeds");
        }
    }
}

fn write_snapshot(inner: &Inner) -> Result<(), OpenError> {
    let dir = &inner.config.dir;
    let fs = inner.fs.as_ref();
    // One at a time, and never while an in-process recovery reads the directory.
    let _disk = inner.disk_work.lock().map_err(|_| OpenError::Corrupt("the snapshot lock is poisoned".into()))?;
    let lock = || inner.locked.lock().map_err(|_| OpenError::Corrupt("the state lock is poisoned".into()));

    // Start point: a fresh log segment. Everything logged from here on is replayed over the copy.
    let (seq, mut buf, queues) = {
        let g = lock()?;
        let wal = g.wal.as_ref().ok_or_else(|| OpenError::Corrupt("the store is closed".into()))?;
        if let Ok(mut s) = inner.snapshots.lock() {
            s.log_bytes_at_last = s.log_bytes_base + wal.bytes_appended();
        }
        let seq = wal.rotate()?;
        let mut buf = Vec::with_capacity(1 << 20);
        let state = &g.state;
        wal::frame_into(&mut buf, |b| codec::encode_snapshot_header(b, seq, state.epoch, state.next_job_id));
        for q in state.queues.values() {
            wal::frame_into(&mut buf, |b| codec::encode_queue_upsert(b, &q.config));
            if let Some(breaker) = &q.breaker {
                wal::frame_into(&mut buf, |b| codec::encode_breaker_update(b, &q.config.name, breaker));
            }
            if let Some(until) = q.backoff_until {
                wal::frame_into(&mut buf, |b| codec::encode_queue_backoff(b, &q.config.name, until));
            }
        }
        // Tokens are few (bounded by `dray_store::TOKENS_MAX`): copied in the same hold.
        for token in state.tokens.values() {
            wal::frame_into(&mut buf, |b| codec::encode_token_upsert(b, token));
        }
        // Schedules too (bounded by `Limits::SCHEDULES_MAX`).
        for schedule in state.schedules.values() {
            wal::frame_into(&mut buf, |b| codec::encode_schedule_upsert(b, schedule));
        }
        // And locks (bounded by `Limits::LOCKS_MAX`).
        for lock in state.locks.values() {
            wal::frame_into(&mut buf, |b| codec::encode_lock_upsert(b, lock));
        }
        (seq, buf, state.queues.len() as u64)
    };
    let tmp = dir.join(format!("snapshot-{seq:020}.tmp"));
    // A snapshot that failed leaves no file: on a full disk its partial copy would hold on to
    // the very space the store needs to come back.
    let path = snapshot_path(dir, seq);
    let published = (|| -> Result<u64, OpenError> {
        let mut file = fs.create(&tmp).map_err(io_err(format!("create {}", tmp.display())))?;
        let mut jobs = 0u64;
        let mut cursor = 0u64;
        loop {
            let done = {
                let g = lock()?;
                let mut taken = 0;
                let mut left = g.state.jobs.range(JobId(cursor)..);
                let done = loop {
                    if taken == SNAPSHOT_CHUNK_JOBS || buf.len() >= SNAPSHOT_CHUNK_BYTES {
                        break false;
                    }
                    let Some((id, job)) = left.next() else { break true };
                    wal::frame_into(&mut buf, |b| codec::encode_job_insert(b, job));
                    // The job's steps follow its record, in recording order.
                    for step in job.steps.iter() {
                        wal::frame_into(&mut buf, |b| codec::encode_step_copy(b, *id, step));
                    }
                    cursor = id.0 + 1;
                    taken += 1;
                };
                jobs += taken as u64;
                done
            };
            if done {
                wal::frame_into(&mut buf, |b| codec::encode_snapshot_end(b, jobs, queues));
            }
            file.write_all(&buf).map_err(io_err(format!("write {}", tmp.display())))?;
            buf.clear();
            if done {
                break;
            }
        }
        file.sync().map_err(io_err(format!("fsync {}", tmp.display())))?;
        drop(file);

        // The copy may hold changes whose log records are not yet durable: wait for them before
        // publishing, or a crash could leave a snapshot ahead of what was acknowledged as failed.
        let commit = lock()?.wal.as_ref().map(|w| w.commit());
        if let Some(commit) = commit {
            commit.wait()?;
        }
        fs.rename(&tmp, &path).map_err(io_err(format!("rename {} to {}", tmp.display(), path.display())))?;
        Ok(jobs)
    })();
    let jobs = match published {
        Ok(jobs) => jobs,
        Err(e) => {
            let _ = fs.remove(&tmp);
            return Err(e);
        }
    };
    fs.sync_dir(dir).map_err(io_err(format!("fsync directory {}", dir.display())))?;

    // Now older snapshots and the segments before `seq` are never needed again.
    let names = fs.list(dir).map_err(io_err(format!("list {}", dir.display())))?;
    for old in names.iter().filter_map(|n| snapshot_seq(n)).filter(|&s| s < seq) {
        let p = snapshot_path(dir, old);
        fs.remove(&p).map_err(io_err(format!("remove {}", p.display())))?;
    }
    {
        let g = lock()?;
        if let Some(wal) = &g.wal {
            wal.remove_segments_before(seq)?;
        }
    }
    if let Ok(mut s) = inner.snapshots.lock() {
        s.written += 1;
    }
    tracing::debug!(seq, jobs, "snapshot written");
    Ok(())
}

fn load_snapshot(fs: &dyn Fs, path: &Path, seq: u64, state: &mut State, names: &mut Names) -> Result<(), OpenError> {
    let reader = fs.open_read(path).map_err(io_err(format!("open {}", path.display())))?;
    let reader = BufReader::with_capacity(4 << 20, reader);
    let mut header_seen = false;
    let mut end: Option<(u64, u64)> = None;
    let mut jobs = 0u64;
    let mut queues = 0u64;
    let outcome = wal::read_frames(reader, |payload| {
        if end.is_some() {
            return Err("data after the end frame".into());
        }
        match codec::decode(payload, names).map_err(|e| e.to_string())? {
            Record::SnapshotHeader { format, seq: s, epoch, next_job_id } => {
                if header_seen || format != codec::SNAPSHOT_FORMAT || s != seq {
                    return Err(format!("bad header (format {format}, seq {s})"));
                }
                header_seen = true;
                state.epoch_start(epoch);
                state.next_job_id = state.next_job_id.max(next_job_id);
            }
            _ if !header_seen => return Err("no header frame".into()),
            Record::QueueUpsert(config) => {
                queues += 1;
                state.queue_upsert(config);
            }
            Record::JobInsert(job) => {
                jobs += 1;
                state.job_insert(*job);
            }
            Record::StepCopy { id, step } => state.job_step_copy(id, *step).map_err(|e| e.to_string())?,
            Record::TokenUpsert(token) => {
                state.tokens.insert(token.id.clone(), *token);
            }
            Record::ScheduleUpsert(schedule) => {
                state.schedules.insert(schedule.spec.name.clone(), *schedule);
            }
            Record::LockUpsert(lock) => {
                state.locks.insert(lock.name.clone(), *lock);
            }
            Record::BreakerUpdate { queue, breaker } => state.breaker_set(&queue, *breaker),
            Record::QueueBackoff { queue, until } => {
                state.backoff_set(&queue, until);
            }
            Record::SnapshotEnd { jobs, queues } => end = Some((jobs, queues)),
            other => return Err(format!("unexpected frame in a snapshot: {other:?}")),
        }
        Ok(())
    })
    .map_err(|e| OpenError::Corrupt(format!("{}: {e}", path.display())))?;
    if !outcome.is_clean() {
        return Err(OpenError::Corrupt(format!("{}: {outcome:?}", path.display())));
    }
    match end {
        Some(counts) if counts == (jobs, queues) => Ok(()),
        Some(counts) => Err(OpenError::Corrupt(format!(
            "{}: the end frame counts {counts:?} (jobs, queues) but the file holds ({jobs}, {queues})",
            path.display()
        ))),
        None => Err(OpenError::Corrupt(format!("{}: no end frame; the snapshot is incomplete", path.display()))),
    }
}

/// What `load` rebuilt from the data directory.
struct Loaded {
    state: State,
    report: wal::ReplayReport,
    /// The segment the replay started at (the newest snapshot's, or 1).
    from_seq: u64,
    /// Bytes of the segments from `from_seq` on, after any torn tail was cut.
    log_bytes: u64,
}

/// Rebuilds the state from the newest snapshot and the log after it (cutting a torn tail).
/// Removes snapshots whose writing was cut off. Blocking; never with a `Wal` writing records.
fn load(fs: &dyn Fs, dir: &Path, seed: Option<u64>) -> Result<Loaded, OpenError> {
    let names_in_dir = fs.list(dir).map_err(io_err(format!("list {}", dir.display())))?;
    for name in names_in_dir.iter().filter(|n| n.ends_with(".tmp")) {
        // A snapshot whose writing was cut off; never published, so never needed.
        let _ = fs.remove(&dir.join(name));
    }
    let mut names = Names::default();
    // A fixed seed (tests replaying a run) fixes the lease ids too; otherwise they come from the
    // OS CSPRNG.
    let lease_ids = seed.map_or_else(dray_store::LeaseIds::default, dray_store::LeaseIds::seeded);
    let mut state = State::new(seed.unwrap_or_else(seed_default), lease_ids);
    let newest = names_in_dir.iter().filter_map(|n| snapshot_seq(n)).max();
    let from_seq = match newest {
        Some(seq) => {
            load_snapshot(fs, &snapshot_path(dir, seq), seq, &mut state, &mut names)?;
            seq
        }
        None => {
            let segments = wal::list_segments(fs, dir).map_err(io_err("list log segments"))?;
            match segments.first() {
                None | Some(1) => 1,
                Some(first) => {
                    return Err(OpenError::Corrupt(format!(
                        "{}: the log starts at segment {first} but no snapshot covers the segments before it",
                        dir.display()
                    )));
                }
            }
        }
    };
    let report = wal::replay(fs, dir, from_seq, |payload| {
        codec::decode_frame(payload, &mut names, |record| state.replay(record).map_err(|e| e.to_string()))
    })
    .map_err(|e| match e {
        // Out of file descriptors while reading is not damage.
        wal::ReplayError::Io { context, source } => OpenError::Io { context, source },
        other => OpenError::Corrupt(other.to_string()),
    })?;
    if let Some(torn) = &report.truncated {
        tracing::warn!(
            ?torn,
            "truncated a torn tail of the write-ahead log (a write cut off by a crash; it was never acknowledged)"
        );
    }
    let mut log_bytes = 0;
    for seq in wal::list_segments(fs, dir).map_err(io_err("list log segments"))?.into_iter().filter(|&s| s >= from_seq)
    {
        let path = wal::segment_path(dir, seq);
        log_bytes += fs.file_len(&path).map_err(io_err(format!("read the size of {}", path.display())))?;
    }
    Ok(Loaded { state, report, from_seq, log_bytes })
}

/// Starts a new epoch and logs it durably before serving: every fencing token from now on is
/// above every earlier one, whatever a relaxed durability policy or a refused write lost.
fn epoch_next(state: &mut State, wal: &Wal) -> Result<(), wal::WalError> {
    let epoch = state.epoch + 1;
    state.epoch_start(epoch);
    state.random_mix(epoch);
    wal.append(|buf| codec::push_record(buf, |b| codec::encode_epoch(b, epoch)))?;
    wal.commit().wait()
}

// ---------------------------------------------------------------------------------------------
// In-process recovery

/// First pause after a failed recovery attempt; doubled after each failure up to
/// [`RECOVERY_PAUSE_MAX`]. A failed attempt costs little when the resource is still out (the
/// first thing it does is create the new segment), but one that gets further re-reads the data.
const RECOVERY_PAUSE_FIRST: Duration = Duration::from_millis(20);
const RECOVERY_PAUSE_MAX: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
pub(crate) struct Recovery {
    /// Why the last attempt failed, and whether that failure is for good.
    pub failure: Option<(String, bool)>,
    /// No new attempt before this.
    not_before: Option<Instant>,
    pause: Duration,
    /// In-process recoveries that succeeded since open.
    pub recovered: u64,
}

fn unavailable(context: String) -> Error {
    Error::Unavailable { context, source: None }
}

/// After the log stopped recoverably (a resource ran out; the disk holds exactly what was
/// acknowledged): starts a new log segment, rebuilds the state from the disk alone (the newest
/// snapshot plus the log, as a restart would), logs a new epoch and swaps state and log in.
/// Changes that were applied in memory but refused are gone with the old state. Blocking, and as
/// slow as a start-up for a large state; everyone else is refused meanwhile, never kept waiting.
/// `Ok` when the store accepts work again (also when someone else already recovered it).
pub(crate) fn recover(inner: &Inner) -> Result<(), Error> {
    let Ok(mut recovery) = inner.recovering.try_lock() else {
        return Err(unavailable("the store is recovering from a storage failure".into()));
    };
    let stopped = {
        let g = inner.locked.lock().map_err(|_| unavailable("the state lock is poisoned".into()))?;
        match g.wal.as_ref() {
            None => return Err(unavailable("the store is closed".into())),
            Some(wal) => wal.failure(),
        }
    };
    let Some(stopped) = stopped else { return Ok(()) };
    if !stopped.is_recoverable() {
        return Err(Error::unavailable(
            "the write-ahead log failed earlier; the store accepts nothing until restarted",
            stopped,
        ));
    }
    if let Some((why, true)) = &recovery.failure {
        return Err(unavailable(format!("recovery failed for good; the store accepts nothing until restarted: {why}")));
    }
    if recovery.not_before.is_some_and(|t| Instant::now() < t) {
        let why = recovery.failure.as_ref().map_or_else(|| stopped.to_string(), |(why, _)| why.clone());
        return Err(unavailable(format!("the store is waiting for a resource it ran out of: {why}")));
    }
    let _disk = inner.disk_work.lock().map_err(|_| unavailable("the snapshot lock is poisoned".into()))?;
    match rebuild(inner) {
        Ok((state, wal, log_bytes)) => {
            let old = {
                let mut g = inner.locked.lock().map_err(|_| unavailable("the state lock is poisoned".into()))?;
                g.state = state;
                g.wal.replace(wal)
            };
            // The old log's writer has stopped; dropping it only joins the thread.
            drop(old);
            if let Ok(mut s) = inner.snapshots.lock() {
                *s = SnapshotProgress { log_bytes_base: log_bytes, log_bytes_at_last: 0, written: s.written };
            }
            recovery.failure = None;
            recovery.not_before = None;
            recovery.pause = Duration::ZERO;
            recovery.recovered += 1;
            tracing::warn!(
                stopped_by = %stopped,
                "the embedded store recovered in-process from a storage failure: state rebuilt from the disk, \
                 accepting work again"
            );
            Ok(())
        }
        Err((why, permanent)) => {
            recovery.pause = (recovery.pause * 2).clamp(RECOVERY_PAUSE_FIRST, RECOVERY_PAUSE_MAX);
            recovery.not_before = Some(Instant::now() + recovery.pause);
            if permanent {
                tracing::error!(error = %why, "in-process recovery failed for good; restart the store");
            } else {
                tracing::warn!(error = %why, "in-process recovery failed; retrying once the resource is back");
            }
            recovery.failure = Some((why.clone(), permanent));
            Err(unavailable(format!("the store could not recover from a storage failure yet: {why}")))
        }
    }
}

/// The new log and state for [`recover`], or why not and whether that is for good.
fn rebuild(inner: &Inner) -> Result<(State, Wal, u64), (String, bool)> {
    let fs = &inner.fs;
    let dir = &inner.config.dir;
    let config = &inner.config;
    let segments = wal::list_segments(fs.as_ref(), dir)
        .map_err(|e| (format!("listing {}: {e}", dir.display()), !crate::fs::is_exhaustion(&e)))?;
    // First what most likely still fails (a new file, a header written and fsynced), so an
    // attempt while the resource is still out costs next to nothing. The segment holds only a
    // header while the replay below reads the directory: no record goes in before the swap.
    let seq = segments.last().map_or(1, |last| last + 1);
    let wal = Wal::start(
        fs.clone(),
        WalConfig { dir: dir.clone(), durability: config.durability, segment_bytes_max: config.segment_bytes_max },
        seq,
    )
    .map_err(|e| (e.to_string(), !e.is_recoverable()))?;
    let loaded = load(fs.as_ref(), dir, config.seed)
        .map_err(|e| {
            let permanent = match &e {
                OpenError::Io { source, .. } => !crate::fs::is_exhaustion(source),
                _ => true,
            };
            (e.to_string(), permanent)
        })
        .and_then(|mut loaded| {
            if loaded.report.last_seq != Some(seq) {
                return Err((format!("recovery expected the log to end at segment {seq}: {:?}", loaded.report), true));
            }
            epoch_next(&mut loaded.state, &wal).map_err(|e| (e.to_string(), !e.is_recoverable()))?;
            Ok(loaded)
        });
    match loaded {
        Ok(loaded) => Ok((loaded.state, wal, loaded.log_bytes)),
        Err(failed) => {
            // The new segment holds at most its header (a failed epoch record was cut back off):
            // leave none behind, or every failed attempt would add one. Unsynced on purpose: if a
            // crash brings it back, replay reads an empty segment.
            drop(wal);
            let _ = fs.remove(&wal::segment_path(dir, seq));
            Err(failed)
        }
    }
}
