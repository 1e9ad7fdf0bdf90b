//! The live state: every job in memory, with the indexes that serve leasing, maintenance, listing
//! and stats without scanning everything.
//!
//! One place changes a job (`job_insert`, `job_update`, `job_delete`) and keeps every index in step
//! with it; live operations and log replay both go through it, so a recovered state is built by the
//! same code as the state it recovers. Nothing here does I/O.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use dray_core::lock::Lock;
use dray_core::{
    Breaker, FencingToken, HistoryEntry, Job, JobId, JobState, JobStatus, LockName, QueueName, Schedule, ScheduleName,
    Step, Timestamp,
};
use dray_store::{JobFilter, JobSummary, OrderingDead, QueueConfig, QueueStats, TokenRecord, WaitFacts};

use crate::codec::Record;
use crate::lanes::{Entry, Lanes};

/// Fencing tokens are `epoch << EPOCH_SHIFT | counter`. Every open of the store starts a new epoch
/// (logged durably before the store serves), so tokens stay strictly increasing across restarts
/// whatever the durability policy lost; the counter has 2^40 values per epoch and a wrap starts a
/// new epoch.
pub(crate) const EPOCH_SHIFT: u32 = 40;
pub(crate) const TOKEN_COUNTER_MAX: u64 = (1 << EPOCH_SHIFT) - 1;

/// Estimated bytes a job costs beyond its variable-size fields: the struct, its map entry and its
/// index entries. Used for the memory budget, so it errs high.
const JOB_FIXED_BYTES: u64 = 480;
const HISTORY_ENTRY_BYTES: u64 = 96;
/// A step's struct and its place in the job's list, beyond its name and result.
const STEP_FIXED_BYTES: u64 = 64;

#[derive(Debug)]
pub(crate) struct QueueState {
    pub config: QueueConfig,
    /// Every job of the queue by state, in id order: for counts and listing.
    pub ids: [BTreeSet<JobId>; JobState::ALL.len()],
    /// Eligible available jobs in lanes per group key that take turns (`lanes.rs`), each in
    /// lease order: higher priority, then earlier run time, then enqueue order. An available job
    /// with an ordering key is here only while it is its key's head and none of the key's jobs
    /// runs (see `keys`), so a lease never walks past blocked jobs.
    pub lanes: Lanes,
    /// Per ordering key, the jobs that hold the key back: strict FIFO within a key.
    pub keys: HashMap<Box<str>, KeyState>,
    /// Scheduled and retrying jobs by the time they become due.
    pub waiting: BTreeSet<(Timestamp, JobId)>,
    /// Completed and cancelled jobs by the time they finished: for pruning.
    pub finished: BTreeSet<(Timestamp, JobId)>,
    /// Dead jobs by the time they died: for pruning and the oldest-dead age.
    pub dead: BTreeSet<(Timestamp, JobId)>,
    /// The circuit breaker's state, while `config.breaker` is set. Its state is logged on every
    /// change (`Record::BreakerUpdate`); its window is memory only and starts empty after a
    /// restart.
    pub breaker: Option<Breaker>,
    /// Until when the queue leases nothing: a worker reported a downstream rate limit
    /// (`Record::QueueBackoff`, logged).
    pub backoff_until: Option<Timestamp>,
}

/// A blocking job's place in `lanes` when it is available, and its group.
pub(crate) type KeyPlace = (Option<(Reverse<i16>, Timestamp)>, Option<Box<str>>);

/// One ordering key's blocking jobs. A key's jobs run one at a time in id order: the job with
/// the smallest id among the blocking ones (scheduled, available, running, retrying, and dead
/// unless the queue skips dead jobs) is the head, and it may be leased only when it is available
/// and no job of the key runs (a job redriven behind a later running one waits for it).
#[derive(Debug, Default)]
pub(crate) struct KeyState {
    /// Blocking jobs by id, with their place in `lanes` when they are available, and their group.
    pub blocking: BTreeMap<JobId, KeyPlace>,
    /// How many of the key's jobs run.
    pub running: u32,
}

impl KeyState {
    /// The key's job that may be leased now, as its `lanes` entry and group.
    fn eligible(&self) -> Option<(Entry, Option<Box<str>>)> {
        if self.running > 0 {
            return None;
        }
        let (id, (place, group)) = self.blocking.first_key_value()?;
        place.map(|(p, at)| ((p, at, *id), group.clone()))
    }
}

/// Whether a job in `state` holds back the later jobs of its key.
fn blocks(state: JobState, ordering_dead: OrderingDead) -> bool {
    match state {
        // A blocked job keeps its place in its key's line, as a scheduled one does.
        JobState::Scheduled | JobState::Available | JobState::Running | JobState::Retrying | JobState::Blocked => true,
        JobState::Dead => ordering_dead == OrderingDead::Block,
        JobState::Completed | JobState::Cancelled => false,
    }
}

impl QueueState {
    fn new(config: QueueConfig) -> QueueState {
        QueueState {
            lanes: Lanes::new(config.limits),
            breaker: config.breaker.as_ref().map(|_| Breaker::new()),
            backoff_until: None,
            config,
            ids: Default::default(),
            keys: HashMap::new(),
            waiting: BTreeSet::new(),
            finished: BTreeSet::new(),
            dead: BTreeSet::new(),
        }
    }

    pub fn stats(&self) -> QueueStats {
        let mut counts = [0u64; JobState::ALL.len()];
        for (i, set) in self.ids.iter().enumerate() {
            counts[i] = set.len() as u64;
        }
        QueueStats {
            config: self.config.clone(),
            counts,
            oldest_dead_at: self.dead.first().map(|(at, _)| *at),
            breaker: self.breaker.clone(),
            backoff_until: self.backoff_until,
        }
    }

    /// Whether the queue backs off at `now` after a reported downstream rate limit.
    pub fn backing_off(&self, now: Timestamp) -> bool {
        self.backoff_until.is_some_and(|until| until > now)
    }
}

#[derive(Debug)]
pub(crate) struct State {
    pub jobs: BTreeMap<JobId, Job>,
    pub queues: BTreeMap<QueueName, QueueState>,
    /// Running jobs by lease deadline.
    pub running: BTreeSet<(Timestamp, JobId)>,
    /// (queue, idempotency key) to the newest job that used it.
    pub idempotency: HashMap<(QueueName, Box<str>), JobId>,
    /// Per job that others depend on, those dependents (`Job::depends_on` read backwards): to
    /// settle them when it finishes, and to keep it from being pruned while one has not finished.
    pub dependents: HashMap<JobId, Vec<JobId>>,
    /// API tokens by id (hashed secrets; see `dray_store::TokenStore`).
    pub tokens: BTreeMap<String, TokenRecord>,
    /// Schedules by name (bounded by `Limits::SCHEDULES_MAX`).
    pub schedules: BTreeMap<ScheduleName, Schedule>,
    /// Locks someone held at their last change, by name (bounded by `Limits::LOCKS_MAX`); a
    /// hold past its deadline stays here until the lock next changes, but is never live.
    pub locks: BTreeMap<LockName, Lock>,
    pub next_job_id: u64,
    pub epoch: u64,
    pub token_counter: u64,
    /// Estimated bytes of job data held, for the memory budget.
    pub bytes_used: u64,
    rng: u64,
    /// Lease ids from the OS CSPRNG: unlike `rng`, not predictable from earlier outputs.
    pub lease_ids: dray_store::LeaseIds,
}

/// Why replaying a record failed: the log contradicts itself.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct ReplayConflict(pub String);

impl State {
    pub fn new(seed: u64, lease_ids: dray_store::LeaseIds) -> State {
        State {
            jobs: BTreeMap::new(),
            queues: BTreeMap::new(),
            running: BTreeSet::new(),
            idempotency: HashMap::new(),
            dependents: HashMap::new(),
            tokens: BTreeMap::new(),
            schedules: BTreeMap::new(),
            locks: BTreeMap::new(),
            next_job_id: 1,
            epoch: 0,
            token_counter: 0,
            bytes_used: 0,
            rng: seed | 1,
            lease_ids,
        }
    }

    /// A uniformly random `u64` (splitmix64): for backoff jitter. Never for lease ids, which must
    /// not be guessable (`lease_ids`).
    pub fn random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// The next fencing token, or `None` when this epoch's counter is spent (the caller starts a
    /// new epoch and asks again).
    pub fn token_next(&mut self) -> Option<FencingToken> {
        if self.token_counter >= TOKEN_COUNTER_MAX {
            return None;
        }
        self.token_counter += 1;
        Some(FencingToken((self.epoch << EPOCH_SHIFT) | self.token_counter))
    }

    pub fn epoch_start(&mut self, epoch: u64) {
        assert!(epoch > self.epoch || (epoch == 0 && self.epoch == 0), "epochs only grow");
        self.epoch = epoch;
        self.token_counter = 0;
    }

    /// Mixes the epoch into the random sequence, so lease ids never repeat across restarts even
    /// when a test fixes the seed.
    pub fn random_mix(&mut self, epoch: u64) {
        self.lease_ids.mix(epoch);
        self.rng ^= epoch.wrapping_mul(0xD6E8_FEB8_6659_FD93);
        self.random();
    }

    pub fn queue_config(&self, name: &QueueName) -> Option<&QueueConfig> {
        self.queues.get(name).map(|q| &q.config)
    }

    /// Sets a queue's breaker state (from the log: its window starts empty). Ignored for a queue
    /// that has no breaker at this point of a replay: a later record of the log settles it.
    pub fn breaker_set(&mut self, queue: &QueueName, mut breaker: Breaker) {
        if let Some(q) = self.queues.get_mut(queue).filter(|q| q.config.breaker.is_some()) {
            breaker.window_reset();
            q.breaker = Some(breaker);
        }
    }

    /// Makes a queue back off until `until`, unless it already does for longer. Ignored for an
    /// unknown queue. Returns whether anything changed (for the log).
    pub fn backoff_set(&mut self, queue: &QueueName, until: Timestamp) -> bool {
        match self.queues.get_mut(queue) {
            Some(q) if q.backoff_until.is_none_or(|t| t < until) => {
                q.backoff_until = Some(until);
                true
            }
            _ => false,
        }
    }

    /// Creates or replaces a queue's configuration.
    pub fn queue_upsert(&mut self, config: QueueConfig) {
        if let Some(q) = self.queues.get_mut(&config.name) {
            q.breaker =
                dray_store::breaker_reconfigured(q.config.breaker.as_ref(), config.breaker.as_ref(), q.breaker.take());
        }
        match self.queues.get_mut(&config.name) {
            Some(q) if q.config.ordering_dead != config.ordering_dead => {
                // Dead jobs join or leave their keys' blocking sets: unindex them under the old
                // policy and index them again under the new one.
                let dead: Vec<JobId> = q.ids[JobState::Dead.index()].iter().copied().collect();
                for id in &dead {
                    unindex(q, &mut self.running, &self.jobs[id]);
                }
                q.config = config;
                for id in &dead {
                    index(q, &mut self.running, &self.jobs[id]);
                }
            }
            Some(q) => {
                if q.config.limits != config.limits {
                    q.lanes.limits_set(config.limits);
                }
                q.config = config;
            }
            None => {
                self.queues.insert(config.name.clone(), QueueState::new(config));
            }
        }
    }

    /// Forgets a queue that holds no jobs.
    pub fn queue_delete(&mut self, name: &QueueName) {
        if let Some(q) = self.queues.remove(name) {
            debug_assert!(q.ids.iter().all(|ids| ids.is_empty()), "queue {name} deleted while holding jobs");
        }
    }

    pub fn job_insert(&mut self, job: Job) {
        let id = job.id;
        debug_assert!(!self.jobs.contains_key(&id), "job {id} inserted twice");
        if !self.queues.contains_key(&job.queue) {
            self.queue_upsert(QueueConfig::new(job.queue.clone()));
        }
        let q = self.queues.get_mut(&job.queue).expect("queue exists");
        index(q, &mut self.running, &job);
        if let Some(key) = &job.idempotency_key {
            self.idempotency.insert((job.queue.clone(), key.clone()), id);
        }
        for dependency in job.depends_on.iter() {
            self.dependents.entry(*dependency).or_default().push(id);
        }
        self.bytes_used += job_bytes(&job);
        self.next_job_id = self.next_job_id.max(id.0 + 1);
        self.jobs.insert(id, job);
    }

    /// Sets a job's status; a history entry counts as a new version.
    pub fn job_update(&mut self, id: JobId, status: JobStatus, history: Option<HistoryEntry>) {
        let job = self.jobs.get_mut(&id).expect("updated job exists");
        let q = self.queues.get_mut(&job.queue).expect("a job's queue exists");
        unindex(q, &mut self.running, job);
        self.bytes_used = self.bytes_used.saturating_sub(job_bytes(job));
        job.status = status;
        if let Some(entry) = history {
            job.version += 1;
            job.push_history(entry);
        }
        self.bytes_used += job_bytes(job);
        index(q, &mut self.running, job);
    }

    /// Appends a step a transition recorded, with its history entry (a new version).
    pub fn job_step(&mut self, id: JobId, step: Step, history: HistoryEntry) {
        let job = self.jobs.get_mut(&id).expect("a job recording a step exists");
        self.bytes_used = self.bytes_used.saturating_sub(job_bytes(job));
        job.steps.push(step);
        job.version += 1;
        job.push_history(history);
        self.bytes_used += job_bytes(job);
    }

    /// Appends a step copied into a snapshot (its job's version and history count it already).
    pub fn job_step_copy(&mut self, id: JobId, step: Step) -> Result<(), ReplayConflict> {
        let Some(job) = self.jobs.get_mut(&id) else {
            return Err(ReplayConflict(format!("a step of job {id}, which the snapshot does not hold before it")));
        };
        if job.steps.get(&step.name).is_some() {
            return Err(ReplayConflict(format!("job {id} holds step {:?} twice", step.name)));
        }
        self.bytes_used += step_bytes(&step);
        job.steps.push(step);
        Ok(())
    }

    pub fn job_delete(&mut self, id: JobId) -> Option<Job> {
        let job = self.jobs.remove(&id)?;
        let q = self.queues.get_mut(&job.queue).expect("a job's queue exists");
        unindex(q, &mut self.running, &job);
        if let Some(key) = &job.idempotency_key {
            let k = (job.queue.clone(), key.clone());
            if self.idempotency.get(&k) == Some(&id) {
                self.idempotency.remove(&k);
            }
        }
        for dependency in job.depends_on.iter() {
            if let Some(list) = self.dependents.get_mut(dependency) {
                list.retain(|&d| d != id);
                if list.is_empty() {
                    self.dependents.remove(dependency);
                }
            }
        }
        self.bytes_used = self.bytes_used.saturating_sub(job_bytes(&job));
        Some(job)
    }

    /// Whether a job that others depend on must stay: one of its dependents has not finished
    /// (it will read this job's state and result when it is leased).
    pub fn needed_by_dependents(&self, id: JobId) -> bool {
        self.dependents
            .get(&id)
            .is_some_and(|ds| ds.iter().any(|d| self.jobs.get(d).is_some_and(|j| !j.state().is_finished())))
    }

    /// Applies one logged record during recovery. Records are results, not requests, and carry the
    /// job's version, so a record the snapshot already reflects is skipped: the snapshot is taken
    /// while writes go on, and the log from its start point overlaps it.
    pub fn replay(&mut self, record: Record) -> Result<(), ReplayConflict> {
        match record {
            Record::Epoch { epoch } => {
                if epoch > self.epoch {
                    self.epoch_start(epoch);
                }
            }
            Record::QueueUpsert(config) => self.queue_upsert(config),
            Record::JobInsert(job) => {
                if !self.jobs.contains_key(&job.id) {
                    self.job_insert(*job);
                }
            }
            Record::JobUpdate { id, version, status, history } => {
                let Some(job) = self.jobs.get(&id) else {
                    // Deleted later in the log, and the snapshot was taken after the delete.
                    return Ok(());
                };
                let apply = match &history {
                    Some(_) if version == job.version + 1 => true,
                    None if version == job.version => true,
                    _ if version <= job.version => false,
                    _ => {
                        return Err(ReplayConflict(format!(
                            "job {id} is at version {} but the log holds its version {version}: a change is missing",
                            job.version
                        )));
                    }
                };
                if apply {
                    self.job_update(id, *status, history);
                }
            }
            Record::StepRecorded { id, version, step, history } => {
                let Some(job) = self.jobs.get(&id) else {
                    // Deleted later in the log, and the snapshot was taken after the delete.
                    return Ok(());
                };
                if version <= job.version {
                    // The snapshot holds it already.
                    return Ok(());
                }
                if version != job.version + 1 || job.steps.get(&step.name).is_some() {
                    return Err(ReplayConflict(format!(
                        "job {id} is at version {} but the log records its step {:?} as version {version}",
                        job.version, step.name
                    )));
                }
                self.job_step(id, *step, history);
            }
            Record::StepCopy { .. } => {
                return Err(ReplayConflict("a snapshot's copy of a step inside the log".into()));
            }
            Record::JobDelete { id } => {
                self.job_delete(id);
            }
            Record::QueueDelete { name } => {
                // A fuzzy snapshot may hold jobs of the queue the log deletes before this record.
                if self.queues.get(&name).is_some_and(|q| q.ids.iter().any(|ids| !ids.is_empty())) {
                    return Err(ReplayConflict(format!("queue {name} is deleted in the log while holding jobs")));
                }
                self.queue_delete(&name);
            }
            Record::TokenUpsert(token) => {
                self.tokens.insert(token.id.clone(), *token);
            }
            Record::ScheduleUpsert(schedule) => {
                self.schedules.insert(schedule.spec.name.clone(), *schedule);
            }
            Record::ScheduleDelete { name } => {
                self.schedules.remove(&name);
            }
            Record::LockUpsert(lock) => {
                self.locks.insert(lock.name.clone(), *lock);
            }
            Record::LockDelete { name } => {
                self.locks.remove(&name);
            }
            Record::BreakerUpdate { queue, breaker } => self.breaker_set(&queue, *breaker),
            Record::QueueBackoff { queue, until } => {
                self.backoff_set(&queue, until);
            }
            Record::SnapshotHeader { .. } | Record::SnapshotEnd { .. } => {
                return Err(ReplayConflict("a snapshot frame inside the log".into()));
            }
        }
        Ok(())
    }

    /// What holds `job` of `q` back at `now`, for `dray_store::WaitFacts::waiting`.
    pub fn wait_facts(&self, q: &QueueState, job: &Job, now: Timestamp) -> WaitFacts {
        let key_blocker = job.ordering_key.as_ref().and_then(|key| {
            let k = q.keys.get(key)?;
            let head = *k.blocking.keys().next()?;
            if head != job.id {
                return Some(head);
            }
            // The head itself waits while a later job of its key (redriven behind it) runs.
            k.blocking.keys().copied().find(|id| self.jobs.get(id).is_some_and(|j| j.state() == JobState::Running))
        });
        let group = job.group_key.as_deref();
        WaitFacts {
            key_blocker,
            queue_running: q.ids[JobState::Running.index()].len() as u64,
            group_running: group.map_or(0, |g| u64::from(q.lanes.group_running(g))),
            queue_rate_until: q.lanes.queue_rate_ready(now).err(),
            group_rate_until: group.and_then(|g| q.lanes.group_rate_until(g, now)),
            breaker: q.breaker.clone(),
            backoff_until: q.backoff_until,
        }
    }

    /// Jobs matching `filter` with an id above `after`, in id order, at most `limit`.
    /// Jobs matching `filter`, at most `limit`: in id order after `after`, or (`newest_first`)
    /// in reverse id order before `after`.
    pub fn list(&self, filter: &JobFilter, after: Option<JobId>, limit: usize, newest_first: bool) -> Vec<&Job> {
        let range = match (newest_first, after) {
            (false, after) => JobId(after.map_or(0, |id| id.0.saturating_add(1)))..JobId(u64::MAX),
            (true, None) => JobId(0)..JobId(u64::MAX),
            (true, Some(id)) => JobId(0)..id,
        };
        let mut out: Vec<&Job> = Vec::new();
        match (&filter.queue, filter.state) {
            (Some(queue), Some(state)) => {
                if let Some(q) = self.queues.get(queue) {
                    out = self.pick(q.ids[state.index()].range(range), filter, limit, newest_first);
                }
            }
            (None, Some(state)) => {
                // Merge the per-queue id sets: each contributes at most `limit` candidates.
                for q in self.queues.values() {
                    out.extend(self.pick(q.ids[state.index()].range(range.clone()), filter, limit, newest_first));
                }
                if newest_first {
                    out.sort_by_key(|job| std::cmp::Reverse(job.id));
                } else {
                    out.sort_by_key(|job| job.id);
                }
                out.truncate(limit);
            }
            (_, None) => out = self.pick(self.jobs.range(range).map(|(id, _)| id), filter, limit, newest_first),
        }
        out
    }

    /// The first `limit` jobs of `ids` (walked backwards for `newest_first`) matching `filter`.
    fn pick<'a>(
        &'a self,
        ids: impl DoubleEndedIterator<Item = &'a JobId>,
        filter: &JobFilter,
        limit: usize,
        newest_first: bool,
    ) -> Vec<&'a Job> {
        let matching = |id: &JobId| self.jobs.get(id).filter(|job| job_matches(job, filter));
        if newest_first {
            ids.rev().filter_map(matching).take(limit).collect()
        } else {
            ids.filter_map(matching).take(limit).collect()
        }
    }
}

pub(crate) fn job_matches(job: &Job, filter: &JobFilter) -> bool {
    filter.queue.as_ref().is_none_or(|q| *q == job.queue)
        && filter.state.is_none_or(|s| s == job.status.state)
        && filter.dead_reason.is_none_or(|r| job.status.dead_reason == Some(r))
        && filter.tag.as_ref().is_none_or(|t| job.tags.iter().any(|x| x == t))
        && filter.created_from.is_none_or(|t| job.created_at >= t)
        && filter.created_until.is_none_or(|t| job.created_at < t)
        && filter.error_matches(job.status.last_error.as_deref())
}

pub(crate) fn summary(job: &Job) -> JobSummary {
    JobSummary {
        id: job.id,
        queue: job.queue.clone(),
        state: job.status.state,
        priority: job.priority,
        attempt: job.status.attempt,
        attempts_max: job.retry.attempts_max,
        created_at: job.created_at,
        run_at: job.status.run_at,
        finished_at: job.status.finished_at,
        dead_reason: job.status.dead_reason,
        last_error: job.status.last_error.clone(),
        tags: job.tags.clone(),
    }
}

/// Adds (`add`) or removes a job of a key to or from the key's blocking set, keeping the key's
/// eligible job (at most one) in `available`.
fn key_index(q: &mut QueueState, job: &Job, key: &str, add: bool) {
    let s = &job.status;
    if !blocks(s.state, q.config.ordering_dead) {
        return;
    }
    // Looked up before inserting: `entry` would allocate the key on every call.
    if !q.keys.contains_key(key) {
        q.keys.insert(key.into(), KeyState::default());
    }
    let k = q.keys.get_mut(key).expect("inserted above");
    let before = k.eligible();
    let running = u32::from(s.state == JobState::Running);
    if add {
        let place = (s.state == JobState::Available).then_some((Reverse(job.priority), s.run_at));
        let fresh = k.blocking.insert(job.id, (place, job.group_key.clone())).is_none();
        debug_assert!(fresh, "job {} blocks its key twice", job.id);
        k.running += running;
    } else {
        let removed = k.blocking.remove(&job.id).is_some();
        assert!(removed, "job {} did not block its key", job.id);
        k.running -= running;
    }
    let after = k.eligible();
    if k.blocking.is_empty() {
        debug_assert_eq!(k.running, 0);
        q.keys.remove(key);
    }
    if before != after {
        if let Some((e, group)) = before {
            let removed = q.lanes.remove(group.as_deref(), &e);
            debug_assert!(removed, "the eligible job {} of a key was not available", e.2);
        }
        if let Some((e, group)) = after {
            q.lanes.insert(group.as_deref(), e);
        }
    }
}

fn index(q: &mut QueueState, running: &mut BTreeSet<(Timestamp, JobId)>, job: &Job) {
    let s = &job.status;
    let fresh = q.ids[s.state.index()].insert(job.id);
    debug_assert!(fresh, "job {} indexed twice", job.id);
    if let Some(key) = &job.ordering_key {
        key_index(q, job, key, true);
    }
    match s.state {
        JobState::Scheduled | JobState::Retrying => {
            q.waiting.insert((s.run_at, job.id));
        }
        JobState::Available => {
            // A keyed job is in `available` only while its key lets it run (`key_index`).
            if job.ordering_key.is_none() {
                q.lanes.insert(job.group_key.as_deref(), (Reverse(job.priority), s.run_at, job.id));
            }
        }
        JobState::Running => {
            let lease = s.lease.as_ref().expect("a running job holds a lease");
            running.insert((lease.deadline, job.id));
            if let Some(group) = &job.group_key {
                q.lanes.running_changed(group, true);
            }
        }
        JobState::Completed | JobState::Cancelled => {
            q.finished.insert((s.finished_at.expect("a finished job has a finish time"), job.id));
        }
        JobState::Dead => {
            q.dead.insert((s.finished_at.expect("a dead job has a finish time"), job.id));
        }
        // Found through its dependencies (`State::dependents`), never by time.
        JobState::Blocked => {}
    }
}

fn unindex(q: &mut QueueState, running: &mut BTreeSet<(Timestamp, JobId)>, job: &Job) {
    let s = &job.status;
    let removed = q.ids[s.state.index()].remove(&job.id);
    if let Some(key) = &job.ordering_key {
        key_index(q, job, key, false);
    }
    let removed_too = match s.state {
        JobState::Scheduled | JobState::Retrying => q.waiting.remove(&(s.run_at, job.id)),
        JobState::Available if job.ordering_key.is_some() => true,
        JobState::Available => q.lanes.remove(job.group_key.as_deref(), &(Reverse(job.priority), s.run_at, job.id)),
        JobState::Running => {
            if let Some(group) = &job.group_key {
                q.lanes.running_changed(group, false);
            }
            running.remove(&(s.lease.as_ref().expect("a running job holds a lease").deadline, job.id))
        }
        JobState::Completed | JobState::Cancelled => {
            q.finished.remove(&(s.finished_at.expect("a finished job has a finish time"), job.id))
        }
        JobState::Dead => q.dead.remove(&(s.finished_at.expect("a dead job has a finish time"), job.id)),
        JobState::Blocked => true,
    };
    assert!(removed && removed_too, "job {} was not indexed as {}", job.id, s.state);
}

/// Estimated bytes a job holds, for the memory budget.
pub(crate) fn job_bytes(job: &Job) -> u64 {
    let s = &job.status;
    let opt = |p: &Option<dray_core::Payload>| p.as_ref().map_or(0, |p| p.len() as u64);
    JOB_FIXED_BYTES
        + job.payload.len() as u64
        + job.idempotency_key.as_ref().map_or(0, |k| k.len() as u64)
        + job.ordering_key.as_ref().map_or(0, |k| k.len() as u64)
        + job.group_key.as_ref().map_or(0, |k| k.len() as u64)
        + job.tags.iter().map(|t| t.len() as u64 + 16).sum::<u64>()
        + job.traceparent.as_ref().map_or(0, |t| t.len() as u64)
        + job.depends_on.len() as u64 * 16
        + opt(&s.checkpoint)
        + opt(&s.progress)
        + opt(&s.result)
        + s.last_error.as_ref().map_or(0, |e| e.len() as u64)
        + job.history.len() as u64 * HISTORY_ENTRY_BYTES
        + job.history.iter().map(|h| h.error.as_ref().map_or(0, |e| e.len() as u64)).sum::<u64>()
        + job.steps.bytes() as u64
        + job.steps.len() as u64 * STEP_FIXED_BYTES
}

/// Estimated bytes one step adds to its job, for the memory budget (as counted in [`job_bytes`]).
pub(crate) fn step_bytes(step: &Step) -> u64 {
    step.bytes() as u64 + STEP_FIXED_BYTES
}
