//! `dray queues`: list, stats, pause, resume, configure, breaker.

use dray_api::{
    Backoff, BreakerActionKind, BreakerConfig, BreakerStateName, OrderingDead, Queue, QueueConfigure, Rate,
};

use crate::cli::{BreakerActionArg, OrderingDeadArg, QueueConfigureArgs, QueuesCommand};
use crate::cmd::enqueue::read_file_or_stdin;
use crate::exit::Failure;
use crate::output;

pub async fn run(client: &dray_client::Client, command: QueuesCommand, json: bool) -> anyhow::Result<()> {
    match command {
        QueuesCommand::List => {
            let list = client.queues().await?;
            if json {
                return output::json(&list);
            }
            if list.queues.is_empty() {
                println!("no queues");
                return Ok(());
            }
            let mut table = output::table([
                "QUEUE",
                "PAUSED",
                "SCHEDULED",
                "AVAILABLE",
                "RUNNING",
                "RETRYING",
                "COMPLETED",
                "DEAD",
                "CANCELLED",
                "OLDEST DEAD",
            ]);
            for queue in &list.queues {
                let counts = &queue.counts;
                table.add_row(vec![
                    queue.name.clone(),
                    if queue.paused { "yes" } else { "no" }.to_owned(),
                    counts.scheduled.to_string(),
                    counts.available.to_string(),
                    counts.running.to_string(),
                    counts.retrying.to_string(),
                    counts.completed.to_string(),
                    counts.dead.to_string(),
                    counts.cancelled.to_string(),
                    output::time_opt(queue.oldest_dead_at.as_deref()),
                ]);
            }
            output::print_table(&mut table);
            Ok(())
        }
        QueuesCommand::Stats { name } => {
            let queue = client.queue(&name).await?;
            print_queue(&queue, json)
        }
        QueuesCommand::Pause { name } => {
            let queue = client.queue_pause(&name).await?;
            if json {
                return output::json(&queue);
            }
            println!("queue {name} paused: its jobs are not handed out until `dray queues resume {name}`");
            Ok(())
        }
        QueuesCommand::Resume { name } => {
            let queue = client.queue_resume(&name).await?;
            if json {
                return output::json(&queue);
            }
            println!("queue {name} resumed");
            Ok(())
        }
        QueuesCommand::Delete { name } => {
            let deleted = client.queue_delete(&name).await?;
            if json {
                return output::json(&deleted);
            }
            println!("queue {name} deleted (with {} finished jobs)", deleted.jobs_deleted);
            Ok(())
        }
        QueuesCommand::Breaker { action, name } => {
            let kind = match action {
                BreakerActionArg::Open => BreakerActionKind::Open,
                BreakerActionArg::Close => BreakerActionKind::Close,
            };
            let queue = client.queue_breaker(&name, kind).await?;
            if json {
                return output::json(&queue);
            }
            match action {
                BreakerActionArg::Open => println!(
                    "queue {name}: breaker forced open; its jobs are not handed out until `dray queues breaker close {name}`"
                ),
                BreakerActionArg::Close => println!("queue {name}: breaker closed"),
            }
            Ok(())
        }
        QueuesCommand::Configure(args) => {
            let name = args.name.clone();
            let queue = client.queue_configure(&name, configure_body(args)?).await?;
            print_queue(&queue, json)
        }
    }
}

fn configure_body(args: QueueConfigureArgs) -> Result<QueueConfigure, Failure> {
    let payload_schema = match (&args.payload_schema_file, args.no_payload_schema) {
        (Some(path), _) => {
            let text = read_file_or_stdin(path, "--payload-schema-file")?;
            let schema: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
                Failure::invalid("The schema is not JSON", format!("{}: {e}", path.display()))
                    .field("--payload-schema-file")
            })?;
            Some(Some(schema))
        }
        (None, true) => Some(None),
        (None, false) => None,
    };
    let backoff = match (args.backoff_base_ms, args.backoff_factor, args.backoff_cap_ms) {
        (Some(base_ms), Some(factor), Some(cap_ms)) => Some(Backoff { base_ms, factor, cap_ms }),
        // Clap requires all three together.
        _ => None,
    };
    let breaker = match (
        args.breaker_failure_ratio,
        args.breaker_window_ms,
        args.breaker_min_attempts,
        args.breaker_open_ms,
        args.breaker_probes,
    ) {
        (Some(failure_ratio), Some(window_ms), Some(min_attempts), Some(open_ms), Some(probes)) => {
            Some(Some(BreakerConfig { failure_ratio, window_ms, min_attempts, open_ms, probes }))
        }
        // Clap requires all five together.
        _ if args.no_breaker => Some(None),
        _ => None,
    };
    Ok(QueueConfigure {
        attempts_max: args.attempts_max,
        backoff,
        lease_ms: args.lease_ms,
        retention_ms: args.retention_ms,
        retention_dead_ms: args.retention_dead_ms,
        paused: None,
        payload_schema,
        ordering_dead: args.ordering_dead.map(|o| match o {
            OrderingDeadArg::Block => OrderingDead::Block,
            OrderingDeadArg::Skip => OrderingDead::Skip,
        }),
        concurrency_max: args.concurrency_max.as_deref().map(|v| count_arg(v, "--concurrency-max")).transpose()?,
        group_concurrency_max: args
            .group_concurrency_max
            .as_deref()
            .map(|v| count_arg(v, "--group-concurrency-max"))
            .transpose()?,
        rate: args.rate.as_deref().map(|v| rate_arg(v, "--rate")).transpose()?,
        group_rate: args.group_rate.as_deref().map(|v| rate_arg(v, "--group-rate")).transpose()?,
        breaker,
    })
}

/// `N` or `none` (removes the limit). The server checks the range.
fn count_arg(value: &str, flag: &'static str) -> Result<Option<u32>, Failure> {
    if value == "none" {
        return Ok(None);
    }
    value.parse().map(Some).map_err(|_| {
        Failure::invalid("Not a count", format!("{flag} takes a whole number or `none`, not {value:?}")).field(flag)
    })
}

/// `LIMIT/DURATION[,burst=N]` or `none`.
fn rate_arg(value: &str, flag: &'static str) -> Result<Option<Rate>, Failure> {
    if value == "none" {
        return Ok(None);
    }
    let bad = || {
        Failure::invalid(
            "Not a rate",
            format!("{flag} takes LIMIT/DURATION with an optional ,burst=N (100/1s, 5/250ms,burst=10) or `none`, not {value:?}"),
        )
        .field(flag)
    };
    let (main, burst) = match value.split_once(',') {
        Some((main, rest)) => {
            let n = rest.strip_prefix("burst=").and_then(|n| n.parse::<u32>().ok()).ok_or_else(bad)?;
            (main, Some(n))
        }
        None => (value, None),
    };
    let (limit, per) = main.split_once('/').ok_or_else(bad)?;
    let limit = limit.trim().parse::<u32>().map_err(|_| bad())?;
    let per_ms = duration_ms_arg(per.trim()).ok_or_else(bad)?;
    Ok(Some(Rate { limit, per_ms, burst }))
}

/// `250ms`, `1s`, `5m`, `1h`, `1d`, or bare milliseconds.
fn duration_ms_arg(text: &str) -> Option<u64> {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let scale = match unit {
        "" | "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    n.checked_mul(scale)
}

fn print_queue(queue: &Queue, json: bool) -> anyhow::Result<()> {
    if json {
        return output::json(queue);
    }
    let counts = &queue.counts;
    let mut fields = output::fields();
    fields.add_row(["queue", &queue.name]);
    fields.add_row(["paused", if queue.paused { "yes" } else { "no" }]);
    fields.add_row(["attempts max", &queue.attempts_max.to_string()]);
    fields.add_row(["lease", &output::duration_ms(queue.lease_ms)]);
    fields.add_row([
        "backoff",
        &format!(
            "{} x{} up to {} (full jitter)",
            output::duration_ms(queue.backoff.base_ms),
            queue.backoff.factor,
            output::duration_ms(queue.backoff.cap_ms)
        ),
    ]);
    fields.add_row(["retention", &output::duration_ms(queue.retention_ms)]);
    fields.add_row(["dead retention", &output::duration_ms(queue.retention_dead_ms)]);
    if let Some(schema) = &queue.payload_schema {
        fields.add_row(["payload schema", &schema.to_string()]);
    }
    let ordering_dead = match queue.ordering_dead {
        OrderingDead::Block => "block (a dead job holds its ordering key)",
        OrderingDead::Skip => "skip (an ordering key moves on past dead jobs)",
    };
    fields.add_row(["ordering dead", ordering_dead]);
    let limit = |n: Option<u32>| n.map_or_else(|| "none".to_owned(), |n| n.to_string());
    let rate = |r: &Option<Rate>| {
        r.as_ref().map_or_else(
            || "none".to_owned(),
            |r| format!("{} per {} (burst {})", r.limit, output::duration_ms(r.per_ms), r.burst.unwrap_or(r.limit)),
        )
    };
    fields.add_row(["concurrency max", &limit(queue.concurrency_max)]);
    fields.add_row(["group concurrency max", &limit(queue.group_concurrency_max)]);
    fields.add_row(["rate", &rate(&queue.rate)]);
    fields.add_row(["group rate", &rate(&queue.group_rate)]);
    if let Some(until) = &queue.backoff_until {
        fields.add_row([
            "backing off until",
            &format!("{} (a worker reported a downstream rate limit)", output::time(until)),
        ]);
    }
    if let Some(b) = &queue.breaker {
        fields.add_row([
            "breaker",
            &format!(
                "opens at {} failed of at least {} attempts within {}; open {}, then {} probes",
                b.failure_ratio,
                b.min_attempts,
                output::duration_ms(b.window_ms),
                output::duration_ms(b.open_ms),
                b.probes
            ),
        ]);
        let state = match (b.state, b.forced) {
            (BreakerStateName::Open, true) => "open (forced: until closed by hand)".to_owned(),
            (BreakerStateName::Open, false) => match &b.half_open_at {
                Some(at) => format!("open (half-open at {})", output::time(at)),
                None => "open".to_owned(),
            },
            (BreakerStateName::HalfOpen, _) => {
                format!(
                    "half-open ({} of {} probes granted, {} succeeded)",
                    b.probes_granted, b.probes, b.probes_succeeded
                )
            }
            (BreakerStateName::Closed, _) => {
                format!("closed ({} failed of {} attempts in the window)", b.window_failures, b.window_attempts)
            }
        };
        fields.add_row(["breaker state", &state]);
    }
    fields.add_row(["scheduled", &counts.scheduled.to_string()]);
    fields.add_row(["available", &counts.available.to_string()]);
    fields.add_row(["running", &counts.running.to_string()]);
    fields.add_row(["retrying", &counts.retrying.to_string()]);
    fields.add_row(["completed", &counts.completed.to_string()]);
    fields.add_row(["dead", &counts.dead.to_string()]);
    fields.add_row(["cancelled", &counts.cancelled.to_string()]);
    fields.add_row(["blocked", &counts.blocked.to_string()]);
    if let Some(oldest) = &queue.oldest_dead_at {
        fields.add_row(["oldest dead", &output::time(oldest)]);
    }
    output::print_table(&mut fields);
    Ok(())
}
