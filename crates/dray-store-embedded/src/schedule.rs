//! Schedules in the embedded store. A tick logs the schedule's new cursor, the jobs it enqueues
//! and any job it cancels in one frame: after a crash either all of it is there or none of it,
//! so a tick is never enqueued twice and never lost once its cursor moved.

use dray_core::schedule::{Fire, LastTick, OverlapAction, plan};
use dray_core::{Effect, Event, JobId, JobState, Limits, NewJob, Schedule, ScheduleName, Timestamp, transition};
use dray_store::{
    Error, PayloadCheck, ScheduleDelete, SchedulePause, SchedulePut, ScheduleSaved, ScheduleTrigger, SchedulesTick,
    TickFired, Ticked, jitter_random,
};

use crate::codec;
use crate::state::State;
use crate::store::{Changes, EmbeddedStore, rejected, update};

impl EmbeddedStore {
    pub(crate) async fn schedule_put_impl(&self, p: SchedulePut) -> Result<ScheduleSaved, Error> {
        let SchedulePut { now, spec, create_only } = p;
        spec.validate(now)?;
        let check = self.inner.payload_check.get().cloned();
        self.write(true, move |state, changes| {
            if let Some(config) = state.queue_config(&spec.template.queue) {
                dray_store::payload_checked(check.as_deref(), config, &spec.template.payload)
                    .map_err(|e| dray_core::Invalid { field: format!("job.{}", e.field), ..e })?;
            }
            let (schedule, created) = match state.schedules.get(&spec.name) {
                Some(_) if create_only => return Err(Error::ScheduleExists(spec.name.clone())),
                Some(current) => (current.replaced(spec, now), false),
                None if state.schedules.len() >= Limits::SCHEDULES_MAX => return Err(Error::TooManySchedules),
                None => (Schedule::new(spec, now), true),
            };
            changes.push(|buf| codec::encode_schedule_upsert(buf, &schedule));
            state.schedules.insert(schedule.spec.name.clone(), schedule.clone());
            Ok(ScheduleSaved { schedule, created })
        })
        .await
    }

    pub(crate) async fn schedule_delete_impl(&self, p: ScheduleDelete) -> Result<(), Error> {
        let ScheduleDelete { now: _, name } = p;
        self.write(true, move |state, changes| {
            if !state.schedules.contains_key(&name) {
                return Err(Error::ScheduleNotFound(name));
            }
            changes.push(|buf| codec::encode_schedule_delete(buf, &name));
            state.schedules.remove(&name);
            Ok(())
        })
        .await
    }

    pub(crate) async fn schedule_pause_impl(&self, p: SchedulePause) -> Result<Schedule, Error> {
        let SchedulePause { now, name, paused } = p;
        self.write(true, move |state, changes| {
            let current = state.schedules.get(&name).ok_or_else(|| Error::ScheduleNotFound(name.clone()))?;
            if current.spec.paused == paused {
                return Ok(current.clone());
            }
            let schedule = current.paused(paused, now);
            changes.push(|buf| codec::encode_schedule_upsert(buf, &schedule));
            state.schedules.insert(name, schedule.clone());
            Ok(schedule)
        })
        .await
    }

    pub(crate) async fn schedule_trigger_impl(&self, p: ScheduleTrigger) -> Result<Ticked, Error> {
        let ScheduleTrigger { now, name, random } = p;
        let check = self.inner.payload_check.get().cloned();
        let budget = self.inner.config.memory_budget_bytes;
        self.write(true, move |state, changes| {
            let mut schedule = state.schedules.get(&name).ok_or_else(|| Error::ScheduleNotFound(name.clone()))?.clone();
            let fire = Fire { at: now, ticks: 1 };
            let new = schedule.job_for(now, now, random);
            let id = insert(state, changes, new, now, check.as_deref(), budget)?;
            schedule.last = Some(LastTick { at: now, job: id, fired_at: now });
            changes.push(|buf| codec::encode_schedule_upsert(buf, &schedule));
            let next_at = schedule.next_at;
            state.schedules.insert(name.clone(), schedule);
            Ok(Ticked {
                name,
                now,
                fired: vec![TickFired { fire, job: Some(id), cancelled: None }],
                missed: 0,
                dropped: 0,
                next_at,
                error: None,
            })
        })
        .await
    }

    pub(crate) async fn schedules_tick_impl(&self, p: SchedulesTick) -> Result<Vec<Ticked>, Error> {
        p.validate()?;
        let SchedulesTick { now, limit, seed } = p;
        let due: Vec<ScheduleName> = self
            .read(move |state| {
                Ok(state
                    .schedules
                    .values()
                    .filter(|s| s.is_due(now))
                    .take(limit)
                    .map(|s| s.spec.name.clone())
                    .collect())
            })
            .await?;
        let check = self.inner.payload_check.get().cloned();
        let budget = self.inner.config.memory_budget_bytes;
        let mut out = Vec::with_capacity(due.len());
        // One atomic write per schedule: a schedule whose jobs cannot be enqueued now (the
        // memory budget) keeps its cursor and is tried again, without holding the others back.
        for (n, name) in due.into_iter().enumerate() {
            let check = check.clone();
            let ticked = self
                .write(true, move |state, changes| {
                    let Some(schedule) = state.schedules.get(&name) else { return Ok(None) };
                    let plan = plan(schedule, now);
                    if plan.next_at == schedule.next_at && plan.fires.is_empty() {
                        return Ok(None);
                    }
                    let mut schedule = schedule.clone();
                    let mut ticked = Ticked::of(name.clone(), now, &plan);
                    for (i, fire) in plan.fires.iter().enumerate() {
                        let previous = schedule
                            .last
                            .as_ref()
                            .and_then(|l| state.jobs.get(&l.job).map(|j| (l.job, j.status.state)));
                        let mut cancelled = None;
                        match schedule.spec.overlap.decide(previous) {
                            OverlapAction::Skip => {
                                ticked.fired.push(TickFired { fire: *fire, job: None, cancelled: None });
                                continue;
                            }
                            OverlapAction::CancelThenEnqueue(id) => {
                                cancel(state, changes, id, now)?;
                                cancelled = Some(id);
                            }
                            OverlapAction::Enqueue => {}
                        }
                        let random = jitter_random(seed, (n as u64) << 32 | i as u64);
                        let new = schedule.job_for(fire.at, now, random);
                        match insert(state, changes, new, now, check.as_deref(), budget) {
                            Ok(id) => {
                                schedule.last = Some(LastTick { at: fire.at, job: id, fired_at: now });
                                ticked.fired.push(TickFired { fire: *fire, job: Some(id), cancelled });
                            }
                            // The template no longer fits its queue (a schema set since): the
                            // tick is lost, and said so, rather than blocking every later tick.
                            Err(Error::Invalid(e)) => {
                                ticked.fired.push(TickFired { fire: *fire, job: None, cancelled });
                                ticked.error = Some(format!("job.{e}"));
                            }
                            Err(e) => return Err(e),
                        }
                    }
                    schedule.next_at = plan.next_at;
                    changes.push(|buf| codec::encode_schedule_upsert(buf, &schedule));
                    state.schedules.insert(name, schedule);
                    Ok(Some(ticked))
                })
                .await;
            match ticked {
                Ok(Some(t)) => out.push(t),
                Ok(None) => {}
                Err(Error::OverCapacity { .. }) if !out.is_empty() => break,
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}

/// Inserts one new job (the queue gets its default configuration if it has none). Everything
/// that can refuse it is checked before anything is written.
fn insert(
    state: &mut State,
    changes: &mut Changes,
    new: NewJob,
    now: Timestamp,
    check: Option<&dyn PayloadCheck>,
    budget: u64,
) -> Result<JobId, Error> {
    let config = state.queue_config(&new.queue).cloned();
    if let Some(config) = &config {
        dray_store::payload_checked(check, config, &new.payload)?;
    }
    let bytes = new.payload.len() as u64 + 600;
    if state.bytes_used + bytes > budget {
        return Err(Error::OverCapacity { used_bytes: state.bytes_used, budget_bytes: budget });
    }
    let config = match config {
        Some(c) => c,
        None => {
            let c = dray_store::QueueConfig::new(new.queue.clone());
            changes.push(|buf| codec::encode_queue_upsert(buf, &c));
            state.queue_upsert(c.clone());
            c
        }
    };
    let id = JobId(state.next_job_id);
    state.next_job_id += 1;
    let job = new.into_job(id, now, config.retry, config.lease_ms);
    changes.push(|buf| codec::encode_job_insert(buf, &job));
    state.job_insert(job);
    Ok(id)
}

/// Cancels a previous tick's job (a running one by request).
fn cancel(state: &mut State, changes: &mut Changes, id: JobId, now: Timestamp) -> Result<(), Error> {
    let Some(job) = state.jobs.get(&id) else { return Ok(()) };
    if job.status.state == JobState::Cancelled {
        return Ok(());
    }
    let t = transition(job, Event::Cancel, now, 0).map_err(|r| rejected(id, r))?;
    if !t.effects.contains(&Effect::Unchanged) {
        update(state, changes, id, t)?;
    }
    Ok(())
}
