//! `dray dlq`: list, redrive and discard dead jobs, by ids or by filter, optionally at a rate.

use std::num::NonZeroU32;
use std::time::Duration;

use anyhow::Context;
use dray_api::{DeadAction, DeadActionResponse, JobQuery};

use crate::cli::{DeadActionArgs, DlqCommand};
use crate::cmd::jobs::print_page;
use crate::output;

/// Ids per redrive or discard request, and jobs per page when listing.
const REQUEST_JOBS_MAX: usize = 1_000;
/// Ids shown in the human summary; `--json` has them all.
const IDS_SHOWN_MAX: usize = 20;

pub async fn run(client: &dray_client::Client, command: DlqCommand, json: bool) -> anyhow::Result<()> {
    match command {
        DlqCommand::List(args) => {
            let query = JobQuery {
                queue: args.queue,
                dead_reason: args.reason.map(Into::into),
                tag: args.tag,
                error: args.error,
                order: args.order.map(Into::into),
                after: args.after,
                limit: args.limit,
                ..JobQuery::default()
            };
            let page = client.dead(query).await?;
            if json {
                return output::json(&page);
            }
            print_page(&page);
            Ok(())
        }
        DlqCommand::Redrive(args) => act(client, Action::Redrive, args, json).await,
        DlqCommand::Discard(args) => act(client, Action::Discard, args, json).await,
    }
}

#[derive(Clone, Copy, Debug)]
enum Action {
    Redrive,
    Discard,
}

impl Action {
    fn verb(self) -> &'static str {
        match self {
            Action::Redrive => "redrive",
            Action::Discard => "discard",
        }
    }

    fn past(self) -> &'static str {
        match self {
            Action::Redrive => "redriven",
            Action::Discard => "discarded",
        }
    }

    async fn call(
        self,
        client: &dray_client::Client,
        body: DeadAction,
    ) -> Result<DeadActionResponse, dray_client::Error> {
        match self {
            Action::Redrive => client.dead_redrive(body).await,
            Action::Discard => client.dead_discard(body).await,
        }
    }
}

async fn act(client: &dray_client::Client, action: Action, args: DeadActionArgs, json: bool) -> anyhow::Result<()> {
    let dry_run = args.dry_run;
    let rate = if dry_run { None } else { args.rate };
    let mut limit_reached = false;
    let response = if !args.ids.is_empty() {
        by_ids(client, action, args.ids, rate, dry_run).await?
    } else if let Some(rate) = rate {
        // Listing first bounds the run: a redriven job that dies again while we go is not
        // redriven a second time, and the bar knows its length.
        let ids = list_dead(client, &args).await?;
        by_ids(client, action, ids, Some(rate), dry_run).await?
    } else {
        let body = DeadAction {
            queue: args.queue.clone(),
            dead_reason: args.reason.map(Into::into),
            limit: args.limit,
            dry_run,
            ..DeadAction::default()
        };
        let response = action.call(client, body).await?;
        // The server's default limit is 1000.
        limit_reached = response.count >= args.limit.unwrap_or(REQUEST_JOBS_MAX);
        response
    };
    if json {
        return output::json(&response);
    }
    let mut shown: Vec<String> = response.ids.iter().take(IDS_SHOWN_MAX).map(ToString::to_string).collect();
    if response.ids.len() > IDS_SHOWN_MAX {
        shown.push(format!("… ({} more)", response.ids.len() - IDS_SHOWN_MAX));
    }
    let ids = if shown.is_empty() { String::new() } else { format!(": {}", shown.join(", ")) };
    if dry_run {
        println!("would {} {} (dry run){ids}", action.verb(), output::jobs(response.count));
    } else {
        println!("{} {}{ids}", action.past(), output::jobs(response.count));
    }
    if !response.rejected.is_empty() {
        let shown: Vec<String> = response.rejected.iter().take(IDS_SHOWN_MAX).map(ToString::to_string).collect();
        let more = response.rejected.len().saturating_sub(IDS_SHOWN_MAX);
        let more = if more > 0 { format!(" … ({more} more)") } else { String::new() };
        println!(
            "{} {} dead: the payload no longer matches the queue's payload schema (dead reason `rejected`): {}{more}",
            if dry_run { "would leave" } else { "left" },
            output::jobs(response.rejected.len()),
            shown.join(", ")
        );
    }
    if limit_reached {
        println!("the limit was reached: more dead jobs may match (--limit, or --rate to go through all)");
    }
    Ok(())
}

/// Acts on `ids` in requests of up to 1000, at most `rate` jobs per second when given.
async fn by_ids(
    client: &dray_client::Client,
    action: Action,
    ids: Vec<u64>,
    rate: Option<NonZeroU32>,
    dry_run: bool,
) -> anyhow::Result<DeadActionResponse> {
    let chunk_len = match rate {
        Some(rate) => (rate.get() as usize).min(REQUEST_JOBS_MAX),
        None => REQUEST_JOBS_MAX,
    };
    // Chunks start `chunk_len / rate` seconds apart: `rate` jobs per second on average.
    let mut pace = rate.map(|rate| {
        let period = Duration::from_secs_f64(chunk_len as f64 / f64::from(rate.get()));
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval
    });
    let bar = match rate {
        Some(_) => output::progress(Some(ids.len() as u64), output::Unit::Jobs),
        None => indicatif::ProgressBar::hidden(),
    };
    let mut done = DeadActionResponse { ids: Vec::with_capacity(ids.len()), count: 0, dry_run, rejected: Vec::new() };
    for chunk in ids.chunks(chunk_len) {
        if let Some(pace) = &mut pace {
            pace.tick().await;
        }
        let body = DeadAction { ids: Some(chunk.to_vec()), dry_run, ..DeadAction::default() };
        let response = match action.call(client, body).await {
            Ok(response) => response,
            Err(err) => {
                bar.abandon();
                return Err(err).with_context(|| {
                    format!("{} of {} jobs {} before this error", done.count, ids.len(), action.past())
                });
            }
        };
        done.count += response.count;
        done.ids.extend(response.ids);
        done.rejected.extend(response.rejected);
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(done)
}

/// The ids of the dead jobs matching the filter of `args`, up to its `--limit`.
async fn list_dead(client: &dray_client::Client, args: &DeadActionArgs) -> anyhow::Result<Vec<u64>> {
    let limit = args.limit.unwrap_or(usize::MAX);
    let mut ids = Vec::new();
    let mut after = None;
    while ids.len() < limit {
        let query = JobQuery {
            queue: args.queue.clone(),
            dead_reason: args.reason.map(Into::into),
            after,
            limit: Some((limit - ids.len()).min(REQUEST_JOBS_MAX)),
            ..JobQuery::default()
        };
        let page = client.dead(query).await.context("listing the dead jobs to act on")?;
        ids.extend(page.jobs.iter().map(|job| job.id));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    ids.truncate(limit);
    Ok(ids)
}
