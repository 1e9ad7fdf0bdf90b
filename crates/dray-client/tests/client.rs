//! The producer and admin side of the SDK against an in-process server: typed enqueue, lookups,
//! batches, idempotency, errors, queue administration, and the raw worker calls.

mod common;

use std::time::Duration;

use common::server;
use dray_client::api::{CompleteRequest, DeadAction, HeartbeatRequest, JobQuery, LeaseRequest, QueueConfigure, State};
use dray_client::{Client, Enqueue, Error};
use serde::{Deserialize, Serialize};

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Receipt {
    order: u64,
    to: String,
}

const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

#[tokio::test]
async fn typed_enqueue_then_lookup() {
    let server = server().await;
    let c = &server.client;
    let receipt = Receipt { order: 42, to: "a@example.com".into() };
    let job = Enqueue::new("emails", &receipt)
        .unwrap()
        .priority(5)
        .delay(Duration::from_secs(3600))
        .idempotency_key("receipt-42")
        .attempts_max(3)
        .tags(["receipts", "eu"])
        .traceparent(TRACEPARENT);
    let enqueued = c.enqueue(job).await.unwrap();
    assert_eq!(enqueued.state, State::Scheduled, "a delayed job waits");
    assert!(!enqueued.duplicate);

    let found = c.job(enqueued.id).await.unwrap();
    assert_eq!(found.queue, "emails");
    assert_eq!(serde_json::from_str::<Receipt>(found.payload.get()).unwrap(), receipt);
    assert_eq!(found.priority, 5);
    assert_eq!(found.attempts_max, 3);
    assert_eq!(found.tags, ["receipts", "eu"]);
    assert_eq!(found.idempotency_key.as_deref(), Some("receipt-42"));
    assert_eq!(found.traceparent.as_deref(), Some(TRACEPARENT));

    // The same key and payload again: the original job (what a retry after a transport error gets).
    let again = c.enqueue(Enqueue::new("emails", &receipt).unwrap().idempotency_key("receipt-42")).await.unwrap();
    assert_eq!((again.id, again.duplicate), (enqueued.id, true));
    // The same key with another payload: refused.
    let other = Receipt { order: 43, ..receipt };
    let err = c.enqueue(Enqueue::new("emails", &other).unwrap().idempotency_key("receipt-42")).await.unwrap_err();
    assert!(err.is_conflict(), "{err}");
    assert!(!err.is_outcome_unknown());

    let page =
        c.jobs(JobQuery { queue: Some("emails".into()), tag: Some("eu".into()), ..Default::default() }).await.unwrap();
    assert_eq!(page.jobs.iter().map(|j| j.id).collect::<Vec<_>>(), [enqueued.id]);

    let err = c.job(999_999).await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert!(err.problem().is_some());
    server.stop().await;
}

#[tokio::test]
async fn batch_enqueue_is_all_or_nothing() {
    let server = server().await;
    let c = &server.client;
    let jobs = (0..3).map(|i| Enqueue::new("batch", &serde_json::json!({ "i": i })).unwrap()).collect();
    let batch = c.enqueue_batch(jobs).await.unwrap();
    assert_eq!(batch.jobs.len(), 3);
    assert!(batch.jobs.iter().all(|j| j.state == State::Available));
    let ids: Vec<u64> = batch.jobs.iter().map(|j| j.id).collect();
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(c.job(*id).await.unwrap().payload.get(), format!(r#"{{"i":{i}}}"#));
    }

    // One bad job refuses the whole batch, naming it.
    let bad = vec![Enqueue::new("batch", &1).unwrap(), Enqueue::new("no spaces allowed", &2).unwrap()];
    let err = c.enqueue_batch(bad).await.unwrap_err();
    let problem = err.problem().unwrap_or_else(|| panic!("{err}"));
    assert_eq!(problem.field.as_deref(), Some("jobs[1].queue"), "{err}");
    let page = c.jobs(JobQuery { queue: Some("batch".into()), ..Default::default() }).await.unwrap();
    assert_eq!(page.jobs.len(), 3, "nothing of the refused batch was enqueued");
    server.stop().await;
}

#[tokio::test]
async fn queue_administration_and_cancel() {
    let server = server().await;
    let c = &server.client;
    let q = c.queue_configure("reports", QueueConfigure { attempts_max: Some(7), ..Default::default() }).await.unwrap();
    assert_eq!((q.name.as_str(), q.attempts_max), ("reports", 7));
    assert!(c.queue_pause("reports").await.unwrap().paused);
    let id = c.enqueue(Enqueue::new("reports", &"weekly").unwrap()).await.unwrap().id;
    assert_eq!(c.job(id).await.unwrap().attempts_max, 7, "the queue's default");
    assert!(!c.queue_resume("reports").await.unwrap().paused);
    assert_eq!(c.queue("reports").await.unwrap().counts.available, 1);
    assert!(c.queues().await.unwrap().queues.iter().any(|q| q.name == "reports"));

    assert_eq!(c.cancel(id).await.unwrap().state, State::Cancelled, "a waiting job is cancelled at once");
    assert_eq!(c.job(id).await.unwrap().state, State::Cancelled);

    let err = c.queue("..").await.unwrap_err();
    assert!(matches!(err, Error::Invalid { .. }), "{err}");
    server.stop().await;
}

#[tokio::test]
async fn raw_worker_calls_and_a_stale_ack() {
    let server = server().await;
    let c = &server.client;
    let id = c.enqueue(Enqueue::new("raw", &"x").unwrap()).await.unwrap().id;
    let lease = LeaseRequest {
        queues: vec!["raw".into()],
        worker: "raw-worker".into(),
        count: Some(10),
        lease_ms: None,
        wait_ms: Some(1_000),
    };
    let leased = c.lease(lease).await.unwrap().jobs;
    assert_eq!(leased.len(), 1);
    let job = &leased[0];
    assert_eq!((job.id, job.attempt), (id, 1));

    let beat = HeartbeatRequest {
        lease_id: job.lease_id.clone(),
        extend_ms: Some(60_000),
        progress: Some(serde_json::value::to_raw_value(&50).unwrap()),
        checkpoint: None,
    };
    let beat = c.heartbeat(id, beat).await.unwrap();
    assert!(!beat.cancel_requested);
    assert!(beat.lease_ms > 30_000, "extended by extend_ms: {beat:?}");

    let complete = CompleteRequest { lease_id: job.lease_id.clone(), result: None };
    assert_eq!(c.complete(id, complete.clone()).await.unwrap().state, State::Completed);
    // Completing again (a retry whose first try was applied): a clear 409 that changes nothing.
    let err = c.complete(id, complete).await.unwrap_err();
    assert!(err.is_conflict(), "{err}");
    assert_eq!(c.job(id).await.unwrap().state, State::Completed);

    // Dead-letter calls with nothing dead.
    let page = c.dead(JobQuery::default()).await.unwrap();
    assert!(page.jobs.is_empty());
    let dry =
        c.dead_redrive(DeadAction { queue: Some("raw".into()), dry_run: true, ..Default::default() }).await.unwrap();
    assert_eq!((dry.count, dry.dry_run), (0, true));
    server.stop().await;
}

#[tokio::test]
async fn no_server_is_a_transport_error_with_unknown_outcome() {
    // Bind then drop a listener: a port with (almost surely) nobody behind it.
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let c = Client::builder(format!("http://{addr}")).connect_timeout(Duration::from_secs(1)).build().unwrap();
    let err = c.enqueue(Enqueue::new("q", &1).unwrap()).await.unwrap_err();
    match &err {
        Error::Transport { context, source } => {
            assert_eq!(context, "POST /v1/jobs");
            assert!(source.is_connect(), "{source}");
        }
        other => panic!("{other:?}"),
    }
    assert!(err.is_outcome_unknown() && err.is_retryable());
    assert!(err.to_string().contains("same idempotency key"), "{err}");
}

/// The builder's token goes on every request (and so on every worker built on the client); a
/// client without one is refused by a server that requires tokens.
#[tokio::test]
async fn the_builder_token_authenticates_every_request() {
    let dir = tempfile::tempdir().unwrap();
    let admin = "sdk-test-admin-token-0123456789";
    let config = dray_server::Config::for_test(dir.path()).with_admin_token(admin);
    let running = dray_server::start(config).await.unwrap();
    let url = format!("http://{}", running.addr);

    let anonymous = Client::new(&url).unwrap();
    match anonymous.queues().await {
        Err(Error::Api { status: 401, problem }) => assert_eq!(problem.kind, "urn:dray:problem:unauthorized"),
        other => panic!("expected 401, got {other:?}"),
    }
    let admin_client = Client::builder(&url).token(admin).build().unwrap();
    assert!(!format!("{:?}", Client::builder(&url).token(admin)).contains(admin), "the token never shows in Debug");
    let created = admin_client
        .token_create(dray_client::api::TokenCreate {
            name: "producer".into(),
            scopes: vec!["enqueue:emails".into()],
            expires_at: None,
        })
        .await
        .unwrap();
    let producer = Client::builder(&url).token(created.token).build().unwrap();
    producer.enqueue(Enqueue::new("emails", &1).unwrap()).await.unwrap();
    match producer.enqueue(Enqueue::new("payments", &1).unwrap()).await {
        Err(Error::Api { status: 403, problem }) => assert!(problem.detail.contains("\"payments\""), "{problem:?}"),
        other => panic!("expected 403, got {other:?}"),
    }
    assert_eq!(admin_client.tokens().await.unwrap().tokens.len(), 1);
    let revoked = admin_client.token_revoke(&created.id).await.unwrap();
    assert!(revoked.revoked);
    match producer.enqueue(Enqueue::new("emails", &2).unwrap()).await {
        Err(Error::Api { status: 401, .. }) => {}
        other => panic!("expected 401 after revocation, got {other:?}"),
    }
    running.shutdown().await.unwrap();
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Resize {
    image: String,
    width: u32,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Thumbnail {
    url: String,
}

/// `enqueue_and_wait` returns the finished job: completed with a result the caller decodes, or
/// dead with its error; an idempotency key that matches waits on the original job.
#[tokio::test]
async fn enqueue_and_wait_returns_the_finished_job_with_its_typed_result() {
    let server = server().await;
    let c = &server.client;
    let worker = server
        .worker()
        .queue("thumbnails", |ctx: dray_client::JobContext| async move {
            let resize: Resize = ctx.payload().map_err(dray_client::JobError::fatal)?;
            if resize.width == 0 {
                return Err(dray_client::JobError::fatal("width 0"));
            }
            Ok(Some(serde_json::json!({"url": format!("https://cdn/{}-{}", resize.image, resize.width)})))
        })
        .build()
        .unwrap();
    let worker = common::spawn(worker);

    let job = Enqueue::new("thumbnails", &Resize { image: "cat".into(), width: 200 })
        .unwrap()
        .idempotency_key("thumb-cat-200");
    let done = common::within(c.enqueue_and_wait(job.clone(), Duration::from_secs(30))).await.unwrap();
    assert_eq!(done.state, State::Completed);
    assert_eq!(done.result_as::<Thumbnail>().unwrap(), Some(Thumbnail { url: "https://cdn/cat-200".into() }));
    // Again with the same key: the same job, already finished, answered at once.
    let again = common::within(c.enqueue_and_wait(job, Duration::from_secs(30))).await.unwrap();
    assert_eq!((again.id, again.state), (done.id, State::Completed));

    let bad = Enqueue::new("thumbnails", &Resize { image: "dog".into(), width: 0 }).unwrap();
    let dead = common::within(c.enqueue_and_wait(bad, Duration::from_secs(30))).await.unwrap();
    assert_eq!((dead.state, dead.last_error.as_deref()), (State::Dead, Some("width 0")));
    assert_eq!(dead.result_as::<Thumbnail>().unwrap(), None);
    worker.stop().await;
    server.stop().await;
}

/// A wait that ends first is `Error::WaitTimeout`, carrying the job as it was then; a zero
/// timeout reads once; a job that does not exist is 404.
#[tokio::test]
async fn job_wait_times_out_with_the_job_as_it_is() {
    let server = server().await;
    let c = &server.client;
    let id = c.enqueue(Enqueue::new("nobody-works-here", &1).unwrap()).await.unwrap().id;
    for timeout in [Duration::ZERO, Duration::from_millis(30)] {
        match c.job_wait(id, timeout).await {
            Err(Error::WaitTimeout { job, waited }) => {
                assert_eq!((job.id, job.state, waited), (id, State::Available, timeout));
            }
            other => panic!("expected a wait timeout after {timeout:?}, got {other:?}"),
        }
    }
    let err = c.job_wait(id, Duration::ZERO).await.unwrap_err();
    assert_eq!(err.to_string(), format!("job {id} is still available after waiting 0ns"));
    assert!(!err.is_outcome_unknown() && !err.is_retryable());

    c.cancel(id).await.unwrap();
    let cancelled = c.job_wait(id, Duration::ZERO).await.unwrap();
    assert_eq!(cancelled.state, State::Cancelled);
    assert!(c.job_wait(999_999, Duration::from_secs(30)).await.unwrap_err().is_not_found());
    server.stop().await;
}
