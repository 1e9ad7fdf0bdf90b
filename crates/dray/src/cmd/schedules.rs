//! `dray schedules`: create, list, show, pause, resume, trigger, delete, and `preview`, which
//! computes a rule's fire times here, without a server, with the same code the server ticks with.

use dray_api::{EnqueueJob, Schedule, ScheduleBody};
use dray_core::cron::{CronRule, Rule};
use dray_core::{Limits, Timestamp};

use crate::cli::{MisfireArg, OverlapArg, ScheduleCreateArgs, SchedulePreviewArgs, SchedulesCommand};
use crate::cmd::enqueue::payload_of;
use crate::exit::Failure;
use crate::output;

pub async fn run(client: &dray_client::Client, command: SchedulesCommand, json: bool) -> anyhow::Result<()> {
    match command {
        SchedulesCommand::Create(args) => {
            let name = args.name.clone();
            let replace = args.replace;
            let mut body = body(args)?;
            let schedule = if replace {
                client.schedule_put(&name, &body).await?
            } else {
                body.name = Some(name);
                client.schedule_create(&body).await?
            };
            if json {
                return output::json(&schedule);
            }
            println!("schedule {} saved; next tick {}", schedule.name, next_text(&schedule));
            Ok(())
        }
        SchedulesCommand::List => {
            let list = client.schedules(Some(1)).await?;
            if json {
                return output::json(&list);
            }
            if list.schedules.is_empty() {
                println!("no schedules");
                return Ok(());
            }
            let mut table = output::table([
                "SCHEDULE",
                "RULE",
                "ZONE",
                "QUEUE",
                "PAUSED",
                "NEXT",
                "NEXT UTC",
                "LAST TICK",
                "LAST JOB",
            ]);
            for s in &list.schedules {
                let next = s.next.first();
                table.add_row(vec![
                    s.name.clone(),
                    rule_text(s),
                    s.timezone.clone().unwrap_or_else(|| "-".into()),
                    s.job.queue.clone(),
                    if s.paused { "yes" } else { "no" }.to_owned(),
                    next.map(|n| local_text(&n.local)).unwrap_or_default(),
                    next.map(|n| output::time(&n.at)).unwrap_or_default(),
                    s.last_tick.as_ref().map(|l| output::time(&l.at)).unwrap_or_default(),
                    s.last_tick.as_ref().map(|l| l.job_id.to_string()).unwrap_or_default(),
                ]);
            }
            output::print_table(&mut table);
            Ok(())
        }
        SchedulesCommand::Show { name, next } => {
            let schedule = client.schedule(&name, Some(next)).await?;
            print_schedule(&schedule, json)
        }
        SchedulesCommand::Pause { name } => {
            let schedule = client.schedule_pause(&name).await?;
            if json {
                return output::json(&schedule);
            }
            println!(
                "schedule {name} paused: ticks due meanwhile meet its misfire policy ({}) on resume",
                schedule.misfire
            );
            Ok(())
        }
        SchedulesCommand::Resume { name } => {
            let schedule = client.schedule_resume(&name).await?;
            if json {
                return output::json(&schedule);
            }
            println!("schedule {name} resumed; next tick {}", next_text(&schedule));
            Ok(())
        }
        SchedulesCommand::Trigger { name } => {
            let triggered = client.schedule_trigger(&name).await?;
            if json {
                return output::json(&triggered);
            }
            println!("schedule {name} triggered: enqueued job {}", triggered.job.id);
            Ok(())
        }
        SchedulesCommand::Delete { name } => {
            let schedule = client.schedule_delete(&name).await?;
            if json {
                return output::json(&schedule);
            }
            println!("schedule {name} deleted (the jobs it enqueued stay)");
            Ok(())
        }
        SchedulesCommand::Preview(args) => preview(args, json),
    }
}

/// `dray schedules preview`: the next fire instants strictly after `--from`, from the same rule
/// engine the server ticks with.
pub fn preview(args: SchedulePreviewArgs, json: bool) -> anyhow::Result<()> {
    let bad = |e: dray_core::Invalid| {
        let flag = match e.field.as_str() {
            "timezone" => "--timezone",
            _ => "--cron",
        };
        Failure::invalid("Invalid rule", e.message).field(flag)
    };
    let rule = Rule::Cron(CronRule::parse(&args.cron, &args.timezone).map_err(bad)?);
    if args.count == 0 || args.count > Limits::SCHEDULE_PREVIEW_MAX {
        let detail = format!("is {}; allowed is 1 to {}", args.count, Limits::SCHEDULE_PREVIEW_MAX);
        return Err(Failure::invalid("Invalid count", detail).field("--count").into());
    }
    let from = match &args.from {
        None => jiff::Timestamp::now(),
        Some(text) => text.parse::<jiff::Timestamp>().map_err(|_| {
            Failure::invalid(
                "Invalid time",
                format!("{text:?} is not an RFC 3339 timestamp (like 2026-11-21T09:00:00Z)"),
            )
            .field("--from")
        })?,
    };
    let fires: Vec<String> = rule
        .upcoming(Timestamp(from.as_millisecond()), args.count)
        .into_iter()
        .map(|t| jiff::Timestamp::from_millisecond(t.0).map_or_else(|_| format!("{}ms", t.0), |ts| ts.to_string()))
        .collect();
    if json {
        return output::json(&fires);
    }
    for fire in &fires {
        println!("{fire}");
    }
    if fires.len() < args.count {
        eprintln!("the rule fires no more after {}", fires.last().map_or_else(|| from.to_string(), Clone::clone));
    }
    Ok(())
}

fn body(args: ScheduleCreateArgs) -> Result<ScheduleBody, Failure> {
    let payload = payload_of(args.payload.as_deref(), args.payload_file.as_deref())?;
    let job = EnqueueJob {
        queue: args.queue,
        payload,
        priority: args.priority,
        run_at: None,
        delay_ms: None,
        attempts_max: args.attempts_max,
        backoff: None,
        lease_ms: args.lease_ms,
        idempotency_key: None,
        ordering_key: None,
        group_key: None,
        tags: args.tags,
        traceparent: None,
        key: None,
        depends_on: Vec::new(),
        on_dependency_failure: None,
    };
    Ok(ScheduleBody {
        name: None,
        cron: args.cron,
        timezone: args.timezone,
        every_ms: args.every_ms,
        anchor: args.anchor,
        job,
        misfire: args.misfire.map(|m| {
            match m {
                MisfireArg::RunOnce => "run_once",
                MisfireArg::Skip => "skip",
                MisfireArg::RunAll => "run_all",
            }
            .to_owned()
        }),
        misfire_cap: args.misfire_cap,
        misfire_grace_ms: args.misfire_grace_ms,
        overlap: args.overlap.map(|o| {
            match o {
                OverlapArg::Allow => "allow",
                OverlapArg::Skip => "skip",
                OverlapArg::CancelPrevious => "cancel_previous",
            }
            .to_owned()
        }),
        jitter_ms: args.jitter_ms,
        paused: args.paused.then_some(true),
    })
}

fn rule_text(s: &Schedule) -> String {
    match (&s.cron, s.every_ms) {
        (Some(cron), _) => cron.clone(),
        (None, Some(ms)) => format!("every {}", output::duration_ms(ms)),
        (None, None) => String::new(),
    }
}

/// `2026-03-29T09:00:00+02:00[Europe/Berlin]` as `2026-03-29 09:00:00 +02:00`.
fn local_text(local: &str) -> String {
    let without_zone = local.split('[').next().unwrap_or(local);
    match without_zone.split_once('T') {
        Some((date, rest)) if rest.len() >= 8 => format!("{date} {} {}", &rest[..8], &rest[8..]),
        _ => without_zone.to_owned(),
    }
}

fn next_text(s: &Schedule) -> String {
    match s.next.first() {
        Some(n) if s.paused => format!("{} (paused)", output::time(&n.at)),
        Some(n) => format!("{} ({})", output::time(&n.at), local_text(&n.local)),
        None => "none: the rule fires no more".to_owned(),
    }
}

fn print_schedule(s: &Schedule, json: bool) -> anyhow::Result<()> {
    if json {
        return output::json(s);
    }
    println!("schedule   {}", s.name);
    println!("rule       {}", rule_text(s));
    if let Some(zone) = &s.timezone {
        let kind = match s.interval_like {
            Some(true) => "interval-like: keeps real elapsed time across DST",
            _ => "fixed-time: once per wall-clock time across DST",
        };
        println!("zone       {zone} ({kind})");
    }
    if let Some(anchor) = &s.anchor {
        println!("anchor     {}", output::time(anchor));
    }
    println!("queue      {}", s.job.queue);
    println!("payload    {}", s.job.payload.get());
    let misfire = match s.misfire_cap {
        Some(cap) => format!("{} (cap {cap})", s.misfire),
        None => s.misfire.clone(),
    };
    println!("misfire    {misfire}, grace {}", output::duration_ms(s.misfire_grace_ms));
    println!("overlap    {}", s.overlap);
    println!("jitter     {}", output::duration_ms(s.jitter_ms));
    println!("paused     {}", if s.paused { "yes" } else { "no" });
    match &s.last_tick {
        Some(l) => {
            println!("last tick  {} (job {}, enqueued {})", output::time(&l.at), l.job_id, output::time(&l.fired_at))
        }
        None => println!("last tick  none yet"),
    }
    if let Some(next_at) = &s.next_at {
        println!("next tick  {}", output::time(next_at));
    }
    if !s.next.is_empty() {
        let mut table = output::table(["NEXT (LOCAL)", "NEXT (UTC)"]);
        for n in &s.next {
            table.add_row(vec![local_text(&n.local), output::time(&n.at)]);
        }
        output::print_table(&mut table);
    }
    Ok(())
}
