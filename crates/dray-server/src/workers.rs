//! Who is working: the workers that poll this node, on which queues, and the leases handed to
//! them. Node-local and bounded; it feeds `GET /v1/workers`, the dashboard and the metrics.
//!
//! A worker exists for the server only through its lease requests: there is no registration and
//! no goodbye. So the registry remembers what it saw and forgets on a schedule:
//!
//! - a worker with no lease request in progress is forgotten [`FORGET_AFTER_MS`] after its last
//!   one ended (with the leases recorded for it);
//! - at most [`WORKERS_MAX`] workers are kept: a new one beyond that pushes out the least
//!   recently seen;
//! - at most [`QUEUES_PER_WORKER_MAX`] queue names per worker (a lease request names at most
//!   `Limits::LEASE_QUEUES_MAX`): the least recently asked for goes first;
//! - at most [`LEASES_MAX`] leases in all, in the order they were handed out: the oldest goes
//!   first, and `GET /v1/workers` drops those the store no longer shows running.
//!
//! Nothing here is durable or shared between nodes: after a restart, or on another node of the
//! same PostgreSQL database, the list starts empty and fills as workers poll. It never decides
//! anything about a job; the store stays the truth about which leases are held.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Json;
use axum::extract::State;
use dray_api::{Problem, WorkerLease, WorkerList, WorkerStatus, lease_id_string, timestamp_string};
use dray_core::{FencingToken, JobId, JobState, LeaseId, Limits, QueueName, Timestamp, WorkerId};
use dray_runtime::Clock;
use dray_store::{LeasedJob, Store};
use futures_util::StreamExt;

use crate::app::App;
use crate::problem::ApiError;

/// A worker with no lease request in progress for this long is forgotten: ten minutes covers a
/// worker busy with one long job between two polls, and a restarted worker reappears at once.
pub(crate) const FORGET_AFTER_MS: u64 = 10 * 60 * 1_000;
/// Workers remembered at most: about 1 KiB each without leases.
pub(crate) const WORKERS_MAX: usize = 1_000;
/// Queue names remembered per worker.
pub(crate) const QUEUES_PER_WORKER_MAX: usize = Limits::LEASE_QUEUES_MAX;
/// Leases remembered in all (about 100 bytes each). `GET /v1/workers` reads each from the store,
/// so this also bounds the reads of one request.
pub(crate) const LEASES_MAX: usize = 4_096;
/// Store reads in flight at once while `GET /v1/workers` checks the leases: hides PostgreSQL's
/// round trips without taking over its connection pool.
const LEASE_CHECKS_CONCURRENT_MAX: usize = 8;
/// Forgetting scans every worker: lease requests do it at most this often (and whenever the
/// map is full); reads (`/metrics`, the dashboard, `GET /v1/workers`) every time.
const PRUNE_INTERVAL_MS: u64 = 1_000;

/// The registry. Cheap to lock: every operation holds the lock for a few map updates.
pub(crate) struct Workers {
    shared: Arc<Shared>,
}

struct Shared {
    clock: Box<dyn Clock>,
    state: Mutex<Registry>,
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.shared.lock();
        f.debug_struct("Workers").field("workers", &state.workers.len()).field("leases", &state.leases.len()).finish()
    }
}

#[derive(Default)]
struct Registry {
    workers: HashMap<WorkerId, Entry>,
    /// Leases in the order handed out, oldest first.
    leases: VecDeque<Handed>,
    /// Identifies entries and polls, so a guard never touches a newer entry of the same worker
    /// after its own was forgotten.
    serial: u64,
    pruned_at: Timestamp,
}

struct Entry {
    serial: u64,
    first_seen: Timestamp,
    /// When its latest lease request started or ended.
    last_seen: Timestamp,
    /// Queue name -> when it was last asked for (start or end of a request naming it).
    queues: HashMap<QueueName, Timestamp>,
    /// Lease requests in progress: (poll serial, its queues).
    polls: Vec<(u64, Box<[QueueName]>)>,
    leased_total: u64,
}

/// A lease this node handed out.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Handed {
    worker: WorkerId,
    /// The worker entry it belongs to (see [`Registry::serial`]).
    entry: u64,
    pub job: JobId,
    pub queue: QueueName,
    pub lease: LeaseId,
    pub token: FencingToken,
    pub leased_at: Timestamp,
    /// As handed out; heartbeats move the real one (the store has it).
    pub deadline: Timestamp,
}

/// Held while a lease request is in progress (long-polls included). Dropping it ends the request
/// for the registry: its queues count as polled until that moment.
#[derive(Debug)]
pub(crate) struct Polling {
    shared: Arc<Shared>,
    worker: WorkerId,
    entry: u64,
    poll: u64,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Shared")
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Registry> {
        // Every update leaves the maps consistent before the next one starts: a panic elsewhere
        // while the lock was held breaks nothing here.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Workers {
    /// A registry that reads time from `clock`.
    pub fn new(clock: impl Clock) -> Workers {
        Workers { shared: Arc::new(Shared { clock: Box::new(clock), state: Mutex::new(Registry::default()) }) }
    }

    /// `worker` is asking for jobs from `queues` until the returned guard drops.
    pub fn poll(&self, worker: &WorkerId, queues: &[QueueName]) -> Polling {
        let now = self.shared.clock.now();
        let mut state = self.shared.lock();
        state.prune(now, false);
        let poll = state.next_serial();
        let entry = state.entry(worker, now);
        entry.last_seen = now;
        for queue in queues {
            entry.asked(queue, now);
        }
        entry.polls.push((poll, queues.into()));
        let entry = entry.serial;
        Polling { shared: self.shared.clone(), worker: worker.clone(), entry, poll }
    }

    /// `worker` was handed `jobs`.
    pub fn leased(&self, worker: &WorkerId, jobs: &[LeasedJob]) {
        if jobs.is_empty() {
            return;
        }
        let now = self.shared.clock.now();
        let mut state = self.shared.lock();
        let entry = state.entry(worker, now);
        entry.last_seen = now;
        entry.leased_total += jobs.len() as u64;
        let serial = entry.serial;
        for job in jobs {
            state.leases.push_back(Handed {
                worker: worker.clone(),
                entry: serial,
                job: job.id,
                queue: job.queue.clone(),
                lease: job.lease,
                token: job.token,
                leased_at: now,
                deadline: job.deadline,
            });
        }
        let excess = state.leases.len().saturating_sub(LEASES_MAX);
        state.leases.drain(..excess);
    }

    /// Per queue that a worker asked this node for: lease requests in progress and when the last
    /// one was made (for `/metrics`).
    ///
    /// "Made" covers the whole request: while one is in progress its time is now, and once it
    /// ends the time stays at its end, so a long-poll never makes the value jump backwards to
    /// when it started. Queues of forgotten workers are not listed. Sorted by queue name.
    pub fn by_queue(&self) -> Vec<QueuePolling> {
        let now = self.shared.clock.now();
        let mut state = self.shared.lock();
        state.prune(now, true);
        let mut queues: BTreeMap<&QueueName, (usize, Timestamp)> = BTreeMap::new();
        for entry in state.workers.values() {
            for (queue, &at) in &entry.queues {
                let seen = queues.entry(queue).or_insert((0, at));
                seen.1 = seen.1.max(at);
            }
            for queue in entry.polls.iter().flat_map(|(_, queues)| queues.iter()) {
                let seen = queues.entry(queue).or_insert((0, now));
                seen.0 += 1;
                seen.1 = now;
            }
        }
        queues
            .into_iter()
            .map(|(queue, (polling, at))| QueuePolling {
                queue: queue.clone(),
                polling,
                last_poll_unix_s: at.as_millis() as f64 / 1_000.0,
            })
            .collect()
    }

    /// Every remembered worker with the leases recorded for it, most recently seen first.
    pub fn list(&self) -> Vec<WorkerSeen> {
        let now = self.shared.clock.now();
        let mut state = self.shared.lock();
        state.prune(now, true);
        let mut leases: HashMap<u64, Vec<Handed>> = HashMap::new();
        for handed in &state.leases {
            leases.entry(handed.entry).or_default().push(handed.clone());
        }
        let mut seen: Vec<WorkerSeen> = state
            .workers
            .iter()
            .map(|(id, entry)| {
                let mut queues: Vec<QueueName> = entry.queues.keys().cloned().collect();
                queues.sort();
                let polling = entry.polls.len();
                WorkerSeen {
                    id: id.clone(),
                    queues,
                    first_seen: entry.first_seen,
                    last_seen: if polling > 0 { now } else { entry.last_seen },
                    polling,
                    leased_total: entry.leased_total,
                    leases: leases.remove(&entry.serial).unwrap_or_default(),
                }
            })
            .collect();
        seen.sort_by(|a, b| b.last_seen.cmp(&a.last_seen).then_with(|| a.id.as_str().cmp(b.id.as_str())));
        seen
    }

    /// Forgets recorded leases that are over (`(job, lease)` pairs).
    pub fn leases_over(&self, over: &[(JobId, LeaseId)]) {
        if over.is_empty() {
            return;
        }
        let mut state = self.shared.lock();
        state.leases.retain(|h| !over.contains(&(h.job, h.lease)));
    }
}

impl Registry {
    fn next_serial(&mut self) -> u64 {
        self.serial += 1;
        self.serial
    }

    /// The worker's entry, created (making room if the map is full) when it has none.
    fn entry(&mut self, worker: &WorkerId, now: Timestamp) -> &mut Entry {
        if !self.workers.contains_key(worker) {
            if self.workers.len() >= WORKERS_MAX {
                self.prune(now, true);
            }
            if self.workers.len() >= WORKERS_MAX
                && let Some(oldest) = self.workers.iter().min_by_key(|(_, e)| e.last_seen).map(|(id, _)| id.clone())
            {
                self.forget(&oldest);
            }
            let serial = self.next_serial();
            self.workers.insert(
                worker.clone(),
                Entry {
                    serial,
                    first_seen: now,
                    last_seen: now,
                    queues: HashMap::new(),
                    polls: Vec::new(),
                    leased_total: 0,
                },
            );
        }
        self.workers.get_mut(worker).expect("inserted above")
    }

    /// Forgets workers idle for longer than [`FORGET_AFTER_MS`]: at most once per
    /// [`PRUNE_INTERVAL_MS`], unless `now_anyway`.
    fn prune(&mut self, now: Timestamp, now_anyway: bool) {
        if !now_anyway && now.ms_since(self.pruned_at) < PRUNE_INTERVAL_MS {
            return;
        }
        self.pruned_at = now;
        let before = self.workers.len();
        self.workers.retain(|_, e| !e.polls.is_empty() || now.ms_since(e.last_seen) <= FORGET_AFTER_MS);
        if self.workers.len() != before {
            let workers = &self.workers;
            self.leases.retain(|h| workers.get(&h.worker).is_some_and(|e| e.serial == h.entry));
        }
    }

    fn forget(&mut self, worker: &WorkerId) {
        if let Some(entry) = self.workers.remove(worker) {
            self.leases.retain(|h| h.entry != entry.serial);
        }
    }
}

impl Entry {
    fn asked(&mut self, queue: &QueueName, now: Timestamp) {
        if !self.queues.contains_key(queue)
            && self.queues.len() >= QUEUES_PER_WORKER_MAX
            && let Some(oldest) = self.queues.iter().min_by_key(|(_, at)| **at).map(|(q, _)| q.clone())
        {
            self.queues.remove(&oldest);
        }
        self.queues.insert(queue.clone(), now);
    }
}

impl Drop for Polling {
    fn drop(&mut self) {
        let now = self.shared.clock.now();
        let mut state = self.shared.lock();
        // Gone (forgotten, or pushed out and back in) means another entry: leave it alone.
        let Some(entry) = state.workers.get_mut(&self.worker).filter(|e| e.serial == self.entry) else { return };
        let Some(at) = entry.polls.iter().position(|(poll, _)| *poll == self.poll) else { return };
        let (_, queues) = entry.polls.swap_remove(at);
        entry.last_seen = now;
        for queue in queues.iter() {
            entry.asked(queue, now);
        }
    }
}

/// Polling of one queue on this node.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct QueuePolling {
    pub queue: QueueName,
    /// Lease requests (long-polls included) in progress now.
    pub polling: usize,
    /// Unix time, in seconds, of the latest lease request (now while one is in progress).
    pub last_poll_unix_s: f64,
}

/// One worker as the registry remembers it (see [`Workers::list`]).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct WorkerSeen {
    pub id: WorkerId,
    /// Sorted by name.
    pub queues: Vec<QueueName>,
    pub first_seen: Timestamp,
    /// Now while a request is in progress.
    pub last_seen: Timestamp,
    pub polling: usize,
    pub leased_total: u64,
    /// Recorded as handed out, oldest first; some may be over.
    pub leases: Vec<Handed>,
}

/// The workers polling this node, and the leases they hold.
///
/// The workers that asked this node for jobs in the last ten minutes, with the queues they asked
/// for. Node-local: with several nodes on one PostgreSQL database, each node lists the workers
/// polling it (ask every node for the whole picture). Each lease this node handed out is checked
/// against the store: only those still running under that same lease are listed, with their
/// current deadline.
#[utoipa::path(
    get, path = "/v1/workers", tag = "workers",
    responses(
        (status = 200, body = WorkerList),
        (status = 503, description = "Storage unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn workers_list(State(app): State<App>) -> Result<Json<WorkerList>, ApiError> {
    let seen = app.workers.list();
    // Owned values only: a future that borrows across the stream is not `Send` for every
    // lifetime, which axum requires of a handler.
    let handed: Vec<Handed> = seen.iter().flat_map(|w| w.leases.iter().cloned()).collect();
    let checks = futures_util::stream::iter(handed.into_iter().map(|h| {
        let store = app.store.clone();
        async move {
            let job = store.job_get(h.job).await;
            (h, job)
        }
    }))
    .buffered(LEASE_CHECKS_CONCURRENT_MAX)
    .collect::<Vec<_>>()
    .await;
    let mut held: HashMap<(JobId, LeaseId), WorkerLease> = HashMap::new();
    let mut over = Vec::new();
    for (h, job) in checks {
        let lease = job?.and_then(|job| match (job.status.state, job.status.lease) {
            (JobState::Running, Some(lease)) if lease.id == h.lease => Some(lease),
            _ => None,
        });
        match lease {
            Some(lease) => {
                held.insert(
                    (h.job, h.lease),
                    WorkerLease {
                        job: h.job.0,
                        queue: h.queue.to_string(),
                        lease_id: lease_id_string(lease.id),
                        fencing_token: lease.token.0,
                        leased_at: timestamp_string(lease.leased_at),
                        deadline: timestamp_string(lease.deadline),
                    },
                );
            }
            None => over.push((h.job, h.lease)),
        }
    }
    app.workers.leases_over(&over);
    let workers = seen
        .into_iter()
        .map(|w| WorkerStatus {
            id: w.id.to_string(),
            queues: w.queues.iter().map(ToString::to_string).collect(),
            first_seen: timestamp_string(w.first_seen),
            last_seen: timestamp_string(w.last_seen),
            polling: u32::try_from(w.polling).unwrap_or(u32::MAX),
            leased_total: w.leased_total,
            leases: w.leases.iter().filter_map(|h| held.remove(&(h.job, h.lease))).collect(),
        })
        .collect();
    Ok(Json(WorkerList { workers, forget_after_ms: FORGET_AFTER_MS, workers_max: WORKERS_MAX }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dray_core::Payload;
    use dray_runtime::ManualClock;

    const T0: i64 = 1_800_000_000_000;

    fn worker(name: &str) -> WorkerId {
        WorkerId::new(name).unwrap()
    }

    fn queue(name: &str) -> QueueName {
        QueueName::new(name).unwrap()
    }

    fn registry() -> (Workers, ManualClock) {
        let clock = ManualClock::new(Timestamp(T0));
        (Workers::new(clock.clone()), clock)
    }

    fn leased(id: u64, q: &str, lease: u64, deadline: i64) -> LeasedJob {
        LeasedJob {
            id: JobId(id),
            queue: queue(q),
            payload: Payload::new(&b"{}"[..]),
            priority: 0,
            attempt: 1,
            attempts_max: 3,
            lease: LeaseId(lease),
            token: FencingToken(lease * 10),
            deadline: Timestamp(deadline),
            lease_left_ms: None,
            checkpoint: None,
            traceparent: None,
            created_at: Timestamp(T0),
            ready_at: Timestamp(T0),
        }
    }

    fn polling(workers: &Workers) -> Vec<(String, usize, i64)> {
        workers
            .by_queue()
            .into_iter()
            .map(|q| (q.queue.to_string(), q.polling, (q.last_poll_unix_s * 1_000.0).round() as i64))
            .collect()
    }

    #[test]
    fn by_queue_counts_requests_in_progress_and_keeps_the_time_of_the_last() {
        let (workers, clock) = registry();
        assert_eq!(polling(&workers), vec![]);
        let a = workers.poll(&worker("w1"), &[queue("emails"), queue("pdf")]);
        let b = workers.poll(&worker("w2"), &[queue("emails")]);
        clock.advance(500);
        // In progress: the time is now.
        assert_eq!(polling(&workers), vec![("emails".into(), 2, T0 + 500), ("pdf".into(), 1, T0 + 500)]);
        drop(a);
        clock.advance(250);
        // `pdf` ended at T0 + 500 and stays there; `emails` is still polled by w2.
        assert_eq!(polling(&workers), vec![("emails".into(), 1, T0 + 750), ("pdf".into(), 0, T0 + 500)]);
        drop(b);
        clock.advance(1_000);
        assert_eq!(polling(&workers), vec![("emails".into(), 0, T0 + 750), ("pdf".into(), 0, T0 + 500)]);
    }

    #[test]
    fn list_shows_queues_polls_and_recorded_leases() {
        let (workers, clock) = registry();
        let guard = workers.poll(&worker("w1"), &[queue("b"), queue("a")]);
        workers.leased(&worker("w1"), &[leased(7, "a", 70, T0 + 30_000), leased(8, "b", 80, T0 + 30_000)]);
        clock.advance(100);
        let seen = workers.list();
        assert_eq!(seen.len(), 1);
        let w = &seen[0];
        assert_eq!(w.id, worker("w1"));
        assert_eq!(w.queues, vec![queue("a"), queue("b")], "sorted by name");
        assert_eq!((w.polling, w.first_seen, w.last_seen, w.leased_total), (1, Timestamp(T0), Timestamp(T0 + 100), 2));
        let jobs: Vec<(u64, u64)> = w.leases.iter().map(|h| (h.job.0, h.lease.0)).collect();
        assert_eq!(jobs, vec![(7, 70), (8, 80)]);
        drop(guard);
        clock.advance(100);
        assert_eq!(workers.list()[0].last_seen, Timestamp(T0 + 100), "the end of its last request");
        workers.leases_over(&[(JobId(7), LeaseId(70))]);
        assert_eq!(workers.list()[0].leases.iter().map(|h| h.job.0).collect::<Vec<_>>(), vec![8]);
    }

    #[test]
    fn idle_workers_are_forgotten_with_their_leases_and_pollers_never() {
        let (workers, clock) = registry();
        drop(workers.poll(&worker("idle"), &[queue("q")]));
        workers.leased(&worker("idle"), &[leased(1, "q", 10, T0 + 30_000)]);
        let busy = workers.poll(&worker("busy"), &[queue("long")]);
        clock.advance(FORGET_AFTER_MS);
        assert_eq!(workers.list().len(), 2, "exactly the bound is still remembered");
        clock.advance(1);
        let seen = workers.list();
        assert_eq!(seen.iter().map(|w| w.id.to_string()).collect::<Vec<_>>(), vec!["busy"]);
        assert_eq!(workers.shared.lock().leases.len(), 0, "its leases went with it");
        assert_eq!(polling(&workers), vec![("long".into(), 1, T0 + FORGET_AFTER_MS as i64 + 1)]);
        // The forgotten worker comes back as new.
        drop(workers.poll(&worker("idle"), &[queue("q")]));
        let back = workers.list().into_iter().find(|w| w.id == worker("idle")).unwrap();
        assert_eq!((back.first_seen, back.leased_total), (Timestamp(T0 + FORGET_AFTER_MS as i64 + 1), 0));
        drop(busy);
    }

    #[test]
    fn a_guard_of_a_forgotten_entry_leaves_the_new_one_alone() {
        let (workers, _clock) = registry();
        let old = workers.poll(&worker("w"), &[queue("q")]);
        workers.shared.lock().forget(&worker("w"));
        let new = workers.poll(&worker("w"), &[queue("q")]);
        drop(old);
        assert_eq!(workers.list()[0].polling, 1, "the new entry's request is still in progress");
        drop(new);
        assert_eq!(workers.list()[0].polling, 0);
    }

    #[test]
    fn bounds_hold() {
        let (workers, clock) = registry();
        for i in 0..WORKERS_MAX + 5 {
            clock.advance(1);
            drop(workers.poll(&worker(&format!("w{i}")), &[queue("q")]));
        }
        let seen = workers.list();
        assert_eq!(seen.len(), WORKERS_MAX);
        assert!(seen.iter().all(|w| w.id != worker("w0")), "the least recently seen went first");
        assert_eq!(seen[0].id, worker(&format!("w{}", WORKERS_MAX + 4)), "most recent first");

        let many: Vec<QueueName> = (0..QUEUES_PER_WORKER_MAX + 3).map(|i| queue(&format!("q{i}"))).collect();
        drop(workers.poll(&worker("many"), &many[..QUEUES_PER_WORKER_MAX]));
        clock.advance(1);
        drop(workers.poll(&worker("many"), &many[QUEUES_PER_WORKER_MAX..]));
        let w = workers.list().into_iter().find(|w| w.id == worker("many")).unwrap();
        assert_eq!(w.queues.len(), QUEUES_PER_WORKER_MAX);
        assert!(w.queues.contains(&many[QUEUES_PER_WORKER_MAX + 2]));

        let jobs: Vec<LeasedJob> = (0..LEASES_MAX as u64 + 10).map(|i| leased(i, "q", i + 1, T0)).collect();
        workers.leased(&worker("many"), &jobs);
        let w = workers.list().into_iter().find(|w| w.id == worker("many")).unwrap();
        assert_eq!(w.leases.len(), LEASES_MAX);
        assert_eq!(w.leases[0].job, JobId(10), "the oldest went first");
        assert_eq!(w.leased_total, LEASES_MAX as u64 + 10);
    }
}
