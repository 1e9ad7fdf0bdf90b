//! Conformance tests for what operators and maintenance do: dead letters, queue configuration and
//! stats, promotion and pruning, history, restarts, and the validation of every parameter.

use dray_core::{
    Backoff, DeadReason, Event, HistoryEntry, HistoryKind, Job, JobId, JobState, Limits, NewJob, Payload, RetryPolicy,
    Timestamp,
};

use super::{
    BACKOFF_1MS, Ctx, Harness, T0, after, assert_counts, assert_invalid, assert_job_eq, assert_not_found,
    assert_rejected, default_config, ids_of, kinds, new_job, payload, q, redrive_not_allowed,
};
use crate::{
    Ack, AckOutcome, DeadDiscard, DeadRedrive, DeadSelection, Error, JobAck, JobFilter, JobLease, JobList, JobPromote,
    JobSummary, LeaseExtend, Maintain, QueueConfig, QueueConfigure, QueueDelete, QueueDeleted, Store,
};

/// How a test job should die.
#[derive(Clone, Copy, Debug)]
enum Death {
    NonRetryable,
    Failed,
    LeaseExpired,
}

/// Inserts a job into `queue` and kills it the given way (moving the clock for an expiry). The job
/// must be the best available job of its queue.
async fn make_dead<H: Harness>(c: &mut Ctx<H>, queue: &str, tags: &[&str], death: Death) -> JobId {
    let new = NewJob {
        tags: tags.iter().map(|t| Box::from(*t)).collect(),
        attempts_max: Some(match death {
            Death::NonRetryable => 5,
            Death::Failed | Death::LeaseExpired => 1,
        }),
        lease_ms: Some(Limits::LEASE_MS_MIN),
        ..new_job(queue, &format!("{death:?}"))
    };
    let id = c.insert_one(new).await;
    let l = c.lease_one(queue, id).await;
    match death {
        Death::NonRetryable => {
            c.fail(id, l.lease, "non-retryable", false, None).await.unwrap();
        }
        Death::Failed => {
            c.fail(id, l.lease, "failed", true, None).await.unwrap();
        }
        Death::LeaseExpired => {
            c.set_now(l.deadline);
            assert_eq!(c.expire().await, 1);
        }
    }
    assert_eq!(c.get(id).await.state(), JobState::Dead);
    id
}

fn summary_of(job: &Job) -> JobSummary {
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

fn dead_filter() -> JobFilter {
    JobFilter { state: Some(JobState::Dead), ..JobFilter::default() }
}

/// The jobs a redrive moved back (none of these tests' queues has a schema, so none is rejected).
async fn redrive<H: Harness>(c: &Ctx<H>, selection: DeadSelection, dry_run: bool) -> Result<Vec<JobId>, Error> {
    let r = c.store().dead_redrive(DeadRedrive { now: c.now, selection, dry_run }).await?;
    assert_eq!(r.rejected, Vec::<JobId>::new());
    Ok(r.ids)
}

async fn promote<H: Harness>(c: &Ctx<H>, job: JobId) -> Result<JobState, Error> {
    c.store().job_promote(JobPromote { now: c.now, job }).await
}

async fn discard<H: Harness>(c: &Ctx<H>, selection: DeadSelection, dry_run: bool) -> Result<Vec<JobId>, Error> {
    c.store().dead_discard(DeadDiscard { now: c.now, selection, dry_run }).await
}

fn sorted(mut ids: Vec<JobId>) -> Vec<JobId> {
    ids.sort();
    ids
}

// ---------------------------------------------------------------------------------------------
// Dead letters
// ---------------------------------------------------------------------------------------------

/// `job_list` finds dead jobs by queue, reason, tag and creation range, in id order, one bounded
/// page at a time; summaries agree with `job_get`. The creation range is `[from, until)`.
pub async fn dead_list_filters_and_paging<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    let d1 = make_dead(&mut c, "qa", &["x"], Death::NonRetryable).await;
    c.set_now(T0.add_ms(10_000));
    let d2 = make_dead(&mut c, "qa", &["y"], Death::Failed).await;
    c.set_now(T0.add_ms(20_000));
    let d3 = make_dead(&mut c, "qb", &["x"], Death::LeaseExpired).await;
    c.set_now(T0.add_ms(30_000));
    let d4 = make_dead(&mut c, "qa", &["x"], Death::NonRetryable).await;
    c.set_now(T0.add_ms(40_000));
    let d5 = make_dead(&mut c, "qa", &[], Death::NonRetryable).await;
    c.set_now(T0.add_ms(50_000));
    let alive = c.insert_one(NewJob { tags: vec!["x".into()], ..new_job("qa", "alive") }).await;

    let cases: Vec<(&str, JobFilter, Vec<JobId>)> = vec![
        ("dead", dead_filter(), vec![d1, d2, d3, d4, d5]),
        ("dead in qa", JobFilter { queue: Some(q("qa")), ..dead_filter() }, vec![d1, d2, d4, d5]),
        (
            "dead non-retryable",
            JobFilter { dead_reason: Some(DeadReason::NonRetryable), ..dead_filter() },
            vec![d1, d4, d5],
        ),
        ("dead failed", JobFilter { dead_reason: Some(DeadReason::Failed), ..dead_filter() }, vec![d2]),
        ("dead lease expired", JobFilter { dead_reason: Some(DeadReason::LeaseExpired), ..dead_filter() }, vec![d3]),
        ("dead tagged x", JobFilter { tag: Some("x".into()), ..dead_filter() }, vec![d1, d3, d4]),
        (
            "dead created in [10s, 30s)",
            JobFilter {
                created_from: Some(T0.add_ms(10_000)),
                created_until: Some(T0.add_ms(30_000)),
                ..dead_filter()
            },
            vec![d2, d3],
        ),
        ("tagged x, any state", JobFilter { tag: Some("x".into()), ..JobFilter::default() }, vec![d1, d3, d4, alive]),
        ("dead in qb tagged y", JobFilter { queue: Some(q("qb")), tag: Some("y".into()), ..dead_filter() }, vec![]),
        ("available", JobFilter { state: Some(JobState::Available), ..JobFilter::default() }, vec![alive]),
        // Issue #18: filtering by error text, ignoring case; a job without an error never matches.
        ("error RETRY", JobFilter { error: Some("RETRY".into()), ..JobFilter::default() }, vec![d1, d4, d5]),
        ("dead, error lease", JobFilter { error: Some("lease".into()), ..dead_filter() }, vec![d3]),
        (
            "error fail, in qa",
            JobFilter { queue: Some(q("qa")), error: Some("fail".into()), ..JobFilter::default() },
            vec![d2],
        ),
        ("error nowhere", JobFilter { error: Some("no such text".into()), ..JobFilter::default() }, vec![]),
    ];
    for (name, filter, want) in cases {
        for limit in [1, 2, 3, Limits::PAGE_JOBS_MAX] {
            let got = c.list_paged(filter.clone(), limit).await;
            assert_eq!(got.iter().map(|s| s.id).collect::<Vec<_>>(), want, "filter {name}, page limit {limit}");
            for s in &got {
                assert_eq!(s, &summary_of(&c.get(s.id).await), "summary of job {} agrees with job_get", s.id);
            }
            // Issue #18: newest first, the same jobs in reverse.
            let newest: Vec<JobId> = c.list_paged_in(filter.clone(), limit, true).await.iter().map(|s| s.id).collect();
            let mut reversed = want.clone();
            reversed.reverse();
            assert_eq!(newest, reversed, "filter {name} newest first, page limit {limit}");
        }
    }
    let empty = JobFilter { error: Some("".into()), ..JobFilter::default() };
    let err = c.store().job_list(JobList { filter: empty, after: None, limit: 10, newest_first: false }).await;
    assert!(matches!(err, Err(Error::Invalid(ref e)) if e.field == "error"), "{err:?}");

    // `next` is absent once there is no more, also when the last page is exactly full.
    let page = |after: Option<JobId>, limit: usize| {
        let filter = JobFilter { queue: Some(q("qa")), ..dead_filter() };
        c.store().job_list(JobList { filter, after, limit, newest_first: false })
    };
    let p = page(None, 4).await.unwrap();
    assert_eq!(ids_of_summaries(&p.jobs), vec![d1, d2, d4, d5]);
    assert_eq!(p.next, None, "a page holding the last match has no next");
    let p = page(None, 2).await.unwrap();
    assert_eq!(ids_of_summaries(&p.jobs), vec![d1, d2]);
    assert!(p.next.is_some(), "a page with more matches after it has a next");
    let p = page(Some(d2), 10).await.unwrap();
    assert_eq!((ids_of_summaries(&p.jobs), p.next), (vec![d4, d5], None));
    let p = page(Some(d5), 10).await.unwrap();
    assert_eq!((ids_of_summaries(&p.jobs), p.next), (vec![], None));
}

fn ids_of_summaries(s: &[JobSummary]) -> Vec<JobId> {
    s.iter().map(|s| s.id).collect()
}

/// Redriving dead jobs by id makes them available at once with a fresh budget of attempts and a
/// `Redriven` history entry; the count of dead jobs and the oldest dead age follow.
pub async fn dead_redrive_by_ids<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    let d1 = make_dead(&mut c, "qa", &[], Death::NonRetryable).await;
    c.advance(1_000);
    let d2 = make_dead(&mut c, "qa", &[], Death::LeaseExpired).await;
    c.advance(1_000);
    let d3 = make_dead(&mut c, "qa", &[], Death::Failed).await;
    let d3_died = c.get(d3).await.status.finished_at;
    c.advance(1_000);

    let prev = [c.get(d1).await, c.get(d2).await];
    let moved = redrive(&c, DeadSelection::Ids(vec![d1, d2]), false).await.unwrap();
    assert_eq!(sorted(moved), vec![d1, d2]);
    for p in &prev {
        let job = c.get(p.id).await;
        assert_job_eq(&job, &after(p, Event::Redrive, c.now), "after redrive");
        assert_eq!(
            (job.state(), job.status.attempt, job.status.dead_reason, job.status.finished_at, job.status.run_at),
            (JobState::Available, 0, None, None, c.now)
        );
        let last = job.history.last().unwrap();
        assert_eq!(
            (last.kind, last.state, last.attempt, last.at),
            (HistoryKind::Redriven, JobState::Available, 0, c.now)
        );
    }
    let stats = c.stats("qa").await;
    assert_counts(&stats, &[(JobState::Available, 2), (JobState::Dead, 1)]);
    assert_eq!(stats.oldest_dead_at, d3_died);

    c.restart().await;
    let l = c.lease(&["qa"], 10).await;
    assert_eq!(ids_of(&l), vec![d1, d2]);
    assert!(l.iter().all(|l| l.attempt == 1), "a redriven job starts again at attempt 1");
    // d2 had attempts_max 1: the fresh budget is one more delivery (d1 has attempts left).
    c.set_now(l[1].deadline);
    assert_eq!(c.expire().await, 2);
    assert_eq!(c.get(d1).await.state(), JobState::Retrying);
    assert_eq!(c.get(d2).await.status.dead_reason, Some(DeadReason::LeaseExpired));
    assert_eq!(
        kinds(&c.get(d2).await),
        [
            HistoryKind::Enqueued,
            HistoryKind::Leased,
            HistoryKind::Expired,
            HistoryKind::Redriven,
            HistoryKind::Leased,
            HistoryKind::Expired
        ]
    );
}

/// Redriving by filter moves at most `limit` matching dead jobs and ignores the filter's state.
/// Contract decision: with more matches than `limit`, the oldest (lowest id) go first.
pub async fn dead_redrive_by_filter_with_limit<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    let a1 = make_dead(&mut c, "qa", &["x"], Death::NonRetryable).await;
    let a2 = make_dead(&mut c, "qa", &["x"], Death::Failed).await;
    let b1 = make_dead(&mut c, "qb", &[], Death::NonRetryable).await;
    let a3 = make_dead(&mut c, "qa", &[], Death::NonRetryable).await;
    let a4 = make_dead(&mut c, "qa", &["x"], Death::NonRetryable).await;
    c.advance(1_000);

    let non_retryable_qa = JobFilter {
        queue: Some(q("qa")),
        dead_reason: Some(DeadReason::NonRetryable),
        state: Some(JobState::Available),
        ..JobFilter::default()
    };
    let by = |filter: JobFilter, limit: usize| DeadSelection::Filter { filter, limit };
    assert_eq!(sorted(redrive(&c, by(non_retryable_qa.clone(), 2), false).await.unwrap()), vec![a1, a3]);
    assert_eq!(redrive(&c, by(non_retryable_qa, 10), false).await.unwrap(), vec![a4]);
    let tag_x = JobFilter { tag: Some("x".into()), ..JobFilter::default() };
    assert_eq!(redrive(&c, by(tag_x, 10), false).await.unwrap(), vec![a2]);
    assert_eq!(
        redrive(&c, by(JobFilter { queue: Some(q("qa")), ..JobFilter::default() }, 10), false).await.unwrap(),
        vec![]
    );
    assert_counts(&c.stats("qa").await, &[(JobState::Available, 4)]);
    assert_counts(&c.stats("qb").await, &[(JobState::Dead, 1)]);
    assert_eq!(c.get(b1).await.state(), JobState::Dead);
}

/// A dry run reports exactly what would move and changes nothing.
pub async fn dead_redrive_dry_run<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    let d1 = make_dead(&mut c, "q", &[], Death::NonRetryable).await;
    let d2 = make_dead(&mut c, "q", &[], Death::Failed).await;
    c.advance(1_000);
    let snap = c.snapshot().await;
    assert_eq!(sorted(redrive(&c, DeadSelection::Ids(vec![d1, d2]), true).await.unwrap()), vec![d1, d2]);
    let filter = DeadSelection::Filter { filter: JobFilter { queue: Some(q("q")), ..JobFilter::default() }, limit: 1 };
    assert_eq!(redrive(&c, filter.clone(), true).await.unwrap(), vec![d1]);
    c.assert_unchanged(&snap, "after dry-run redrives").await;
    assert_eq!(redrive(&c, filter, false).await.unwrap(), vec![d1], "the real run moves what the dry run said");
}

/// Redriving a job that is not dead is `Rejected` (`NotAllowed`), an unknown id `JobNotFound`.
/// Contract decision: a request naming one such id is rejected whole: no job of it moves.
pub async fn dead_redrive_not_dead_rejected<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    let dead = make_dead(&mut c, "q", &[], Death::NonRetryable).await;
    let done = c.insert_one(new_job("q", "done")).await;
    let l = c.lease_one("q", done).await;
    c.complete(done, l.lease).await.unwrap();
    let running = c.insert_one(new_job("q", "running")).await;
    c.lease_one("q", running).await;
    let available = c.insert_one(new_job("q", "available")).await;
    let unknown = JobId(available.0.wrapping_add(1_000));
    c.advance(1_000);
    let snap = c.snapshot().await;
    for (id, state) in [(available, JobState::Available), (running, JobState::Running), (done, JobState::Completed)] {
        assert_rejected(redrive(&c, DeadSelection::Ids(vec![id]), false).await, id, redrive_not_allowed(state));
        assert_rejected(redrive(&c, DeadSelection::Ids(vec![id]), true).await, id, redrive_not_allowed(state));
    }
    assert_not_found(redrive(&c, DeadSelection::Ids(vec![unknown]), false).await, unknown);
    assert_rejected(
        redrive(&c, DeadSelection::Ids(vec![dead, available]), false).await,
        available,
        redrive_not_allowed(JobState::Available),
    );
    c.assert_unchanged(&snap, "after rejected redrives").await;
}

/// Discarding dead jobs deletes them for good (also across a restart); the counts follow.
/// Discarding a job that is not dead never deletes it.
pub async fn dead_discard_removes<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    let d1 = make_dead(&mut c, "q", &[], Death::NonRetryable).await;
    c.advance(1_000);
    let d2 = make_dead(&mut c, "q", &[], Death::Failed).await;
    let alive = c.insert_one(new_job("q", "alive")).await;
    c.advance(1_000);
    assert_eq!(discard(&c, DeadSelection::Ids(vec![d1]), false).await.unwrap(), vec![d1]);
    assert_eq!(c.try_get(d1).await, None);
    assert_eq!(c.list_ids(dead_filter()).await, vec![d2]);
    let stats = c.stats("q").await;
    assert_counts(&stats, &[(JobState::Dead, 1), (JobState::Available, 1)]);
    assert_eq!(stats.oldest_dead_at, c.get(d2).await.status.finished_at);

    let alive_before = c.get(alive).await;
    match discard(&c, DeadSelection::Ids(vec![alive]), false).await {
        Ok(ids) => assert!(!ids.contains(&alive), "discard reported deleting a live job"),
        Err(Error::Rejected { job, .. }) => assert_eq!(job, alive),
        Err(e) => panic!("unexpected error discarding a live job: {e:?}"),
    }
    assert_job_eq(&c.get(alive).await, &alive_before, "a live job is never discarded");

    let all = DeadSelection::Filter { filter: JobFilter { queue: Some(q("q")), ..JobFilter::default() }, limit: 10 };
    assert_eq!(discard(&c, all, false).await.unwrap(), vec![d2]);
    let stats = c.stats("q").await;
    assert_counts(&stats, &[(JobState::Available, 1)]);
    assert_eq!(stats.oldest_dead_at, None);
    c.restart().await;
    assert_eq!((c.try_get(d1).await, c.try_get(d2).await), (None, None), "a discard is durable");
    assert_eq!(c.list_ids(JobFilter::default()).await, vec![alive]);
}

/// A dry-run discard reports what would go and deletes nothing.
pub async fn dead_discard_dry_run<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    let d1 = make_dead(&mut c, "q", &[], Death::NonRetryable).await;
    let d2 = make_dead(&mut c, "q", &[], Death::LeaseExpired).await;
    c.advance(1_000);
    let snap = c.snapshot().await;
    assert_eq!(sorted(discard(&c, DeadSelection::Ids(vec![d1, d2]), true).await.unwrap()), vec![d1, d2]);
    let filter = JobFilter { dead_reason: Some(DeadReason::LeaseExpired), ..JobFilter::default() };
    assert_eq!(discard(&c, DeadSelection::Filter { filter, limit: 10 }, true).await.unwrap(), vec![d2]);
    c.assert_unchanged(&snap, "after dry-run discards").await;
}

// ---------------------------------------------------------------------------------------------
// Queues
// ---------------------------------------------------------------------------------------------

/// `queue_stats` and `queue_list` count each state exactly, per queue, also after a restart.
pub async fn queue_stats_counts<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    let r = c.insert_one(new_job("q", "retrying")).await;
    let l = c.lease_one("q", r).await;
    c.fail(r, l.lease, "boom", true, Some(3_600_000)).await.unwrap();
    let d = c.insert_one(new_job("q", "completed")).await;
    let l = c.lease_one("q", d).await;
    c.complete(d, l.lease).await.unwrap();
    make_dead(&mut c, "q", &[], Death::NonRetryable).await;
    let x = c.insert_one(new_job("q", "cancelled")).await;
    assert_eq!(c.cancel(x).await.unwrap(), JobState::Cancelled);
    let run = c.insert_one(new_job("q", "running")).await;
    c.lease_one("q", run).await;
    c.insert(vec![new_job("q", "a1"), new_job("q", "a2")]).await;
    c.insert_one(NewJob { delay_ms: Some(3_600_000), ..new_job("q", "scheduled") }).await;
    c.insert_one(new_job("other", "x")).await;

    let want = [
        (JobState::Scheduled, 1),
        (JobState::Available, 2),
        (JobState::Running, 1),
        (JobState::Retrying, 1),
        (JobState::Completed, 1),
        (JobState::Dead, 1),
        (JobState::Cancelled, 1),
    ];
    let stats = c.stats("q").await;
    assert_counts(&stats, &want);
    assert_counts(&c.stats("other").await, &[(JobState::Available, 1)]);
    let list = c.queue_list().await;
    assert_eq!(list.iter().map(|s| s.config.name.as_str()).collect::<Vec<_>>(), ["other", "q"]);
    assert_eq!(list[1], stats, "queue_list and queue_stats agree");
    c.restart().await;
    assert_eq!(c.stats("q").await, stats, "stats survive a restart");
    assert_eq!(c.queue_list().await, list);
}

/// `oldest_dead_at` is when the longest-dead job died; it follows redrives and discards.
pub async fn queue_stats_oldest_dead_at<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    c.set_now(T0.add_ms(1_000));
    let d1 = make_dead(&mut c, "q", &[], Death::NonRetryable).await;
    c.set_now(T0.add_ms(5_000));
    let d2 = make_dead(&mut c, "q", &[], Death::NonRetryable).await;
    c.advance(1_000);
    assert_eq!(c.stats("q").await.oldest_dead_at, Some(T0.add_ms(1_000)));
    redrive(&c, DeadSelection::Ids(vec![d1]), false).await.unwrap();
    assert_eq!(c.stats("q").await.oldest_dead_at, Some(T0.add_ms(5_000)));
    c.restart().await;
    assert_eq!(c.stats("q").await.oldest_dead_at, Some(T0.add_ms(5_000)));
    discard(&c, DeadSelection::Ids(vec![d2]), false).await.unwrap();
    assert_eq!(c.stats("q").await.oldest_dead_at, None);
}

type ConfigBreaker = fn(&mut QueueConfigure);

/// `queue_configure` rejects each out-of-range field with `Error::Invalid` naming it, and changes
/// nothing: an existing queue keeps its config, a new queue is not created.
pub async fn queue_configure_validates<H: Harness>(h: H) {
    let c = Ctx::open(h).await;
    let config =
        c.configure(QueueConfigure { retention_ms: Some(5_000), ..QueueConfigure::new(c.now, q("q")) }).await.unwrap();
    assert_eq!(config, QueueConfig { retention_ms: 5_000, ..default_config("q") });
    let snap = c.snapshot().await;
    let cases: Vec<(&str, ConfigBreaker)> = vec![
        ("attempts_max", |p| p.retry = Some(RetryPolicy { attempts_max: 0, ..RetryPolicy::default() })),
        ("attempts_max", |p| {
            p.retry = Some(RetryPolicy { attempts_max: Limits::ATTEMPTS_MAX_MAX + 1, ..RetryPolicy::default() })
        }),
        ("backoff.factor", |p| {
            p.retry =
                Some(RetryPolicy { backoff: Backoff { factor: 11.0, ..Backoff::default() }, ..RetryPolicy::default() })
        }),
        ("backoff.cap_ms", |p| {
            p.retry = Some(RetryPolicy {
                backoff: Backoff { base_ms: 5_000, cap_ms: 1_000, ..Backoff::default() },
                ..RetryPolicy::default()
            })
        }),
        ("lease_ms", |p| p.lease_ms = Some(Limits::LEASE_MS_MIN - 1)),
        ("lease_ms", |p| p.lease_ms = Some(Limits::LEASE_MS_MAX + 1)),
        ("retention_ms", |p| p.retention_ms = Some(Limits::RETENTION_MS_MAX + 1)),
        ("retention_dead_ms", |p| p.retention_dead_ms = Some(Limits::RETENTION_MS_MAX + 1)),
    ];
    for (field, breaker) in cases {
        for name in ["q", "fresh"] {
            let mut p = QueueConfigure { paused: Some(true), ..QueueConfigure::new(c.now, q(name)) };
            breaker(&mut p);
            assert_invalid(c.configure(p).await, field);
        }
    }
    c.assert_unchanged(&snap, "after invalid configurations").await;
}

/// A queue's policy is the default for new jobs (attempts, backoff, lease duration); a job's own
/// options win; jobs keep the policy they were inserted with. Unset fields of a configure keep
/// their value; configuration survives a restart.
pub async fn queue_configure_defaults_and_overrides<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    let old = c.insert_one(new_job("q", "old")).await;
    let policy = RetryPolicy { attempts_max: 3, backoff: Backoff { base_ms: 2_000, factor: 3.0, cap_ms: 60_000 } };
    let p = QueueConfigure {
        retry: Some(policy),
        lease_ms: Some(5_000),
        retention_ms: Some(10_000),
        retention_dead_ms: Some(20_000),
        ..QueueConfigure::new(c.now, q("q"))
    };
    let want = QueueConfig {
        name: q("q"),
        retry: policy,
        lease_ms: 5_000,
        retention_ms: 10_000,
        retention_dead_ms: 20_000,
        paused: false,
        payload_schema: None,
        ordering_dead: crate::OrderingDead::Block,
        limits: crate::FlowLimits::default(),
        breaker: None,
    };
    assert_eq!(c.configure(p).await.unwrap(), want);
    let paused =
        c.configure(QueueConfigure { paused: Some(true), ..QueueConfigure::new(c.now, q("q")) }).await.unwrap();
    assert_eq!(paused, QueueConfig { paused: true, ..want.clone() }, "unset fields keep their value");
    let resumed =
        c.configure(QueueConfigure { paused: Some(false), ..QueueConfigure::new(c.now, q("q")) }).await.unwrap();
    assert_eq!(resumed, want);

    let plain = c.insert_one(new_job("q", "plain")).await;
    let own_backoff = Backoff { base_ms: 100, factor: 1.5, cap_ms: 1_000 };
    let own = c
        .insert_one(NewJob {
            attempts_max: Some(7),
            lease_ms: Some(9_000),
            backoff: Some(own_backoff),
            ..new_job("q", "own")
        })
        .await;
    let (old_job, plain_job, own_job) = (c.get(old).await, c.get(plain).await, c.get(own).await);
    assert_eq!((old_job.retry, old_job.lease_ms), (RetryPolicy::default(), Limits::LEASE_MS_DEFAULT));
    assert_eq!((plain_job.retry, plain_job.lease_ms), (policy, 5_000));
    assert_eq!((own_job.retry, own_job.lease_ms), (RetryPolicy { attempts_max: 7, backoff: own_backoff }, 9_000));
    c.restart().await;
    assert_eq!(c.stats("q").await.config, want, "configuration survives a restart");
    c.advance(10);
    let l = c.lease(&["q"], 10).await;
    assert_eq!(ids_of(&l), vec![old, plain, own]);
    let got: Vec<_> = l.iter().map(|l| (l.attempts_max, l.deadline)).collect();
    assert_eq!(
        got,
        [
            (Limits::ATTEMPTS_MAX_DEFAULT, c.now.add_ms(Limits::LEASE_MS_DEFAULT)),
            (3, c.now.add_ms(5_000)),
            (7, c.now.add_ms(9_000)),
        ]
    );
}

/// `queue_list` lists configured queues (even without jobs) and queues created by their first job,
/// each as `queue_stats` reports it.
pub async fn queue_list_lists_every_queue<H: Harness>(h: H) {
    let c = Ctx::open(h).await;
    c.configure(QueueConfigure::new(c.now, q("configured"))).await.unwrap();
    c.insert_one(new_job("implicit", "x")).await;
    let list = c.queue_list().await;
    assert_eq!(list.iter().map(|s| s.config.name.as_str()).collect::<Vec<_>>(), ["configured", "implicit"]);
    assert_eq!(list[0].config, default_config("configured"));
    assert_counts(&list[0], &[]);
    assert_counts(&list[1], &[(JobState::Available, 1)]);
    assert_eq!(list[0], c.stats("configured").await);
    assert_eq!(list[1], c.stats("implicit").await);
}

/// Contract decision: `queue_stats` of a queue nobody configured or used is `QueueNotFound`.
pub async fn queue_stats_unknown_queue<H: Harness>(h: H) {
    let c = Ctx::open(h).await;
    match c.store().queue_stats(&q("nobody")).await {
        Err(Error::QueueNotFound(name)) => assert_eq!(name, q("nobody")),
        other => panic!("expected QueueNotFound, got {other:?}"),
    }
}

/// `queue_delete` removes a queue that holds no work, with its completed and cancelled jobs
/// (issue #18: a mistyped queue name stayed forever). A queue holding waiting, running, retrying
/// or dead jobs is refused and unchanged; an unknown queue is not found; the deletion survives a
/// restart, and the name can be used again afterwards.
pub async fn queue_delete_only_without_work<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    let delete = |name: &str| QueueDelete { now: T0, queue: q(name) };
    let done = c.insert_one(new_job("typo", "b")).await;
    let l = c.lease_one("typo", done).await;
    c.complete(done, l.lease).await.unwrap();
    let waiting = c.insert_one(new_job("typo", "a")).await;
    let dead = make_dead(&mut c, "graveyard", &[], Death::NonRetryable).await;
    c.configure(QueueConfigure { paused: Some(true), ..QueueConfigure::new(c.now, q("configured")) }).await.unwrap();

    let snap = c.snapshot().await;
    for (queue, jobs) in [("typo", 1), ("graveyard", 1)] {
        match c.store().queue_delete(delete(queue)).await {
            Err(Error::QueueNotEmpty { queue: name, jobs: n }) => assert_eq!((name, n), (q(queue), jobs)),
            other => panic!("{queue}: expected QueueNotEmpty, got {other:?}"),
        }
    }
    match c.store().queue_delete(delete("nobody")).await {
        Err(Error::QueueNotFound(name)) => assert_eq!(name, q("nobody")),
        other => panic!("expected QueueNotFound, got {other:?}"),
    }
    c.assert_unchanged(&snap, "after refused deletes").await;

    assert_eq!(c.cancel(waiting).await.unwrap(), JobState::Cancelled);
    assert_eq!(c.store().queue_delete(delete("typo")).await.unwrap(), QueueDeleted { jobs_deleted: 2 });
    assert_eq!(c.store().queue_delete(delete("configured")).await.unwrap(), QueueDeleted { jobs_deleted: 0 });
    discard(&c, DeadSelection::Ids(vec![dead]), false).await.unwrap();
    assert_eq!(c.store().queue_delete(delete("graveyard")).await.unwrap(), QueueDeleted { jobs_deleted: 0 });

    c.restart().await;
    for gone in ["typo", "configured", "graveyard"] {
        assert!(matches!(c.store().queue_stats(&q(gone)).await, Err(Error::QueueNotFound(_))), "{gone}");
    }
    assert!(c.queue_list().await.is_empty(), "no queue left");
    assert!(c.try_get(waiting).await.is_none() && c.try_get(done).await.is_none(), "its finished jobs went with it");
    // The name is free again, with the default configuration.
    let again = c.insert_one(new_job("configured", "c")).await;
    let stats = c.stats("configured").await;
    assert!(!stats.config.paused, "a queue made anew has the defaults");
    assert_eq!(c.lease(&["configured"], 1).await[0].id, again);
}

/// A stand-in for the server's JSON Schema checker: a payload matches when it contains the
/// schema's text. The suite checks where a store calls the checker, not JSON Schema.
#[derive(Debug)]
struct ContainsCheck;

impl crate::PayloadCheck for ContainsCheck {
    fn check(&self, schema: &crate::PayloadSchema, payload: &Payload) -> Result<(), String> {
        let text = std::str::from_utf8(payload.as_bytes()).unwrap_or("");
        if text.contains(schema.as_str()) { Ok(()) } else { Err(format!("at \"\": lacks {:?}", schema.as_str())) }
    }
}

/// A queue's payload schema (issue #10) is kept with its configuration (across a restart) and
/// checked by the store where it decides: a new job that does not match refuses its whole batch,
/// naming the job's payload; a duplicate by idempotency key is not checked again; a dead job
/// that no longer matches is not redriven but stays dead with reason `rejected` (a dry run only
/// says so); removing the schema lets it go.
pub async fn payload_schema_checked_at_insert_and_redrive<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    c.store().payload_check_set(std::sync::Arc::new(ContainsCheck));
    let old = make_dead(&mut c, "s", &[], Death::NonRetryable).await;
    let keyed = c.insert_one(NewJob { idempotency_key: Some("k".into()), ..new_job("s", "before") }).await;
    let schema = crate::PayloadSchema::new("ok");
    let set = QueueConfigure { payload_schema: Some(Some(schema.clone())), ..QueueConfigure::new(c.now, q("s")) };
    let config = c.configure(set).await.unwrap();
    assert_eq!(config.payload_schema.as_ref(), Some(&schema));

    let snap = c.snapshot().await;
    assert_invalid(c.try_insert(vec![new_job("s", "ok 1"), new_job("s", "bad")]).await, "jobs[1].payload");
    c.assert_unchanged(&snap, "after a batch with a payload that does not match").await;
    let fine = c.insert_one(new_job("s", "ok 2")).await;
    let other = c.insert_one(new_job("elsewhere", "bad")).await;
    let again = c.insert(vec![NewJob { idempotency_key: Some("k".into()), ..new_job("s", "before") }]).await;
    assert_eq!((again[0].id, again[0].duplicate), (keyed, true), "a duplicate is the job accepted before");

    let dry =
        c.store().dead_redrive(DeadRedrive { now: c.now, selection: DeadSelection::Ids(vec![old]), dry_run: true });
    assert_eq!(dry.await.unwrap(), crate::Redriven { ids: vec![], rejected: vec![old] });
    assert_eq!(c.get(old).await.status.dead_reason, Some(DeadReason::NonRetryable), "a dry run changes nothing");
    c.advance(10);
    let r =
        c.store().dead_redrive(DeadRedrive { now: c.now, selection: DeadSelection::Ids(vec![old]), dry_run: false });
    assert_eq!(r.await.unwrap(), crate::Redriven { ids: vec![], rejected: vec![old] });
    let job = c.get(old).await;
    assert_eq!((job.state(), job.status.dead_reason), (JobState::Dead, Some(DeadReason::Rejected)));
    let error = job.status.last_error.as_deref().unwrap_or_default();
    assert!(error.contains("lacks"), "the checker's message is the job's last error: {error:?}");
    let last = job.history.last().unwrap();
    assert_eq!((last.kind, last.at, last.error.as_deref()), (HistoryKind::Rejected, c.now, Some(error)));

    c.restart().await;
    c.store().payload_check_set(std::sync::Arc::new(ContainsCheck));
    assert_eq!(c.stats("s").await.config.payload_schema, Some(schema), "the schema survives a restart");
    assert_eq!(c.get(old).await.status.dead_reason, Some(DeadReason::Rejected));
    assert_invalid(c.try_insert(vec![new_job("s", "still bad")]).await, "jobs[0].payload");

    let unset = QueueConfigure { payload_schema: Some(None), ..QueueConfigure::new(c.now, q("s")) };
    assert_eq!(c.configure(unset).await.unwrap().payload_schema, None);
    let r =
        c.store().dead_redrive(DeadRedrive { now: c.now, selection: DeadSelection::Ids(vec![old]), dry_run: false });
    assert_eq!(r.await.unwrap(), crate::Redriven { ids: vec![old], rejected: vec![] });
    assert_eq!(c.get(old).await.state(), JobState::Available);
    let leased: Vec<JobId> = c.lease(&["s", "elsewhere"], 10).await.iter().map(|l| l.id).collect();
    for id in [fine, other, keyed, old] {
        assert!(leased.contains(&id), "job {id} is leasable: {leased:?}");
    }
}

/// `job_promote` makes a scheduled or retrying job available now (issue #18), keeping its
/// attempts; other states are refused and unchanged.
pub async fn job_promote_runs_now<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    let later = c.insert_one(NewJob { delay_ms: Some(3_600_000), ..new_job("q", "later") }).await;
    let retry = c.insert_one(new_job("q", "retry")).await;
    let l = c.lease_one("q", retry).await;
    c.fail(retry, l.lease, "boom", true, Some(3_600_000)).await.unwrap();
    assert_eq!(c.get(retry).await.state(), JobState::Retrying);
    assert!(c.lease(&["q"], 10).await.is_empty(), "nothing is due");

    c.advance(5);
    assert_eq!(promote(&c, later).await.unwrap(), JobState::Available);
    assert_eq!(promote(&c, retry).await.unwrap(), JobState::Available);
    for (id, attempt) in [(later, 0), (retry, 1)] {
        let job = c.get(id).await;
        assert_eq!((job.state(), job.status.attempt), (JobState::Available, attempt), "job {id}");
        assert!(job.status.run_at <= c.now, "job {id} takes its place in line as of now");
        assert_eq!(job.history.last().map(|h| h.kind), Some(HistoryKind::Promoted), "job {id}");
    }
    let leased: Vec<JobId> = c.lease(&["q"], 10).await.iter().map(|l| l.id).collect();
    assert_eq!(sorted(leased), sorted(vec![later, retry]));

    let snap = c.snapshot().await;
    for id in [later, retry] {
        assert_rejected(
            promote(&c, id).await,
            id,
            dray_core::Rejection::NotAllowed {
                state: JobState::Running,
                event: dray_core::transition::EventKind::PromoteNow,
            },
        );
    }
    assert_not_found(promote(&c, JobId(999_999)).await, JobId(999_999));
    c.assert_unchanged(&snap, "after refused promotions").await;
}

// ---------------------------------------------------------------------------------------------
// Maintenance
// ---------------------------------------------------------------------------------------------

/// `jobs_promote` moves scheduled and retrying jobs whose time has come to `available` (history
/// `Promoted`), and nothing else; a promoted job keeps its run time as its place in line.
pub async fn promote_moves_due_jobs<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    let s1 = c.insert_one(NewJob { delay_ms: Some(1_000), ..new_job("q", "s1") }).await;
    let s2 = c.insert_one(NewJob { delay_ms: Some(2_000), ..new_job("q", "s2") }).await;
    let r = c.insert_one(new_job("q", "r")).await;
    let l = c.lease_one("q", r).await;
    c.fail(r, l.lease, "boom", true, Some(1_500)).await.unwrap();

    c.set_now(T0.add_ms(999));
    assert_eq!(c.promote().await, 0);
    c.set_now(T0.add_ms(1_500));
    let prev = [c.get(s1).await, c.get(r).await];
    assert_eq!(c.promote().await, 2);
    for p in &prev {
        let job = c.get(p.id).await;
        assert_job_eq(&job, &after(p, Event::Promote, c.now), "after promote");
        let last = job.history.last().unwrap();
        assert_eq!(
            (last.kind, last.state, last.attempt),
            (HistoryKind::Promoted, JobState::Available, p.status.attempt)
        );
    }
    assert_eq!(c.get(s1).await.status.run_at, T0.add_ms(1_000));
    assert_eq!(c.get(s2).await.state(), JobState::Scheduled);
    assert_counts(&c.stats("q").await, &[(JobState::Available, 2), (JobState::Scheduled, 1)]);
    assert_eq!(c.promote().await, 0, "a promoted job is promoted once");
    c.set_now(T0.add_ms(2_000));
    assert_eq!(c.promote().await, 1);
    assert_eq!(ids_of(&c.lease(&["q"], 10).await), vec![s1, r, s2], "promoted jobs line up by run time");
}

/// Maintenance passes act on at most `limit` jobs each.
pub async fn promote_respects_limit<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    c.insert((0..3).map(|i| NewJob { delay_ms: Some(1_000), ..new_job("q", &i.to_string()) }).collect()).await;
    c.insert((0..3).map(|i| NewJob { lease_ms: Some(5_000), ..new_job("r", &i.to_string()) }).collect()).await;
    let leased = c.lease(&["r"], 3).await;
    assert_eq!(leased.len(), 3);
    c.set_now(T0.add_ms(5_000));
    let m = Maintain { now: c.now, limit: 2 };
    assert_eq!(c.store().jobs_promote(m).await.unwrap(), 2);
    assert_eq!(c.store().jobs_promote(m).await.unwrap(), 1);
    assert_eq!(c.store().jobs_promote(m).await.unwrap(), 0);
    assert_eq!(c.store().leases_expire(m).await.unwrap().len(), 2);
    assert_eq!(c.store().leases_expire(m).await.unwrap().len(), 1);
    assert_eq!(c.store().leases_expire(m).await.unwrap().len(), 0);
    assert_counts(&c.stats("q").await, &[(JobState::Available, 3)]);
    assert_eq!(c.stats("r").await.count(JobState::Running), 0);
}

/// `jobs_prune` deletes completed and cancelled jobs `retention_ms` after they finished and dead
/// jobs `retention_dead_ms` after they died, and never a live job. Contract decision: like every
/// other deadline, retention ends at exactly `finished_at + retention`.
pub async fn prune_respects_retention<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    let p = QueueConfigure {
        retention_ms: Some(10_000),
        retention_dead_ms: Some(20_000),
        ..QueueConfigure::new(c.now, q("q"))
    };
    c.configure(p).await.unwrap();
    let day = 24 * 3_600_000;
    let running =
        c.insert_one(NewJob { priority: 9, lease_ms: Some(Limits::LEASE_MS_MAX), ..new_job("q", "running") }).await;
    c.lease_one("q", running).await;
    let retrying = c.insert_one(NewJob { priority: 8, ..new_job("q", "retrying") }).await;
    let l = c.lease_one("q", retrying).await;
    c.fail(retrying, l.lease, "later", true, Some(20 * day)).await.unwrap();
    let done = c.insert_one(NewJob { priority: 7, ..new_job("q", "done") }).await;
    let l = c.lease_one("q", done).await;
    c.complete(done, l.lease).await.unwrap();
    let dead = c.insert_one(NewJob { priority: 6, ..new_job("q", "dead") }).await;
    let l = c.lease_one("q", dead).await;
    c.fail(dead, l.lease, "bad", false, None).await.unwrap();
    let cancelled = c.insert_one(new_job("q", "cancelled")).await;
    c.cancel(cancelled).await.unwrap();
    let scheduled = c.insert_one(NewJob { delay_ms: Some(100 * day), ..new_job("q", "scheduled") }).await;
    let available = c.insert_one(NewJob { priority: -1, ..new_job("q", "available") }).await;
    let finished = c.now;
    let live = [running, retrying, scheduled, available];

    c.set_now(finished.add_ms(9_999));
    assert_eq!(c.prune().await, 0);
    c.set_now(finished.add_ms(10_000));
    assert_eq!(c.prune().await, 2);
    assert_eq!((c.try_get(done).await, c.try_get(cancelled).await), (None, None));
    assert_eq!(c.get(dead).await.state(), JobState::Dead);
    c.set_now(finished.add_ms(19_999));
    assert_eq!(c.prune().await, 0);
    c.set_now(finished.add_ms(20_000));
    assert_eq!(c.prune().await, 1);
    assert_eq!(c.try_get(dead).await, None);
    let mut ids = c.list_ids(JobFilter::default()).await;
    ids.sort();
    let mut want = live.to_vec();
    want.sort();
    assert_eq!(ids, want, "only live jobs are left");
    assert_counts(
        &c.stats("q").await,
        &[(JobState::Running, 1), (JobState::Retrying, 1), (JobState::Scheduled, 1), (JobState::Available, 1)],
    );
    assert_eq!(c.stats("q").await.oldest_dead_at, None);
}

/// A finished job with an idempotency key is kept until its key's window has ended, even past its
/// retention, so a retried request still finds it; after that it is pruned and the key is free.
pub async fn prune_keeps_idempotency_window<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    c.configure(QueueConfigure { retention_ms: Some(1_000), ..QueueConfigure::new(c.now, q("q")) }).await.unwrap();
    let window = Limits::IDEMPOTENCY_WINDOW_MS_DEFAULT;
    let keyed = || NewJob { idempotency_key: Some("k".into()), ..new_job("q", "p") };
    let k = c.insert_one(keyed()).await;
    let plain = c.insert_one(new_job("q", "plain")).await;
    for id in [k, plain] {
        let l = c.lease_one("q", id).await;
        c.complete(id, l.lease).await.unwrap();
    }
    c.set_now(T0.add_ms(1_000));
    assert_eq!(c.prune().await, 1);
    assert_eq!(c.try_get(plain).await, None);
    c.set_now(T0.add_ms(window - 1));
    assert_eq!(c.prune().await, 0, "kept while its idempotency key is");
    assert_eq!(c.get(k).await.state(), JobState::Completed);
    c.set_now(T0.add_ms(window));
    assert_eq!(c.prune().await, 1);
    assert_eq!(c.try_get(k).await, None);
    let fresh = c.insert(vec![keyed()]).await;
    assert!(!fresh[0].duplicate && fresh[0].id > k, "the key is free once its job is pruned: {fresh:?}");
}

// ---------------------------------------------------------------------------------------------
// History and restart
// ---------------------------------------------------------------------------------------------

/// Every change of state is one history entry with its time, the state it led to, the attempt,
/// and the token and worker (lease, completion, failure, expiry) and error (failure, expiry);
/// heartbeats and repeated requests add none. `version` counts the entries.
pub async fn history_records_every_change<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    let w = c.worker.clone();
    let id = c
        .insert_one(NewJob {
            delay_ms: Some(1_000),
            attempts_max: Some(3),
            lease_ms: Some(5_000),
            backoff: Some(BACKOFF_1MS),
            ..new_job("q", "x")
        })
        .await;
    let entry = |at: Timestamp, kind: HistoryKind, state: JobState, attempt: u32| HistoryEntry {
        at,
        kind,
        state,
        attempt,
        token: None,
        worker: None,
        error: None,
        run_at: None,
    };
    let mut want = vec![HistoryEntry {
        run_at: Some(T0.add_ms(1_000)),
        ..entry(T0, HistoryKind::Enqueued, JobState::Scheduled, 0)
    }];

    c.set_now(T0.add_ms(1_000));
    assert_eq!(c.promote().await, 1);
    want.push(entry(c.now, HistoryKind::Promoted, JobState::Available, 0));
    c.advance(10);
    let l1 = c.lease_one("q", id).await;
    want.push(HistoryEntry {
        token: Some(l1.token),
        worker: Some(w.clone()),
        ..entry(c.now, HistoryKind::Leased, JobState::Running, 1)
    });
    c.advance(10);
    c.heartbeat(id, l1.lease, None).await.unwrap();
    c.advance(10);
    c.fail(id, l1.lease, "e1", true, Some(0)).await.unwrap();
    want.push(HistoryEntry {
        token: Some(l1.token),
        worker: Some(w.clone()),
        error: Some("e1".into()),
        run_at: Some(c.now),
        ..entry(c.now, HistoryKind::Failed, JobState::Retrying, 1)
    });
    assert_eq!(c.promote().await, 1);
    want.push(entry(c.now, HistoryKind::Promoted, JobState::Available, 1));
    c.advance(10);
    let l2 = c.lease_one("q", id).await;
    want.push(HistoryEntry {
        token: Some(l2.token),
        worker: Some(w.clone()),
        ..entry(c.now, HistoryKind::Leased, JobState::Running, 2)
    });
    c.set_now(l2.deadline);
    assert_eq!(c.expire().await, 1);
    let job = c.get(id).await;
    let retry_at = job.status.run_at;
    let expiry_error = job.history.last().unwrap().error.clone();
    assert!(expiry_error.is_some(), "an expiry records an error");
    want.push(HistoryEntry {
        token: Some(l2.token),
        worker: Some(w.clone()),
        error: expiry_error,
        run_at: Some(retry_at),
        ..entry(c.now, HistoryKind::Expired, JobState::Retrying, 2)
    });
    c.set_now(retry_at);
    assert_eq!(c.promote().await, 1);
    want.push(entry(c.now, HistoryKind::Promoted, JobState::Available, 2));
    c.advance(10);
    let l3 = c.lease_one("q", id).await;
    want.push(HistoryEntry {
        token: Some(l3.token),
        worker: Some(w.clone()),
        ..entry(c.now, HistoryKind::Leased, JobState::Running, 3)
    });
    c.advance(10);
    assert_eq!(c.cancel(id).await.unwrap(), JobState::Running);
    want.push(entry(c.now, HistoryKind::CancelRequested, JobState::Running, 3));
    c.advance(10);
    assert_eq!(c.cancel(id).await.unwrap(), JobState::Running);
    c.advance(10);
    c.complete(id, l3.lease).await.unwrap();
    want.push(HistoryEntry {
        token: Some(l3.token),
        worker: Some(w.clone()),
        ..entry(c.now, HistoryKind::Completed, JobState::Completed, 3)
    });

    let job = c.get(id).await;
    assert_eq!(job.history, want);
    assert_eq!(job.version as usize, want.len(), "version counts the history entries");
    assert_eq!(job.history_dropped, 0);

    // Dead, redriven, cancelled.
    let d = c.insert_one(new_job("d", "x")).await;
    let t_enq = c.now;
    c.advance(10);
    let l = c.lease_one("d", d).await;
    let t_lease = c.now;
    c.advance(10);
    c.fail(d, l.lease, "bad", false, None).await.unwrap();
    let t_dead = c.now;
    c.advance(10);
    redrive(&c, DeadSelection::Ids(vec![d]), false).await.unwrap();
    let t_redrive = c.now;
    c.advance(10);
    c.cancel(d).await.unwrap();
    let want = vec![
        entry(t_enq, HistoryKind::Enqueued, JobState::Available, 0),
        HistoryEntry {
            token: Some(l.token),
            worker: Some(w.clone()),
            ..entry(t_lease, HistoryKind::Leased, JobState::Running, 1)
        },
        HistoryEntry {
            token: Some(l.token),
            worker: Some(w.clone()),
            error: Some("bad".into()),
            ..entry(t_dead, HistoryKind::Failed, JobState::Dead, 1)
        },
        entry(t_redrive, HistoryKind::Redriven, JobState::Available, 0),
        entry(c.now, HistoryKind::Cancelled, JobState::Cancelled, 0),
    ];
    let job = c.get(d).await;
    assert_eq!(job.history, want);
    c.restart().await;
    assert_eq!(c.get(d).await.history, want, "history survives a restart");
}

/// History is bounded: past `HISTORY_ENTRIES_MAX` entries the oldest after the first (the
/// enqueue) are dropped and counted; `version` still counts every change.
pub async fn history_bounded<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    let id = c.insert_one(NewJob { attempts_max: Some(Limits::ATTEMPTS_MAX_MAX), ..new_job("q", "x") }).await;
    let rounds = Limits::HISTORY_ENTRIES_MAX / 2 + 3;
    let mut last_token = None;
    for round in 0..rounds {
        let l = c.lease_one("q", id).await;
        last_token = Some(l.token);
        c.advance(1);
        c.fail(id, l.lease, &format!("e{round}"), true, Some(0)).await.unwrap();
    }
    // At least an enqueue, then a lease and a failure per round (a store may also record a
    // promotion per round: when a due job is promoted is its choice).
    let changes_min = 1 + 2 * rounds;
    let check = |job: &Job| {
        assert!(job.version as usize >= changes_min, "version {} counts every change", job.version);
        assert_eq!(job.history.len(), Limits::HISTORY_ENTRIES_MAX);
        assert_eq!(job.history_dropped as usize, job.version as usize - Limits::HISTORY_ENTRIES_MAX);
        assert_eq!(job.history[0].kind, HistoryKind::Enqueued, "the first entry is kept");
        let last = job.history.last().unwrap();
        let want = format!("e{}", rounds - 1);
        assert_eq!(
            (last.kind, last.token, last.error.as_deref()),
            (HistoryKind::Failed, last_token, Some(want.as_str()))
        );
        for pair in job.history[1..].windows(2) {
            assert!(pair[0].at <= pair[1].at, "the newest entries are kept, in order");
        }
    };
    check(&c.get(id).await);
    c.restart().await;
    check(&c.get(id).await);
}

/// A restart preserves every job (status, history, options), every queue's configuration and
/// counts exactly; live leases, idempotency keys and schedules keep working after it.
pub async fn restart_preserves_everything<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    let custom = QueueConfigure {
        retry: Some(RetryPolicy { attempts_max: 4, backoff: BACKOFF_1MS }),
        lease_ms: Some(7_000),
        retention_ms: Some(123_000),
        retention_dead_ms: Some(456_000),
        ..QueueConfigure::new(c.now, q("q"))
    };
    c.configure(custom).await.unwrap();
    c.configure(QueueConfigure { paused: Some(true), ..QueueConfigure::new(c.now, q("paused")) }).await.unwrap();
    c.insert_one(new_job("paused", "waits")).await;

    let rich = NewJob {
        priority: 5,
        tags: vec!["a".into(), "b".into()],
        traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
        idempotency_key: Some("rich".into()),
        ordering_key: Some("customer-7".into()),
        ..new_job("q", r#"{"rich":true}"#)
    };
    let rich_id = c.insert_one(rich.clone()).await;
    let hb = c.insert_one(new_job("q", "heartbeat")).await;
    let cancel_req = c.insert_one(new_job("q", "cancel requested")).await;
    let retrying = c.insert_one(new_job("q", "retrying")).await;
    let completed = c.insert_one(new_job("q", "completed")).await;
    c.advance(100);
    let l = c.lease(&["q"], 10).await;
    assert_eq!(ids_of(&l), vec![rich_id, hb, cancel_req, retrying, completed]);
    let (l_rich, l_hb) = (l[0].clone(), l[1].clone());
    c.advance(100);
    c.store()
        .lease_extend(LeaseExtend {
            now: c.now,
            job: hb,
            lease: l_hb.lease,
            extend_ms: Some(60_000),
            progress: Some(payload("50%")),
            checkpoint: Some(payload(r#"{"cursor":9}"#)),
        })
        .await
        .unwrap();
    c.cancel(cancel_req).await.unwrap();
    c.fail(retrying, l[3].lease, "again later", true, Some(60_000)).await.unwrap();
    c.ack_one(completed, l[4].lease, AckOutcome::Complete { result: Some(payload("result")) }).await.unwrap();
    let scheduled = c.insert_one(NewJob { delay_ms: Some(30_000), ..new_job("q", "scheduled") }).await;
    let cancelled = c.insert_one(new_job("q", "cancelled")).await;
    c.cancel(cancelled).await.unwrap();
    make_dead(&mut c, "d", &["x"], Death::NonRetryable).await;
    make_dead(&mut c, "d", &[], Death::Failed).await;
    make_dead(&mut c, "d", &[], Death::LeaseExpired).await;
    let redriven = make_dead(&mut c, "d", &[], Death::NonRetryable).await;
    redrive(&c, DeadSelection::Ids(vec![redriven]), false).await.unwrap();
    let token_max = c.get(redriven).await.history.iter().filter_map(|e| e.token).max().unwrap();

    let before_restart = c.snapshot().await;
    assert_eq!(before_restart.jobs.len(), 12);
    c.restart().await;
    let after_restart = c.snapshot().await;
    super::assert_snapshots_eq(&before_restart, &after_restart, "after restart");
    c.restart().await;
    c.assert_unchanged(&before_restart, "after a second restart").await;

    // Everything keeps working.
    c.advance(10);
    assert_eq!(c.complete(rich_id, l_rich.lease).await.unwrap().state, JobState::Completed, "a live lease survives");
    assert!(c.heartbeat(hb, l_hb.lease, None).await.is_ok());
    let dup = c.insert(vec![rich]).await;
    assert_eq!((dup[0].id, dup[0].duplicate), (rich_id, true));
    let l = c.lease(&["d"], 10).await;
    assert_eq!(ids_of(&l), vec![redriven]);
    assert!(l[0].token > token_max, "tokens keep increasing after restarts");
    c.set_now(T0.add_ms(100_000));
    let l = c.lease(&["q"], 10).await;
    assert_eq!(ids_of(&l), vec![scheduled, retrying], "due jobs line up by run time");
    assert_eq!(c.lease(&["paused"], 10).await, vec![]);
}

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

type LeaseBreaker = fn(&mut JobLease);

/// Invalid lease requests are `Error::Invalid` naming the field, and lease nothing.
pub async fn lease_validation_changes_nothing<H: Harness>(h: H) {
    let c = Ctx::open(h).await;
    let id = c.insert_one(new_job("q", "x")).await;
    let snap = c.snapshot().await;
    let cases: Vec<(&str, LeaseBreaker)> = vec![
        ("queues", |p| p.queues.clear()),
        ("queues", |p| p.queues = (0..=Limits::LEASE_QUEUES_MAX).map(|i| q(&format!("q{i}"))).collect()),
        ("count_max", |p| p.count_max = 0),
        ("count_max", |p| p.count_max = Limits::LEASE_JOBS_MAX + 1),
        ("lease_ms", |p| p.lease_ms = Some(Limits::LEASE_MS_MIN - 1)),
        ("lease_ms", |p| p.lease_ms = Some(Limits::LEASE_MS_MAX + 1)),
    ];
    for (field, breaker) in cases {
        let mut p = c.lease_params(&["q"], 10);
        breaker(&mut p);
        if field == "queues" && !p.queues.is_empty() {
            p.queues[0] = q("q");
        }
        assert_invalid(c.try_lease_with(p).await, field);
    }
    c.assert_unchanged(&snap, "after invalid leases").await;
    let l = c.lease(&["q"], Limits::LEASE_JOBS_MAX).await;
    assert_eq!((ids_of(&l), l[0].attempt), (vec![id], 1), "limits are inclusive and nothing was leased before");
}

type ExtendBreaker = fn(&mut LeaseExtend);

/// Invalid heartbeats are `Error::Invalid` naming the field, and leave the lease as it was.
pub async fn lease_extend_validation_changes_nothing<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    let id = c.insert_one(new_job("q", "x")).await;
    let l = c.lease_one("q", id).await;
    c.advance(100);
    let snap = c.snapshot().await;
    let cases: Vec<(&str, ExtendBreaker)> = vec![
        ("extend_ms", |p| p.extend_ms = Some(Limits::LEASE_MS_MIN - 1)),
        ("extend_ms", |p| p.extend_ms = Some(Limits::LEASE_MS_MAX + 1)),
        ("progress", |p| p.progress = Some(Payload::new(vec![b'p'; Limits::PROGRESS_BYTES_MAX + 1]))),
        ("checkpoint", |p| p.checkpoint = Some(Payload::new(vec![b'c'; Limits::CHECKPOINT_BYTES_MAX + 1]))),
    ];
    for (field, breaker) in cases {
        let mut p =
            LeaseExtend { now: c.now, job: id, lease: l.lease, extend_ms: None, progress: None, checkpoint: None };
        breaker(&mut p);
        assert_invalid(c.store().lease_extend(p).await, field);
    }
    c.assert_unchanged(&snap, "after invalid heartbeats").await;
    let edge = LeaseExtend {
        now: c.now,
        job: id,
        lease: l.lease,
        extend_ms: Some(Limits::LEASE_MS_MAX),
        progress: Some(Payload::new(vec![b'p'; Limits::PROGRESS_BYTES_MAX])),
        checkpoint: Some(Payload::new(vec![b'c'; Limits::CHECKPOINT_BYTES_MAX])),
    };
    assert_eq!(c.store().lease_extend(edge).await.unwrap().deadline, c.now.add_ms(Limits::LEASE_MS_MAX));
}

/// Invalid acks are `Error::Invalid` naming the item and field; none of the call's acks applies.
pub async fn ack_validation_changes_nothing<H: Harness>(h: H) {
    let c = Ctx::open(h).await;
    c.insert(vec![new_job("q", "a"), new_job("q", "b")]).await;
    let l = c.lease(&["q"], 2).await;
    let snap = c.snapshot().await;
    let complete = |i: usize| Ack { job: l[i].id, lease: l[i].lease, outcome: AckOutcome::Complete { result: None } };
    let big_result = Ack {
        outcome: AckOutcome::Complete { result: Some(Payload::new(vec![b'r'; Limits::RESULT_BYTES_MAX + 1])) },
        ..complete(1)
    };
    let long_retry = Ack {
        outcome: AckOutcome::Fail {
            error: "x".into(),
            retryable: true,
            retry_after_ms: Some(Limits::RETRY_AFTER_MS_MAX + 1),
            rate_limited: false,
        },
        ..complete(0)
    };
    let limited_final = Ack {
        outcome: AckOutcome::Fail { error: "x".into(), retryable: false, retry_after_ms: None, rate_limited: true },
        ..complete(0)
    };
    let store = c.store();
    let call = |acks: Vec<Ack>| store.job_ack(JobAck { now: c.now, acks });
    assert_invalid(call(vec![]).await, "acks");
    assert_invalid(call((0..=Limits::BATCH_JOBS_MAX).map(|_| complete(0)).collect()).await, "acks");
    assert_invalid(call(vec![complete(0), big_result]).await, "acks[1].result");
    assert_invalid(call(vec![long_retry, complete(1)]).await, "acks[0].retry_after_ms");
    assert_invalid(call(vec![complete(1), limited_final]).await, "acks[1].rate_limited");
    c.assert_unchanged(&snap, "after invalid acks").await;

    let edge = Ack {
        outcome: AckOutcome::Complete { result: Some(Payload::new(vec![b'r'; Limits::RESULT_BYTES_MAX])) },
        ..complete(0)
    };
    let results = call(vec![edge, complete(1)]).await.unwrap();
    assert!(results.iter().all(|r| matches!(r, Ok(a) if a.state == JobState::Completed)), "{results:?}");
}

/// Invalid page sizes and dead-letter selections are `Error::Invalid` naming the field, and
/// change nothing (also with `dry_run`).
pub async fn list_and_dead_validation_changes_nothing<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    make_dead(&mut c, "q", &[], Death::NonRetryable).await;
    let snap = c.snapshot().await;
    for limit in [0, Limits::PAGE_JOBS_MAX + 1] {
        let r =
            c.store().job_list(JobList { filter: JobFilter::default(), after: None, limit, newest_first: false }).await;
        assert_invalid(r, "limit");
    }
    let cases: Vec<(&str, DeadSelection)> = vec![
        ("ids", DeadSelection::Ids(vec![])),
        ("ids", DeadSelection::Ids((0..=Limits::BATCH_JOBS_MAX as u64).map(JobId).collect())),
        ("limit", DeadSelection::Filter { filter: JobFilter::default(), limit: 0 }),
        ("limit", DeadSelection::Filter { filter: JobFilter::default(), limit: Limits::BATCH_JOBS_MAX + 1 }),
    ];
    for (field, selection) in cases {
        for dry_run in [false, true] {
            assert_invalid(redrive(&c, selection.clone(), dry_run).await, field);
            assert_invalid(discard(&c, selection.clone(), dry_run).await, field);
        }
    }
    c.assert_unchanged(&snap, "after invalid requests").await;
}
