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
//! Rate buckets live in memory only: after a restart every bucket is full (at most one burst
//! more than the rate, once per restart).

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap, VecDeque};

use dray_core::flow::Rate;
use dray_core::{JobId, Timestamp};
use dray_store::FlowLimits;

/// A job's place in lease order: higher priority, then earlier run time, then enqueue order.
pub(crate) type Entry = (Reverse<i16>, Timestamp, JobId);

#[derive(Debug, Default)]
pub(crate) struct Lanes {
    /// Eligible jobs without a group key.
    plain: BTreeSet<Entry>,
    plain_in_ring: bool,
    groups: HashMap<Box<str>, Group>,
    /// Lanes whose turn may come, front first (`None` is the plain lane). A group is here at
    /// most once: `Group::in_ring` says whether it is.
    ring: VecDeque<Option<Box<str>>>,
    /// Groups waiting for a rate token, by when it is due.
    parked: BTreeSet<(Timestamp, Box<str>)>,
    /// Group buckets that are not full (`dray_core::flow`), and the same by state for forgetting
    /// them once full again.
    tats: HashMap<Box<str>, i64>,
    tats_by_time: BTreeSet<(i64, Box<str>)>,
    /// The queue's own bucket.
    queue_tat: Option<i64>,
    limits: FlowLimits,
}

#[derive(Debug, Default)]
struct Group {
    available: BTreeSet<Entry>,
    running: u32,
    in_ring: bool,
    parked: Option<Timestamp>,
}

impl Group {
    fn under_limit(&self, max: Option<u32>) -> bool {
        max.is_none_or(|max| self.running < max)
    }

    fn may_enter_ring(&self, max: Option<u32>) -> bool {
        !self.in_ring && self.parked.is_none() && !self.available.is_empty() && self.under_limit(max)
    }

    fn idle(&self) -> bool {
        self.available.is_empty() && self.running == 0 && !self.in_ring && self.parked.is_none()
    }
}

impl Lanes {
    pub fn new(limits: FlowLimits) -> Lanes {
        Lanes { limits, ..Lanes::default() }
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.plain.is_empty() && self.groups.values().all(|g| g.available.is_empty())
    }

    /// How many jobs of `group` run (for "why is this job waiting").
    pub fn group_running(&self, group: &str) -> u32 {
        self.groups.get(group).map_or(0, |g| g.running)
    }

    /// When `group`'s rate lets it lease again, if its bucket is empty at `now`.
    pub fn group_rate_until(&self, group: &str, now: Timestamp) -> Option<Timestamp> {
        let rate = self.limits.group_rate?;
        rate.ready(self.tats.get(group).copied(), now).err()
    }

    /// When `group` comes back from waiting for a rate token, if it is parked.
    #[cfg(test)]
    fn group_parked_until(&self, group: &str) -> Option<Timestamp> {
        self.groups.get(group).and_then(|g| g.parked)
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
                    self.ring.push_back(None);
                }
            }
            Some(name) => {
                // Looked up before inserting: `entry` would allocate the name on every call.
                if !self.groups.contains_key(name) {
                    self.groups.insert(name.into(), Group::default());
                }
                let g = self.groups.get_mut(name).expect("inserted above");
                g.available.insert(e);
                if g.may_enter_ring(self.limits.group_concurrency_max) {
                    g.in_ring = true;
                    self.ring.push_back(Some(name.into()));
                }
            }
        }
    }

    pub fn remove(&mut self, group: Option<&str>, e: &Entry) -> bool {
        match group {
            None => self.plain.remove(e),
            Some(name) => {
                let Some(g) = self.groups.get_mut(name) else { return false };
                let removed = g.available.remove(e);
                self.forget_if_idle(name);
                removed
            }
        }
    }

    /// A job of `group` started (`true`) or stopped running.
    pub fn running_changed(&mut self, group: &str, started: bool) {
        if !self.groups.contains_key(group) {
            self.groups.insert(group.into(), Group::default());
        }
        let max = self.limits.group_concurrency_max;
        let g = self.groups.get_mut(group).expect("inserted above");
        if started {
            g.running += 1;
        } else {
            g.running -= 1;
            if g.may_enter_ring(max) {
                g.in_ring = true;
                self.ring.push_back(Some(group.into()));
            }
        }
        self.forget_if_idle(group);
    }

    fn forget_if_idle(&mut self, group: &str) {
        if self.groups.get(group).is_some_and(Group::idle) {
            self.groups.remove(group);
        }
    }

    /// New limits: groups a lower limit held back, or a removed rate parked, may take turns again.
    pub fn limits_set(&mut self, limits: FlowLimits) {
        let old = std::mem::replace(&mut self.limits, limits);
        if old.group_rate != limits.group_rate {
            for (_, name) in std::mem::take(&mut self.parked) {
                if let Some(g) = self.groups.get_mut(&name) {
                    g.parked = None;
                }
            }
            self.tats.clear();
            self.tats_by_time.clear();
        }
        if old.rate != limits.rate {
            self.queue_tat = None;
        }
        let max = limits.group_concurrency_max;
        for (name, g) in &mut self.groups {
            if g.may_enter_ring(max) {
                g.in_ring = true;
                self.ring.push_back(Some(name.clone()));
            }
        }
    }

    /// Brings back the groups whose rate token is due at `now`, and forgets full buckets.
    pub fn tick(&mut self, now: Timestamp) {
        while let Some((at, _)) = self.parked.first() {
            if *at > now {
                break;
            }
            let (_, name) = self.parked.pop_first().expect("checked above");
            let max = self.limits.group_concurrency_max;
            if let Some(g) = self.groups.get_mut(&name) {
                g.parked = None;
                if g.may_enter_ring(max) {
                    g.in_ring = true;
                    self.ring.push_back(Some(name.clone()));
                }
            }
            self.forget_if_idle(&name);
        }
        while let Some((tat, _)) = self.tats_by_time.first() {
            if !Rate::idle(*tat, now) {
                break;
            }
            let (_, name) = self.tats_by_time.pop_first().expect("checked above");
            self.tats.remove(&name);
        }
    }

    /// The job whose turn it is, leaving its lane at the front of the ring; `None` when no lane
    /// may lease now. Drops lanes that cannot lease from the ring on the way, and parks groups
    /// whose bucket is empty.
    pub fn next(&mut self, now: Timestamp) -> Option<Entry> {
        let max = self.limits.group_concurrency_max;
        loop {
            let front = self.ring.front()?;
            let Some(name) = front else {
                if let Some(e) = self.plain.first() {
                    return Some(*e);
                }
                self.ring.pop_front();
                self.plain_in_ring = false;
                continue;
            };
            let g = self.groups.get_mut(name).expect("a group in the ring is known");
            let ready = match &self.limits.group_rate {
                Some(rate) => rate.ready(self.tats.get(name).copied(), now),
                None => Ok(()),
            };
            match (g.available.first(), g.under_limit(max), ready) {
                (Some(e), true, Ok(())) => return Some(*e),
                (Some(_), true, Err(at)) => {
                    g.parked = Some(at);
                    g.in_ring = false;
                    let name = self.ring.pop_front().flatten().expect("the front is this group");
                    self.parked.insert((at, name));
                }
                _ => {
                    g.in_ring = false;
                    let name = self.ring.pop_front().flatten().expect("the front is this group");
                    self.forget_if_idle(&name);
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
        if let (Some(name), Some(rate)) = (&lane, &self.limits.group_rate) {
            let old = self.tats.get(name).copied();
            let (_, tat) = rate.take(old, now, 1);
            if let Some(old) = old {
                self.tats_by_time.remove(&(old, name.clone()));
            }
            self.tats.insert(name.clone(), tat);
            self.tats_by_time.insert((tat, name.clone()));
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
        assert!(!l.groups.contains_key("small"), "an idle group leaves no state behind once passed over");
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
        l.tick(Timestamp(10_000));
        assert!(l.tats.is_empty(), "a bucket full again is forgotten");
    }
}
