//! The bodies of `/v1/schedules` and their conversions.

use dray_core::cron::{CronRule, IntervalRule, Rule};
use dray_core::schedule::LastTick;
use dray_core::{Invalid, Limits, Misfire, Overlap, Schedule as CoreSchedule, ScheduleName, ScheduleSpec, Timestamp};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::convert::{payload_to_json, timestamp_parse, timestamp_string};
use crate::types::{Backoff, EnqueueJob, Enqueued};

/// A schedule as sent: `PUT /v1/schedules/{name}` (create or replace) and `POST /v1/schedules`
/// (create; `name` in the body). Exactly one of `cron` and `every_ms`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleBody {
    /// Only with `POST /v1/schedules`; the path names it otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// 5 fields (minute hour day-of-month month day-of-week), 6 with leading seconds, or a macro
    /// (`@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`). See docs/schedules.md.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// IANA time zone of a `cron` rule; default `UTC`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// An interval rule: fires every `every_ms`, at `anchor` plus whole multiples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every_ms: Option<u64>,
    /// RFC 3339; default the Unix epoch (so `every_ms: 300000` fires on each fifth minute, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anchor: Option<String>,
    /// The job each tick enqueues; `run_at`, `delay_ms` and `idempotency_key` are refused.
    pub job: EnqueueJob,
    /// `run_once` (default), `skip` or `run_all`: what a tick pass does with missed ticks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub misfire: Option<String>,
    /// With `run_all`: at most this many jobs for missed ticks (default 100, at most 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub misfire_cap: Option<u32>,
    /// A tick due longer ago than this is missed; default 60000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub misfire_grace_ms: Option<u64>,
    /// `allow` (default), `skip` or `cancel_previous`: a tick while the previous tick's job still
    /// waits or runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlap: Option<String>,
    /// Each job runs a random 0 to `jitter_ms` after its tick; default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
}

impl ScheduleBody {
    /// The rule alone (for `dray schedules preview` and the spec).
    pub fn rule(&self) -> Result<Rule, Invalid> {
        match (&self.cron, self.every_ms) {
            (Some(_), Some(_)) => Err(Invalid::new("every_ms", "cannot be combined with cron")),
            (None, None) => Err(Invalid::new("cron", "is required (or every_ms for an interval)")),
            (Some(expr), None) => {
                if self.anchor.is_some() {
                    return Err(Invalid::new("anchor", "belongs to every_ms, not to a cron rule"));
                }
                Ok(Rule::Cron(CronRule::parse(expr, self.timezone.as_deref().unwrap_or("UTC"))?))
            }
            (None, Some(every_ms)) => {
                if self.timezone.is_some() {
                    return Err(Invalid::new("timezone", "belongs to a cron rule; an interval counts real time"));
                }
                let anchor = match &self.anchor {
                    None => Timestamp::ZERO,
                    Some(s) => timestamp_parse("anchor", s)?,
                };
                Ok(Rule::Interval(IntervalRule::new(every_ms, anchor)?))
            }
        }
    }

    /// The core's schedule settings, named `name`.
    pub fn to_spec(&self, name: ScheduleName) -> Result<ScheduleSpec, Invalid> {
        let in_job = |e: Invalid| Invalid { field: format!("job.{}", e.field), ..e };
        let rule = self.rule()?;
        let template = self.job.to_core().map_err(in_job)?;
        if !template.depends_on.is_empty() || self.job.key.is_some() || self.job.on_dependency_failure.is_some() {
            let field = if self.job.key.is_some() { "job.key" } else { "job.depends_on" };
            return Err(Invalid::new(field, "a schedule's jobs cannot depend on other jobs"));
        }
        let misfire = match (self.misfire.as_deref(), self.misfire_cap) {
            (None | Some("run_once"), None) => Misfire::RunOnce,
            (Some("skip"), None) => Misfire::Skip,
            (Some("run_all"), cap) => Misfire::RunAll { cap: cap.unwrap_or(Limits::MISFIRE_CAP_DEFAULT) },
            (Some("run_once" | "skip") | None, Some(_)) => {
                return Err(Invalid::new("misfire_cap", "applies to misfire run_all only"));
            }
            (Some(other), _) => {
                return Err(Invalid::new("misfire", format!("{other:?} is not one of run_once, skip, run_all")));
            }
        };
        let overlap = match self.overlap.as_deref() {
            None => Overlap::Allow,
            Some(s) => Overlap::parse(s)
                .ok_or_else(|| Invalid::new("overlap", format!("{s:?} is not one of allow, skip, cancel_previous")))?,
        };
        Ok(ScheduleSpec {
            name,
            template,
            rule,
            misfire,
            overlap,
            jitter_ms: self.jitter_ms.unwrap_or(0),
            misfire_grace_ms: self.misfire_grace_ms.unwrap_or(Limits::MISFIRE_GRACE_MS_DEFAULT),
            paused: self.paused.unwrap_or(false),
        })
    }
}

/// A fire time, in UTC and on the wall clock of the schedule's zone.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FireTime {
    /// RFC 3339 in UTC.
    pub at: String,
    /// RFC 3339 with the zone's offset then, and the zone in brackets
    /// (`2026-03-29T09:00:00+02:00[Europe/Berlin]`).
    pub local: String,
}

/// The last tick that enqueued a job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LastTickView {
    /// The tick's instant.
    pub at: String,
    pub job_id: u64,
    /// When the job was enqueued.
    pub fired_at: String,
}

/// A schedule: its settings, where it stands, and its next fire times.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Schedule {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// Interval-like (minute or hour field starting with `*`) or fixed-time: how DST affects it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_like: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anchor: Option<String>,
    pub job: ScheduleJob,
    pub misfire: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub misfire_cap: Option<u32>,
    pub misfire_grace_ms: u64,
    pub overlap: String,
    pub jitter_ms: u64,
    pub paused: bool,
    pub created_at: String,
    pub updated_at: String,
    /// The next tick not yet handled (while paused, the first one missed); absent when the rule
    /// fires no more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_at: Option<String>,
    /// The coming fire times after now (`?next=N`, default 5).
    pub next: Vec<FireTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_tick: Option<LastTickView>,
}

/// The job a schedule enqueues, as stored.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ScheduleJob {
    pub queue: String,
    #[schema(value_type = Value)]
    pub payload: crate::Json,
    pub priority: i16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts_max: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Backoff>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordering_key: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// `GET /v1/schedules`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ScheduleList {
    pub schedules: Vec<Schedule>,
}

/// `POST /v1/schedules/{name}/trigger`: the job enqueued now.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Triggered {
    pub schedule: String,
    pub job: Enqueued,
}

/// `?next=N` on schedule reads: how many coming fire times to list.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ScheduleQuery {
    /// 0 to 1000; default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<usize>,
}

impl ScheduleQuery {
    pub const NEXT_DEFAULT: usize = 5;

    pub fn next(&self) -> Result<usize, Invalid> {
        let n = self.next.unwrap_or(Self::NEXT_DEFAULT);
        dray_core::limits::check_range("next", n, 0, Limits::SCHEDULE_PREVIEW_MAX, "")?;
        Ok(n)
    }
}

/// `instant` on the wall clock of `zone` (UTC when the zone is unknown), as RFC 3339 with the
/// offset and the zone name: `2026-03-29T09:00:00+02:00[Europe/Berlin]`.
pub fn local_string(instant: Timestamp, zone: &str) -> String {
    let Ok(ts) = jiff::Timestamp::from_millisecond(instant.0) else { return timestamp_string(instant) };
    let tz = jiff::tz::TimeZone::get(zone).unwrap_or(jiff::tz::TimeZone::UTC);
    let zoned = ts.to_zoned(tz);
    format!("{}[{zone}]", zoned.strftime("%Y-%m-%dT%H:%M:%S%:z"))
}

impl Schedule {
    /// The wire view of `s`, listing `next` fire times after `now`.
    pub fn of(s: &CoreSchedule, now: Timestamp, next: usize) -> Schedule {
        let spec = &s.spec;
        let (cron, timezone, interval_like, every_ms, anchor) = match &spec.rule {
            Rule::Cron(c) => {
                (Some(c.expr().to_owned()), Some(c.zone().to_owned()), Some(c.is_interval_like()), None, None)
            }
            Rule::Interval(i) => (None, None, None, Some(i.every_ms()), Some(timestamp_string(i.anchor()))),
        };
        let zone = timezone.clone().unwrap_or_else(|| "UTC".to_owned());
        let t = &spec.template;
        Schedule {
            name: spec.name.to_string(),
            cron,
            timezone,
            interval_like,
            every_ms,
            anchor,
            job: ScheduleJob {
                queue: t.queue.to_string(),
                payload: payload_to_json(&t.payload),
                priority: t.priority,
                attempts_max: t.attempts_max,
                backoff: t.backoff.map(Into::into),
                lease_ms: t.lease_ms,
                ordering_key: t.ordering_key.as_deref().map(Into::into),
                tags: t.tags.iter().map(|t| t.to_string()).collect(),
                traceparent: t.traceparent.as_deref().map(Into::into),
            },
            misfire: spec.misfire.as_str().to_owned(),
            misfire_cap: match spec.misfire {
                Misfire::RunAll { cap } => Some(cap),
                _ => None,
            },
            misfire_grace_ms: spec.misfire_grace_ms,
            overlap: spec.overlap.as_str().to_owned(),
            jitter_ms: spec.jitter_ms,
            paused: spec.paused,
            created_at: timestamp_string(s.created_at),
            updated_at: timestamp_string(s.updated_at),
            next_at: s.next_at.map(timestamp_string),
            next: spec
                .rule
                .upcoming(now, next)
                .into_iter()
                .map(|at| FireTime { at: timestamp_string(at), local: local_string(at, &zone) })
                .collect(),
            last_tick: s.last.as_ref().map(|l: &LastTick| LastTickView {
                at: timestamp_string(l.at),
                job_id: l.job.0,
                fired_at: timestamp_string(l.fired_at),
            }),
        }
    }
}
