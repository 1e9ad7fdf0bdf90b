//! A queue's circuit breaker across nodes: two stores on one database share one breaker, so the
//! failures reported to either count together, and the probes of a half-open breaker are counted
//! across both, also when they lease at the same moment.

mod common;

use dray_core::{BreakerPolicy, BreakerState, LeaseId, NewJob, Payload, QueueName, Timestamp, WorkerId};
use dray_store::{Ack, AckOutcome, JobAck, JobInsert, JobLease, LeasedJob, QueueConfigure, Store};
use dray_store_postgres::PostgresStore;

use common::TestDb;

const T0: Timestamp = Timestamp(1_700_000_000_000);
const POLICY: BreakerPolicy =
    BreakerPolicy { failure_ratio: 0.5, window_ms: 60_000, min_attempts: 4, open_ms: 10_000, probes: 2 };

fn q() -> QueueName {
    QueueName::new("pay").unwrap()
}

async fn lease(store: &PostgresStore, now: Timestamp, worker: &str, count_max: usize) -> Vec<LeasedJob> {
    let p = JobLease { now, queues: vec![q()], count_max, worker: WorkerId::new(worker).unwrap(), lease_ms: None };
    store.job_lease(p).await.unwrap()
}

async fn ack(store: &PostgresStore, now: Timestamp, leased: &[LeasedJob], fail: bool) {
    if leased.is_empty() {
        return;
    }
    let outcome = || match fail {
        true => AckOutcome::Fail {
            error: "gateway down".into(),
            retryable: true,
            retry_after_ms: None,
            rate_limited: false,
        },
        false => AckOutcome::Complete { result: None },
    };
    let acks: Vec<Ack> =
        leased.iter().map(|l| Ack { job: l.id, lease: LeaseId(l.lease.0), outcome: outcome() }).collect();
    for r in store.job_ack(JobAck { now, acks }).await.unwrap() {
        r.unwrap();
    }
}

async fn state(store: &PostgresStore) -> BreakerState {
    store.queue_stats(&q()).await.unwrap().breaker.expect("a breaker").state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_on_two_nodes_open_one_breaker_and_probes_count_across_nodes() {
    let db = TestDb::create().await;
    let a = PostgresStore::connect(db.config()).await.unwrap();
    let b = PostgresStore::connect(db.config()).await.unwrap();
    let configure = QueueConfigure { breaker: Some(Some(POLICY)), ..QueueConfigure::new(T0, q()) };
    a.queue_configure(configure).await.unwrap();
    let jobs = (0..10).map(|i| NewJob::new(q(), Payload::new(format!("{i}").into_bytes()))).collect();
    a.job_insert(JobInsert { now: T0, jobs }).await.unwrap();

    // Two failures through each node: neither node alone reaches min_attempts.
    let on_a = lease(&a, T0, "wa", 2).await;
    let on_b = lease(&b, T0, "wb", 2).await;
    ack(&a, T0.add_ms(1), &on_a, true).await;
    assert_eq!(state(&b).await, BreakerState::Closed);
    ack(&b, T0.add_ms(2), &on_b, true).await;
    assert_eq!(state(&a).await, BreakerState::Open, "four failures from two nodes open it");
    assert!(lease(&a, T0.add_ms(3), "wa", 10).await.is_empty());
    assert!(lease(&b, T0.add_ms(3), "wb", 10).await.is_empty());

    // Half-open: both nodes ask at once for many; two probes in all.
    let t = T0.add_ms(2 + POLICY.open_ms);
    let (pa, pb) = tokio::join!(lease(&a, t, "wa", 10), lease(&b, t, "wb", 10));
    assert_eq!(pa.len() + pb.len(), 2, "probes across nodes: {} on a, {} on b", pa.len(), pb.len());
    assert_eq!(state(&b).await, BreakerState::HalfOpen);
    assert!(lease(&a, t, "wa", 10).await.is_empty());
    ack(&a, t.add_ms(1), &pa, false).await;
    ack(&b, t.add_ms(1), &pb, false).await;
    assert_eq!(state(&a).await, BreakerState::Closed, "both probes succeeded");
    assert_eq!(lease(&b, t.add_ms(2), "wb", 100).await.len(), 8);
}
