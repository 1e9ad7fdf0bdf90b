//! Schedules in the PostgreSQL store, deciding exactly as the embedded store does
//! (`dray-store-embedded/src/schedule.rs`) with the core's `plan` and `Overlap::decide`.
//!
//! A tick of one schedule is one transaction: the schedule's row is locked (`FOR UPDATE SKIP
//! LOCKED`, so a row another node is ticking is passed over), the plan is made from the cursor
//! read under that lock, the jobs are inserted through the same code as `job_insert`, and the new
//! cursor is written guarded by the old one and by the leader's fence. The cursor and the jobs
//! commit together or not at all, and a second tick of the same instant (another node, a deposed
//! leader, a retry after a lost reply) finds the cursor already past it: every tick instant
//! enqueues at most once, whichever nodes tick and whenever they die.

use std::time::SystemTime;

use dray_core::cron::Rule;
use dray_core::schedule::{Fire, LastTick, OverlapAction, plan};
use dray_core::{Invalid, JobId, Limits, Misfire, NewJob, Overlap, Schedule, Timestamp};
use dray_store::{
    Error, JobCancel, ScheduleDelete, SchedulePause, SchedulePut, ScheduleSaved, ScheduleTrigger, SchedulesTick,
    TickFired, Ticked, jitter_random, payload_checked,
};
use tokio_postgres::types::ToSql;

use super::{Fail, PostgresStore, TX_ATTEMPTS_MAX, Transaction, prep, prep_client};
use crate::error::{corrupt, db_error};
use crate::leader::Fence;
use crate::row::{get, id_to_sql, ms_to_sql, queue_from_row, schedule_from_row, to_time};

impl PostgresStore {
    pub(super) async fn schedule_put_in(&self, tx: &Transaction<'_>, p: &SchedulePut) -> Result<ScheduleSaved, Fail> {
        let SchedulePut { now, spec, create_only } = p;
        let name = spec.name.as_str();
        let queue = spec.template.queue.as_str();
        let lock_st = prep(tx, &self.sql.schedule_put_lock).await?;
        tx.execute(&lock_st, &[]).await?;
        let (queue_st, row_st) = tokio::try_join!(prep(tx, &self.sql.queue_get), prep(tx, &self.sql.schedule_lock))?;
        let (now, queue_row, current) = tokio::try_join!(
            self.now(tx, *now),
            async { Ok::<_, Fail>(tx.query_opt(&queue_st, &[&queue]).await?) },
            async { Ok::<_, Fail>(tx.query_opt(&row_st, &[&name]).await?) },
        )?;
        if let Some(row) = queue_row {
            let config = queue_from_row(&row)?;
            payload_checked(self.payload_check.get().map(|c| c.as_ref()), &config, &spec.template.payload)
                .map_err(|e| Invalid { field: format!("job.{}", e.field), ..e })?;
        }
        let (schedule, created) = match current {
            Some(_) if *create_only => return Err(Error::ScheduleExists(spec.name.clone()).into()),
            Some(row) => (schedule_from_row(&row)?.replaced(spec.clone(), now), false),
            None => {
                let st = prep(tx, &self.sql.schedule_count).await?;
                let count: i64 = get(&tx.query_one(&st, &[]).await?, "count")?;
                if count >= Limits::SCHEDULES_MAX as i64 {
                    return Err(Error::TooManySchedules.into());
                }
                (Schedule::new(spec.clone(), now), true)
            }
        };
        self.schedule_save(tx, &schedule).await?;
        Ok(ScheduleSaved { schedule, created })
    }

    pub(super) async fn schedule_get_one(&self, name: &str) -> Result<Option<Schedule>, Error> {
        let row = on_client!(self, |client| async {
            let st = prep_client(&client, &self.sql.schedule_get).await?;
            client.query_opt(&st, &[&name]).await.map_err(db_error)
        })?;
        row.map(|row| schedule_from_row(&row)).transpose()
    }

    pub(super) async fn schedule_list_all(&self) -> Result<Vec<Schedule>, Error> {
        let rows = on_client!(self, |client| async {
            let st = prep_client(&client, &self.sql.schedule_list).await?;
            client.query(&st, &[]).await.map_err(db_error)
        })?;
        rows.iter().map(schedule_from_row).collect()
    }

    /// One statement: atomic on its own.
    pub(super) async fn schedule_delete_one(&self, p: &ScheduleDelete) -> Result<(), Error> {
        let name = p.name.as_str();
        let deleted = on_client!(self, |client| async {
            let st = prep_client(&client, &self.sql.schedule_delete).await?;
            client.query(&st, &[&name]).await.map_err(db_error)
        })?;
        if deleted.is_empty() {
            return Err(Error::ScheduleNotFound(p.name.clone()));
        }
        Ok(())
    }

    pub(super) async fn schedule_pause_in(&self, tx: &Transaction<'_>, p: &SchedulePause) -> Result<Schedule, Fail> {
        let (now, current) = tokio::try_join!(self.now(tx, p.now), self.schedule_locked(tx, p))?;
        let current = schedule_from_row(&current)?;
        if current.spec.paused == p.paused {
            return Ok(current);
        }
        let schedule = current.paused(p.paused, now);
        self.schedule_save(tx, &schedule).await?;
        Ok(schedule)
    }

    pub(super) async fn schedule_trigger_in(&self, tx: &Transaction<'_>, p: &ScheduleTrigger) -> Result<Ticked, Fail> {
        let (now, row) = tokio::try_join!(self.now(tx, p.now), self.schedule_locked(tx, p))?;
        let mut schedule = schedule_from_row(&row)?;
        let fire = Fire { at: now, ticks: 1 };
        let new = schedule.job_for(now, now, p.random);
        let id = self.insert_one(tx, now, new).await?;
        schedule.last = Some(LastTick { at: now, job: id, fired_at: now });
        self.schedule_save(tx, &schedule).await?;
        Ok(Ticked {
            name: p.name.clone(),
            now,
            fired: vec![TickFired { fire, job: Some(id), cancelled: None }],
            missed: 0,
            dropped: 0,
            next_at: schedule.next_at,
            error: None,
        })
    }

    /// The tick pass: the leader's only (a follower returns at once, acting on nothing), every
    /// statement fenced with its term's epoch. One transaction per schedule, as in the embedded
    /// store: a schedule that fails holds back no tick already committed.
    pub(super) async fn schedules_tick_all(&self, p: SchedulesTick) -> Result<Vec<Ticked>, Error> {
        p.validate()?;
        let fence = self.leadership.fence();
        if fence == Fence::Follower {
            return Ok(Vec::new());
        }
        let (fence_name, epoch) = fence.params();
        let now = self.now_param(p.now);
        let limit = i64::try_from(p.limit).unwrap_or(i64::MAX);
        let due = on_client!(self, |client| async {
            let st = prep_client(&client, &self.sql.schedules_due).await?;
            let rows = client.query(&st, &[&now, &limit, &fence_name, &epoch]).await.map_err(db_error)?;
            rows.iter().map(|row| get::<String>(row, "name")).collect::<Result<Vec<String>, Error>>()
        })?;
        let mut out = Vec::with_capacity(due.len());
        for (n, name) in due.iter().enumerate() {
            let n = n as u64;
            if let Some(ticked) = in_transaction!(self, "schedules_tick", |tx| self.tick_in(&tx, name, n, &p, fence))? {
                out.push(ticked);
            }
        }
        Ok(out)
    }

    /// One schedule's tick (the `n`-th due of the pass, which picks its jitter); `None` when
    /// there was nothing to do: another node holds the row, the cursor has moved past `now`
    /// since the pass looked, the schedule is gone or paused, or this node's term is over.
    async fn tick_in(
        &self,
        tx: &Transaction<'_>,
        name: &str,
        n: u64,
        p: &SchedulesTick,
        fence: Fence,
    ) -> Result<Option<Ticked>, Fail> {
        let (fence_name, epoch) = fence.params();
        let row = async {
            let st = prep(tx, &self.sql.schedule_tick_lock).await?;
            Ok::<_, Fail>(tx.query_opt(&st, &[&name, &fence_name, &epoch]).await?)
        };
        let (now, row) = tokio::try_join!(self.now(tx, p.now), row)?;
        let Some(row) = row else { return Ok(None) };
        let mut schedule = schedule_from_row(&row)?;
        let cursor = schedule.next_at;
        let plan = plan(&schedule, now);
        if plan.next_at == cursor && plan.fires.is_empty() {
            return Ok(None);
        }
        let mut ticked = Ticked::of(schedule.spec.name.clone(), now, &plan);
        for (i, fire) in plan.fires.iter().enumerate() {
            let mut cancelled = None;
            match self.overlap_action(tx, &schedule).await? {
                OverlapAction::Skip => {
                    ticked.fired.push(TickFired { fire: *fire, job: None, cancelled: None });
                    continue;
                }
                OverlapAction::CancelThenEnqueue(id) => {
                    // The store's own cancel: a waiting job is cancelled, a running one asked to stop.
                    self.cancel_in(tx, &JobCancel { now, job: id }).await?;
                    cancelled = Some(id);
                }
                OverlapAction::Enqueue => {}
            }
            let random = jitter_random(p.seed, (n << 32) | i as u64);
            let new = schedule.job_for(fire.at, now, random);
            match self.insert_one(tx, now, new).await {
                Ok(id) => {
                    schedule.last = Some(LastTick { at: fire.at, job: id, fired_at: now });
                    ticked.fired.push(TickFired { fire: *fire, job: Some(id), cancelled });
                }
                // The template no longer fits its queue (a schema set since): the tick is lost,
                // and said so, rather than blocking every later tick. Nothing was written for it
                // (the insert refuses before its statement), so the transaction goes on.
                Err(Fail::Store(Error::Invalid(e))) => {
                    ticked.fired.push(TickFired { fire: *fire, job: None, cancelled });
                    ticked.error = Some(format!("job.{e}"));
                }
                Err(e) => return Err(e),
            }
        }
        schedule.next_at = plan.next_at;
        let last = schedule.last.as_ref();
        let last_job = match last {
            None => None,
            Some(l) => Some(id_to_sql(l.job).ok_or_else(|| corrupt(format!("job id {}", l.job)))?),
        };
        let params: [&(dyn ToSql + Sync); 8] = [
            &name,
            &cursor.map(to_time),
            &schedule.next_at.map(to_time),
            &last.map(|l| to_time(l.at)),
            &last_job,
            &last.map(|l| to_time(l.fired_at)),
            &fence_name,
            &epoch,
        ];
        let st = prep(tx, &self.sql.schedule_advance).await?;
        if tx.query(&st, &params).await?.is_empty() {
            // The row is locked, so only the fence can have failed: this node's term ended while
            // it ticked. Rolled back, jobs and all; the next attempt finds nothing to tick.
            return Err(Fail::Retry("the leader's term ended during a schedule tick"));
        }
        Ok(Some(ticked))
    }

    /// What the overlap policy says about the schedule's next fire, given its last tick's job as
    /// it is now (locked when the answer may be to cancel it).
    async fn overlap_action(&self, tx: &Transaction<'_>, schedule: &Schedule) -> Result<OverlapAction, Fail> {
        let overlap = schedule.spec.overlap;
        let previous = match &schedule.last {
            // `allow` enqueues whatever the previous job does: no need to look it up.
            Some(last) if overlap != Overlap::Allow => {
                let lock = overlap == Overlap::CancelPrevious;
                let found = self.lock_jobs(tx, &[last.job], lock).await?;
                found.get(&last.job).map(|l| (l.job.id, l.job.state()))
            }
            _ => None,
        };
        Ok(overlap.decide(previous))
    }

    /// Inserts one job a schedule made, through `job_insert`'s code (queue creation, the payload
    /// check against the queue's schema, the notification); a refusal names the bare field.
    async fn insert_one(&self, tx: &Transaction<'_>, now: Timestamp, new: NewJob) -> Result<JobId, Fail> {
        debug_assert!(new.schedule.is_some(), "a schedule's job carries its tick");
        let inserted = self.insert_in(tx, now, std::slice::from_ref(&new), false).await?;
        match inserted.as_slice() {
            [one] if !one.duplicate => Ok(one.id),
            _ => Err(corrupt(format!("a schedule's insert gave {inserted:?}")).into()),
        }
    }

    /// The named schedule's row, locked; [`Error::ScheduleNotFound`] without one.
    async fn schedule_locked(&self, tx: &Transaction<'_>, p: &impl Named) -> Result<tokio_postgres::Row, Fail> {
        let st = prep(tx, &self.sql.schedule_lock).await?;
        let name = p.name().as_str();
        tx.query_opt(&st, &[&name]).await?.ok_or_else(|| Error::ScheduleNotFound(p.name().clone()).into())
    }

    /// Writes the whole schedule (new, or over its locked row).
    async fn schedule_save(&self, tx: &Transaction<'_>, schedule: &Schedule) -> Result<(), Fail> {
        let columns = ScheduleColumns::of(schedule)?;
        let st = prep(tx, &self.sql.schedule_save).await?;
        let written = tx.execute(&st, &columns.params()).await?;
        if written != 1 {
            return Err(corrupt(format!("saving schedule {} wrote {written} rows", schedule.spec.name)).into());
        }
        Ok(())
    }
}

/// Parameters that name a schedule.
trait Named {
    fn name(&self) -> &dray_core::ScheduleName;
}

impl Named for SchedulePause {
    fn name(&self) -> &dray_core::ScheduleName {
        &self.name
    }
}

impl Named for ScheduleTrigger {
    fn name(&self) -> &dray_core::ScheduleName {
        &self.name
    }
}

/// A schedule as the parameters of [`crate::sql`]'s `SCHEDULE_SAVE`, in its column order.
struct ScheduleColumns<'a> {
    name: &'a str,
    queue: &'a str,
    payload: &'a [u8],
    priority: i16,
    attempts_max: Option<i32>,
    backoff_base_ms: Option<i64>,
    backoff_factor: Option<f64>,
    backoff_cap_ms: Option<i64>,
    lease_ms: Option<i64>,
    ordering_key: Option<&'a str>,
    tags: Vec<&'a str>,
    traceparent: Option<&'a str>,
    rule: &'static str,
    cron_expr: Option<&'a str>,
    cron_zone: Option<&'a str>,
    every_ms: Option<i64>,
    anchor_ms: Option<i64>,
    misfire: &'static str,
    misfire_cap: Option<i32>,
    overlap: &'static str,
    jitter_ms: i64,
    misfire_grace_ms: i64,
    paused: bool,
    created_at: SystemTime,
    updated_at: SystemTime,
    next_at: Option<SystemTime>,
    last_at: Option<SystemTime>,
    last_job: Option<i64>,
    last_fired_at: Option<SystemTime>,
}

impl<'a> ScheduleColumns<'a> {
    fn of(s: &'a Schedule) -> Result<ScheduleColumns<'a>, Fail> {
        let spec = &s.spec;
        let t = &spec.template;
        // The columns hold every part of a template a valid spec may set; these it may not.
        assert!(
            t.run_at.is_none() && t.delay_ms.is_none() && t.idempotency_key.is_none() && t.schedule.is_none(),
            "schedule {}: a template setting what its ticks decide",
            spec.name
        );
        let (rule, cron_expr, cron_zone, every_ms, anchor_ms) = match &spec.rule {
            Rule::Cron(c) => ("cron", Some(c.expr()), Some(c.zone()), None, None),
            Rule::Interval(i) => ("interval", None, None, Some(ms_to_sql(i.every_ms())), Some(i.anchor().as_millis())),
        };
        let misfire_cap = match spec.misfire {
            Misfire::RunAll { cap } => Some(i32::try_from(cap).unwrap_or(i32::MAX)),
            Misfire::RunOnce | Misfire::Skip => None,
        };
        let last_job = match &s.last {
            None => None,
            Some(l) => Some(id_to_sql(l.job).ok_or_else(|| corrupt(format!("job id {}", l.job)))?),
        };
        Ok(ScheduleColumns {
            name: spec.name.as_str(),
            queue: t.queue.as_str(),
            payload: t.payload.as_bytes(),
            priority: t.priority,
            attempts_max: t.attempts_max.map(|n| i32::try_from(n).unwrap_or(i32::MAX)),
            backoff_base_ms: t.backoff.as_ref().map(|b| ms_to_sql(b.base_ms)),
            backoff_factor: t.backoff.as_ref().map(|b| b.factor),
            backoff_cap_ms: t.backoff.as_ref().map(|b| ms_to_sql(b.cap_ms)),
            lease_ms: t.lease_ms.map(ms_to_sql),
            ordering_key: t.ordering_key.as_deref(),
            tags: t.tags.iter().map(|tag| &**tag).collect(),
            traceparent: t.traceparent.as_deref(),
            rule,
            cron_expr,
            cron_zone,
            every_ms,
            anchor_ms,
            misfire: spec.misfire.as_str(),
            misfire_cap,
            overlap: spec.overlap.as_str(),
            jitter_ms: ms_to_sql(spec.jitter_ms),
            misfire_grace_ms: ms_to_sql(spec.misfire_grace_ms),
            paused: spec.paused,
            created_at: to_time(s.created_at),
            updated_at: to_time(s.updated_at),
            next_at: s.next_at.map(to_time),
            last_at: s.last.as_ref().map(|l| to_time(l.at)),
            last_job,
            last_fired_at: s.last.as_ref().map(|l| to_time(l.fired_at)),
        })
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 29] {
        [
            &self.name,
            &self.queue,
            &self.payload,
            &self.priority,
            &self.attempts_max,
            &self.backoff_base_ms,
            &self.backoff_factor,
            &self.backoff_cap_ms,
            &self.lease_ms,
            &self.ordering_key,
            &self.tags,
            &self.traceparent,
            &self.rule,
            &self.cron_expr,
            &self.cron_zone,
            &self.every_ms,
            &self.anchor_ms,
            &self.misfire,
            &self.misfire_cap,
            &self.overlap,
            &self.jitter_ms,
            &self.misfire_grace_ms,
            &self.paused,
            &self.created_at,
            &self.updated_at,
            &self.next_at,
            &self.last_at,
            &self.last_job,
            &self.last_fired_at,
        ]
    }
}
