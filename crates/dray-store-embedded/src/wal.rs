//! The write-ahead log: framed records in numbered segment files, written by one thread that
//! gathers concurrent appends into one write and one fsync (group commit), and replayed at start-up.
//!
//! This module owns the on-disk format of segments and frames, the writer thread, the durability
//! policies, and torn-tail versus corruption decisions during replay. It never interprets a
//! payload (the caller encodes and decodes records), never decides when to snapshot, and never
//! retries a failed write or fsync: after one, the log fails and says so.
//!
//! Two kinds of failure. A failed fsync (or any error that leaves doubt about what is on disk)
//! fails the log for good: the page cache can no longer be trusted. A resource running out where
//! what is on disk is beyond doubt (`EMFILE`/`ENFILE` opening a segment or the directory,
//! `ENOSPC`/`EDQUOT` writing) fails the log *recoverably*: the writer cuts the round that failed
//! back off the segment (to the last point every record before it was acknowledged, through the
//! open handle, verified by the file's size afterwards) and removes a segment whose creation it
//! left half done, so the directory holds exactly the acknowledged records. The log still stops
//! (its owner rebuilds from the disk and starts a new log; see `open.rs`), but
//! [`WalError::is_recoverable`] says nothing acknowledged is in doubt. If the cut fails, the
//! failure is for good.
//!
//! Format. A segment `wal-{seq:020}.log` starts with a 16-byte header: the magic `DRAYWAL1` and
//! the segment's seq (u64 LE). Then frames: payload length (u32 LE), CRC32C of the payload
//! (u32 LE), payload. A payload is 1 to [`FRAME_BYTES_MAX`] bytes: an empty frame is refused so a
//! zero-filled region (what a file system may leave after a crash) is never read as records.
//!
//! Ordering on disk. A segment is fsynced before the next one is created, and a new segment's
//! header is fsynced and its directory entry synced before any record goes into it. So only the
//! last segment can end in a torn write, and a bad frame anywhere else is corruption.
//!
//! Metrics. The writer reports through the `metrics` facade (whatever recorder the process
//! installed; none in a library test): `dray_store_append_seconds` (one round's writes),
//! `dray_store_fsync_seconds` (each fsync of a segment file) and
//! `dray_store_group_commit_operations` (frames made durable by one fsync: a store operation logs
//! one frame, or several for a very large maintenance pass).

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::fs::{Fs, FsFile};

/// The first 8 bytes of every segment.
pub const SEGMENT_MAGIC: [u8; 8] = *b"DRAYWAL1";
/// Magic plus seq.
pub const SEGMENT_HEADER_BYTES: u64 = 16;
/// Length plus CRC32C, before each payload.
pub const FRAME_HEADER_BYTES: usize = 8;
/// The largest payload a frame may carry. A length above it is read as a bad frame, so a garbled
/// length can never make replay allocate without bound.
pub const FRAME_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Default for [`WalConfig::segment_bytes_max`].
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;

/// Appended bytes not yet handed to the writer, past which `append` waits for the writer: the
/// bound that keeps producers from outrunning the disk without limit. At least one whole frame.
const PENDING_BYTES_MAX: usize = 2 * FRAME_BYTES_MAX;
/// Pending bytes past which an append wakes the writer even without a commit, so one huge batch
/// is written while it is still being built rather than all at once at the commit.
const WRITER_WAKE_BYTES: usize = 4 * 1024 * 1024;
/// The writer keeps its batch buffers' capacity between batches (no allocation per commit), but
/// gives back anything beyond this after an unusually large batch.
const BATCH_CAPACITY_KEEP_BYTES: usize = 16 * 1024 * 1024;
/// Metric names, as in the server's catalogue (docs/operations.md).
const APPEND_SECONDS: &str = "dray_store_append_seconds";
const FSYNC_SECONDS: &str = "dray_store_fsync_seconds";
const GROUP_COMMIT_OPERATIONS: &str = "dray_store_group_commit_operations";
/// Read buffer for replay: large sequential reads, without reading a multi-GB segment whole.
const REPLAY_BUFFER_BYTES: usize = 4 * 1024 * 1024;
/// Payloads up to this size are read into a pre-sized buffer; longer ones grow as bytes arrive,
/// so a garbled length at a torn tail costs only what is really there.
const PAYLOAD_PRESIZE_BYTES_MAX: usize = 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// Configuration and errors

/// When a commit resolves, and when the log fsyncs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Durability {
    /// A commit resolves once its records are written and fsynced. Nothing acknowledged is lost.
    #[default]
    Always,
    /// A commit resolves once its records are written to the OS; the log fsyncs at most every
    /// `ms`, and within `ms` of any unsynced write. A power loss (or a failed fsync, which fails
    /// the log) may lose the last `ms` of acknowledged changes; a process crash loses nothing
    /// acknowledged.
    Interval { ms: u64 },
    /// A commit resolves once written to the OS; fsync only at rotation and close. A power loss
    /// or a failed fsync may lose any acknowledged change since the last of those.
    Never,
}

#[derive(Clone, Debug)]
pub struct WalConfig {
    /// The data directory; segments live directly in it.
    pub dir: PathBuf,
    pub durability: Durability,
    /// A segment that reaches this size (header included) ends after the record that took it
    /// there, and the next record starts a new segment.
    pub segment_bytes_max: u64,
}

impl WalConfig {
    /// `Durability::Always`, [`SEGMENT_BYTES_DEFAULT`].
    pub fn new(dir: impl Into<PathBuf>) -> WalConfig {
        WalConfig { dir: dir.into(), durability: Durability::Always, segment_bytes_max: SEGMENT_BYTES_DEFAULT }
    }
}

/// Why the log refused or failed. Cheap to clone: once the log fails, every later call returns
/// the same error.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{context}: {source}")]
pub struct WalError {
    context: String,
    #[source]
    source: Arc<io::Error>,
    recoverable: bool,
}

impl WalError {
    fn new(context: impl Into<String>, source: io::Error) -> WalError {
        WalError { context: context.into(), source: Arc::new(source), recoverable: false }
    }

    /// True when a resource ran out and the disk holds exactly what was acknowledged: a new log
    /// may be started once the resource is back (see the module docs). False for a failed fsync
    /// and anything else that leaves doubt.
    pub fn is_recoverable(&self) -> bool {
        self.recoverable
    }

    fn recoverable(mut self, recoverable: bool) -> WalError {
        self.recoverable = recoverable;
        self
    }

    /// What the log was doing, naming the file.
    pub fn context(&self) -> &str {
        &self.context
    }

    pub fn io_error(&self) -> &io::Error {
        &self.source
    }

    pub fn kind(&self) -> io::ErrorKind {
        self.source.kind()
    }
}

fn at(context: &str, path: &Path) -> impl FnOnce(io::Error) -> WalError {
    let context = format!("{context} {}", path.display());
    move |e| WalError::new(context, e)
}

/// Like [`at`], for a call that changes nothing on disk when a resource runs out (creating a
/// file, writing to it): the error may be recoverable once what the call left is cut off.
fn at_exhaustible(context: &str, path: &Path) -> impl FnOnce(io::Error) -> WalError {
    let context = format!("{context} {}", path.display());
    move |e| {
        let recoverable = crate::fs::is_exhaustion(&e);
        WalError::new(context, e).recoverable(recoverable)
    }
}

/// Like [`at`], for a directory sync: out of file descriptors it never got to the fsync (it could
/// not open the directory), so that is recoverable; any other error came from the fsync.
fn at_dir_sync(dir: &Path) -> impl FnOnce(io::Error) -> WalError {
    let context = format!("syncing directory {}", dir.display());
    move |e| {
        let recoverable = crate::fs::is_out_of_files(&e);
        WalError::new(context, e).recoverable(recoverable)
    }
}

fn writer_gone() -> WalError {
    WalError::new("waiting for the write-ahead log", io::Error::other("the writer thread stopped without an answer"))
}

// ---------------------------------------------------------------------------------------------
// Paths and framing

/// `dir/wal-{seq:020}.log`.
pub fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("wal-{seq:020}.log"))
}

fn segment_seq(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("wal-")?.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The seqs of the segments in `dir`, ascending. Other files are ignored.
pub fn list_segments(fs: &dyn Fs, dir: &Path) -> io::Result<Vec<u64>> {
    let mut seqs: Vec<u64> = fs.list(dir)?.iter().filter_map(|n| segment_seq(n)).collect();
    seqs.sort_unstable();
    Ok(seqs)
}

fn segment_header(seq: u64) -> [u8; SEGMENT_HEADER_BYTES as usize] {
    let mut header = [0; SEGMENT_HEADER_BYTES as usize];
    header[..8].copy_from_slice(&SEGMENT_MAGIC);
    header[8..].copy_from_slice(&seq.to_le_bytes());
    header
}

/// Why a payload could not be framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameEncodeError {
    #[error("a record's payload is empty")]
    Empty,
    #[error("a record's payload is {len} bytes, over the limit of {FRAME_BYTES_MAX}")]
    TooLarge { len: usize },
    #[error("a record encoder removed bytes it did not write")]
    Shrunk,
}

/// Appends one frame to `buf`: reserves the frame header, lets `encode` append the payload, then
/// fills in length and CRC. On error (or if `encode` panics) `buf` is left as it was. Returns the
/// payload's length.
pub fn try_frame_into(buf: &mut Vec<u8>, encode: impl FnOnce(&mut Vec<u8>)) -> Result<usize, FrameEncodeError> {
    /// Cuts a half-built frame off again unless disarmed, so neither an error nor a panic in
    /// `encode` leaves garbage in a buffer the writer will put on disk.
    struct Rollback<'a> {
        buf: &'a mut Vec<u8>,
        start: usize,
        armed: bool,
    }
    impl Drop for Rollback<'_> {
        fn drop(&mut self) {
            if self.armed {
                self.buf.truncate(self.start);
            }
        }
    }

    let start = buf.len();
    let mut frame = Rollback { buf, start, armed: true };
    frame.buf.extend_from_slice(&[0; FRAME_HEADER_BYTES]);
    encode(&mut *frame.buf);
    let payload_start = start + FRAME_HEADER_BYTES;
    let len = frame.buf.len().checked_sub(payload_start).ok_or(FrameEncodeError::Shrunk)?;
    if len == 0 {
        return Err(FrameEncodeError::Empty);
    }
    if len > FRAME_BYTES_MAX {
        return Err(FrameEncodeError::TooLarge { len });
    }
    let crc = crc32c::crc32c(&frame.buf[payload_start..]);
    // Fits: len <= FRAME_BYTES_MAX < u32::MAX.
    frame.buf[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    frame.buf[start + 4..payload_start].copy_from_slice(&crc.to_le_bytes());
    frame.armed = false;
    Ok(len)
}

/// Appends one frame to `buf`; see [`try_frame_into`].
///
/// # Panics
/// If the payload is empty or longer than [`FRAME_BYTES_MAX`]: record sizes are bounded by the
/// caller's own limits long before this one, so either is a bug. `buf` is left as it was.
pub fn frame_into(buf: &mut Vec<u8>, encode: impl FnOnce(&mut Vec<u8>)) {
    if let Err(e) = try_frame_into(buf, encode) {
        panic!("cannot frame a record: {e}");
    }
}

/// What is wrong with a frame that ends a stream of frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameProblem {
    /// The stream ended inside a frame header.
    ShortHeader {
        bytes: usize,
    },
    /// A length of zero: no frame is empty, but unwritten (zeroed) space looks like this.
    Empty,
    TooLong {
        len: u64,
    },
    /// The stream ended inside the payload.
    ShortPayload {
        len: u64,
        bytes: u64,
    },
    CrcMismatch {
        stored: u32,
        computed: u32,
    },
}

impl fmt::Display for FrameProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            FrameProblem::ShortHeader { bytes } => {
                write!(f, "the data ends {bytes} bytes into a {FRAME_HEADER_BYTES}-byte frame header")
            }
            FrameProblem::Empty => write!(f, "a frame of length 0"),
            FrameProblem::TooLong { len } => {
                write!(f, "a frame length of {len} bytes, over the limit of {FRAME_BYTES_MAX}")
            }
            FrameProblem::ShortPayload { len, bytes } => {
                write!(f, "the data ends {bytes} bytes into a {len}-byte payload")
            }
            FrameProblem::CrcMismatch { stored, computed } => {
                write!(f, "checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")
            }
        }
    }
}

/// How a stream of frames ended. Offsets count from the start of the reader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FramesEnd {
    /// The data ended exactly after a frame (or was empty).
    Clean { frames: u64, bytes: u64 },
    /// The frame starting at `offset` is bad; the `frames` before it were good. Whether that is
    /// a torn tail or corruption is the caller's call.
    Bad { frames: u64, offset: u64, problem: FrameProblem },
}

impl FramesEnd {
    pub fn is_clean(&self) -> bool {
        matches!(self, FramesEnd::Clean { .. })
    }

    /// Good frames read.
    pub fn frames(&self) -> u64 {
        match *self {
            FramesEnd::Clean { frames, .. } | FramesEnd::Bad { frames, .. } => frames,
        }
    }
}

/// Why reading frames stopped with an error (rather than at a clean or bad end).
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("reading the frame at byte {offset}: {source}")]
    Io {
        offset: u64,
        #[source]
        source: io::Error,
    },
    /// The callback refused the payload of the good frame at `offset`.
    #[error("the record at byte {offset} was refused: {message}")]
    Rejected { offset: u64, message: String },
}

/// Reads into `buf` until it is full or the data ends; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Feeds the payload of each good frame in `r` to `f`, in order, until the data ends or a frame
/// is bad. Does no buffering of its own: pass a `BufReader` (or an in-memory slice).
pub fn read_frames(mut r: impl Read, mut f: impl FnMut(&[u8]) -> Result<(), String>) -> Result<FramesEnd, FrameError> {
    let mut offset = 0u64;
    let mut frames = 0u64;
    let mut header = [0u8; FRAME_HEADER_BYTES];
    let mut payload = Vec::new();
    loop {
        let io_err = |source| FrameError::Io { offset, source };
        let got = read_full(&mut r, &mut header).map_err(io_err)?;
        if got == 0 {
            return Ok(FramesEnd::Clean { frames, bytes: offset });
        }
        let bad = |problem| Ok(FramesEnd::Bad { frames, offset, problem });
        if got < FRAME_HEADER_BYTES {
            return bad(FrameProblem::ShortHeader { bytes: got });
        }
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let stored = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len == 0 {
            return bad(FrameProblem::Empty);
        }
        if len > FRAME_BYTES_MAX {
            return bad(FrameProblem::TooLong { len: len as u64 });
        }
        payload.clear();
        let got = if len <= PAYLOAD_PRESIZE_BYTES_MAX {
            payload.resize(len, 0);
            let got = read_full(&mut r, &mut payload).map_err(io_err)?;
            payload.truncate(got);
            got
        } else {
            r.by_ref().take(len as u64).read_to_end(&mut payload).map_err(io_err)?
        };
        if got < len {
            return bad(FrameProblem::ShortPayload { len: len as u64, bytes: got as u64 });
        }
        let computed = crc32c::crc32c(&payload);
        if computed != stored {
            return bad(FrameProblem::CrcMismatch { stored, computed });
        }
        f(&payload).map_err(|message| FrameError::Rejected { offset, message })?;
        frames += 1;
        offset += (FRAME_HEADER_BYTES + len) as u64;
    }
}

// ---------------------------------------------------------------------------------------------
// Replay

/// What [`replay`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayReport {
    /// The first segment replayed, if any.
    pub first_seq: Option<u64>,
    /// The last segment replayed; a new log continues at the next seq.
    pub last_seq: Option<u64>,
    /// Records fed to the callback.
    pub records: u64,
    /// The torn tail cut off the last segment, if there was one.
    pub truncated: Option<TornTail>,
}

/// The end of the last segment, cut off because a crash interrupted its writing. Nothing in it
/// was ever acknowledged under `Durability::Always`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    pub path: PathBuf,
    /// Where the file was cut (0 when the segment was removed).
    pub offset: u64,
    pub bytes_dropped: u64,
    /// True when the segment's own header was incomplete: the segment held nothing and is gone.
    pub segment_removed: bool,
    pub reason: String,
}

/// Why replay refused to go on. Every variant names the file (or directory) and, for bad data,
/// the byte offset.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// Bad data that cannot be a torn write: in a segment before the last, or a bad header in a
    /// segment that has records after it.
    #[error("{path}: corrupt at byte {offset}: {problem}")]
    Corrupt { path: PathBuf, offset: u64, problem: String },
    #[error("write-ahead log segment {missing} is missing from {dir}, but later segments exist")]
    Gap { dir: PathBuf, missing: u64 },
    #[error("{path}: the record at byte {offset} could not be replayed: {message}")]
    Record { path: PathBuf, offset: u64, message: String },
}

fn replay_io(context: &str, path: &Path) -> impl FnOnce(io::Error) -> ReplayError {
    let context = format!("{context} {}", path.display());
    move |source| ReplayError::Io { context, source }
}

/// Feeds the payload of every record in segments with seq >= `from_seq`, in order, to `f`.
///
/// A bad frame in the last segment is a torn tail: the file is cut at the frame's start
/// ([`Fs::truncate`], durable) and reported. A last segment too short to hold its header is a
/// segment whose creation was cut off: it is removed. Any other bad frame or header is an error
/// naming the file and byte offset, as is a missing segment between `from_seq` (when above 0:
/// a snapshot says the log continues there) and the last one. With `from_seq` 0 the log starts at
/// its oldest segment. Streams through a buffer: segments of any size are fine.
///
/// A damaged frame in the middle of the last segment looks exactly like a torn write, so it is
/// cut off too, with everything after it. Under `Durability::Always` only unacknowledged records
/// can follow a torn write; a disk that damages acknowledged data in the last segment is not
/// detected here.
///
/// Never run this on a directory a [`Wal`] is writing to.
pub fn replay(
    fs: &dyn Fs,
    dir: &Path,
    from_seq: u64,
    mut f: impl FnMut(&[u8]) -> Result<(), String>,
) -> Result<ReplayReport, ReplayError> {
    let seqs: Vec<u64> = list_segments(fs, dir)
        .map_err(replay_io("listing write-ahead log segments in", dir))?
        .into_iter()
        .filter(|&s| s >= from_seq)
        .collect();
    // Check the whole sequence before reading (or cutting) anything.
    if from_seq > 0
        && let Some(&first) = seqs.first()
        && first != from_seq
    {
        return Err(ReplayError::Gap { dir: dir.to_path_buf(), missing: from_seq });
    }
    if let Some(pair) = seqs.windows(2).find(|w| w[1] != w[0] + 1) {
        return Err(ReplayError::Gap { dir: dir.to_path_buf(), missing: pair[0] + 1 });
    }

    let mut report = ReplayReport { first_seq: seqs.first().copied(), last_seq: None, records: 0, truncated: None };
    for (i, &seq) in seqs.iter().enumerate() {
        let last = i + 1 == seqs.len();
        let path = segment_path(dir, seq);
        let len = fs.file_len(&path).map_err(replay_io("reading the size of", &path))?;
        let reader = fs.open_read(&path).map_err(replay_io("opening", &path))?;
        let mut r = BufReader::with_capacity(REPLAY_BUFFER_BYTES, reader);

        let mut header = [0u8; SEGMENT_HEADER_BYTES as usize];
        let got = read_full(&mut r, &mut header).map_err(replay_io("reading", &path))?;
        if let Some(problem) = header_problem(&header[..got], seq) {
            // `Wal` fsyncs a header before it appends anything after it, so a bad header with
            // nothing after it is a creation cut short; with records after it, it is damage.
            if last && len <= SEGMENT_HEADER_BYTES {
                drop(r);
                fs.remove(&path).map_err(replay_io("removing the incomplete segment", &path))?;
                fs.sync_dir(dir).map_err(replay_io("syncing directory", dir))?;
                report.first_seq = report.first_seq.filter(|&s| s != seq);
                report.truncated =
                    Some(TornTail { path, offset: 0, bytes_dropped: len, segment_removed: true, reason: problem });
                break;
            }
            return Err(ReplayError::Corrupt { path, offset: 0, problem });
        }

        let mut records = 0u64;
        let end = read_frames(&mut r, |payload| {
            f(payload)?;
            records += 1;
            Ok(())
        });
        report.records += records;
        let end = end.map_err(|e| match e {
            FrameError::Io { offset, source } => ReplayError::Io {
                context: format!("reading {} at byte {}", path.display(), SEGMENT_HEADER_BYTES + offset),
                source,
            },
            FrameError::Rejected { offset, message } => {
                ReplayError::Record { path: path.clone(), offset: SEGMENT_HEADER_BYTES + offset, message }
            }
        })?;
        if let FramesEnd::Bad { offset, problem, .. } = end {
            let offset = SEGMENT_HEADER_BYTES + offset;
            if !last {
                return Err(ReplayError::Corrupt { path, offset, problem: problem.to_string() });
            }
            drop(r);
            fs.truncate(&path, offset).map_err(replay_io("cutting the torn tail of", &path))?;
            report.truncated = Some(TornTail {
                path,
                offset,
                bytes_dropped: len.saturating_sub(offset),
                segment_removed: false,
                reason: problem.to_string(),
            });
        }
        report.last_seq = Some(seq);
    }
    Ok(report)
}

/// What is wrong with a segment header, if anything.
fn header_problem(header: &[u8], seq: u64) -> Option<String> {
    if header.len() < SEGMENT_HEADER_BYTES as usize {
        return Some(format!("the segment header is {} of {SEGMENT_HEADER_BYTES} bytes", header.len()));
    }
    if header[..8] != SEGMENT_MAGIC {
        return Some("not a write-ahead log segment (bad magic)".into());
    }
    let mut stored = [0; 8];
    stored.copy_from_slice(&header[8..16]);
    let stored = u64::from_le_bytes(stored);
    (stored != seq).then(|| format!("the header says segment {stored} but the name says {seq}"))
}

// ---------------------------------------------------------------------------------------------
// Commits

type Reply = Result<(), WalError>;

/// The answer to [`Wal::commit`]: await it, or call [`Commit::wait`] from a thread that may block.
///
/// Cancel safety: dropping it cancels nothing. The records are written (or not) all the same;
/// only the answer is lost.
#[derive(Debug)]
#[must_use = "a commit does nothing unless waited for"]
pub struct Commit {
    state: CommitState,
}

#[derive(Debug)]
enum CommitState {
    Ready(Option<Reply>),
    Waiting(oneshot::Receiver<Reply>),
}

impl Commit {
    fn ready(reply: Reply) -> Commit {
        Commit { state: CommitState::Ready(Some(reply)) }
    }

    /// Blocks the calling thread until the commit resolves. Works with or without a tokio
    /// runtime, and never panics; on a runtime thread it blocks that thread, so prefer `.await`.
    pub fn wait(self) -> Result<(), WalError> {
        match self.state {
            CommitState::Ready(reply) => reply.unwrap_or_else(|| Err(writer_gone())),
            CommitState::Waiting(rx) => wait_reply(rx),
        }
    }
}

impl Future for Commit {
    type Output = Result<(), WalError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let reply = match &mut this.state {
            CommitState::Ready(reply) => reply.take().unwrap_or_else(|| Err(writer_gone())),
            CommitState::Waiting(rx) => match Pin::new(rx).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(reply) => reply.unwrap_or_else(|_| Err(writer_gone())),
            },
        };
        // A receiver must not be polled again after it answered.
        this.state = CommitState::Ready(None);
        Poll::Ready(reply)
    }
}

struct ThreadWaker(std::thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Blocks on a reply without tokio's `blocking_recv`, which panics on a runtime thread. Tries
/// `try_recv` first each time round: it ignores tokio's task budget, so this cannot spin forever
/// on a runtime thread whose budget is spent.
fn wait_reply(mut rx: oneshot::Receiver<Reply>) -> Reply {
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        match rx.try_recv() {
            Ok(reply) => return reply,
            Err(oneshot::error::TryRecvError::Closed) => return Err(writer_gone()),
            Err(oneshot::error::TryRecvError::Empty) => {}
        }
        match Pin::new(&mut rx).poll(&mut cx) {
            Poll::Ready(reply) => return reply.unwrap_or_else(|_| Err(writer_gone())),
            Poll::Pending => std::thread::park(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The log

/// A rotation point in the pending bytes: bytes before `at` end the current segment.
struct RotationMark {
    at: usize,
    seq: u64,
    /// `None` for a rotation the log made on its own at `segment_bytes_max`.
    done: Option<oneshot::Sender<Reply>>,
}

struct State {
    /// Framed records not yet taken by the writer.
    buf: Vec<u8>,
    rotations: Vec<RotationMark>,
    /// Commits in order of their target: the stream position that must be durable first.
    waiters: VecDeque<(u64, oneshot::Sender<Reply>)>,
    /// Frames in `buf`.
    frames: u64,
    /// Framed bytes ever appended: the stream position of the end of `buf`.
    appended: u64,
    /// Everything before this position is durable under the policy.
    acked: u64,
    /// The segment new appends go to, and its size once they are written.
    seq: u64,
    segment_bytes: u64,
    /// The segment the writer has open: never removed.
    seq_writing: u64,
    failed: Option<WalError>,
    closing: bool,
    /// The writer is parked on `Shared::writer_wake`; notify only then (a notify is a syscall).
    writer_waiting: bool,
    /// An append is parked on `Shared::drained` because `buf` is full.
    appender_waiting: bool,
}

impl State {
    /// Ends the current segment after everything appended so far; returns the next seq.
    fn rotation_mark(&mut self, done: Option<oneshot::Sender<Reply>>) -> u64 {
        self.seq += 1;
        self.segment_bytes = SEGMENT_HEADER_BYTES;
        self.rotations.push(RotationMark { at: self.buf.len(), seq: self.seq, done });
        self.seq
    }

    /// Records the log's failure and answers everyone waiting with it.
    fn fail(&mut self, error: &WalError) -> Vec<oneshot::Sender<Reply>> {
        if self.failed.is_none() {
            self.failed = Some(error.clone());
        }
        let mut senders: Vec<_> = self.waiters.drain(..).map(|(_, tx)| tx).collect();
        senders.extend(self.rotations.drain(..).filter_map(|m| m.done));
        self.buf.clear();
        self.frames = 0;
        senders
    }
}

struct Shared {
    fs: Arc<dyn Fs>,
    config: WalConfig,
    state: Mutex<State>,
    writer_wake: Condvar,
    drained: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Poisoned only by a panicking record encoder, whose half-frame `try_frame_into` already
        // removed: the state is consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wake_writer(&self, st: &mut State) {
        if st.writer_waiting {
            st.writer_waiting = false;
            self.writer_wake.notify_one();
        }
    }

    /// Fails the log from outside the writer and answers the waiters.
    fn fail(&self, error: &WalError) {
        let (senders, error) = {
            let mut st = self.lock();
            let senders = st.fail(error);
            self.wake_writer(&mut st);
            (senders, st.failed.clone().unwrap_or_else(|| error.clone()))
        };
        self.drained.notify_all();
        for tx in senders {
            let _ = tx.send(Err(error.clone()));
        }
    }
}

/// The write-ahead log. Share it by reference; appends from any thread land in call order.
pub struct Wal {
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
}

impl fmt::Debug for Wal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.shared.config.dir)
            .field("durability", &self.shared.config.durability)
            .finish_non_exhaustive()
    }
}

/// Fsyncs a segment file, timing it into `dray_store_fsync_seconds`.
fn sync_timed(file: &mut dyn FsFile) -> io::Result<()> {
    let started = Instant::now();
    let result = file.sync();
    metrics::histogram!(FSYNC_SECONDS).record(started.elapsed().as_secs_f64());
    result
}

/// Creates segment `seq` and makes it durable: header fsynced, directory entry synced. Only
/// then may records go into it (see the module docs on ordering).
/// A failure may leave a partial segment behind; see [`segment_remove_partial`].
fn segment_create(fs: &dyn Fs, dir: &Path, seq: u64) -> Result<Box<dyn FsFile>, WalError> {
    let path = segment_path(dir, seq);
    let mut file = fs.create(&path).map_err(at_exhaustible("creating write-ahead log segment", &path))?;
    file.write_all(&segment_header(seq)).map_err(at_exhaustible("writing the header of", &path))?;
    sync_timed(file.as_mut()).map_err(at("fsync of", &path))?;
    fs.sync_dir(dir).map_err(at_dir_sync(dir))?;
    Ok(file)
}

/// After `segment_create` failed recoverably: removes what it left (no file, an empty one, or
/// part of a header; never a record). The removal is not synced: a directory sync may be what
/// failed, and a segment holding at most a header is harmless if a crash brings it back (replay
/// removes or skips it). The error stays recoverable only if nothing is left.
fn segment_remove_partial(fs: &dyn Fs, dir: &Path, seq: u64, error: WalError) -> WalError {
    if !error.is_recoverable() {
        return error;
    }
    let path = segment_path(dir, seq);
    match fs.remove(&path) {
        Ok(()) => error,
        Err(e) if e.kind() == io::ErrorKind::NotFound => error,
        Err(e) => {
            tracing::error!(error = %e, path = %path.display(), "cannot remove a partly created segment");
            error.recoverable(false)
        }
    }
}

impl Wal {
    /// Creates segment `first_seq` (which must not exist), makes it durable and starts the
    /// writer thread. Blocking.
    pub fn start(fs: Arc<dyn Fs>, config: WalConfig, first_seq: u64) -> Result<Wal, WalError> {
        let path = segment_path(&config.dir, first_seq);
        match fs.file_len(&path) {
            Ok(_) => {
                return Err(WalError::new(
                    format!("starting the write-ahead log at {}", path.display()),
                    io::Error::new(io::ErrorKind::AlreadyExists, "the segment already exists"),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(at("checking", &path)(e)),
        }
        let file = segment_create(fs.as_ref(), &config.dir, first_seq)
            .map_err(|e| segment_remove_partial(fs.as_ref(), &config.dir, first_seq, e))?;
        let shared = Arc::new(Shared {
            fs,
            config,
            state: Mutex::new(State {
                buf: Vec::new(),
                rotations: Vec::new(),
                waiters: VecDeque::new(),
                frames: 0,
                appended: 0,
                acked: 0,
                seq: first_seq,
                segment_bytes: SEGMENT_HEADER_BYTES,
                seq_writing: first_seq,
                failed: None,
                closing: false,
                writer_waiting: false,
                appender_waiting: false,
            }),
            writer_wake: Condvar::new(),
            drained: Condvar::new(),
        });
        let writer = Writer {
            shared: shared.clone(),
            file,
            seq: first_seq,
            path,
            file_len: SEGMENT_HEADER_BYTES,
            clean_pos: 0,
            clean_len: SEGMENT_HEADER_BYTES,
            creating: None,
            unsynced: false,
            frames_unsynced: 0,
            last_sync: Instant::now(),
            batch: Vec::new(),
            rotations: Vec::new(),
            answered: Vec::new(),
        };
        let handle = std::thread::Builder::new()
            .name("dray-wal-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| WalError::new("starting the write-ahead log writer thread", e))?;
        Ok(Wal { shared, writer: Some(handle) })
    }

    /// Appends one framed record; `encode` writes the payload (1 to [`FRAME_BYTES_MAX`] bytes).
    /// Log order is call order, so call it under the lock that orders your changes. Fails,
    /// appending nothing, once the log has failed, or if the payload is empty or too large (which
    /// does not fail the log). Waits only if the writer is `PENDING_BYTES_MAX` (128 MiB) behind.
    pub fn append(&self, encode: impl FnOnce(&mut Vec<u8>)) -> Result<(), WalError> {
        let shared = &*self.shared;
        let mut st = shared.lock();
        loop {
            if let Some(e) = &st.failed {
                return Err(e.clone());
            }
            if st.buf.len() < PENDING_BYTES_MAX {
                break;
            }
            st.appender_waiting = true;
            shared.wake_writer(&mut st);
            st = shared.drained.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
        let start = st.buf.len();
        try_frame_into(&mut st.buf, encode).map_err(|e| {
            WalError::new(
                format!("appending a record to the write-ahead log in {}", shared.config.dir.display()),
                io::Error::new(io::ErrorKind::InvalidInput, e),
            )
        })?;
        let framed = (st.buf.len() - start) as u64;
        st.frames += 1;
        st.appended += framed;
        st.segment_bytes += framed;
        if st.segment_bytes >= shared.config.segment_bytes_max {
            st.rotation_mark(None);
        }
        if start < WRITER_WAKE_BYTES && st.buf.len() >= WRITER_WAKE_BYTES {
            shared.wake_writer(&mut st);
        }
        Ok(())
    }

    /// Resolves when everything appended before this call is durable under the policy: written
    /// and fsynced for `Always`, written to the OS for `Interval` and `Never`. Resolves with the
    /// log's error if it has failed or fails before then.
    pub fn commit(&self) -> Commit {
        let shared = &*self.shared;
        let mut st = shared.lock();
        if let Some(e) = &st.failed {
            return Commit::ready(Err(e.clone()));
        }
        if st.acked >= st.appended {
            return Commit::ready(Ok(()));
        }
        let (tx, rx) = oneshot::channel();
        let target = st.appended;
        st.waiters.push_back((target, tx));
        shared.wake_writer(&mut st);
        Commit { state: CommitState::Waiting(rx) }
    }

    /// Ends the current segment at this point in the record stream and starts segment seq+1 for
    /// every later record. Blocks until the old segment is fsynced and the new one is durable
    /// (two fsyncs and a directory sync); returns the new seq.
    pub fn rotate(&self) -> Result<u64, WalError> {
        let shared = &*self.shared;
        let (seq, rx) = {
            let mut st = shared.lock();
            if let Some(e) = &st.failed {
                return Err(e.clone());
            }
            let (tx, rx) = oneshot::channel();
            let seq = st.rotation_mark(Some(tx));
            shared.wake_writer(&mut st);
            (seq, rx)
        };
        wait_reply(rx)?;
        Ok(seq)
    }

    /// Deletes the segment files with seq below `seq` (never the one being written), then syncs
    /// the directory. Blocking. A failed directory sync fails the log, like any failed fsync.
    pub fn remove_segments_before(&self, seq: u64) -> Result<(), WalError> {
        let shared = &*self.shared;
        let limit = {
            let st = shared.lock();
            if let Some(e) = &st.failed {
                return Err(e.clone());
            }
            seq.min(st.seq_writing)
        };
        let dir = &shared.config.dir;
        let fs = shared.fs.as_ref();
        let segments = list_segments(fs, dir).map_err(at("listing write-ahead log segments in", dir))?;
        for old in segments.into_iter().filter(|&s| s < limit) {
            let path = segment_path(dir, old);
            fs.remove(&path).map_err(at("removing write-ahead log segment", &path))?;
        }
        if let Err(e) = fs.sync_dir(dir) {
            let error = at_dir_sync(dir)(e);
            // Out of file descriptors, the directory was never opened, so no fsync failed: the
            // removals become durable with the next directory sync, and the log goes on.
            if !error.is_recoverable() {
                shared.fail(&error);
            }
            return Err(error);
        }
        Ok(())
    }

    /// Framed bytes appended since start (segment headers not included).
    pub fn bytes_appended(&self) -> u64 {
        self.shared.lock().appended
    }

    /// The error that failed the log, if it has failed.
    pub fn failure(&self) -> Option<WalError> {
        self.shared.lock().failed.clone()
    }

    /// Writes and fsyncs everything appended (whatever the policy) and stops the writer.
    /// Blocking. Returns the log's failure if it failed, now or earlier.
    pub fn close(mut self) -> Result<(), WalError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), WalError> {
        let Some(handle) = self.writer.take() else {
            return Ok(());
        };
        {
            let mut st = self.shared.lock();
            st.closing = true;
            self.shared.wake_writer(&mut st);
        }
        if handle.join().is_err() {
            return Err(WalError::new(
                format!("closing the write-ahead log in {}", self.shared.config.dir.display()),
                io::Error::other("the writer thread panicked"),
            ));
        }
        match self.shared.lock().failed.clone() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Drop for Wal {
    /// Flushes and stops the writer like `close`, reporting a failure only to the log.
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::warn!(error = %e, "the write-ahead log failed before it was dropped");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The writer thread

struct Writer {
    shared: Arc<Shared>,
    file: Box<dyn FsFile>,
    seq: u64,
    path: PathBuf,
    /// Bytes the writes put into the current segment, header included.
    file_len: u64,
    /// During a round: the stream position up to which its records are durable under the policy
    /// (the round's start, or its last completed rotation), and the current segment's length
    /// at that point. What a recoverable failure cuts back to.
    clean_pos: u64,
    clean_len: u64,
    /// The segment being created while its creation has not completed.
    creating: Option<u64>,
    /// Bytes written since the last fsync.
    unsynced: bool,
    /// Frames written since the last fsync (for `dray_store_group_commit_operations`).
    frames_unsynced: u64,
    last_sync: Instant,
    /// The batch being written; swapped with `State::buf`, so both keep their capacity.
    batch: Vec<u8>,
    rotations: Vec<RotationMark>,
    /// Senders to answer once the lock is released.
    answered: Vec<oneshot::Sender<Reply>>,
}

/// If the writer panics, fail the log rather than leave appends piling up with nobody to write
/// them or commits waiting forever.
struct FailOnPanic(Arc<Shared>);

impl Drop for FailOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let error = WalError::new(
                format!("writing the write-ahead log in {}", self.0.config.dir.display()),
                io::Error::other("the writer thread panicked"),
            );
            self.0.fail(&error);
        }
    }
}

/// What the writer found to do.
struct Round {
    /// Stream position at the end of the batch.
    end: u64,
    /// Frames in the batch.
    frames: u64,
    closing: bool,
}

impl Writer {
    fn run(mut self) {
        let _guard = FailOnPanic(self.shared.clone());
        loop {
            let Some(round) = self.next_round() else {
                return;
            };
            self.frames_unsynced += round.frames;
            self.clean_pos = round.end - self.batch.len() as u64;
            self.clean_len = self.file_len;
            let result = self.write_round(round.closing).map_err(|e| self.cut_back(e));
            let shared = self.shared.clone();
            let reply = {
                let mut st = shared.lock();
                let failure = match &result {
                    Err(e) => Some(e.clone()),
                    Ok(()) => st.failed.clone(),
                };
                if let Err(e) = &result
                    && e.is_recoverable()
                {
                    // What the round made durable before it failed (up to a rotation it
                    // completed) stays on disk: acknowledge it, or a client would be told
                    // "failed" about a change the store then shows.
                    st.acked = st.acked.max(self.clean_pos);
                    while st.waiters.front().is_some_and(|(target, _)| *target <= self.clean_pos) {
                        if let Some((_, tx)) = st.waiters.pop_front() {
                            let _ = tx.send(Ok(()));
                        }
                    }
                }
                match failure {
                    None => {
                        st.acked = round.end;
                        while st.waiters.front().is_some_and(|(target, _)| *target <= round.end) {
                            if let Some((_, tx)) = st.waiters.pop_front() {
                                self.answered.push(tx);
                            }
                        }
                        Ok(())
                    }
                    // Failed here, or (by a directory sync elsewhere) meanwhile: nothing in
                    // this batch is acknowledged.
                    Some(e) => {
                        let senders = st.fail(&e);
                        self.answered.extend(senders);
                        Err(st.failed.clone().unwrap_or(e))
                    }
                }
            };
            if reply.is_err() {
                shared.drained.notify_all();
            }
            for tx in self.answered.drain(..) {
                // A dropped `Commit` is not an error: its records were handled all the same.
                let _ = tx.send(reply.clone());
            }
            self.batch.clear();
            self.batch.shrink_to(BATCH_CAPACITY_KEEP_BYTES);
            if let Err(e) = reply {
                if e.is_recoverable() {
                    tracing::warn!(
                        error = %e,
                        "the write-ahead log stopped: a resource ran out; the failed writes were cut off and \
                         nothing acknowledged is lost"
                    );
                } else {
                    tracing::error!(error = %e, "the write-ahead log failed; it accepts nothing more");
                }
                return;
            }
            if round.closing {
                return;
            }
        }
    }

    /// Waits for work, then takes the pending batch. `None` when the log has failed.
    fn next_round(&mut self) -> Option<Round> {
        let shared = self.shared.clone();
        let mut st = shared.lock();
        loop {
            if st.failed.is_some() {
                return None;
            }
            let asked = !st.waiters.is_empty()
                || !st.rotations.is_empty()
                || st.closing
                || st.appender_waiting
                || st.buf.len() >= WRITER_WAKE_BYTES;
            if asked {
                break;
            }
            match shared.config.durability {
                Durability::Interval { ms } => {
                    // Nobody need ask for an interval fsync: bound the loss window on a timer.
                    // Appends do not wake the writer, so it also looks for them on this timer.
                    let interval = Duration::from_millis(ms);
                    let pending = self.unsynced || !st.buf.is_empty();
                    // `None` for an interval too long to represent: then it is never due.
                    let due = self.last_sync.checked_add(interval);
                    let now = Instant::now();
                    if pending && due.is_some_and(|due| now >= due) {
                        break;
                    }
                    let timeout = match due {
                        Some(due) if pending => due.saturating_duration_since(now),
                        _ => interval.max(Duration::from_millis(1)),
                    };
                    st.writer_waiting = true;
                    st = shared.writer_wake.wait_timeout(st, timeout).unwrap_or_else(PoisonError::into_inner).0;
                    st.writer_waiting = false;
                }
                Durability::Always | Durability::Never => {
                    st.writer_waiting = true;
                    st = shared.writer_wake.wait(st).unwrap_or_else(PoisonError::into_inner);
                    st.writer_waiting = false;
                }
            }
        }
        std::mem::swap(&mut st.buf, &mut self.batch);
        std::mem::swap(&mut st.rotations, &mut self.rotations);
        let frames = std::mem::take(&mut st.frames);
        if st.appender_waiting {
            st.appender_waiting = false;
            shared.drained.notify_all();
        }
        Some(Round { end: st.appended, frames, closing: st.closing })
    }

    /// Writes the batch, switching segments at its rotation marks, then fsyncs as the policy
    /// says. Holds no lock: appends go on meanwhile and form the next batch.
    fn write_round(&mut self, closing: bool) -> Result<(), WalError> {
        let started = Instant::now();
        // Time spent in fsyncs at rotation marks, taken out of the round's write time.
        let mut syncing = Duration::ZERO;
        let mut start = 0;
        let mut marks = std::mem::take(&mut self.rotations).into_iter();
        while let Some(mark) = marks.next() {
            match self.segment_switch(start, mark.at, mark.seq, &mut syncing) {
                Ok(()) => {
                    start = mark.at;
                    if let Some(tx) = mark.done {
                        let _ = tx.send(Ok(()));
                    }
                }
                Err(e) => {
                    for tx in std::iter::once(mark).chain(marks).filter_map(|m| m.done) {
                        let _ = tx.send(Err(e.clone()));
                    }
                    return Err(e);
                }
            }
        }
        if start < self.batch.len() {
            self.write(start, self.batch.len())?;
            self.unsynced = true;
        }
        if !self.batch.is_empty() {
            metrics::histogram!(APPEND_SECONDS).record(started.elapsed().saturating_sub(syncing).as_secs_f64());
        }
        let sync_now = self.unsynced
            && match self.shared.config.durability {
                Durability::Always => true,
                Durability::Interval { ms } => closing || self.last_sync.elapsed() >= Duration::from_millis(ms),
                Durability::Never => closing,
            };
        if sync_now {
            self.sync()?;
        }
        Ok(())
    }

    /// Writes `batch[from..to]` to the current segment. Whatever part of it lands counts in no
    /// `file_len`: a failure is cut back to `clean_len` anyway.
    fn write(&mut self, from: usize, to: usize) -> Result<(), WalError> {
        self.file.write_all(&self.batch[from..to]).map_err(at_exhaustible("writing", &self.path))?;
        self.file_len += (to - from) as u64;
        Ok(())
    }

    /// After a round failed with a possibly recoverable error: cuts the current segment back to
    /// `clean_len` through the open handle, checks the size on disk, and removes a segment whose
    /// creation failed part-way. Returns the error, recoverable only if all of that worked.
    fn cut_back(&mut self, mut error: WalError) -> WalError {
        if !error.is_recoverable() {
            return error;
        }
        let fs = self.shared.fs.as_ref();
        let dir = &self.shared.config.dir;
        if let Some(seq) = self.creating.take() {
            error = segment_remove_partial(fs, dir, seq, error);
            if !error.is_recoverable() {
                return error;
            }
        }
        let len = self.clean_len;
        let cut = self.file.truncate(len).and_then(|()| fs.file_len(&self.path));
        match cut {
            Ok(found) if found == len => {
                self.file_len = len;
                error
            }
            Ok(found) => {
                tracing::error!(
                    path = %self.path.display(), expected = len, found,
                    "the write-ahead log segment has the wrong size after cutting a failed write off"
                );
                error.recoverable(false)
            }
            Err(e) => {
                tracing::error!(
                    path = %self.path.display(), error = %e, "cannot cut a failed write off the write-ahead log"
                );
                error.recoverable(false)
            }
        }
    }

    fn sync(&mut self) -> Result<(), WalError> {
        sync_timed(self.file.as_mut()).map_err(at("fsync of", &self.path))?;
        self.synced_frames();
        self.unsynced = false;
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Counts the frames the fsync just made durable. At a rotation mark this includes frames
    /// of the round that go to the next segment: they are durable at the round's end anyway.
    fn synced_frames(&mut self) {
        if self.frames_unsynced > 0 {
            metrics::histogram!(GROUP_COMMIT_OPERATIONS).record(self.frames_unsynced as f64);
            self.frames_unsynced = 0;
        }
    }

    /// Writes `batch[from..to]` to the current segment, fsyncs it, and moves to a new segment.
    /// Adds the time spent syncing to `syncing`.
    fn segment_switch(&mut self, from: usize, to: usize, seq: u64, syncing: &mut Duration) -> Result<(), WalError> {
        if to > from {
            self.write(from, to)?;
        }
        let sync_started = Instant::now();
        // The old segment must be whole on disk before the next exists: replay reads a bad frame
        // in any segment but the last as corruption.
        sync_timed(self.file.as_mut()).map_err(at("fsync of", &self.path))?;
        self.synced_frames();
        // Everything up to the mark is durable now, whatever happens next.
        self.clean_pos += (to - from) as u64;
        self.clean_len = self.file_len;
        let dir = &self.shared.config.dir;
        self.creating = Some(seq);
        let created = segment_create(self.shared.fs.as_ref(), dir, seq);
        *syncing += sync_started.elapsed();
        self.file = created?;
        self.creating = None;
        self.file_len = SEGMENT_HEADER_BYTES;
        self.clean_len = SEGMENT_HEADER_BYTES;
        self.seq = seq;
        self.path = segment_path(dir, seq);
        self.unsynced = false;
        self.last_sync = Instant::now();
        // Before `rotate` returns: a removal right after it may then take the old segment.
        self.shared.lock().seq_writing = seq;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::{Fault, OsFs, SimFs};
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn dir() -> PathBuf {
        PathBuf::from("/data")
    }

    fn sim() -> SimFs {
        let fs = SimFs::new();
        fs.create_dir_all(&dir()).expect("mkdir");
        fs
    }

    fn config(durability: Durability, segment_bytes_max: u64) -> WalConfig {
        WalConfig { dir: dir(), durability, segment_bytes_max }
    }

    fn start(fs: &SimFs, durability: Durability, segment_bytes_max: u64) -> Wal {
        Wal::start(Arc::new(fs.clone()), config(durability, segment_bytes_max), 1).expect("start")
    }

    fn record(i: u64) -> Vec<u8> {
        format!("record-{i:06}").into_bytes()
    }

    fn append(wal: &Wal, payload: &[u8]) {
        wal.append(|b| b.extend_from_slice(payload)).expect("append");
    }

    fn framed(payload: &[u8]) -> Vec<u8> {
        let mut buf = Vec::new();
        frame_into(&mut buf, |b| b.extend_from_slice(payload));
        buf
    }

    fn replay_all(fs: &dyn Fs, dir: &Path, from_seq: u64) -> Result<(Vec<Vec<u8>>, ReplayReport), ReplayError> {
        let mut records = Vec::new();
        let report = replay(fs, dir, from_seq, |p| {
            records.push(p.to_vec());
            Ok(())
        })?;
        assert_eq!(report.records, records.len() as u64);
        Ok((records, report))
    }

    // -----------------------------------------------------------------------------------------
    // Framing

    fn frame_starts(payloads: &[Vec<u8>]) -> Vec<u64> {
        let mut starts = vec![0u64];
        for p in payloads {
            let last = *starts.last().unwrap_or(&0);
            starts.push(last + (FRAME_HEADER_BYTES + p.len()) as u64);
        }
        starts
    }

    proptest! {
        /// Every prefix of a framed stream reads as its whole frames, then either a clean end (at
        /// a boundary) or a bad frame starting where the cut frame starts: the torn-tail rule.
        #[test]
        fn every_cut_of_a_frame_stream_ends_at_the_cut_frame(
            payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..40), 0..12)
        ) {
            let mut buf = Vec::new();
            for p in &payloads {
                frame_into(&mut buf, |b| b.extend_from_slice(p));
            }
            let starts = frame_starts(&payloads);
            for cut in 0..=buf.len() {
                let mut seen = Vec::new();
                let end = read_frames(&buf[..cut], |p| { seen.push(p.to_vec()); Ok(()) }).expect("read");
                let whole = starts.iter().filter(|&&s| s > 0 && s <= cut as u64).count();
                prop_assert_eq!(&seen[..], &payloads[..whole]);
                if starts.contains(&(cut as u64)) {
                    prop_assert_eq!(end, FramesEnd::Clean { frames: whole as u64, bytes: cut as u64 });
                } else {
                    let FramesEnd::Bad { frames, offset, .. } = end else {
                        return Err(TestCaseError::fail(format!("cut {cut}: {end:?}")));
                    };
                    prop_assert_eq!(frames, whole as u64);
                    prop_assert_eq!(offset, starts[whole]);
                }
            }
        }

        /// A flipped bit anywhere makes the frame holding it bad, and nothing after it is read.
        #[test]
        fn a_flipped_bit_is_caught_at_its_frame(
            payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..40), 1..8),
            at in any::<prop::sample::Index>(),
            bit in 0..8u8,
        ) {
            let mut buf = Vec::new();
            for p in &payloads {
                frame_into(&mut buf, |b| b.extend_from_slice(p));
            }
            let i = at.index(buf.len());
            buf[i] ^= 1 << bit;
            let starts = frame_starts(&payloads);
            let frame = starts.iter().rposition(|&s| s <= i as u64).unwrap_or(0);
            let mut seen = 0usize;
            let end = read_frames(&buf[..], |_| { seen += 1; Ok(()) }).expect("read");
            prop_assert_eq!(seen, frame);
            let is_bad_here = matches!(end, FramesEnd::Bad { offset, .. } if offset == starts[frame]);
            prop_assert!(is_bad_here, "{:?}", end);
        }
    }

    #[test]
    fn frame_layout_is_length_crc_payload() {
        let buf = framed(b"abc");
        assert_eq!(&buf[..4], &3u32.to_le_bytes());
        assert_eq!(&buf[4..8], &crc32c::crc32c(b"abc").to_le_bytes());
        assert_eq!(&buf[8..], b"abc");
    }

    #[test]
    fn framing_refuses_empty_and_oversize_payloads_and_leaves_the_buffer_alone() {
        let mut buf = framed(b"keep");
        let before = buf.clone();
        assert_eq!(try_frame_into(&mut buf, |_| {}), Err(FrameEncodeError::Empty));
        assert_eq!(buf, before);
        assert_eq!(
            try_frame_into(&mut buf, |b| b.resize(b.len() + FRAME_BYTES_MAX + 1, 7)),
            Err(FrameEncodeError::TooLarge { len: FRAME_BYTES_MAX + 1 })
        );
        assert_eq!(buf, before);
        let mut other = framed(b"x");
        assert_eq!(try_frame_into(&mut other, |b| b.clear()), Err(FrameEncodeError::Shrunk));
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            frame_into(&mut buf, |b| {
                b.push(1);
                panic!("encoder bug");
            })
        }));
        assert!(panicked.is_err());
        assert_eq!(buf, before, "a panicking encoder leaves no half frame");
        assert!(std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| frame_into(&mut buf, |_| {}))).is_err());
    }

    #[test]
    fn read_frames_reports_each_kind_of_bad_frame() {
        let good = framed(b"good");
        let mut zeros = good.clone();
        zeros.extend_from_slice(&[0; 16]);
        let mut too_long = good.clone();
        too_long.extend_from_slice(&(FRAME_BYTES_MAX as u32 + 1).to_le_bytes());
        too_long.extend_from_slice(&[0; 4]);
        let mut short_payload = good.clone();
        short_payload.extend_from_slice(&framed(b"cut off")[..10]);
        let mut bad_crc = good.clone();
        let mut f = framed(b"flip");
        f[9] ^= 1;
        bad_crc.extend_from_slice(&f);
        let cases: [(&[u8], FrameProblem); 5] = [
            (&good[..5], FrameProblem::ShortHeader { bytes: 5 }),
            (&zeros, FrameProblem::Empty),
            (&too_long, FrameProblem::TooLong { len: FRAME_BYTES_MAX as u64 + 1 }),
            (&short_payload, FrameProblem::ShortPayload { len: 7, bytes: 2 }),
            (
                &bad_crc,
                FrameProblem::CrcMismatch { stored: crc32c::crc32c(b"flip"), computed: crc32c::crc32c(b"fmip") },
            ),
        ];
        for (i, (data, problem)) in cases.into_iter().enumerate() {
            let end = read_frames(data, |_| Ok(())).expect("read");
            let frames = u64::from(i != 0);
            let offset = if i == 0 { 0 } else { good.len() as u64 };
            assert_eq!(end, FramesEnd::Bad { frames, offset, problem }, "case {i}");
        }
        let refused = read_frames(&good[..], |_| Err("no thanks".into())).expect_err("refused");
        assert_eq!(refused.to_string(), "the record at byte 0 was refused: no thanks");
    }

    // -----------------------------------------------------------------------------------------
    // Writing and replaying

    #[test]
    fn segment_names_sort_and_parse() {
        assert_eq!(segment_path(Path::new("/d"), 42), Path::new("/d/wal-00000000000000000042.log"));
        assert_eq!(segment_seq("wal-00000000000000000042.log"), Some(42));
        for other in ["wal-42.log", "wal-0000000000000000004x.log", "snapshot-00000000000000000042.snap", "LOCK"] {
            assert_eq!(segment_seq(other), None, "{other}");
        }
    }

    #[test]
    fn records_round_trip_across_rotations() {
        let fs = sim();
        // About five records per segment, so the log rotates on its own as well.
        let wal = start(&fs, Durability::Always, 120);
        let mut expected = Vec::new();
        for i in 0..60 {
            append(&wal, &record(i));
            expected.push(record(i));
            if i % 7 == 6 {
                wal.commit().wait().expect("commit");
            }
            if i == 30 {
                let before = list_segments(&fs, &dir()).expect("list");
                let seq = wal.rotate().expect("rotate");
                assert!(seq > *before.last().expect("segments"), "{seq} {before:?}");
                assert_eq!(list_segments(&fs, &dir()).expect("list").last(), Some(&seq), "durable on return");
            }
        }
        let bytes: u64 = expected.iter().map(|r| (FRAME_HEADER_BYTES + r.len()) as u64).sum();
        assert_eq!(wal.bytes_appended(), bytes);
        wal.close().expect("close");

        let segments = list_segments(&fs, &dir()).expect("list");
        assert!(segments.len() > 10, "{segments:?}");
        assert_eq!(segments, (1..=segments.len() as u64).collect::<Vec<_>>());
        for &seq in &segments {
            let len = fs.file_len(&segment_path(&dir(), seq)).expect("len");
            assert!(len <= 120 + 21, "segment {seq} is {len} bytes");
        }
        let (records, report) = replay_all(&fs, &dir(), 1).expect("replay");
        assert_eq!(records, expected);
        assert_eq!(report.first_seq, Some(1));
        assert_eq!(report.last_seq, segments.last().copied());
        assert_eq!(report.truncated, None);
    }

    #[test]
    fn records_round_trip_on_the_real_file_system() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let fs: Arc<dyn Fs> = Arc::new(OsFs);
        let cfg = WalConfig { segment_bytes_max: 200, ..WalConfig::new(tmp.path()) };
        let wal = Wal::start(fs.clone(), cfg.clone(), 1).expect("start");
        for i in 0..40 {
            append(&wal, &record(i));
        }
        wal.commit().wait().expect("commit");
        wal.close().expect("close");
        let (records, report) = replay_all(fs.as_ref(), tmp.path(), 1).expect("replay");
        assert_eq!(records, (0..40).map(record).collect::<Vec<_>>());
        let last = report.last_seq.expect("segments");
        assert!(last > 3);

        // Recovery continues in a new segment.
        let wal = Wal::start(fs.clone(), cfg, last + 1).expect("restart");
        append(&wal, b"after restart");
        wal.close().expect("close");
        let (records, _) = replay_all(fs.as_ref(), tmp.path(), 1).expect("replay");
        assert_eq!(records.last().map(Vec::as_slice), Some(&b"after restart"[..]));
    }

    /// One torn tail shape: what a crash left after the last good frame.
    fn check_torn_tail(name: &str, tail: &[u8]) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let wal = Wal::start(Arc::new(OsFs), WalConfig::new(tmp.path()), 1).expect("start");
        for i in 0..3 {
            append(&wal, &record(i));
        }
        wal.close().expect("close");
        let path = segment_path(tmp.path(), 1);
        let good_len = std::fs::metadata(&path).expect("len").len();
        let mut file = std::fs::OpenOptions::new().append(true).open(&path).expect("open");
        io::Write::write_all(&mut file, tail).expect("write tail");
        drop(file);

        let (records, report) = replay_all(&OsFs, tmp.path(), 1).expect(name);
        assert_eq!(records, (0..3).map(record).collect::<Vec<_>>(), "{name}");
        let torn = report.truncated.expect(name);
        assert_eq!(
            (torn.path.as_path(), torn.offset, torn.bytes_dropped),
            (path.as_path(), good_len, tail.len() as u64),
            "{name}"
        );
        assert!(!torn.segment_removed);
        assert_eq!(std::fs::metadata(&path).expect("len").len(), good_len, "{name}: cut on disk");
        let (again, report) = replay_all(&OsFs, tmp.path(), 1).expect(name);
        assert_eq!((again, report.truncated), (records, None), "{name}: a second replay is clean");
    }

    #[test]
    fn a_torn_tail_in_the_last_segment_is_cut_and_reported() {
        let whole = framed(b"never acknowledged");
        let mut bad_crc = whole.clone();
        let last = bad_crc.len() - 1;
        bad_crc[last] ^= 0x40;
        let mut then_more = bad_crc.clone();
        then_more.extend_from_slice(&framed(b"after the tear"));
        check_torn_tail("short header", &whole[..3]);
        check_torn_tail("short payload", &whole[..12]);
        check_torn_tail("garbled end", &bad_crc);
        check_torn_tail("garbled then more", &then_more);
        check_torn_tail("zeroed space", &[0; 4096]);
        check_torn_tail("huge length", &[0xff; 8]);
    }

    #[test]
    fn a_last_segment_with_an_incomplete_header_is_removed() {
        for header_bytes in [0usize, 7, 16] {
            let fs = sim();
            let wal = start(&fs, Durability::Always, SEGMENT_BYTES_DEFAULT);
            append(&wal, &record(0));
            assert_eq!(wal.rotate().expect("rotate"), 2);
            append(&wal, &record(1));
            wal.close().expect("close");
            // Segment 3 was being created when the power went: part of its header, garbled.
            let mut f = fs.create(&segment_path(&dir(), 3)).expect("create");
            let mut header = segment_header(3);
            header[header_bytes.saturating_sub(1)] ^= 0xff;
            f.write_all(&header[..header_bytes]).expect("write");
            drop(f);

            let (records, report) = replay_all(&fs, &dir(), 1).expect("replay");
            assert_eq!(records, [record(0), record(1)]);
            assert_eq!(report.last_seq, Some(2));
            let torn = report.truncated.expect("reported");
            assert!(torn.segment_removed && torn.offset == 0 && torn.bytes_dropped == header_bytes as u64);
            assert_eq!(list_segments(&fs, &dir()).expect("list"), [1, 2]);
            let (_, again) = replay_all(&fs, &dir(), 1).expect("replay");
            assert_eq!(again.truncated, None);
            let wal = Wal::start(Arc::new(fs.clone()), config(Durability::Always, SEGMENT_BYTES_DEFAULT), 3)
                .expect("a new log takes the removed segment's place");
            wal.close().expect("close");
        }
    }

    /// Three segments of three records each.
    fn three_segments() -> SimFs {
        let fs = sim();
        let wal = start(&fs, Durability::Always, SEGMENT_BYTES_DEFAULT);
        for s in 0..3 {
            for i in 0..3 {
                append(&wal, &record(s * 10 + i));
            }
            if s < 2 {
                wal.rotate().expect("rotate");
            }
        }
        wal.close().expect("close");
        fs
    }

    #[test]
    fn damage_before_the_last_segment_is_an_error_naming_file_and_offset() {
        let frame = (FRAME_HEADER_BYTES + record(0).len()) as u64;
        // (segment, byte to damage, offset the error must name)
        let cases = [
            (1, SEGMENT_HEADER_BYTES + frame + 9, SEGMENT_HEADER_BYTES + frame),
            (2, SEGMENT_HEADER_BYTES + 2 * frame + 1, SEGMENT_HEADER_BYTES + 2 * frame),
            (2, 3, 0),
            (1, 12, 0),
            // The last segment's header, with records after it: not a torn creation.
            (3, 0, 0),
        ];
        for (seq, byte, offset) in cases {
            let fs = three_segments();
            let path = segment_path(&dir(), seq);
            let data = fs.read_all(&path).expect("read");
            fs.corrupt(&path, byte, &[data[byte as usize] ^ 0x10]).expect("corrupt");
            let err = replay_all(&fs, &dir(), 1).expect_err("corrupt");
            let message = err.to_string();
            assert!(
                matches!(&err, ReplayError::Corrupt { path: p, offset: o, .. } if *p == path && *o == offset),
                "{message}"
            );
            assert!(message.contains(&path.display().to_string()), "{message}");
            assert!(message.contains(&format!("byte {offset}")), "{message}");
            assert_eq!(
                fs.read_all(&segment_path(&dir(), 3)).expect("read").len() as u64,
                SEGMENT_HEADER_BYTES + 3 * frame,
                "nothing was cut"
            );
        }
    }

    #[test]
    fn a_missing_segment_is_an_error() {
        let fs = three_segments();
        fs.remove(&segment_path(&dir(), 2)).expect("remove");
        let err = replay_all(&fs, &dir(), 1).expect_err("gap");
        assert!(matches!(err, ReplayError::Gap { missing: 2, .. }), "{err}");
        assert!(err.to_string().contains("segment 2 is missing from /data"), "{err}");
    }

    #[test]
    fn replay_starts_at_from_seq_and_requires_it_when_above_zero() {
        let fs = three_segments();
        let (records, report) = replay_all(&fs, &dir(), 2).expect("replay");
        assert_eq!(records, [10, 11, 12, 20, 21, 22].map(record));
        assert_eq!((report.first_seq, report.last_seq), (Some(2), Some(3)));
        let (_, report) = replay_all(&fs, &dir(), 4).expect("past the end");
        assert_eq!((report.first_seq, report.last_seq, report.records), (None, None, 0));

        fs.remove(&segment_path(&dir(), 1)).expect("remove");
        let (records, report) = replay_all(&fs, &dir(), 0).expect("no snapshot: start at the oldest");
        assert_eq!((records.len(), report.first_seq), (6, Some(2)));
        let err = replay_all(&fs, &dir(), 1).expect_err("a snapshot said the log goes on at 1");
        assert!(matches!(err, ReplayError::Gap { missing: 1, .. }), "{err}");
    }

    #[test]
    fn a_record_the_caller_refuses_is_an_error_naming_file_and_offset() {
        let fs = three_segments();
        let err =
            replay(&fs, &dir(), 1, |p| if p == record(11).as_slice() { Err("bad record".into()) } else { Ok(()) })
                .expect_err("refused");
        let frame = (FRAME_HEADER_BYTES + record(0).len()) as u64;
        let message = err.to_string();
        assert!(message.contains("wal-00000000000000000002.log"), "{message}");
        assert!(message.contains(&format!("byte {}", SEGMENT_HEADER_BYTES + frame)), "{message}");
        assert!(message.contains("bad record"), "{message}");
    }

    #[test]
    fn remove_segments_before_never_removes_the_current_segment() {
        let fs = three_segments();
        // `three_segments` closed its log; a new one continues at 4.
        let wal =
            Wal::start(Arc::new(fs.clone()), config(Durability::Always, SEGMENT_BYTES_DEFAULT), 4).expect("start");
        append(&wal, b"x");
        wal.remove_segments_before(3).expect("remove");
        assert_eq!(list_segments(&fs, &dir()).expect("list"), [3, 4]);
        wal.remove_segments_before(u64::MAX).expect("remove");
        assert_eq!(list_segments(&fs, &dir()).expect("list"), [4]);
        // As a snapshot does it: rotate, then let everything before the new segment go.
        let seq = wal.rotate().expect("rotate");
        append(&wal, b"y");
        wal.remove_segments_before(seq).expect("remove");
        assert_eq!(list_segments(&fs, &dir()).expect("list"), [5]);
        wal.close().expect("close");
        // The removals were made durable.
        assert_eq!(list_segments(&fs.crash_copy(0), &dir()).expect("list"), [5]);
        let (records, _) = replay_all(&fs, &dir(), 5).expect("replay");
        assert_eq!(records, [b"y".to_vec()]);
    }

    #[test]
    fn start_refuses_an_existing_segment() {
        let fs = three_segments();
        let err =
            Wal::start(Arc::new(fs.clone()), config(Durability::Always, SEGMENT_BYTES_DEFAULT), 3).expect_err("exists");
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert!(err.to_string().contains("wal-00000000000000000003.log"), "{err}");
    }

    // -----------------------------------------------------------------------------------------
    // Commits and policies

    #[test]
    fn group_commit_shares_fsyncs_and_acknowledges_only_durable_records() {
        const THREADS: u64 = 8;
        const COMMITS: u64 = 40;
        const RECORDS: u64 = 4;
        let fs = sim();
        // A disk-like fsync latency: while one batch syncs, the others gather the next.
        fs.set_sync_latency(Duration::from_millis(1));
        let wal = start(&fs, Durability::Always, SEGMENT_BYTES_DEFAULT);
        let syncs_before = fs.sync_count();
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let (wal, fs) = (&wal, &fs);
                s.spawn(move || {
                    for c in 0..COMMITS {
                        let mine: Vec<Vec<u8>> = (0..RECORDS).map(|r| format!("t{t}-c{c}-r{r}").into_bytes()).collect();
                        for m in &mine {
                            append(wal, m);
                        }
                        wal.commit().wait().expect("commit");
                        // A power loss right after the acknowledgement keeps every record.
                        let after_crash = fs.crash_copy(t * 1_000 + c);
                        let (records, _) = replay_all(&after_crash, &dir(), 1).expect("replay");
                        for m in &mine {
                            assert!(records.contains(m), "acknowledged {} lost", String::from_utf8_lossy(m));
                        }
                    }
                });
            }
        });
        let syncs = fs.sync_count() - syncs_before;
        let commits = THREADS * COMMITS;
        assert!(syncs * 2 < commits, "{syncs} fsyncs for {commits} commits: no grouping");
        wal.close().expect("close");

        // Each thread's records are in its own order in the log.
        let (records, _) = replay_all(&fs, &dir(), 1).expect("replay");
        assert_eq!(records.len() as u64, commits * RECORDS);
        let mut next: BTreeMap<String, u64> = BTreeMap::new();
        for r in &records {
            let r = String::from_utf8_lossy(r).into_owned();
            let (thread, rest) = r.split_once('-').expect("name");
            let n = next.entry(thread.to_owned()).or_default();
            assert_eq!(rest, format!("c{}-r{}", *n / RECORDS, *n % RECORDS));
            *n += 1;
        }
    }

    #[test]
    fn a_failed_fsync_fails_its_commit_and_everything_after() {
        let fs = sim();
        let wal = start(&fs, Durability::Always, SEGMENT_BYTES_DEFAULT);
        append(&wal, &record(0));
        wal.commit().wait().expect("commit");
        fs.reset_op_count();
        // The next batch: write (0), fsync (1).
        fs.fail_at(1, Fault::SyncError);
        append(&wal, &record(1));
        let err = wal.commit().wait().expect_err("the fsync failed");
        assert!(err.to_string().contains("fsync of /data/wal-00000000000000000001.log"), "{err}");
        assert!(err.to_string().contains("injected fault SyncError"), "{err}");
        assert_eq!(wal.failure().map(|e| e.to_string()), Some(err.to_string()));
        let ops = fs.op_count();
        assert!(wal.append(|b| b.push(1)).is_err());
        assert!(wal.commit().wait().is_err());
        assert!(wal.rotate().is_err());
        assert!(wal.remove_segments_before(1).is_err());
        assert_eq!(fs.op_count(), ops, "no retries, no further writes");
        assert_eq!(wal.close().map_err(|e| e.to_string()), Err(err.to_string()));
        let (records, _) = replay_all(&fs, &dir(), 1).expect("replay");
        assert_eq!(records, [record(0)]);
    }

    #[test]
    fn a_failed_write_fails_its_commit() {
        let fs = sim();
        let wal = start(&fs, Durability::Never, SEGMENT_BYTES_DEFAULT);
        fs.reset_op_count();
        fs.fail_at(0, Fault::TornWrite);
        append(&wal, &record(0));
        let err = wal.commit().wait().expect_err("the write failed");
        assert!(err.to_string().contains("writing /data/wal-00000000000000000001.log"), "{err}");
        assert!(wal.commit().wait().is_err());
    }

    #[test]
    fn a_failed_directory_sync_while_removing_segments_fails_the_log() {
        let fs = three_segments();
        let wal =
            Wal::start(Arc::new(fs.clone()), config(Durability::Always, SEGMENT_BYTES_DEFAULT), 4).expect("start");
        fs.reset_op_count();
        // remove (0), remove (1), sync_dir (2).
        fs.fail_at(2, Fault::Error);
        assert!(wal.remove_segments_before(3).is_err());
        assert!(wal.failure().is_some());
        assert!(wal.append(|b| b.push(1)).is_err());
    }

    /// One run of a small workload against a disk that may fail: what was appended (in order)
    /// and how many of those records a commit acknowledged.
    #[derive(Debug, Default)]
    struct Outcome {
        appended: Vec<Vec<u8>>,
        acked: usize,
        /// How the log stopped, if it did.
        failure: Option<WalError>,
    }

    fn workload(fs: &SimFs, durability: Durability) -> Outcome {
        workload_with(fs, durability, false)
    }

    /// With `commit_each`, every record has its own commit (all waited for at the end of the
    /// round), so `acked` counts exactly the records acknowledged; the rounds the writer makes
    /// then depend on thread timing.
    fn workload_with(fs: &SimFs, durability: Durability, commit_each: bool) -> Outcome {
        let mut out = Outcome::default();
        let Ok(wal) = Wal::start(Arc::new(fs.clone()), config(durability, 120), 1) else {
            return out;
        };
        let mut failed = false;
        for round in 0..5u64 {
            let mut commits = Vec::new();
            for i in 0..3u64 {
                let r = record(round * 10 + i);
                if wal.append(|b| b.extend_from_slice(&r)).is_err() {
                    break;
                }
                out.appended.push(r);
                if commit_each {
                    commits.push((out.appended.len(), wal.commit()));
                }
            }
            if !commit_each {
                commits.push((out.appended.len(), wal.commit()));
            }
            for (covered, commit) in commits {
                match commit.wait() {
                    Ok(()) => {
                        assert!(!failed, "a commit succeeded after one before it failed");
                        out.acked = covered;
                    }
                    Err(_) => failed = true,
                }
            }
            if round == 2 {
                let _ = wal.rotate();
            }
        }
        out.failure = wal.failure();
        let _ = wal.close();
        out
    }

    /// Recovers `fs` and checks: replay succeeds, yields a prefix of what was appended holding at
    /// least `keep` records, a second replay is clean, and a new log continues after it.
    fn check_recovery(fs: &SimFs, out: &Outcome, keep: usize, label: &str) {
        let (records, report) = replay_all(fs, &dir(), 1).unwrap_or_else(|e| panic!("{label}: {e}"));
        assert!(out.appended.starts_with(&records), "{label}: replayed {records:?}, appended {:?}", out.appended);
        assert!(records.len() >= keep, "{label}: {} records survived, {keep} were acknowledged", records.len());
        let (again, report2) = replay_all(fs, &dir(), 1).unwrap_or_else(|e| panic!("{label}: {e}"));
        assert_eq!((&again, report2.truncated), (&records, None), "{label}: second replay");
        let next = report.last_seq.map_or(1, |s| s + 1);
        let wal = Wal::start(Arc::new(fs.clone()), config(Durability::Always, 120), next)
            .unwrap_or_else(|e| panic!("{label}: restart: {e}"));
        append(&wal, b"after recovery");
        wal.close().unwrap_or_else(|e| panic!("{label}: {e}"));
        let (after, _) = replay_all(fs, &dir(), 1).unwrap_or_else(|e| panic!("{label}: {e}"));
        assert_eq!(after.len(), records.len() + 1, "{label}");
    }

    /// Regression guard for issue #10 (a full disk or too many open files stopped the log with
    /// unacknowledged bytes on disk): when a resource runs out at any call, the log stops
    /// recoverably or for good; recoverably means the directory holds exactly the acknowledged
    /// records, nothing of what was refused, and a new log can start after them.
    #[test]
    fn running_out_of_a_resource_at_any_call_leaves_exactly_the_acknowledged_records() {
        for durability in [Durability::Always, Durability::Never] {
            let ops = {
                let clean = sim();
                workload_with(&clean, durability, true);
                clean.op_count()
            };
            let mut recoverable = 0;
            for k in 0..=ops {
                for fault in [Fault::NoSpace, Fault::NoFiles] {
                    let label = format!("{durability:?} {fault:?} at call {k}");
                    let fs = sim();
                    fs.fail_at(k, fault);
                    let out = workload_with(&fs, durability, true);
                    fs.clear_faults();
                    let Some(failure) = &out.failure else { continue };
                    if !failure.is_recoverable() {
                        continue;
                    }
                    recoverable += 1;
                    // No crash needed: this is the directory the next log starts in.
                    let (records, report) = replay_all(&fs, &dir(), 1).unwrap_or_else(|e| panic!("{label}: {e}"));
                    assert_eq!(records, out.appended[..out.acked], "{label}: {failure}");
                    assert_eq!(report.truncated, None, "{label}: the failed write was not cut off");
                    check_recovery(&fs, &out, out.acked, &label);
                }
            }
            // Writes, headers and segment creations are in the workload: most points recover.
            assert!(recoverable > ops as usize / 4, "{durability:?}: only {recoverable} of {ops} points recovered");
        }
    }

    #[test]
    fn a_full_disk_cuts_the_failed_write_back_and_stops_recoverably() {
        let fs = sim();
        let wal = start(&fs, Durability::Always, SEGMENT_BYTES_DEFAULT);
        append(&wal, &record(0));
        wal.commit().wait().expect("commit");
        let path = segment_path(&dir(), 1);
        let len = fs.file_len(&path).expect("len");
        // Room for part of the next batch only: `write(2)` puts what fits, then ENOSPC.
        fs.set_space_bytes_max(Some(fs.bytes_stored() + 5));
        append(&wal, &record(1));
        let err = wal.commit().wait().expect_err("no space");
        assert_eq!(err.io_error().raw_os_error(), Some(libc::ENOSPC), "{err}");
        assert!(err.is_recoverable(), "{err}");
        assert_eq!(fs.file_len(&path).expect("len"), len, "the partial write is cut off");
        assert_eq!(fs.durable_len(&path), Some(len), "and the cut is durable");
        assert!(wal.append(|b| b.push(1)).is_err(), "the log still stops");
        let (records, _) = replay_all(&fs, &dir(), 1).expect("replay");
        assert_eq!(records, [record(0)]);
    }

    #[test]
    fn out_of_files_at_a_rotation_acknowledges_what_the_old_segment_holds() {
        let fs = sim();
        // A segment ends after about two records.
        let wal = start(&fs, Durability::Always, SEGMENT_HEADER_BYTES + 30);
        append(&wal, &record(0));
        append(&wal, &record(1));
        fs.set_files_exhausted(true);
        // The first two records end segment 1; these go to segment 2, which cannot be created.
        let before = wal.commit();
        // The writer may meet the failed rotation before this append (it rotates as soon as
        // the segment is full): then the append itself reports it.
        let err = match wal.append(|b| b.extend_from_slice(&record(2))) {
            Err(e) => e,
            Ok(()) => wal.commit().wait().expect_err("no descriptors"),
        };
        assert_eq!(err.io_error().raw_os_error(), Some(libc::EMFILE), "{err}");
        assert!(err.is_recoverable(), "{err}");
        // The commit covering only the old segment's records was durable before the failure.
        before.wait().expect("the records before the rotation are durable and acknowledged");
        fs.set_files_exhausted(false);
        assert_eq!(list_segments(&fs, &dir()).expect("list"), [1], "no half-created segment is left");
        let (records, _) = replay_all(&fs, &dir(), 1).expect("replay");
        assert_eq!(records, [record(0), record(1)]);
    }

    #[test]
    fn a_full_disk_while_writing_a_segment_header_removes_the_segment() {
        let fs = sim();
        let wal = start(&fs, Durability::Always, SEGMENT_HEADER_BYTES + 30);
        append(&wal, &record(0));
        wal.commit().wait().expect("commit");
        fs.reset_op_count();
        // Record 1 ends segment 1. The round: write (0), fsync (1), create (2), header (3).
        fs.fail_at(3, Fault::NoSpace);
        append(&wal, &record(1));
        append(&wal, &record(2));
        let err = wal.commit().wait().expect_err("no space");
        assert!(err.is_recoverable(), "{err}");
        assert_eq!(list_segments(&fs, &dir()).expect("list"), [1]);
        let wal = Wal::start(Arc::new(fs.clone()), config(Durability::Always, SEGMENT_BYTES_DEFAULT), 2)
            .expect("a new log starts after the old one");
        append(&wal, &record(3));
        wal.close().expect("close");
        let (records, _) = replay_all(&fs, &dir(), 1).expect("replay");
        assert_eq!(records, [record(0), record(1), record(3)]);
    }

    #[test]
    fn a_full_disk_at_fsync_stops_the_log_for_good() {
        let fs = sim();
        let wal = start(&fs, Durability::Always, SEGMENT_BYTES_DEFAULT);
        fs.reset_op_count();
        // write (0), fsync (1): writeback found no space, the page cache cannot be trusted.
        fs.fail_at(1, Fault::NoSpace);
        append(&wal, &record(0));
        let err = wal.commit().wait().expect_err("fsync failed");
        assert!(!err.is_recoverable(), "{err}");
        assert!(err.to_string().contains("fsync of"), "{err}");
    }

    #[test]
    fn out_of_files_syncing_the_directory_after_removing_segments_keeps_the_log() {
        let fs = three_segments();
        let wal =
            Wal::start(Arc::new(fs.clone()), config(Durability::Always, SEGMENT_BYTES_DEFAULT), 4).expect("start");
        fs.set_files_exhausted(true);
        let err = wal.remove_segments_before(3).expect_err("no descriptor for the directory");
        assert!(err.is_recoverable(), "{err}");
        fs.set_files_exhausted(false);
        assert!(wal.failure().is_none(), "no fsync failed: the log goes on");
        append(&wal, &record(99));
        wal.commit().wait().expect("commit");
        wal.close().expect("close");
    }

    #[test]
    fn no_injected_fault_ever_loses_an_acknowledged_record() {
        for durability in [Durability::Always, Durability::Never] {
            let clean = sim();
            let out = workload(&clean, durability);
            assert_eq!(out.acked, 15, "the workload succeeds without faults");
            let ops = clean.op_count();
            assert!(ops > 20, "{ops}");
            for k in 0..=ops {
                for fault in [Fault::Error, Fault::TornWrite, Fault::SyncError] {
                    let fs = sim();
                    fs.fail_at(k, fault);
                    let out = workload(&fs, durability);
                    fs.clear_faults();
                    // Power loss: under `Always` nothing acknowledged may go.
                    let keep = if durability == Durability::Always { out.acked } else { 0 };
                    for seed in 0..4 {
                        let label = format!("{durability:?} {fault:?} at call {k}, crash seed {seed}");
                        check_recovery(&fs.crash_copy(seed), &out, keep, &label);
                    }
                    // A process restart without power loss: every policy keeps what it
                    // acknowledged, except that under `Never` a failed fsync takes the written but
                    // unsynced bytes with it (the policy's documented window).
                    let keep =
                        if durability == Durability::Always || fault != Fault::SyncError { out.acked } else { 0 };
                    check_recovery(&fs, &out, keep, &format!("{durability:?} {fault:?} at call {k}, no crash"));
                }
            }
        }
    }

    #[test]
    fn interval_policy_acknowledges_writes_and_fsyncs_at_most_every_interval() {
        let fs = sim();
        let wal = start(&fs, Durability::Interval { ms: 3_600_000 }, SEGMENT_BYTES_DEFAULT);
        let syncs = fs.sync_count();
        let path = segment_path(&dir(), 1);
        for i in 0..20 {
            append(&wal, &record(i));
            wal.commit().wait().expect("commit");
        }
        assert_eq!(fs.sync_count(), syncs, "no fsync within the interval");
        assert_eq!(fs.durable_len(&path), Some(SEGMENT_HEADER_BYTES));
        let (records, _) = replay_all(&fs.crash_copy(0), &dir(), 1).expect("replay");
        assert!(records.len() <= 20);
        wal.close().expect("close");
        assert_eq!(fs.sync_count(), syncs + 1, "close fsyncs");
        let (records, _) = replay_all(&fs.crash_copy(0), &dir(), 1).expect("replay");
        assert_eq!(records.len(), 20);
    }

    #[test]
    fn interval_policy_fsyncs_idle_data_within_the_interval() {
        let fs = sim();
        let wal = start(&fs, Durability::Interval { ms: 5 }, SEGMENT_BYTES_DEFAULT);
        let path = segment_path(&dir(), 1);
        append(&wal, &record(0));
        wal.commit().wait().expect("commit");
        // Appended without a commit: the interval still bounds how long it stays volatile.
        append(&wal, &record(1));
        let want = SEGMENT_HEADER_BYTES + wal.bytes_appended();
        let deadline = Instant::now() + Duration::from_secs(10);
        while fs.durable_len(&path) != Some(want) {
            assert!(Instant::now() < deadline, "idle data never fsynced: {:?} of {want}", fs.durable_len(&path));
            std::thread::sleep(Duration::from_millis(1));
        }
        wal.close().expect("close");
    }

    #[test]
    fn never_policy_fsyncs_only_at_rotation_and_close() {
        let fs = sim();
        let wal = start(&fs, Durability::Never, SEGMENT_BYTES_DEFAULT);
        let syncs = fs.sync_count();
        for i in 0..10 {
            append(&wal, &record(i));
            wal.commit().wait().expect("commit");
        }
        assert_eq!(fs.sync_count(), syncs);
        assert_eq!(
            fs.read_all(&segment_path(&dir(), 1)).expect("read").len() as u64,
            SEGMENT_HEADER_BYTES + wal.bytes_appended(),
            "written to the OS"
        );
        wal.rotate().expect("rotate");
        assert_eq!(fs.sync_count(), syncs + 2, "the old segment and the new header");
        assert_eq!(fs.durable_len(&segment_path(&dir(), 1)), Some(SEGMENT_HEADER_BYTES + wal.bytes_appended()));
        append(&wal, &record(10));
        wal.close().expect("close");
        assert_eq!(fs.sync_count(), syncs + 3);
        let (records, _) = replay_all(&fs.crash_copy(1), &dir(), 1).expect("replay");
        assert_eq!(records.len(), 11);
    }

    #[test]
    fn close_and_drop_flush_everything_appended() {
        for close in [true, false] {
            for durability in [Durability::Always, Durability::Interval { ms: 3_600_000 }, Durability::Never] {
                let fs = sim();
                let wal = start(&fs, durability, 100);
                for i in 0..12 {
                    append(&wal, &record(i));
                }
                if close {
                    wal.close().expect("close");
                } else {
                    drop(wal);
                }
                let (records, _) = replay_all(&fs.crash_copy(7), &dir(), 1).expect("replay");
                assert_eq!(records, (0..12).map(record).collect::<Vec<_>>(), "close {close}, {durability:?}");
            }
        }
    }

    #[test]
    fn a_commit_with_nothing_pending_resolves_at_once() {
        let fs = sim();
        let wal = start(&fs, Durability::Always, SEGMENT_BYTES_DEFAULT);
        let syncs = fs.sync_count();
        wal.commit().wait().expect("empty commit");
        append(&wal, &record(0));
        wal.commit().wait().expect("commit");
        wal.commit().wait().expect("again");
        assert_eq!(fs.sync_count(), syncs + 1);
    }

    #[test]
    fn append_refuses_bad_payloads_without_failing_the_log() {
        let fs = sim();
        let wal = start(&fs, Durability::Always, SEGMENT_BYTES_DEFAULT);
        let err = wal.append(|_| {}).expect_err("empty");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("payload is empty"), "{err}");
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wal.append(|b| {
                b.extend_from_slice(b"half");
                panic!("encoder bug");
            })
        }));
        assert!(panicked.is_err());
        assert!(wal.failure().is_none());
        append(&wal, &record(1));
        wal.commit().wait().expect("commit");
        wal.close().expect("close");
        let (records, _) = replay_all(&fs, &dir(), 1).expect("replay");
        assert_eq!(records, [record(1)]);
    }

    #[tokio::test]
    async fn commit_can_be_awaited_or_waited_on_a_runtime_thread() {
        let fs = sim();
        let wal = start(&fs, Durability::Always, SEGMENT_BYTES_DEFAULT);
        append(&wal, &record(0));
        wal.commit().await.expect("await");
        append(&wal, &record(1));
        // Blocking on a runtime thread is poor form, but must not panic (open() does it).
        wal.commit().wait().expect("wait");
        assert_eq!(wal.rotate().expect("rotate"), 2);
        wal.close().expect("close");
    }
}
