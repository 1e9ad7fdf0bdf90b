//! The file layer: every byte the embedded store reads or writes goes through [`Fs`].
//!
//! Two implementations. [`OsFs`] is the real file system. [`SimFs`] is an in-memory disk for
//! tests that models what survives a power loss (synced file contents, synced directory entries,
//! and possibly a torn, garbled piece of what was not synced) and injects faults at any chosen
//! mutating call, so the log's crash and error handling can be checked call by call.
//!
//! This module owns durability *mechanics* (what `sync` and `sync_dir` mean) and never decides
//! *policy*: it knows nothing of segments, frames, records or when to fsync.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// The file operations the embedded store needs, and nothing else.
pub trait Fs: Send + Sync + fmt::Debug + 'static {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// File names (not paths) directly in `dir`, sorted.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn io::Read + Send>>;
    fn file_len(&self, path: &Path) -> io::Result<u64>;
    /// Creates a new file (truncating any existing one) for writing.
    fn create(&self, path: &Path) -> io::Result<Box<dyn FsFile>>;
    /// Cuts a file to `len` bytes and makes that durable.
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Makes creations, renames and removals in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// An exclusive lock on `path` (created if missing), held until the guard drops. If another
    /// process or another open store holds it, fails at once with an error whose message says the
    /// data directory is in use by another process and names the path.
    fn lock(&self, path: &Path) -> io::Result<Box<dyn std::any::Any + Send + Sync>>;
    /// Makes `dir` private to its owner: the directory mode 0700 and every file in it 0600,
    /// whatever they were. Returns one line per change made (for the log). A file layer without
    /// permissions (the simulated disk) has nothing to do.
    fn restrict(&self, _dir: &Path) -> io::Result<Vec<String>> {
        Ok(Vec::new())
    }
}

/// A file open for appending, from [`Fs::create`].
pub trait FsFile: Send + fmt::Debug {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;
    /// fdatasync: makes the file's contents durable (not its directory entry; see
    /// [`Fs::sync_dir`]).
    fn sync(&mut self) -> io::Result<()>;
    /// Cuts the file to `len` bytes through this handle (no new file descriptor, so it works
    /// when the process is out of them) and makes the new size durable. A file layer that cannot
    /// says so with an error, and the caller treats that like any failed cut.
    fn truncate(&mut self, _len: u64) -> io::Result<()> {
        Err(io::Error::new(io::ErrorKind::Unsupported, "this file layer cannot cut an open file"))
    }
}

/// Mode of the data directory: its owner only.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file the store creates: its owner only.
pub const FILE_MODE: u32 = 0o600;

/// Whether `e` says a resource ran out (file descriptors, disk space or quota) rather than that
/// the disk failed: `EMFILE`, `ENFILE`, `ENOSPC`, `EDQUOT`.
pub fn is_exhaustion(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOSPC | libc::EDQUOT))
}

/// Whether `e` says the process or the system is out of file descriptors: `EMFILE`, `ENFILE`.
pub fn is_out_of_files(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

fn in_use_error(path: &Path) -> io::Error {
    let dir = path.parent().unwrap_or(path);
    io::Error::new(
        io::ErrorKind::WouldBlock,
        format!(
            "the data directory {} is in use by another process (or another open store): the lock {} is held",
            dir.display(),
            path.display()
        ),
    )
}

// ---------------------------------------------------------------------------------------------
// The real file system

/// The real file system, through `std::fs`.
#[derive(Clone, Copy, Debug, Default)]
pub struct OsFs;

#[derive(Debug)]
struct OsFile {
    file: std::fs::File,
}

impl FsFile for OsFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        // Unbuffered on purpose: the log hands over one whole batch per call.
        io::Write::write_all(&mut self.file, buf)
    }

    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)?;
        // The size is metadata: sync_all, not sync_data, so the cut itself is durable.
        self.file.sync_all()
    }
}

/// Sets `file`'s mode through its descriptor: the mode given at creation is masked by the
/// umask, this is not.
fn chmod_file(file: &std::fs::File, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(std::fs::Permissions::from_mode(mode))
}

/// Holds the lock file open; closing it (on drop) releases the lock.
#[derive(Debug)]
struct OsLock {
    _file: std::fs::File,
}

impl Fs for OsFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        // Parents a umask allows; the data directory itself is made private by `restrict`.
        std::fs::DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if !entry.file_type()?.is_file() {
                continue;
            }
            // Every file the store writes has an ASCII name; anything else is not ours.
            if let Ok(name) = entry.file_name().into_string() {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn io::Read + Send>> {
        Ok(Box::new(std::fs::File::open(path)?))
    }

    fn file_len(&self, path: &Path) -> io::Result<u64> {
        Ok(std::fs::metadata(path)?.len())
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(FILE_MODE).open(path)?;
        chmod_file(&file, FILE_MODE)?;
        Ok(Box::new(OsFile { file }))
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let file = std::fs::OpenOptions::new().write(true).open(path)?;
        file.set_len(len)?;
        // The size is metadata: sync_all, not sync_data, so the cut itself is durable.
        file.sync_all()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::File::open(dir)?.sync_all()
    }

    fn lock(&self, path: &Path) -> io::Result<Box<dyn std::any::Any + Send + Sync>> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(FILE_MODE)
            .open(path)?;
        chmod_file(&file, FILE_MODE)?;
        // flock(2) underneath: the lock belongs to this open file description, so a second open
        // in the same process conflicts too, which is what keeps two stores off one directory.
        match file.try_lock() {
            Ok(()) => Ok(Box::new(OsLock { _file: file })),
            Err(std::fs::TryLockError::WouldBlock) => Err(in_use_error(path)),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(io::Error::new(e.kind(), format!("locking {}: {e}", path.display())))
            }
        }
    }

    fn restrict(&self, dir: &Path) -> io::Result<Vec<String>> {
        use std::os::unix::fs::PermissionsExt;
        let mut changed = Vec::new();
        let mut set = |path: &Path, is_dir: bool, mode: u32| -> io::Result<()> {
            // symlink_metadata: never follow a link out of the directory.
            let meta = std::fs::symlink_metadata(path)?;
            if meta.file_type().is_symlink() || (!is_dir && !meta.is_file()) {
                return Ok(());
            }
            let old = meta.permissions().mode() & 0o7777;
            if old != mode {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
                changed.push(format!("{}: mode {old:04o} -> {mode:04o}", path.display()));
            }
            Ok(())
        };
        set(dir, true, DIR_MODE)?;
        for entry in std::fs::read_dir(dir)? {
            set(&entry?.path(), false, FILE_MODE)?;
        }
        Ok(changed)
    }
}

// ---------------------------------------------------------------------------------------------
// The simulated disk

/// A fault for [`SimFs::fail_at`] to inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The call returns an error and changes nothing.
    Error,
    /// A `write_all` puts only a prefix of its bytes into the file's volatile tail, then returns
    /// an error. On any other call this behaves like [`Fault::Error`].
    TornWrite,
    /// A `sync` returns an error and, like Linux after a failed fsync, the file's unsynced tail is
    /// gone. On `sync_dir` the directory's unsynced entries revert. On any other call this behaves
    /// like [`Fault::Error`].
    SyncError,
    /// The disk is full (`ENOSPC`): a `write_all` puts a prefix of its bytes into the file (maybe
    /// none), as `write(2)` does when space runs out, then fails; a `sync` fails and drops the
    /// unsynced tail like [`Fault::SyncError`] (writeback found no space); any other call fails
    /// and changes nothing.
    NoSpace,
    /// The process is out of file descriptors (`EMFILE`): the call fails and changes nothing.
    NoFiles,
}

/// An in-memory disk that models power loss and injects faults. Clones share one disk.
///
/// The model:
/// - A file's contents are a durable prefix plus a volatile tail (written, not synced).
///   [`FsFile::sync`] and [`Fs::truncate`] make the whole file durable.
/// - Creations, renames and removals change the live directory at once but become durable only
///   at [`Fs::sync_dir`] of the parent. Directories themselves are durable as soon as made.
/// - Reads see live state (like a page cache).
/// - [`SimFs::crash`] is a power loss: unsynced directory changes revert, unsynced tails are
///   dropped except for a seeded-random prefix that may survive, its last bytes possibly garbled.
///   Then the disk is freshly booted: locks are released, and files opened before the crash
///   refuse further use (that process is gone).
///
/// Mutating calls (`write_all`, `sync`, `create`, `truncate`, `rename`, `remove`, `sync_dir`)
/// are numbered from 0; [`SimFs::fail_at`] makes a chosen one fail.
#[derive(Clone, Default)]
pub struct SimFs {
    disk: Arc<Mutex<Disk>>,
}

type InodeId = u64;

#[derive(Clone, Debug, Default)]
struct Inode {
    data: Vec<u8>,
    /// `data[..synced]` is durable; the rest is the volatile tail.
    synced: usize,
}

#[derive(Clone, Default)]
struct Disk {
    inodes: BTreeMap<InodeId, Inode>,
    inode_next: InodeId,
    /// The directory as processes see it.
    live: BTreeMap<PathBuf, InodeId>,
    /// The directory as it would be found after a power loss.
    durable: BTreeMap<PathBuf, InodeId>,
    dirs: BTreeSet<PathBuf>,
    locks: BTreeSet<PathBuf>,
    /// Bumped by every crash; handles from an earlier boot refuse to work.
    boot: u64,
    ops: u64,
    faults: BTreeMap<u64, Fault>,
    syncs: u64,
    sync_latency: Duration,
    /// Every call that opens a file fails with `EMFILE` while set.
    files_exhausted: bool,
    /// Writes past this many bytes of file data in total fail with `ENOSPC`.
    space_bytes_max: Option<u64>,
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{}: no such file or directory (simulated)", path.display()))
}

fn injected(n: u64, fault: Fault) -> io::Error {
    match fault {
        // The real errno, so the store's classification is what it would be on a real disk.
        // The real errno (which `io::Error::new` would hide), so the store classifies the error
        // as it would on a real disk.
        Fault::NoSpace => io::Error::from_raw_os_error(libc::ENOSPC),
        Fault::NoFiles => io::Error::from_raw_os_error(libc::EMFILE),
        _ => io::Error::other(format!("injected fault {fault:?} at mutating call {n}")),
    }
}

/// splitmix64: tiny, seedable, good enough to pick torn lengths.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform-ish in `0..n`; 0 when `n` is 0.
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
}

impl Disk {
    /// Counts a mutating call and returns the fault planned for it, if any.
    fn op(&mut self) -> (u64, Option<Fault>) {
        let n = self.ops;
        self.ops += 1;
        (n, self.faults.remove(&n))
    }

    /// `EMFILE` while [`SimFs::set_files_exhausted`] is on: for every call that opens a file.
    fn open_check(&self) -> io::Result<()> {
        if self.files_exhausted { Err(io::Error::from_raw_os_error(libc::EMFILE)) } else { Ok(()) }
    }

    /// Bytes of file data the disk holds (what [`SimFs::set_space_bytes_max`] limits).
    fn bytes_stored(&self) -> u64 {
        self.inodes.values().map(|i| i.data.len() as u64).sum()
    }

    fn dir_exists(&self, dir: &Path) -> bool {
        self.dirs.contains(dir)
    }

    fn parent_exists(&self, path: &Path) -> bool {
        path.parent().is_some_and(|p| self.dir_exists(p))
    }

    fn inode_new(&mut self) -> InodeId {
        let id = self.inode_next;
        self.inode_next += 1;
        self.inodes.insert(id, Inode::default());
        id
    }

    fn crash(&mut self, seed: u64) {
        let mut rng = Rng(seed);
        self.live = self.durable.clone();
        let reachable: BTreeSet<InodeId> = self.durable.values().copied().collect();
        self.inodes.retain(|id, _| reachable.contains(id));
        for inode in self.inodes.values_mut() {
            let tail = (inode.data.len() - inode.synced) as u64;
            if tail > 0 {
                // Bias toward the edges (nothing, everything) as well as anything between.
                let keep = match rng.below(3) {
                    0 => 0,
                    1 => tail,
                    _ => rng.below(tail + 1),
                } as usize;
                inode.data.truncate(inode.synced + keep);
                if keep > 0 && rng.below(2) == 0 {
                    let garbled = 1 + rng.below(keep.min(8) as u64) as usize;
                    let len = inode.data.len();
                    for byte in &mut inode.data[len - garbled..] {
                        // `| 1` so every chosen byte really changes.
                        *byte ^= (rng.next() as u8) | 1;
                    }
                }
            }
            inode.synced = inode.data.len();
        }
        self.locks.clear();
        self.boot += 1;
    }
}

impl SimFs {
    pub fn new() -> SimFs {
        SimFs::default()
    }

    fn disk(&self) -> MutexGuard<'_, Disk> {
        // A test that panicked mid-call leaves the disk as consistent as any crash would.
        self.disk.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes the `n`-th mutating call (counted from 0 since construction or the last
    /// [`SimFs::reset_op_count`]) fail with `fault`.
    pub fn fail_at(&self, n: u64, fault: Fault) {
        self.disk().faults.insert(n, fault);
    }

    /// Drops every planned fault not yet reached.
    pub fn clear_faults(&self) {
        self.disk().faults.clear();
    }

    /// Mutating calls made so far (since construction or the last reset).
    pub fn op_count(&self) -> u64 {
        self.disk().ops
    }

    /// Restarts the count of mutating calls at 0. Planned faults stay planned.
    pub fn reset_op_count(&self) {
        self.disk().ops = 0;
    }

    /// `FsFile::sync` calls made since construction, failed ones included.
    pub fn sync_count(&self) -> u64 {
        self.disk().syncs
    }

    /// While on, every call that opens a file (`create`, `truncate` by path, `sync_dir`,
    /// `open_read`, `lock`) fails with `EMFILE` and changes nothing, as when the process is out of
    /// file descriptors. Calls on files already open go on working.
    pub fn set_files_exhausted(&self, exhausted: bool) {
        self.disk().files_exhausted = exhausted;
    }

    /// A disk of this many bytes of file data (`None`: unlimited). A write that does not fit puts
    /// what fits and fails with `ENOSPC`, as `write(2)` does on a full disk.
    pub fn set_space_bytes_max(&self, bytes: Option<u64>) {
        self.disk().space_bytes_max = bytes;
    }

    /// Bytes of file data on the disk now (unsynced tails included).
    pub fn bytes_stored(&self) -> u64 {
        self.disk().bytes_stored()
    }

    /// Makes every `FsFile::sync` take this long, outside the disk's lock, so concurrent
    /// writers behave as they would against a real disk's fsync latency.
    pub fn set_sync_latency(&self, latency: Duration) {
        self.disk().sync_latency = latency;
    }

    /// The length of `path`'s contents that would survive a power loss now without any torn
    /// tail, or `None` if the file itself would not survive (its creation is not yet durable).
    pub fn durable_len(&self, path: &Path) -> Option<u64> {
        let disk = self.disk();
        let id = disk.durable.get(path)?;
        disk.inodes.get(id).map(|inode| inode.synced as u64)
    }

    /// Simulated power loss, then a fresh boot of the same disk; see [`SimFs`]. The same seed on
    /// the same disk state gives the same result. Files opened before refuse further use. The op
    /// count and planned faults carry on (they belong to the test, not to the disk).
    pub fn crash(&self, seed: u64) {
        self.disk().crash(seed);
    }

    /// A separate disk holding what this one would hold after [`SimFs::crash`] with `seed`,
    /// leaving this one untouched: lets a test check what is durable at a point while the
    /// workload goes on.
    pub fn crash_copy(&self, seed: u64) -> SimFs {
        let mut copy = self.disk().clone();
        copy.crash(seed);
        copy.sync_latency = Duration::ZERO;
        copy.faults.clear();
        copy.ops = 0;
        copy.files_exhausted = false;
        copy.space_bytes_max = None;
        SimFs { disk: Arc::new(Mutex::new(copy)) }
    }

    /// Everything a reader would see in `path` now (volatile tail included).
    pub fn read_all(&self, path: &Path) -> io::Result<Vec<u8>> {
        let disk = self.disk();
        let id = disk.live.get(path).ok_or_else(|| not_found(path))?;
        Ok(disk.inodes.get(id).map(|i| i.data.clone()).unwrap_or_default())
    }

    /// Overwrites bytes of `path` in place and makes them durable, as a disk fault would:
    /// for corruption tests.
    pub fn corrupt(&self, path: &Path, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let mut disk = self.disk();
        let id = *disk.live.get(path).ok_or_else(|| not_found(path))?;
        let inode = disk.inodes.get_mut(&id).ok_or_else(|| not_found(path))?;
        let start = offset as usize;
        let end = start + bytes.len();
        if end > inode.data.len() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "corrupt past the end of the file"));
        }
        inode.data[start..end].copy_from_slice(bytes);
        inode.synced = inode.synced.max(end);
        Ok(())
    }
}

impl fmt::Debug for SimFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `try_lock`: debug-printing a handle must never deadlock on its own disk.
        match self.disk.try_lock() {
            Ok(disk) => f.debug_tuple("SimFs").field(&*disk).finish(),
            Err(_) => f.write_str("SimFs(<in use>)"),
        }
    }
}

/// A summary: the contents would swamp any log.
impl fmt::Debug for Disk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Disk")
            .field("files", &self.live.keys().collect::<Vec<_>>())
            .field("boot", &self.boot)
            .field("ops", &self.ops)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct SimFile {
    disk: Arc<Mutex<Disk>>,
    inode: InodeId,
    boot: u64,
    path: PathBuf,
}

impl SimFile {
    fn disk(&self) -> io::Result<MutexGuard<'_, Disk>> {
        let disk = self.disk.lock().unwrap_or_else(PoisonError::into_inner);
        if disk.boot != self.boot {
            return Err(io::Error::other(format!(
                "{}: opened before a simulated crash; that process is gone",
                self.path.display()
            )));
        }
        Ok(disk)
    }
}

impl FsFile for SimFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let mut disk = self.disk()?;
        let (n, fault) = disk.op();
        let room = match disk.space_bytes_max {
            Some(max) => max.saturating_sub(disk.bytes_stored()),
            None => u64::MAX,
        };
        let inode = self.inode;
        let Some(file) = disk.inodes.get_mut(&inode) else {
            return Err(not_found(&self.path));
        };
        match fault {
            None if (buf.len() as u64) <= room => {
                file.data.extend_from_slice(buf);
                Ok(())
            }
            None => {
                file.data.extend_from_slice(&buf[..room as usize]);
                Err(io::Error::from_raw_os_error(libc::ENOSPC))
            }
            Some(f @ (Fault::TornWrite | Fault::NoSpace)) => {
                let prefix = Rng(n).below(buf.len() as u64) as usize;
                file.data.extend_from_slice(&buf[..prefix]);
                Err(injected(n, f))
            }
            Some(f) => Err(injected(n, f)),
        }
    }

    fn sync(&mut self) -> io::Result<()> {
        let latency = {
            let mut disk = self.disk()?;
            disk.syncs += 1;
            disk.sync_latency
        };
        if !latency.is_zero() {
            std::thread::sleep(latency);
        }
        let mut disk = self.disk()?;
        let (n, fault) = disk.op();
        let inode = self.inode;
        let Some(file) = disk.inodes.get_mut(&inode) else {
            return Err(not_found(&self.path));
        };
        match fault {
            None => {
                file.synced = file.data.len();
                Ok(())
            }
            Some(f @ (Fault::SyncError | Fault::NoSpace)) => {
                file.data.truncate(file.synced);
                Err(injected(n, f))
            }
            Some(f) => Err(injected(n, f)),
        }
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        let mut disk = self.disk()?;
        let (n, fault) = disk.op();
        fault_check(n, fault)?;
        let inode = disk.inodes.get_mut(&self.inode).ok_or_else(|| not_found(&self.path))?;
        inode.data.resize(len as usize, 0);
        inode.synced = inode.data.len();
        Ok(())
    }
}

#[derive(Debug)]
struct SimLock {
    disk: Arc<Mutex<Disk>>,
    path: PathBuf,
    boot: u64,
}

impl Drop for SimLock {
    fn drop(&mut self) {
        let mut disk = self.disk.lock().unwrap_or_else(PoisonError::into_inner);
        // A crash already released it; a later boot's holder must keep its lock.
        if disk.boot == self.boot {
            disk.locks.remove(&self.path);
        }
    }
}

/// An injected fault on a call where every kind acts as a plain error.
fn fault_check(n: u64, fault: Option<Fault>) -> io::Result<()> {
    match fault {
        None => Ok(()),
        Some(f) => Err(injected(n, f)),
    }
}

impl Fs for SimFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut disk = self.disk();
        for ancestor in dir.ancestors() {
            if !ancestor.as_os_str().is_empty() {
                disk.dirs.insert(ancestor.to_path_buf());
            }
        }
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let disk = self.disk();
        if !disk.dir_exists(dir) {
            return Err(not_found(dir));
        }
        let mut names: Vec<String> = disk
            .live
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .collect();
        names.sort();
        Ok(names)
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn io::Read + Send>> {
        self.disk().open_check()?;
        Ok(Box::new(io::Cursor::new(self.read_all(path)?)))
    }

    fn file_len(&self, path: &Path) -> io::Result<u64> {
        let disk = self.disk();
        let id = disk.live.get(path).ok_or_else(|| not_found(path))?;
        Ok(disk.inodes.get(id).map_or(0, |i| i.data.len() as u64))
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        let mut disk = self.disk();
        let (n, fault) = disk.op();
        fault_check(n, fault)?;
        disk.open_check()?;
        if !disk.parent_exists(path) {
            return Err(not_found(path));
        }
        // A new inode rather than truncating the old one: after a crash before `sync_dir` the old
        // contents come back, one of the outcomes a real O_TRUNC allows.
        let id = disk.inode_new();
        disk.live.insert(path.to_path_buf(), id);
        Ok(Box::new(SimFile { disk: self.disk.clone(), inode: id, boot: disk.boot, path: path.to_path_buf() }))
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let mut disk = self.disk();
        let (n, fault) = disk.op();
        fault_check(n, fault)?;
        disk.open_check()?;
        let id = *disk.live.get(path).ok_or_else(|| not_found(path))?;
        let inode = disk.inodes.get_mut(&id).ok_or_else(|| not_found(path))?;
        inode.data.resize(len as usize, 0);
        inode.synced = inode.data.len();
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut disk = self.disk();
        let (n, fault) = disk.op();
        fault_check(n, fault)?;
        if !disk.parent_exists(to) {
            return Err(not_found(to));
        }
        let id = disk.live.remove(from).ok_or_else(|| not_found(from))?;
        disk.live.insert(to.to_path_buf(), id);
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut disk = self.disk();
        let (n, fault) = disk.op();
        fault_check(n, fault)?;
        disk.live.remove(path).ok_or_else(|| not_found(path))?;
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut disk = self.disk();
        let (n, fault) = disk.op();
        if fault.is_none() {
            disk.open_check()?;
        }
        if !disk.dir_exists(dir) {
            return Err(not_found(dir));
        }
        let in_dir: BTreeSet<PathBuf> =
            disk.live.keys().chain(disk.durable.keys()).filter(|p| p.parent() == Some(dir)).cloned().collect();
        match fault {
            None => {
                for path in in_dir {
                    match disk.live.get(&path).copied() {
                        Some(id) => disk.durable.insert(path, id),
                        None => disk.durable.remove(&path),
                    };
                }
                Ok(())
            }
            Some(Fault::SyncError) => {
                // The directory's pending changes are lost, as a file's tail is after a failed
                // fsync: the live view falls back to what is durable.
                for path in in_dir {
                    match disk.durable.get(&path).copied() {
                        Some(id) => disk.live.insert(path, id),
                        None => disk.live.remove(&path),
                    };
                }
                Err(injected(n, Fault::SyncError))
            }
            Some(f) => fault_check(n, Some(f)),
        }
    }

    fn lock(&self, path: &Path) -> io::Result<Box<dyn std::any::Any + Send + Sync>> {
        let mut disk = self.disk();
        disk.open_check()?;
        if !disk.parent_exists(path) {
            return Err(not_found(path));
        }
        if disk.locks.contains(path) {
            return Err(in_use_error(path));
        }
        if !disk.live.contains_key(path) {
            let id = disk.inode_new();
            disk.live.insert(path.to_path_buf(), id);
        }
        disk.locks.insert(path.to_path_buf());
        Ok(Box::new(SimLock { disk: self.disk.clone(), path: path.to_path_buf(), boot: disk.boot }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn dir() -> PathBuf {
        PathBuf::from("/data")
    }

    fn file(name: &str) -> PathBuf {
        dir().join(name)
    }

    fn sim() -> SimFs {
        let fs = SimFs::new();
        fs.create_dir_all(&dir()).expect("mkdir");
        fs
    }

    fn read(fs: &dyn Fs, path: &Path) -> Vec<u8> {
        let mut out = Vec::new();
        fs.open_read(path).expect("open").read_to_end(&mut out).expect("read");
        out
    }

    /// A durable, dir-synced file holding `synced` then an unsynced `tail`.
    fn file_with_tail(fs: &SimFs, name: &str, synced: &[u8], tail: &[u8]) -> Box<dyn FsFile> {
        let mut f = fs.create(&file(name)).expect("create");
        fs.sync_dir(&dir()).expect("sync_dir");
        f.write_all(synced).expect("write");
        f.sync().expect("sync");
        f.write_all(tail).expect("write");
        f
    }

    #[test]
    fn reads_see_unsynced_writes() {
        let fs = sim();
        let mut f = fs.create(&file("a")).expect("create");
        f.write_all(b"hello").expect("write");
        assert_eq!(read(&fs, &file("a")), b"hello");
        assert_eq!(fs.file_len(&file("a")).expect("len"), 5);
        assert_eq!(fs.list(&dir()).expect("list"), ["a"]);
    }

    #[test]
    fn sync_makes_contents_durable() {
        let fs = sim();
        let mut f = file_with_tail(&fs, "a", b"durable", b"");
        assert_eq!(fs.durable_len(&file("a")), Some(7));
        f.write_all(b" volatile").expect("write");
        assert_eq!(fs.durable_len(&file("a")), Some(7));
        f.sync().expect("sync");
        assert_eq!(fs.durable_len(&file("a")), Some(16));
        fs.crash(1);
        assert_eq!(read(&fs, &file("a")), b"durable volatile");
    }

    #[test]
    fn crash_keeps_synced_bytes_and_at_most_a_garbled_prefix_of_the_tail() {
        let tail: Vec<u8> = (0..64u8).collect();
        let mut kept_lengths = BTreeSet::new();
        let mut garbled = 0;
        for seed in 0..200 {
            let fs = sim();
            let _f = file_with_tail(&fs, "a", b"synced", &tail);
            fs.crash(seed);
            let after = read(&fs, &file("a"));
            assert!(after.starts_with(b"synced"), "seed {seed}: synced bytes lost");
            let survived = &after[6..];
            assert!(survived.len() <= tail.len(), "seed {seed}");
            let clean = survived.iter().zip(&tail).take_while(|(a, b)| a == b).count();
            // Garbling touches at most the last 8 surviving bytes.
            assert!(survived.len() - clean <= 8, "seed {seed}: garbled too far back");
            if clean < survived.len() {
                garbled += 1;
            }
            kept_lengths.insert(survived.len());
            // After the crash everything present is durable.
            assert_eq!(fs.durable_len(&file("a")), Some(after.len() as u64));
        }
        assert!(kept_lengths.contains(&0) && kept_lengths.contains(&64), "{kept_lengths:?}");
        assert!(kept_lengths.len() > 10, "torn lengths vary: {kept_lengths:?}");
        assert!(garbled > 10, "garbling happens: {garbled}");
    }

    #[test]
    fn crash_is_deterministic_for_a_seed() {
        let run = |seed| {
            let fs = sim();
            let _f = file_with_tail(&fs, "a", b"x", &[7; 100]);
            fs.crash(seed);
            read(&fs, &file("a"))
        };
        for seed in 0..20 {
            assert_eq!(run(seed), run(seed));
        }
    }

    #[test]
    fn creation_is_volatile_until_the_directory_is_synced() {
        let fs = sim();
        let mut f = fs.create(&file("a")).expect("create");
        f.write_all(b"data").expect("write");
        f.sync().expect("sync");
        assert_eq!(fs.durable_len(&file("a")), None, "contents synced, entry not");
        fs.crash(0);
        assert!(fs.list(&dir()).expect("list").is_empty());
        assert_eq!(fs.open_read(&file("a")).err().map(|e| e.kind()), Some(io::ErrorKind::NotFound));

        let mut f = fs.create(&file("b")).expect("create");
        f.write_all(b"data").expect("write");
        f.sync().expect("sync");
        fs.sync_dir(&dir()).expect("sync_dir");
        fs.crash(0);
        assert_eq!(read(&fs, &file("b")), b"data");
    }

    #[test]
    fn unsynced_rename_and_remove_revert_on_crash() {
        let fs = sim();
        let _a = file_with_tail(&fs, "a", b"A", b"");
        let _b = file_with_tail(&fs, "b", b"B", b"");
        fs.rename(&file("a"), &file("c")).expect("rename");
        fs.remove(&file("b")).expect("remove");
        assert_eq!(fs.list(&dir()).expect("list"), ["c"]);
        fs.crash(0);
        assert_eq!(fs.list(&dir()).expect("list"), ["a", "b"]);

        fs.rename(&file("a"), &file("c")).expect("rename");
        fs.remove(&file("b")).expect("remove");
        fs.sync_dir(&dir()).expect("sync_dir");
        fs.crash(0);
        assert_eq!(fs.list(&dir()).expect("list"), ["c"]);
        assert_eq!(read(&fs, &file("c")), b"A");
    }

    #[test]
    fn rename_replaces_the_target() {
        let fs = sim();
        let _a = file_with_tail(&fs, "a", b"new", b"");
        let _b = file_with_tail(&fs, "b", b"old", b"");
        fs.rename(&file("a"), &file("b")).expect("rename");
        fs.sync_dir(&dir()).expect("sync_dir");
        fs.crash(0);
        assert_eq!(fs.list(&dir()).expect("list"), ["b"]);
        assert_eq!(read(&fs, &file("b")), b"new");
    }

    #[test]
    fn truncate_is_durable_at_once() {
        let fs = sim();
        let _f = file_with_tail(&fs, "a", b"0123456789", b"tail");
        fs.truncate(&file("a"), 4).expect("truncate");
        assert_eq!(fs.durable_len(&file("a")), Some(4));
        fs.crash(3);
        assert_eq!(read(&fs, &file("a")), b"0123");
    }

    #[test]
    fn handles_from_before_a_crash_refuse_to_work() {
        let fs = sim();
        let mut f = file_with_tail(&fs, "a", b"x", b"");
        fs.crash(0);
        assert!(f.write_all(b"y").is_err());
        assert!(f.sync().is_err());
        assert_eq!(read(&fs, &file("a")), b"x");
    }

    #[test]
    fn crash_copy_leaves_the_original_alone() {
        let fs = sim();
        let mut f = file_with_tail(&fs, "a", b"x", b"yyyy");
        let copy = fs.crash_copy(0);
        f.write_all(b"z").expect("the original keeps working");
        assert_eq!(read(&fs, &file("a")), b"xyyyyz");
        assert!(read(&copy, &file("a")).starts_with(b"x"));
        assert!(read(&copy, &file("a")).len() <= 5);
    }

    #[test]
    fn op_count_counts_mutating_calls_only() {
        let fs = sim();
        let mut f = fs.create(&file("a")).expect("create"); // 0
        f.write_all(b"x").expect("write"); // 1
        f.sync().expect("sync"); // 2
        fs.sync_dir(&dir()).expect("sync_dir"); // 3
        let _ = fs.list(&dir()).expect("list");
        let _ = fs.file_len(&file("a")).expect("len");
        let _ = read(&fs, &file("a"));
        fs.rename(&file("a"), &file("b")).expect("rename"); // 4
        fs.truncate(&file("b"), 0).expect("truncate"); // 5
        fs.remove(&file("b")).expect("remove"); // 6
        assert_eq!(fs.op_count(), 7);
        assert_eq!(fs.sync_count(), 1);
        fs.reset_op_count();
        assert_eq!(fs.op_count(), 0);
    }

    /// Plans `Fault::Error` at the next mutating call and asserts that call fails.
    fn next_call_fails(fs: &SimFs, kind: Fault, result: impl FnOnce() -> io::Result<()>) {
        fs.fail_at(fs.op_count(), kind);
        let err = result().expect_err("the injected fault must fail the call");
        assert!(err.to_string().contains("injected fault"), "{err}");
    }

    #[test]
    fn error_fault_fails_each_kind_of_call_and_changes_nothing() {
        let fs = sim();
        next_call_fails(&fs, Fault::Error, || fs.create(&file("a")).map(drop));
        assert!(fs.list(&dir()).expect("list").is_empty());

        let mut f = file_with_tail(&fs, "a", b"synced", b"tail");
        next_call_fails(&fs, Fault::Error, || f.write_all(b"more"));
        assert_eq!(read(&fs, &file("a")), b"syncedtail");
        next_call_fails(&fs, Fault::Error, || f.sync());
        assert_eq!(read(&fs, &file("a")), b"syncedtail", "a plain error keeps the tail");
        assert_eq!(fs.durable_len(&file("a")), Some(6));
        next_call_fails(&fs, Fault::Error, || fs.truncate(&file("a"), 1));
        assert_eq!(fs.file_len(&file("a")).expect("len"), 10);
        next_call_fails(&fs, Fault::Error, || fs.rename(&file("a"), &file("b")));
        next_call_fails(&fs, Fault::Error, || fs.remove(&file("a")));
        assert_eq!(fs.list(&dir()).expect("list"), ["a"]);

        let _b = fs.create(&file("b")).expect("create");
        next_call_fails(&fs, Fault::Error, || fs.sync_dir(&dir()));
        assert_eq!(fs.durable_len(&file("b")), None, "the failed sync_dir made nothing durable");
        // Each call above counted once, failed or not; the fault was used up.
        fs.sync_dir(&dir()).expect("sync_dir");
        assert_eq!(fs.durable_len(&file("b")), Some(0));
    }

    #[test]
    fn torn_write_fault_leaves_a_prefix_and_fails() {
        let fs = sim();
        let mut f = file_with_tail(&fs, "a", b"head", b"");
        let n = fs.op_count();
        fs.fail_at(n, Fault::TornWrite);
        let payload = [9u8; 100];
        let err = f.write_all(&payload).expect_err("torn");
        assert!(err.to_string().contains("TornWrite"), "{err}");
        let data = read(&fs, &file("a"));
        assert!(data.starts_with(b"head"));
        assert!(data.len() < 104, "only a prefix landed");
        assert!(data[4..].iter().all(|&b| b == 9));
        assert_eq!(fs.durable_len(&file("a")), Some(4), "and only in the volatile tail");
    }

    #[test]
    fn sync_error_fault_drops_the_volatile_tail() {
        let fs = sim();
        let mut f = file_with_tail(&fs, "a", b"head", b"tail");
        fs.fail_at(fs.op_count(), Fault::SyncError);
        assert!(f.sync().is_err());
        assert_eq!(read(&fs, &file("a")), b"head", "unsynced bytes are gone, as after a failed fsync");
        assert_eq!(fs.durable_len(&file("a")), Some(4));
        // A later sync succeeds but cannot bring the tail back.
        f.sync().expect("sync");
        assert_eq!(read(&fs, &file("a")), b"head");
    }

    #[test]
    fn sync_error_on_a_directory_reverts_its_pending_changes() {
        let fs = sim();
        let _a = file_with_tail(&fs, "a", b"A", b"");
        let _b = fs.create(&file("b")).expect("create");
        fs.remove(&file("a")).expect("remove");
        fs.fail_at(fs.op_count(), Fault::SyncError);
        assert!(fs.sync_dir(&dir()).is_err());
        assert_eq!(fs.list(&dir()).expect("list"), ["a"]);
    }

    #[test]
    fn fault_kinds_on_other_calls_act_as_plain_errors() {
        let fs = sim();
        let mut f = file_with_tail(&fs, "a", b"A", b"");
        fs.fail_at(fs.op_count(), Fault::SyncError);
        assert!(f.write_all(b"x").is_err());
        assert_eq!(read(&fs, &file("a")), b"A");
        fs.fail_at(fs.op_count(), Fault::TornWrite);
        assert!(fs.rename(&file("a"), &file("b")).is_err());
        assert_eq!(fs.list(&dir()).expect("list"), ["a"]);
    }

    #[test]
    fn sim_lock_is_exclusive_until_dropped_or_crashed() {
        let fs = sim();
        let path = file("LOCK");
        let guard = fs.lock(&path).expect("first lock");
        let err = fs.lock(&path).expect_err("second lock");
        assert!(err.to_string().contains("in use by another process"), "{err}");
        drop(guard);
        let guard = fs.lock(&path).expect("lock after drop");
        fs.crash(0);
        let _again = fs.lock(&path).expect("a crash releases locks");
        drop(guard); // The old boot's guard must not release the new holder's lock.
        assert!(fs.lock(&path).is_err());
    }

    #[test]
    fn os_lock_is_exclusive_with_a_clear_message() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("LOCK");
        let guard = OsFs.lock(&path).expect("first lock");
        let err = OsFs.lock(&path).expect_err("second lock must fail");
        let message = err.to_string();
        assert!(message.contains("in use by another process"), "{message}");
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        drop(guard);
        let _guard = OsFs.lock(&path).expect("lock works again after the guard drops");
    }

    #[test]
    fn os_fs_round_trip() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let d = tmp.path().join("sub");
        OsFs.create_dir_all(&d).expect("mkdir");
        let a = d.join("a");
        let mut f = OsFs.create(&a).expect("create");
        f.write_all(b"hello world").expect("write");
        f.sync().expect("sync");
        OsFs.sync_dir(&d).expect("sync_dir");
        assert_eq!(OsFs.file_len(&a).expect("len"), 11);
        OsFs.truncate(&a, 5).expect("truncate");
        assert_eq!(read(&OsFs, &a), b"hello");
        OsFs.rename(&a, &d.join("b")).expect("rename");
        std::fs::create_dir(d.join("nested")).expect("mkdir");
        assert_eq!(OsFs.list(&d).expect("list"), ["b"], "directories are not listed");
        OsFs.remove(&d.join("b")).expect("remove");
        assert!(OsFs.list(&d).expect("list").is_empty());
    }

    #[test]
    fn no_space_fault_puts_a_prefix_and_fails_with_enospc() {
        let fs = sim();
        let mut f = file_with_tail(&fs, "a", b"head", b"");
        fs.fail_at(fs.op_count(), Fault::NoSpace);
        let err = f.write_all(&[9u8; 100]).expect_err("no space");
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
        assert!(is_exhaustion(&err));
        let data = read(&fs, &file("a"));
        assert!(data.len() < 104 && data.starts_with(b"head"), "a prefix at most");
        fs.fail_at(fs.op_count(), Fault::NoSpace);
        assert_eq!(f.sync().expect_err("no space at writeback").raw_os_error(), Some(libc::ENOSPC));
        assert_eq!(read(&fs, &file("a")), b"head", "like a failed fsync, the tail is gone");
    }

    #[test]
    fn no_files_fault_fails_with_emfile_and_changes_nothing() {
        let fs = sim();
        fs.fail_at(fs.op_count(), Fault::NoFiles);
        let err = fs.create(&file("a")).expect_err("no descriptors");
        assert_eq!(err.raw_os_error(), Some(libc::EMFILE));
        assert!(is_out_of_files(&err) && is_exhaustion(&err));
        assert!(fs.list(&dir()).expect("list").is_empty());
    }

    #[test]
    fn a_space_limit_writes_what_fits_then_fails_until_lifted() {
        let fs = sim();
        let mut f = fs.create(&file("a")).expect("create");
        fs.set_space_bytes_max(Some(10));
        f.write_all(b"0123456").expect("fits");
        let err = f.write_all(b"789abc").expect_err("full");
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
        assert_eq!(read(&fs, &file("a")), b"0123456789", "what fits lands");
        assert_eq!(fs.bytes_stored(), 10);
        // Cutting a file frees space, as on a real disk.
        f.truncate(7).expect("truncate through the handle");
        assert_eq!(fs.durable_len(&file("a")), None, "the entry itself was never synced");
        f.write_all(b"xyz").expect("fits again");
        fs.set_space_bytes_max(None);
        f.write_all(&[0; 1000]).expect("unlimited");
    }

    #[test]
    fn exhausted_files_refuse_every_open_but_not_open_files() {
        let fs = sim();
        let mut f = file_with_tail(&fs, "a", b"x", b"");
        fs.set_files_exhausted(true);
        for err in [
            fs.create(&file("b")).map(drop).expect_err("create"),
            fs.sync_dir(&dir()).expect_err("sync_dir"),
            fs.truncate(&file("a"), 0).expect_err("truncate by path"),
            fs.open_read(&file("a")).map(drop).expect_err("open_read"),
            fs.lock(&file("LOCK")).map(drop).expect_err("lock"),
        ] {
            assert_eq!(err.raw_os_error(), Some(libc::EMFILE), "{err}");
        }
        f.write_all(b"y").expect("an open file still works");
        f.sync().expect("sync");
        f.truncate(1).expect("truncate through the handle");
        fs.set_files_exhausted(false);
        assert_eq!(read(&fs, &file("a")), b"x");
    }

    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).expect("metadata").permissions().mode() & 0o7777
    }

    /// Issue #10: data files were created 0644. With a umask that allows everything, the store's
    /// directory is 0700 and every file 0600.
    #[test]
    // `umask(2)` has no safe wrapper in std; the workspace denies unsafe code everywhere else.
    #[allow(unsafe_code)]
    fn os_fs_creates_private_files_whatever_the_umask() {
        // SAFETY: umask only swaps the process's file-creation mask (it cannot fail); nextest
        // runs each test in its own process, and no other test here depends on the mask.
        let old = unsafe { libc::umask(0) };
        let tmp = tempfile::tempdir().expect("tempdir");
        let d = tmp.path().join("data");
        OsFs.create_dir_all(&d).expect("mkdir");
        let _lock = OsFs.lock(&d.join("LOCK")).expect("lock");
        let mut f = OsFs.create(&d.join("a")).expect("create");
        f.write_all(b"x").expect("write");
        assert_eq!(OsFs.restrict(&d).expect("restrict"), Vec::<String>::new(), "nothing left to fix");
        unsafe { libc::umask(old) };
        assert_eq!(mode(&d), DIR_MODE);
        assert_eq!(mode(&d.join("a")), FILE_MODE);
        assert_eq!(mode(&d.join("LOCK")), FILE_MODE);
    }

    #[test]
    fn restrict_fixes_an_existing_directory_and_its_files() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().expect("tempdir");
        let d = tmp.path().join("data");
        std::fs::create_dir(&d).expect("mkdir");
        std::fs::write(d.join("wal-00000000000000000001.log"), b"x").expect("write");
        std::fs::create_dir(d.join("sub")).expect("mkdir");
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::set_permissions(d.join("wal-00000000000000000001.log"), std::fs::Permissions::from_mode(0o644))
            .expect("chmod");
        let changed = OsFs.restrict(&d).expect("restrict");
        assert_eq!(changed.len(), 2, "{changed:?}");
        assert!(changed[0].contains("0755 -> 0700"), "{changed:?}");
        assert_eq!(mode(&d), 0o700);
        assert_eq!(mode(&d.join("wal-00000000000000000001.log")), 0o600);
        assert_eq!(mode(&d.join("sub")), 0o755, "only files are the store's");
        assert!(OsFs.restrict(&d).expect("again").is_empty());
    }
}
