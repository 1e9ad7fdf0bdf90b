//! Trace context from producer to worker, against an in-process server: the traceparent reaches
//! the handler and the attempt's span unchanged; with OpenTelemetry, each attempt's span is a child
//! of the producer's span in the producer's trace, with the attempt's outcome as its status; and a
//! job without a traceparent starts a trace of its own.
//!
//! Each test installs its subscriber for its own thread only (`set_default`), so the tests run on
//! tokio's current-thread runtime: the worker's and the handlers' tasks then run on that thread.
//!
//! A module of the `worker` test binary rather than a binary of its own: each binary links the
//! whole server, and one more would cost more build time than these tests take to write.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::common::{server, spawn, wait_state, within};
use dray_client::api::State;
use dray_client::{Enqueue, JobContext, JobError};
use opentelemetry::trace::{SpanContext, SpanId, Status, TraceContextExt, TraceId, TracerProvider as _};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use tokio::sync::mpsc;
use tracing::Instrument;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::{Layer, Registry};

const TP: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

// ---- without OpenTelemetry: the fields of the `job` spans -------------------------------------

/// The fields of every `job` span, by span id, as recorded so far.
#[derive(Clone, Default)]
struct JobSpans(Arc<Mutex<HashMap<u64, HashMap<String, String>>>>);

impl JobSpans {
    /// The fields of the one span whose `job_id` is `id`.
    fn of_job(&self, id: u64) -> HashMap<String, String> {
        let spans = self.0.lock().unwrap();
        let mut found = spans.values().filter(|f| f.get("job_id") == Some(&id.to_string()));
        let fields = found.next().unwrap_or_else(|| panic!("no job span for job {id}: {spans:?}")).clone();
        assert!(found.next().is_none(), "one attempt, one span: {spans:?}");
        fields
    }
}

struct FieldVisitor<'a>(&'a mut HashMap<String, String>);

impl Visit for FieldVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl<S: tracing::Subscriber> Layer<S> for JobSpans {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _: Context<'_, S>) {
        if attrs.metadata().name() == "job" {
            let mut fields = HashMap::new();
            attrs.record(&mut FieldVisitor(&mut fields));
            self.0.lock().unwrap().insert(id.into_u64(), fields);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        if let Some(fields) = self.0.lock().unwrap().get_mut(&id.into_u64()) {
            values.record(&mut FieldVisitor(fields));
        }
    }
}

#[tokio::test]
async fn the_traceparent_reaches_the_handler_and_the_attempt_span_unchanged() {
    let spans = JobSpans::default();
    let _subscriber = tracing::subscriber::set_default(Registry::default().with(spans.clone()));
    let server = server().await;
    let c = &server.client;
    let traced = c.enqueue(Enqueue::new("traced", &"ok").unwrap().traceparent(TP)).await.unwrap().id;
    let untraced = c.enqueue(Enqueue::new("traced", &"ok").unwrap()).await.unwrap().id;
    let refused = c.enqueue(Enqueue::new("traced", &"bad").unwrap().traceparent(TP)).await.unwrap().id;

    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let handler = move |ctx: JobContext| {
        let seen_tx = seen_tx.clone();
        async move {
            seen_tx.send((ctx.id(), ctx.traceparent().map(str::to_owned), ctx.lease_id().to_owned())).unwrap();
            match ctx.payload::<String>()?.as_str() {
                "ok" => Ok(None),
                _ => Err(JobError::fatal("bad payload")),
            }
        }
    };
    let worker = spawn(server.worker().queue("traced", handler).build().unwrap());
    let mut handed = HashMap::new();
    for _ in 0..3 {
        let (id, traceparent, lease_id) = within(seen.recv()).await.unwrap();
        handed.insert(id, (traceparent, lease_id));
    }
    wait_state(c, traced, State::Completed).await;
    wait_state(c, untraced, State::Completed).await;
    wait_state(c, refused, State::Dead).await;
    worker.stop().await;

    assert_eq!(handed[&traced].0.as_deref(), Some(TP), "the handler gets the traceparent as sent");
    assert_eq!(handed[&untraced].0, None);

    let fields = spans.of_job(traced);
    assert_eq!(fields["queue"], "traced");
    assert_eq!(fields["attempt"], "1");
    assert_eq!(fields["lease_id"], handed[&traced].1);
    assert_eq!(fields["traceparent"], TP);
    assert_eq!(fields["trace_id"], "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(fields["outcome"], "completed");
    assert!(!fields.contains_key("error"), "{fields:?}");

    let fields = spans.of_job(untraced);
    assert!(!fields.contains_key("trace_id") && !fields.contains_key("traceparent"), "{fields:?}");
    assert_eq!(fields["outcome"], "completed");

    let fields = spans.of_job(refused);
    assert_eq!(fields["trace_id"], "0af7651916cd43dd8448eb211c80319c");
    assert_eq!((fields["outcome"].as_str(), fields["error"].as_str()), ("failed", "bad payload"));
    server.stop().await;
}

// ---- with OpenTelemetry: the exported spans ---------------------------------------------------

/// An exporter that keeps every finished span in memory.
#[derive(Clone, Debug, Default)]
struct Exported(Arc<Mutex<Vec<SpanData>>>);

impl SpanExporter for Exported {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.0.lock().unwrap().extend(batch);
        Ok(())
    }
}

impl Exported {
    /// The `job` spans of attempts of job `id`, in attempt order.
    fn attempts_of(&self, id: u64) -> Vec<SpanData> {
        let mut spans: Vec<SpanData> = self
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.name == "job" && attribute(s, "job_id").as_deref() == Some(&id.to_string()))
            .cloned()
            .collect();
        spans.sort_by_key(|s| attribute(s, "attempt"));
        spans
    }
}

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| kv.value.to_string())
}

/// A subscriber that turns `tracing` spans into OpenTelemetry spans, exported to memory.
fn otel_subscriber() -> (impl tracing::Subscriber + Send + Sync, Exported, SdkTracerProvider) {
    let exported = Exported::default();
    let provider = SdkTracerProvider::builder().with_simple_exporter(exported.clone()).build();
    let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("dray-client-test"));
    (Registry::default().with(layer), exported, provider)
}

fn span_context(span: &tracing::Span) -> SpanContext {
    span.context().span().span_context().clone()
}

#[tokio::test]
async fn with_otel_every_attempt_is_a_child_of_the_producers_span_with_its_outcome() {
    let (subscriber, exported, _provider) = otel_subscriber();
    let _subscriber = tracing::subscriber::set_default(subscriber);
    let server = server().await;
    let c = &server.client;

    // The producer enqueues inside its own span and gives no traceparent: the client sends the
    // span's context. A traceparent given by hand wins over the current span.
    let producer = tracing::info_span!("checkout");
    let producer_cx = span_context(&producer);
    assert!(producer_cx.is_valid() && producer_cx.is_sampled());
    let (auto, explicit) = async {
        let auto = c.enqueue(Enqueue::new("billing", &"x").unwrap().attempts_max(3)).await.unwrap().id;
        let explicit = c.enqueue(Enqueue::new("billing", &"x").unwrap().traceparent(TP)).await.unwrap().id;
        (auto, explicit)
    }
    .instrument(producer.clone())
    .await;
    let expected = format!("00-{}-{}-01", producer_cx.trace_id(), producer_cx.span_id());
    assert_eq!(c.job(auto).await.unwrap().traceparent.as_deref(), Some(expected.as_str()));
    assert_eq!(c.job(explicit).await.unwrap().traceparent.as_deref(), Some(TP));

    // The first attempt of `auto` fails, the second completes.
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let handler = move |ctx: JobContext| {
        let seen_tx = seen_tx.clone();
        async move {
            seen_tx.send((ctx.id(), ctx.traceparent().map(str::to_owned))).unwrap();
            if ctx.attempt() == 1 && ctx.traceparent() != Some(TP) {
                return Err(JobError::retryable("payment service down").retry_after(std::time::Duration::ZERO));
            }
            Ok(None)
        }
    };
    let worker = spawn(server.worker().queue("billing", handler).build().unwrap());
    for _ in 0..3 {
        let (id, traceparent) = within(seen.recv()).await.unwrap();
        let want = if id == explicit { TP } else { expected.as_str() };
        assert_eq!(traceparent.as_deref(), Some(want), "job {id}");
    }
    wait_state(c, auto, State::Completed).await;
    wait_state(c, explicit, State::Completed).await;
    worker.stop().await;

    let attempts = exported.attempts_of(auto);
    assert_eq!(attempts.len(), 2, "{attempts:#?}");
    for (i, span) in attempts.iter().enumerate() {
        assert_eq!(span.span_context.trace_id(), producer_cx.trace_id(), "attempt {}: the producer's trace", i + 1);
        assert_eq!(span.parent_span_id, producer_cx.span_id(), "attempt {}: a child of the producer's span", i + 1);
        assert!(span.parent_span_is_remote);
        assert_eq!(attribute(span, "attempt"), Some((i + 1).to_string()));
        assert_eq!(attribute(span, "queue").as_deref(), Some("billing"));
    }
    assert_eq!(attempts[0].status, Status::error("payment service down"));
    assert_eq!(attribute(&attempts[0], "outcome").as_deref(), Some("failed"));
    assert_eq!(attempts[1].status, Status::Ok);
    assert_eq!(attribute(&attempts[1], "outcome").as_deref(), Some("completed"));
    assert_ne!(attempts[0].span_context.span_id(), attempts[1].span_context.span_id());

    let [attempt] = &exported.attempts_of(explicit)[..] else { panic!("one attempt of job {explicit}") };
    assert_eq!(attempt.span_context.trace_id(), TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap());
    assert_eq!(attempt.parent_span_id, SpanId::from_hex("b7ad6b7169203331").unwrap());
    assert_eq!(attempt.status, Status::Ok);
    drop(producer);
    server.stop().await;
}

#[tokio::test]
async fn with_otel_a_job_without_traceparent_starts_a_fresh_trace() {
    let (subscriber, exported, _provider) = otel_subscriber();
    let _subscriber = tracing::subscriber::set_default(subscriber);
    let server = server().await;
    let c = &server.client;
    // Enqueued outside any span: nothing to propagate.
    let first = c.enqueue(Enqueue::new("plain", &1).unwrap()).await.unwrap().id;
    let second = c.enqueue(Enqueue::new("plain", &2).unwrap()).await.unwrap().id;
    assert_eq!(c.job(first).await.unwrap().traceparent, None);

    // The worker runs inside a span of its own: its attempts must not join that span's trace.
    let ambient = tracing::info_span!("worker-process");
    let ambient_cx = span_context(&ambient);
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let handler = move |ctx: JobContext| {
        let seen_tx = seen_tx.clone();
        async move {
            seen_tx.send(ctx.traceparent().map(str::to_owned)).unwrap();
            Ok(None)
        }
    };
    let worker = server.worker().queue("plain", handler).build().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(
        worker
            .run(async move {
                let _ = stopped.await;
            })
            .instrument(ambient.clone()),
    );
    assert_eq!(within(seen.recv()).await.unwrap(), None);
    assert_eq!(within(seen.recv()).await.unwrap(), None);
    wait_state(c, first, State::Completed).await;
    wait_state(c, second, State::Completed).await;
    let _ = stop.send(());
    within(running).await.unwrap().unwrap();

    let [one] = &exported.attempts_of(first)[..] else { panic!("one attempt of job {first}") };
    let [two] = &exported.attempts_of(second)[..] else { panic!("one attempt of job {second}") };
    for span in [one, two] {
        assert!(span.span_context.is_valid());
        assert_eq!(span.parent_span_id, SpanId::INVALID, "a root span");
        assert_ne!(span.span_context.trace_id(), ambient_cx.trace_id(), "not the worker's own trace");
        assert_eq!(attribute(span, "trace_id"), None, "no producer trace to name");
    }
    assert_ne!(one.span_context.trace_id(), two.span_context.trace_id(), "a trace per job");
    server.stop().await;
}
