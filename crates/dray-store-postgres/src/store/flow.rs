//! Flow limits on the lease path: a queue's `concurrency_max`, its `group_concurrency_max` per
//! `group_key`, its token buckets (`rate`, `group_rate`) and the turns its groups take.
//!
//! A queue with none of these and no grouped job available is leased by `sql::LEASE` alone and
//! never comes here. For the others ("flow queues", `sql::FLOW_QUEUE`) the lease, in the same
//! transaction:
//!
//! 1. takes one transaction-level advisory lock per flow queue (`sql::FLOW_LOCK`, which says why
//!    per queue) and reads the clock again once they are held;
//! 2. promotes the queue's due waiting jobs, then reads its running jobs, its bucket and the group
//!    served last (`sql::FLOW_STATE`), and decides how many jobs it may lease (the budget);
//! 3. walks the groups with an available job in turn order, starting after the one served last
//!    (`sql::GROUPS_NEXT`, the jobs without a group being one more turn, `""`), reads each
//!    group's running jobs and bucket when the queue has group limits (`sql::GROUPS_STATE`), and
//!    deals the budget out one job per group per round, as far as each group's own limits allow;
//! 4. locks that many jobs of each group in lease order (`sql::FLOW_TAKE`), and deals out again
//!    what groups could not use (fewer eligible jobs than dealt) to the others;
//! 5. once the ordering keys' re-check has made the picks final, charges the buckets
//!    with `dray_core::Rate::take` (the same arithmetic as the embedded store) and saves the
//!    group whose job was dealt last, where the next lease starts (`sql::BUCKETS_SAVE`,
//!    `sql::TURNS_SAVE`).
//!
//! Permits are running jobs, counted under the lock: every way out of `running` (completion,
//! failure, cancellation, expiry) gives one back without coming here.

use std::collections::HashMap;

use dray_core::{Event, Limits, Timestamp, transition};
use dray_store::{FlowLimits, QueueConfig};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Row, Statement};

use super::{Fail, PostgresStore, Transaction, clock_us, ms_floor, prep, rejected};
use crate::error::corrupt;
use crate::row::{get, to_time};

/// Groups a lease of one queue examines at most (those at their limits included) before it gives
/// up for this call. When it gives up having served nobody, the turn moves past the groups it
/// examined, so the next lease looks further instead of at the same blocked groups.
const GROUPS_SCANNED_MAX: usize = 2_000;

/// Rounds of dealing out per queue and lease: the first, then the rest of groups that had fewer
/// eligible jobs than dealt. Each round either fills the budget or runs out of a group.
const DEAL_ROUNDS_MAX: usize = 8;

/// Blocked groups are likely when the queue has group limits: read more groups than needed, at
/// first this many, twice as many with each further chunk up to [`GROUPS_CHUNK_MAX`], so that a
/// long run of blocked groups costs a few round trips.
const GROUPS_CHUNK_MIN: u32 = 32;
const GROUPS_CHUNK_MAX: u32 = 1_024;

/// What one flow queue's lease read and decided, kept until the picks are final to charge the
/// buckets and move the turn.
#[derive(Debug)]
pub(super) struct FlowLease {
    queue: String,
    limits: FlowLimits,
    /// The queue's own bucket as read.
    tat: Option<i64>,
    /// The groups' buckets as read (groups with limits only).
    group_tats: HashMap<String, Option<i64>>,
    /// The groups examined, in turn order (`""`: the jobs without a group).
    order: Vec<String>,
    /// The last group examined when the scan stopped at [`GROUPS_SCANNED_MAX`].
    scanned_to: Option<String>,
}

/// One group's turn in this lease.
struct Turn {
    key: String,
    /// How many of its jobs its own limits allow now.
    allowance: u32,
    taken: u32,
    /// It had fewer eligible jobs than it was dealt.
    exhausted: bool,
}

impl Turn {
    fn room(&self) -> bool {
        !self.exhausted && self.taken < self.allowance
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The groups after the one served last, in key order.
    After,
    /// The jobs without a group.
    Ungrouped,
    /// The groups from the first up to the one served last.
    Before,
    Done,
}

/// The groups with an available job, in turn order, read a chunk at a time.
struct Rotation {
    after: String,
    pos: String,
    phase: Phase,
    ungrouped: bool,
}

impl Rotation {
    async fn next(
        &mut self,
        tx: &Transaction<'_>,
        st: &Statement,
        queue: &str,
        want: u32,
    ) -> Result<Vec<String>, Fail> {
        let mut out: Vec<String> = Vec::new();
        while (out.len() as u32) < want && self.phase != Phase::Done {
            match self.phase {
                Phase::After | Phase::Before => {
                    let n = i64::from(want) - out.len() as i64;
                    let upto: Option<&str> = (self.phase == Phase::Before).then_some(self.after.as_str());
                    let params: [&(dyn ToSql + Sync); 4] = [&queue, &self.pos, &upto, &n];
                    let keys: Vec<String> =
                        tx.query(st, &params).await?.iter().map(|r| get(r, "k")).collect::<Result<_, _>>()?;
                    if let Some(last) = keys.last() {
                        self.pos.clone_from(last);
                    }
                    if (keys.len() as i64) < n {
                        self.phase = if self.phase == Phase::After { Phase::Ungrouped } else { Phase::Done };
                    }
                    out.extend(keys);
                }
                Phase::Ungrouped => {
                    if self.ungrouped {
                        out.push(String::new());
                    }
                    if self.after.is_empty() {
                        self.phase = Phase::Done;
                    } else {
                        self.pos = String::new();
                        self.phase = Phase::Before;
                    }
                }
                Phase::Done => {}
            }
        }
        Ok(out)
    }
}

impl PostgresStore {
    /// Takes the flow locks of `queues` (see `sql::FLOW_LOCK`) and returns the instant the lease
    /// decides at: under `TimeSource::Database` the database's clock read once the locks are held
    /// (a lease that waited for them must not count from before the wait), else `now`.
    pub(super) async fn flow_lock(
        &self,
        tx: &Transaction<'_>,
        queues: &[&str],
        now: Timestamp,
        clock: Option<&Statement>,
    ) -> Result<Timestamp, Fail> {
        let st = prep(tx, &self.sql.flow_lock).await?;
        let params: [&(dyn ToSql + Sync); 1] = [&queues];
        match clock {
            None => {
                tx.query_one(&st, &params).await?;
                Ok(now)
            }
            Some(clock) => {
                // Pipelined in this order: the clock is read once the locks are held.
                let (_, t) = tokio::try_join!(tx.query_one(&st, &params), tx.query_one(clock, &[]))?;
                Ok(ms_floor(clock_us(&t)?).max(now))
            }
        }
    }

    /// Leases at most `count` jobs of the flow queue `config`, its lock held: the rows (shaped
    /// like `sql::LEASE`'s, each with its fencing token and payload) and what to charge once the
    /// picks are final ([`Self::flow_charge`]).
    pub(super) async fn flow_lease(
        &self,
        tx: &Transaction<'_>,
        config: &QueueConfig,
        now: Timestamp,
        count: u32,
    ) -> Result<(Vec<Row>, FlowLease), Fail> {
        let queue = config.name.as_str();
        let limits = config.limits;
        let at = to_time(now);
        let promote_max = Limits::LEASE_JOBS_MAX as i64;
        let (due_st, state_st) = tokio::try_join!(prep(tx, &self.sql.flow_due), prep(tx, &self.sql.flow_state))?;
        let due_params: [&(dyn ToSql + Sync); 3] = [&queue, &at, &promote_max];
        let concurrency_max = limits.concurrency_max.map(i64::from);
        let state_params: [&(dyn ToSql + Sync); 2] = [&queue, &concurrency_max];
        let (due, state) = tokio::try_join!(tx.query(&due_st, &due_params), tx.query_one(&state_st, &state_params))?;

        // Due jobs become available first, written now so that the statements below see them.
        let mut promoted = Vec::with_capacity(due.len());
        for row in &due {
            let mut l = super::loaded(row)?;
            let t = transition(&l.job, Event::Promote, now, 0).map_err(|r| rejected(l.job.id, r))?;
            l.apply(t);
            promoted.push(l);
        }
        if !promoted.is_empty() {
            self.write(tx, &promoted, &[queue]).await?;
        }

        let running: i64 = get(&state, "running")?;
        let tat: Option<i64> = get(&state, "tat")?;
        let last_group: Option<String> = get(&state, "last_group")?;
        let ungrouped: bool = get::<bool>(&state, "ungrouped")? || promoted.iter().any(|l| l.job.group_key.is_none());
        let mut flow = FlowLease {
            queue: queue.to_owned(),
            limits,
            tat,
            group_tats: HashMap::new(),
            order: Vec::new(),
            scanned_to: None,
        };

        let mut budget = count;
        if let Some(max) = limits.concurrency_max {
            let running = u32::try_from(running).unwrap_or(u32::MAX);
            budget = budget.min(max.saturating_sub(running));
        }
        if let Some(rate) = limits.rate {
            budget = budget.min(rate.take(tat, now, budget).0);
        }
        if budget == 0 {
            return Ok((Vec::new(), flow));
        }

        let group_limited = limits.group_concurrency_max.is_some() || limits.group_rate.is_some();
        let group_concurrency_max = limits.group_concurrency_max.map(i64::from);
        let after = last_group.unwrap_or_default();
        let mut rotation = Rotation { pos: after.clone(), after, phase: Phase::After, ungrouped };
        let (next_st, groups_st, take_st) = tokio::try_join!(
            prep(tx, &self.sql.groups_next),
            prep(tx, &self.sql.groups_state),
            prep(tx, &self.sql.flow_take),
        )?;

        let mut turns: Vec<Turn> = Vec::new();
        let mut remaining = budget;
        let mut scanned = 0usize;
        let mut rows: Vec<Row> = Vec::new();
        let mut taken_ids: Vec<i64> = Vec::new();
        let mut chunk_min = GROUPS_CHUNK_MIN;
        for _ in 0..DEAL_ROUNDS_MAX {
            let mut room = turns.iter().filter(|t| t.room()).count() as u32;
            while room < remaining && rotation.phase != Phase::Done && scanned < GROUPS_SCANNED_MAX {
                let mut want = remaining - room;
                if group_limited {
                    want = want.max(chunk_min);
                    chunk_min = (chunk_min * 2).min(GROUPS_CHUNK_MAX);
                }
                let keys = rotation.next(tx, &next_st, queue, want).await?;
                scanned += keys.len();
                let mut states: HashMap<String, (i64, Option<i64>)> = HashMap::new();
                if group_limited {
                    let grouped: Vec<&str> = keys.iter().map(String::as_str).filter(|k| !k.is_empty()).collect();
                    let params: [&(dyn ToSql + Sync); 3] = [&queue, &grouped, &group_concurrency_max];
                    for row in tx.query(&groups_st, &params).await? {
                        states.insert(get(&row, "key")?, (get(&row, "running")?, get(&row, "tat")?));
                    }
                }
                for key in keys {
                    let mut allowance = budget;
                    if !key.is_empty() && group_limited {
                        let (running, tat) = states.get(&key).copied().unwrap_or((0, None));
                        if let Some(max) = limits.group_concurrency_max {
                            allowance = allowance.min(max.saturating_sub(u32::try_from(running).unwrap_or(u32::MAX)));
                        }
                        if let Some(rate) = limits.group_rate {
                            allowance = allowance.min(rate.take(tat, now, allowance).0);
                        }
                        flow.group_tats.insert(key.clone(), tat);
                    }
                    if allowance > 0 {
                        room += 1;
                    }
                    turns.push(Turn { key, allowance, taken: 0, exhausted: false });
                }
            }
            if room == 0 {
                break;
            }
            let dealt = deal(&turns, remaining);
            let mut keys: Vec<&str> = Vec::new();
            let mut quotas: Vec<i64> = Vec::new();
            let mut ungrouped_quota = 0i64;
            for (turn, &n) in turns.iter().zip(&dealt).filter(|(_, n)| **n > 0) {
                if turn.key.is_empty() {
                    ungrouped_quota = i64::from(n);
                } else {
                    keys.push(&turn.key);
                    quotas.push(i64::from(n));
                }
            }
            let params: [&(dyn ToSql + Sync); 5] = [&queue, &keys, &quotas, &taken_ids, &ungrouped_quota];
            let got = tx.query(&take_st, &params).await?;
            let mut per_group: HashMap<String, u32> = HashMap::new();
            for row in &got {
                let key: Option<String> = get(row, "group_key")?;
                *per_group.entry(key.unwrap_or_default()).or_default() += 1;
                taken_ids.push(get(row, "id")?);
            }
            for (turn, &n) in turns.iter_mut().zip(&dealt) {
                let got = per_group.get(&turn.key).copied().unwrap_or(0);
                if got > n {
                    return Err(
                        corrupt(format!("group {:?} of queue {queue}: {got} jobs taken of {n}", turn.key)).into()
                    );
                }
                turn.taken += got;
                turn.exhausted |= got < n;
            }
            remaining -= got.len() as u32;
            rows.extend(got);
            if remaining == 0 {
                break;
            }
        }
        flow.order = turns.into_iter().map(|t| t.key).collect();
        if rows.is_empty() && scanned >= GROUPS_SCANNED_MAX {
            flow.scanned_to = flow.order.last().cloned();
        }
        Ok((rows, flow))
    }

    /// Charges the buckets of `flows` for the jobs finally leased (`leased`: per queue and group,
    /// `""` for jobs without a group) and saves each queue's turn: the group whose job was dealt
    /// last, taken as the last in turn order of those that got the most jobs.
    pub(super) async fn flow_charge(
        &self,
        tx: &Transaction<'_>,
        flows: &[FlowLease],
        leased: &HashMap<(&str, &str), u32>,
        now: Timestamp,
    ) -> Result<(), Fail> {
        let mut buckets: (Vec<&str>, Vec<&str>, Vec<i64>) = Default::default();
        let mut turns: (Vec<&str>, Vec<&str>) = Default::default();
        for flow in flows {
            let queue = flow.queue.as_str();
            let of = |key: &str| leased.get(&(queue, key)).copied().unwrap_or(0);
            let total: u32 = flow.order.iter().map(|k| of(k)).sum();
            if let (Some(rate), true) = (flow.limits.rate, total > 0) {
                let (granted, tat) = rate.take(flow.tat, now, total);
                debug_assert_eq!(granted, total, "queue {queue} leased past its rate");
                buckets.0.push(queue);
                buckets.1.push("");
                buckets.2.push(tat);
            }
            if let Some(rate) = flow.limits.group_rate {
                for key in flow.order.iter().filter(|k| !k.is_empty() && of(k) > 0) {
                    let tat = flow.group_tats.get(key).copied().flatten();
                    let (granted, tat) = rate.take(tat, now, of(key));
                    debug_assert_eq!(granted, of(key), "group {key} of queue {queue} leased past its rate");
                    buckets.0.push(queue);
                    buckets.1.push(key);
                    buckets.2.push(tat);
                }
            }
            let most = flow.order.iter().map(|k| of(k)).max().unwrap_or(0);
            let last = if most > 0 {
                flow.order.iter().rev().find(|k| of(k) == most).map(String::as_str)
            } else {
                flow.scanned_to.as_deref()
            };
            if let Some(last) = last {
                turns.0.push(queue);
                turns.1.push(last);
            }
        }
        let save_buckets = async {
            if buckets.0.is_empty() {
                return Ok(());
            }
            let st = prep(tx, &self.sql.buckets_save).await?;
            let params: [&(dyn ToSql + Sync); 3] = [&buckets.0, &buckets.1, &buckets.2];
            tx.execute(&st, &params).await?;
            Ok::<(), Fail>(())
        };
        let save_turns = async {
            if turns.0.is_empty() {
                return Ok(());
            }
            let st = prep(tx, &self.sql.turns_save).await?;
            let params: [&(dyn ToSql + Sync); 2] = [&turns.0, &turns.1];
            tx.execute(&st, &params).await?;
            Ok::<(), Fail>(())
        };
        tokio::try_join!(save_buckets, save_turns)?;
        Ok(())
    }
}

/// Deals `budget` jobs out to the turns with room, one per turn per round in turn order, each up
/// to its allowance: how many each is dealt.
fn deal(turns: &[Turn], budget: u32) -> Vec<u32> {
    let mut dealt = vec![0u32; turns.len()];
    let mut left = budget;
    while left > 0 {
        let mut any = false;
        for (turn, n) in turns.iter().zip(dealt.iter_mut()) {
            if left == 0 {
                break;
            }
            if turn.room() && turn.taken + *n < turn.allowance {
                *n += 1;
                left -= 1;
                any = true;
            }
        }
        if !any {
            break;
        }
    }
    dealt
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(key: &str, allowance: u32, taken: u32, exhausted: bool) -> Turn {
        Turn { key: key.into(), allowance, taken, exhausted }
    }

    #[test]
    fn dealing_takes_turns_up_to_each_allowance() {
        let check = |turns: &[Turn], budget: u32, want: &[u32]| assert_eq!(deal(turns, budget), want);
        check(&[turn("big", 4, 0, false), turn("small", 4, 0, false)], 4, &[2, 2]);
        check(&[turn("a", 1, 0, false), turn("b", 1, 0, false), turn("", 10, 0, false)], 10, &[1, 1, 8]);
        check(&[turn("a", 3, 0, false), turn("b", 3, 0, false)], 3, &[2, 1]);
        // A group that ran out of jobs or is at its limit is dealt nothing more.
        check(&[turn("a", 5, 1, true), turn("b", 5, 2, false), turn("c", 0, 0, false)], 4, &[0, 3, 0]);
    }
}
