//! Who is working: the workers that poll this node, on which queues, and the leases handed to
//! them. Node-local and bounded; it feeds `GET /v1/workers`, the dashboard and the metrics.
//!
//! A worker exists for the server only through its requests: there is no registration and no
//! goodbye. So the registry remembers what it saw and forgets on a schedule. A worker is
//!
//! - **busy** while it holds a lease this node handed it: recorded when granted, dropped when the
//!   worker completes or fails the job (or the ack is refused as stale), when maintenance reports
//!   the lease expired, and no longer counted once its deadline (as last extended by a heartbeat
//!   through this node) has passed;
//! - **idle** while it holds none but has a lease request in progress, or made one in the last
//!   [`FORGET_AFTER_MS`];
//! - **gone** otherwise: forgotten, with the leases recorded for it. A worker that stops polling
//!   and holds nothing is gone [`FORGET_AFTER_MS`] after its last request; one killed while
//!   holding leases is gone that long after its last sign of life once its leases ran out.
//!
//! Bounds: at most [`WORKERS_MAX`] workers (a new one beyond that pushes out the least recently
//! seen); at most [`QUEUES_PER_WORKER_MAX`] queue names per worker (a lease request names at most
//! `Limits::LEASE_QUEUES_MAX`; the least recently asked for goes first); at most [`LEASES_MAX`]
//! leases in all, in the order they were handed out (the oldest goes first), and
//! `GET /v1/workers` drops those the store no longer shows running.
//!
//! Nothing here is durable or shared between nodes: after a restart, or on another node of the
//! same PostgreSQL database, the list starts empty and fills as workers poll. A heartbeat or ack
//! sent to another node is not seen here (so on this node the lease stops counting at its
//! original deadline; `GET /v1/workers` asks the store and shows it held). It never decides
//! anything about a job; the store stays the truth about which leases are held.

use std::collections::{BTreeMap, HashMap, HashSet};
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

/// A worker that holds no lease and has no lease request in progress is forgotten this long
/// after its last request (lease request, heartbeat or ack). Long enough for the gap between
/// two polls of a worker that finished its jobs, or its back-off after a refused request;
/// short enough that a stopped worker leaves the dashboard within half a minute. A worker busy
/// with a long job holds its lease, so it is never forgotten for running long.
pub(crate) const FORGET_AFTER_MS: u64 = 30 * 1_000;
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
    /// Leases by a serial taken when handed out: oldest first.
    leases: BTreeMap<u64, Handed>,
    /// Each job's newest recorded lease (its key in `leases`): a job has one lease at a time.
    by_job: HashMap<JobId, u64>,
    /// Identifies entries and polls, so a guard never touches a newer entry of the same worker
    /// after its own was forgotten.
    serial: u64,
    pruned_at: Timestamp,
}

struct Entry {
    serial: u64,
    first_seen: Timestamp,
    /// When its latest lease request started or ended, or a heartbeat or ack of one of its leases
    /// came in.
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
    /// As handed out, moved by the heartbeats this node saw (the store has the real one).
    pub deadline: Timestamp,
}

/// What a worker is doing, as this node knows it (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WorkerState {
    Busy,
    Idle,
}

impl WorkerState {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Busy => "busy",
            WorkerState::Idle => "idle",
        }
    }
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
            let key = state.next_serial();
            // A new lease of a job ends any older one recorded for it.
            if let Some(old) = state.by_job.insert(job.id, key) {
                state.leases.remove(&old);
            }
            state.leases.insert(
                key,
                Handed {
                    worker: worker.clone(),
                    entry: serial,
                    job: job.id,
                    queue: job.queue.clone(),
                    lease: job.lease,
                    token: job.token,
                    leased_at: now,
                    deadline: job.deadline,
                },
            );
        }
        while state.leases.len() > LEASES_MAX {
            let Some((key, oldest)) = state.leases.pop_first() else { break };
            if state.by_job.get(&oldest.job) == Some(&key) {
                state.by_job.remove(&oldest.job);
            }
        }
    }

    /// The lease `lease` of `job` was extended through this node until `deadline`: its worker is
    /// alive and still holds it.
    pub fn extended(&self, job: JobId, lease: LeaseId, deadline: Timestamp) {
        let now = self.shared.clock.now();
        let mut state = self.shared.lock();
        let Some(handed) = state.handed_mut(job, lease) else { return };
        handed.deadline = deadline;
        let (worker, entry) = (handed.worker.clone(), handed.entry);
        state.touch(&worker, entry, now);
    }

    /// The worker acked `job` under `lease` (completed or failed), or the ack was refused
    /// because that lease is over: either way the worker no longer holds it.
    pub fn acked(&self, job: JobId, lease: LeaseId) {
        let now = self.shared.clock.now();
        let mut state = self.shared.lock();
        if let Some(handed) = state.lease_remove(job, lease) {
            state.touch(&handed.worker, handed.entry, now);
        }
    }

    /// Maintenance expired the leases of `jobs`. The report does not name the lease, so only
    /// recorded leases whose deadline has passed go: a job leased again since has a deadline
    /// ahead.
    pub fn expired(&self, jobs: &[JobId]) {
        if jobs.is_empty() {
            return;
        }
        let now = self.shared.clock.now();
        let mut state = self.shared.lock();
        for job in jobs {
            if let Some(&key) = state.by_job.get(job)
                && state.leases.get(&key).is_some_and(|h| h.deadline <= now)
            {
                state.leases.remove(&key);
                state.by_job.remove(job);
            }
        }
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
        for handed in state.leases.values() {
            leases.entry(handed.entry).or_default().push(handed.clone());
        }
        let mut seen: Vec<WorkerSeen> = state
            .workers
            .iter()
            .map(|(id, entry)| {
                let mut queues: Vec<QueueName> = entry.queues.keys().cloned().collect();
                queues.sort();
                let polling = entry.polls.len();
                let leases = leases.remove(&entry.serial).unwrap_or_default();
                let held = leases.iter().filter(|h| h.deadline > now).count();
                WorkerSeen {
                    id: id.clone(),
                    queues,
                    first_seen: entry.first_seen,
                    last_seen: if polling > 0 { now } else { entry.last_seen },
                    polling,
                    leased_total: entry.leased_total,
                    held,
                    leases,
                }
            })
            .collect();
        seen.sort_by(|a, b| b.last_seen.cmp(&a.last_seen).then_with(|| a.id.as_str().cmp(b.id.as_str())));
        seen
    }

    /// Busy and idle workers (see [`WorkerState`]).
    pub fn count(&self) -> WorkerCount {
        let mut count = WorkerCount::default();
        for w in self.list() {
            match w.state() {
                WorkerState::Busy => count.busy += 1,
                WorkerState::Idle => count.idle += 1,
            }
        }
        count
    }

    /// Forgets recorded leases that are over (`(job, lease)` pairs), and moves the deadlines of
    /// those still held to the store's (`(job, lease, deadline)`): `GET /v1/workers` asked it.
    pub fn leases_checked(&self, over: &[(JobId, LeaseId)], held: &[(JobId, LeaseId, Timestamp)]) {
        if over.is_empty() && held.is_empty() {
            return;
        }
        let mut state = self.shared.lock();
        for &(job, lease) in over {
            state.lease_remove(job, lease);
        }
        for &(job, lease, deadline) in held {
            if let Some(handed) = state.handed_mut(job, lease) {
                handed.deadline = deadline;
            }
        }
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

    /// The recorded lease `lease` of `job`, if it is the job's newest.
    fn handed_mut(&mut self, job: JobId, lease: LeaseId) -> Option<&mut Handed> {
        let key = *self.by_job.get(&job)?;
        self.leases.get_mut(&key).filter(|h| h.lease == lease)
    }

    /// Removes the recorded lease `lease` of `job`, if it is the job's newest.
    fn lease_remove(&mut self, job: JobId, lease: LeaseId) -> Option<Handed> {
        let key = *self.by_job.get(&job)?;
        if self.leases.get(&key)?.lease != lease {
            return None;
        }
        self.by_job.remove(&job);
        self.leases.remove(&key)
    }

    /// A sign of life from `worker`'s entry `entry` (if it is still the current one).
    fn touch(&mut self, worker: &WorkerId, entry: u64, now: Timestamp) {
        if let Some(e) = self.workers.get_mut(worker).filter(|e| e.serial == entry) {
            e.last_seen = e.last_seen.max(now);
        }
    }

    /// Forgets the gone workers (no request in progress, no lease held, nothing heard for longer
    /// than [`FORGET_AFTER_MS`]) with their leases: at most once per [`PRUNE_INTERVAL_MS`],
    /// unless `now_anyway`.
    fn prune(&mut self, now: Timestamp, now_anyway: bool) {
        if !now_anyway && now.ms_since(self.pruned_at) < PRUNE_INTERVAL_MS {
            return;
        }
        self.pruned_at = now;
        let holding: HashSet<u64> = self.leases.values().filter(|h| h.deadline > now).map(|h| h.entry).collect();
        let before = self.workers.len();
        self.workers.retain(|_, e| {
            !e.polls.is_empty() || holding.contains(&e.serial) || now.ms_since(e.last_seen) <= FORGET_AFTER_MS
        });
        if self.workers.len() != before {
            let workers = &self.workers;
            self.leases.retain(|_, h| workers.get(&h.worker).is_some_and(|e| e.serial == h.entry));
            let leases = &self.leases;
            self.by_job.retain(|_, key| leases.contains_key(key));
        }
    }

    fn forget(&mut self, worker: &WorkerId) {
        if let Some(entry) = self.workers.remove(worker) {
            self.leases.retain(|_, h| h.entry != entry.serial);
            let leases = &self.leases;
            self.by_job.retain(|_, key| leases.contains_key(key));
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
    /// Recorded leases whose deadline (as this node knows it) is ahead.
    pub held: usize,
    /// Recorded as handed out, oldest first; some may be over.
    pub leases: Vec<Handed>,
}

impl WorkerSeen {
    pub fn state(&self) -> WorkerState {
        if self.held > 0 { WorkerState::Busy } else { WorkerState::Idle }
    }
}

/// Workers by state (see [`Workers::count`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct WorkerCount {
    pub busy: usize,
    pub idle: usize,
}

/// The workers polling this node, and the leases they hold.
///
/// The workers that asked this node for jobs recently (`forget_after_ms`) or still hold a lease
/// it handed them, with the queues they asked for and their `state`: `busy` while holding a
/// lease, else `idle`. Node-local: with several nodes on one PostgreSQL database, each node lists the workers
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
    let mut deadlines = Vec::new();
    for (h, job) in checks {
        let lease = job?.and_then(|job| match (job.status.state, job.status.lease) {
            (JobState::Running, Some(lease)) if lease.id == h.lease => Some(lease),
            _ => None,
        });
        match lease {
            Some(lease) => {
                deadlines.push((h.job, h.lease, lease.deadline));
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
    app.workers.leases_checked(&over, &deadlines);
    let workers = seen
        .into_iter()
        .map(|w| {
            let leases: Vec<WorkerLease> = w.leases.iter().filter_map(|h| held.remove(&(h.job, h.lease))).collect();
            // The store's word: busy exactly when it still shows one of its leases running.
            let state = if leases.is_empty() { WorkerState::Idle } else { WorkerState::Busy };
            WorkerStatus {
                id: w.id.to_string(),
                queues: w.queues.iter().map(ToString::to_string).collect(),
                first_seen: timestamp_string(w.first_seen),
                last_seen: timestamp_string(w.last_seen),
                polling: u32::try_from(w.polling).unwrap_or(u32::MAX),
                leased_total: w.leased_total,
                state: state.as_str().to_owned(),
                leases,
            }
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
            steps: Default::default(),
            traceparent: None,
            created_at: Timestamp(T0),
            ready_at: Timestamp(T0),
            dependencies: Vec::new(),
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
        workers.leases_checked(&[(JobId(7), LeaseId(70))], &[]);
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

    fn states(workers: &Workers) -> Vec<(String, &'static str, usize)> {
        let mut seen: Vec<_> =
            workers.list().into_iter().map(|w| (w.id.to_string(), w.state().as_str(), w.held)).collect();
        seen.sort();
        seen
    }

    /// Regression (issue #18, defect 1): a worker running jobs between polls was shown "idle"
    /// and the overview counted polls in flight (0) instead of workers. Holding a lease is busy.
    #[test]
    fn a_worker_holding_leases_is_busy_until_it_acks_them() {
        let (workers, clock) = registry();
        let poll = workers.poll(&worker("w"), &[queue("q")]);
        let jobs: Vec<LeasedJob> = (1..=4).map(|i| leased(i, "q", i * 10, T0 + 30_000)).collect();
        workers.leased(&worker("w"), &jobs);
        drop(poll);
        clock.advance(5_000);
        assert_eq!(states(&workers), vec![("w".into(), "busy", 4)], "not polling, but running four jobs");
        assert_eq!(workers.count(), WorkerCount { busy: 1, idle: 0 });
        workers.acked(JobId(1), LeaseId(10));
        workers.acked(JobId(2), LeaseId(999)); // Not its lease: changes nothing.
        workers.acked(JobId(3), LeaseId(30));
        workers.acked(JobId(4), LeaseId(40));
        assert_eq!(states(&workers), vec![("w".into(), "busy", 1)]);
        clock.advance(1_000);
        workers.acked(JobId(2), LeaseId(20));
        assert_eq!(states(&workers), vec![("w".into(), "idle", 0)]);
        assert_eq!(workers.count(), WorkerCount { busy: 0, idle: 1 });
        assert_eq!(workers.list()[0].last_seen, Timestamp(T0 + 6_000), "an ack is a sign of life");
    }

    #[test]
    fn heartbeats_move_the_deadline_and_a_passed_deadline_is_not_held() {
        let (workers, clock) = registry();
        workers.leased(&worker("w"), &[leased(1, "q", 10, T0 + 1_000)]);
        clock.advance(900);
        workers.extended(JobId(1), LeaseId(10), Timestamp(T0 + 2_000));
        workers.extended(JobId(1), LeaseId(11), Timestamp(T0 + 9_000)); // Another lease: ignored.
        clock.advance(1_000);
        assert_eq!(states(&workers), vec![("w".into(), "busy", 1)], "extended past the first deadline");
        clock.advance(200);
        assert_eq!(states(&workers), vec![("w".into(), "idle", 0)], "its deadline passed: it holds nothing");
        // Maintenance reports the expiry: the record goes.
        workers.expired(&[JobId(1)]);
        assert!(workers.list()[0].leases.is_empty());
    }

    #[test]
    fn an_expiry_report_spares_a_newer_lease_of_the_same_job() {
        let (workers, clock) = registry();
        workers.leased(&worker("old"), &[leased(1, "q", 10, T0 + 100)]);
        clock.advance(200);
        // Expired by the store, then leased again before the report reached the registry.
        workers.leased(&worker("new"), &[leased(1, "q", 11, T0 + 30_200)]);
        workers.expired(&[JobId(1)]);
        assert_eq!(states(&workers), vec![("new".into(), "busy", 1), ("old".into(), "idle", 0)]);
        // The old lease's late ack changes nothing for the new holder.
        workers.acked(JobId(1), LeaseId(10));
        assert_eq!(states(&workers)[0], ("new".into(), "busy", 1));
    }

    /// Regression (issue #18, defect 1): stopped workers stayed listed as idle for ten minutes.
    #[test]
    fn gone_workers_are_forgotten_after_the_bound_and_busy_ones_never() {
        let (workers, clock) = registry();
        drop(workers.poll(&worker("stopped"), &[queue("q")]));
        workers.leased(&worker("long-job"), &[leased(1, "q", 10, T0 + 10 * FORGET_AFTER_MS as i64)]);
        workers.leased(&worker("killed"), &[leased(2, "q", 20, T0 + 2 * FORGET_AFTER_MS as i64)]);
        clock.advance(FORGET_AFTER_MS + 1);
        assert_eq!(states(&workers), vec![("killed".into(), "busy", 1), ("long-job".into(), "busy", 1)]);
        // Heartbeats keep the long job's worker. The killed one's lease runs out, and it is gone
        // at once: nothing was heard of it for longer than the bound.
        workers.extended(JobId(1), LeaseId(10), Timestamp(T0 + 20 * FORGET_AFTER_MS as i64));
        clock.advance(FORGET_AFTER_MS - 2);
        assert_eq!(states(&workers), vec![("killed".into(), "busy", 1), ("long-job".into(), "busy", 1)]);
        clock.advance(1);
        assert_eq!(states(&workers), vec![("long-job".into(), "busy", 1)]);
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
