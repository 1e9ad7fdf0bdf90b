//! Trace context from producer to worker. A job carries its producer's W3C `traceparent`
//! (`00-<trace id>-<parent id>-<flags>`); each attempt runs in a `job` span that names the job and,
//! when the job has one, its trace id, so a handler's logs can be joined to the producer's.
//!
//! With the `otel` feature, this module also speaks OpenTelemetry: [`Client`](crate::Client) fills a
//! missing traceparent from the current span's context, and the attempt span's OpenTelemetry parent
//! is the producer's span, so both sit in one trace. The traceparent is parsed and written here by
//! hand (the W3C format is four fixed-width fields) rather than through the SDK's
//! `TraceContextPropagator`, which lives in `opentelemetry_sdk`: a worker built with `otel` then
//! compiles only the API crate. A test checks both directions against that propagator.
//!
//! It never exports spans: installing an OpenTelemetry layer and exporter is the application's
//! choice.

use dray_api::LeasedJob;
use tracing::Span;
use tracing::field::Empty;

/// The fields of a `traceparent`, borrowed from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TraceParent<'a> {
    /// 32 lowercase hex digits, not all zero.
    pub(crate) trace_id: &'a str,
    /// The producer's span id: 16 lowercase hex digits, not all zero.
    pub(crate) parent_id: &'a str,
    pub(crate) flags: u8,
}

/// Parses a W3C `traceparent` by the rules the server checks at enqueue: version `00` has exactly
/// four fields; a later version (never `ff`) may append more, which are ignored. `None` if it is
/// malformed (the server refuses those, so only a foreign server could hand one out).
pub(crate) fn parse(tp: &str) -> Option<TraceParent<'_>> {
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let zero = |s: &str| s.bytes().all(|b| b == b'0');
    let mut fields = tp.split('-');
    let (version, trace_id, parent_id, flags) = (fields.next()?, fields.next()?, fields.next()?, fields.next()?);
    if !hex(version, 2) || version == "ff" || (version == "00" && fields.next().is_some()) {
        return None;
    }
    if !hex(trace_id, 32) || zero(trace_id) || !hex(parent_id, 16) || zero(parent_id) || !hex(flags, 2) {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(TraceParent { trace_id, parent_id, flags })
}

/// The span one attempt runs in: the handler's task, and the worker's heartbeats for it.
///
/// Fields: `job_id`, `queue`, `attempt`, `lease_id`, and, when the job has a traceparent,
/// `traceparent` and `trace_id`; `outcome` and `error` are recorded when the attempt ends (see
/// [`record_outcome`]). It is a root span (`parent: None`): an attempt belongs to its job's trace,
/// not to whatever span the worker loop happens to run in. With the `otel` feature its
/// OpenTelemetry parent is the producer's span; a job without a traceparent starts a new trace.
pub(crate) fn attempt_span(job: &LeasedJob) -> Span {
    let traceparent = job.traceparent.as_deref();
    let parsed = traceparent.and_then(parse);
    if traceparent.is_some() && parsed.is_none() {
        tracing::debug!(
            job = job.id,
            traceparent,
            "the job's traceparent is malformed; its attempt starts a new trace"
        );
    }
    let span = tracing::info_span!(
        parent: None,
        "job",
        job_id = job.id,
        queue = %job.queue,
        attempt = job.attempt,
        lease_id = %job.lease_id,
        trace_id = parsed.map(|p| p.trace_id),
        traceparent,
        outcome = Empty,
        error = Empty,
    );
    #[cfg(feature = "otel")]
    if let Some(parent) = parsed {
        otel::set_parent(&span, parent);
    }
    span
}

/// How an attempt ended, as recorded on its span.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AttemptOutcome {
    Completed,
    Failed,
    Panicked,
    HandedBack,
}

impl AttemptOutcome {
    fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Completed => "completed",
            AttemptOutcome::Failed => "failed",
            AttemptOutcome::Panicked => "panicked",
            AttemptOutcome::HandedBack => "handed_back",
        }
    }
}

/// Records the attempt's end on its span: `outcome`, and `error` (the message sent with the
/// failure). With the `otel` feature the OpenTelemetry span's status is set too: `Ok`, or `Error`
/// with the message, which is what trace viewers show.
pub(crate) fn record_outcome(span: &Span, outcome: AttemptOutcome, error: Option<&str>) {
    span.record("outcome", outcome.as_str());
    if let Some(error) = error {
        span.record("error", error);
    }
    #[cfg(feature = "otel")]
    otel::set_status(span, error);
}

/// The traceparent to send with a job that has none: the current span's OpenTelemetry context.
#[cfg(feature = "otel")]
pub(crate) fn current_traceparent() -> Option<String> {
    otel::current_traceparent()
}

#[cfg(feature = "otel")]
mod otel {
    use opentelemetry::Context;
    use opentelemetry::trace::{SpanContext, SpanId, Status, TraceContextExt, TraceFlags, TraceId, TraceState};
    use tracing::Span;
    use tracing_opentelemetry::{OpenTelemetrySpanExt, SetParentError};

    use super::TraceParent;

    /// The producer's span as a remote parent, as a W3C propagator extracts it: only the
    /// sampled flag is kept (version 00 defines no other), and the trace state is empty (Dray
    /// carries no `tracestate`).
    pub(super) fn remote_context(tp: TraceParent<'_>) -> Option<Context> {
        let trace_id = TraceId::from_hex(tp.trace_id).ok()?;
        let span_id = SpanId::from_hex(tp.parent_id).ok()?;
        let flags = TraceFlags::new(tp.flags) & TraceFlags::SAMPLED;
        let parent = SpanContext::new(trace_id, span_id, flags, true, TraceState::default());
        parent.is_valid().then(|| Context::new().with_remote_span_context(parent))
    }

    pub(super) fn set_parent(span: &Span, tp: TraceParent<'_>) {
        let Some(parent) = remote_context(tp) else { return };
        match span.set_parent(parent) {
            // No OpenTelemetry layer in the subscriber, or the span is filtered out: there is no
            // OpenTelemetry span to parent, and the `trace_id` field still joins the logs.
            Ok(()) | Err(SetParentError::LayerNotFound | SetParentError::SpanDisabled) => {}
            // The span was just created and not entered: this would be a bug here.
            Err(e) => tracing::debug!(error = %e, "could not set the attempt span's parent"),
        }
    }

    pub(super) fn set_status(span: &Span, error: Option<&str>) {
        span.set_status(match error {
            None => Status::Ok,
            Some(message) => Status::error(message.to_owned()),
        });
    }

    /// The current `tracing` span's OpenTelemetry context, else OpenTelemetry's own current
    /// context (for code that uses the OpenTelemetry API directly), as a traceparent. `None`
    /// when neither has a valid span: the job then starts a new trace at the worker.
    pub(super) fn current_traceparent() -> Option<String> {
        let from_span = Span::current().context();
        let context = if from_span.span().span_context().is_valid() { from_span } else { Context::current() };
        let span = context.span();
        format(span.span_context())
    }

    /// As a W3C propagator injects it: version 00, only the sampled flag.
    pub(super) fn format(cx: &SpanContext) -> Option<String> {
        cx.is_valid().then(|| {
            let flags = (cx.trace_flags() & TraceFlags::SAMPLED).to_u8();
            format!("00-{}-{}-{flags:02x}", cx.trace_id(), cx.span_id())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn parse_reads_the_fields_and_refuses_what_the_server_refuses() {
        assert_eq!(
            parse(TP),
            Some(TraceParent { trace_id: "0af7651916cd43dd8448eb211c80319c", parent_id: "b7ad6b7169203331", flags: 1 })
        );
        // A later version may append fields; they are ignored.
        assert_eq!(parse("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00-more").map(|p| p.flags), Some(0));
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0af7651916cd43dd8448eb211c80319-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1",
            "0-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    /// Our hand-written W3C reading and writing must agree with OpenTelemetry's own propagator in
    /// both directions, or a trace would break silently between a producer and a worker that use
    /// different libraries.
    #[cfg(feature = "otel")]
    #[test]
    fn traceparents_match_the_w3c_propagator_both_ways() {
        use std::collections::HashMap;

        use opentelemetry::propagation::TextMapPropagator;
        use opentelemetry::trace::TraceContextExt;
        use opentelemetry_sdk::propagation::TraceContextPropagator;

        let propagator = TraceContextPropagator::new();
        for tp in [
            TP,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03",
        ] {
            let carrier = HashMap::from([("traceparent".to_owned(), tp.to_owned())]);
            let theirs = propagator.extract(&carrier);
            let ours = otel::remote_context(parse(tp).unwrap()).unwrap();
            assert_eq!(ours.span().span_context(), theirs.span().span_context(), "{tp}");

            let mut injected = HashMap::new();
            propagator.inject_context(&theirs, &mut injected);
            assert_eq!(otel::format(ours.span().span_context()), injected.get("traceparent").cloned(), "{tp}");
        }
    }
}
