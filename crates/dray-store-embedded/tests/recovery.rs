//! Recovery of the embedded store beyond the shared contract: snapshots taken under load, torn
//! tails, corruption, the directory lock, the memory budget (steps included), steps in snapshots,
//! and the refusal to go on after a failed fsync.

use std::path::Path;
use std::sync::Arc;

use dray_core::{Job, JobId, NewJob, Payload, QueueName, Timestamp, WorkerId};
use dray_store::{Ack, AckOutcome, Error, JobAck, JobFilter, JobInsert, JobLease, JobList, JobStep, Store};
use dray_store_embedded::fs::{Fault, SimFs};
use dray_store_embedded::{EmbeddedConfig, EmbeddedStore, OpenError};

const T0: Timestamp = Timestamp(1_700_000_000_000);

fn config(dir: &Path) -> EmbeddedConfig {
    let mut c = EmbeddedConfig::new(dir);
    c.seed = Some(3);
    c
}

fn queue() -> QueueName {
    QueueName::new("q").unwrap()
}

fn worker() -> WorkerId {
    WorkerId::new("w1").unwrap()
}

async fn insert(store: &EmbeddedStore, n: usize, now: Timestamp) -> Vec<JobId> {
    let jobs = (0..n).map(|i| NewJob::new(queue(), Payload::new(format!("{{\"n\":{i}}}").into_bytes()))).collect();
    store.job_insert(JobInsert { now, jobs }).await.unwrap().into_iter().map(|i| i.id).collect()
}

/// Leases `n` jobs and completes every other one, fails the rest.
async fn churn(store: &EmbeddedStore, n: usize, now: Timestamp) {
    let leased = store
        .job_lease(JobLease { now, queues: vec![queue()], count_max: n, worker: worker(), lease_ms: None })
        .await
        .unwrap();
    let acks = leased
        .iter()
        .enumerate()
        .map(|(i, j)| Ack {
            job: j.id,
            lease: j.lease,
            outcome: if i % 2 == 0 {
                AckOutcome::Complete { result: Some(Payload::new(&b"\"ok\""[..])) }
            } else {
                AckOutcome::Fail { error: "boom".into(), retryable: true, retry_after_ms: None, rate_limited: false }
            },
        })
        .collect();
    for r in store.job_ack(JobAck { now, acks }).await.unwrap() {
        r.unwrap();
    }
}

async fn all_jobs(store: &EmbeddedStore) -> Vec<Job> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .job_list(JobList { filter: JobFilter::default(), after, limit: 1000, newest_first: false })
            .await
            .unwrap();
        for s in &page.jobs {
            out.push(store.job_get(s.id).await.unwrap().unwrap());
        }
        match page.next {
            Some(n) => after = Some(n),
            None => return out,
        }
    }
}

fn segments(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_then_log_replays_to_the_same_state() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(config(dir.path())).unwrap();
    insert(&store, 300, T0).await;
    churn(&store, 100, T0).await;
    store.snapshot().unwrap();
    insert(&store, 200, T0.add_ms(1)).await;
    churn(&store, 150, T0.add_ms(2)).await;
    store.snapshot().unwrap();
    churn(&store, 50, T0.add_ms(3)).await;
    let before = all_jobs(&store).await;
    assert_eq!(before.len(), 500);
    store.close().unwrap();

    // Old segments were deleted by the second snapshot: recovery uses snapshot + tail only.
    let names: Vec<String> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(names.iter().filter(|n| n.ends_with(".snap")).count(), 1, "{names:?}");

    let store = EmbeddedStore::open(config(dir.path())).unwrap();
    assert_eq!(all_jobs(&store).await, before);
}

/// Locks go into snapshots, and the log after a snapshot replays over them: held locks come back
/// with their holders and tokens, released ones stay gone, and the next token is larger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_survive_snapshot_and_log_replay() {
    use dray_core::{LockName, LockOwner};
    use dray_store::{LockAcquire, LockList, LockRelease, LockStore};

    let acquire = |name: &str, owner: &str| LockAcquire {
        now: T0,
        name: LockName::new(name).unwrap(),
        owner: LockOwner::new(owner).unwrap(),
        ttl_ms: 60_000,
        permits: 2,
    };
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(config(dir.path())).unwrap();
    let kept = store.lock_acquire(acquire("kept", "a")).await.unwrap();
    let gone = store.lock_acquire(acquire("gone", "a")).await.unwrap();
    store.snapshot().unwrap();
    // After the snapshot: one lock gains a holder, the other is released.
    store.lock_acquire(acquire("kept", "b")).await.unwrap();
    let release = LockRelease {
        now: T0,
        name: LockName::new("gone").unwrap(),
        owner: LockOwner::new("a").unwrap(),
        token: gone.holder.token,
    };
    assert!(store.lock_release(release).await.unwrap());
    let list = LockList { now: T0, after: None, limit: 10 };
    let before = store.lock_list(list.clone()).await.unwrap();
    assert_eq!(before.len(), 1);
    assert_eq!(before[0].lock.holders.len(), 2);
    store.close().unwrap();

    for snapshot_again in [false, true] {
        let store = EmbeddedStore::open(config(dir.path())).unwrap();
        assert_eq!(store.lock_list(list.clone()).await.unwrap(), before);
        assert_eq!(store.lock_list(list.clone()).await.unwrap()[0].lock.holders[0], kept.holder);
        if snapshot_again {
            let next = store.lock_acquire(acquire("new", "c")).await.unwrap();
            assert!(next.holder.token > before[0].lock.holders[1].token);
        } else {
            store.snapshot().unwrap();
        }
        store.close().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_taken_while_writes_go_on_recovers_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(config(dir.path())).unwrap());
    insert(&store, 5_000, T0).await;
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for round in 0..40 {
                let now = T0.add_ms(round);
                insert(&store, 100, now).await;
                churn(&store, 120, now).await;
            }
        })
    };
    // Several fuzzy snapshots race with the writer.
    for _ in 0..4 {
        let s = store.clone();
        tokio::task::spawn_blocking(move || s.snapshot().unwrap()).await.unwrap();
        tokio::task::yield_now().await;
    }
    writer.await.unwrap();
    let before = all_jobs(&store).await;
    Arc::into_inner(store).unwrap().close().unwrap();
    let store = EmbeddedStore::open(config(dir.path())).unwrap();
    assert_eq!(all_jobs(&store).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_tail_is_truncated_and_acknowledged_data_kept() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(config(dir.path())).unwrap();
    let ids = insert(&store, 50, T0).await;
    store.close().unwrap();
    // A crash in the middle of a write: half a frame at the end of the last segment.
    let last = segments(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&last).unwrap();
    bytes.extend_from_slice(&[200, 0, 0, 0, 1, 2, 3, 4, 9, 9]);
    std::fs::write(&last, &bytes).unwrap();

    let store = EmbeddedStore::open(config(dir.path())).unwrap();
    for id in ids {
        assert!(store.job_get(id).await.unwrap().is_some(), "job {id} lost");
    }
    insert(&store, 1, T0).await;
}

#[test]
fn corruption_before_the_tail_refuses_to_start_and_names_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let store = EmbeddedStore::open(config(dir.path())).unwrap();
    rt.block_on(insert(&store, 20, T0));
    store.close().unwrap();
    // Reopen once so the damaged segment is no longer the last one.
    EmbeddedStore::open(config(dir.path())).unwrap().close().unwrap();
    let segs = segments(dir.path());
    assert!(segs.len() >= 2, "{segs:?}");
    let damaged = &segs[0];
    let mut bytes = std::fs::read(damaged).unwrap();
    let at = bytes.len() - 10;
    bytes[at] ^= 0xff;
    std::fs::write(damaged, &bytes).unwrap();

    let err = EmbeddedStore::open(config(dir.path())).unwrap_err();
    assert!(matches!(err, OpenError::Corrupt(_)), "{err:?}");
    let msg = err.to_string();
    let name = damaged.file_name().unwrap().to_str().unwrap();
    assert!(msg.contains(name), "message does not name the file: {msg}");
    assert!(msg.contains("at byte "), "message does not name the offset: {msg}");
}

#[test]
fn a_damaged_snapshot_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let store = EmbeddedStore::open(config(dir.path())).unwrap();
    rt.block_on(insert(&store, 20, T0));
    store.snapshot().unwrap();
    store.close().unwrap();
    let snap = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "snap"))
        .unwrap();
    let mut bytes = std::fs::read(&snap).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&snap, &bytes).unwrap();
    let err = EmbeddedStore::open(config(dir.path())).unwrap_err();
    assert!(err.to_string().contains("snapshot-"), "{err}");
}

#[test]
fn a_second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let first = EmbeddedStore::open(config(dir.path())).unwrap();
    let err = EmbeddedStore::open(config(dir.path())).unwrap_err();
    assert!(err.to_string().contains("in use"), "{err}");
    first.close().unwrap();
    EmbeddedStore::open(config(dir.path())).unwrap();
}

/// Leases up to `n` jobs and records `steps` steps in each (names go on from `first`, results
/// are sized `result_bytes`); fails every other job afterwards so its steps go to the next
/// attempt, and leaves the rest running.
async fn record_steps(
    store: &EmbeddedStore,
    n: usize,
    steps: usize,
    first: usize,
    result_bytes: usize,
    now: Timestamp,
) {
    let leased = store
        .job_lease(JobLease { now, queues: vec![queue()], count_max: n, worker: worker(), lease_ms: Some(3_600_000) })
        .await
        .unwrap();
    let result = Payload::new(format!("\"{}\"", "r".repeat(result_bytes.saturating_sub(2))).into_bytes());
    for (i, job) in leased.iter().enumerate() {
        for k in first..first + steps {
            let step = JobStep {
                now,
                job: job.id,
                lease: job.lease,
                name: format!("step {k}").into(),
                result: result.clone(),
            };
            store.job_step(step).await.unwrap();
        }
        if i % 2 == 0 {
            let fail = AckOutcome::Fail {
                error: "crash".into(),
                retryable: true,
                retry_after_ms: Some(0),
                rate_limited: false,
            };
            let ack = JobAck { now, acks: vec![Ack { job: job.id, lease: job.lease, outcome: fail }] };
            store.job_ack(ack).await.unwrap().pop().unwrap().unwrap();
        }
    }
}

/// Steps go into snapshots after their job and replay from the log over a snapshot, also over
/// one taken while steps are being recorded (a step the snapshot holds is skipped by version).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_survive_snapshots_taken_while_they_are_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(config(dir.path())).unwrap());
    insert(&store, 600, T0).await;
    record_steps(&store, 50, 3, 0, 100, T0).await;
    store.snapshot().unwrap();
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for round in 0..20 {
                record_steps(&store, 20, 2, 10 + 2 * round, 300, T0.add_ms(round as u64 + 1)).await;
            }
        })
    };
    for _ in 0..4 {
        let s = store.clone();
        tokio::task::spawn_blocking(move || s.snapshot().unwrap()).await.unwrap();
        tokio::task::yield_now().await;
    }
    writer.await.unwrap();
    let before = all_jobs(&store).await;
    let with_steps = before.iter().filter(|j| !j.steps.is_empty()).count();
    assert!(with_steps >= 100, "{with_steps} jobs hold steps");
    let bytes = store.bytes_used();
    Arc::into_inner(store).unwrap().close().unwrap();

    let store = EmbeddedStore::open(config(dir.path())).unwrap();
    assert_eq!(all_jobs(&store).await, before, "after a fuzzy snapshot and the log");
    assert_eq!(store.bytes_used(), bytes, "the memory counted for steps is the same after recovery");
    // From a snapshot alone too.
    store.snapshot().unwrap();
    store.close().unwrap();
    let store = EmbeddedStore::open(config(dir.path())).unwrap();
    assert_eq!(all_jobs(&store).await, before, "after a snapshot alone");
}

/// Steps count towards the memory budget like payloads: recording one past the budget is
/// refused as over capacity, changes nothing, and is not in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_count_towards_the_memory_budget() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.memory_budget_bytes = 256 * 1024;
    let store = EmbeddedStore::open(c.clone()).unwrap();
    insert(&store, 1, T0).await;
    let job = store
        .job_lease(JobLease { now: T0, queues: vec![queue()], count_max: 1, worker: worker(), lease_ms: None })
        .await
        .unwrap()
        .pop()
        .unwrap();
    let result = Payload::new(format!("\"{}\"", "r".repeat(30 * 1024)).into_bytes());
    let mut recorded = 0;
    let err = loop {
        let before = store.bytes_used();
        let step = JobStep {
            now: T0,
            job: job.id,
            lease: job.lease,
            name: format!("s{recorded}").into(),
            result: result.clone(),
        };
        match store.job_step(step).await {
            Ok(r) => {
                assert!(r.recorded);
                assert!(store.bytes_used() >= before + result.len() as u64, "a step's bytes are counted");
                recorded += 1;
            }
            Err(e) => break e,
        }
        assert!(recorded < 100, "the budget never stopped steps");
    };
    assert!(matches!(err, Error::OverCapacity { .. }), "{err:?}");
    assert!(store.bytes_used() <= 256 * 1024);
    let kept = store.job_get(job.id).await.unwrap().unwrap();
    assert_eq!(kept.steps.len(), recorded);
    store.close().unwrap();
    let store = EmbeddedStore::open(c).unwrap();
    assert_eq!(store.job_get(job.id).await.unwrap().unwrap(), kept, "the refused step left nothing in the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_memory_budget_inserts_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.memory_budget_bytes = 64 * 1024;
    let store = EmbeddedStore::open(c).unwrap();
    let mut accepted = 0;
    let err = loop {
        let jobs = vec![NewJob::new(queue(), Payload::new(vec![b'1'; 1000]))];
        match store.job_insert(JobInsert { now: T0, jobs }).await {
            Ok(_) => accepted += 1,
            Err(e) => break e,
        }
        assert!(accepted < 1_000, "the budget never stopped inserts");
    };
    assert!(matches!(err, Error::OverCapacity { .. }), "{err:?}");
    assert!(err.to_string().contains("over capacity"), "{err}");
    // Nothing half-inserted, and reads still work.
    assert_eq!(store.jobs_count(), accepted);
    assert!(store.bytes_used() <= 64 * 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_failed_fsync_every_operation_is_refused() {
    let fs = SimFs::new();
    let mut c = EmbeddedConfig::new("/data");
    c.seed = Some(1);
    let store = EmbeddedStore::open_with_fs(Arc::new(fs.clone()), c.clone()).unwrap();
    insert(&store, 5, T0).await;
    // The next sync fails.
    let next = fs.op_count();
    for k in next..next + 4 {
        fs.fail_at(k, Fault::SyncError);
    }
    let jobs = vec![NewJob::new(queue(), Payload::new(&b"{}"[..]))];
    let err = store.job_insert(JobInsert { now: T0, jobs: jobs.clone() }).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    // Refused from now on, reads included: memory may hold what the disk lost.
    assert!(matches!(store.job_insert(JobInsert { now: T0, jobs }).await, Err(Error::Unavailable { .. })));
    assert!(matches!(store.job_get(JobId(1)).await, Err(Error::Unavailable { .. })));
    drop(store);
    fs.clear_faults();
    fs.crash(9);
    let store = EmbeddedStore::open_with_fs(Arc::new(fs.clone()), c).unwrap();
    assert_eq!(store.jobs_count(), 5);
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Issue #10: data files were created 0644. Whatever the umask, the data directory is 0700 and
/// every file in it (log segments, snapshots, the lock) 0600; an existing directory left open by
/// an older version or by hand is made private at open.
#[tokio::test]
// `umask(2)` has no safe wrapper in std; the workspace denies unsafe code everywhere else.
#[allow(unsafe_code)]
async fn the_data_directory_is_private_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: umask only swaps the process's file-creation mask (it cannot fail); nextest runs
    // each test in its own process.
    let old = unsafe { libc::umask(0) };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let store = EmbeddedStore::open(config(&dir)).unwrap();
    insert(&store, 10, T0).await;
    store.snapshot().unwrap();
    insert(&store, 10, T0).await;
    store.close().unwrap();
    let check = |label: &str| {
        assert_eq!(mode(&dir), 0o700, "{label}: the directory");
        let mut files = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            assert_eq!(mode(&path), 0o600, "{label}: {}", path.display());
            files += 1;
        }
        assert!(files >= 3, "{label}: lock, snapshot and segments: {files}");
    };
    check("created");

    // Opened up by hand: the next open closes it again.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    for entry in std::fs::read_dir(&dir).unwrap() {
        std::fs::set_permissions(entry.unwrap().path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let store = EmbeddedStore::open(config(&dir)).unwrap();
    check("reopened");
    store.close().unwrap();
    unsafe { libc::umask(old) };
}

const SIM_DIR: &str = "/data";

/// Bytes of log segments in the simulated data directory.
fn sim_log_bytes(sim: &SimFs) -> u64 {
    use dray_store_embedded::fs::Fs;
    let dir = Path::new(SIM_DIR);
    sim.list(dir).unwrap().iter().filter(|n| n.ends_with(".log")).map(|n| sim.file_len(&dir.join(n)).unwrap()).sum()
}

fn sim_snapshots(sim: &SimFs) -> usize {
    use dray_store_embedded::fs::Fs;
    sim.list(Path::new(SIM_DIR)).unwrap().iter().filter(|n| n.ends_with(".snap")).count()
}

/// One round of steady work: enqueue 20 jobs, lease and complete them, prune what finished (so
/// the state stays small and the log is what grows).
async fn steady_round(store: &EmbeddedStore, now: Timestamp) {
    let ids = insert(store, 20, now).await;
    let leased = store
        .job_lease(JobLease { now, queues: vec![queue()], count_max: ids.len(), worker: worker(), lease_ms: None })
        .await
        .unwrap();
    let acks = leased
        .iter()
        .map(|j| Ack { job: j.id, lease: j.lease, outcome: AckOutcome::Complete { result: None } })
        .collect();
    for r in store.job_ack(JobAck { now, acks }).await.unwrap() {
        r.unwrap();
    }
    let later = now.add_ms(40 * 24 * 3_600_000);
    store.jobs_prune(dray_store::Maintain { now: later, limit: 1_000 }).await.unwrap();
}

/// Regression guard for issue #17: the snapshot trigger counted log bytes since the process
/// started, so a server restarted more often than it wrote the trigger's worth of log never
/// snapshotted (665 MB of log over 13 restarts). It now counts the log on disk since the last
/// snapshot. Twenty power losses under load, each run writing well under the trigger: the log
/// stays within about one trigger's worth, and snapshots happen.
#[test]
fn the_log_stays_bounded_across_20_restarts_under_load() {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let sim = SimFs::new();
    let mut c = config(Path::new(SIM_DIR));
    c.snapshot_log_bytes = 96 * 1024;
    c.segment_bytes_max = 8 * 1024;
    let mut now = T0;
    let mut run_bytes_max = 0;
    let mut written = 0;
    let mut snapshots = 0;
    for restart in 0..20 {
        let store = EmbeddedStore::open_with_fs(Arc::new(sim.clone()), c.clone()).unwrap();
        let at_open = store.log_bytes_since_snapshot();
        assert!(at_open + 1_024 >= sim_log_bytes(&sim), "restart {restart}: the count starts from what is on disk");
        let mut run_bytes = 0;
        for _ in 0..5 {
            now = now.add_ms(1_000);
            let before = store.log_bytes_since_snapshot();
            rt.block_on(steady_round(&store, now));
            run_bytes += store.log_bytes_since_snapshot().saturating_sub(before);
            // What the background thread does every half second, here at known points.
            if store.snapshot_if_due().unwrap() {
                snapshots += 1;
            }
        }
        run_bytes_max = run_bytes_max.max(run_bytes);
        written += run_bytes;
        // Less than the trigger per run: counted from the start of each process, no snapshot
        // would ever be due.
        assert!(run_bytes < c.snapshot_log_bytes / 2, "restart {restart}: {run_bytes} bytes in one run");
        let bound = c.snapshot_log_bytes + run_bytes_max + 2 * c.segment_bytes_max;
        let on_disk = sim_log_bytes(&sim);
        assert!(on_disk <= bound, "restart {restart}: {on_disk} bytes of log on disk, over {bound}");
        // Power loss: no clean close, so no snapshot at close either.
        sim.crash(restart);
        drop(store);
    }
    let bound = c.snapshot_log_bytes + run_bytes_max + 2 * c.segment_bytes_max;
    assert!(written > 3 * bound, "the load wrote {written} bytes of log: too little to show a bound of {bound}");
    assert!(snapshots >= 2, "{snapshots} snapshots");
    assert_eq!(sim_snapshots(&sim), 1, "older snapshots are removed");
}

/// Issue #17: a clean shutdown writes a snapshot when the log since the last one is worth it (a
/// quarter of the trigger), so the next start replays little; with less, it does not bother.
#[test]
fn close_snapshots_when_the_log_since_the_last_snapshot_is_worth_it() {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let sim = SimFs::new();
    let mut c = config(Path::new(SIM_DIR));
    c.snapshot_log_bytes = 256 * 1024;
    let store = EmbeddedStore::open_with_fs(Arc::new(sim.clone()), c.clone()).unwrap();
    rt.block_on(steady_round(&store, T0));
    assert!(store.log_bytes_since_snapshot() < c.snapshot_log_bytes / 4);
    store.close().unwrap();
    assert_eq!(sim_snapshots(&sim), 0, "a little log is not worth a snapshot");

    let store = EmbeddedStore::open_with_fs(Arc::new(sim.clone()), c.clone()).unwrap();
    let mut now = T0;
    while store.log_bytes_since_snapshot() < c.snapshot_log_bytes / 4 {
        now = now.add_ms(1_000);
        rt.block_on(steady_round(&store, now));
    }
    assert!(store.log_bytes_since_snapshot() < c.snapshot_log_bytes, "under the running trigger");
    let jobs = rt.block_on(all_jobs(&store));
    store.close().unwrap();
    assert_eq!(sim_snapshots(&sim), 1, "the close wrote a snapshot");
    let store = EmbeddedStore::open_with_fs(Arc::new(sim.clone()), c.clone()).unwrap();
    assert!(store.log_bytes_since_snapshot() < 1_024, "{} bytes left to replay", store.log_bytes_since_snapshot());
    assert_eq!(rt.block_on(all_jobs(&store)), jobs);
}

/// Guards that API tokens are part of snapshots: a token filed before a snapshot (whose log
/// segment the snapshot then deletes) and a revocation logged after it both survive a restart.
#[tokio::test]
async fn tokens_survive_a_snapshot_and_the_log_after_it() {
    use dray_store::conformance::token_record;
    use dray_store::{TokenInsert, TokenRevoke, TokenStore};
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(config(dir.path())).unwrap();
    let kept = token_record("aaaaaaaaaaaaaaaa", &["enqueue:billing.*"]);
    let revoked = token_record("bbbbbbbbbbbbbbbb", &["admin"]);
    for token in [kept.clone(), revoked.clone()] {
        store.token_insert(TokenInsert { now: T0, token }).await.unwrap();
    }
    insert(&store, 3, T0).await;
    store.snapshot().unwrap();
    store.token_revoke(TokenRevoke { now: Timestamp(T0.0 + 1), id: revoked.id.clone() }).await.unwrap();
    store.close().unwrap();

    let store = EmbeddedStore::open(config(dir.path())).unwrap();
    let revoked = dray_store::TokenRecord { revoked_at: Some(Timestamp(T0.0 + 1)), ..revoked };
    assert_eq!(store.token_list().await.unwrap(), vec![kept, revoked]);
    store.close().unwrap();
}
