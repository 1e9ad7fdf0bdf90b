//! Flow limits, decided by the store at lease time: a queue's `concurrency_max`, its
//! `group_concurrency_max` per `group_key`, token-bucket rates for the queue and per group, and
//! fair turns across groups. A job held back by a limit stays available with no attempt charged.

use dray_core::{JobId, JobState, Limits, NewJob, Rate};

use super::{BACKOFF_1MS, Ctx, Harness, assert_invalid, ids_of, new_job};
use crate::{FlowLimits, FlowLimitsChange, QueueConfigure, Store};

fn grouped(queue: &str, group: &str, body: &str) -> NewJob {
    NewJob { group_key: Some(group.into()), ..new_job(queue, body) }
}

async fn set_limits<H: Harness>(c: &Ctx<H>, queue: &str, change: FlowLimitsChange) -> FlowLimits {
    let p = QueueConfigure { limits: change, ..QueueConfigure::new(c.now, super::q(queue)) };
    let config = c.configure(p).await.unwrap();
    assert_eq!(c.stats(queue).await.config.limits, config.limits, "the queue reads back what was set");
    config.limits
}

async fn lease_ids<H: Harness>(c: &Ctx<H>, queue: &str, count: usize) -> Vec<JobId> {
    ids_of(&c.lease(&[queue], count).await)
}

/// Every held-back job is still available and has been charged no attempt.
async fn assert_waiting_uncharged<H: Harness>(c: &Ctx<H>, ids: &[JobId]) {
    for id in ids {
        let job = c.get(*id).await;
        assert_eq!(job.state(), JobState::Available, "job {id} held back by a limit stays available");
        assert_eq!(job.status.attempt, 0, "job {id} held back by a limit is charged no attempt");
    }
}

/// `concurrency_max` bounds the queue's running jobs; completion, failure and lease expiry each
/// give the permit back.
pub async fn limits_queue_concurrency_max<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    set_limits(&c, "q", FlowLimitsChange { concurrency_max: Some(Some(2)), ..Default::default() }).await;
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(c.insert_one(NewJob { backoff: Some(BACKOFF_1MS), ..new_job("q", &i.to_string()) }).await);
    }
    let first = c.lease(&["q"], 10).await;
    assert_eq!(ids_of(&first), ids[..2].to_vec(), "two run at once, in lease order");
    assert_eq!(lease_ids(&c, "q", 10).await, Vec::<JobId>::new(), "the queue is at its limit");
    assert_waiting_uncharged(&c, &ids[2..]).await;

    c.complete(first[0].id, first[0].lease).await.unwrap();
    assert_eq!(lease_ids(&c, "q", 10).await, vec![ids[2]], "a completion gives one permit back");
    c.fail(first[1].id, first[1].lease, "boom", true, None).await.unwrap();
    c.advance(2);
    let after_fail = lease_ids(&c, "q", 10).await;
    assert_eq!(after_fail.len(), 1, "a failure gives one permit back");

    // A vanished worker: its leases expire and the permits come back.
    c.advance(Limits::LEASE_MS_DEFAULT + 1);
    assert_eq!(c.expire().await, 2);
    c.advance(2);
    assert_eq!(c.lease(&["q"], 10).await.len(), 2, "lease expiry gives the permits back");

    // Lifting the limit lets everything run.
    set_limits(&c, "q", FlowLimitsChange { concurrency_max: Some(None), ..Default::default() }).await;
    assert!(!c.lease(&["q"], 10).await.is_empty(), "without a limit the rest runs");
    assert_eq!(c.stats("q").await.count(JobState::Available), 0);
}

/// `group_concurrency_max` bounds each group's running jobs; other groups and jobs without a
/// group are not held back, and every way out of `running` gives the permit back.
pub async fn limits_group_concurrency_max<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    set_limits(&c, "q", FlowLimitsChange { group_concurrency_max: Some(Some(1)), ..Default::default() }).await;
    let a1 = c.insert_one(grouped("q", "a", "a1")).await;
    let a2 = c.insert_one(grouped("q", "a", "a2")).await;
    let a3 = c.insert_one(NewJob { backoff: Some(BACKOFF_1MS), ..grouped("q", "a", "a3") }).await;
    let b1 = c.insert_one(grouped("q", "b", "b1")).await;
    let plain = c.insert_one(new_job("q", "plain")).await;
    let plain2 = c.insert_one(new_job("q", "plain2")).await;

    let leased = c.lease(&["q"], 10).await;
    let mut got = ids_of(&leased);
    got.sort();
    assert_eq!(got, vec![a1, b1, plain, plain2], "one job per group; ungrouped jobs are not limited");
    assert_waiting_uncharged(&c, &[a2, a3]).await;
    assert_eq!(lease_ids(&c, "q", 10).await, Vec::<JobId>::new());

    let l_a1 = leased.iter().find(|l| l.id == a1).unwrap();
    c.complete(a1, l_a1.lease).await.unwrap();
    let l_a2 = c.lease_one("q", a2).await;
    c.fail(a2, l_a2.lease, "boom", false, None).await.unwrap();
    assert_eq!(c.get(a2).await.state(), JobState::Dead);
    let l_a3 = c.lease_one("q", a3).await;

    // A vanished worker holding the group's permit: expiry frees it, and the retry runs.
    c.advance(Limits::LEASE_MS_DEFAULT + 1);
    c.expire().await;
    assert_eq!(c.get(a3).await.state(), JobState::Retrying);
    c.lease_when_due("q", a3, 10).await;
    drop(l_a3);
}

/// Leases take turns across groups: a group with many waiting jobs cannot starve one with a
/// few, within one lease call and across calls. Jobs without a group take their turn as one
/// more group.
pub async fn limits_fair_turns_across_groups<H: Harness>(h: H) {
    let c = Ctx::open(h).await;
    let mut big = Vec::new();
    for i in 0..40 {
        big.push(c.insert_one(grouped("q", "big", &format!("big{i}"))).await);
    }
    let small: Vec<JobId> =
        vec![c.insert_one(grouped("q", "small", "s1")).await, c.insert_one(grouped("q", "small", "s2")).await];

    let four = lease_ids(&c, "q", 4).await;
    assert_eq!(four.len(), 4);
    assert_eq!(
        four.iter().filter(|id| small.contains(id)).count(),
        2,
        "a lease of 4 over two groups takes turns: {four:?} (small = {small:?})"
    );
    let small_first: Vec<JobId> = four.iter().copied().filter(|id| small.contains(id)).collect();
    assert_eq!(small_first, small, "within a group, jobs keep their lease order");

    // Across single leases, a newly arrived small group's job waits at most one turn.
    let s3 = c.insert_one(grouped("q", "small", "s3")).await;
    let next: Vec<JobId> = [lease_ids(&c, "q", 1).await, lease_ids(&c, "q", 1).await].concat();
    assert!(next.contains(&s3), "the small group's new job runs within two single leases: {next:?}");
}

/// A queue's `rate` is a token bucket on the store's clock: a burst, then the steady rate; held
/// back jobs stay available and uncharged.
pub async fn limits_queue_rate<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    let rate = Rate { limit: 2, per_ms: 1_000, burst: 2 };
    set_limits(&c, "q", FlowLimitsChange { rate: Some(Some(rate)), ..Default::default() }).await;
    let mut ids = Vec::new();
    for i in 0..8 {
        ids.push(c.insert_one(new_job("q", &i.to_string())).await);
    }
    assert_eq!(lease_ids(&c, "q", 10).await, ids[..2].to_vec(), "the burst");
    c.advance(100);
    assert_eq!(lease_ids(&c, "q", 10).await, Vec::<JobId>::new(), "the bucket is empty");
    assert_waiting_uncharged(&c, &ids[2..]).await;
    c.advance(400);
    assert_eq!(lease_ids(&c, "q", 10).await, vec![ids[2]], "one token every 500 ms");
    c.advance(499);
    assert_eq!(lease_ids(&c, "q", 10).await, Vec::<JobId>::new());
    c.advance(1);
    assert_eq!(lease_ids(&c, "q", 10).await, vec![ids[3]]);
    // A quiet spell refills the bucket to its burst, no further.
    c.advance(60_000);
    assert_eq!(lease_ids(&c, "q", 10).await, ids[4..6].to_vec());
}

/// `group_rate` gives each group its own bucket: one group's flood does not spend another's.
pub async fn limits_group_rate<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    let rate = Rate { limit: 1, per_ms: 1_000, burst: 1 };
    set_limits(&c, "q", FlowLimitsChange { group_rate: Some(Some(rate)), ..Default::default() }).await;
    let mut a = Vec::new();
    let mut b = Vec::new();
    for i in 0..3 {
        a.push(c.insert_one(grouped("q", "a", &format!("a{i}"))).await);
        b.push(c.insert_one(grouped("q", "b", &format!("b{i}"))).await);
    }
    let plain = c.insert_one(new_job("q", "plain")).await;
    let mut first = lease_ids(&c, "q", 10).await;
    first.sort();
    assert_eq!(first, vec![a[0], b[0], plain], "one per group bucket; ungrouped jobs have no group rate");
    c.advance(999);
    assert_eq!(lease_ids(&c, "q", 10).await, Vec::<JobId>::new());
    assert_waiting_uncharged(&c, &[a[1], b[1]]).await;
    c.advance(1);
    let mut second = lease_ids(&c, "q", 10).await;
    second.sort();
    assert_eq!(second, vec![a[1], b[1]]);
}

/// Limits are queue options: set, read back, cleared with `null`, validated with the field and
/// the limit named, and kept across a restart together with the running jobs they count.
pub async fn limits_configure_validate_and_restart<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    let rate = Rate { limit: 5, per_ms: 60_000, burst: 10 };
    let all = FlowLimitsChange {
        concurrency_max: Some(Some(3)),
        group_concurrency_max: Some(Some(1)),
        rate: Some(Some(rate)),
        group_rate: Some(Some(Rate { limit: 1, per_ms: 1_000, burst: 1 })),
    };
    let limits = set_limits(&c, "q", all).await;
    assert_eq!(limits.concurrency_max, Some(3));
    assert_eq!(limits.rate, Some(rate));
    // Other options leave the limits alone.
    let p = QueueConfigure { lease_ms: Some(10_000), ..QueueConfigure::new(c.now, super::q("q")) };
    assert_eq!(c.configure(p).await.unwrap().limits, limits);

    for (change, field) in [
        (FlowLimitsChange { concurrency_max: Some(Some(0)), ..Default::default() }, "concurrency_max"),
        (
            FlowLimitsChange {
                group_concurrency_max: Some(Some(Limits::CONCURRENCY_MAX_MAX + 1)),
                ..Default::default()
            },
            "group_concurrency_max",
        ),
        (
            FlowLimitsChange { rate: Some(Some(Rate { limit: 0, per_ms: 1, burst: 1 })), ..Default::default() },
            "rate.limit",
        ),
        (
            FlowLimitsChange {
                group_rate: Some(Some(Rate { limit: 1, per_ms: Limits::RATE_PER_MS_MAX + 1, burst: 1 })),
                ..Default::default()
            },
            "group_rate.per_ms",
        ),
    ] {
        let p = QueueConfigure { limits: change, ..QueueConfigure::new(c.now, super::q("q")) };
        assert_invalid(c.store().queue_configure(p).await, field);
        assert_eq!(c.stats("q").await.config.limits, limits, "a refused change changes nothing");
    }

    // The running jobs a limit counts are recounted after a restart.
    set_limits(&c, "q", FlowLimitsChange { concurrency_max: Some(Some(1)), rate: Some(None), ..Default::default() })
        .await;
    let j1 = c.insert_one(grouped("q", "g", "1")).await;
    let j2 = c.insert_one(grouped("q", "h", "2")).await;
    c.lease_one("q", j1).await;
    c.restart().await;
    let limits = c.stats("q").await.config.limits;
    assert_eq!(limits.concurrency_max, Some(1));
    assert_eq!(limits.rate, None);
    assert_eq!(lease_ids(&c, "q", 10).await, Vec::<JobId>::new(), "the running job still holds the permit");
    c.advance(Limits::LEASE_MS_DEFAULT + 1);
    c.expire().await;
    c.advance(60_000);
    let got = lease_ids(&c, "q", 10).await;
    assert_eq!(got.len(), 1, "one runs again: {got:?}");
    assert!(got == vec![j1] || got == vec![j2]);

    // Clearing every limit.
    let none = FlowLimitsChange {
        concurrency_max: Some(None),
        group_concurrency_max: Some(None),
        rate: Some(None),
        group_rate: Some(None),
    };
    assert!(set_limits(&c, "q", none).await.is_unlimited());
}

/// Limits compose with ordering keys: a key still runs one job at a time inside its group, and a
/// group at its limit holds back its keyed jobs too.
pub async fn limits_with_ordering_keys<H: Harness>(h: H) {
    let c = Ctx::open(h).await;
    set_limits(&c, "q", FlowLimitsChange { group_concurrency_max: Some(Some(2)), ..Default::default() }).await;
    let keyed = |key: &str, group: &str, body: &str| NewJob {
        ordering_key: Some(key.into()),
        group_key: Some(group.into()),
        ..new_job("q", body)
    };
    let k1 = c.insert_one(keyed("k", "g", "k1")).await;
    let k2 = c.insert_one(keyed("k", "g", "k2")).await;
    let m1 = c.insert_one(keyed("m", "g", "m1")).await;
    let n1 = c.insert_one(keyed("n", "g", "n1")).await;
    let leased = c.lease(&["q"], 10).await;
    let mut got = ids_of(&leased);
    got.sort();
    assert_eq!(got, vec![k1, m1], "k2 waits for k1; n1 waits for the group's permit");
    assert_waiting_uncharged(&c, &[k2, n1]).await;
    let l_k1 = leased.iter().find(|l| l.id == k1).unwrap();
    c.complete(k1, l_k1.lease).await.unwrap();
    let next = lease_ids(&c, "q", 10).await;
    assert_eq!(next.len(), 1);
    assert!(next == vec![k2] || next == vec![n1], "{next:?}");
}

/// A held-back job says why: the store reports the first reason its lease would give.
pub async fn limits_waiting_reasons<H: Harness>(h: H) {
    use crate::Waiting;
    let mut c = Ctx::open(h).await;
    let why = async |c: &Ctx<H>, id: JobId| c.store().job_waiting(id, c.now).await.unwrap();

    // Ordering key: the later job waits behind the earlier one.
    let k1 = c.insert_one(NewJob { ordering_key: Some("k".into()), ..new_job("o", "k1") }).await;
    let k2 = c.insert_one(NewJob { ordering_key: Some("k".into()), ..new_job("o", "k2") }).await;
    assert_eq!(why(&c, k1).await, None, "the key's head only waits its turn");
    assert_eq!(why(&c, k2).await, Some(Waiting::OrderingKey { key: "k".into(), behind: k1 }));
    let l1 = c.lease_one("o", k1).await;
    assert_eq!(why(&c, k1).await, None, "a running job is not waiting");
    assert_eq!(why(&c, k2).await, Some(Waiting::OrderingKey { key: "k".into(), behind: k1 }));
    c.complete(k1, l1.lease).await.unwrap();
    assert_eq!(why(&c, k2).await, None);

    // Concurrency, then group concurrency.
    set_limits(
        &c,
        "q",
        FlowLimitsChange { concurrency_max: Some(Some(2)), group_concurrency_max: Some(Some(1)), ..Default::default() },
    )
    .await;
    let g1 = c.insert_one(grouped("q", "g", "g1")).await;
    let g2 = c.insert_one(grouped("q", "g", "g2")).await;
    c.lease_one("q", g1).await;
    assert_eq!(why(&c, g2).await, Some(Waiting::GroupConcurrency { group: "g".into(), running: 1, max: 1 }));
    let p1 = c.insert_one(new_job("q", "p1")).await;
    let p2 = c.insert_one(new_job("q", "p2")).await;
    c.lease_one("q", p1).await;
    assert_eq!(why(&c, p2).await, Some(Waiting::Concurrency { running: 2, max: 2 }));

    // Rates.
    let rate = Rate { limit: 1, per_ms: 1_000, burst: 1 };
    set_limits(&c, "r", FlowLimitsChange { rate: Some(Some(rate)), ..Default::default() }).await;
    let r1 = c.insert_one(new_job("r", "r1")).await;
    let r2 = c.insert_one(new_job("r", "r2")).await;
    c.lease_one("r", r1).await;
    assert_eq!(why(&c, r2).await, Some(Waiting::Rate { until: c.now.add_ms(1_000) }));
    c.advance(1_000);
    assert_eq!(why(&c, r2).await, None);

    set_limits(&c, "gr", FlowLimitsChange { group_rate: Some(Some(rate)), ..Default::default() }).await;
    let a1 = c.insert_one(grouped("gr", "a", "a1")).await;
    let a2 = c.insert_one(grouped("gr", "a", "a2")).await;
    c.lease_one("gr", a1).await;
    assert_eq!(why(&c, a2).await, Some(Waiting::GroupRate { group: "a".into(), until: c.now.add_ms(1_000) }));

    // A breaker forced open holds the queue's jobs until an operator closes it.
    let policy =
        dray_core::BreakerPolicy { failure_ratio: 0.5, window_ms: 60_000, min_attempts: 5, open_ms: 30_000, probes: 1 };
    let p = QueueConfigure { breaker: Some(Some(policy)), ..QueueConfigure::new(c.now, super::q("b")) };
    c.configure(p).await.unwrap();
    let b1 = c.insert_one(new_job("b", "b1")).await;
    assert_eq!(why(&c, b1).await, None);
    let force = crate::BreakerForce { now: c.now, queue: super::q("b"), open: true };
    c.store().breaker_force(force).await.unwrap();
    assert_eq!(why(&c, b1).await, Some(Waiting::Breaker { half_open: false, until: None }));
    assert_eq!(lease_ids(&c, "b", 1).await, Vec::<JobId>::new());

    // A paused queue says so first.
    let p = QueueConfigure { paused: Some(true), ..QueueConfigure::new(c.now, super::q("gr")) };
    c.configure(p).await.unwrap();
    assert_eq!(why(&c, a2).await, Some(Waiting::Paused));
    assert_eq!(why(&c, JobId(999_999)).await, None, "an unknown job waits for nothing");
}

/// A worker reporting a downstream rate limit (`rate_limited` on a failure) hands its attempt
/// back and stops the whole queue until the job's retry: no job of the queue is leased before
/// then, other queues are not held, the attempt budget is not spent (a job on its last attempt
/// is retried, not dead-lettered), and the back-off survives a restart.
pub async fn limits_rate_limited_failure_backs_off_the_queue<H: Harness>(h: H) {
    use crate::{AckOutcome, Waiting};
    let mut c = Ctx::open(h).await;
    let limited = |retry_after_ms| AckOutcome::Fail {
        error: "429 from the gateway".into(),
        retryable: true,
        retry_after_ms,
        rate_limited: true,
    };
    let last = c.insert_one(NewJob { attempts_max: Some(1), ..new_job("q", "last") }).await;
    let b = c.insert_one(new_job("q", "b")).await;
    let waiting = c.insert_one(new_job("q", "c")).await;
    let other = c.insert_one(new_job("other", "o")).await;
    let leased = c.lease(&["q"], 2).await;
    assert_eq!(ids_of(&leased), vec![last, b]);

    let acked = c.ack_one(last, leased[0].lease, limited(Some(5_000))).await.unwrap();
    let until = c.now.add_ms(5_000);
    assert_eq!((acked.state, acked.retry_at), (JobState::Retrying, Some(until)), "retried, not dead-lettered");
    let job = c.get(last).await;
    assert_eq!(job.status.attempt, 0, "the attempt is handed back");
    assert_eq!(job.status.last_error.as_deref(), Some("429 from the gateway"));
    assert_eq!(c.stats("q").await.backoff_until, Some(until));
    assert_eq!(c.store().job_waiting(waiting, c.now).await.unwrap(), Some(Waiting::QueueBackoff { until }));

    assert_eq!(lease_ids(&c, "q", 10).await, Vec::<JobId>::new(), "the queue backs off as a whole");
    assert_waiting_uncharged(&c, &[waiting]).await;
    assert_eq!(lease_ids(&c, "other", 10).await, vec![other], "other queues are not held back");
    c.complete(b, leased[1].lease).await.unwrap();

    c.restart().await;
    assert_eq!(c.stats("q").await.backoff_until, Some(until), "the back-off survives a restart");
    c.advance(4_999);
    assert_eq!(lease_ids(&c, "q", 10).await, Vec::<JobId>::new(), "still backing off");
    c.advance(1);
    assert_eq!(c.store().job_waiting(waiting, c.now).await.unwrap(), None);
    let again = c.lease(&["q"], 10).await;
    let mut got = ids_of(&again);
    got.sort();
    assert_eq!(got, vec![last, waiting], "the back-off ends with the reporting job's retry");
    let relisted = again.iter().find(|l| l.id == last).unwrap();
    assert_eq!(relisted.attempt, 1, "the handed-back attempt is its first again");

    // Without `retry_after_ms` the job's own backoff sets the pause; an earlier report never
    // shortens a later one.
    let fast = c.insert_one(NewJob { backoff: Some(BACKOFF_1MS), ..new_job("q", "fast") }).await;
    let lf = c.lease_one("q", fast).await;
    let acked = c.ack_one(fast, lf.lease, limited(None)).await.unwrap();
    let retry_at = acked.retry_at.expect("retried");
    assert!(retry_at <= c.now.add_ms(1), "the job's backoff (0-1 ms) sets the pause: {retry_at}");
    assert_eq!(c.stats("q").await.backoff_until, Some(retry_at));
    let w = c.get(waiting).await;
    assert_eq!(w.state(), JobState::Running);
    // Two reports in one batch: the later end wins, whatever their order.
    let lw = again.iter().find(|l| l.id == waiting).unwrap();
    let l_last = again.iter().find(|l| l.id == last).unwrap();
    let acks = vec![
        crate::Ack { job: last, lease: l_last.lease, outcome: limited(Some(10)) },
        crate::Ack { job: waiting, lease: lw.lease, outcome: limited(Some(60_000)) },
        crate::Ack { job: fast, lease: lf.lease, outcome: limited(Some(20)) },
    ];
    let results = c.ack(acks).await;
    assert!(results[..2].iter().all(|r| r.as_ref().is_ok_and(|a| a.state == JobState::Retrying)), "{results:?}");
    assert!(results[2].is_err(), "fast's lease ended with its first report: {results:?}");
    assert_eq!(c.stats("q").await.backoff_until, Some(c.now.add_ms(60_000)), "the later end wins");
}
