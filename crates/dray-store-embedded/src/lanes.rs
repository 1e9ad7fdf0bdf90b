//! A queue's leasable jobs, in lanes that take turns: one lane per `group_key`, and one for the
//! jobs without a group. Flow limits are decided here and in the lease loop (`store.rs`).
//!
//! Only eligible jobs are here (a keyed job only while its ordering key lets it run, see
//! `state.rs`). The ring holds the lanes whose turn may come, front first; a lease takes the
//! front lane's best job and moves the lane to the back, so a group with a million waiting jobs
//! gets one turn per round like a group with one. Lanes are checked lazily when they reach the
//! front: a group at its `group_concurrency_max`, or emptied, leaves the ring then, and comes
//! back when a running job of it stops running or a job arrives. A group whose rate bucket is
//! empty is parked until its next token is due. Each step is O(log n) in the jobs of a lane and
//! O(1) amortized in the number of groups.
//!
//! Groups are interned: a group's name is hashed once per job operation (insert, remove, start,
//! stop) to find its slot, and the ring, the parked set and the buckets refer to slots by number,
//! so taking a turn allocates nothing and hashes nothing. A slot is freed (and reused) once its
//! group has no job, no turn, no parked token and a full bucket.
//!
//! Rate buckets live in memory only: after a restart every bucket is full (at most one burst
//! more than the rate, once per restart).

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap, VecDeque};

use dray_core::flow::Rate;
use dray_core::{JobId, Timestamp};
use dray_store::FlowLimits;

/// A job's place in lease order: higher priority, then earlier run time, then enqueue order.
pub(crate) type Entry = (Reverse<i16>, Timestamp, JobId);

/// A lane in the ring: a group's slot, or [`PLAIN`].
type Lane = u32;

/// The lane of the jobs without a group.
const PLAIN: Lane = u32::MAX;

#[derive(Debug, Default)]
pub(crate) struct Lanes {
    /// Eligible jobs without a group key.
    plain: BTreeSet<Entry>,
    plain_in_ring: bool,
    /// Group names to their slot in `slots`.
    ids: HashMap<Box<str>, Lane>,
    slots: Vec<Group>,
    /// Slots free for the next new group.
    free: Vec<Lane>,
    /// Lanes whose turn may come, front first. A lane is here at most once: `Group::in_ring`
    /// (and `plain_in_ring`) say whether it is.
    ring: VecDeque<Lane>,
    /// Groups waiting for a rate token, by when it is due.
    parked: BTreeSet<(Timestamp, Lane)>,
    /// Groups kept only for a bucket that is not full yet, by the bucket's state: forgotten once
    /// it is full. An entry whose group has moved on since (its bucket changed, or it has work
    /// again) is skipped.
    fading: BTreeSet<(i64, Lane)>,
    /// The queue's own bucket.
    queue_tat: Option<i64>,
    limits: FlowLimits,
}

#[derive(Debug, Default)]
struct Group {
    name: Box<str>,
    available: BTreeSet<Entry>,
    running: u32,
    in_ring: bool,
    parked: Option<Timestamp>,
    /// The group's rate bucket, while it is not full (`dray_core::flow`).
    tat: Option<i64>,
}

impl Group {
    fn under_limit(&self, max: Option<u32>) -> bool {
        max.is_none_or(|max| self.running < max)
    }

    fn may_enter_ring(&self, max: Option<u32>) -> bool {
        !self.in_ring && self.parked.is_none() && !self.available.is_empty() && self.under_limit(max)
    }

    /// Nothing but (perhaps) its bucket keeps the group.
    fn quiet(&self) -> bool {
        self.available.is_empty() && self.running == 0 && !self.in_ring && self.parked.is_none()
    }
}

impl Lanes {
    pub fn new(limits: FlowLimits) -> Lanes {
        Lanes { limits, ..Lanes::default() }
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.plain.is_empty() && self.ids.values().all(|&id| self.slots[id as usize].available.is_empty())
    }

    #[cfg(test)]
    fn knows(&self, group: &str) -> bool {
        self.ids.contains_key(group)
    }

    fn group(&self, name: &str) -> Option<&Group> {
        self.ids.get(name).map(|&id| &self.slots[id as usize])
    }

    /// The slot of `name`, made if the group is new.
    fn slot(&mut self, name: &str) -> Lane {
        // Looked up before inserting: `entry` would allocate the name on every call.
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let group = Group { name: name.into(), ..Group::default() };
        let id = match self.free.pop() {
            Some(id) => {
                self.slots[id as usize] = group;
                id
            }
            None => {
                self.slots.push(group);
                u32::try_from(self.slots.len() - 1).expect("fewer than 2^32 - 1 groups in a queue")
            }
        };
        self.ids.insert(name.into(), id);
        id
    }

    /// Puts the group in the ring if its turn may come.
    fn ring_join(&mut self, id: Lane) {
        let g = &mut self.slots[id as usize];
        if g.may_enter_ring(self.limits.group_concurrency_max) {
            g.in_ring = true;
            self.ring.push_back(id);
        }
    }

    /// Forgets the group if nothing keeps it; one kept only for its bucket starts fading.
    fn settle(&mut self, id: Lane) {
        let g = &self.slots[id as usize];
        if !g.quiet() {
            return;
        }
        match g.tat {
            Some(tat) => {
                self.fading.insert((tat, id));
            }
            None => self.forget(id),
        }
    }

    fn forget(&mut self, id: Lane) {
        let g = std::mem::take(&mut self.slots[id as usize]);
        self.ids.remove(&g.name);
        self.free.push(id);
    }

    /// How many jobs of `group` run (for "why is this job waiting").
    pub fn group_running(&self, group: &str) -> u32 {
        self.group(group).map_or(0, |g| g.running)
    }

    /// When `group`'s rate lets it lease again, if its bucket is empty at `now`.
    pub fn group_rate_until(&self, group: &str, now: Timestamp) -> Option<Timestamp> {
        let rate = self.limits.group_rate?;
        rate.ready(self.group(group).and_then(|g| g.tat), now).err()
    }

    /// When `group` comes back from waiting for a rate token, if it is parked.
    #[cfg(test)]
    fn group_parked_until(&self, group: &str) -> Option<Timestamp> {
        self.group(group).and_then(|g| g.parked)
    }

    /// When the queue's rate lets it lease again, if its bucket is empty at `now`.
    pub fn queue_rate_ready(&self, now: Timestamp) -> Result<(), Timestamp> {
        match &self.limits.rate {
            Some(rate) => rate.ready(self.queue_tat, now),
            None => Ok(()),
        }
    }

    pub fn insert(&mut self, group: Option<&str>, e: Entry) {
        match group {
            None => {
                self.plain.insert(e);
                if !self.plain_in_ring {
                    self.plain_in_ring = true;
                    self.ring.push_back(PLAIN);
                }
            }
            Some(name) => {
                let id = self.slot(name);
                self.slots[id as usize].available.insert(e);
                self.ring_join(id);
            }
        }
    }

    pub fn remove(&mut self, group: Option<&str>, e: &Entry) -> bool {
        match group {
            None => self.plain.remove(e),
            Some(name) => {
                let Some(&id) = self.ids.get(name) else { return false };
                let removed = self.slots[id as usize].available.remove(e);
                self.settle(id);
                removed
            }
        }
    }

    /// A job of `group` started (`true`) or stopped running.
    pub fn running_changed(&mut self, group: &str, started: bool) {
        let id = self.slot(group);
        let g = &mut self.slots[id as usize];
        if started {
            g.running += 1;
        } else {
            g.running -= 1;
            self.ring_join(id);
        }
        self.settle(id);
    }

    /// New limits: groups a lower limit held back, or a removed rate parked, may take turns again.
    pub fn limits_set(&mut self, limits: FlowLimits) {
        let old = std::mem::replace(&mut self.limits, limits);
        if old.group_rate != limits.group_rate {
            for (_, id) in std::mem::take(&mut self.parked) {
                self.slots[id as usize].parked = None;
            }
            self.fading.clear();
            for &id in self.ids.values() {
                self.slots[id as usize].tat = None;
            }
        }
        if old.rate != limits.rate {
            self.queue_tat = None;
        }
        let ids: Vec<Lane> = self.ids.values().copied().collect();
        for id in ids {
            self.ring_join(id);
            self.settle(id);
        }
    }

    /// Brings back the groups whose rate token is due at `now`, and forgets full buckets.
    pub fn tick(&mut self, now: Timestamp) {
        while let Some(&(at, id)) = self.parked.first() {
            if at > now {
                break;
            }
            self.parked.pop_first();
            self.slots[id as usize].parked = None;
            self.ring_join(id);
            self.settle(id);
        }
        while let Some(&(tat, id)) = self.fading.first() {
            if !Rate::idle(tat, now) {
                break;
            }
            self.fading.pop_first();
            let g = &mut self.slots[id as usize];
            // Skipped when the group moved on: it took a token since, or has work again.
            if g.tat == Some(tat) && g.quiet() {
                self.forget(id);
            }
        }
    }

    /// The job whose turn it is, leaving its lane at the front of the ring; `None` when no lane
    /// may lease now. Drops lanes that cannot lease from the ring on the way, and parks groups
    /// whose bucket is empty.
    pub fn next(&mut self, now: Timestamp) -> Option<Entry> {
        let max = self.limits.group_concurrency_max;
        loop {
            let id = *self.ring.front()?;
            if id == PLAIN {
                if let Some(e) = self.plain.first() {
                    return Some(*e);
                }
                self.ring.pop_front();
                self.plain_in_ring = false;
                continue;
            }
            let g = &mut self.slots[id as usize];
            let ready = match &self.limits.group_rate {
                Some(rate) => rate.ready(g.tat, now),
                None => Ok(()),
            };
            match (g.available.first(), g.under_limit(max), ready) {
                (Some(e), true, Ok(())) => return Some(*e),
                (Some(_), true, Err(at)) => {
                    g.parked = Some(at);
                    g.in_ring = false;
                    self.ring.pop_front();
                    self.parked.insert((at, id));
                }
                _ => {
                    g.in_ring = false;
                    self.ring.pop_front();
                    self.settle(id);
                }
            }
        }
    }

    /// The front lane's job (from [`Lanes::next`]) was leased: spend the tokens and move the
    /// lane to the back of the ring.
    pub fn taken(&mut self, now: Timestamp) {
        if let Some(rate) = &self.limits.rate {
            self.queue_tat = Some(rate.take(self.queue_tat, now, 1).1);
        }
        let Some(lane) = self.ring.pop_front() else { return };
        if let (true, Some(rate)) = (lane != PLAIN, &self.limits.group_rate) {
            let g = &mut self.slots[lane as usize];
            g.tat = Some(rate.take(g.tat, now, 1).1);
        }
        self.ring.push_back(lane);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(id: u64) -> Entry {
        (Reverse(0), Timestamp(0), JobId(id))
    }

    /// Takes up to `n` jobs the way a lease does (the caller removes each and marks it running).
    fn take(l: &mut Lanes, now: Timestamp, n: usize, groups: &HashMap<u64, Option<&str>>) -> Vec<u64> {
        let mut out = Vec::new();
        while out.len() < n {
            let Some(entry) = l.next(now) else { break };
            let group = groups[&entry.2.0];
            assert!(l.remove(group, &entry));
            if let Some(g) = group {
                l.running_changed(g, true);
            }
            l.taken(now);
            out.push(entry.2.0);
        }
        out
    }

    #[test]
    fn groups_take_turns_and_idle_groups_are_forgotten() {
        let mut l = Lanes::new(FlowLimits::default());
        let mut groups = HashMap::new();
        for id in 1..=10 {
            l.insert(Some("big"), e(id));
            groups.insert(id, Some("big"));
        }
        l.insert(Some("small"), e(11));
        groups.insert(11, Some("small"));
        l.insert(None, e(12));
        groups.insert(12, None);
        assert_eq!(take(&mut l, Timestamp(0), 4, &groups), vec![1, 11, 12, 2]);
        for g in ["big", "small"] {
            for _ in 0..l.group_running(g) {
                l.running_changed(g, false);
            }
        }
        assert_eq!(take(&mut l, Timestamp(0), 100, &groups).len(), 8);
        assert!(l.is_empty());
        assert!(!l.knows("small"), "an idle group leaves no state behind once passed over");
    }

    #[test]
    fn a_group_at_its_limit_returns_when_a_job_stops() {
        let limits = FlowLimits { group_concurrency_max: Some(1), ..FlowLimits::default() };
        let mut l = Lanes::new(limits);
        let groups: HashMap<u64, Option<&str>> = (1..=3).map(|id| (id, Some("g"))).collect();
        for id in 1..=3 {
            l.insert(Some("g"), e(id));
        }
        assert_eq!(take(&mut l, Timestamp(0), 10, &groups), vec![1]);
        assert_eq!(l.ring.len(), 0, "the group left the ring at its limit");
        l.running_changed("g", false);
        assert_eq!(take(&mut l, Timestamp(0), 10, &groups), vec![2]);
    }

    #[test]
    fn an_empty_bucket_parks_its_group_until_the_token_is_due() {
        let limits = FlowLimits { group_rate: Some(Rate { limit: 1, per_ms: 100, burst: 1 }), ..FlowLimits::default() };
        let mut l = Lanes::new(limits);
        let groups: HashMap<u64, Option<&str>> = (1..=3).map(|id| (id, Some("g"))).collect();
        for id in 1..=3 {
            l.insert(Some("g"), e(id));
        }
        assert_eq!(take(&mut l, Timestamp(0), 10, &groups), vec![1]);
        assert_eq!(l.group_parked_until("g"), Some(Timestamp(100)));
        l.tick(Timestamp(99));
        assert_eq!(take(&mut l, Timestamp(99), 10, &groups), Vec::<u64>::new());
        l.tick(Timestamp(100));
        assert_eq!(take(&mut l, Timestamp(100), 10, &groups), vec![2]);
        for _ in 0..2 {
            l.tick(Timestamp(10_000));
            let _ = take(&mut l, Timestamp(10_000), 10, &groups);
            l.running_changed("g", false);
        }
        l.running_changed("g", false);
        assert!(l.knows("g"), "a quiet group is kept while its bucket is not full");
        l.tick(Timestamp(20_000));
        assert!(!l.knows("g"), "a bucket full again is forgotten, with its group");
        assert!(l.slots.len() <= 1 && l.fading.is_empty());
    }
}
